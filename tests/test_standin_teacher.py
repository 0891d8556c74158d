"""The demo's stand-in teacher (llamaduo.loop.standin_teacher), run for real as a subprocess on
127.0.0.1, reached by data_gen through the real `openai` provider (AsyncOpenAI, pacing, ledger):
its good pairs are kept, each kind of bad pair it writes is dropped with its reason (its wrong
labels that are in the set pass: no check can see them), and it honours structured output and
stops with its parent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from datasets import load_from_disk

from llamaduo.errors import LlamaDuoError
from llamaduo.loop import demo_tickets, standin_teacher
from llamaduo.pipeline import data_gen

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "data" / "demo_tickets"


def start(tmp_path: Path, *extra: str, parent: int | None = None) -> tuple[subprocess.Popen, str]:
    port_file = tmp_path / "port"
    cmd = [sys.executable, "-m", "llamaduo.loop.standin_teacher", "--port-file", str(port_file), *extra]
    if parent is not None:
        cmd += ["--parent-pid", str(parent)]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=open(tmp_path / "teacher.log", "w"))
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, (tmp_path / "teacher.log").read_text()
        assert time.monotonic() < deadline, "the stand-in did not listen within 60 s"
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


@pytest.fixture
def teacher(tmp_path):
    proc, url = start(tmp_path)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def run_data_gen(url: str, out: Path, *extra: str, config: Path = REPO / "config" / "demo" / "data_gen.yaml") -> int:
    argv = ["--from-config", str(config), "--service_llm_base_url", url,
            "--synth_ds_id", str(out), "--prompt_tmpl_path", str(REPO / "src/llamaduo/defaults/prompts.toml"),
            "--reference_ds_id", str(TICKETS), "--ledger_path", str(out.parent / "ledger.sqlite"),
            *extra]
    try:
        return data_gen.main(argv)
    except LlamaDuoError as err:
        return err.exit_code


def test_data_gen_through_the_openai_provider_keeps_good_pairs_and_drops_each_bad_kind(teacher, tmp_path):
    out = tmp_path / "synth"
    assert run_data_gen(teacher, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generator"] == standin_teacher.MODEL
    assert summary["service_llm"]["ok"] == summary["service_llm"]["calls"] > 0  # real calls, all answered
    assert summary["kept"] >= 100  # the config's target_num_pairs
    dropped = summary["dropped_by_reason"]
    for reason in ("label_not_in_set", "test_contamination", "same_as_seed"):
        assert dropped.get(reason, 0) > 0, dropped
    assert dropped.get("near_duplicate_in_new", 0) + dropped.get("exact_duplicate_in_new", 0) > 0, dropped
    kept = load_from_disk(str(out))["train_sft"]
    test_prompts = {p.instruction for p in demo_tickets.test_pairs()}
    answers = Counter(row["messages"][1]["content"] for row in kept)
    assert set(answers) <= set(demo_tickets.LABELS)  # off-set labels never reach training data
    assert not test_prompts & set(kept["prompt"])  # no test prompt leaks into training data
    # every kept ticket uses a training phrasing: the test templates stay unseen
    assert all(demo_tickets.message_of(p) not in {demo_tickets.message_of(t) for t in test_prompts}
               for p in kept["prompt"])
    rejected = load_from_disk(str(out))["rejected"]
    assert Counter(rejected["reject_reason"]) == Counter({k: v for k, v in dropped.items()})


def test_without_the_labels_check_off_set_labels_reach_the_data(teacher, tmp_path):
    """The labels check is what drops them: with it emptied, they are kept (it can fail)."""
    out = tmp_path / "synth"
    config = tmp_path / "data_gen.yaml"
    lines = (REPO / "config" / "demo" / "data_gen.yaml").read_text().splitlines(keepends=True)
    config.write_text("".join(line for line in lines if not line.startswith("labels:")))
    assert run_data_gen(teacher, out, config=config) == 0
    kept = load_from_disk(str(out))["train_sft"]
    off = [row for row in kept if row["messages"][1]["content"] not in demo_tickets.LABELS]
    assert off and "label_not_in_set" not in json.loads((out / "summary.json").read_text())["dropped_by_reason"]


def test_structured_output_and_wire_format(teacher):
    client = openai.OpenAI(base_url=teacher, api_key="unused")
    seed = demo_tickets.seed_pairs()[0]
    prompt = f"<example_instruction>\n{seed.instruction}\n</example_instruction>\n" \
             f"<example_response>\n{seed.label}\n</example_response>"
    schema = {"type": "object", "properties": {"contents": {"type": "array"}}, "required": ["contents"],
              "additionalProperties": False}
    resp = client.chat.completions.create(
        model=standin_teacher.MODEL, messages=[{"role": "user", "content": prompt}], seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "pairs", "strict": True, "schema": schema}})
    pairs = json.loads(resp.choices[0].message.content)["contents"]  # bare JSON: no fence
    assert len(pairs) == 8 and all(set(p) == {"instruction", "response"} for p in pairs)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    again = client.chat.completions.create(model=standin_teacher.MODEL, seed=3,
                                           messages=[{"role": "user", "content": prompt}])
    text = again.choices[0].message.content
    assert text.startswith("```json") and json.loads(text[7:-3])["contents"] == pairs  # same seed, same pairs
    assert [m.id for m in client.models.list()] == [standin_teacher.MODEL]
    with pytest.raises(openai.BadRequestError, match="only answers data_gen"):
        client.chat.completions.create(model=standin_teacher.MODEL, messages=[{"role": "user", "content": "hi"}])


def test_bad_pairs_come_in_the_stated_shares():
    pairs, kinds = [], Counter()
    for seed in range(200):
        got, k = standin_teacher.write_pairs("Label this support ticket ...", "billing", seed, 8, ["T1", "T2"])
        pairs += got
        kinds += k
    total = sum(kinds.values())
    for kind, share in standin_teacher.BAD_SHARES.items():
        assert abs(kinds[kind] / total - share) < 0.03, (kind, kinds)
    assert kinds["good"] / total > 0.6


def test_it_stops_when_its_parent_exits(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    proc, _ = start(tmp_path, parent=parent.pid)
    parent.wait()
    assert proc.wait(timeout=30) == 0
    assert "parent" in (tmp_path / "teacher.log").read_text()


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, "-m", "llamaduo.loop.standin_teacher", "--pairs-per-reply", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2 and "pairs-per-reply" in proc.stderr
