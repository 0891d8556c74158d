"""Work out what `ft_model_id` points at, without loading any weights.

`ft_model_id` may be a merged/full model or a PEFT adapter, as a local folder or a Hub id, or
the embedded alias (round 0 of the loop runs the untuned base model). Everything here only
reads small JSON/YAML files, so a typo or a missing base model fails with exit code 2 in a
second instead of after a multi-GB model load.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.inference")

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where the weights are and, for an adapter, where its base is.

    `path` and `base_path` are local folders or Hub ids (`is_local` / `base_is_local` say which);
    `tokenizer_path` is the folder whose tokenizer and chat template are used: the one saved by
    training when present, else the base model's.
    """

    model_id: str
    path: str
    revision: str | None
    is_local: bool
    is_adapter: bool
    base_path: str | None = None
    base_revision: str | None = None
    base_is_local: bool = True
    tokenizer_path: str = ""
    tokenizer_revision: str | None = None
    adapter_rank: int | None = None

    @property
    def weights_path(self) -> str:
        """The folder/id holding full weights: the base for an adapter, else the model itself."""
        return self.base_path if self.is_adapter and self.base_path else self.path


def resolve_model_ref(model_id: str, revision: str | None = None, config_path: str | None = None) -> ModelRef:
    """Classify `model_id` (full model vs adapter) and find the adapter's base and tokenizer."""
    if not model_id:
        raise UsageError("ft_model_id is required (a local folder, a Hub id, or the embedded alias)")
    path, is_local = _locate(model_id, revision, what="ft_model_id")
    files = _config_files(path, is_local, revision)
    if ADAPTER_CONFIG in files:
        adapter_cfg = files[ADAPTER_CONFIG]
        base, base_rev, base_local = _adapter_base(model_id, adapter_cfg, config_path,
                                                   _training_base(path) if is_local else None)
        tok_path, tok_rev = _tokenizer_source(path, is_local, revision, base, base_rev, base_local)
        return ModelRef(model_id, path, revision, is_local, True, base, base_rev, base_local,
                        tok_path, tok_rev, adapter_cfg.get("r"))
    if MODEL_CONFIG in files:
        return ModelRef(model_id, path, revision, is_local, False, tokenizer_path=path, tokenizer_revision=revision)
    raise UsageError(
        f"ft_model_id '{model_id}' ({path}) holds neither {MODEL_CONFIG} (a full or merged model) "
        f"nor {ADAPTER_CONFIG} (a PEFT adapter)"
    )


def _locate(ref: str, revision: str | None, what: str) -> tuple[str, bool]:
    """(path or Hub id, is_local). The embedded alias resolves to its provisioned folder."""
    from llamaduo.models import EMBEDDED_MODEL, is_embedded_alias, resolve_model

    if is_embedded_alias(ref):
        return resolve_model(ref), True
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local.resolve()), True
    if local.exists():
        raise UsageError(f"{what} '{ref}' is a file; expected a model folder, a Hub id or '{EMBEDDED_MODEL}'")
    if not _HUB_ID.fullmatch(ref) or ref.startswith((".", "/", "~")):
        raise UsageError(f"{what} path does not exist: {ref}")
    _check_hub_model(ref, revision, what)
    return ref, False


def _check_hub_model(repo_id: str, revision: str | None, what: str) -> None:
    """Fail early (exit 2) when a Hub model id cannot be used: offline without a cached copy,
    or no network (a quick socket check instead of a 20-45 s download stall)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        if _hub_file(repo_id, MODEL_CONFIG, revision) is None and _hub_file(repo_id, ADAPTER_CONFIG, revision) is None:
            raise UsageError(
                f"{what} '{repo_id}' is not a local folder, and the Hub is offline (HF_HUB_OFFLINE=1) "
                "with no cached copy of it"
            )
        return
    from llamaduo.hub import ensure_hub_reachable

    ensure_hub_reachable(f"{what} '{repo_id}'")


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    """Download (or find in the cache) one small file of a Hub model; None when it is absent."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except (RemoteEntryNotFoundError, EntryNotFoundError, OfflineModeIsEnabled):
        return None
    except RepositoryNotFoundError as err:
        raise UsageError(f"model '{repo_id}' was not found on the Hub (or is private/gated): {err}") from err
    except RevisionNotFoundError as err:
        raise UsageError(f"model '{repo_id}' has no revision '{revision}'") from err
    except (HfHubHTTPError, OSError) as err:
        raise UsageError(f"could not read model '{repo_id}' from the Hub: {err}") from err


