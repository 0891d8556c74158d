"""Run model-written code against a unit test, contained, and say why it failed.

Layers, outermost first (the full model and its limits: docs/evaluation.md, "The safety model
and its limits"): a disposable wrapper process in its own process group, temporary folder and
minimal environment sets rlimits on itself and forks the candidate (so the candidate's parent
is the wrapper, never the evaluation; rlimits are set there, not with `preexec_fn`, which is
unsafe in a threaded parent); a wall-clock timeout that kills the whole group; an audit hook
refusing processes, signals, sockets and writes outside the folder. It stops accidents and
naive code, not a determined attacker (`ctypes` bypasses the hook).

A run passes only if the test completes and the program then prints a per-run nonce, so an
early `sys.exit(0)` fails. An answer that defines exactly one top-level function but not
`entry_point` is tested under that name: a prompt that describes a function without naming it
is judged on behaviour, not on guessing the reference's name.

Stdlib only: `data/build_demo.py` checks the demo answers with this runner without the
project's dependencies installed.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

FAIL_MARK = "LLAMADUO_FAIL "
NPROC_MARGIN = 256  # processes/threads the sandbox may add on top of the user's current count
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. `guard` (the audit hook) is only turned off by tests that show the
    process-level layer holds on its own."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    file_size_mb: int = 16
    guard: bool = True


@dataclass(frozen=True)
class ExecResult:
    """One run: passed or not, and a short reason ("passed", "timeout after 3s", ...)."""

    passed: bool
    reason: str
    seconds: float


@dataclass(frozen=True)
class ExecJob:
    """What to run: the candidate's code, the test source, and the function under test."""

    code: str
    test: str
    entry_point: Optional[str] = None


def extract_code(answer: str) -> str:
    """The first ```python (or ```py/```python3) block; else the first fence without a
    language; else the whole answer. An unterminated fence (an answer cut off at
    max_new_tokens) runs to the end of the answer."""
    text = str(answer or "")
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    for lang, body in blocks:
        if not lang:
            return body
    return text


# The program the wrapper forks: read the nonce, compile, install the guard, run, report.
# Runs under `python -I` (no PYTHON* variables, no user site, no script folder on sys.path).
_HARNESS = r'''
import os, sys
def _fail(reason):
    sys.stdout.flush()
    sys.stderr.write("\n%s%s\n" % (FAIL_MARK, " ".join(str(reason).split())[:300]))
    sys.stderr.flush()
    os._exit(1)
def _guard(work):
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn",
               "socket.connect", "socket.bind", "socket.sendto", "os.setuid", "os.chroot"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link",
                   "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
                   "shutil.copyfile", "shutil.move"}
    def inside(p):
        if isinstance(p, int):
            return True
        p = fspath(p)
        p = realpath(p.decode() if isinstance(p, bytes) else p)
        return p == work or p.startswith(work + sep) or p == os.devnull
    def hook(event, args):
        if event in blocked:
            raise PermissionError("blocked by the sandbox: " + event)
        if event == "open":
            path, flags = args[0], args[2] or 0
            if isinstance(path, int):
                return
            text = str(fspath(path).decode() if isinstance(fspath(path), bytes) else fspath(path))
            if text.startswith("/proc/") and not text.startswith(("/proc/self/", "/proc/thread-self/")):
                raise PermissionError("blocked by the sandbox: reading " + text)
            if flags & write_flags and not inside(path):
                raise PermissionError("blocked by the sandbox: writing %s outside the working folder" % text)
        elif event in path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__"):
                    if not inside(a):
                        raise PermissionError("blocked by the sandbox: %s on %s outside the working folder"
                                              % (event, fspath(a)))
    sys.addaudithook(hook)
def _main():
    nonce = sys.stdin.readline().strip()
    entry, guard, mem_mb = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    work = os.path.realpath(os.getcwd())
    with open("candidate.py", encoding="utf-8") as f:
        source = f.read()
    with open("test.py", encoding="utf-8") as f:
        test = f.read()
    try:
        code = compile(source, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        _fail("SyntaxError in the candidate: %s (line %s)" % (getattr(e, "msg", e), getattr(e, "lineno", "?")))
    try:
        test_code = compile(test, "test.py", "exec")
    except (SyntaxError, ValueError) as e:
        _fail("SyntaxError in the test: %s (line %s)" % (getattr(e, "msg", e), getattr(e, "lineno", "?")))
    if guard:
        _guard(work)
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    stage = "the candidate"
    try:
        exec(code, ns)
        stage = "the test"
        if entry and entry not in ns:
            own = [v for v in ns.values() if type(v).__name__ == "function"
                   and getattr(v, "__code__", None) is not None and v.__code__.co_filename == "candidate.py"]
            if len(own) != 1:
                _fail("missing entry point: the candidate defines no %r (and not exactly one function "
                      "to test in its place)" % entry)
            ns[entry] = own[0]
        exec(test_code, ns)
        if callable(ns.get("check")):
            if not entry:
                _fail("the test defines check(candidate) but the row has no entry_point")
            ns["check"](ns[entry])
    except MemoryError:
        _fail("MemoryError: memory limit (%s MB) reached" % mem_mb)
    except RecursionError:
        _fail("RecursionError: maximum recursion depth exceeded")
    except SystemExit as e:
        _fail("exited (SystemExit %r) in %s before the tests finished" % (e.code, stage))
    except AssertionError as e:
        _fail("AssertionError" + (": %s" % e if str(e) else ""))
    except BaseException as e:
        _fail("%s: %s" % (type(e).__name__, e))
    sys.stdout.flush()
    sys.stdout.write("\n" + nonce + "\n")
    sys.stdout.flush()
    os._exit(0)
_main()
'''.replace("FAIL_MARK", repr(FAIL_MARK))

