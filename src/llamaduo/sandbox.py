"""Run model-written code against a unit test in a kernel sandbox, and decide the verdict where
the code cannot reach it.

Two processes per test, each in its own bubblewrap sandbox (own user, PID, network, mount, IPC
and UTS namespaces; a fresh root that holds only the interpreter and its libraries, read-only;
a private tmpfs; its own /proc; no network; an empty environment; all capabilities dropped):

- the *candidate* process runs the model's code and answers calls: "call f with these
  arguments" in, "it returned this value" (or "it raised ValueError") out;
- the *test* process runs the row's test (`check(candidate)` or plain asserts) with stand-ins
  for the candidate's functions that forward each call over a pipe and get back plain builtin
  values (int, float, str, list, dict, ... decoded by strict type tags). The verdict is printed by
  this process only.

So nothing the candidate's code can read or patch decides the verdict: no nonce, no frames,
no builtins and no `__eq__` of the candidate's own objects ever reach the test process, and the
candidate cannot see, signal or trace the test process or the evaluation (separate PID
namespaces). Why two processes, not a harness in the candidate's process: any code in that
process can rewrite that process (`sys._getframe`, `gc`, `builtins`, `ctypes`), so a pass decided
there can be forged.

The whole process tree of each sandbox dies with it: PID 1 of the namespace is bubblewrap's
init, and when the test's process ends (or the wall clock runs out and the evaluation kills the
sandbox), the kernel kills every process left in the namespace, `setsid` ones included. Limits:
CPU seconds, address space, file size (rlimits set before the candidate's code runs), a pids
cgroup where one is writable (RLIMIT_NPROC where the evaluation is not root), and the wall clock.

Where bubblewrap is missing or cannot create namespaces, `resolve_isolation("auto")` raises
IsolationUnavailable and nothing runs, unless `isolation="none"` is chosen explicitly (the same
two processes, unisolated: only for trusted code; the caller warns).

Stdlib only: `data/build_demo.py` checks the demo answers with this runner without the
project's dependencies installed.
"""
from __future__ import annotations

import atexit
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

ISOLATIONS = ("auto", "bwrap", "none")
PIDS_MAX = 64  # processes and threads the candidate may have at once (pids cgroup)
MAX_MESSAGE = 64 * 2**20  # bytes: one value coming back from the candidate
SCRATCH_BYTES = 64 * 2**20  # the sandbox's /tmp (a tmpfs: RAM)
SHM_BYTES = 16 * 2**20  # its /dev/shm
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_SANDBOX_UID = "1000"  # the candidate's uid inside its user namespace (no capabilities)


class IsolationUnavailable(RuntimeError):
    """No kernel sandbox can be made here; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits and the isolation to use (auto | bwrap | none)."""

    timeout_s: float = 10.0
    memory_mb: int = 2048
    file_size_mb: int = 16
    isolation: str = "auto"


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


# --------------------------------------------------------------------------- the two programs

