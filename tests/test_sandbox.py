"""src/llamaduo/sandbox.py: model-written code runs in a kernel sandbox, and its verdict cannot be
forged from inside it.

Every case runs real subprocesses in the real sandbox (bubblewrap). The attack suite runs the
sandbox from a separate "evaluator" process that holds canary secrets in its environment and on
its command line (as `--service_llm_api_key` would), next to a local TCP server that must receive
nothing, a folder of files that must neither appear nor disappear, and a marker that finds any
process left behind. The attacks are this project's own new cases of the classes a held-out
campaign used (docs/evaluation.md, "The safety model").
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamaduo import sandbox
from llamaduo.sandbox import (ExecJob, IsolationUnavailable, SandboxLimits, extract_code, minimal_env,
                              resolve_isolation, run_candidate, run_many)
from tests.servers.attacks import (ATTACKS, CANARY, FORGERIES, HUMANEVAL, decoy_checkout, fill,
                                   recording_server, survivors, tree)

ROOT = Path(__file__).resolve().parents[1]

FAST = SandboxLimits(timeout_s=5, memory_mb=512)
TEST = "assert f(1) == 2"

try:
    resolve_isolation("bwrap")
    NO_BWRAP = ""
except IsolationUnavailable as _e:
    NO_BWRAP = str(_e)
needs_bwrap = pytest.mark.skipif(bool(NO_BWRAP), reason=NO_BWRAP or "bwrap works")


def run(code: str, test: str = TEST, entry: str | None = "f", limits: SandboxLimits = FAST):
    return run_candidate(ExecJob(code, test, entry), limits)


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("answer, code", [
    ("Here:\n```python\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x"),
    ("```py\nx = 1\n```", "x = 1"),
    ("```bash\nls\n```\n```python\ny = 2\n```", "y = 2"),           # the python block, not the first
    ("```\nz = 3\n```", "z = 3"),                                      # a bare fence
    ("```bash\nls\n```\n```\nz = 3\n```", "z = 3"),                     # bare fence over another language
    ("def g():\n    return 1", "def g():\n    return 1"),              # no fence: the whole answer
    ("```python\ndef f(x):\n    return x +", "def f(x):\n    return x +"),  # cut off: to the end
])
def test_extract_code(answer, code):
    assert extract_code(answer) == code


# --------------------------------------------------------------------------- isolation choice


def test_an_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="execution_isolation must be one of auto, bwrap, none"):
        resolve_isolation("docker")


def test_without_bwrap_nothing_runs_unless_isolation_none(monkeypatch, tmp_path):
    """No sandbox tool: auto/bwrap refuse (the caller exits 2); none runs, unisolated."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    sandbox._bwrap_problem.cache_clear()
    try:
        with pytest.raises(IsolationUnavailable, match="bubblewrap .bwrap. is not installed.*execution_isolation: none"):
            run("def f(x):\n    return x + 1\n")
        with pytest.raises(IsolationUnavailable):
            run_many([ExecJob("def f(x):\n    return x + 1\n", TEST, "f")], FAST)
        res = run("def f(x):\n    return x + 1\n", limits=SandboxLimits(timeout_s=5, isolation="none"))
        assert (res.passed, res.reason) == (True, "passed")
    finally:
        monkeypatch.undo()
        sandbox._bwrap_problem.cache_clear()


# --------------------------------------------------------------------------- outcomes


@needs_bwrap
def test_correct_code_passes_both_test_shapes():
    code = "def f(x):\n    return x + 1\n"
    assert run(code).passed
    assert run(code, HUMANEVAL).passed
    wrong = run("def f(x):\n    return x\n", HUMANEVAL)
    assert (wrong.passed, wrong.reason) == (False, "AssertionError")


@needs_bwrap
@pytest.mark.parametrize("code, test, entry, reason", [
    ("def f(x)\n    return 2\n", TEST, "f", "SyntaxError in the candidate: expected ':' (line 1)"),
    ("def g(x):\n    return 2\n\ndef h():\n    pass\n", TEST, "f",
     "missing entry point: the candidate defines no 'f' (and not exactly one function to test in its place)"),
    ("import math\nx = 2\n", TEST, "f",
     "missing entry point: the candidate defines no 'f' (and not exactly one function to test in its place)"),
    ("def f(x):\n    return {}[x]\n", TEST, "f", "KeyError: 1"),
    ("def f(x):\n    return f(x)\n", TEST, "f", "RecursionError: maximum recursion depth exceeded"),
    ("def f(x):\n    return 2\n", "def check(candidate):\n    assert candidate(1) == 2\n", None,
     "the test defines check(candidate) but the row has no entry_point"),
    ("import sys\nsys.exit(0)\n", TEST, "f", "exited (SystemExit 0) in the candidate before the tests finished"),
    ("import os\nos._exit(0)\n", TEST, "f", "exited (code 0) before the tests finished"),
    ("import os\ndef f(x):\n    os._exit(3)\n", TEST, "f", "exited (code 3) before the tests finished"),
    ("def f(x):\n    return 2\n", "assert f(1) == 2 +", "f", "SyntaxError in the test: invalid syntax (line 1)"),
    ("def f(x):\n    return object()\n", TEST, "f",
     "TypeError: a object object cannot be checked outside the sandbox (only builtin values)"),
    ("", TEST, "f", "no code in the answer"),
])
def test_failures_carry_a_reason(code, test, entry, reason):
    res = run(code, test, entry)
    assert (res.passed, res.reason) == (False, reason)


