"""transformers' `HfArgumentParser` (and its `string_to_bool`) without importing transformers.

WHY: the light stages' `--help` and `--print-config` must not pay for `import transformers`
(2-7 s on 2 cores: its `__init__` pulls in its utilities, scipy, ...), yet their flags should stay
the ones HfArgumentParser builds from the dataclasses. `transformers/hf_argparser.py` needs only
the standard library and PyYAML, so it is loaded here from the installed transformers, by file
path, as a module of its own: the library's code, version for version, without the package's
`__init__`. Once transformers is imported anyway (finetune, inference) its own module is used;
if a future version gives the file a package-relative import, the plain import is used (slower,
still correct).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_STANDALONE = "llamaduo._transformers_hf_argparser"


def _load() -> ModuleType:
    if "transformers" in sys.modules:
        return importlib.import_module("transformers.hf_argparser")
    found = importlib.util.find_spec("transformers")  # locates the package, does not import it
    path = Path(found.submodule_search_locations[0]) / "hf_argparser.py" if found and found.submodule_search_locations \
        else None
    spec = importlib.util.spec_from_file_location(_STANDALONE, path) if path and path.is_file() else None
    if spec is None or spec.loader is None:
        return importlib.import_module("transformers.hf_argparser")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_STANDALONE] = module  # dataclasses and typing resolve names through sys.modules
    try:
        spec.loader.exec_module(module)
    except ImportError:
        del sys.modules[_STANDALONE]
        return importlib.import_module("transformers.hf_argparser")
    return module


_module = _load()
HfArgumentParser = _module.HfArgumentParser
string_to_bool = _module.string_to_bool

__all__ = ["HfArgumentParser", "string_to_bool"]
