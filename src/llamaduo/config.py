"""Dataclass configs -> CLI flags, with `--from-config` YAML files (every failure: UsageError, exit 2).

Built on `transformers.HfArgumentParser` (TRL's `TrlParser` for finetune.py). The YAML values
become the parser's *defaults*, so an explicit CLI flag always wins (the original tool merged
the other way round and silently dropped `--eval-repeat 10` when the YAML said 1). On top:
YAML type checks, unknown keys named with the closest valid ones, `--no-flag` for every
boolean, renamed and legacy keys, `--print-config`. The user-facing rules: README.md
(Configuration) and docs/migrating.md.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import enum
import json
import logging
import re
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from llamaduo.errors import UsageError
from llamaduo.hf_argparse import HfArgumentParser, string_to_bool
from llamaduo.value_checks import BOUND_KEYS, check_fields

logger = logging.getLogger("llamaduo.config")

# Credential-like names: `hub_token`, `service_llm_api_key`... but not `max_new_tokens` or
# `average_tokens_across_devices`.
_SECRET_NAME = re.compile(r"(api_key|(^|_)token$|secret|password)", re.IGNORECASE)
MASK = "***"
_META_DESTS = ("from_config", "print_config")


def parse_config(
    *dataclass_types: type,
    argv: Sequence[str] | None = None,
    description: str = "",
    epilog: str = "",
    renamed_keys: Mapping[str, str] | None = None,
    key_transforms: Mapping[str, tuple[Callable[[Any], Any], Callable[[Any], dict]]] | None = None,
    adjust: Callable[[dict], dict] | None = None,
    legacy_keys: Mapping[str, tuple[Callable[[Any], Any], Callable[[Any, Mapping[str, Any]], dict]]] | None = None,
    parser_cls: type[HfArgumentParser] = HfArgumentParser,
    prog: str | None = None,
) -> tuple[Any, ...]:
    """Parse CLI args (and an optional `--from-config` YAML) into dataclass instances.

    Args:
        dataclass_types: the config dataclasses, in the order they are returned.
        argv: arguments without the program name; default `sys.argv[1:]`.
        renamed_keys: old key -> new key; accepted in YAML and on the CLI with one warning.
        key_transforms: legacy key -> (type converter, fn(value) -> {new_key: value}), for keys
            that are not a plain rename (e.g. `use_flash_attention_2: true` ->
            `attn_implementation: flash_attention_2`).
        adjust: applied to the merged {key: value} dict just before the dataclasses are built,
            e.g. to pick CPU-friendly defaults the dataclass' `__post_init__` would reject.
        legacy_keys: the original tool's keys that are no plain rename: key -> (type converter,
            fn(value, other values) -> {key: value} updates, which override). See src/llamaduo/legacy_keys.py.
    """
    argv = _positional_config(list(sys.argv[1:] if argv is None else argv))
    renamed_keys = dict(renamed_keys or {})
    key_transforms = dict(key_transforms or {})
    legacy_keys = dict(legacy_keys or {})
    parser = _build_parser(dataclass_types, parser_cls, description, epilog, prog,
                           {**key_transforms, **legacy_keys})
    argv = _rename_cli_flags(argv, renamed_keys)

    config_path = _peek_config_path(argv)
    if config_path is not None:
        file_values = _undash_keys(_load_yaml_mapping(config_path), source=str(config_path))
        file_values = _apply_renames(file_values, renamed_keys, source=str(config_path))
        file_values = _apply_transforms(file_values, key_transforms, parser)
        file_values = _apply_legacy(file_values, legacy_keys)
        _check_known(file_values, parser, where=f"config file {config_path}")
        parser.set_defaults(**{k: _check_yaml_value(k, v, parser) for k, v in file_values.items()})

    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        _raise_unknown_flags(unknown, parser)
    values = vars(namespace)
    print_config = values.pop("print_config", False)
    values.pop("from_config", None)
    values = _apply_cli_transforms(values, key_transforms)
    values = _apply_cli_legacy(values, legacy_keys, _explicit_dests(argv, parser))
    if adjust is not None:
        values = adjust(values)
    instances = _build_dataclasses(dataclass_types, values)
    _register_secrets(instances)
    if print_config:
        from llamaduo.redact import redact  # URL credentials too, not only credential-named keys

        print(redact(yaml.safe_dump(config_to_dict(*instances), sort_keys=False, allow_unicode=True)), end="")
        for note in (n for inst in instances for n in getattr(inst, "config_notes", lambda: [])()):
            print(f"# {note}")  # e.g. which env variable gave the API key (its name, never its value)
        raise SystemExit(0)
    return instances


def config_to_dict(*configs: Any, mask_secrets: bool = True) -> dict[str, Any]:
    """Merge dataclass instances into one plain, JSON/YAML-safe dict.

    Secrets (fields with `metadata={"secret": True}` or a name like *api_key*/*token*) are
    masked, because this dict goes into `--print-config` output and dataset cards.
    """
    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name, None)
            if mask_secrets and is_secret_field(f) and value:
                value = MASK
            out[f.name] = _plain(value)
    return out


def _register_secrets(instances: Iterable[Any]) -> None:
    """Every secret config value (an API key given as a flag or in YAML) is masked in every
    output text from now on, like the credential env vars (llamaduo.redact)."""
    from llamaduo.redact import register_secret, url_secrets

    for cfg in instances:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name, None)
            if is_secret_field(f):
                register_secret(value, f.name)
            elif isinstance(value, str) and "://" in value:  # a base URL's password or ?key=
                for part in url_secrets(value):
                    register_secret(part, f"credentials in {f.name}")


def is_secret_field(f: dataclasses.Field) -> bool:
    """A field is secret if declared so, or if its name looks like a credential."""
    return bool(f.metadata.get("secret")) or bool(_SECRET_NAME.search(f.name))


# --------------------------------------------------------------------------- parser building


def _build_parser(
    dataclass_types: Iterable[type],
    parser_cls: type[HfArgumentParser],
    description: str,
    epilog: str,
    prog: str | None,
    key_transforms: Mapping[str, tuple[Callable[[Any], Any], Callable[[Any], dict]]],
) -> HfArgumentParser:
    parser = _strip_custom_metadata(parser_cls)(
        list(dataclass_types),
        description=description,
        epilog=epilog,
        prog=prog,
        formatter_class=_DefaultsHelpFormatter,
        allow_abbrev=False,
    )
    from llamaduo.version import version_line

    parser.add_argument("--version", "-V", action="version", version=version_line(parser.prog))
    parser.add_argument(
        *_CONFIG_FLAGS, dest="from_config", metavar="YAML",
        help="load settings from a YAML mapping (--config is an alias, as in TRL); any explicit "
             "CLI flag overrides the file",
    )
    parser.add_argument(
        "--print-config", "--print_config", dest="print_config", action="store_true",
        help="print the effective merged config (secrets masked) and exit",
    )
    fields = _known_dests(parser)
    for key, (conv, _) in key_transforms.items():
        if key in fields:  # a legacy key that is also a field (its value is kept): the field's flag
            continue
        opts = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        parser.add_argument(*opts, dest=key, type=conv, default=argparse.SUPPRESS,
                            nargs="?", const=True, help="legacy key, mapped for compatibility")
    _add_negative_bool_flags(parser)
    _use_json_for_dict_fields(parser)
    secret = {f.name for t in dataclass_types for f in dataclasses.fields(t) if is_secret_field(f)}
    for action in parser._actions:
        action.secret = action.dest in secret  # type: ignore[attr-defined]  # read by the help formatter
        if not action.help and action.option_strings:  # argparse lists a help-less flag without its default
            action.help = action.dest.replace("_", " ")
    parser.error = _raise_usage  # type: ignore[method-assign]  # exit 2 via UsageError, one line
    return parser


class _DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` shows every key's default, `(default: ...)` as TRL's does (the value in effect,
    so `--config x.yaml --help` shows the file's); a secret's default is masked."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.default is argparse.SUPPRESS
                or action.dest in ("help", "version", *_META_DESTS)):
            return text
        return f"{text} (default: {_default_text(action).replace('%', '%%')})".lstrip()


def _default_text(action: argparse.Action) -> str:
    value = action.default
    if value is None:
        return "None"
    if getattr(action, "secret", False):
        return MASK
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


_CUSTOM_METADATA = ("secret", *BOUND_KEYS)


def _strip_custom_metadata(parser_cls: type[HfArgumentParser]) -> type[HfArgumentParser]:
    """HfArgumentParser passes field metadata to `add_argument` as kwargs; hide our own keys."""

    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        if any(k in field.metadata for k in _CUSTOM_METADATA):
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(
                {k: v for k, v in field.metadata.items() if k not in _CUSTOM_METADATA})
        parser_cls._parse_dataclass_field(parser, field)

    return type(parser_cls.__name__, (parser_cls,), {"_parse_dataclass_field": staticmethod(_parse_dataclass_field)})


def _raise_usage(message: str) -> None:
    raise UsageError(message)


def _add_negative_bool_flags(parser: argparse.ArgumentParser) -> None:
    """HfArgumentParser adds `--no_x` only for booleans that default to True; add it for all."""
    for action in list(parser._actions):
        if not _is_bool_type(action.type):
            continue
        if action.nargs is None:  # Optional[bool] fields: let a bare `--flag` mean true as well
            action.nargs, action.const = "?", True
        neg = [f"--no_{action.dest}", f"--no-{action.dest.replace('_', '-')}"]
        neg = list(dict.fromkeys(o for o in neg if o not in parser._option_string_actions))
        if neg:
            parser.add_argument(*neg, dest=action.dest, action="store_false", default=argparse.SUPPRESS,
                                help=f"set {action.dest} to false")


def unwrap_accept_none(fn: Any) -> Any:
    """TRL wraps the converter of `X | None` fields in `_accept_none(X)`; look through it
    (the one place that knows that private wrapper: config here, finetune's TrlParser)."""
    while getattr(fn, "__closure__", None) and getattr(fn, "__qualname__", "").startswith("_accept_none"):
        fn = next(c.cell_contents for c in fn.__closure__ if callable(c.cell_contents))
    return fn


def _is_bool_type(fn: Any) -> bool:
    """HfArgumentParser's converter; TRL ships its own copy of it, so compare by name."""
    fn = unwrap_accept_none(fn)
    return fn is string_to_bool or getattr(fn, "__name__", "") == "string_to_bool"


def _parse_mapping(text: str) -> dict:
    """CLI value of a mapping field: JSON or YAML flow style, e.g. '{"data/x": 1.0}'."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not a mapping: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a mapping such as '{\"key\": 1.0}'")
    return value


_parse_mapping.__name__ = "mapping"  # argparse names the type in its error message


def _use_json_for_dict_fields(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if unwrap_accept_none(action.type) is dict:
            action.type = _parse_mapping


# --------------------------------------------------------------------------- YAML handling


_CONFIG_FLAGS = ("--from-config", "--from_config", "--config")
_YAML_SUFFIXES = (".yaml", ".yml")


def _positional_config(argv: list[str]) -> list[str]:
    """`script.py config.yaml [flags]` means `--from-config config.yaml`, as the original's
    alignment-handbook scripts took it; only the first token, and only a .yaml/.yml path."""
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(_YAML_SUFFIXES):
        return ["--from-config", *argv]
    return argv


def _undash_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """YAML keys accept the dash spelling, as CLI flags do (`lm-response-append: false`)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in out:
            raise UsageError(f"config file {source}: key '{key}' is given twice (also as '{name}')")
        out[name] = value
    return out


def _apply_legacy(values: dict[str, Any], legacy: Mapping) -> dict[str, Any]:
    """Pop each legacy key and apply its updates (they override: `rate_limit_on: false` must
    turn pacing off even when the same file sets `rate_limit_per_minute`)."""
    out = dict(values)
    for key, (_, fn) in legacy.items():
        if key in out:
            out.update(fn(out.pop(key), out))
    return out


def _apply_cli_legacy(values: dict[str, Any], legacy: Mapping, explicit: set[str]) -> dict[str, Any]:
    """A legacy key given as a CLI flag: its updates lose only to the other explicit flags."""
    out = dict(values)
    for key, (_, fn) in legacy.items():
        if key in out and key in explicit:  # else a field-backed key: the file's value, mapped already
            updates = fn(out.pop(key), {k: v for k, v in out.items() if k in explicit})
            out.update({k: v for k, v in updates.items() if k == key or k not in explicit})
    return out


def _explicit_dests(argv: Sequence[str], parser: argparse.ArgumentParser) -> set[str]:
    """Destinations of the flags actually typed on the command line."""
    actions = parser._option_string_actions
    return {actions[t.split("=")[0]].dest for t in argv if t.split("=")[0] in actions}


def _peek_config_path(argv: Sequence[str]) -> Path | None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(*_CONFIG_FLAGS, dest="from_config")
    ns, _ = pre.parse_known_args(argv)
    return Path(ns.from_config) if ns.from_config else None


def _load_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    from llamaduo.yaml_strict import load_yaml_strict  # UTF-8 only, duplicate keys refused

    data = load_yaml_strict(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a YAML mapping of key: value, got {type(data).__name__}")
    return data


def _apply_renames(values: dict[str, Any], renamed: Mapping[str, str], source: str) -> dict[str, Any]:
    out = dict(values)
    for old, new in renamed.items():
        if old in out:
            logger.warning("%s: key '%s' is renamed to '%s'; using it as '%s'", source, old, new, new)
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def _apply_transforms(values: dict[str, Any], transforms: Mapping, parser: argparse.ArgumentParser) -> dict:
    out = dict(values)
    for key, (_, fn) in transforms.items():
        if key in out:
            for new_key, new_value in fn(out.pop(key)).items():
                out.setdefault(new_key, new_value)
    return out


def _apply_cli_transforms(values: dict[str, Any], transforms: Mapping) -> dict[str, Any]:
    out = dict(values)
    for key, (_, fn) in transforms.items():
        if key in out:
            out.update(fn(out.pop(key)))
    return out


def _rename_cli_flags(argv: list[str], renamed: Mapping[str, str]) -> list[str]:
    """Accept old flag names on the CLI too (every YAML key is also a CLI flag)."""
    if not renamed:
        return argv
    spellings = {}
    for old, new in renamed.items():
        for o in {old, old.replace("_", "-")}:
            spellings[f"--{o}"] = f"--{new}"
    out = []
    for token in argv:
        flag, eq, rest = token.partition("=")
        if flag in spellings:
            logger.warning("flag '%s' is renamed to '%s'", flag, spellings[flag])
            token = spellings[flag] + eq + rest
        out.append(token)
    return out


def _known_dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    known: dict[str, argparse.Action] = {}
    for a in parser._actions:  # first action per dest: the typed one, not its `--no-x` twin
        if a.dest not in ("help", *_META_DESTS):
            known.setdefault(a.dest, a)
    return known


def _check_known(values: Mapping[str, Any], parser: argparse.ArgumentParser, where: str) -> None:
    known = _known_dests(parser)
    for key in values:
        if key not in known:
            raise UsageError(f"{where}: unknown key '{key}'{_suggest(key, known)}")


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key.lstrip("-").replace("-", "_"), list(known), n=3, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}?" if close else ""


def _raise_unknown_flags(unknown: list[str], parser: argparse.ArgumentParser) -> None:
    flags = [u.split("=")[0] for u in unknown if u.startswith("-")]
    if not flags:
        raise UsageError(f"unexpected argument(s): {' '.join(unknown)}")
    flag = flags[0]
    raise UsageError(f"unknown flag '{flag}'{_suggest(flag, _known_dests(parser))}")


def _type_name(action: argparse.Action) -> str:
    t = unwrap_accept_none(action.type)
    if _is_bool_type(t) or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "a boolean (true/false)"
    if t is _parse_mapping:
        return "a mapping"
    if action.choices:
        return f"one of {list(action.choices)}"
    return {int: "an integer", float: "a number", str: "a string"}.get(t, getattr(t, "__name__", str(t)))


def _check_yaml_value(key: str, value: Any, parser: argparse.ArgumentParser) -> Any:
    """Validate one YAML value against its argparse action; return it converted."""
    action = _known_dests(parser)[key]
    if value is None:
        return None
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_check_scalar(key, v, action) for v in items]
    return _check_scalar(key, value, action)


def _check_scalar(key: str, value: Any, action: argparse.Action) -> Any:
    t = unwrap_accept_none(action.type)
    ok: bool
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or _is_bool_type(t):
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif t is _parse_mapping:
        ok = isinstance(value, dict)
    elif action.choices:
        ok = value in action.choices or str(value) in [str(c) for c in action.choices]
        if ok and t is not None and isinstance(value, str):
            value = t(value)
    elif t in (str, None):
        # Dict/list values are allowed where TrainingArguments declares "dict | str" fields.
        ok = isinstance(value, (str, int, float, dict, list)) and not isinstance(value, bool)
        value = str(value) if isinstance(value, (int, float)) else value
    else:
        try:
            value = t(value)
            ok = True
        except Exception:  # noqa: BLE001 - any converter failure is a type error for the user
            ok = False
    if not ok:
        raise UsageError(f"config key '{key}' expects {_type_name(action)}, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------- dataclasses


def _build_dataclasses(dataclass_types: Iterable[type], values: dict[str, Any]) -> tuple[Any, ...]:
    instances = []
    for dtype in dataclass_types:
        keys = {f.name for f in dataclasses.fields(dtype) if f.init}
        kwargs = {k: v for k, v in values.items() if k in keys}
        check_fields(dtype, kwargs)  # NaN/inf, NUL, str types, split names, bounds: before __post_init__
        try:
            instances.append(dtype(**kwargs))
        except (ValueError, TypeError) as err:
            raise UsageError(f"invalid configuration ({dtype.__name__}): {err}") from err
    return tuple(instances)


def _plain(value: Any) -> Any:
    """Make a config value safe for YAML/JSON dumps (enums, paths, nested containers)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