@needs_bwrap
def test_values_cross_the_boundary_exactly():
    """Every builtin type round-trips; helpers and module-level values of the candidate that
    the test names are reachable (HumanEval's poly/encode_cyclic pattern); exceptions keep
    their builtin type; in-place changes to list arguments are seen by the test."""
    code = ("import math, datetime as dt\nLIMIT = 10\ndef helper(xs):\n    return sum(xs)\n"
            "def days(a, b):\n    return (b - a, b + dt.timedelta(days=1))\n"
            "def evens(n):\n    yield from range(0, n, 2)\n"
            "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n"
            "    return [x, 1.5, float('inf'), 2**200, 'é', b'\\x00', (1, None), {1: {True}}, frozenset({3}), 1j, range(3)]\n"
            "def sort_in_place(xs):\n    xs.sort()\n")
    test = ("def check(candidate):\n    out = candidate(1)\n"
            "    assert out == [1, 1.5, float('inf'), 2**200, 'é', b'\\x00', (1, None), {1: {True}}, frozenset({3}), 1j, range(3)]\n"
            "    assert type(out[6]) is tuple and type(out[1]) is float\n"
            "    assert helper([1, 2]) == 3 and LIMIT == 10 and math.pi > 3\n"
            "    try:\n        candidate(-1)\n    except ValueError as e:\n        assert str(e) == 'negative'\n"
            "    else:\n        assert False\n"
            "    xs = [3, 1, 2]\n    sort_in_place(xs)\n    assert xs == [1, 2, 3]\n"
            "    from datetime import date, timedelta\n    from decimal import Decimal\n"
            "    assert days(date(2024, 1, 1), date(2024, 1, 31)) == (timedelta(days=30), date(2024, 2, 1))\n"
            "    assert helper([Decimal('0.1'), Decimal('0.2')]) == Decimal('0.3')\n"
            "    gen = evens(7)\n    assert next(gen) == 0 and list(gen) == [2, 4, 6]\n")
    res = run(code, test)
    assert (res.passed, res.reason) == (True, "passed")


@needs_bwrap
def test_a_single_function_with_another_name_is_tested_as_the_entry_point():
    """Prompts that do not name the function: behaviour is tested, not the guessed name."""
    assert run("import math\ndef plus_one(x):\n    return x + 1\n").passed
    assert run("def plus_one(x):\n    return x + 1\n", "def check(candidate):\n    assert candidate(1) == 2\n").passed
    assert run("def plus_one(x):\n    return x\n").reason == "AssertionError"


@needs_bwrap
def test_infinite_loop_times_out():
    started = time.monotonic()
    res = run("def f(x):\n    while True:\n        pass\n", limits=SandboxLimits(timeout_s=2.5))
    assert (res.passed, res.reason) == (False, "timeout after 2.5s (wall clock)")
    assert time.monotonic() - started < 6


@needs_bwrap
def test_allocating_10_gb_hits_the_memory_limit():
    res = run("def f(x):\n    block = bytearray(10 * 1024 ** 3)\n    return 2\n")
    assert (res.passed, res.reason) == (False, "MemoryError: memory limit (512 MB) reached")


