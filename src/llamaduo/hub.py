"""Local outputs and the Hugging Face Hub: the one module that writes to the Hub.

Every stage writes a local output folder first (`save_to_disk` + a `<split>.jsonl` copy a person
can open + the Hub layout `data/<split>-00000-of-00001.parquet` + `README.md` card, whose
`configs` header is then true locally and on the Hub: `load_dataset(folder)` works), then
optionally pushes. Pushing never touches the local copy, so
a failed push loses nothing and the error says where the output is.

Every Hub call, the pre-flight reachability and token checks included, goes through `get_api()`,
the single seam tests replace with a fake (`set_api`). Append mode uploads a new parquet shard and lists `data/<split>-*` in the card's `configs`,
so it never downloads the rows already on the Hub; overwrite replaces only that split's files,
in the same commit.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Protocol
from urllib.parse import urlsplit

import yaml
from datasets import Dataset, DatasetDict, concatenate_datasets
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from llamaduo import leak_check
from llamaduo.errors import RunFailed, UsageError
from llamaduo.outputs import OutputPlan, staged_output
from llamaduo.redact import redact

logger = logging.getLogger("llamaduo.hub")


class HubApi(Protocol):
    """The subset of `huggingface_hub.HfApi` this project uses, plus `check_reachable`
    (`HubClient`'s probe); what a fake implements."""

    def check_reachable(self, what: str) -> None: ...
    def whoami(self) -> dict: ...

    def create_repo(self, repo_id: str, *, repo_type: str | None = None, exist_ok: bool = False,
                    private: bool | None = None) -> Any: ...
    def create_commit(self, repo_id: str, operations: list, *, commit_message: str,
                      repo_type: str | None = None) -> Any: ...
    def list_repo_files(self, repo_id: str, *, repo_type: str | None = None) -> list[str]: ...
    def model_info(self, repo_id: str, *, revision: str | None = None) -> Any: ...
    def dataset_info(self, repo_id: str, *, revision: str | None = None) -> Any: ...


class HubClient(HfApi):
    """The real client: `HfApi` plus a fast reachability probe."""

    def check_reachable(self, what: str) -> None:
        """Fail at once when the Hub cannot be used, instead of a 20-45 s stall per attempt."""
        if hub_offline():
            raise UsageError(f"{what} is neither a local path nor in the local Hugging Face cache, and "
                             f"HF_HUB_OFFLINE is set, so the Hub cannot be used; check the path, or unset "
                             f"HF_HUB_OFFLINE to download it")
        url = urlsplit(self.endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                     timeout=3).close()
        except OSError as err:
            raise UsageError(f"{what} is not a local path and the Hub ({url.hostname}) is not reachable "
                             f"({err}); check the path, or set HF_HUB_OFFLINE=1 to work offline") from err


_api: HubApi | None = None


def get_api() -> HubApi:
    """The Hub client: the real `HubClient`, unless a test installed a fake with `set_api`."""
    return _api if _api is not None else HubClient()


def set_api(api: HubApi | None) -> None:
    """Install (or with None, remove) a Hub client; the single seam for tests."""
    global _api
    _api = api


# --------------------------------------------------------------------------- reachability


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def ensure_hub_reachable(what: str) -> None:
    """UsageError (exit 2) at once when the Hub cannot be used (offline, unreachable)."""
    get_api().check_reachable(what)


PUSH_FIX = "or log in with `hf auth login` (or set HF_TOKEN) and unset HF_HUB_OFFLINE"


def check_push_possible(push: bool, what: str, repo_id: str | None = None,
                        switch: str = "push_to_hub / push_*_to_hf_hub") -> None:
    """Called by a stage (and the loop's check) before any work when it will push, so a long run
    cannot end in a push that was never possible (offline, unreachable, no token, a rejected or
    read-only one, or, given `repo_id`, a namespace the token cannot write to). `switch` names
    the key that turns the push off, for the one-line fix."""
    if not push:
        return
    api = get_api()
    try:
        api.check_reachable(f"pushing {what}")
    except UsageError as err:
        if hub_offline():  # the probe's own message is about loading a model, not about pushing
            raise UsageError(f"pushing {what}: HF_HUB_OFFLINE is set, so nothing can be pushed; set {switch}: false, "
                             f"{PUSH_FIX}") from err
        raise
    try:
        who = api.whoami()
    except LocalTokenNotFoundError as err:
        raise UsageError(f"pushing {what} needs a Hugging Face token: run `hf auth login` or set HF_TOKEN, "
                         f"or set {switch}: false") from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        why = "the Hub rejected the Hugging Face token" if status in (401, 403) else \
            f"the Hugging Face token could not be checked (HTTP {status})"
        raise UsageError(f"pushing {what}: {why}: {redact(str(err))}; run `hf auth login` or set HF_TOKEN") from err
    problem = write_access_problem(who, repo_id) if repo_id else None
    if problem:
        raise UsageError(f"pushing {what}: {problem}; set {switch}: false, or log in with `hf auth login` as a "
                         f"user who can write there")


def write_access_problem(who: Mapping[str, Any], repo_id: str) -> str | None:
    """Why the token `whoami` describes cannot write to `repo_id`, or None when it can (or when
    the answer does not say: an older Hub, a token without `auth` details).

    Read off the whoami answer: the namespace must be the user's or one of their orgs (not with a
    read-only role), and the token must be a write token or a fine-grained one granting
    `repo.write` on that namespace or repo."""
    user = str(who.get("name") or "")
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else user
    orgs = {str(o.get("name")): str(o.get("roleInOrg") or "") for o in who.get("orgs") or [] if isinstance(o, Mapping)}
    if user and namespace != user and namespace not in orgs:
        return f"the Hugging Face token is {user}'s, who is neither '{namespace}' nor a member of that organization"
    if orgs.get(namespace) == "read":
        return f"{user} has only read access in the organization '{namespace}'"
    token = (who.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    if role == "read":
        return "the Hugging Face token is read-only: create a write token"
    if role == "fineGrained":
        scoped = (token.get("fineGrained") or {}).get("scoped") or []
        if not any("repo.write" in (e.get("permissions") or []) and
                   (e.get("entity") or {}).get("name") in (namespace, repo_id) for e in scoped):
            return f"the fine-grained Hugging Face token does not grant repo.write on '{namespace}'"
    return None


def repo_sha(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str | None:
    """The Hub commit sha of a repo at a revision, or None when it cannot be looked up."""
    try:
        info_fn = get_api().model_info if repo_type == "model" else get_api().dataset_info
        return getattr(info_fn(repo_id, revision=revision), "sha", None)
    except Exception as err:  # noqa: BLE001 - a missing sha is recorded, not fatal
        logger.warning("could not look up the sha of %s %s: %s", repo_type, repo_id, err)
        return None


# --------------------------------------------------------------------------- local outputs


def local_output_dir(output_id: str, push: bool, output_root: str = "outputs") -> Path:
    """Where a stage's local output goes.

    When push is off the output id *is* the local path, as in the original tool. When push is
    on, the local copy goes under `output_root`, named after the repo id.
    """
    return Path(output_root) / output_id if push else Path(output_id)


def dataset_output_plan(output_id: str | None, key: str, *, push: bool, output_root: str,
                        inputs: Mapping[str, str | None], overwrite_input: bool) -> OutputPlan:
    """The `guarded_output` plan of a stage that writes a dataset to `output_id` (nothing to
    guard when it is unset): its local folder, locked for the run, must not replace an input."""
    if not output_id:
        return OutputPlan(None)
    return OutputPlan(local_output_dir(output_id, push, output_root), output_id, key, inputs, overwrite_input)


def save_output(
    splits: Mapping[str, Dataset],
    output_id: str,
    *,
    push: bool,
    append: bool | Mapping[str, bool] = False,
    stage: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
    output_root: str = "outputs",
    private: bool | None = None,
    local_only: bool = False,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write the splits locally (append or overwrite per split), then push when asked.

    The folder is replaced atomically (llamaduo.outputs.staged_output): the dataset, the jsonl
    copies, the card and whatever `extra_files(folder)` writes (summary.json, reports, plots)
    appear together or not at all. `local_only` keeps the push-mode local folder but skips
    the push (e.g. a failed evaluation, kept for inspection next to its reports). Returns the
    local folder. A failed push raises `RunFailed` naming that folder.
    """
    out_dir = local_output_dir(output_id, push, output_root)
    empty = [name for name, ds in splits.items() if len(ds) == 0]
    if empty:  # datasets 5.2 cannot load_from_disk a folder holding an empty split
        logger.warning("not writing empty split(s) %s to %s", ", ".join(empty), output_id)
        splits = {name: ds for name, ds in splits.items() if len(ds)}
    appends = {s: bool(append.get(s, False)) if isinstance(append, Mapping) else bool(append) for s in splits}
    splits = {name: leak_check.mask_dataset(ds, f"split '{name}' of {output_id}") for name, ds in splits.items()}
    with staged_output(out_dir) as staging:
        rows = _save_local(dict(splits), out_dir, staging, appends)
        card = render_dataset_card(stage=stage, config=config, inputs=inputs or {}, rows=rows,
                                   appended=appends, split_names=sorted(rows))
        (staging / "README.md").write_text(card)
        if extra_files is not None:
            extra_files(staging)
        leak_check.secure_folder(staging, f"the output {out_dir}")  # the last check, before the swap
    logger.info("wrote %s to %s", ", ".join(f"{s}: {n} rows" for s, n in rows.items()), out_dir)
    if push and not local_only:
        try:
            push_splits(dict(splits), output_id, appends=appends, stage=stage, config=config,
                        inputs=inputs or {}, private=private)
        except Exception as err:  # noqa: BLE001 - any push failure must keep and name the local copy
            raise RunFailed(f"push to the Hub dataset '{output_id}' failed ({err}); "
                            f"the local output is intact at {out_dir}") from err
    return out_dir


def _save_local(splits: dict[str, Dataset], out_dir: Path, staging: Path,
                appends: dict[str, bool]) -> dict[str, int]:
    """Write every split (the old ones of `out_dir` kept, appended ones extended) into the
    empty `staging` folder, which then replaces `out_dir` whole."""
    final: dict[str, Dataset] = {}
    if (out_dir / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        final.update(load_from_disk(str(out_dir)))
    for name, ds in splits.items():
        if appends.get(name) and name in final and len(final[name]):
            final[name] = concatenate_datasets([final[name], _align_to(ds, final[name])])
        else:
            final[name] = ds
    with _quiet_progress(sum(len(ds) for ds in final.values())):
        DatasetDict(final).save_to_disk(str(staging))
        (staging / "data").mkdir()
        for name, ds in final.items():
            ds.to_json(str(staging / f"{name}.jsonl"), lines=True, force_ascii=False)
            # the Hub layout the card's `configs` header names, so `load_dataset(folder)` works locally too
            ds.to_parquet(str(staging / "data" / f"{name}-00000-of-00001.parquet"))
    return {name: len(ds) for name, ds in final.items()}


_QUIET_BELOW_ROWS = 10_000


@contextmanager
def _quiet_progress(rows: int) -> Iterator[None]:
    """No `datasets` progress bars for a small write (three bars for a 40-row split are noise);
    a large one keeps them. Restores the previous setting."""
    import datasets

    was_disabled = datasets.is_progress_bar_enabled() is False
    if rows < _QUIET_BELOW_ROWS and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if rows < _QUIET_BELOW_ROWS and not was_disabled:
            datasets.enable_progress_bars()


def _align_to(new: Dataset, old: Dataset) -> Dataset:
    """Cast appended rows to the existing schema so `concatenate_datasets` accepts them."""
    missing = [c for c in old.column_names if c not in new.column_names]
    if missing:
        raise UsageError(f"cannot append: new rows lack column(s) {missing} of the existing split")
    new = new.select_columns(old.column_names)
    return new.cast(old.features) if new.features != old.features else new


# --------------------------------------------------------------------------- pushing


def push_splits(
    splits: dict[str, Dataset],
    repo_id: str,
    *,
    appends: Mapping[str, bool],
    stage: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    private: bool | None = None,
) -> None:
    """Push splits to a Hub dataset repo in one commit: a new shard per split (append) or a
    replacement of that split's shards (overwrite), plus the dataset card."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    splits = {name: leak_check.mask_dataset(ds, f"split '{name}' of {repo_id}") for name, ds in splits.items()}
    for name, ds in splits.items():  # the last check before anything reaches the Hub
        leak_check.check_dataset(ds, f"split '{name}' to the Hub dataset '{repo_id}'")
    api = get_api()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    existing = list(api.list_repo_files(repo_id, repo_type="dataset"))
    ops: list = []
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    for name, ds in splits.items():
        if not appends.get(name):
            ops += [CommitOperationDelete(path_in_repo=f) for f in existing if _is_split_shard(f, name)]
        buf = io.BytesIO()
        ds.to_parquet(buf)
        path = f"data/{name}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=buf.getvalue()))
    split_names = sorted({_split_of(f) for f in existing if _split_of(f)} | set(splits))
    card = render_dataset_card(stage=stage, config=config, inputs=inputs,
                               rows={n: len(d) for n, d in splits.items()},
                               appended=dict(appends), split_names=split_names)
    leak_check.check_text(card, f"the card of the Hub dataset '{repo_id}'")
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    modes = ", ".join(f"{n} ({'append' if appends.get(n) else 'overwrite'})" for n in splits)
    api.create_commit(repo_id, ops, commit_message=f"llamaduo {stage}: {modes}", repo_type="dataset")
    logger.info("pushed %s to the Hub dataset %s", modes, repo_id)


def push_model_folder(folder: str | Path, repo_id: str, card_text: str, private: bool | None = None,
                      commit_message: str = "llamaduo finetune") -> None:
    """Upload a model/adapter folder with its model card in one commit."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    card_text = scrub_secrets(card_text)
    leak_check.check_text(card_text, f"the card of the Hub model '{repo_id}'")
    leak_check.check_folder(folder, f"the model folder {folder} to the Hub model '{repo_id}'")
    api = get_api()
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    ops = [CommitOperationAdd(path_in_repo=str(p.relative_to(folder)), path_or_fileobj=str(p))
           for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "README.md"
           and not any(part.startswith("checkpoint-") for part in p.relative_to(folder).parts)]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=scrub_secrets(card_text).encode()))
    api.create_commit(repo_id, ops, commit_message=commit_message, repo_type="model")


def _split_of(path: str) -> str | None:
    if not (path.startswith("data/") and path.endswith(".parquet")):
        return None
    stem = path[len("data/"):-len(".parquet")]
    return stem.split("-", 1)[0] if "-" in stem else stem


def _is_split_shard(path: str, split: str) -> bool:
    return _split_of(path) == split


# --------------------------------------------------------------------------- cards


def render_dataset_card(
    *,
    stage: str,
    config: Mapping[str, Any],
    inputs: Mapping[str, Any],
    rows: Mapping[str, int],
    appended: Mapping[str, bool],
    split_names: list[str],
) -> str:
    """A dataset card built with huggingface_hub's DatasetCard: card data with the `configs`
    header (so all shards of a split load together, locally and on the Hub), license, source
    datasets, size and task categories; then the stage, its effective config (no secrets),
    inputs with shas, row counts and the date."""
    from huggingface_hub import DatasetCard, DatasetCardData

    sources = sorted({v for v in _strings(inputs) if _is_hub_dataset_id(v)})
    data = DatasetCardData(
        license="unknown",  # the rows come from the user's data and a service LLM: their terms apply
        source_datasets=sources or ["original"], size_categories=[size_category(sum(rows.values()))],
        task_categories=["text-generation"], tags=["llamaduo", f"llamaduo-{stage}"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": f"data/{s}-*"} for s in split_names]}])
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    row_lines = "\n".join(f"| {s} | {n} | {'append' if appended.get(s) else 'overwrite'} |" for s, n in rows.items())
    body = (
        f"# LlamaDuo `{stage}` output\n\n"
        f"Written by the LlamaDuo `{stage}` stage on {when}.\n\n"
        f"## Rows written\n\n| split | rows | mode |\n|---|---|---|\n{row_lines}\n\n"
        f"## Inputs\n\n```yaml\n{yaml.safe_dump(_jsonable(inputs), sort_keys=False).strip() or '{}'}\n```\n\n"
        f"## Effective config\n\n```yaml\n{yaml.safe_dump(_jsonable(config), sort_keys=False).strip()}\n```\n"
    )
    return scrub_secrets(str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")))


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return name
    return "1B<n<10B"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):  # dataset references only: `model_ids` name models, not sources
        return [s for k, v in value.items() if "model" not in str(k) for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _is_hub_dataset_id(ref: str) -> bool:
    """`owner/name` that is not a local path: a Hub dataset the output was made from."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref)) and not Path(ref).expanduser().exists()


def scrub_secrets(text: str) -> str:
    """Last line of defence for text that leaves the process (cards, reports): credential env
    values and URL credentials are masked (llamaduo.redact, the one masking function)."""
    return redact(text)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