# Shared by both sides: plain builtin values as JSON with a type tag on every node. Decoding
# builds only builtin types, so what the test process compares has builtin __eq__; ints travel
# as hex (no 4300-digit limit), floats as float.hex (inf and nan survive).
_CODEC = r'''
import builtins as _b, json as _json
def _enc(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply to check")
    t = type(v)
    if v is None: return ["n"]
    if t is bool: return ["b", v]
    if isinstance(v, int) and not isinstance(v, bool): return ["i", hex(int.__index__(v))]
    if isinstance(v, float): return ["f", float.hex(float(v))]
    if isinstance(v, complex): return ["c", float.hex(v.real), float.hex(v.imag)]
    if isinstance(v, str): return ["s", str.__str__(v)]
    if isinstance(v, (bytes, bytearray)): return ["y" if isinstance(v, bytes) else "Y", bytes(v).hex()]
    if isinstance(v, (list, tuple, set, frozenset)):
        tag = "l" if isinstance(v, list) else "t" if isinstance(v, tuple) else "S" if isinstance(v, set) else "F"
        return [tag, [_enc(x, depth + 1) for x in v]]
    if isinstance(v, dict): return ["d", [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in dict.items(v)]]
    if isinstance(v, range): return ["r", v.start, v.stop, v.step]
    mod = t.__module__
    if mod == "datetime":
        import datetime as d
        if isinstance(v, d.datetime): return ["dt", v.isoformat()]
        if isinstance(v, d.date): return ["da", v.isoformat()]
        if isinstance(v, d.time): return ["tm", v.isoformat()]
        if isinstance(v, d.timedelta): return ["td", v.days, v.seconds, v.microseconds]
    if mod == "decimal" and t.__name__ == "Decimal": return ["dec", str(v)]
    if mod == "fractions" and t.__name__ == "Fraction": return ["fr", hex(v.numerator), hex(v.denominator)]
    if mod == "collections" and t.__name__ == "deque": return ["q", [_enc(x, depth + 1) for x in v]]
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):  # a generator or other iterator: its items
        items = []
        for x in v:
            if len(items) >= 100000:
                raise ValueError("an iterator of more than 100000 items cannot be checked outside the sandbox")
            items.append(_enc(x, depth + 1))
        return ["it", items]
    item = getattr(t, "item", None)  # numpy scalars
    if item is not None and type(t).__name__ != "module":
        return _enc(item(v), depth + 1)
    raise TypeError("a %s object cannot be checked outside the sandbox (only builtin values)" % t.__name__)
_SIMPLE = {"n": lambda n: None, "b": lambda n: n[1] is True, "i": lambda n: int(n[1], 16),
           "f": lambda n: float.fromhex(n[1]), "c": lambda n: complex(float.fromhex(n[1]), float.fromhex(n[2])),
           "s": lambda n: n[1] if type(n[1]) is str else _bad(), "y": lambda n: bytes.fromhex(n[1]),
           "Y": lambda n: bytearray.fromhex(n[1]), "r": lambda n: range(int(n[1]), int(n[2]), int(n[3]))}
def _stdlib(tag, n):
    """Values of a few stdlib types that tests pass and compare (dates, Decimal, Fraction, deque)."""
    if tag in ("dt", "da", "tm", "td"):
        import datetime as d
        if tag == "td":
            return d.timedelta(days=int(n[1]), seconds=int(n[2]), microseconds=int(n[3]))
        return {"dt": d.datetime, "da": d.date, "tm": d.time}[tag].fromisoformat(str(n[1]))
    if tag == "dec":
        import decimal
        return decimal.Decimal(str(n[1]))
    if tag == "fr":
        import fractions
        return fractions.Fraction(int(n[1], 16), int(n[2], 16))
    if tag == "q":
        import collections
        return collections.deque(_dec(x) for x in n[1])
    if tag == "it":
        return iter([_dec(x) for x in n[1]])
    _bad()
_STDLIB = ("dt", "da", "tm", "td", "dec", "fr", "q", "it")
_SEQ = {"l": list, "t": tuple, "S": set, "F": frozenset}
def _bad():
    raise ValueError("malformed value from the candidate's process")
def _dec(n):
    if type(n) is not list or not n or type(n[0]) is not str: _bad()
    tag = n[0]
    if tag in _SIMPLE: return _SIMPLE[tag](n)
    if tag in _STDLIB: return _stdlib(tag, n)
    if type(n[1]) is not list: _bad()
    if tag in _SEQ: return _SEQ[tag](_dec(x) for x in n[1])
    if tag == "d": return {_dec(p[0]): _dec(p[1]) for p in n[1]}
    _bad()
def _send(f, obj):
    f.write(_json.dumps(obj).encode("ascii") + b"\n")
    f.flush()
def _limits(argv):
    import resource
    cpu, mem, fsize, nproc = (int(x) for x in argv)
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                         (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_NPROC, (nproc, nproc))):
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass
def _one_line(text):
    return " ".join(str(text).split())[:300]
'''

