"""A Hub model or dataset already in the local Hugging Face cache loads with HF_HUB_OFFLINE=1.

The cache is built by the test in huggingface_hub's own layout (`models--org--name` /
`datasets--org--name`, `snapshots/<sha>/...`, `refs/main`), which is what a download leaves;
the stages that load from it run as subprocesses with HF_HUB_CACHE pointing at it. Nothing is
faked: `datasets`, `transformers` and `huggingface_hub` read that cache themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk

from tests.inprocess import run_stage

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def _repo(cache: Path, kind: str, repo_id: str) -> Path:
    root = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / SHA
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)
    return snap


def chat(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]


@pytest.fixture()
def hub_cache(tmp_path: Path, tiny_model_dir: Path) -> Path:
    cache = tmp_path / "hub"
    snap = _repo(cache, "datasets", "acme/sums")
    (snap / "data").mkdir()
    Dataset.from_list([{"messages": chat(i)} for i in range(12)]).to_parquet(str(snap / "data/train_sft-00000-of-00001.parquet"))
    Dataset.from_list([{"messages": chat(i)} for i in range(50, 53)]).to_parquet(str(snap / "data/test_sft-00000-of-00001.parquet"))
    model = _repo(cache, "models", "acme/tiny-chat")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, model / f.name)
    return cache


def run(args: list[str], cache: Path, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache.parent / "ds")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc, time.monotonic() - start


def refused(stage: str, argv: list[str]) -> subprocess.CompletedProcess:
    """An id that is in no cache, run as the stage's script runs main, in this process (offline,
    as every test is): the refusal is the point, not a process start (a finetune process spends
    ~10 CPU-seconds importing TRL first). huggingface_hub reads HF_HUB_CACHE at import, so this
    process looks in its own default cache, where the id is not either."""
    return run_stage(stage, argv, cwd=REPO)


def test_cached_hub_dataset_loads_offline_and_an_uncached_id_exits_2_fast(hub_cache, tmp_path):
    out = tmp_path / "merged"
    proc, _ = run(["dataset_merge.py", "--first-ds-id", "acme/sums", "--second-ds-id", "acme/sums",
                   "--result-ds-id", str(out)], hub_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the cached copy" in proc.stderr
    merged = load_from_disk(str(out))
    assert len(merged["train_sft"]) == 12 and len(merged["test_sft"]) == 3
    proc = refused("dataset_merge", ["--first-ds-id", "acme/not-cached", "--second-ds-id", "acme/sums",
                                     "--result-ds-id", str(tmp_path / "m2")])
    # exit 2 naming the cache, not a 20-45 s stall then a traceback (no wall-clock bound: the
    # standards keep timing out of tests; bench/ measures speed)
    assert proc.returncode == 2 and "nor in the local Hugging Face cache" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cached_hub_model_finetunes_offline(hub_cache, tmp_path):
    out = tmp_path / "ft"
    proc, _ = run(["finetune.py", "--model-name-or-path", "acme/tiny-chat", "--use-peft", "--dataset-id", "acme/sums",
                   "--output-dir", str(out), "--max-steps", "1", "--per-device-train-batch-size", "4",
                   "--max-length", "128", "--report-to", "none", "--save-strategy", "no",
                   "--no-gradient-checkpointing", "--lora-r", "4", "--lora-alpha", "8",
                   "--dataloader-num-workers", "0"], hub_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loading the copy in the local Hugging Face cache" in proc.stderr
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-chat"
    proc = refused("finetune", ["--model-name-or-path", "acme/not-cached", "--dataset-id", "acme/sums",
                                "--output-dir", str(tmp_path / "ft2"), "--report-to", "none"])
    assert proc.returncode == 2 and "acme/not-cached" in proc.stderr and "Traceback" not in proc.stderr
