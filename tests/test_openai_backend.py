"""batch_inference.py --backend openai against the real local protocol server standing in for
vLLM: the column contract, what the server receives (adapter name, sampling settings, seeds),
spreading over two servers, rerun = 0 requests, kill -9 resume, and exit 2 on bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from llamaduo.inference.openai_backend import STOP_STRINGS, served_target
from llamaduo.inference.sampling import sample_seed
from llamaduo.pipeline.batch_inference import OUTPUT_COLUMNS
from tests.inprocess import run_script
from tests.servers.process import kill_when_accepted
from tests.servers.protocol_server import ProtocolServer

ROWS = [
    {"prompt": f"Write function number {i}.", "prompt_id": f"p{i}",
     "messages": ([{"role": "system", "content": "You write Python."}] if i == 0 else [])
     + [{"role": "user", "content": f"Write function number {i}."},
        {"role": "assistant", "content": f"def f{i}(): pass"}]}
    for i in range(5)
]


@pytest.fixture()
def test_data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "test_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder


@pytest.fixture()
def adapter(tmp_path: Path) -> Path:
    """A round-k adapter folder as the loop writes it (only its files' content matters here)."""
    folder = tmp_path / "round_1" / "model"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights-v1")
    return folder


def args(data: Path, out: Path, model: str, *urls: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--backend", "openai", "--ft-model-id", model, "--test-ds-id", str(data),
            "--lm-response-ds-id", str(out), "--openai-base-url", ",".join(urls), "--served-model-name", "base",
            "--lora-name", "{parent}", "--repeat", "2", "--temperature", "0.7", "--top-p", "0.9",
            "--max-new-tokens", "77", "--seed", "5", "--openai-workers", "3", "--no-lm-response-append", *extra]


def run_stage(argv: list[str], repo_root: Path) -> subprocess.CompletedProcess:
    """batch_inference.py ARGV, the script file run as `__main__` in this process: what the server
    receives and what is written are the point, not an interpreter start (the kill -9 test and the
    loop below run real processes)."""
    return run_script(repo_root / "batch_inference.py", argv, cwd=repo_root)


def test_columns_adapter_name_and_sampling_reach_the_server(test_data, adapter, tmp_path, repo_root):
    out = tmp_path / "responses"
    with ProtocolServer(models=["base"], loras={"round_1": str(adapter)}) as server:
        res = run_stage(args(test_data, out, str(adapter), server.base_url()), repo_root)
        assert res.returncode == 0, res.stderr
        bodies = server.stats(detail=True)["openai_requests"]
    ds = load_from_disk(str(out))["batch_infer"]
    assert tuple(ds.column_names) == OUTPUT_COLUMNS
    assert len(ds) == 2 * len(ROWS) and len(bodies) == 2 * len(ROWS)
    assert ds["repeat_index"] == [0, 1] * len(ROWS)
    assert ds["prompt_id"] == [r["prompt_id"] for r in ROWS for _ in range(2)]
    assert ds["target_responses"][0] == "def f0(): pass"
    assert ds["candidate_responses"][2] == "echo: Write function number 1."
    assert set(ds["model_id"]) == {str(adapter)}
    sha = ds["model_sha"][0]
    assert sha.startswith("served:base+lora:round_1@") and len(set(ds["model_sha"])) == 1
    # the server saw the adapter name and the hf backend's sampling settings, one seed per sample
    assert {b["model"] for b in bodies} == {"round_1"}
    assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in bodies} == {(0.7, 0.9, 77)}
    assert all(b["stop"] == list(STOP_STRINGS) for b in bodies)
    expected_seeds = {sample_seed(5, r["prompt_id"], k) for r in ROWS for k in range(2)}
    assert {b["seed"] for b in bodies} == expected_seeds
    system_first = [b["messages"] for b in bodies if b["messages"][0]["role"] == "system"]
    assert len(system_first) == 2 and system_first[0][1]["content"] == "Write function number 0."
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "openai" and summary["responses"] == 2 * len(ROWS)
    assert summary["peak_rss_mb"] > 0 and summary["model_sha"] == sha


def test_greedy_sends_temperature_zero(test_data, tmp_path, repo_root):
    with ProtocolServer() as server:  # no /models endpoint: the check is skipped with a warning
        res = run_stage(args(test_data, tmp_path / "o", "smollm2-135m-instruct", server.base_url(),
                             extra=("--no-do-sample", "--repeat", "1")), repo_root)
        assert res.returncode == 0, res.stderr
        bodies = server.stats(detail=True)["openai_requests"]
    assert {(b["model"], b["temperature"], b["top_p"]) for b in bodies} == {("base", 0.0, 1.0)}
    assert "no /models endpoint" in res.stderr