# The candidate's process: argv = cpu mem fsize nproc  entry  in_fd out_fd  mem_mb  extra sys.path...
_CANDIDATE = _CODEC + r'''
import os, sys
def _main():
    _limits(sys.argv[1:5])
    entry, rfd, wfd, mem_mb = sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
    sys.path.extend(sys.argv[9:])
    source = sys.stdin.read()
    inp, out = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    def failure(e):
        if isinstance(e, MemoryError):
            return "MemoryError: memory limit (%s MB) reached" % mem_mb
        if isinstance(e, RecursionError):
            return "RecursionError: maximum recursion depth exceeded"
        return _one_line("%s: %s" % (type(e).__name__, e)) if str(e) else type(e).__name__
    try:
        code = compile(source, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        _send(out, {"error": "SyntaxError in the candidate: %s (line %s)"
                    % (getattr(e, "msg", e), getattr(e, "lineno", "?"))})
        return
    ns = {"__name__": "__candidate__", "__builtins__": _b}
    try:
        exec(code, ns)
    except SystemExit as e:
        _send(out, {"error": "exited (SystemExit %r) in the candidate before the tests finished" % (e.code,)})
        return
    except BaseException as e:
        _send(out, {"error": failure(e)})
        return
    if entry and entry not in ns:
        own = [v for v in ns.values() if type(v).__name__ == "function"
               and getattr(v, "__code__", None) is not None and v.__code__.co_filename == "candidate.py"]
        if len(own) != 1:
            _send(out, {"error": "missing entry point: the candidate defines no %r (and not exactly one "
                                 "function to test in its place)" % entry})
            return
        ns[entry] = own[0]
    _send(out, {"ready": True})
    while True:
        line = inp.readline()
        if not line:
            return
        req = _json.loads(line)
        if req["op"] == "names":
            found = {}
            for name in req["names"]:
                if name not in ns:
                    continue
                v = ns[name]
                if type(v).__name__ == "module":
                    found[name] = ["module", v.__name__]
                elif callable(v):
                    found[name] = ["callable"]
                else:
                    try:
                        found[name] = ["value", _enc(v)]
                    except Exception:
                        pass
            _send(out, {"names": found})
            continue
        args = [_dec(a) for a in req["args"]]
        kwargs = {k: _dec(v) for k, v in req["kwargs"]}
        try:
            value = ns[req["name"]](*args, **kwargs)
            reply = {"ok": _enc(value), "args": [_enc(a) for a in args]}
        except SystemExit as e:
            _send(out, {"exit": "exited (SystemExit %r) in the test before the tests finished" % (e.code,)})
            return
        except BaseException as e:
            reply = {"raise": [type(e).__name__, failure(e)]}
        _send(out, reply)
_main()
'''

