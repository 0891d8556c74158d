"""Honest numbers and words: confidence intervals stay on the 0-100 scale, a 0-1 threshold
is refused with a hint, the verdict line shows each measured value beside its bar, and an
unreachable provider stops the run quickly with exit 1 instead of a NOT QUALIFIED."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamaduo.errors import EXIT_OK, RunFailed, UsageError
from llamaduo.judging import RepeatScore, Thresholds, aggregate_row, mean_ci95, one_screen_summary, summarize
from llamaduo.pipeline.evaluation import main
from llamaduo.service_llm.reachability import MAX_CONSECUTIVE_UNREACHABLE, Reachability
from llamaduo.service_llm.records import FatalError, PermanentError, UnreachableError
from tests.servers.protocol_server import ProtocolServer


def rows_with(sims: list[float], precs: list[float]):
    return [aggregate_row([RepeatScore(s, p, "r", "r")]) for s, p in zip(sims, precs, strict=True)]


# ----------------------------------------------------------------------------- CI


def test_confidence_interval_is_clipped_to_the_score_scale():
    mean, raw = mean_ci95([5.0, 95.0], bounds=(-1e9, 1e9))
    assert raw[0] < -500 and raw[1] > 600  # the 2-row t interval (1 d.f.) runs far off the scale
    s = summarize(rows_with([5, 95], [50, 52]), Thresholds(80, 80))
    assert s["similarity_ci95"] == [0.0, 100.0]
    lo, hi = s["precision_ci95"]
    assert 0 < lo < 51 < hi < 100  # a narrow interval is left as it is


# ----------------------------------------------------------------------------- verdict line


def test_verdict_line_shows_each_measured_value_beside_its_bar():
    s = summarize(rows_with([62.1], [85.0]), Thresholds(80, 80))
    text = one_screen_summary(s)
    assert "verdict: NOT QUALIFIED: mean similarity 62.1 < 80 (bar); mean precision 85.0 >= 80" in text
    ok = one_screen_summary(summarize(rows_with([90, 91], [80, 81]), Thresholds(80, 80)))
    assert "verdict: QUALIFIED: mean similarity 90.5 >= 80; mean precision 80.5 >= 80" in ok


def test_verdict_line_never_rounds_a_miss_into_the_bar():
    s = summarize(rows_with([79.99996], [90]), Thresholds(80, 80))
    line = one_screen_summary(s).splitlines()[3]
    assert s["qualified"] is False and "80.0 < 80" not in line
    assert "mean similarity 79.99996 < 80 (bar)" in line


def test_verdict_line_without_scored_rows():
    s = summarize([aggregate_row([RepeatScore.failed("x")])], Thresholds(80, 80))
    assert "verdict: NOT QUALIFIED: no row was scored" in one_screen_summary(s)


# ----------------------------------------------------------------------------- thresholds


def write_rows(path: Path, n: int = 3) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"instructions": f"q{i}", "target_responses": f"a{i}",
                                "candidate_responses": f"a{i} [[sim=50 prec=50]]"}) + "\n")
    return path


def argv_for(repo_root: Path, provider: str, base_url: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--service_llm_provider", provider, "--service_model_name", "mock-judge",
        "--service_llm_api_key", "sk-test", "--service_llm_base_url", base_url,
        "--rate_limit_per_minute", "0", "--no_cache",
        "--prompt_tmpl_path", str(repo_root / "src/llamaduo/defaults/prompts.toml"),
        "--pricing_path", str(repo_root / "src/llamaduo/defaults/pricing.yaml"),
        "--lm_response_ds_id", str(data), "--eval_ds_id", str(out), *extra,
    ]


@pytest.mark.parametrize("key", ["avg_similarity_threshold", "avg_precision_threshold", "coverage_threshold"])
def test_a_threshold_on_the_0_1_scale_is_refused_with_a_hint(repo_root, tmp_path, key):
    # nothing listens at this URL and the data does not exist: the check comes first
    argv = argv_for(repo_root, "openai", "http://127.0.0.1:9/v1", tmp_path / "missing", tmp_path / "o",
                    f"--{key}", "0.8")
    with pytest.raises(UsageError, match=rf"{key}=0.8 .*did you mean 80\?.*allow_low_threshold"):
        main(argv)


def test_allow_low_threshold_keeps_a_low_bar(repo_root, tmp_path):
    data = write_rows(tmp_path / "r.jsonl")
    with ProtocolServer() as server:
        argv = argv_for(repo_root, "openai", server.base_url("openai"), data, tmp_path / "o",
                        "--avg_similarity_threshold", "1", "--avg_precision_threshold", "0.5",
                        "--allow_low_threshold")
        assert main(argv) == EXIT_OK


# ----------------------------------------------------------------------------- unreachable


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_unreachable_provider_stops_quickly_with_a_clear_failure(repo_root, tmp_path, provider):
    port = free_port()
    base = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    out = tmp_path / "o"
    argv = argv_for(repo_root, provider, base, write_rows(tmp_path / "r.jsonl", 5), out,
                    "--eval_workers", "1", "--max_retries", "6")
    start = time.monotonic()
    with pytest.raises(RunFailed, match=rf"could not reach {provider} at {base}: "
                                        rf"{MAX_CONSECUTIVE_UNREACHABLE} connection attempts in a row"):
        main(argv)
    # 4 attempts (backoffs 0.5-1 + 1-2 + 2-4 s), not 7 tries (about a minute) for each of 5 rows
    assert time.monotonic() - start < 30
    assert not (out / "summary.json").exists()


def test_unreachable_provider_exits_1_not_not_qualified(repo_root, tmp_path):
    base = f"http://127.0.0.1:{free_port()}/v1"
    argv = argv_for(repo_root, "openai", base, write_rows(tmp_path / "r.jsonl"), tmp_path / "o")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "evaluation.py", *argv], cwd=repo_root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: openai/mock-judge: could not reach openai at {base}" in proc.stderr
    assert "QUALIFIED" not in proc.stdout and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


def test_any_answer_from_the_server_resets_the_count():
    reach = Reachability("openai", "http://x", limit=3, min_streak_s=0)

    async def fail(exc: Exception):
        raise exc

    async def ok():
        return "reply"

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(UnreachableError):
                await reach.watch(fail(UnreachableError("refused")))
        with pytest.raises(PermanentError):  # an HTTP 400 is an answer: the server is there
            await reach.watch(fail(PermanentError("HTTP 400")))
        for _ in range(2):
            with pytest.raises(UnreachableError):
                await reach.watch(fail(UnreachableError("refused")))
        assert await reach.watch(ok()) == "reply"
        for _ in range(2):
            with pytest.raises(UnreachableError):
                await reach.watch(fail(UnreachableError("refused")))
        with pytest.raises(FatalError, match="could not reach openai at http://x: 3 connection attempts"):
            await reach.watch(fail(UnreachableError("refused")))

    asyncio.run(scenario())


def test_a_burst_of_simultaneous_failures_is_retried_not_fatal():
    """Every in-flight worker failing in the same instant is one blip; the run stops only
    once failures have gone on for longer than a retry's backoff."""
    reach = Reachability("gemini", None, limit=3, min_streak_s=0.3)

    async def fail():
        raise UnreachableError("refused")

    async def scenario() -> None:
        for _ in range(8):  # eight workers refused at once
            with pytest.raises(UnreachableError):
                await reach.watch(fail())
        await asyncio.sleep(0.35)
        with pytest.raises(FatalError, match="could not reach gemini at its default endpoint: 9 "):
            await reach.watch(fail())

    asyncio.run(scenario())
