"""Strict reading of the YAML files a user writes (stage configs, pricing, gen configs).

PyYAML's SafeLoader lets a repeated key silently win (`eval_repeat: 5` then `eval_repeat: 10`
makes 10 calls), and `Path.read_text()` decodes with the locale, so a UTF-16 file surfaces as
a traceback. Both are user mistakes that must exit 2 with one line naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from src.errors import UsageError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping (merge keys `<<` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key '{key}' appears twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    pass


def read_text_utf8(path: Path, what: str) -> str:
    """The file's text, or a UsageError if it is not UTF-8 (a BOM-marked UTF-8 file is fine)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UsageError(f"{what} {path} is not UTF-8 text{hint}: byte {data[err.start]:#04x} at offset "
                         f"{err.start}; save it as UTF-8") from None


def load_yaml_strict(path: Path, what: str = "config file") -> Any:
    """Parse a YAML file as UTF-8 with unique keys; every problem is a one-line UsageError."""
    text = read_text_utf8(path, what)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise UsageError(f"{what} {path}: {err}; keep one") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
