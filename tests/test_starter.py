"""`llamaduo init DIR` and `llamaduo env`: the starter configs parse as every stage reads them,
use no clone-only path, and are not overwritten by accident."""
from __future__ import annotations

import subprocess
import sys

import pytest

from llamaduo.errors import UsageError
from llamaduo.starter import STAGE_FILES, init

STAGES = {"finetune.yaml": "finetune", "batch_inference.yaml": "batch_inference", "evaluation.yaml": "evaluation",
          "data_gen.yaml": "data_gen", "dataset_merge.yaml": "dataset_merge"}


def test_init_writes_configs_that_every_stage_parses(tmp_path, capsys):
    import importlib

    written = init(tmp_path / "proj")
    assert sorted(p.name for p in written) == sorted([*STAGE_FILES, "llamaduo.env"])
    for name in STAGE_FILES:
        text = (tmp_path / "proj" / "config" / name).read_text()
        assert "src/llamaduo" not in text and "prompt_tmpl_path" not in text  # packaged defaults only
        module = importlib.import_module(f"llamaduo.pipeline.{STAGES[name]}")
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--config", str(tmp_path / "proj" / "config" / name), "--print-config"])
        assert exit_info.value.code == 0, name
    env = (tmp_path / "proj" / "llamaduo.env").read_text()
    assert "FINETUNE_CONFIG=config/finetune.yaml" in env and "MERGE_CONFIG=config/dataset_merge.yaml" in env
    with pytest.raises(UsageError, match="already exist"):
        init(tmp_path / "proj")
    assert init(tmp_path / "proj", force=True)


def test_env_and_version_commands(repo_root):
    proc = subprocess.run([sys.executable, "-m", "llamaduo", "env"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import llamaduo

    assert f"llamaduo: {llamaduo.__version__}" in proc.stdout
    for name in ("transformers:", "torch:", "datasets:", "accelerator:", "HF_HUB_OFFLINE:"):
        assert name in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "llamaduo", "--version"], cwd=repo_root, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and llamaduo.__version__ in proc.stdout
