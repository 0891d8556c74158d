"""The service-LLM layer end to end: every provider's official SDK against the local protocol
server (real HTTP on 127.0.0.1), every fault kind, re-asks, the ledger, budget and dry run."""
from __future__ import annotations

import time

import pytest

from llamaduo.errors import RunFailed
from llamaduo.service_llm import (
    ERROR,
    INVALID,
    OK,
    SKIPPED_BUDGET,
    Job,
    ServiceLLM,
    ServiceLLMArgs,
)
from llamaduo.judging.contract import parse_judgement
from llamaduo.pipeline.data_gen import parse_synth_reply
from llamaduo.service_llm.ledger import Ledger
from llamaduo.service_llm.pricing import Pricing
from llamaduo.service_llm.scheduler import Pacer
from tests.servers.protocol_server import ProtocolServer, judge_scores, synth_pairs

API_KEY = "sk-THIS-KEY-MUST-NEVER-BE-STORED-4242"
SDK_PROVIDERS = ["openai", "anthropic", "gemini"]
ALL_REMOTE = SDK_PROVIDERS + ["anthropic-vertex", "anthropic-bedrock", "gemini-vertex"]
MODEL = "mock-judge"  # priced in src/llamaduo/defaults/pricing.yaml: $1 / $2 per 1M tokens


@pytest.fixture(scope="module")
def server():
    with ProtocolServer(slow_s=1.0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server):
    server.reset()
    server.latency, server.rpm, server.rpm_window_s, server.fault = 0.0, 0, 60.0, None
    server.reply_override, server.synth_extra = None, []
    yield


def make_llm(server, tmp_path, provider="openai", workers=4, **overrides) -> ServiceLLM:
    values = dict(
        service_llm_provider=provider, service_model_name=MODEL, service_llm_api_key=API_KEY,
        service_llm_base_url=server.base_url(provider), ledger_path=str(tmp_path / "ledger.sqlite"),
        rate_limit_per_minute=0, gcp_project_id="proj", gcp_location="us-east5", aws_location="us-east-1",
        request_timeout_s=5.0, max_retries=3, max_reasks=2,
    )
    values.update(overrides)
    # a short first backoff keeps retries fast; RecordingLLM notes each pacing slot
    return RecordingLLM.from_args(ServiceLLMArgs(**values), workers=workers, show_progress=False,
                                  backoff_initial_s=0.02)


class RecordingLLM(ServiceLLM):
    """A ServiceLLM whose pacer records (start, reserved tokens) of every slot it hands out."""

    pacer_log: list

    def _new_pacer(self) -> Pacer:
        self.pacer_log = []
        return Pacer(self.rate_limit_per_minute, self.tokens_per_minute, log=self.pacer_log)


def judge_prompt(candidate: str, extra: str = "") -> str:
    return (f"<instruction>\nWrite hello.\n</instruction>\n<reference_answer>\nhello\n</reference_answer>\n"
            f"<candidate_answer>\n{candidate}\n</candidate_answer>\n{extra}")


def synth_prompt(example: str) -> str:
    return f"<example_instruction>\n{example}\n</example_instruction>\n<example_response>\nok\n</example_response>"


# --------------------------------------------------------------------------- request paths
@pytest.mark.parametrize("provider", ALL_REMOTE)
def test_each_provider_roundtrip_through_its_sdk(server, tmp_path, provider):
    candidates = [f"answer number {i}" for i in range(3)]
    llm = make_llm(server, tmp_path, provider)
    results = llm.run([Job(judge_prompt(c)) for c in candidates], parse=parse_judgement)
    assert [r.status for r in results] == [OK] * 3
    for cand, res in zip(candidates, results):
        assert (res.value.similarity, res.value.precision) == judge_scores(cand)
        (completion,) = res.completions
        assert completion.input_tokens > 0 and completion.output_tokens > 0 and not completion.cached
        assert completion.cost_usd == pytest.approx(
            (completion.input_tokens * 1.0 + completion.output_tokens * 2.0) / 1e6)
    assert server.stats()["by_provider"] == {provider: 3}
    assert llm.last_run.calls == 3 and llm.last_run.ok == 3
    assert llm.last_run.cost_usd == pytest.approx(sum(r.cost_usd for r in results))


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_synth_samples_differ_by_sample_index(server, tmp_path, provider):
    example = "Write a function that reverses a string."
    llm = make_llm(server, tmp_path, provider)
    results = llm.run([Job(synth_prompt(example), sample_index=i) for i in range(3)], parse=parse_synth_reply)
    for i, res in enumerate(results):
        assert res.ok
        assert res.value == [
            (p["instruction"], p["response"]) for p in synth_pairs(example, seed=i)]
    assert results[0].value != results[1].value


