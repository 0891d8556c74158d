"""finetune.py as real processes: resume after a SIGKILL, 2-process DDP on CPU through
`accelerate launch` with the shipped config, and the dstack task files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llamaduo.errors import UsageError
from tests.test_finetune import _argv, _finetune, _rows, _write_jsonl


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data-proc")
    _write_jsonl(folder / "train_sft.jsonl", _rows(8))
    return folder


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parents[1])])
    return env


def test_resume_after_the_process_is_killed(repo_root: Path, tiny_model_dir: Path, sft_data: Path,
                                            tmp_path: Path) -> None:
    from llamaduo.pipeline.finetune import checkpoints

    out = tmp_path / "run"
    argv = _argv(tiny_model_dir, sft_data, out, "--save-strategy", "steps", "--save-steps", "1")
    proc = subprocess.Popen([sys.executable, "finetune.py", *argv, "--max-steps", "100000"], cwd=repo_root,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            done = checkpoints(out)
            if done and int(done[-1].name.split("-")[1]) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)  # a crash: no handler, no final save
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "finetune_summary.json").exists() and not (out / "adapter_model.safetensors").exists()
    last = checkpoints(out)[-1]
    step = int(last.name.split("-")[1])

    with pytest.raises(UsageError, match="already holds a training run"):  # no silent restart over it
        _finetune(argv + ["--max-steps", str(step + 2)])
    assert _finetune(argv + ["--max-steps", str(step + 2), "--resume-from-checkpoint", "latest"]) == 0

    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["resumed_from"] == str(last)
    assert summary["global_step"] == step + 2
    assert (out / "adapter_model.safetensors").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_ddp_on_cpu_with_the_shipped_accelerate_config(repo_root: Path, tiny_model_dir: Path,
                                                                      sft_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(repo_root / "config/accelerate/multi_gpu.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(_free_port()), "finetune.py", *_argv(tiny_model_dir, sft_data, out, "--max-steps", "2", "--padding-free")]
    proc = subprocess.run(cmd, cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2 (rank 0)" in proc.stderr and "world size 2 (rank 1)" in proc.stderr
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["attn_implementation"] == "sdpa_varlen"  # the CPU fast path under DDP too
    # 8 rows, 4 per device, 2 devices: one epoch is a single optimizer step, so 2 steps = 2 epochs.
    assert summary["metrics"]["epoch"] == pytest.approx(2.0)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()


# --------------------------------------------------------------------------- dstack

_DSTACK_FILES = ("ft.dstack.yml", "batch_infer.dstack.yml")


@pytest.mark.parametrize("name", _DSTACK_FILES)
def test_dstack_tasks_run_existing_scripts_and_configs(repo_root: Path, name: str) -> None:
    """Schema-level check that always runs: a dstack task whose commands name real files."""
    cfg = yaml.safe_load((repo_root / "dstack" / name).read_text())
    assert cfg["type"] == "task" and cfg["commands"] and cfg["resources"]["gpu"]
    env = dict(e.split("=", 1) for e in cfg["env"] if "=" in e)
    script = "finetune.py" if name.startswith("ft") else "batch_inference.py"
    assert any(script in c for c in cfg["commands"])
    assert (repo_root / script).is_file()
    for key in ("FT_CONFIG", "ACCELERATE_CONFIG"):
        if key in env:
            assert (repo_root / env[key]).is_file(), env[key]


_DSTACK_CHECK = """
import json, sys, yaml
from dstack._internal.core.errors import ConfigurationError
from dstack._internal.core.models.configurations import parse_run_configuration
data = yaml.safe_load(open(sys.argv[1]).read())
conf = parse_run_configuration(data)
data["resourcez"] = data.pop("resources")
try:
    parse_run_configuration(data)
    typo_refused = False
except ConfigurationError:
    typo_refused = True
print(json.dumps({"type": conf.type, "gpu_min": conf.resources.gpu.count.min, "typo_refused": typo_refused}))
"""


@pytest.mark.parametrize("name", _DSTACK_FILES)
def test_dstack_tasks_validate_with_dstack_models(repo_root: Path, name: str) -> None:
    """dstack's own configuration parser, run in .venv-dstack (made by `make test`; dstack is a
    CLI with its own pins, not a runtime dependency of the toolkit)."""
    python = repo_root / ".venv-dstack" / "bin" / "python"
    if not python.is_file():
        pytest.skip("dstack is not set up: `make test` creates .venv-dstack from requirements-dstack.txt")
    proc = subprocess.run([str(python), "-c", _DSTACK_CHECK, str(repo_root / "dstack" / name)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"type": "task", "gpu_min": 1, "typo_refused": True}  # and the parser is strict