# The test's process: argv = cpu mem fsize nproc  entry  in_fd out_fd  mem_mb  extra sys.path...
# It prints one JSON verdict line on its stdout, which only the evaluation reads.
_TEST = _CODEC + r'''
import os, sys, types
class CandidateGone(BaseException):
    """The candidate's process ended or broke the channel; BaseException so that a test's
    `except Exception` cannot swallow it."""
class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one."""
# Builtin exceptions keep their type in the test, except the ones that steer control flow:
# a StopIteration from the candidate would end `all(map(candidate, cases))` early, as a pass.
_ERRORS = {n: c for n, c in vars(_b).items() if isinstance(c, type) and issubclass(c, Exception)
           and not issubclass(c, (StopIteration, StopAsyncIteration))}
# Modules the test may get under a name the candidate imported them as: the standard library
# (less two with side effects on import) and numpy; never a module the candidate merely names.
_MODULES = (set(sys.stdlib_module_names) - {"antigravity", "this"}) | {"numpy"}
def _main():
    _limits(sys.argv[1:5])
    entry, rfd, wfd, mem_mb = sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
    sys.path.extend(sys.argv[9:])
    test = sys.stdin.read()
    verdict = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    inp, out = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    def finish(passed, reason):
        verdict.write(_json.dumps({"passed": passed, "reason": _one_line(reason)}) + "\n")
        verdict.flush()
        os._exit(0)
    def receive():
        line = inp.readline(MAX_MESSAGE)
        if not line.endswith(b"\n"):
            raise CandidateGone("gone")
        try:
            msg = _json.loads(line)
        except ValueError:
            raise CandidateGone("garbled") from None
        if type(msg) is not dict:
            raise CandidateGone("garbled")
        return msg
    def request(obj):
        try:
            _send(out, obj)
        except (BrokenPipeError, OSError):
            raise CandidateGone("gone") from None
        return receive()
    def call(name, args, kwargs):
        try:
            packed = {"op": "call", "name": name, "args": [_enc(a) for a in args],
                      "kwargs": [[k, _enc(v)] for k, v in kwargs.items()]}
        except TypeError as e:
            raise TypeError("the test passes a value that cannot cross into the sandbox: %s" % e) from None
        msg = request(packed)
        if "exit" in msg:
            raise CandidateGone(str(msg["exit"]))
        if "raise" in msg:
            kind, text = (str(x) for x in msg["raise"])
            error = _ERRORS.get(kind, CandidateError)(text[len(kind) + 2:] if text.startswith(kind + ": ") else text)
            error.llamaduo_reason = text  # the candidate's own wording ("KeyError: 1", not "KeyError: '1'")
            raise error
        if "ok" not in msg:
            raise CandidateGone("garbled")
        for a, after in zip(args, msg.get("args") or []):  # in-place changes to list/dict/set arguments
            if type(a) in (list, dict, set, bytearray):
                new = _dec(after)
                if type(new) is type(a) and new != a:
                    if type(a) is list or type(a) is bytearray:
                        a[:] = new
                    else:
                        a.clear()
                        a.update(new)
        return _dec(msg["ok"])
    def stand_in(name):
        def candidate(*args, **kwargs):
            return call(name, args, kwargs)
        candidate.__name__ = candidate.__qualname__ = name
        return candidate
    def names_of(code):
        found = set(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                found |= names_of(c)
        return found
    stage = "start"
    try:
        hello = receive()
        if "error" in hello:
            finish(False, str(hello["error"]))
        if hello.get("ready") is not True:
            raise CandidateGone("garbled")
        try:
            code = compile(test, "test.py", "exec")
        except (SyntaxError, ValueError) as e:
            finish(False, "SyntaxError in the test: %s (line %s)" % (getattr(e, "msg", e), getattr(e, "lineno", "?")))
        ns = {"__name__": "__test__", "__builtins__": _b}
        wanted = sorted(n for n in names_of(code) if not hasattr(_b, n))
        if entry:
            wanted.append(entry)
        found = request({"op": "names", "names": wanted}).get("names") or {}
        if type(found) is not dict:
            raise CandidateGone("garbled")
        for name, desc in found.items():
            if name not in wanted or type(desc) is not list or not desc:
                continue
            if desc[0] == "callable":
                ns[name] = stand_in(name)
            elif desc[0] == "module" and type(desc[1]) is str and desc[1].split(".")[0] in _MODULES:
                try:
                    ns[name] = __import__(desc[1], fromlist=["_"])
                except Exception:
                    pass
            elif desc[0] == "value":
                ns[name] = _dec(desc[1])
        stage = "test"
        exec(code, ns)
        check = ns.get("check")
        if type(check) is types.FunctionType:
            if not entry:
                finish(False, "the test defines check(candidate) but the row has no entry_point")
            check(stand_in(entry))
    except CandidateGone as e:
        finish(False, "CANDIDATE_GONE " + str(e))
    except Exception as e:
        if getattr(e, "llamaduo_reason", None):
            finish(False, e.llamaduo_reason)
        if isinstance(e, MemoryError):
            finish(False, "MemoryError: memory limit (%s MB) reached" % mem_mb)
        if isinstance(e, RecursionError):
            finish(False, "RecursionError: maximum recursion depth exceeded")
        if isinstance(e, AssertionError):
            finish(False, "AssertionError" + (": %s" % e if str(e) else ""))
        finish(False, "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__)
    except SystemExit as e:
        finish(False, "the test exited (SystemExit %r) before it finished" % (e.code,))
    except BaseException as e:
        finish(False, "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__)
    finish(True, "passed")
_main()
'''.replace("MAX_MESSAGE", str(MAX_MESSAGE))

