"""The separate vLLM environment (requirements-vllm.txt, `make venv-vllm`), checked on a CPU.

vLLM 0.33.0 pins torch 2.14.0 and transformers < 5.21, so `--backend vllm` runs in its own venv,
where trl is absent. Two checks, without installing vLLM (its wheel alone is 336 MB):
1. the pins resolve: `uv pip compile` reads only package metadata from PyPI (27 s here;
   `pip install --dry-run --report` resolves the same set in about 3 minutes);
2. batch_inference.py's import closure works under transformers 5.20 (the version that
   environment resolves to, overlaid from `.venv-vllm-check/site` by `make test`) with trl and
   peft made unimportable: a real hf-backend run on the tiny model exercises every shared module
   (config, data, model reference, tokenizer, prompts, plan, sampling, store, hub).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECK_SITE = Path(".venv-vllm-check/site")
BLOCKED = ("trl", "peft")


def test_requirements_vllm_resolves_with_vllms_own_pins(repo_root: Path, tmp_path: Path) -> None:
    lock = tmp_path / "vllm.lock.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "compile", "requirements-vllm.txt", "--python-version", "3.12",
         "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--quiet", "-o", str(lock)],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pins = dict(line.split("==", 1) for line in lock.read_text().splitlines() if "==" in line and
                not line.startswith(" "))
    assert pins["vllm"] == "0.33.0" and pins["torch"] == "2.14.0"
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) < (5, 21)
    assert "trl" not in pins  # nothing in that environment pulls trl in


def _blocker(folder: Path) -> Path:
    """A sitecustomize that makes trl and peft absent, as in the vLLM environment: a None entry
    in sys.modules fails `import trl` and makes `importlib.util.find_spec("trl")` return None,
    which is how transformers' availability checks see a package that is not installed."""
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n")
    return folder


def test_batch_inference_runs_without_trl_under_transformers_5_20(repo_root: Path, tmp_path: Path,
                                                                   tiny_model_dir: Path) -> None:
    site = repo_root / CHECK_SITE
    assert (site / "transformers").is_dir(), "run `make test` (or `make .venv-vllm-check/.installed`) first"
    data = tmp_path / "data"
    data.mkdir()
    (data / "test_sft.jsonl").write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in ("hi", "yes")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_blocker(tmp_path)), str(site), str(repo_root / "src"), str(repo_root)]))
    probe = ("import sys, runpy, transformers; print('transformers', transformers.__version__);"
             "sys.argv = ['batch_inference.py'] + sys.argv[1:];"
             "runpy.run_path('batch_inference.py', run_name='__main__')")
    out = tmp_path / "responses"
    proc = subprocess.run(
        [sys.executable, "-c", probe, "--ft-model-id", str(tiny_model_dir), "--test-ds-id", str(data),
         "--lm-response-ds-id", str(out), "--repeat", "1", "--max-new-tokens", "4", "--no-do-sample"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("transformers 5.20.")
    assert (out / "summary.json").is_file()
    # the vllm backend itself gets as far as asking for vllm: a clear exit 2, no trl/peft import error
    proc = subprocess.run(
        [sys.executable, "-c", probe, "--backend", "vllm", "--ft-model-id", str(tiny_model_dir),
         "--test-ds-id", str(data), "--lm-response-ds-id", str(tmp_path / "v")],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "needs the vllm package" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("module", BLOCKED)
def test_the_blocker_really_blocks(repo_root: Path, tmp_path: Path, module: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(_blocker(tmp_path)))
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and f"import of {module} halted" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec('{module}'))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "None"
