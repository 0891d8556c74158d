"""src/llamaduo/sandbox.py: hostile candidates are contained and counted as failures with a reason.

Every case runs a real subprocess. Where it matters, a case also runs with the audit-hook
guard off (`guard=False`), to show that the process-level layer (disposable wrapper, own
process group, minimal environment, rlimits) holds on its own; the docs say what it cannot
stop without the guard (writes outside the folder, os.system).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from llamaduo.sandbox import ExecJob, SandboxLimits, extract_code, minimal_env, run_candidate, run_many

FAST = SandboxLimits(timeout_s=2.5, memory_mb=512)
UNGUARDED = SandboxLimits(timeout_s=2.5, memory_mb=512, guard=False)
TEST = "assert f(1) == 2"


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


# --------------------------------------------------------------------------- outcomes


def test_correct_code_passes_both_test_shapes():
    code = "def f(x):\n    return x + 1\n"
    assert run(code).passed
    humaneval = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"
    assert run(code, humaneval).passed
    wrong = run("def f(x):\n    return x\n", humaneval)
    assert (wrong.passed, wrong.reason) == (False, "AssertionError")


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
    ("", TEST, "f", "no code in the answer"),
])
def test_failures_carry_a_reason(code, test, entry, reason):
    res = run(code, test, entry)
    assert (res.passed, res.reason) == (False, reason)


def test_a_single_function_with_another_name_is_tested_as_the_entry_point():
    """Prompts that do not name the function: behaviour is tested, not the guessed name."""
    assert run("import math\ndef plus_one(x):\n    return x + 1\n").passed
    assert run("def plus_one(x):\n    return x + 1\n", "def check(candidate):\n    assert candidate(1) == 2\n").passed
    assert run("def plus_one(x):\n    return x\n").reason == "AssertionError"


def test_printing_the_pass_marker_does_not_pass():
    """Passing needs the per-run nonce after the test, not anything the candidate can print."""
    res = run("import os\nprint('passed')\nos._exit(0)\n")
    assert not res.passed


# --------------------------------------------------------------------------- hostile candidates


@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "process-layer-only"])
def test_infinite_loop_times_out(limits):
    started = time.monotonic()
    res = run("def f(x):\n    while True:\n        pass\n", limits=limits)
    assert (res.passed, res.reason) == (False, "timeout after 2.5s (wall clock)")
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "process-layer-only"])
def test_allocating_10_gb_hits_the_memory_limit(limits):
    res = run("def f(x):\n    block = bytearray(10 * 1024 ** 3)\n    return 2\n", limits=limits)
    assert (res.passed, res.reason) == (False, "MemoryError: memory limit (512 MB) reached")


@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "process-layer-only"])
def test_api_keys_in_the_parent_are_invisible(monkeypatch, limits):
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "sk-fake-service-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-openai-456")
    monkeypatch.setenv("HF_TOKEN", "hf_fake_789")
    steal = ("import os\ndef f(x):\n    return [os.environ.get(k) for k in "
             "('SERVICE_LLM_API_KEY', 'OPENAI_API_KEY', 'HF_TOKEN')]\n")
    # If the child could see them, this test would pass; it fails on the comparison.
    res = run(steal, "assert f(1) == ['sk-fake-service-123', 'sk-fake-openai-456', 'hf_fake_789']", limits=limits)
    assert (res.passed, res.reason) == (False, "AssertionError")
    # What the child does see: the four minimal variables, nothing else.
    shown = run("import os\ndef f(x):\n    return sorted(os.environ)\n",
                f"assert f(1) == {sorted(minimal_env('/x'))!r}, sorted(__import__('os').environ)", limits=limits)
    assert shown.passed, shown.reason


def test_reading_the_parent_environment_through_proc_is_blocked(monkeypatch):
    monkeypatch.setenv("SERVICE_LLM_API_KEY", "sk-fake-service-123")
    grandparent = ("import os\ndef f(x):\n    ppid = open('/proc/%d/stat' % os.getppid()).read().split()[3]\n"
                   "    return open('/proc/%s/environ' % ppid).read()\n")
    res = run(grandparent, "assert 'sk-fake' in f(1)")
    assert not res.passed
    assert res.reason.startswith("PermissionError: blocked by the sandbox: reading /proc/")


def test_os_system_is_blocked(tmp_path):
    marker = tmp_path / "ran"
    res = run(f"import os\ndef f(x):\n    os.system('touch {marker}')\n    return 2\n")
    assert (res.passed, res.reason) == (False, "PermissionError: blocked by the sandbox: os.system")
    assert not marker.exists()
    sub = run("import subprocess\ndef f(x):\n    subprocess.run(['true'])\n    return 2\n")
    assert sub.reason == "PermissionError: blocked by the sandbox: subprocess.Popen"


def test_writing_outside_the_temp_folder_is_blocked(tmp_path):
    outside = tmp_path / "pwned.txt"
    res = run(f"def f(x):\n    open({str(outside)!r}, 'w').write('x')\n    return 2\n")
    assert (res.passed, res.reason) == (
        False, f"PermissionError: blocked by the sandbox: writing {outside} outside the working folder")
    assert not outside.exists()
    removal = run(f"import os\ndef f(x):\n    os.remove({str(tmp_path)!r} + '/x')\n    return 2\n")
    assert "blocked by the sandbox: os.remove" in removal.reason
    # inside its own fresh folder it may write, and the folder is gone afterwards
    inside = run("import os\ndef f(x):\n    open('scratch.txt', 'w').write('ok')\n"
                 "    return len(open(os.path.join(os.getcwd(), 'scratch.txt')).read())\n")
    assert inside.passed, inside.reason


def test_killing_its_parent_kills_only_the_disposable_wrapper(tmp_path):
    """Guard off, so the kill really happens: the candidate's parent is the wrapper, so this
    test process survives; the orphaned candidate is killed with its process group."""
    pid_file = tmp_path / "pid"
    code = (f"import os, signal, time\ndef f(x):\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            "    os.kill(os.getppid(), signal.SIGKILL)\n    time.sleep(60)\n    return 2\n")
    started = time.monotonic()
    res = run(code, limits=UNGUARDED)
    assert (res.passed, res.reason) == (False, "killed by signal 9 (SIGKILL)")
    assert time.monotonic() - started < 2.5  # noticed when the wrapper died, not at the timeout
    orphan = int(pid_file.read_text())
    assert _gone(orphan), "the orphaned candidate outlived the sandbox"
    guarded = run("import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 2\n")
    assert guarded.reason == "PermissionError: blocked by the sandbox: os.kill"


def test_forked_grandchildren_are_killed_with_the_group(tmp_path):
    pid_file = tmp_path / "pid"
    code = (f"import os, time\ndef f(x):\n    pid = os.fork()\n    if pid == 0:\n"
            f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n        time.sleep(60)\n"
            "    time.sleep(0.5)\n    return 2\n")
    res = run(code, limits=UNGUARDED)
    assert res.passed, res.reason
    assert _gone(int(pid_file.read_text()))
    guarded = run("import os\ndef f(x):\n    os.fork()\n    return 2\n")
    assert guarded.reason == "PermissionError: blocked by the sandbox: os.fork"


def _gone(pid: int, wait_s: float = 3.0) -> bool:
    """True once the process no longer exists (or is a zombie waiting for init to reap it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_run_many_keeps_order_and_runs_concurrently():
    jobs = [ExecJob(f"import time\ndef f(x):\n    time.sleep(0.6)\n    return {v}\n", TEST, "f") for v in (2, 3, 2, 3)]
    started = time.monotonic()
    results = run_many(jobs, FAST, workers=4)
    assert [r.passed for r in results] == [True, False, True, False]
    assert time.monotonic() - started < 4 * 0.6 + 0.5  # overlapped, not one after another
    assert os.getpid()  # and, trivially, we are still here