_GONE = "CANDIDATE_GONE "


# --------------------------------------------------------------------------- isolation


def minimal_env(home: str) -> dict[str, str]:
    """The only variables the sandbox sees: nothing secret can be inherited by accident."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


def _interpreter() -> str:
    """The real interpreter binary (a venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


def library_paths() -> list[str]:
    """Folders on the interpreter's import path outside its prefix (a venv's site-packages),
    resolved; passed to both programs so that answers may import numpy and the like. The
    project's own source is left out (an editable install's .pth is not read: `-S`)."""
    paths = []
    for key in ("purelib", "platlib"):
        p = os.path.realpath(sysconfig.get_paths().get(key) or "")
        if p and os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


def _ro_paths() -> list[str]:
    """What the sandbox's fresh root holds, read-only: system libraries, the interpreter's
    prefix, the venv's site-packages. Nothing else of the host (no /etc, /home, /root, the
    checkout), so no secret file is there to read."""
    base = os.path.realpath(sys.base_prefix)
    wanted = ["/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", base,
              os.path.dirname(_interpreter()), *library_paths()]
    out: list[str] = []
    for p in wanted:
        if os.path.lexists(p) and not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out
                                          if not os.path.islink(q)):
            out.append(p)
    return out


def _bwrap_argv(program: str, args: Sequence[str]) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user",
            "--uid", _SANDBOX_UID, "--gid", _SANDBOX_UID, "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    for p in _ro_paths():
        if os.path.islink(p):  # merged-/usr systems: /lib -> usr/lib
            argv += ["--symlink", os.readlink(p), p]
        else:
            argv += ["--ro-bind", p, p]
    # /tmp and /dev/shm are the only writable places, each a size-capped tmpfs (tmpfs is RAM);
    # the root, /dev and every bound folder are read-only
    shm, tmp = (["--size", str(SHM_BYTES)], ["--size", str(SCRATCH_BYTES)]) if _bwrap_has_size() else ([], [])
    argv += ["--ro-bind-try", "/etc/localtime", "/etc/localtime", "--proc", "/proc", "--dev", "/dev",
             *shm, "--tmpfs", "/dev/shm", "--remount-ro", "/dev", *tmp, "--tmpfs", "/tmp", "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv"]
    for k, v in minimal_env("/tmp").items():
        argv += ["--setenv", k, v]
    return argv + ["--", _interpreter(), "-I", "-S", "-c", program, *args]


@functools.lru_cache(maxsize=None)
def _bwrap_has_size() -> bool:
    """bubblewrap >= 0.7 caps a tmpfs's size (`--size`); older ones leave it unbounded."""
    try:
        out = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout + out.stderr


