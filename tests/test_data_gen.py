"""data_gen stage against the local protocol server (real HTTP, real SDK, real datasets):
dataset, rejected split and counts; planted test-set paraphrases removed; the target loop,
budget and round limit; bad inputs exiting 2 before any call."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from llamaduo.data import SYNTH_COLUMNS, prompt_id_for
from llamaduo.errors import EXIT_USAGE, LlamaDuoError, RunFailed, UsageError
from llamaduo.pipeline import data_gen
from llamaduo.data import canonical_synth_columns
from llamaduo.pipeline.data_gen import SeedSampler
from llamaduo.quality import jaccard, shingle_hashes
from tests.servers.process import server_process, server_stats
from tests.servers.protocol_server import SYNTH_PAIRS_PER_REPLY, ProtocolServer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
MODEL = "gpt-4o-mini"


def demo_prompts(split: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in (DEMO / f"{split}.jsonl").read_text().splitlines()]


TEST_PROMPTS = demo_prompts("test_sft")
TRAIN_PROMPTS = demo_prompts("train_sft")
# planted in every reply: two light paraphrases of test prompts, a train prompt, a too-short
# pair and an item without a response
PLANTS = [
    {"instruction": "Please " + TEST_PROMPTS[0][0].lower() + TEST_PROMPTS[0][1:],
     "response": "def f(): pass  # copied"},
    {"instruction": TEST_PROMPTS[1].rstrip(".") + " in Python 3!", "response": "def g(): pass  # copied"},
    {"instruction": TRAIN_PROMPTS[0].upper(), "response": "an answer that is long enough"},
    {"instruction": "Hi", "response": "an answer that is long enough"},
    {"instruction": "Write a function that does something useful", "response": ""},
]


def args_for(server: ProtocolServer, out: Path, *extra: str) -> list[str]:
    return ["--reference_ds_id", str(DEMO), "--service_llm_provider", "openai",
            "--service_llm_base_url", server.base_url("openai"), "--service_model_name", MODEL,
            "--rate_limit_per_minute", "0", "--gen_workers", "4", "--synth_ds_id", str(out), *extra]


def run_stage(argv: list[str]) -> int:
    """What run_main does, minus sys.exit: the exit code of the stage."""
    try:
        return data_gen.main(argv)
    except LlamaDuoError as err:
        return err.exit_code


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture()
def server():
    with ProtocolServer() as srv:
        yield srv


def test_run_writes_dataset_rejected_split_and_counts(server, tmp_path):
    server.synth_extra = PLANTS
    out = tmp_path / "synth"
    code = run_stage(args_for(server, out, "--num_samples", "6", "--topic", "coding", "--no_cache"))
    assert code == 0
    assert server.stats()["total"] == 6  # one call per seed, no re-asks needed

    dd = load_from_disk(str(out))
    kept, rejected = dd["train_sft"], dd["rejected"]
    assert kept.column_names == list(SYNTH_COLUMNS)
    assert len(kept) == 6 * SYNTH_PAIRS_PER_REPLY
    for row in kept:
        assert row["prompt_id"] == prompt_id_for(row["prompt"])
        assert row["generator"] == MODEL and row["category"] == "coding"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] == row["prompt"]
        assert row["seed_prompt"] in TRAIN_PROMPTS
    assert len(set(kept["seed_prompt"])) == 6  # six distinct seeds (no replacement)

    expected = {"test_contamination": 6 * 2, "exact_duplicate_of_train": 6,
                "instruction_too_short": 6, "empty_field": 6}
    assert Counter(rejected["reject_reason"]) == expected
    s = summary(out)
    assert s["dropped_by_reason"] == expected
    assert s["kept"] == len(kept) and s["rejected"] == len(rejected)
    assert s["stop_reason"] == "single_round_done"
    assert s["decontamination"]["test_prompts"] == len(TEST_PROMPTS)
    assert s["service_llm"]["calls"] == 6
    # independently of the filter's own verdicts: nothing kept is close to any test prompt
    test_sh = [shingle_hashes(t, 3) for t in TEST_PROMPTS]
    for prompt in kept["prompt"]:
        assert max(jaccard(shingle_hashes(prompt, 3), t) for t in test_sh) < 0.6
    contaminated = [r for r in rejected if r["reject_reason"] == "test_contamination"]
    assert {r["prompt"] for r in contaminated} == {PLANTS[0]["instruction"], PLANTS[1]["instruction"]}
    assert all("test:" in r["reject_detail"] for r in contaminated)


def test_target_loop_until_reached(server, tmp_path):
    server.synth_pairs_per_reply = 1
    out = tmp_path / "synth"
    code = run_stage(args_for(server, out, "--num_samples", "2", "--target_num_pairs", "3", "--no_cache"))
    assert code == 0
    s = summary(out)
    assert (s["stop_reason"], s["target_reached"], len(s["rounds"]), s["kept"]) == ("target_reached", True, 2, 4)
    assert server.stats()["total"] == 4
    assert s["seeds"]["distinct_used"] == 4  # fresh seeds every round


def test_round_limit_warns_exit_0_or_fails_with_require_target(server, tmp_path, caplog):
    server.synth_pairs_per_reply = 1
    out = tmp_path / "synth"
    argv = args_for(server, out, "--num_samples", "2", "--target_num_pairs", "10", "--max_rounds", "3", "--no_cache")
    with caplog.at_level(logging.WARNING, logger="llamaduo.data_gen"):
        assert run_stage(argv) == 0
    assert "NOT reached" in caplog.text and "round limit (3)" in caplog.text
    s = summary(out)
    assert (s["stop_reason"], s["target_reached"], s["kept"]) == ("round_limit", False, 6)
    assert server.stats()["total"] == 6
    with pytest.raises(RunFailed, match="require_target"):
        data_gen.main(argv + ["--require_target"])
    assert len(load_from_disk(str(out))["train_sft"]) == 6  # the pairs are still written


def test_budget_stops_generation(server, tmp_path):
    out = tmp_path / "synth"
    code = run_stage(args_for(server, out, "--num_samples", "8", "--gen_workers", "1", "--no_cache",
                              "--max_cost_usd", "0.0002", "--target_num_pairs", "100"))
    assert code == 0  # some pairs were produced; the summary says why it stopped
    s = summary(out)
    assert s["stop_reason"] == "budget" and s["service_llm"]["stopped_for_budget"]
    assert 0 < server.stats()["total"] < 8
    assert s["kept"] == server.stats()["total"] * SYNTH_PAIRS_PER_REPLY


def test_no_usable_reply_exit_1_with_reasons(server, tmp_path):
    server.reply_override = lambda provider, prompt: "Sure! Here are some ideas: reverse a list, sort it."
    out = tmp_path / "synth"
    with pytest.raises(RunFailed, match="no usable synthetic pair"):
        data_gen.main(args_for(server, out, "--num_samples", "3", "--max_reasks", "1", "--no_cache"))
    assert server.stats()["total"] == 3 * 2  # each job asked, then re-asked once
    rejected = load_from_disk(str(out))["rejected"]
    assert rejected["reject_reason"] == ["reply_invalid"] * 3
    assert "Sure! Here are some ideas" in rejected[0]["reject_detail"]
    assert summary(out)["kept"] == 0
    # a demo with a weak local model may opt in to "nothing usable" being a warning, not a failure
    out2 = tmp_path / "synth2"
    assert run_stage(args_for(server, out2, "--num_samples", "3", "--max_reasks", "0", "--no_cache",
                              "--allow_empty_result")) == 0
    dd = load_from_disk(str(out2))
    assert list(dd) == ["rejected"] and summary(out2)["kept"] == 0
    assert dd["rejected"].features["messages"] == data_gen.SYNTH_FEATURES["messages"]


def test_local_provider_bad_replies_are_counted_not_fatal(tmp_path, tiny_model_dir):
    """Offline `local` provider (a tiny random model: its replies are never valid JSON)."""
    gen = tmp_path / "gen.yaml"
    gen.write_text("max_new_tokens: 8\ndo_sample: false\n")
    out = tmp_path / "synth"
    with pytest.raises(RunFailed, match="no usable synthetic pair"):
        data_gen.main(["--reference_ds_id", str(DEMO), "--service_llm_provider", "local",
                       "--service_model_name", str(tiny_model_dir), "--service_llm_gen_config_path", str(gen),
                       "--num_samples", "2", "--max_reasks", "1", "--synth_ds_id", str(out), "--no_cache"])
    s = summary(out)
    assert s["dropped_by_reason"] == {"reply_invalid": 2}
    assert s["service_llm"]["calls"] == 4 and s["generator"] == str(tiny_model_dir)


def test_rerun_replays_the_ledger_and_append_dedups_against_existing(server, tmp_path):
    out = tmp_path / "synth"
    first = args_for(server, out, "--num_samples", "3")
    assert run_stage(first) == 0
    assert server.stats()["total"] == 3
    assert run_stage(first) == 0  # same config: every reply comes from the ledger, for free
    assert server.stats()["total"] == 3
    assert summary(out)["service_llm"]["cached"] == 3
    kept_before = load_from_disk(str(out))["train_sft"]

    server.synth_extra = [{"instruction": kept_before[0]["prompt"], "response": "the same task again"}]
    assert run_stage(args_for(server, out, "--num_samples", "3", "--seed", "7", "--synth_ds_append")) == 0
    s = summary(out)
    assert s["near_duplicates"]["existing_rows"] == len(kept_before)
    assert s["dropped_by_reason"] == {"exact_duplicate_of_train": 3}
    after = load_from_disk(str(out))["train_sft"]
    assert len(after) == len(kept_before) + s["kept"]
    assert len(set(after["prompt_id"])) == len(after)
    rejected = load_from_disk(str(out))["rejected"]
    assert f"output:{kept_before[0]['prompt_id']}" in rejected[0]["reject_detail"]

    # another dataset (e.g. the previous loop round's merged data) counts as existing too
    other = tmp_path / "synth_other"
    argv = args_for(server, other, "--num_samples", "2", "--seed", "11", "--existing_ds_id", str(out))
    assert run_stage(argv) == 0
    s = summary(other)
    assert s["near_duplicates"]["existing_rows"] == len(after)
    assert s["dropped_by_reason"] == {"exact_duplicate_of_train": 2}


def test_reference_rows_in_the_existing_data_count_once(server, tmp_path, caplog):
    """Loop round 1 passes the reference data itself as existing_ds_id (the data trained on so
    far): its rows are the train rows, counted and filtered against once (they were logged as
    twice the train rows: "240" for 120)."""
    import logging

    n_train = sum(1 for line in (DEMO / "train_sft.jsonl").read_text().splitlines() if line.strip())
    with caplog.at_level(logging.INFO, logger="llamaduo"):
        assert run_stage(args_for(server, tmp_path / "synth", "--num_samples", "2", "--existing_ds_id",
                                  str(DEMO))) == 0
    assert summary(tmp_path / "synth")["near_duplicates"]["existing_rows"] == 0
    (line,) = [r.getMessage() for r in caplog.records if "test prompts for the filters" in r.getMessage()]
    assert f"; {n_train} train rows ({n_train} reference + 0 earlier)" in line, line


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_seed_sampling_without_replacement_then_repeats(caplog):
    a, b = SeedSampler(5, seed=1), SeedSampler(5, seed=1)
    first = a.take(5)
    assert first == b.take(5)  # reproducible
    assert sorted(p for p, _ in first) == list(range(5)) and {i for _, i in first} == {0}
    assert first != SeedSampler(5, seed=2).take(5)
    with caplog.at_level(logging.WARNING, logger="llamaduo.data_gen"):
        again = a.take(3)
    assert "sampling them again" in caplog.text
    assert {i for _, i in again} == {1} and a.repeated


def test_more_samples_than_rows_makes_distinct_calls(server, tmp_path, caplog):
    ref = tmp_path / "ref"
    rows = [{"messages": [{"role": "user", "content": f"Task number {i}: write a haiku about {w}"},
                          {"role": "assistant", "content": f"A haiku about {w}, five seven five"}]}
            for i, w in enumerate(["rain", "snow"])]
    write_jsonl(ref / "train_sft.jsonl", rows)
    out = tmp_path / "synth"
    argv = args_for(server, out, "--num_samples", "5", "--no_cache")
    argv[argv.index("--reference_ds_id") + 1] = str(ref)
    with caplog.at_level(logging.WARNING, logger="llamaduo.data_gen"):
        assert run_stage(argv) == 0
    assert "sampling them again" in caplog.text
    assert "no test split to decontaminate against" in caplog.text
    stats = server.stats()
    assert stats["total"] == 5 and stats["distinct_requests"] == 5  # repeats are new samples
    assert summary(out)["seeds"] == {"available": 2, "used": 5, "distinct_used": 2, "repeated": True,
                                     "used_by_earlier_data": 0, "reused_from_earlier_data": 0}


@pytest.mark.parametrize("case", ["no_messages", "num_samples", "placeholder", "test_split"])
def test_bad_input_exits_2_before_any_call(server, tmp_path, case):
    out = tmp_path / "synth"
    argv = args_for(server, out, "--num_samples", "2")
    if case == "no_messages":
        write_jsonl(tmp_path / "ref" / "train_sft.jsonl", [{"prompt": "x", "label": "y"}])
        argv[argv.index("--reference_ds_id") + 1] = str(tmp_path / "ref")
        pattern = "has prompts but no answers.*column_map"
    elif case == "num_samples":
        argv += ["--num_samples", "0"]
        pattern = "'num_samples' must be within 1-1,000,000, got 0"
    elif case == "placeholder":
        tmpl = tmp_path / "prompts.toml"
        tmpl.write_text('[synth_data_gen]\nprompt = "Like $instruction / $response, about $topc"\n')
        argv += ["--prompt_tmpl_path", str(tmpl)]
        pattern = r"unknown placeholder.*\$topc"
    else:
        argv += ["--test_ds_split", "heldout"]
        pattern = "no split 'heldout'"
    with pytest.raises(UsageError, match=pattern):
        data_gen.main(argv)
    assert server.stats()["total"] == 0
    assert not out.exists()


def test_dry_run_makes_no_call(server, tmp_path, capsys):
    out = tmp_path / "synth"
    assert run_stage(args_for(server, out, "--num_samples", "4", "--dry_run", "--no_cache")) == 0
    assert "dry run: 4 jobs -> 4 calls" in capsys.readouterr().out
    assert server.stats()["total"] == 0


def test_plural_column_names_are_accepted():
    from datasets import Dataset

    ds = Dataset.from_list([{"generators": "g", "prompt_ids": "1", "seed_prompts": "s", "messages": [],
                             "category": "c", "prompt": "p"}])
    assert canonical_synth_columns(ds).column_names == ["generator", "prompt_id", "seed_prompt", "messages",
                                                        "category", "prompt"]


def test_shipped_configs_parse():
    from llamaduo.config import parse_config

    for path in ("config/synth_data_gen.yaml", "config/demo/data_gen.yaml"):
        (args,) = parse_config(data_gen.DataGenArgs, argv=["--from-config", str(REPO / path)])
        assert data_gen.validate_values(args) == [], path


def test_script_subprocess_with_planted_paraphrases(tmp_path):
    """As a user runs it: the server and data_gen.py as real processes, plants from a file."""
    plants = tmp_path / "plants.jsonl"
    write_jsonl(plants, PLANTS[:2])
    with server_process("--synth-extra-file", str(plants)) as url:
        out = tmp_path / "synth"
        cmd = [sys.executable, "data_gen.py", "--from-config", "config/synth_data_gen.yaml",
               "--service_llm_provider", "openai", "--service_llm_base_url", url + "/v1",
               "--service_model_name", MODEL, "--service_llm_gen_config_path", "config/gpt_gen_configs.yaml",
               "--reference_ds_id", str(DEMO), "--num_samples", "3",
               "--target_num_pairs", "0", "--synth_ds_id", str(out), "--no_cache", "--no_push_synth_ds_to_hf_hub"]
        bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert bad.returncode == EXIT_USAGE and "'target_num_pairs' must be within 1-100,000,000" in bad.stderr
        cmd[cmd.index("--target_num_pairs") + 1] = "6"
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert server_stats(url)["total"] == 3
        s = summary(out)
        assert s["dropped_by_reason"] == {"test_contamination": 6} and s["kept"] == 9


def test_push_with_append_to_the_fake_hub(server, tmp_path):
    """The Hub is faked at its single seam (llamaduo.hub.set_api); everything else is real."""
    from llamaduo import hub
    from tests.fake_hub import FakeHubApi

    api = FakeHubApi()
    hub.set_api(api)
    try:
        base = args_for(server, Path("me/synth"), "--num_samples", "2", "--push_synth_ds_to_hf_hub",
                        "--output_root", str(tmp_path), "--no_cache")
        assert run_stage(base) == 0
        first = summary(tmp_path / "me" / "synth")["kept"]
        assert run_stage(base + ["--seed", "5", "--synth_ds_append"]) == 0
        second = summary(tmp_path / "me" / "synth")["kept"]
    finally:
        hub.set_api(None)
    pushed = api.split_rows("me/synth", "train_sft")
    local = load_from_disk(str(tmp_path / "me" / "synth"))["train_sft"]
    assert first == 2 * SYNTH_PAIRS_PER_REPLY and second > 0
    assert len(pushed) == len(local) == first + second
    assert sorted(pushed["prompt_id"]) == sorted(local["prompt_id"])
    assert len([p for p in api.repos["me/synth"] if p.startswith("data/train_sft-")]) == 2  # appended shard
    assert api.calls[:2] == ["check_reachable", "whoami"]  # the push is checked before any call
    assert set(api.calls) <= {"check_reachable", "whoami", "create_repo", "list_repo_files",
                              "create_commit"}  # nothing downloaded
    assert (tmp_path / "me" / "synth" / "summary.json").is_file()


def test_later_round_requests_no_seed_an_earlier_round_requested(server, tmp_path, caplog):
    """Loop rounds 1 and 2 as the loop runs them: round 2 gets its own seed and the merged data
    as `existing_ds_id`, and the server (which records every seed prompt it is asked about)
    sees no seed prompt twice while unused seeds remain; a round 3 then reuses earlier seeds,
    with new sample indices (distinct requests) and a warning."""
    from llamaduo.pipeline.dataset_merge import MergeArgs
    from llamaduo.pipeline.dataset_merge import merge
    from tests.servers.protocol_server import _EXAMPLE_RE

    asked: list[list[str]] = [[]]

    def record(provider: str, prompt: str) -> None:
        match = _EXAMPLE_RE.search(prompt)
        asked[-1].append(match.group(1).strip() if match else prompt)
        return None  # answer as usual

    server.reply_override = record
    ref = tmp_path / "ref"
    rows = [json.loads(line) for line in (DEMO / "train_sft.jsonl").read_text().splitlines()[:8]]
    write_jsonl(ref / "train_sft.jsonl", rows)
    write_jsonl(ref / "test_sft.jsonl", [json.loads(DEMO.joinpath("test_sft.jsonl").read_text().splitlines()[0])])
    trained_on = str(ref)
    for k in (1, 2, 3):
        if k > 1:
            asked.append([])
        synth = tmp_path / f"round_{k}" / "synth"
        argv = args_for(server, synth, "--num_samples", "4", "--seed", str(2024 + k), "--no_cache",
                        "--existing_ds_id", trained_on)
        argv[argv.index("--reference_ds_id") + 1] = str(ref)
        with caplog.at_level(logging.WARNING, logger="llamaduo.data_gen"):
            assert run_stage(argv) == 0
        merged = tmp_path / f"round_{k}" / "merged"
        assert merge(MergeArgs(first_ds_id=trained_on, second_ds_id=str(synth), result_ds_id=str(merged))) == 0
        trained_on = str(merged)
    first, second, third = asked
    assert len(first) == len(second) == len(third) == 4
    assert len(set(first)) == 4 and not set(first) & set(second)  # round 2: only unused seeds
    assert set(first) | set(second) == {r["prompt"] for r in rows}
    assert summary(tmp_path / "round_2" / "synth")["seeds"]["used_by_earlier_data"] == 4
    # round 3: every seed was used before; it says so and asks again, never the same request
    assert "has been used" in caplog.text
    assert summary(tmp_path / "round_3" / "synth")["seeds"]["reused_from_earlier_data"] == 4
    assert server.stats(detail=True)["max_repeats"] == 1
