"""Prompt templates from a prompts TOML (default: the shipped `llamaduo/defaults/prompts.toml`), rendered safely.

Templates use `$name` placeholders (Python's `string.Template`), as the original tool did,
so users' customised prompts keep working. `string.Template` is used instead of
`str.format` because data full of code contains `{}` that `format` would choke on, and a
`$` inside a *value* is never re-expanded.
"""
from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Iterable

import toml

from llamaduo.errors import UsageError


def load_template(path: str | Path, table: str, key: str = "prompt") -> str:
    """Read `[table] key` from a TOML file, raising UsageError for anything missing."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompt template file not found: {path}")
    try:
        data = toml.load(path)
    except toml.TomlDecodeError as err:
        raise UsageError(f"prompt template file {path} is not valid TOML: {err}") from err
    if table not in data:
        raise UsageError(f"prompt template file {path} has no [{table}] table (found: {sorted(data)})")
    if key not in data[table] or not isinstance(data[table][key], str):
        raise UsageError(f"prompt template file {path} has no string key '{key}' in [{table}]")
    return data[table][key]


def check_placeholders(template: str, allowed: Iterable[str], where: str = "template") -> None:
    """Fail early, naming any placeholder the stage cannot fill (a typo would otherwise
    silently send a literal `$instrution` to a paid API for every row)."""
    tmpl = Template(template)
    if not tmpl.is_valid():
        raise UsageError(f"{where}: invalid '$' placeholder syntax (write '$$' for a literal '$')")
    unknown = sorted(set(tmpl.get_identifiers()) - set(allowed))
    if unknown:
        raise UsageError(
            f"{where}: unknown placeholder(s) {', '.join('$' + u for u in unknown)}; "
            f"allowed: {', '.join('$' + a for a in sorted(allowed))}"
        )


def render(template: str, **values: str) -> str:
    """Substitute `$name` placeholders; values are inserted verbatim and never re-expanded."""
    return Template(template).substitute(**values)