# The disposable parent: set the limits on itself, fork the harness, exit the way it exited.
_WRAPPER = r'''
import os, resource, sys
cpu, mem, fsize, nproc = (int(x) for x in sys.argv[1:5])
limits = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
          (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0))]
if nproc > 0:
    limits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
for which, value in limits:
    resource.setrlimit(which, value)
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-I", "-c", sys.argv[5], *sys.argv[6:]])
status = os.waitpid(pid, 0)[1]
if os.WIFSIGNALED(status):
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
'''


def minimal_env(home: str) -> dict[str, str]:
    """The only variables the sandbox sees: nothing secret can be inherited by accident."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


def _user_task_count() -> int:
    """Processes + threads of this user now (RLIMIT_NPROC counts threads); -1 if unknown."""
    uid, count = os.getuid(), 0
    try:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        count += len(os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    continue
    except OSError:
        return -1
    return count


def _signal_reason(sig: int) -> str:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU:
        return f"CPU time limit reached ({name})"
    if sig == signal.SIGXFSZ:
        return f"file size limit reached ({name})"
    return f"killed by signal {sig} ({name})"


def _reason(rc: int, stdout: str, stderr: str, nonce: str) -> tuple[bool, str]:
    """Turn the wrapper's exit and output into (passed, reason)."""
    if rc == 0 and stdout.rstrip().endswith(nonce):
        return True, "passed"
    marks = [ln[len(FAIL_MARK):] for ln in stderr.splitlines() if ln.startswith(FAIL_MARK)]
    if marks:
        return False, marks[-1]
    if rc < 0:
        return False, _signal_reason(-rc)
    if rc == 0:
        return False, "exited (code 0) before the tests finished"
    return False, f"exited with code {rc} before the tests finished"


def _tail(fh, n: int = 8192) -> str:
    fh.seek(0, os.SEEK_END)
    fh.seek(max(0, fh.tell() - n))
    return fh.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_candidate(job: ExecJob, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run one candidate against its test in the sandbox; never raises for the candidate's
    behaviour (only for a broken host, e.g. no temporary folder)."""
    started = time.monotonic()
    if not job.code.strip():
        return ExecResult(False, "no code in the answer", 0.0)
    nonce = secrets.token_hex(16)
    nproc = _user_task_count()
    args = [str(math.ceil(limits.timeout_s) + 1), str(limits.memory_mb * 2**20),
            str(limits.file_size_mb * 2**20), str(nproc + NPROC_MARGIN if nproc >= 0 else -1),
            _HARNESS, job.entry_point or "", "1" if limits.guard else "0", str(limits.memory_mb)]
    with tempfile.TemporaryDirectory(prefix="llamaduo-exec-") as work, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for name, text in (("candidate.py", job.code), ("test.py", job.test)):
            with open(os.path.join(work, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRAPPER, *args], cwd=work,
                                env=minimal_env(work), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.stdin.write((nonce + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        try:
            rc = proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # stragglers: an orphaned child, a forked grandchild
            rc = proc.wait()
        seconds = time.monotonic() - started
        if timed_out:
            return ExecResult(False, f"timeout after {limits.timeout_s:g}s (wall clock)", seconds)
        passed, reason = _reason(rc, _tail(out), _tail(err), nonce)
    return ExecResult(passed, reason, seconds)


def run_many(jobs: Sequence[ExecJob], limits: SandboxLimits = SandboxLimits(),
             workers: int = 0) -> list[ExecResult]:
    """Run the jobs on a small thread pool (each job is its own process group); results
    come back in job order. workers=0 picks min(4, CPUs)."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda j: run_candidate(j, limits), jobs))
