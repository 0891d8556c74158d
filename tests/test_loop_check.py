"""The loop's check before it spends (`scripts/llamaduo.sh --check`, `CHECK_ONLY=1`), run as a
user runs it: the real bash script, the stages' own parsing (as --print-config), real datasets and the local
protocol server (a subprocess) as the OpenAI-compatible provider. Each run checks all five
configs, so one broken config per concern is put in a run and every problem must be named."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.servers.process import server_stats
from tests.test_loop import SCRIPT, marker_data, server_url, write_configs  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-do-not-print-4242"


def closed_port_url() -> str:
    """A local URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def edit(path: str, **changes) -> None:
    values = yaml.safe_load(Path(path).read_text())
    values.update(changes)
    for key, value in changes.items():
        if value is None:
            values.pop(key)
    Path(path).write_text(yaml.safe_dump(values))


def run_check(tmp_path: Path, configs: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **configs, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
            "HF_HUB_OFFLINE": "1", **env}
    full.pop("SERVICE_LLM_API_KEY", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=900)


def test_good_configs_pass_without_a_paid_call_and_run_nothing(tmp_path, tiny_model_dir, marker_data,
                                                               server_url):
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=90, train_steps=2)
    before = server_stats(server_url)["total"]
    proc = run_check(tmp_path, configs, CHECK_ONLY="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 stage configs parse" in proc.stderr
    assert server_stats(server_url)["total"] == before  # a GET probe only: no completion request
    assert not (tmp_path / "out").exists()  # nothing ran, no round folder


def test_every_problem_is_named_with_its_stage_and_no_key_is_printed(tmp_path, tiny_model_dir, marker_data,
                                                                     server_url):
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=90, train_steps=2)
    # data_gen: a key in the YAML and a provider nobody answers at
    edit(configs["DATAGEN_CONFIG"], service_llm_api_key=SECRET, service_llm_base_url=closed_port_url())
    # evaluation: a paid provider without any key
    edit(configs["EVAL_CONFIG"], service_llm_provider="anthropic", service_llm_api_key=None,
         service_llm_base_url=None, service_model_name="claude-x")
    # finetune: the training data folder does not exist; batch_inference: a missing file key
    edit(configs["FINETUNE_CONFIG"], dataset_mixer={str(tmp_path / "no-such-data"): 1.0})
    edit(configs["INFER_CONFIG"], ft_model_config_path=str(tmp_path / "missing.yaml"))
    proc = run_check(tmp_path, configs, "--check")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: check: ")]
    by_stage = {line.split()[2]: line for line in errors}
    assert set(by_stage) == {"data_gen", "evaluation", "finetune", "batch_inference"}, errors
    assert "is not reachable" in by_stage["data_gen"]
    assert "needs an API key" in by_stage["evaluation"]
    assert "no-such-data" in by_stage["finetune"] and "not found" in by_stage["finetune"]
    assert "ft_model_config_path: file not found" in by_stage["batch_inference"]
    assert SECRET not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_configs_that_do_not_parse_are_named_before_anything_runs(tmp_path, tiny_model_dir, marker_data, server_url):
    """A real run, as installed (`llamaduo-loop` = `python -m llamaduo loop`), from the configs' own
    folder with relative config paths (the stages resolve them against the current folder): a
    typo'd key, a non-finite learning rate and batch inference's `repeat: 0` are refused by the
    stages' own parsing, so the check stops the run with exit 2, one line per stage."""
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=90, train_steps=2)
    edit(configs["MERGE_CONFIG"], first_ds_train_splitt="train_sft")  # a typo'd key
    Path(configs["FINETUNE_CONFIG"]).write_text(Path(configs["FINETUNE_CONFIG"]).read_text()
                                                .replace("learning_rate: 0.01", "learning_rate: .nan"))
    edit(configs["INFER_CONFIG"], repeat=0)
    relative = {var: Path(path).name for var, path in configs.items()}
    env = {**os.environ, **relative, "OUT": "out", "HF_HUB_OFFLINE": "1", "MAX_ROUNDS": "1"}
    env.pop("PYTHON", None)
    env.pop("SERVICE_LLM_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "llamaduo", "loop"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    by_stage = {line.split()[2]: line for line in proc.stderr.splitlines() if line.startswith("error: check: ")}
    assert set(by_stage) == {"dataset_merge", "finetune", "batch_inference"}, by_stage
    assert by_stage["dataset_merge"].startswith(f"error: check: dataset_merge ({relative['MERGE_CONFIG']}): ")
    assert "first_ds_train_splitt" in by_stage["dataset_merge"]
    assert "'learning_rate' must be a finite number" in by_stage["finetune"]
    assert "'repeat' must be within 1-1,000, got 0" in by_stage["batch_inference"]
    assert "nothing was run" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_check_runs_each_stages_own_value_checks_and_output_checks(tmp_path, tiny_model_dir, marker_data,
                                                                       server_url):
    """Values that parse (so --print-config passes) but the stage refuses: the check must find
    them before round 0, as the stage itself would (issue 23: lora_r 0, a file as OUT)."""
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=90, train_steps=2)
    edit(configs["FINETUNE_CONFIG"], use_peft=True, lora_r=0)
    edit(configs["MERGE_CONFIG"], result_ds_train_split="all", result_ds_test_split="all")
    (tmp_path / "out").write_text("a file, not a folder")
    before = server_stats(server_url)["total"]
    proc = run_check(tmp_path, configs, "--check")
    assert proc.returncode == 2, proc.stderr[-3000:]
    by_stage = {line.split()[2]: line for line in proc.stderr.splitlines() if line.startswith("error: check: ")}
    assert "lora_r and lora_alpha must be positive" in by_stage["finetune"]
    assert "are both 'all'" in by_stage["dataset_merge"]
    for stage in ("batch_inference", "evaluation", "data_gen"):
        assert "is under the file" in by_stage[stage], by_stage
    assert server_stats(server_url)["total"] == before
    assert (tmp_path / "out").read_text() == "a file, not a folder"


def test_the_parse_is_the_stages_own_print_config_and_its_error_line(tmp_path):
    """In-process, the check keeps exactly the config the stage's `--print-config` prints, and a
    config that does not parse is named with the stage's own `error:` line (no process each)."""
    from llamaduo.loop import check
    from tests.inprocess import run_stage

    config = str(REPO / "config/demo/dataset_merge.yaml")
    argv = ["--from-config", config, "--result-ds-id", str(tmp_path / "merged")]
    (good,) = stages = [check.Stage("dataset_merge", config, argv[2:])]
    assert check.print_configs(stages) == []
    printed = run_stage("dataset_merge", [*argv, "--print-config"], cwd=REPO)
    assert printed.returncode == 0 and good.printed == yaml.safe_load(printed.stdout)
    assert good.printed["result_ds_id"] == str(tmp_path / "merged")

    typo = tmp_path / "merge.yaml"
    typo.write_text("first_ds_train_splitt: train_sft\n")
    (problem,) = check.print_configs([check.Stage("dataset_merge", str(typo), [])])
    own = run_stage("dataset_merge", ["--from-config", str(typo), "--print-config"], cwd=REPO)
    assert own.returncode == 2
    assert problem == f"dataset_merge ({typo}): the config does not parse: {own.stderr.strip().splitlines()[-1]}"
