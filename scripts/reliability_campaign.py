#!/usr/bin/env python
"""Fault and bad-input campaign: prints the reliability table of docs/reliability.md.

    python scripts/reliability_campaign.py [--kills 6] [--seed 14] [--only matrix,kill,atomic,lock,attacks]
                                           [--repo PATH]

Everything runs on loopback against the local protocol server (tests/servers/), as real
subprocesses of the stage scripts, bounded in count and time (default about 4-5 minutes on
2 cores):

* matrix: every bad input of tests/servers/bad_inputs.py; handled = exit 2, one `error:` line,
  no traceback, zero requests.
* inputs: issue 23's classes (tests/servers/input_cases.py: real paths, split names, counts and
  non-finite numbers, types, chat rows, finetune's checks) over all five stages; handled as
  above, and the case's work folder (its inputs) byte-identical afterwards.
* kill:   evaluation with a fault mix (500s, 429 with Retry-After, dropped connections, non-JSON
  replies, each on some rows), killed with SIGKILL (or SIGINT, alternately) after a random
  number of answers, then rerun to completion. Rows lost = rows without a score at the end;
  calls repeated = successful answers the server gave twice for the same request.
* atomic: a writer replacing an output folder version after version (tests/servers/
  output_writer.py), killed at random moments; a reader must find one complete version.
* lock:   two evaluation runs on one output folder started 0.3 s apart; requests must equal
  the judgements of one run.
* attacks: every attack of tests/servers/attacks.py as the answer of one row of `evaluation.py
  --allow_code_execution` (run twice), with canary secrets in the environment and on the command
  line; contained = no file changed outside the sandbox, no connection to a local server, no
  surviving process, no canary in the output, no forged pass, the evaluation alive.

`--repo PATH` runs the stages of another checkout (e.g. an older commit) with the same cases,
for a before/after comparison (the atomic part needs this checkout's writer and is skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE / "src"), str(HERE)]  # the checkout's src/llamaduo, then the repo root

from tests.servers.attacks import ESCAPES, evaluation_campaign  # noqa: E402
from tests.servers.bad_inputs import CASES, eval_argv, response_rows, run_case, stage_env, write_jsonl  # noqa: E402
from tests.servers.input_cases import INPUT_CASES, run_subprocess  # noqa: E402
from tests.servers.process import server_stats  # noqa: E402

WORKERS = 4  # concurrent judge calls: at most this many answers can be in flight when a run is killed
FAULTS = ("[[fault=500 times=1]]", "[[fault=429-retry-after=1 times=1]]", "[[fault=drop times=1]]",
          "[[fault=nonjson times=1]]")


def _quiet_eval(url: str, data: Path, out: Path, *extra: str) -> list[str]:
    return eval_argv(url, data, out, "--eval_workers", str(WORKERS), "--max_retries", "4", "--avg_similarity_threshold",
                     "0", "--avg_precision_threshold", "0", "--coverage_threshold", "0", *extra)


def matrix(urls: list[str], work: Path, repo: Path) -> dict:
    """Every case once; cases run on len(urls) threads, each with its own server, so the
    requests a case causes are counted for that case alone."""
    def run_share(k: int) -> list:
        return [(case, run_case(case, work / f"case{i}", urls[k], repo=repo))
                for i, case in enumerate(CASES) if i % len(urls) == k]

    with ThreadPoolExecutor(len(urls)) as pool:
        outcomes = [pair for share in pool.map(run_share, range(len(urls))) for pair in share]
    handled, tracebacks, paid, failures = 0, 0, 0, []
    for case, outcome in outcomes:
        ok = outcome.handled and case.expect in (outcome.error_lines or [""])[0]
        handled += ok
        tracebacks += outcome.traceback
        paid += outcome.requests
        if not ok:
            failures.append(f"{case.name} (rc {outcome.returncode}, {outcome.requests} requests"
                            f"{', traceback' if outcome.traceback else ''})")
    return {"tried": len(CASES), "handled": handled, "tracebacks": tracebacks, "requests": paid,
            "not_handled": failures}


def input_classes(urls: list[str], work: Path, repo: Path) -> dict:
    """Issue 23's classes (tests/servers/input_cases.py), as subprocesses: handled = the
    matrix's rule, and the case's work folder (inputs included) byte-identical afterwards."""
    def run_share(k: int) -> list:
        return [(case, *run_subprocess(case, work / f"input{i}", urls[k], repo=repo))
                for i, case in enumerate(INPUT_CASES) if i % len(urls) == k]

    with ThreadPoolExecutor(len(urls)) as pool:
        outcomes = [triple for share in pool.map(run_share, range(len(urls))) for triple in share]
    by_class: dict[str, list[int]] = {}
    handled, tracebacks, paid, changed, failures = 0, 0, 0, 0, []
    for case, outcome, diff in outcomes:
        ok = outcome.handled and case.expect in (outcome.error_lines or [""])[0] and not diff
        handled += ok
        tracebacks += outcome.traceback
        paid += outcome.requests
        changed += bool(diff)
        by_class.setdefault(case.stage, [0, 0])[0] += 1
        by_class[case.stage][1] += ok
        if not ok:
            failures.append(f"{case.name} (rc {outcome.returncode}, {outcome.requests} requests"
                            f"{', traceback' if outcome.traceback else ''}{', changed ' + ' '.join(diff[:3]) if diff else ''}"
                            f"{': ' + outcome.error_lines[0][:120] if outcome.error_lines else ''})")
    return {"tried": len(INPUT_CASES), "handled": handled, "tracebacks": tracebacks, "requests": paid,
            "changed_work_folder": changed, "by_stage": by_class, "not_handled": failures}


def _fault_rows(n: int, rng: random.Random, tag: str) -> list[dict]:
    rows = response_rows(n)
    for row in rows:
        row["instructions"] = f"[{tag}] {row['instructions']}"  # distinct requests per kill point
        if rng.random() < 0.3:
            row["candidate_responses"] += " " + rng.choice(FAULTS)
    return rows


def _rows_without_score(jsonl: Path, n: int) -> int:
    """Rows of the final output that have no similarity score (all n when there is no output)."""
    try:
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    except (OSError, ValueError):
        return n
    return n - sum(1 for r in rows if r.get("similarity_scores") is not None)


def kill_campaign(url: str, work: Path, repo: Path, kills: int, rng: random.Random) -> dict:
    n = 24
    lost, repeated, survived, worst, points = 0, 0, 0, 0, []
    for k in range(kills):
        folder = work / f"kill{k}"
        data = write_jsonl(folder / "resp.jsonl", _fault_rows(n, rng, f"kill {k}"))
        out = folder / "eval"
        argv = _quiet_eval(url, data, out)
        env = stage_env(folder, repo)
        before = server_stats(url)
        at = rng.randint(1, n - 4)
        sig = signal.SIGKILL if k % 2 == 0 else signal.SIGINT
        proc = subprocess.Popen([sys.executable, *argv], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while server_stats(url)["answered"] - before["answered"] < at and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        killed_at = server_stats(url)["answered"] - before["answered"]
        rerun = subprocess.run([sys.executable, *argv], cwd=repo, env=env, capture_output=True, text=True,
                               timeout=300)
        after = server_stats(url)
        again = after["answered_repeats"] - before["answered_repeats"]
        repeated += again
        worst = max(worst, again)
        points.append(f"{sig.name} after {killed_at} answers: {again} asked again")
        missing = _rows_without_score(out / "eval.jsonl", n)
        lost += missing
        survived += rerun.returncode == 0 and missing == 0
    return {"kill_points": kills, "rows_lost": lost, "calls_repeated": repeated, "fault_mixes_survived": survived,
            "max_repeated_per_kill": worst, "workers": WORKERS, "points": points}


def atomic_campaign(work: Path, kills: int, rng: random.Random) -> dict:
    from tests.servers.output_writer import check

    out = work / "atomic" / "out"
    out.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "src"), str(HERE)])}
    mixed = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "tests.servers.output_writer", str(out)], cwd=HERE, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mixed += check(out) is not None
    return {"kill_points": kills, "mixed_outputs": mixed}


def lock_race(url: str, work: Path, repo: Path) -> dict:
    n = 40
    folder = work / "race"
    rows = [{**r, "instructions": f"[race] {r['instructions']}"} for r in response_rows(n)]
    data = write_jsonl(folder / "resp.jsonl", rows)
    argv = _quiet_eval(url, data, folder / "eval", "--eval_workers", "2")
    before = server_stats(url)["total"]
    procs = []
    for i in range(2):
        (folder / f"run{i}").mkdir(parents=True)
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=repo, env=stage_env(folder / f"run{i}", repo),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    codes = [p.wait(timeout=300) for p in procs]
    return {"requests": server_stats(url)["total"] - before, "judgements": n, "exit_codes": codes}


def table(results: dict) -> str:
    lines = ["| check | tried | handled / survived | rows lost | calls repeated | requests on bad input |",
             "|---|---|---|---|---|---|"]
    if "matrix" in results:
        m = results["matrix"]
        lines.append(f"| bad inputs (exit 2, one line, no traceback, no call) | {m['tried']} | {m['handled']} | - | - "
                     f"| {m['requests']} |")
    if "inputs" in results:
        m = results["inputs"]
        lines.append(f"| issue 23 input classes (the same, and the work folder byte-identical: "
                     f"{m['changed_work_folder']} changed, {m['tracebacks']} tracebacks) | {m['tried']} | {m['handled']} "
                     f"| - | - | {m['requests']} |")
    if "kill" in results:
        k = results["kill"]
        lines.append(f"| kill -9 / SIGINT at random points, with a fault mix, then rerun | {k['kill_points']} | "
                     f"{k['fault_mixes_survived']} | {k['rows_lost']} | {k['calls_repeated']} (at most "
                     f"{k['max_repeated_per_kill']} per kill; {k['workers']} calls in flight) | - |")
    if "atomic" in results:
        a = results["atomic"]
        lines.append(f"| kill -9 while replacing an output folder | {a['kill_points']} | "
                     f"{a['kill_points'] - a['mixed_outputs']} | - | - | - |")
    if "lock" in results:
        r = results["lock"]
        lines.append(f"| two runs on one output folder, 0.3 s apart | 1 | "
                     f"{int(r['requests'] == r['judgements'] and sorted(r['exit_codes'])[-1] == 2)} | - | "
                     f"{r['requests'] - r['judgements']} | - |")
    if "attacks" in results:
        a = results["attacks"]
        lines += ["", "| sandbox attacks through evaluation.py | contained | " + " | ".join(ESCAPES) + " |",
                  "|---|---|" + "---|" * len(ESCAPES),
                  f"| {a['attacks']} | {a['contained']} | " + " | ".join(str(a["by_kind"][k]) for k in ESCAPES) + " |"]
    return "\n".join(lines)


@contextmanager
def quiet_server(*args: str) -> Iterator[str]:
    """The protocol server on a free loopback port, its stderr (dropped-connection noise from
    killed clients) discarded; yields its URL."""
    port_file = Path(tempfile.mkdtemp(prefix="llamaduo-port-")) / "port"
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.protocol_server", "--host", "127.0.0.1",
                             "--port", "0", "--port-file", str(port_file), *args], cwd=HERE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "src"), str(HERE)])}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert "listening" in proc.stdout.readline(), "the protocol server did not start"
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(port_file.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6, help="kill points per kill campaign (default 6)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--only", default="matrix,inputs,kill,atomic,lock,attacks")
    parser.add_argument("--jobs", type=int, default=2, help="bad-input cases run in parallel (default 2)")
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose stages are run (default: this one)")
    ns = parser.parse_args()
    parts = set(ns.only.split(","))
    repo = ns.repo.resolve()
    if repo != HERE:
        parts.discard("atomic")
    rng = random.Random(ns.seed)
    results: dict = {}
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="llamaduo-reliability-"))
    try:
        with ExitStack() as stack:
            urls = [stack.enter_context(quiet_server("--latency", "0.05")) for _ in range(max(1, ns.jobs))]
            url = urls[0]
            if "matrix" in parts:
                results["matrix"] = matrix(urls, work, repo)
            if "inputs" in parts:
                results["inputs"] = input_classes(urls, work, repo)
            if "kill" in parts:
                results["kill"] = kill_campaign(url, work, repo, ns.kills, rng)
            if "lock" in parts:
                results["lock"] = lock_race(url, work, repo)
        if "atomic" in parts:
            results["atomic"] = atomic_campaign(work, ns.kills, rng)
        if "attacks" in parts:
            # another checkout may have no PID namespace: its kill attack would hit every process
            results["attacks"] = evaluation_campaign(work / "attacks", repo, include_alone=repo == HERE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    for name, value in results.items():
        extra = {k: v for k, v in value.items() if isinstance(v, list) and v}
        if extra:
            print(f"{name}: {json.dumps(extra)}")
    print(f"repo: {repo}; seed {ns.seed}; {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