def test_humaneval_shaped_tests_are_carried_and_finish_reason_kept(tmp_path, repo_root):
    """The openai backend writes what the hf backend writes: the test split's `test` and
    `entry_point` ride along (evaluation runs them), and the server's finish_reason is kept."""
    source = Path(__file__).parent / "data" / "humaneval_shaped.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    data = tmp_path / "he"
    data.mkdir()
    (data / "test_sft.jsonl").write_text(source.read_text())
    out = tmp_path / "o"
    with ProtocolServer() as server:
        res = run_stage(args(data, out, "smollm2-135m-instruct", server.base_url(),
                             extra=("--no-do-sample", "--repeat", "1")), repo_root)
    assert res.returncode == 0, res.stderr
    ds = load_from_disk(str(out))["batch_infer"]
    assert ds["test"] == [r["test"] for r in rows] and ds["entry_point"] == [r["entry_point"] for r in rows]
    assert ds["target_responses"] == [r["canonical_solution"] for r in rows]
    assert set(ds["finish_reason"]) == {"stop"}


def test_two_servers_share_the_requests_and_a_rerun_sends_none(test_data, adapter, tmp_path, repo_root):
    out = tmp_path / "responses"
    with ProtocolServer(models=["base"], loras={"round_1": str(adapter)}, latency=0.05) as a, \
            ProtocolServer(models=["base"], loras={"round_1": str(adapter)}, latency=0.05) as b:
        argv = args(test_data, out, str(adapter), a.base_url(), b.base_url())
        res = run_stage(argv, repo_root)
        assert res.returncode == 0, res.stderr
        first = [a.stats()["total"], b.stats()["total"]]
        assert min(first) > 0 and sum(first) == 2 * len(ROWS)
        summary = json.loads((out / "summary.json").read_text())
        assert sorted(summary["requests_by_url"].values()) == sorted(first)
        answers = load_from_disk(str(out))["batch_infer"]["candidate_responses"]

        rerun = run_stage(argv, repo_root)
        assert rerun.returncode == 0, rerun.stderr
        assert [a.stats()["total"], b.stats()["total"]] == first  # every answer came from the ledger
        assert load_from_disk(str(out))["batch_infer"]["candidate_responses"] == answers
        assert json.loads((out / "summary.json").read_text())["service_llm"]["cached"] == 2 * len(ROWS)


def test_retrained_adapter_under_the_same_name_is_asked_again(test_data, adapter, tmp_path, repo_root):
    out = tmp_path / "responses"
    with ProtocolServer(models=["base"], loras={"round_1": str(adapter)}) as server:
        argv = args(test_data, out, str(adapter), server.base_url(), extra=("--repeat", "1"))
        assert run_stage(argv, repo_root).returncode == 0
        (adapter / "adapter_model.safetensors").write_bytes(b"weights-v2")
        assert run_stage(argv, repo_root).returncode == 0
        assert server.stats()["total"] == 2 * len(ROWS)