@needs_bwrap
def test_the_sandbox_sees_only_a_minimal_environment_and_its_own_processes(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-openai-456")
    paths = [str(ROOT / "README.md"), str(ROOT / "src"), "/etc/passwd", "/usr/bin"]
    shown = run(f"import os\ndef f(x):\n    return [sorted(os.environ), [os.path.exists(p) for p in {paths!r}], os.getuid(),\n"
                "            sorted(p for p in os.listdir('/proc') if p.isdigit())]\n",
                "env, root, uid, pids = f(1)\n"
                f"assert env == {sorted([*minimal_env('/tmp'), 'PWD'])!r}, env\n"
                "assert root == [False, False, False, True], root\n"
                "assert uid == 1000, uid\n"
                "assert len(pids) <= 3, pids\n")
    assert shown.passed, shown.reason


# --------------------------------------------------------------------------- the attack suite

# The evaluator: runs the attacks twice (a rerun must not die on the same row) and prints results.
DRIVER = """
import json, sys
from llamaduo.sandbox import ExecJob, SandboxLimits, run_many
jobs = [ExecJob(c, t, "f") for c, t in json.loads(sys.stdin.read())]
limits = SandboxLimits(timeout_s=4, memory_mb=512, isolation=sys.argv[1])
first = run_many(jobs, limits, workers=2)
second = run_many(jobs, limits, workers=2)
print(json.dumps([[r.passed, r.reason] for r in first + second]))
"""


def _run_attacks(tmp: Path, isolation: str, names) -> dict:
    watched, checkout = tmp / "watched", decoy_checkout(tmp / "checkout")
    watched.mkdir()
    (watched / "victim.txt").write_text("keep me")
    before, checkout_before, repo_before = tree(watched), tree(checkout), sorted(p.name for p in ROOT.iterdir())
    srv = recording_server()
    port = srv.server_address[1]
    env = {**minimal_env(str(tmp)), "PYTHONPATH": f"{ROOT / 'src'}", "OPENAI_API_KEY": f"sk-{CANARY}",
           "HF_TOKEN": f"hf_{CANARY}", "MY_SERVICE_SECRET": CANARY}
    jobs = [[fill(ATTACKS[n][0], watched, port, checkout), fill(ATTACKS[n][1], watched, port, checkout)]
            for n in names]
    proc = subprocess.run([sys.executable, "-c", DRIVER, isolation, "--service_llm_api_key", f"key-{CANARY}"],
                          input=json.dumps(jobs), capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
    time.sleep(0.5)
    srv.shutdown()
    srv.server_close()
    results = json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
    return {"proc": proc, "results": results, "names": list(names), "hits": list(srv.hits),
            "files_before": (before, checkout_before, repo_before),
            "files_after": (tree(watched), tree(checkout), sorted(p.name for p in ROOT.iterdir())),
            "survivors": survivors()}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    if NO_BWRAP:
        pytest.skip(NO_BWRAP)
    return _run_attacks(tmp_path_factory.mktemp("attacks"), "bwrap", list(ATTACKS))


@needs_bwrap
def test_the_evaluator_survives_every_attack_and_a_rerun(attacked):
    proc = attacked["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(attacked["results"]) == 2 * len(ATTACKS)


@needs_bwrap
def test_no_file_appears_or_disappears_outside_the_sandbox(attacked):
    assert attacked["files_after"] == attacked["files_before"]
    assert attacked["files_after"][0]["victim.txt"] == b"keep me"


@needs_bwrap
def test_no_request_reaches_a_local_server(attacked):
    assert attacked["hits"] == []


@needs_bwrap
def test_no_process_outlives_the_run(attacked):
    assert attacked["survivors"] == []


@needs_bwrap
def test_no_canary_in_any_result(attacked):
    assert CANARY not in attacked["proc"].stdout + attacked["proc"].stderr


@needs_bwrap
def test_no_forged_pass(attacked):
    """Every attack that returns a wrong answer or aims at the verdict fails its row, twice."""
    outcome = dict(zip(attacked["names"] * 2, attacked["results"]))
    for name in FORGERIES:
        passed, reason = outcome[name]
        assert passed is False, (name, reason)
    assert outcome["read canaries from /proc environ and cmdline"] == [False, "AssertionError"]
    assert outcome["kill the evaluator (ctypes, /proc pids, kill -1)"][1] == "killed by signal 9 (SIGKILL)"
    assert outcome["stop itself and its group"][1] == "timeout after 4s (wall clock)"


def test_the_canary_attack_is_real_without_isolation(tmp_path):
    """The same /proc attack, run with isolation none, does find the evaluator's secrets: the
    containment above is the kernel sandbox's doing, not a harmless attack."""
    name = "read canaries from /proc environ and cmdline"
    got = _run_attacks(tmp_path, "none", [name])
    assert got["proc"].returncode == 0, got["proc"].stderr[-2000:]
    assert got["results"][0] == [True, "passed"]


@needs_bwrap
@pytest.mark.skipif(sandbox._pids_cgroup_root() is None, reason="no writable pids cgroup here")
def test_a_fork_bomb_is_capped_by_the_pids_cgroup():
    code = ("import os, time\ndef f(x):\n    n = 0\n    try:\n        while n < 400:\n"
            "            if os.fork() == 0:\n                time.sleep(60)\n                os._exit(0)\n"
            "            n += 1\n    except OSError:\n        pass\n    return n\n")
    res = run(code, f"assert f(0) < {sandbox.PIDS_MAX}")
    assert (res.passed, res.reason) == (True, "passed")


@needs_bwrap
def test_run_many_keeps_order_and_runs_concurrently():
    jobs = [ExecJob(f"import time\ndef f(x):\n    time.sleep(1.0)\n    return {v}\n", TEST, "f") for v in (2, 3, 2, 3)]
    started = time.monotonic()
    results = run_many(jobs, FAST, workers=4)
    assert [r.passed for r in results] == [True, False, True, False]
    assert time.monotonic() - started < 4 * 1.0  # overlapped, not one after another