def test_synth_extra_and_reply_override(server, tmp_path):
    server.synth_extra = [{"instruction": "planted question", "response": "planted answer"}]
    server.reply_override = lambda provider, prompt: "echo override" if "OVERRIDE" in prompt else None
    llm = make_llm(server, tmp_path, "anthropic")
    synth, other = llm.run([Job(synth_prompt("Sort a list.")), Job("OVERRIDE me")], parse=lambda t: t)
    assert parse_synth_reply(synth.value)[-1][0] == "planted question"
    assert other.value == "echo override"


def test_results_keep_input_order_under_concurrency(server, tmp_path):
    server.latency = 0.02
    llm = make_llm(server, tmp_path, workers=8)
    seen: dict[int, str] = {}
    results = llm.run([Job(f"prompt {i}") for i in range(40)], parse=lambda t: t,
                      on_result=lambda i, res: seen.__setitem__(i, res.value))
    assert [r.value for r in results] == [f"echo: prompt {i}" for i in range(40)]
    assert seen == {i: f"echo: prompt {i}" for i in range(40)}


# --------------------------------------------------------------------------- transport faults
@pytest.mark.parametrize("provider", SDK_PROVIDERS)
@pytest.mark.parametrize("fault", ["429", "429-retry-after=0", "500", "503", "slow", "drop"])
def test_transient_fault_is_retried(server, tmp_path, provider, fault):
    llm = make_llm(server, tmp_path, provider, request_timeout_s=0.5)
    (res,) = llm.run([Job(judge_prompt("fine", f"[[fault={fault} times=1]]"))], parse=parse_judgement)
    assert res.status == OK, res.error
    assert res.retries == 1 and llm.last_run.retries == 1
    assert server.stats()["total"] == 2
    assert (res.value.similarity, res.value.precision) == judge_scores("fine")


@pytest.mark.parametrize("provider", SDK_PROVIDERS)
def test_retry_after_is_honoured(server, tmp_path, provider):
    llm = make_llm(server, tmp_path, provider)
    (res,) = llm.run([Job(judge_prompt("x", "[[fault=429-retry-after=1 times=1]]"))], parse=parse_judgement)
    assert res.ok
    first, second = server.stats(detail=True)["accepted_times"]
    assert second - first >= 1.0  # the exponential backoff alone would wait ~0.02 s


@pytest.mark.parametrize("fault", ["500", "503", "429", "drop"])
def test_retries_are_bounded_then_the_row_fails_with_a_reason(server, tmp_path, fault):
    llm = make_llm(server, tmp_path, "openai", max_retries=2)
    res, ok = llm.run([Job(f"bad [[fault={fault}]]"), Job("good")], parse=lambda t: t)
    assert res.status == ERROR and res.value is None
    assert "gave up after 3 attempt(s)" in res.error
    assert ok.status == OK
    assert server.stats()["total"] == 4  # 3 attempts + the good job; the SDK did not retry on its own
    assert llm.last_run.failed == 1 and llm.last_run.ok == 1


def test_rejected_credentials_abort_the_run(server, tmp_path):
    llm = make_llm(server, tmp_path, "anthropic")
    with pytest.raises(RunFailed, match="401"):
        llm.run([Job("x [[fault=401]]")], parse=lambda t: t)
    assert server.stats()["total"] == 1  # not retried


