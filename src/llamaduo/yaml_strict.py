"""Strict reading of the YAML files a user writes (stage configs, pricing, gen configs).

PyYAML's SafeLoader lets a repeated key silently win (`eval_repeat: 5` then `eval_repeat: 10`
makes 10 calls), and `Path.read_text()` decodes with the locale, so a UTF-16 file surfaces as
a traceback. Both are user mistakes that must exit 2 with one line naming the file and the fix.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.config")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping with another value (merge keys
    `<<` excepted). A key repeated with the SAME value is harmless and is accepted with a
    warning: the original LlamaDuo's own synth_data_gen.yaml repeats `prompt_tmpl_path`, and
    migrating users' files must load unchanged (issue 17)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, tuple[int, Any]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            line = key_node.start_mark.line + 1
            value = self.construct_object(value_node, deep=True)
            if key in seen:
                first_line, first_value = seen[key]
                if first_value != value:
                    raise _DuplicateKey(f"key '{key}' appears twice with different values "
                                        f"(lines {first_line} and {line})")
                logger.warning("%s: key '%s' appears twice with the same value (lines %d and %d); "
                               "one is enough", self.name, key, first_line, line)
                continue
            seen[key] = (line, value)
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
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as err:
        raise UsageError(f"{what} {path}: {err}; keep one") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
