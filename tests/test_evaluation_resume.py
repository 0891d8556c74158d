"""A killed evaluation.py (kill -9, a real subprocess) resumes without repeating any finished
judge call, counted by the local protocol server; then the offline reference judge end to end."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import yaml
from datasets import load_from_disk

from llamaduo.errors import EXIT_NOT_QUALIFIED
from llamaduo.pipeline.evaluation import main
from tests.servers.process import kill_when_accepted
from tests.servers.protocol_server import ProtocolServer
from tests.test_evaluation import base_argv, write_responses

ROWS, REPEAT = 40, 2
JOBS = ROWS * REPEAT


def server_request_key(messages: list[dict], seed: int) -> str:
    """The protocol server's per-request hash (provider, [(role, text)], seed)."""
    pairs = [[m["role"], m["content"]] for m in messages]
    return hashlib.sha256(json.dumps(["openai", pairs, seed]).encode("utf-8")).hexdigest()[:16]


def test_killed_run_resumes_without_repeating_finished_calls(tmp_path, repo_root):
    data = write_responses(tmp_path / "resp.jsonl", [f"answer {i} [[sim={50 + i} prec={90 - i}]]"
                                                     for i in range(ROWS)])
    out = tmp_path / "eval"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]))
    with ProtocolServer(latency=0.15) as server:
        cmd = [sys.executable, "evaluation.py",
               *base_argv(server, repo_root, data, out, "--eval_repeat", str(REPEAT), "--eval_workers", "2",
                          "--avg_similarity_threshold", "60", "--avg_precision_threshold", "60")]
        proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_when_accepted(proc, lambda: server.stats()["accepted"], 20, 180, "evaluation.py")
        assert not (out / "summary.json").exists()

        ledger = out / "service_llm_ledger.sqlite"  # the default: inside the output folder
        with sqlite3.connect(ledger) as db:
            rows = db.execute("SELECT messages, sample_index FROM completions").fetchall()
        done = {server_request_key(json.loads(m), s) for m, s in rows}
        assert 0 < len(done) < JOBS
        before = server.stats(detail=True)

        rerun = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        after = server.stats(detail=True)

    assert after["total"] - before["total"] == JOBS - len(done)
    assert all(after["by_request"][k] == 1 for k in done)  # finished judgements: asked once
    assert after["distinct_requests"] == JOBS
    s = json.loads((out / "summary.json").read_text())
    assert s["this_run"]["cached"] == len(done) and s["this_run"]["calls"] == JOBS - len(done)
    assert s["judgements"] == JOBS and s["failures"] == 0
    assert s["mean_similarity"] == sum(50 + i for i in range(ROWS)) / ROWS
    assert "evaluation summary" in rerun.stdout and "QUALIFIED" in rerun.stdout


def test_reference_judge_end_to_end(tmp_path, repo_root):
    """`service_llm_provider: reference`: no server, no key; real embeddings and ROUGE-L.
    In process, so it shares the embedding model test_judging.py already loaded."""
    ref = "def add(a, b):\n    return a + b"
    cands = [ref, "def add(x, y):\n    return x + y", "The weather is sunny today."]
    data = write_responses(tmp_path / "resp.jsonl", cands)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        row["target_responses"] = ref
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    config = yaml.safe_load((repo_root / "config/demo/evaluation.yaml").read_text())
    for key in ("pass_rate_threshold", "task_metric", "labels", "task_metric_threshold"):
        config.pop(key, None)  # the demo's own task metric: these rows have no labels or unit tests
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    code = main(["--from-config", str(tmp_path / "eval.yaml"),
                 "--prompt_tmpl_path", str(repo_root / "src/llamaduo/defaults/prompts.toml"),
                 "--lm_response_ds_id", str(data), "--eval_ds_id", str(out), "--eval_repeat", "3",
                 "--avg_similarity_threshold", "60", "--avg_precision_threshold", "60"])
    # ROUGE-L precision: identical 100; renamed variables 3/7 (def add return of
    # "def add x y return x y"); unrelated 0 -> mean 47.6 < 60
    assert code == EXIT_NOT_QUALIFIED
    s = json.loads((out / "summary.json").read_text())
    assert s["eval_repeat"] == 1 and s["judgements"] == 3 and s["cost_usd"] == 0
    assert s["mean_precision"] == round((100 + 300 / 7 + 0) / 3, 4) and s["qualified"] is False
    ds = load_from_disk(str(out))["eval"]
    sim = ds["similarity_scores"]
    assert abs(sim[0] - 100) < 0.01 and sim[1] > 70 and sim[2] < 30
    assert ds["precision_scores"] == [100.0, round(300 / 7, 4), 0.0]
    assert ds["evaluators"][0].startswith("reference:") and "not an LLM judge" in ds["evaluators"][0]
    assert ds["eval_prompts"] == ["", "", ""]
    for name in ("report.md", "scores_histogram.png", "summary.json", "eval.jsonl"):
        assert (out / name).is_file(), name