@functools.lru_cache(maxsize=None)
def _bwrap_problem() -> Optional[str]:
    """None if bubblewrap makes a working sandbox here; else why not (one line)."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    try:
        probe = subprocess.run(_bwrap_argv("import os; print(os.getpid())", []), capture_output=True,
                               text=True, timeout=30, env=minimal_env("/tmp"), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap did not start: {e}"
    if probe.returncode != 0 or probe.stdout.strip() != "2":
        why = " ".join((probe.stderr or probe.stdout).split())[:200]
        return f"bwrap cannot create namespaces here (exit {probe.returncode}: {why})"
    return None


def resolve_isolation(mode: str = "auto") -> str:
    """The isolation to use: "bwrap", or "none" only when asked for by name. Raises
    IsolationUnavailable when "auto"/"bwrap" cannot be had (the caller exits 2)."""
    if mode not in ISOLATIONS:
        raise ValueError(f"execution_isolation must be one of {', '.join(ISOLATIONS)}, got {mode!r}")
    if mode == "none":
        return "none"
    problem = _bwrap_problem()
    if problem:
        raise IsolationUnavailable(
            f"no kernel sandbox for model-written code: {problem}. Install bubblewrap "
            f"(apt-get install bubblewrap; needs user namespaces), or set execution_isolation: none "
            f"to run the code unisolated (unsafe: only for code you trust)")
    return "bwrap"


@functools.lru_cache(maxsize=None)
def _pids_cgroup_root() -> Optional[str]:
    """A writable pids cgroup folder to make per-run cgroups in (cgroup v1 `pids` or v2 with the
    pids controller), or None. Why: as root RLIMIT_NPROC is not enforced, so a fork bomb is
    only bounded by a pids cgroup (or by the wall clock)."""
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        probe = os.path.join(root, f"llamaduo-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except OSError:
            continue
        try:
            with open(os.path.join(probe, "pids.max"), "w") as fh:
                fh.write(str(PIDS_MAX))
            _drop_abandoned_cgroups(root)
            return root
        except OSError:
            continue
        finally:
            try:
                os.rmdir(probe)
            except OSError:
                pass
    return None


def _drop_abandoned_cgroups(root: str, min_age_s: float = 600) -> None:
    """Remove empty per-run cgroups left by runs that were killed before their cleanup (the
    kernel refuses to remove one that still holds a process; young ones may be a live run's)."""
    try:
        names = [n for n in os.listdir(root) if n.startswith("llamaduo-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            if time.time() - os.stat(path).st_mtime > min_age_s:
                os.rmdir(path)
        except OSError:
            continue


def _new_cgroup() -> Optional[str]:
    root = _pids_cgroup_root()
    if root is None:
        return None
    path = os.path.join(root, f"llamaduo-{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as fh:
            fh.write(str(PIDS_MAX))
    except OSError:
        return None
    return path


_STALE_CGROUPS: set[str] = set()


def _drop_cgroup(path: Optional[str]) -> None:
    """Remove a run's cgroup, and those of earlier runs whose last process was still being
    reaped (rmdir is refused until then): retried here, not waited for, to keep runs fast."""
    if path is not None:
        _STALE_CGROUPS.add(path)
    for stale in list(_STALE_CGROUPS):
        try:
            os.rmdir(stale)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        _STALE_CGROUPS.discard(stale)


@atexit.register
def _drop_stale_cgroups() -> None:
    for _ in range(50):
        _drop_cgroup(None)
        if not _STALE_CGROUPS:
            return
        time.sleep(0.02)


def _command(isolation: str, program: str, args: Sequence[str], cgroup: Optional[str]) -> list[str]:
    argv = (_bwrap_argv(program, args) if isolation == "bwrap"
            else [_interpreter(), "-I", "-S", "-c", program, *args])
    if cgroup:  # join the cgroup before anything of the sandbox starts (no window for a fork)
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" 2>/dev/null; exec "$@"', cgroup, *argv]
    return argv


# --------------------------------------------------------------------------- running


def _signal_reason(sig: int) -> str:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU:
        return f"CPU time limit reached ({name})"
    if sig == signal.SIGXFSZ:
        return f"file size limit reached ({name})"
    return f"killed by signal {sig} ({name})"


def _gone_reason(rc: Optional[int], isolation: str) -> str:
    """Why the candidate's process stopped answering, from its exit status."""
    if rc is None:
        return "the candidate's process stopped answering the test"
    if isolation == "bwrap" and rc > 128:  # bubblewrap reports a signal as 128 + its number
        rc = -(rc - 128)
    if rc < 0:
        return _signal_reason(-rc)
    return f"exited (code {rc}) before the tests finished"


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox: its outer process group; bubblewrap's --die-with-parent then takes the
    namespace's init, and with it every process in the namespace."""
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    proc.wait()


def _spawn(isolation: str, program: str, args: list[str], fds: tuple[int, int], work: str,
           cgroup: Optional[str], stdout) -> subprocess.Popen:
    return subprocess.Popen(_command(isolation, program, [*args[:5], str(fds[0]), str(fds[1]), *args[5:]], cgroup),
                            cwd=work, env=minimal_env(work), stdin=subprocess.PIPE, stdout=stdout,
                            stderr=subprocess.DEVNULL, pass_fds=fds, start_new_session=True)


def run_candidate(job: ExecJob, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Run one candidate against its test in the sandbox; never raises for the candidate's
    behaviour (IsolationUnavailable when no sandbox can be had and isolation is not "none")."""
    started = time.monotonic()
    if not job.code.strip():
        return ExecResult(False, "no code in the answer", 0.0)
    isolation = resolve_isolation(limits.isolation)
    nproc = PIDS_MAX if os.getuid() != 0 else 4096
    common = [str(math.ceil(limits.timeout_s) + 1), str(limits.memory_mb * 2**20),
              str(limits.file_size_mb * 2**20), str(nproc), job.entry_point or ""]
    tail = [str(limits.memory_mb), *library_paths()]
    to_candidate, from_test = os.pipe()   # test -> candidate: requests
    to_test, from_candidate = os.pipe()   # candidate -> test: answers
    cgroup = _new_cgroup()
    cand = test = None
    with tempfile.TemporaryDirectory(prefix="llamaduo-exec-") as work:
        try:
            cand = _spawn(isolation, _CANDIDATE, [*common, *tail], (to_candidate, from_candidate),
                          work, cgroup, subprocess.DEVNULL)
            test = _spawn(isolation, _TEST, [*common, *tail], (to_test, from_test), work, None, subprocess.PIPE)
        finally:
            for fd in (to_candidate, from_test, to_test, from_candidate):
                os.close(fd)
        try:
            try:
                cand.stdin.write(job.code.encode("utf-8", "replace"))
                cand.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                out, _ = test.communicate(job.test.encode("utf-8", "replace"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                return ExecResult(False, f"timeout after {limits.timeout_s:g}s (wall clock)",
                                  time.monotonic() - started)
            passed, reason = _verdict(out, test.returncode)
            if reason.startswith(_GONE):
                reason = reason[len(_GONE):]
                if reason in ("gone", "garbled"):
                    try:
                        rc: Optional[int] = cand.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        rc = None
                    reason = _gone_reason(rc, isolation) if reason == "gone" else \
                        "the candidate's process sent something that is not an answer"
        finally:
            for proc in (cand, test):
                if proc is not None:
                    _kill(proc)
            _drop_cgroup(cgroup)
    return ExecResult(passed, reason, time.monotonic() - started)


def _verdict(out: bytes, rc: Optional[int]) -> tuple[bool, str]:
    """The test process's one JSON line; anything else is a failure of the harness itself."""
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        v = json.loads(lines[-1])
        if type(v) is dict and type(v.get("passed")) is bool and type(v.get("reason")) is str:
            return v["passed"], v["reason"]
    except (IndexError, ValueError):
        pass
    return False, f"the test process ended without a verdict (exit {rc})"


def run_many(jobs: Sequence[ExecJob], limits: SandboxLimits = SandboxLimits(),
             workers: int = 0) -> list[ExecResult]:
    """Run the jobs on a small thread pool (each job is its own sandbox); results come back in
    job order. workers=0 picks min(4, CPUs)."""
    resolve_isolation(limits.isolation)  # refuse before starting anything
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda j: run_candidate(j, limits), jobs))
