"""The original LlamaDuo's config keys that are not plain renames, per stage.

Users of the original tool bring their whole config tree (about 83 stage YAMLs). Four of its
keys have no field of the same name here; each is mapped or accepted below, with one log line
that says what happened. This is a short, named list on purpose: any other unknown key still
exits 2 with suggestions (src/llamaduo/config.py), because a typo must not run silently.

| key | stage | here |
|---|---|---|
| `rate_limit_on: false` | evaluation, data_gen | pacing off (`rate_limit_per_minute: 0`), one info line |
| `rate_limit_on: true` | evaluation, data_gen | pace at `rate_limit_per_minute` |
| `ft_model_gen_config_path` | batch_inference | the file's decoding keys fill `do_sample`, `temperature`, `top_p`, `max_new_tokens`, `stop_strings`; the path itself is kept (a missing file only warns at load, so `--print-config` works on a tree
  whose paths lived on another machine; a run exits 2 before any model load) |
| `user_delimiter`, `model_delimiter` | batch_inference | accepted and ignored, one warning each |

(The dash spelling `lm-response-append` is handled for every key in src/llamaduo/config.py.)
Each entry is `key -> (CLI converter, fn(value, other values) -> updates)`, as
`parse_config(legacy_keys=...)` takes them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from llamaduo.errors import UsageError
from llamaduo.hf_argparse import string_to_bool

logger = logging.getLogger("llamaduo.config")

LegacyKeys = dict[str, tuple[Callable[[Any], Any], Callable[[Any, Mapping[str, Any]], dict]]]

DELIMITER_NOTE = "ignored: answers are cut by the chat template's end-of-turn tokens, not by delimiters"
# The original passed its ft generation file to `model.generate`; these keys mean the same here.
FT_GEN_KEYS = ("do_sample", "temperature", "top_p", "max_new_tokens", "stop_strings")
FT_GEN_NOTED = {"padding_side": "batches are always left-padded here (decoder-only generation needs it)"}


def _rate_limit_on(value: Any, values: Mapping[str, Any]) -> dict:
    if not isinstance(value, bool):
        raise UsageError(f"config key 'rate_limit_on' expects a boolean (true/false), got {value!r}")
    if value:
        return {}
    logger.info("rate_limit_on: false (original key) -> rate_limit_per_minute: 0 (requests are not paced; "
                "the workers setting still bounds concurrency)")
    return {"rate_limit_per_minute": 0}


def _delimiter(key: str) -> Callable[[Any, Mapping[str, Any]], dict]:
    def apply(value: Any, values: Mapping[str, Any]) -> dict:
        logger.warning("%s: %r %s", key, value, DELIMITER_NOTE)
        return {}

    return apply


def read_ft_gen_config(path: str) -> dict[str, Any]:
    """The original's generation file for the fine-tuned model, as {our key: value}.

    Unknown keys exit 2 (they would have been passed to `generate` and meant something there);
    `padding_side` is ours to decide and is noted, not applied. A missing file raises
    FileNotFoundError: the caller decides (loading a config only warns, a run exits 2).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"ft_model_gen_config_path {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"ft_model_gen_config_path {path} must hold a mapping of generation keys")
    unknown = sorted(k for k in data if k not in FT_GEN_KEYS and k not in FT_GEN_NOTED)
    if unknown:
        raise UsageError(f"ft_model_gen_config_path {path}: unsupported key(s) {unknown}; "
                         f"supported: {', '.join(FT_GEN_KEYS + tuple(FT_GEN_NOTED))}")
    for key, note in FT_GEN_NOTED.items():
        if key in data:
            logger.info("%s: %s: %r %s", path, key, data[key], note)
    out = {k: data[k] for k in FT_GEN_KEYS if k in data}
    if isinstance(out.get("stop_strings"), str):
        out["stop_strings"] = [out["stop_strings"]]
    return out


def _ft_gen_config(value: Any, values: Mapping[str, Any]) -> dict:
    """Keys set explicitly next to it in the same YAML win; the file fills the rest. Loaded as
    YAML defaults, so explicit CLI flags still win over both."""
    if value in (None, ""):
        return {}
    if not isinstance(value, str):
        raise UsageError(f"config key 'ft_model_gen_config_path' expects a path, got {value!r}")
    try:
        from_file = read_ft_gen_config(value)
    except FileNotFoundError:
        # Like ft_model_config_path or a dataset id, the file is needed by a run, not to read the
        # config: the original's own tree points at paths that only existed on its author's machine.
        logger.warning("ft_model_gen_config_path not found: %s (its decoding settings are not applied; "
                       "a run stops with exit 2 before loading any model)", value)
        return {"ft_model_gen_config_path": value}
    updates = {k: v for k, v in from_file.items() if k not in values}
    logger.info("ft_model_gen_config_path %s (original key) -> %s", value,
                ", ".join(f"{k}={v!r}" for k, v in updates.items()) or "nothing new")
    return {**updates, "ft_model_gen_config_path": value}


SERVICE_LLM_LEGACY: LegacyKeys = {"rate_limit_on": (string_to_bool, _rate_limit_on)}
BATCH_INFERENCE_LEGACY: LegacyKeys = {
    "ft_model_gen_config_path": (str, _ft_gen_config),
    "user_delimiter": (str, _delimiter("user_delimiter")),
    "model_delimiter": (str, _delimiter("model_delimiter")),
}