# --------------------------------------------------------------------------- content faults
@pytest.mark.parametrize("provider", SDK_PROVIDERS)
@pytest.mark.parametrize("fault", ["nonjson", "missing-key", "out-of-range", "empty-choices"])
def test_invalid_reply_is_reasked_then_succeeds(server, tmp_path, provider, fault):
    llm = make_llm(server, tmp_path, provider)
    (res,) = llm.run([Job(judge_prompt("cand", f"[[fault={fault} times=1]]"))], parse=parse_judgement)
    assert res.status == OK, res.error
    assert res.reasks == 1 and len(res.completions) == 2
    assert (res.value.similarity, res.value.precision) == judge_scores("cand")


@pytest.mark.parametrize("fault, reason", [
    ("nonjson", "no JSON object"),
    ("missing-key", "missing key 'precision_assessment'"),
    ("out-of-range", "out of range"),
    ("empty-choices", "empty reply"),
])
def test_invalid_reply_after_reasks_is_a_failure_not_a_zero(server, tmp_path, fault, reason):
    llm = make_llm(server, tmp_path, "openai", max_reasks=2)
    (res,) = llm.run([Job(judge_prompt("c", f"[[fault={fault}]]"))], parse=parse_judgement)
    assert res.status == INVALID and res.value is None
    assert res.error.startswith("invalid reply after 3 attempt(s)") and reason in res.error
    assert server.stats()["total"] == 3
    assert llm.last_run.failed == 1


def test_synth_missing_key_is_invalid(server, tmp_path):
    llm = make_llm(server, tmp_path, "gemini", max_reasks=0)
    (res,) = llm.run([Job(synth_prompt("Sort a list.") + "[[fault=missing-key]]")], parse=parse_synth_reply)
    assert res.status == INVALID and "missing or empty 'contents'" in res.error


def test_a_crashing_parser_fails_the_row_not_the_run(server, tmp_path):
    def parse(text: str) -> int:
        return int(text)  # ValueError for "echo: ..."

    llm = make_llm(server, tmp_path, max_reasks=1)
    (res,) = llm.run([Job("not a number")], parse=parse)
    assert res.status == INVALID and "ValueError" in res.error


# --------------------------------------------------------------------------- rate limiting
def test_rpm_pacing_never_trips_the_server_window(server, tmp_path):
    """Server: at most 10 requests in any 1 s window (= 600 RPM over 60 s, scaled down).
    Client: 450 RPM (headroom for arrival jitter on a busy CI machine). Smooth pacing means
    zero 429s; the burst control below shows the
    server does reject a client that is not paced."""
    server.rpm, server.rpm_window_s = 10, 1.0
    llm = make_llm(server, tmp_path, workers=8, rate_limit_per_minute=450, no_cache=True, ledger_path=None)
    start = time.monotonic()
    results = llm.run([Job(f"p{i}") for i in range(25)], parse=lambda t: t)
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    stats = server.stats()
    assert stats["rpm_rejections"] == 0 and stats["max_window_count"] <= 10
    starts = sorted(s for s, _ in llm.pacer_log)
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 60 / 450 - 1e-6
    assert elapsed >= 24 * 60 / 450  # smooth: 25 requests need 24 intervals

    server.reset()
    burst = make_llm(server, tmp_path, workers=8, rate_limit_per_minute=0, max_retries=0, no_cache=True)
    burst.run([Job(f"q{i}") for i in range(25)], parse=lambda t: t)
    assert server.stats()["rpm_rejections"] > 0


# --------------------------------------------------------------------------- ledger
def test_rerun_reuses_the_ledger_and_never_stores_the_key(server, tmp_path):
    jobs = [Job(judge_prompt(f"c{i}"), sample_index=i % 2) for i in range(6)]
    jobs.append(Job(judge_prompt("r", "[[fault=nonjson times=1]]")))  # a re-ask is cached too
    first = make_llm(server, tmp_path, "gemini").run(jobs, parse=parse_judgement)
    assert server.stats()["total"] == 8
    llm = make_llm(server, tmp_path, "gemini")
    again = llm.run(jobs, parse=parse_judgement)
    assert server.stats()["total"] == 8  # no new request
    assert [r.value for r in again] == [r.value for r in first]
    assert all(c.cached for r in again for c in r.completions)
    assert llm.last_run.calls == 0 and llm.last_run.cached == 8 and llm.last_run.cost_usd == 0
    llm.close()
    for path in tmp_path.iterdir():  # the database and its WAL / shm files
        assert API_KEY.encode() not in path.read_bytes(), path
    stored = Ledger(tmp_path / "ledger.sqlite")
    assert stored.count() == 8 and stored.totals()["input_tokens"] > 0


