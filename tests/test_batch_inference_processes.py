"""batch_inference.py as real processes: killed mid-run then resumed, and data-parallel
under torchrun with 2 CPU processes (gloo). Nothing is simulated: the kill is SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

PROMPTS = [f"Write a Python function number {i} that {'adds ' * (i % 5)}two numbers." for i in range(24)]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _split(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "test_sft.jsonl", "w") as fh:
        for i, p in enumerate(PROMPTS):
            fh.write(json.dumps({"prompt_id": f"p{i}", "messages": [
                {"role": "user", "content": p}, {"role": "assistant", "content": f"ref {i}"}]}) + "\n")
    return folder


def _args(model: Path, data: Path, out: Path, max_new_tokens: int) -> list[str]:
    return ["--ft_model_id", str(model), "--test_ds_id", str(data), "--lm_response_ds_id", str(out),
            "--repeat", "2", "--inference_bs", "2", "--max_new_tokens", str(max_new_tokens),
            "--do_sample", "true", "--temperature", "1.0", "--dtype", "float32", "--lm_response_append", "false"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The in-process reference runs use one thread, like the subprocesses (OMP_NUM_THREADS=1),
    so both compute bit-identical logits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(model: Path, data: Path, out: Path, max_new_tokens: int) -> list[tuple]:
    """The same settings, uninterrupted, in one process (in-process: no extra interpreter start)."""
    from llamaduo.pipeline import batch_inference

    assert batch_inference.main(_args(model, data, out, max_new_tokens)) == 0
    return _responses(out)


def _responses(out: Path) -> list[tuple]:
    ds = load_from_disk(str(out))["batch_infer"]
    return list(zip(ds["prompt_id"], ds["repeat_index"], ds["candidate_responses"], ds["finish_reason"]))


def test_killed_run_resumes_where_it_stopped(repo_root, tiny_model_dir, tmp_path):
    data = _split(tmp_path / "data")
    out = tmp_path / "resumed"
    cmd = [sys.executable, "batch_inference.py", *_args(tiny_model_dir, data, out, 32)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    partial_lines = 0
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        files = list((out / "partial").glob("*/rank000.jsonl")) if (out / "partial").exists() else []
        partial_lines = sum(1 for _ in open(files[0])) if files else 0
        if partial_lines >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "dataset_dict.json").exists()
    total = 2 * len(PROMPTS)
    assert 6 <= partial_lines < total

    resumed = _run(cmd, repo_root)
    done_before = int(resumed.stderr.split("resuming: ")[1].split(" samples")[0])
    assert partial_lines <= done_before < total  # kept everything written before the kill
    assert _responses(out) == _reference(tiny_model_dir, data, tmp_path / "fresh", 32)
    assert len(_responses(out)) == total


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_torchrun_two_processes_shard_and_gather_in_order(repo_root, tiny_model_dir, tmp_path):
    data = _split(tmp_path / "data")
    parallel = tmp_path / "parallel"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = _run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "batch_inference.py",
                 *_args(tiny_model_dir, data, parallel, 6)], repo_root)
    # Both ranks really generated (each logs its own share), and rank 0 alone wrote the output.
    assert "rank 0/2:" in proc.stderr and "rank 1/2:" in proc.stderr
    assert proc.stdout.count("batch_inference:") == 1
    assert _responses(parallel) == _reference(tiny_model_dir, data, tmp_path / "single", 6)
    ds = load_from_disk(str(parallel))["batch_infer"]
    assert ds["prompt_id"] == [f"p{i}" for i in range(len(PROMPTS)) for _ in range(2)]
