"""The loop's check verifies Hub push targets before round 0 (issue 27): offline it refuses them
with the one-line fix, online it asks the Hub (the fake at the llamaduo.hub seam) whether the
token can write to the repo. A push that cannot happen must fail in the check, not after round 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamaduo import hub
from llamaduo.loop import check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "llamaduo.sh"


def _cpu_finetune_config(tmp_path: Path, **changes: object) -> Path:
    """The shipped CPU recipe with some keys changed, written to tmp_path."""
    values = yaml.safe_load((REPO / "config/cpu/finetune.yaml").read_text())
    values.update(changes)
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def pushing_stages(tmp_path_factory: pytest.TempPathFactory) -> list[check.Stage]:
    """finetune (push_to_hub to me/cpu-lora) and data_gen (push to the loop's per-round folder),
    parsed once the stages' own way (what their --print-config prints), as the loop's check does."""
    folder = tmp_path_factory.mktemp("push")
    ft = _cpu_finetune_config(folder, push_to_hub=True, hub_model_id="me/cpu-lora")
    stages = [check.Stage("finetune", str(ft), ["--output-dir", str(folder / "round_1/model")]),
              check.Stage("data_gen", "config/demo/data_gen.yaml",
                          ["--push-synth-ds-to-hf-hub", "--synth-ds-id", str(folder / "round_1/synth")])]
    assert check.print_configs(stages) == []
    return stages


def test_a_token_that_can_write_passes_and_others_are_named(pushing_stages, fake_hub) -> None:
    finetune = pushing_stages[:1]
    assert check.check_push_targets(finetune) == []
    assert fake_hub.calls == ["check_reachable", "whoami"]  # asked through the seam, nothing written

    fake_hub.role = "read"
    (problem,) = check.check_push_targets(finetune)
    assert problem.startswith("finetune (") and "read-only" in problem and "push_to_hub: false" in problem

    fake_hub.role, fake_hub.user = "write", "someone-else"
    (problem,) = check.check_push_targets(finetune)
    assert "someone-else" in problem and "'me'" in problem
    fake_hub.orgs = {"me": "write"}  # a member of the organization `me` may push there
    assert check.check_push_targets(finetune) == []
    fake_hub.orgs = {"me": "read"}
    assert "read access" in check.check_push_targets(finetune)[0]

    fake_hub.user, fake_hub.orgs, fake_hub.role = "me", {}, "fineGrained"
    fake_hub.scoped = [{"entity": {"type": "user", "name": "me"}, "permissions": ["repo.content.read"]}]
    assert "repo.write" in check.check_push_targets(finetune)[0]
    fake_hub.scoped[0]["permissions"].append("repo.write")
    assert check.check_push_targets(finetune) == []

    fake_hub.token = None
    (problem,) = check.check_push_targets(finetune)
    assert "needs a Hugging Face token" in problem and "hf auth login" in problem


def test_the_loop_folder_is_no_repo_id(pushing_stages, fake_hub) -> None:
    """With push on, a dataset stage would take the loop's per-round folder as the repo id."""
    (problem,) = check.check_push_targets(pushing_stages[1:])
    assert problem.startswith("data_gen (config/demo/data_gen.yaml): push_synth_ds_to_hf_hub is on")
    assert "not a Hub repo id" in problem and "push_synth_ds_to_hf_hub: false" in problem
    assert fake_hub.calls == []


def test_no_token_exits_2_in_the_check(tmp_path: Path, fake_hub, capsys: pytest.CaptureFixture) -> None:
    fake_hub.token = None
    ft = _cpu_finetune_config(tmp_path, push_to_hub=True, hub_model_id="me/cpu-lora")
    assert check.main(["--stage", "finetune", str(ft),
                       "--output-dir", str(tmp_path / "model")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs a Hugging Face token" in errors[0], errors
    assert not (tmp_path / "model").exists()


def test_offline_the_loop_refuses_a_push_before_round_0(tmp_path: Path) -> None:
    """The real loop script, offline, with the shipped CPU recipe set to push: exit 2 from the
    check, the fix named once, and nothing run."""
    ft = _cpu_finetune_config(tmp_path, push_to_hub=True, hub_model_id="me/cpu-lora")
    env = {**os.environ, "FINETUNE_CONFIG": str(ft), "OUT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: check:")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: check: finetune ({ft}): pushing hub_model_id 'me/cpu-lora': HF_HUB_OFFLINE")
    assert "set push_to_hub: false" in errors[0] and "hf auth login" in errors[0]
    assert "download" not in errors[0]  # not the model-loading advice
    assert not (tmp_path / "out").exists()


def test_the_finetune_stage_names_the_fix_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run alone, offline, the stage refuses the push before reading data, in one line (its main
    under run_main, in-process: the refusal is the point, not a process start)."""
    from tests.inprocess import run_stage

    ft = _cpu_finetune_config(tmp_path, push_to_hub=True, hub_model_id="me/cpu-lora",
                              output_dir=str(tmp_path / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_stage("finetune", ["--from-config", str(ft)], cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "HF_HUB_OFFLINE" in line]
    assert len(errors) == 1 and errors[0].startswith("error: pushing the fine-tuned model"), errors
    assert "set push_to_hub: false" in errors[0] and "download" not in errors[0]