def test_no_cache_and_refresh_cache(server, tmp_path):
    jobs = [Job(f"p{i}") for i in range(3)]
    make_llm(server, tmp_path).run(jobs, parse=lambda t: t)
    make_llm(server, tmp_path, no_cache=True).run(jobs, parse=lambda t: t)
    assert server.stats()["total"] == 6
    server.reply_override = lambda provider, prompt: "fresh " + prompt
    refreshed = make_llm(server, tmp_path, refresh_cache=True).run(jobs, parse=lambda t: t)
    assert server.stats()["total"] == 9 and refreshed[0].value == "fresh p0"
    cached = make_llm(server, tmp_path).run(jobs, parse=lambda t: t)
    assert server.stats()["total"] == 9 and cached[0].value == "fresh p0"  # the ledger was overwritten


def test_ledger_key_separates_model_gen_config_and_sample(server, tmp_path):
    job = Job("same prompt")
    make_llm(server, tmp_path).run([job], parse=lambda t: t)
    make_llm(server, tmp_path, service_model_name="gpt-4o").run([job], parse=lambda t: t)
    make_llm(server, tmp_path).run([Job("same prompt", sample_index=1)], parse=lambda t: t)
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("max_tokens: 7\n")
    make_llm(server, tmp_path, service_llm_gen_config_path=str(cfg)).run([job], parse=lambda t: t)
    assert server.stats()["total"] == 4


# --------------------------------------------------------------------------- cost
@pytest.mark.parametrize("workers", [1, 4])
def test_max_cost_stops_scheduling_and_keeps_done_work(server, tmp_path, workers):
    jobs = [Job(judge_prompt(f"cand {i}")) for i in range(12)]
    one = make_llm(server, tmp_path, no_cache=True, ledger_path=None).run(jobs[:1], parse=parse_judgement)[0]
    budget = one.cost_usd * 4.5
    server.reset()
    llm = make_llm(server, tmp_path, workers=workers, max_cost_usd=budget)
    results = llm.run(jobs, parse=parse_judgement)
    done = [r for r in results if r.ok]
    skipped = [r for r in results if r.status == SKIPPED_BUDGET]
    assert len(done) == 4 and len(done) + len(skipped) == 12  # a 5th call would not fit in 4.5 calls' worth
    assert llm.last_run.stopped_for_budget and llm.last_run.skipped_budget == len(skipped)
    assert budget - one.cost_usd <= llm.last_run.cost_usd <= budget  # never past the budget
    assert server.stats()["total"] == 4  # skipped jobs never reached the server
    assert all("max_cost_usd" in r.error for r in skipped)
    # a rerun with a larger budget reuses the finished rows and does the rest
    server.reset()
    more = make_llm(server, tmp_path, workers=1, max_cost_usd=budget * 10)
    assert all(r.ok for r in more.run(jobs, parse=parse_judgement))
    assert server.stats()["total"] == len(skipped)


def test_budget_smaller_than_one_call_spends_exactly_one(server, tmp_path):
    jobs = [Job(judge_prompt(f"tiny {i}")) for i in range(6)]
    one = make_llm(server, tmp_path, no_cache=True, ledger_path=None).run(jobs[:1], parse=parse_judgement)[0]
    server.reset()
    llm = make_llm(server, tmp_path, workers=3, max_cost_usd=one.cost_usd / 2)
    results = llm.run(jobs, parse=parse_judgement)
    assert [r.ok for r in results].count(True) == 1 and server.stats()["total"] == 1  # the price is learnt once
    assert sum(r.status == SKIPPED_BUDGET for r in results) == 5


