"""serve.py for real: the embedded SmolLM2 behind transformers serve answers the openai SDK and
batch_inference --backend openai, and stops on SIGTERM; a LoRA adapter is merged once and served
under its lora_name; the vLLM command line carries the adapter as a LoRA module."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llamaduo.pipeline import serve
from tests.inprocess import run_stage


def stage_env(repo_root: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root / "src"), str(repo_root)]), **extra)


def wait_until_serving(proc: subprocess.Popen, url: str, timeout_s: float, log: Path) -> float:
    """Seconds until GET /v1/models answers."""
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"not serving after {timeout_s} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int, log: Path) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "Application shutdown complete" in log.read_text()


def start(repo_root: Path, tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "serve.py", *argv], cwd=repo_root, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=stage_env(repo_root, LLAMADUO_CACHE=str(tmp_path / "cache")))
    return proc, log


def test_embedded_model_answers_the_openai_sdk_and_batch_inference(tmp_path, repo_root, free_tcp_port):
    """The slow one: the real 135M model on CPU."""
    from llamaduo.models import provision_embedded_model

    provision_embedded_model()  # the conversion is a one-off, not part of the startup measured here
    url = f"http://127.0.0.1:{free_tcp_port}/v1"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "serve.py", "--model-id", "smollm2-135m-instruct", "--port",
                             str(free_tcp_port)], cwd=repo_root, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=stage_env(repo_root))
    try:
        seconds = wait_until_serving(proc, url, 240, log)
        print(f"\nserve.py startup with the embedded model: {seconds:.1f} s")
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="EMPTY")
        assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
        reply = client.chat.completions.create(
            model="smollm2-135m-instruct", max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "Write a Python function that reverses a string."}])
        assert "def" in reply.choices[0].message.content

        data = tmp_path / "data"
        data.mkdir()
        rows = [{"prompt": p, "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]}
                for p in ("What is 2 + 2?", "Name a primary colour.")]
        (data / "test_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # batch inference and evaluation as their scripts run main, in this process: what is
        # tested here is the server (a real process), not their interpreter starts
        out = tmp_path / "responses"
        res = run_stage("batch_inference", [
            "--backend", "openai", "--ft-model-id", "smollm2-135m-instruct", "--openai-base-url", url,
            "--test-ds-id", str(data), "--lm-response-ds-id", str(out), "--max-new-tokens", "16", "--repeat", "1",
            "--do-sample", "false", "--temperature", "0", "--no-lm-response-append"], cwd=repo_root)
        assert res.returncode == 0, res.stderr[-3000:]
        answers = [json.loads(line) for line in next(out.glob("*.jsonl")).read_text().splitlines()]
        assert len(answers) == 2 and all(a["candidate_responses"].strip() for a in answers)
        # evaluation judges the served answers (the free reference judge): a verdict, exit 0 or 3
        ev = run_stage("evaluation", ["--service-llm-provider", "reference", "--lm-response-ds-id", str(out),
                                      "--eval-ds-id", str(tmp_path / "eval"), "--eval-repeat", "1"], cwd=repo_root)
        assert ev.returncode in (0, 3), ev.stderr[-3000:]
        assert json.loads((tmp_path / "eval" / "summary.json").read_text())["scored_rows"] == 2
        stop(proc, signal.SIGTERM, log)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_adapter_is_merged_once_and_served_under_its_lora_name(tiny_model_dir, tmp_path, repo_root, free_tcp_port):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "round_1" / "model"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(adapter))
    url = f"http://127.0.0.1:{free_tcp_port}/v1"
    proc, log = start(repo_root, tmp_path, "--model-id", str(adapter), "--lora-name", "{parent}",
                      "--port", str(free_tcp_port))
    try:
        wait_until_serving(proc, url, 240, log)
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="EMPTY")
        assert [m.id for m in client.models.list().data] == ["round_1"]
        reply = client.chat.completions.create(model="round_1", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
        merged = [p.parent for p in (tmp_path / "cache" / "serve").glob("*/" + serve.COMPLETE)]
        assert len(merged) == 1 and not (merged[0] / "adapter_config.json").exists()
        stop(proc, signal.SIGINT, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the merged copy equals base + adapter
    exported = AutoModelForCausalLM.from_pretrained(str(merged[0])).eval()
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, model.eval()(ids).logits, atol=1e-4)


def test_vllm_command_serves_the_adapter_as_a_lora_module(tmp_path, capsys):
    adapter = tmp_path / "round_2" / "model"
    adapter.mkdir(parents=True)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 24}))
    assert serve.main(["--model-id", str(adapter), "--engine", "vllm", "--lora-name", "{parent}",
                       "--served-model-name", "smollm2-135m-instruct", "--port", "8123", "--print-command"]) == 0
    cmd = capsys.readouterr().out.splitlines()[0].split()
    assert cmd[:3] == ["vllm", "serve", str(base)]
    assert cmd[cmd.index("--lora-modules") + 1] == f"round_2={adapter.resolve()}"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "32"
    assert cmd[cmd.index("--served-model-name") + 1] == "smollm2-135m-instruct"
    assert cmd[cmd.index("--port") + 1] == "8123"