def _config_files(path: str, is_local: bool, revision: str | None) -> dict[str, dict]:
    """The model's adapter_config.json / config.json, parsed, keyed by file name."""
    out: dict[str, dict] = {}
    for name in (ADAPTER_CONFIG, MODEL_CONFIG):
        file = str(Path(path) / name) if is_local else _hub_file(path, name, revision)
        if file and Path(file).is_file():
            try:
                out[name] = json.loads(Path(file).read_text())
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}/{name} is not valid JSON: {err}") from err
    return out


def _training_base(adapter_dir: str) -> str | None:
    """The exact local base this adapter was trained on, from finetune.py's finetune_summary.json:
    the embedded alias, or a base folder that exists on this machine; None otherwise.

    WHY: adapter_config.json names the base by its Hub id (so a pushed adapter loads anywhere),
    but on the training machine the local base is the very weights trained on (the embedded
    model is a dequantized Q4_1 copy of its Hub repo) and needs no network."""
    from llamaduo.models import is_embedded_alias

    try:
        summary = json.loads((Path(adapter_dir) / "finetune_summary.json").read_text())
    except (OSError, ValueError):
        return None
    if is_embedded_alias(str(summary.get("base_model") or "")):
        return str(summary["base_model"])
    local = summary.get("base_model_path")
    return str(local) if local and Path(str(local)).is_dir() else None


def _adapter_base(model_id: str, adapter_cfg: dict, config_path: str | None,
                  training_base: str | None = None) -> tuple[str, str | None, bool]:
    """The adapter's base model: the local base it was trained on (`_training_base`) when
    adapter_config.json names it by Hub id, then adapter_config.json, then `model_name_or_path`
    in the training YAML (`ft_model_config_path`) — useful when the adapter was trained on a
    machine whose base path does not exist here."""
    candidates: list[tuple[str, str | None, str]] = []
    recorded = str(adapter_cfg.get("base_model_name_or_path") or "")
    if training_base and not Path(recorded).expanduser().is_dir():
        candidates.append((training_base, None, "finetune_summary.json (the training base)"))
    if adapter_cfg.get("base_model_name_or_path"):
        candidates.append((adapter_cfg["base_model_name_or_path"], adapter_cfg.get("revision"),
                           f"{ADAPTER_CONFIG} base_model_name_or_path"))
    from llamaduo.models import EMBEDDED_HUB_ID, EMBEDDED_MODEL

    if recorded == EMBEDDED_HUB_ID:  # offline without that repo cached: the embedded copy (Q4_1, dequantized)
        candidates.append((EMBEDDED_MODEL, None, f"the embedded copy of {EMBEDDED_HUB_ID}"))
    yaml_base = _yaml_base(config_path)
    if yaml_base:
        candidates.append((yaml_base[0], yaml_base[1], f"{config_path} model_name_or_path"))
    problems = []
    for ref, rev, source in candidates:
        try:
            path, is_local = _locate(ref, rev, what=f"base model ({source})")
        except UsageError as err:
            problems.append(str(err))
            continue
        if len(candidates) > 1 and source != candidates[0][2]:
            logger.warning("adapter base %s is not usable here; using %s from %s", candidates[0][0], ref, source)
        return path, rev, is_local
    detail = "; ".join(problems) if problems else (
        f"{ADAPTER_CONFIG} has no base_model_name_or_path and no ft_model_config_path "
        "with model_name_or_path was given")
    raise UsageError(f"cannot find the base model of adapter '{model_id}': {detail}")


def _yaml_base(config_path: str | None) -> tuple[str, str | None] | None:
    """`model_name_or_path` (+ `model_revision`) from an alignment-handbook/TRL style YAML."""
    if not config_path:
        return None
    path = Path(config_path).expanduser()
    if not path.is_file():
        raise UsageError(f"ft_model_config_path not found: {config_path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"ft_model_config_path {config_path} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or not data.get("model_name_or_path"):
        return None
    return str(data["model_name_or_path"]), data.get("model_revision")


def _tokenizer_source(path: str, is_local: bool, revision: str | None,
                      base: str, base_rev: str | None, base_local: bool) -> tuple[str, str | None]:
    """Prefer the tokenizer saved next to the adapter (training may add tokens or a template)."""
    if is_local:
        if any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
            return path, revision
    elif any(_hub_file(path, f, revision) for f in _TOKENIZER_FILES):
        return path, revision
    return base, base_rev