def test_dry_run_estimate_counts_calls_without_calling(server, tmp_path):
    jobs = [Job(judge_prompt(f"e{i}")) for i in range(5)]
    fresh = make_llm(server, tmp_path, ledger_path=str(tmp_path / "none.sqlite")).estimate(jobs)
    assert (fresh.calls, fresh.cached) == (5, 0) and not (tmp_path / "none.sqlite").exists()
    make_llm(server, tmp_path).run(jobs[:2], parse=parse_judgement)
    server.reset()
    est = make_llm(server, tmp_path).estimate(jobs, expected_output_tokens=100)
    assert server.stats()["total"] == 0
    assert (est.jobs, est.calls, est.cached) == (5, 3, 2)
    assert est.output_tokens_expected == 300
    assert est.cost_usd_expected == pytest.approx((est.input_tokens * 1.0 + 300 * 2.0) / 1e6)
    assert est.cost_usd_max > est.cost_usd_expected
    assert "3 calls" in est.summary() and "2 already in the ledger" in est.summary()


def test_pricing_exact_or_known_alias_never_a_prefix_guess(tmp_path, caplog):
    prices = Pricing.load("src/llamaduo/defaults/pricing.yaml")
    assert prices.price("gpt-4o-2024-08-06") == prices.price("gpt-4o")  # a dated snapshot: a known alias
    assert prices.price("gpt-4o-mini-2024-07-18") == prices.price("gpt-4o-mini")
    assert prices.price("no-such-model") is None and prices.cost("no-such-model", 10, 10) == 0.0
    assert prices.cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)
    # each of these was priced as the shorter name by the old longest-prefix rule
    assert prices.price("o1-mini") != prices.price("o1")
    assert prices.price("claude-opus-4-5") == (5.0, 25.0) and prices.price("claude-opus-4") == (15.0, 75.0)
    assert prices.price("gemini-2.5-flash-lite") != prices.price("gemini-2.5-flash")
    for made_up in ("o1-foo", "gpt-4o-foo", "claude-opus-4-9", "gemini-2.5-flash-ultra"):
        assert prices.price(made_up) is None, made_up
    # the YAML overrides, by exact name or a listed alias; its names are not prefixes either
    own = tmp_path / "p.yaml"
    own.write_text("models:\n  gpt-4o: {input: 1.0, output: 1.0, aliases: [my-4o]}\n  toy: {input: 2, output: 3}\n")
    mine = Pricing.load(own)
    assert mine.price("gpt-4o") == (1.0, 1.0) and mine.price("my-4o") == (1.0, 1.0)
    assert mine.price("toy") == (2.0, 3.0) and mine.price("toy-2") is None
    caplog.set_level("WARNING")
    assert mine.cost("toy-2", 10, 10) == 0.0 and "set pricing_path" in caplog.text


# --------------------------------------------------------------------------- local provider
def test_local_provider_runs_in_process(tiny_model_dir, tmp_path):
    args = ServiceLLMArgs(service_llm_provider="local", service_model_name=str(tiny_model_dir),
                          ledger_path=str(tmp_path / "l.sqlite"), rate_limit_per_minute=0)
    cfg = tmp_path / "local.yaml"
    cfg.write_text("max_new_tokens: 8\ndo_sample: false\n")
    args.service_llm_gen_config_path = str(cfg)
    llm = ServiceLLM.from_args(args, workers=2, show_progress=False)
    results = llm.run([Job("Say hi."), Job("Say bye.")], parse=lambda t: t)
    assert all(r.ok for r in results)
    assert all(0 < r.completions[0].output_tokens <= 8 and r.completions[0].cost_usd == 0 for r in results)
    again = ServiceLLM.from_args(args, workers=2, show_progress=False)
    assert [r.value for r in again.run([Job("Say hi."), Job("Say bye.")], parse=lambda t: t)] == \
        [r.value for r in results]
    assert again.last_run.cached == 2 and again.last_run.calls == 0


def test_rate_default_is_unpaced_for_a_loopback_server_only():
    from llamaduo.service_llm.client import effective_rate_limit

    for url in ("http://127.0.0.1:8000/v1", "http://localhost:1234/v1", "http://[::1]:80/v1", "http://127.0.0.2/"):
        assert effective_rate_limit(None, url) == 0, url
    for url in (None, "https://api.openai.com/v1", "http://10.0.0.5:8000/v1", "http://localhost.example.com/"):
        assert effective_rate_limit(None, url) == 60, url
    assert effective_rate_limit(30, "http://127.0.0.1:8000/v1") == 30  # an explicit value always wins
    assert effective_rate_limit(0, None) == 0
