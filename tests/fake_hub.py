"""An in-memory stand-in for the Hugging Face Hub, installed at the single seam
`llamaduo.hub.set_api`. It records every call, so tests can prove what was (not) downloaded."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from huggingface_hub.errors import LocalTokenNotFoundError

from llamaduo.errors import UsageError


class FakeHubApi:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.calls: list[str] = []
        self.commits: list[str] = []
        self.fail_commits = False
        self.token: str | None = "hf_fake"  # None: as if nobody is logged in
        self.reachable = True
        # whoami's answer: the user, their organizations ({name: roleInOrg}) and the token's role
        # ("write", "read" or "fineGrained" with `scoped` grants), as the Hub's /api/whoami-v2 says
        self.user = "me"
        self.orgs: dict[str, str] = {}
        self.role = "write"
        self.scoped: list[dict] = []

    # The pre-flight checks (hub.check_push_possible, hub.ensure_hub_reachable).
    def check_reachable(self, what):
        self.calls.append("check_reachable")
        if not self.reachable:
            raise UsageError(f"{what}: fake hub: not reachable")

    def whoami(self):
        self.calls.append("whoami")
        if self.token is None:
            raise LocalTokenNotFoundError("fake hub: no token")
        token = {"role": self.role} | ({"fineGrained": {"scoped": self.scoped}} if self.role == "fineGrained" else {})
        return {"name": self.user, "type": "user", "orgs": [{"name": n, "roleInOrg": r} for n, r in self.orgs.items()],
                "auth": {"type": "access_token", "accessToken": token}}

    def create_repo(self, repo_id, *, repo_type=None, exist_ok=False, private=None):
        self.calls.append("create_repo")
        self.repos.setdefault(repo_id, {})

    def list_repo_files(self, repo_id, *, repo_type=None):
        self.calls.append("list_repo_files")
        return sorted(self.repos.get(repo_id, {}))

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None):
        self.calls.append("create_commit")
        if self.fail_commits:
            raise ConnectionError("fake hub: network down")
        files = self.repos.setdefault(repo_id, {})
        for op in operations:
            if type(op).__name__ == "CommitOperationDelete":
                files.pop(op.path_in_repo, None)
            else:
                src = op.path_or_fileobj
                files[op.path_in_repo] = Path(src).read_bytes() if isinstance(src, str) else bytes(src)
        self.commits.append(commit_message)

    def model_info(self, repo_id, *, revision=None):
        self.calls.append("model_info")
        return SimpleNamespace(sha="f" * 40)

    def dataset_info(self, repo_id, *, revision=None):
        self.calls.append("dataset_info")
        return SimpleNamespace(sha="d" * 40)

    # Anything that would download data is recorded, then refused.
    def hf_hub_download(self, *args, **kwargs):
        self.calls.append("hf_hub_download")
        raise AssertionError("download attempted")

    def snapshot_download(self, *args, **kwargs):
        self.calls.append("snapshot_download")
        raise AssertionError("download attempted")

    # Test helpers (not part of the HfApi surface).
    def split_rows(self, repo_id: str, split: str) -> pd.DataFrame:
        shards = [b for p, b in sorted(self.repos[repo_id].items())
                  if p.startswith(f"data/{split}-") and p.endswith(".parquet")]
        return pd.concat([pd.read_parquet(io.BytesIO(b)) for b in shards], ignore_index=True)
