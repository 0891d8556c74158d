"""End-to-end tests of the LlamaDuo loop (`scripts/llamaduo.sh` in a clone, `llamaduo-loop` installed:
the same packaged script), run as a user runs it.

Everything is real: the bash script, every stage as its own process (`python -m llamaduo STAGE`), a tiny random
Llama (fixture `tiny_model_dir`) as the small model, and the local protocol server
(`tests/servers/protocol_server.py`, a subprocess) as the OpenAI-compatible service LLM for
both the judge and the synthetic-data generator. Nothing is mocked.

How the branching is forced without luck: the server's judge returns exactly the scores of a
`[[sim=NN prec=MM]]` marker found in the candidate answer, and any other candidate gets a
hash-derived score. The training data's every answer is the marker `[[sim=95 prec=95]]`, so:
- round 0 (untuned tiny model) writes junk -> hash scores, mean far below 90 -> exit 3;
- after fine-tuning, the model writes the marker -> 95/95.
With thresholds 90/90 the loop qualifies in round 1 (exit 0); with thresholds 99/99 it never
qualifies and runs data_gen -> dataset_merge -> round 2 -> exit 3.
"""
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
import yaml

from tests.servers.process import server_process

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "llamaduo.sh"
DEMO = REPO / "data" / "demo"
MARKER = "[[sim=95 prec=95]]"
LOOP_TIMEOUT_S = 1500  # generous (a loaded 2-core machine is slow), but a hang must fail the test


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    """The local protocol server as a real process; yields its base URL."""
    with server_process() as url:
        yield url


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reference dataset (real demo prompts) whose every answer is the score marker."""
    out = tmp_path_factory.mktemp("marker-data")
    for split, n in (("train_sft", 24), ("test_sft", 4)):
        rows = [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text().splitlines()[:n]]
        with (out / f"{split}.jsonl").open("w") as f:
            for row in rows:
                row["messages"][1]["content"] = MARKER
                row.pop("test", None)  # marker answers are not code: no unit tests to run
                row.pop("entry_point", None)
                f.write(json.dumps(row) + "\n")
    return out


def write_configs(folder: Path, model: Path, data: Path, url: str, threshold: float,
                  train_steps: int) -> dict[str, str]:
    """Stage configs for the tiny model and the local server; returns the loop's env vars.

    `train_steps`: 40 lets the tiny model learn the marker; a test that never qualifies
    anyway uses 2, because each step costs about a second on 2 CPU cores."""
    service = {
        "service_llm_provider": "openai", "service_llm_base_url": url + "/v1",
        "service_model_name": "gpt-4o-mini", "service_llm_api_key": "test-key",
        "rate_limit_per_minute": 0, "prompt_tmpl_path": str(REPO / "src/llamaduo/defaults/prompts.toml"),
    }
    configs = {
        "FINETUNE_CONFIG": {
            # Full fine-tuning with a high learning rate: the tiny random model must learn to
            # write the marker within a few seconds of CPU.
            "model_name_or_path": str(model), "use_peft": False,
            "dataset_mixer": {str(data): 1.0}, "dataset_splits": ["train_sft", "test_sft"],
            "max_seq_length": 128, "per_device_train_batch_size": 8, "learning_rate": 1.0e-2,
            "lr_scheduler_type": "constant", "max_steps": train_steps, "logging_steps": 10, "eval_strategy": "no",
            "save_strategy": "no", "report_to": "none", "seed": 0, "output_dir": str(folder / "unused-ft"),
            "overwrite_output_dir": True, "push_to_hub": False,
        },
        "INFER_CONFIG": {
            "ft_model_id": str(model), "test_ds_id": str(data), "test_ds_split": "test_sft",
            "inference_bs": 8, "repeat": 1, "do_sample": False, "temperature": 0.0, "max_new_tokens": 16,
            "seed": 0, "push_lm_responses_to_hf_hub": False, "lm_response_ds_id": str(folder / "unused-bi"),
            "lm_response_ds_split": "batch_infer",
        },
        "EVAL_CONFIG": {
            **service, "lm_response_ds_split": "batch_infer", "eval_repeat": 1, "eval_workers": 4,
            "avg_similarity_threshold": threshold, "avg_precision_threshold": threshold,
            "coverage_threshold": 50, "max_failure_ratio": 0.1, "push_eval_to_hf_hub": False,
            "eval_ds_id": str(folder / "unused-ev"), "eval_ds_split": "eval",
        },
        "DATAGEN_CONFIG": {
            **service, "reference_ds_id": str(data), "reference_ds_split": "train_sft", "num_samples": 2,
            "target_num_pairs": 4, "seed": 0, "topic": "coding", "gen_workers": 2,
            "push_synth_ds_to_hf_hub": False, "synth_ds_id": str(folder / "unused-dg"), "synth_ds_split": "train_sft",
        },
        "MERGE_CONFIG": {
            "first_ds_id": str(data), "first_ds_train_split": "train_sft", "first_ds_test_split": "test_sft",
            "second_ds_id": str(folder / "unused-dg"), "second_ds_train_split": "train_sft",
            "push_result_ds_to_hf_hub": False, "result_ds_id": str(folder / "unused-mg"),
            "result_ds_train_split": "train_sft", "result_ds_test_split": "test_sft",
        },
    }
    env = {}
    for var, values in configs.items():
        path = folder / f"{var.lower()}.yaml"
        path.write_text(yaml.safe_dump(values))
        env[var] = str(path)
    return env


def loop_env(tmp_path: Path, configs: dict[str, str], max_rounds: int) -> dict[str, str]:
    return {**os.environ, **configs, "OUT": str(tmp_path / "out"), "MAX_ROUNDS": str(max_rounds),
            "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_loop(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=LOOP_TIMEOUT_S)


def events(out: Path, kinds: tuple[str, ...] = ("start", "skip")) -> list[tuple[str, str, str]]:
    """(round, stage, event) from loop.log, in order, for the given event kinds."""
    found = []
    for line in (out / "loop.log").read_text().splitlines():
        fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
        if fields.get("event") in kinds:
            found.append((fields["round"], fields["stage"], fields["event"]))
    return found


def summary(out: Path, k: int) -> dict:
    return json.loads((out / f"round_{k}" / "eval" / "summary.json").read_text())


ROUND0 = [("0", "batch_inference"), ("0", "evaluation")]
ROUND1 = [("1", "finetune"), ("1", "batch_inference"), ("1", "evaluation")]


# ----------------------------------------------------------------------------- tests
# The two end-to-end tests run 5 and ~13 stage processes; on a loaded 2-core machine that
# can pass the suite's default 600 s per-test timeout, so they get more room.
@pytest.mark.timeout(1600)
def test_qualifies_after_finetune_and_stops(tmp_path, tiny_model_dir, marker_data, server_url):
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=90,
                            train_steps=40)
    proc = run_loop(loop_env(tmp_path, configs, max_rounds=2))
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stage order: round 0 baseline, then one fine-tuning round, and no data generation
    assert [(r, s) for r, s, _ in events(out)] == ROUND0 + ROUND1
    assert not summary(out, 0)["qualified"] and summary(out, 1)["qualified"]
    assert summary(out, 1)["mean_similarity"] == 95 > summary(out, 0)["mean_similarity"]
    assert not (out / "round_1" / "data_gen.done").exists()
    table = (out / "results.md").read_text()
    assert "| 1 " in table and "yes" in table and "95.0" in table
    assert "95.0" in proc.stdout  # the table is printed too


@pytest.mark.timeout(3000)
def test_never_qualifies_resumes_after_kill_and_the_loop_budget_stops_it(tmp_path, tiny_model_dir, marker_data,
                                                                         server_url):
    """Configs that never qualify (thresholds 99/99; 2 training steps, since it never qualifies
    anyway) and a loop budget. One stopped run starts three checks (WHY one test: round 0 and the
    stop cost a check, batch inference, evaluation and a finetune start, about 30 s of CPU, and a
    module fixture would run once per pytest-xdist worker):
    1. stopped while round 1's finetune runs: finished stages kept, the stopped one not marked;
    2. MAX_COST_USD: round 0's evaluation (the protocol server as a priced gpt-4o-mini) got the
       budget as --max-cost-usd and recorded its spend; a rerun (on a copy) with a budget below
       that spend stops with exit 1 and a clear line before round 1 fine-tunes anything;
    3. resumed: round 0 skipped, the stopped finetune runs again, then the not-qualified branch
       data_gen -> dataset_merge -> round 2 -> exit 3; a third run finds everything done."""
    configs = write_configs(tmp_path, tiny_model_dir, marker_data, server_url, threshold=99, train_steps=2)
    env = {**loop_env(tmp_path, configs, max_rounds=2), "MAX_COST_USD": "1"}
    out = tmp_path / "out"

    # 1) start the loop and stop it (SIGTERM to its process group, as Ctrl-C or a CI timeout
    #    would) while round 1's finetune is running
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + LOOP_TIMEOUT_S
    while ("round=1 stage=finetune event=start" not in _read(out / "loop.log")
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(1.0)  # well inside the stage: a finetune process takes several seconds to import
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    assert (out / "round_0" / "evaluation.done").read_text().split()[0] == "3"
    assert not (out / "round_1" / "finetune.done").exists()
    assert "round=1 stage=finetune event=interrupted" in _read(out / "loop.log")

    # 2) the budget, on a copy of the stopped loop's output
    spent_out = tmp_path / "budget" / "out"
    shutil.copytree(out, spent_out, symlinks=True)
    start = next(line for line in _read(spent_out / "loop.log").splitlines()
                 if "round=0 stage=evaluation event=start" in line)
    assert "--max-cost-usd 1.000000" in start  # nothing spent yet: the whole budget
    spent = summary(spent_out, 0)["cost_usd"]
    assert spent > 0
    (spent_out / "loop.log").unlink()
    stopped = run_loop({**env, "OUT": str(spent_out), "MAX_COST_USD": f"{spent / 2:.10f}"})
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "is spent" in stopped.stderr and "stopped before round 1's evaluation" in stopped.stderr
    assert [e for e in events(spent_out) if e[2] == "start"] == []  # round 0 skipped, round 1 never started
    assert "event=budget_spent" in _read(spent_out / "loop.log")
    assert f"${spent:.4f}" in (spent_out / "results.md").read_text()  # the table's total cost

    # 3) rerun (without the budget): round 0 is skipped, the stopped finetune runs again, then the
    #    not-qualified branch: data_gen -> dataset_merge -> round 2 -> exit 3 at MAX_ROUNDS
    env.pop("MAX_COST_USD")
    (out / "loop.log").rename(out / "loop.first.log")
    rerun = run_loop(env)
    assert rerun.returncode == 3, rerun.stderr[-3000:]
    assert events(out) == [
        ("0", "batch_inference", "skip"), ("0", "evaluation", "skip"),
        ("1", "finetune", "start"), ("1", "batch_inference", "start"), ("1", "evaluation", "start"),
        ("1", "data_gen", "start"), ("1", "dataset_merge", "start"),
        ("2", "finetune", "start"), ("2", "batch_inference", "start"), ("2", "evaluation", "start"),
    ]
    assert not any(summary(out, k)["qualified"] for k in range(3))
    # round 2 trained on round 1's merged data, which grew by the synthetic pairs
    mixer = json.loads((out / "round_2" / "train_data.json").read_text())["dataset_mixer"]
    assert list(mixer) == [str(out / "round_1" / "merged")]
    ft2 = json.loads((out / "round_2" / "model" / "finetune_summary.json").read_text())
    ft1 = json.loads((out / "round_1" / "model" / "finetune_summary.json").read_text())
    assert ft2["train_rows"] > ft1["train_rows"] == 24
    assert (out / "round_3").exists() is False  # no data_gen after the last round
    assert not (out / "round_2" / "data_gen.done").exists()

    # a third run finds everything done: all skipped, same exit code, nothing re-run
    (out / "loop.log").rename(out / "loop.second.log")
    third = run_loop(env)
    assert third.returncode == 3
    assert {e for _, _, e in events(out)} == {"skip"} and len(events(out)) == 10


@pytest.mark.parametrize("env_change, message", [
    ({"MAX_ROUNDS": "0"}, "MAX_ROUNDS must be an integer within 1-9999"),
    ({"MAX_ROUNDS": "two"}, "MAX_ROUNDS must be an integer within 1-9999"),
    ({"EVAL_CONFIG": "/nonexistent/eval.yaml"}, "EVAL_CONFIG=/nonexistent/eval.yaml: config file not found"),
])
def test_bad_loop_variables_exit_2_before_any_stage(tmp_path, env_change, message):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env_change}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_installed_form_resolves_configs_in_the_current_folder_and_names_missing_ones(tmp_path):
    """`llamaduo-loop` (= `python -m llamaduo loop`) runs in the user's folder: outside a clone the
    demo defaults are missing, and each is named with its variable (exit 2, nothing run); --help
    still works there."""
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    env.pop("PYTHON", None)
    for var in ("FINETUNE_CONFIG", "INFER_CONFIG", "EVAL_CONFIG", "DATAGEN_CONFIG", "MERGE_CONFIG"):
        env.pop(var, None)
    (tmp_path / "my_eval.yaml").write_text("eval_repeat: 1\n")  # found relative to the current folder
    loop = [sys.executable, "-m", "llamaduo", "loop"]
    proc = subprocess.run(loop, cwd=tmp_path, env={**env, "EVAL_CONFIG": "my_eval.yaml"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split("=")[0] for line in errors] == [
        "error: FINETUNE_CONFIG", "error: INFER_CONFIG", "error: DATAGEN_CONFIG", "error: MERGE_CONFIG"]
    assert all(f"relative to the current folder {tmp_path}" in line and "set " in line for line in errors)
    assert not (tmp_path / "out").exists()
    ok = subprocess.run([*loop, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "llamaduo-loop" in ok.stdout and "MAX_COST_USD" in ok.stdout


def test_arguments_are_refused_and_help_lists_the_variables():
    bad = subprocess.run(["bash", str(SCRIPT), "--max-rounds", "3"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "takes no arguments" in bad.stderr
    ok = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0
    for var in ("FINETUNE_CONFIG", "INFER_CONFIG", "EVAL_CONFIG", "DATAGEN_CONFIG", "MERGE_CONFIG",
                "OUT", "MAX_ROUNDS", "PYTHON"):
        assert var in ok.stdout


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_demo_check_starts_the_standin_teacher_and_stops_it_at_exit(tmp_path):
    """With the demo configs (data_gen's service_model_name llamaduo-standin-teacher) the loop
    starts the stand-in teacher before its check, hands data_gen its URL (the check reaches it
    through the openai provider: a refused connection would exit 2), and stops it on exit."""
    out = tmp_path / "out"
    # MAX_COST_USD: the stand-in is free, so data_gen gets no budget (and needs no price for it)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "MAX_COST_USD": "1"}
    for var in ("FINETUNE_CONFIG", "INFER_CONFIG", "EVAL_CONFIG", "DATAGEN_CONFIG", "MERGE_CONFIG"):
        env.pop(var, None)
    proc = subprocess.run(["bash", str(SCRIPT), "--check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data_gen's teacher is a STAND-IN" in proc.stderr and "not an LLM" in proc.stderr
    log = (out / "standin_teacher.log").read_text()
    assert "listening on http://127.0.0.1:" in log
    assert "stand-in teacher: stopped after" in log  # stopped by the loop's exit trap, not left running
    port = log.split("listening on http://127.0.0.1:")[1].split("/")[0]
    import socket
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(port))) != 0  # nothing listens there any more