def test_kill_9_then_rerun_asks_only_for_the_rest(tmp_path, adapter, repo_root):
    data = tmp_path / "many"
    data.mkdir()
    n = 40
    (data / "test_sft.jsonl").write_text("".join(json.dumps({"prompt": f"task {i}"}) + "\n" for i in range(n)))
    out = tmp_path / "responses"
    argv = args(data, out, str(adapter), "URL", extra=("--repeat", "1", "--openai-workers", "2"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]))
    with ProtocolServer(models=["base"], loras={"round_1": str(adapter)}, latency=0.1) as server:
        argv[argv.index("URL")] = server.base_url()
        proc = subprocess.Popen([sys.executable, "batch_inference.py", *argv], cwd=repo_root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_when_accepted(proc, lambda: server.stats()["accepted"], 10, 120, "batch_inference")
        assert proc.returncode == -signal.SIGKILL
        before = server.stats(detail=True)
        assert before["total"] < n
        res = run_stage(argv, repo_root)
        assert res.returncode == 0, res.stderr
        after = server.stats(detail=True)
    assert after["distinct_requests"] == n
    # only requests in flight at the kill (at most one per worker) were asked twice
    assert sum(1 for v in after["by_request"].values() if v > 1) <= 2
    assert after["total"] - before["total"] <= n - before["total"] + 2
    assert len(load_from_disk(str(out))["batch_infer"]) == n


def test_runtime_adapter_loading(test_data, adapter, tmp_path, repo_root):
    with ProtocolServer(models=["base"], allow_runtime_lora=True) as server:
        res = run_stage(args(test_data, tmp_path / "o", str(adapter), server.base_url(),
                             extra=("--load-lora-at-runtime", "--repeat", "1")), repo_root)
        assert res.returncode == 0, res.stderr
        assert {"id": "round_1", "object": "model", "root": str(adapter.resolve()), "parent": "base"} \
            in server.served_models


@pytest.mark.parametrize("extra, urls, message", [
    ((), ("ftp://x",), "not an http(s) URL"),
    ((), (), "needs openai_base_url"),
    (("--openai-workers", "0"), ("http://127.0.0.1:9/v1",), "'openai_workers' must be within 1-1,024, got 0"),
])
def test_bad_settings_exit_2_before_any_request(test_data, tmp_path, repo_root, extra, urls, message):
    res = run_stage(args(test_data, tmp_path / "o", "m", *urls, extra=extra), repo_root)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_unserved_adapter_exits_2_with_the_serve_command(test_data, adapter, tmp_path, repo_root):
    with ProtocolServer(models=["base"]) as server:
        res = run_stage(args(test_data, tmp_path / "o", str(adapter), server.base_url()), repo_root)
        assert server.stats()["total"] == 0
    assert res.returncode == 2, res.stderr
    assert "does not serve 'round_1' (it serves: base)" in res.stderr
    assert f"--lora-modules round_1={adapter.resolve()}" in res.stderr


def test_served_target_maps_adapters_and_names(adapter):
    assert served_target(str(adapter), "base", "{parent}").request_model == "round_1"
    assert served_target(str(adapter), "base", "{name}").request_model == "model"
    assert served_target(str(adapter), "base", "ft-{parent}-{name}").lora_path == str(adapter.resolve())
    assert served_target("smollm2-135m-instruct", "base", "{parent}").request_model == "base"
    assert served_target("my-served-model", None, "{parent}").lora_name is None


@pytest.mark.timeout(1600)
def test_the_loop_serves_each_round_through_the_openai_backend(tmp_path, tiny_model_dir, repo_root):
    """scripts/llamaduo.sh, unchanged, with an inference config using backend openai: round 0
    asks for the served base model, round 1 for its LoRA adapter, loaded at runtime as
    `round_1` (the protocol server stands in for vLLM and for the judge)."""
    import yaml

    from tests.test_loop import loop_env, run_loop, write_configs

    data = tmp_path / "data"
    data.mkdir()
    demo = (repo_root / "data" / "demo")
    for split, n in (("train_sft", 16), ("test_sft", 3)):
        (data / f"{split}.jsonl").write_text("".join((demo / f"{split}.jsonl").read_text().splitlines(True)[:n]))
    with ProtocolServer(models=["tiny-base"], allow_runtime_lora=True) as server:
        configs = write_configs(tmp_path, tiny_model_dir, data, server.url, threshold=99, train_steps=2)
        ft = yaml.safe_load(Path(configs["FINETUNE_CONFIG"]).read_text())
        ft.update(use_peft=True, lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"])
        Path(configs["FINETUNE_CONFIG"]).write_text(yaml.safe_dump(ft))
        infer = yaml.safe_load(Path(configs["INFER_CONFIG"]).read_text())
        infer.update(backend="openai", openai_base_url=server.base_url(), served_model_name="tiny-base",
                     lora_name="{parent}", load_lora_at_runtime=True)
        Path(configs["INFER_CONFIG"]).write_text(yaml.safe_dump(infer))
        # the demo rows carry unit tests, and the openai backend carries them to evaluation as the
        # hf backend does: running them needs consent
        evaluation = yaml.safe_load(Path(configs["EVAL_CONFIG"]).read_text())
        evaluation.update(allow_code_execution=True)
        Path(configs["EVAL_CONFIG"]).write_text(yaml.safe_dump(evaluation))
        proc = run_loop(loop_env(tmp_path, configs, max_rounds=1))
        bodies = [b for b in server.stats(detail=True)["openai_requests"]
                  if "<candidate_answer>" not in b["messages"][-1]["content"]]
        served = list(server.served_models)
    out = tmp_path / "out"
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert [b["model"] for b in bodies] == ["tiny-base"] * 3 + ["round_1"] * 3
    assert {(b["temperature"], b["max_tokens"]) for b in bodies} == {(0.0, 16)}
    assert {"id": "round_1", "object": "model", "root": str((out / "round_1" / "model").resolve()),
            "parent": "tiny-base"} in served
    sha = load_from_disk(str(out / "round_1" / "responses"))["batch_infer"]["model_sha"][0]
    assert sha.startswith("served:tiny-base+lora:round_1@")
    for k in (0, 1):
        assert json.loads((out / f"round_{k}" / "responses" / "summary.json").read_text())["peak_rss_mb"] > 0
        # the carried tests ran: pass@1 was measured on the served model's answers
        assert json.loads((out / f"round_{k}" / "eval" / "summary.json").read_text())["execution"]["rows"] == 3
