"""Attacks on the execution sandbox: this project's own new cases of each class a held-out
campaign used (issue 23). Shared by tests/test_sandbox.py (run through the sandbox from an
evaluator process) and scripts/reliability_campaign.py (run through `evaluation.py
--allow_code_execution`, the table in docs/reliability.md).

Each attack is (candidate code, test) with placeholders filled by `fill`: {S} a watched
folder, {PORT} a local TCP server that must receive nothing, {MARKER} a string any process
left behind carries on its command line, {CANARY_PART} most of the secret the evaluator
holds (not all of it: the test itself must hold no secret), {ROOT} a decoy checkout. The entry point is always `f`; the right answer is `f(x) = x + 1`.
"""
from __future__ import annotations

import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

HUMANEVAL = "def check(candidate):\n    assert candidate(3) == 4\n    assert candidate(-1) == 0\n"

CANARY = f"canary-{uuid.uuid4().hex[:12]}"
MARKER = f"survivor-{uuid.uuid4().hex[:12]}"

# name -> (candidate code, test); {S} = the watched folder, {PORT} = the local server's port
ATTACKS: dict[str, tuple[str, str]] = {
    "fork_exec shell": (
        "import _posixsubprocess, os, time\n"
        "def f(x):\n"
        "    cmd = [b'/bin/sh', b'-c', b'touch {S}/by_fork_exec; curl -s -m 2 http://127.0.0.1:{PORT}/fe; rm -f {S}/victim.txt']\n"
        "    r, w = os.pipe()\n"
        "    for extra in ((0, None, False), (None, False)):\n"
        "        try:\n"
        "            _posixsubprocess.fork_exec(cmd, [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1,\n"
        "                                       r, w, True, False, 0, None, None, None, -1, *extra)\n"
        "            break\n"
        "        except TypeError:\n"
        "            continue\n"
        "    os.system('touch {S}/by_system'); time.sleep(1)\n"
        "    return x + 1\n", HUMANEVAL),
    "dir_fd writes and deletes": (
        "import os\n"
        "def f(x):\n"
        "    for d in ('{S}', '{ROOT}', '/', '/usr', '/tmp/..', '/proc/1/root{S}', '/proc/self/cwd/../..'):\n"
        "        try:\n"
        "            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
        "        except OSError:\n"
        "            continue\n"
        "        for name in ('victim.txt', 'README.md'):\n"
        "            try:\n"
        "                os.unlink(name, dir_fd=fd)\n"
        "            except OSError:\n"
        "                pass\n"
        "        try:\n"
        "            os.write(os.open('by_dir_fd', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd), b'x')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return x + 1\n", HUMANEVAL),
    "sqlite3 and plain files": (
        "import sqlite3, os\n"
        "def f(x):\n"
        "    for p in ('{S}/by_sqlite.db', '{ROOT}/by_sqlite.db', '/usr/by_sqlite.db'):\n"
        "        try:\n"
        "            sqlite3.connect(p).execute('create table t (x)')\n"
        "        except sqlite3.Error:\n"
        "            pass\n"
        "        try:\n"
        "            open(p + '.txt', 'w').write('x')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return x + 1\n", HUMANEVAL),
    "setsid survivors": (
        "import os, subprocess, sys, time\n"
        "def f(x):\n"
        "    for i in range(4):\n"
        "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{MARKER}'],\n"
        "                         start_new_session=True)\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', '{MARKER}'])\n"
        "        os._exit(0)\n"
        "    time.sleep(0.5)\n"
        "    return x + 1\n", HUMANEVAL),
    "network: fastopen, connect, udp, curl": (
        "import socket, subprocess\n"
        "def f(x):\n"
        "    for send in (lambda s: s.sendto(b'GET /tfo HTTP/1.0\\r\\n\\r\\n', socket.MSG_FASTOPEN, ('127.0.0.1', {PORT})),\n"
        "                 lambda s: s.sendmsg([b'GET /tfo2 HTTP/1.0\\r\\n\\r\\n'], [], socket.MSG_FASTOPEN, ('127.0.0.1', {PORT})),\n"
        "                 lambda s: (s.connect(('127.0.0.1', {PORT})), s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'))):\n"
        "        try:\n"
        "            send(socket.socket())\n"
        "        except OSError:\n"
        "            pass\n"
        "    try:\n"
        "        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {PORT}))\n"
        "    except OSError:\n"
        "        pass\n"
        "    subprocess.run(['curl', '-s', '-m', '2', 'http://127.0.0.1:{PORT}/curl'])\n"
        "    return x + 1\n", HUMANEVAL),
    "kill the evaluator (ctypes, /proc pids, kill -1)": (
        "import ctypes, os, signal\n"
        "def f(x):\n"
        "    libc = ctypes.CDLL(None)\n"
        "    for p in os.listdir('/proc/self/..'):\n"
        "        if p.isdigit() and int(p) != os.getpid():\n"
        "            libc.kill(int(p), 9)\n"
        "    libc.kill(os.getppid(), 9)\n"
        "    libc.kill(-1, 9)\n"
        "    libc.kill(0, 9)\n"
        "    return x + 1\n", HUMANEVAL),
    "stop itself and its group": (
        "import os, signal\n"
        "def f(x):\n"
        "    os.killpg(0, signal.SIGSTOP)\n"
        "    return x + 1\n", HUMANEVAL),
    "read canaries from /proc environ and cmdline": (
        "import os\n"
        "def f(x):\n"
        "    text = repr(dict(os.environ))\n"
        "    for base in ('/proc/self/..', '/proc/1/root/proc', '/proc'):\n"
        "        try:\n"
        "            pids = os.listdir(base)\n"
        "        except OSError:\n"
        "            continue\n"
        "        for p in pids:\n"
        "            for what in ('environ', 'cmdline'):\n"
        "                try:\n"
        "                    fd = os.open(what, os.O_RDONLY, dir_fd=os.open(base + '/' + p, os.O_RDONLY))\n"
        "                    text += os.read(fd, 1 << 20).decode('latin-1')\n"
        "                except (OSError, ValueError):\n"
        "                    pass\n"
        "    for p in ('/root/.cache/huggingface/token', '/etc/shadow', '{ROOT}/.env', '/proc/1/environ'):\n"
        "        try:\n"
        "            text += open(p).read()\n"
        "        except OSError:\n"
        "            pass\n"
        "    return text\n",
        "def check(candidate):\n    assert '{CANARY_PART}' in candidate(0)\n"),
    "read the verdict through frames and gc": (
        "import gc, sys\n"
        "def f(x):\n"
        "    seen = []\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        seen.append(repr(frame.f_locals)[:500])\n"
        "        frame.f_globals.setdefault('passed', True)\n"
        "        frame = frame.f_back\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, (set, dict)) and not isinstance(o, type):\n"
        "            try:\n"
        "                o.clear() if isinstance(o, set) else None\n"
        "            except Exception:\n"
        "                pass\n"
        "    return 0\n", HUMANEVAL),
    "patch builtins isinstance, callable, AssertionError": (
        "import builtins\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.callable = lambda *a: False\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "builtins.type = lambda *a: int\n"
        "def f(x):\n"
        "    return 0\n", HUMANEVAL),
    "__eq__ always true": (
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "def f(x):\n"
        "    return Anything()\n", HUMANEVAL),
    "int and str subclasses with a lying __eq__": (
        "class Liar(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def f(x):\n"
        "    return Liar(99)\n", HUMANEVAL),
    "write a fake pass on every descriptor": (
        "import os\n"
        "for fd in range(64):\n"
        "    try:\n"
        "        os.write(fd, b'{\"passed\": true, \"reason\": \"passed\"}\\n{\"ok\": [\"i\", \"0x4\"], \"args\": []}\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "def f(x):\n"
        "    return 0\n", HUMANEVAL),
    "StopIteration ends the test's loop": (
        "def f(x):\n"
        "    raise StopIteration\n",
        "def check(candidate):\n"
        "    for got, want in zip(map(candidate, [3, -1]), [4, 0]):\n"
        "        assert got == want\n"),
    "fill every writable place": (
        "import os, signal\n"
        "def f(x):\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "    total, block = 0, b'x' * (4 << 20)\n"
        "    for d in ('/tmp', '/dev/shm', '/', '/root', '/dev', '{S}'):\n"
        "        for i in range(40):\n"
        "            try:\n"
        "                with open(f'{d}/fill{i}', 'wb') as fh:\n"
        "                    fh.write(block)\n"
        "                total += len(block)\n"
        "            except OSError:\n"
        "                break\n"
        "    return total\n",
        "def check(candidate):\n    assert candidate(0) >= 200 * 2 ** 20\n"),
    "exit early with success": (
        "import os, sys\n"
        "print('passed')\n"
        "def f(x):\n"
        "    os._exit(0)\n", HUMANEVAL),
}
FORGERIES = ("read the verdict through frames and gc", "patch builtins isinstance, callable, AssertionError",
             "__eq__ always true", "int and str subclasses with a lying __eq__",
             "write a fake pass on every descriptor", "exit early with success", "StopIteration ends the test's loop",
             "fill every writable place",
             "read canaries from /proc environ and cmdline", "kill the evaluator (ctypes, /proc pids, kill -1)",
             "stop itself and its group")



def fill(text: str, watched: Path, port: int, checkout: Path) -> str:
    """The attack with its placeholders filled; `checkout` is a decoy of a project folder (a
    README.md and a src/), so that an escape harms no real checkout."""
    return (text.replace("{S}", str(watched)).replace("{PORT}", str(port)).replace("{MARKER}", MARKER)
            .replace("{CANARY_PART}", CANARY[:-4]).replace("{ROOT}", str(checkout)))


def decoy_checkout(folder: Path) -> Path:
    (folder / "src").mkdir(parents=True)
    (folder / "README.md").write_text("decoy")
    (folder / "src" / "mod.py").write_text("x = 1\n")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: compared before and after an attack."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Recorder(socketserver.BaseRequestHandler):
    """Records the first bytes of every connection that reaches the server."""

    def handle(self) -> None:
        self.server.hits.append(self.request.recv(4096))  # type: ignore[attr-defined]


def recording_server() -> socketserver.ThreadingTCPServer:
    """A TCP server on 127.0.0.1 (a free port) that no attack may reach; `.hits` lists what did."""
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Recorder)
    srv.hits = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def survivors(marker: str = MARKER) -> list[str]:
    """Pids of the host's processes whose command line carries `marker`: left behind by an attack."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                found.append(p)
    return found


# --------------------------------------------------------------------------- through evaluation.py

ESCAPES = ("file", "network", "survivor", "canary", "forged pass", "evaluator died")
ALONE = ("kill the evaluator (ctypes, /proc pids, kill -1)",)  # run by itself: its escape would take the others down


class _Scene:
    """One attack's own watched folder, decoy checkout, server and process marker, so that
    what escapes is attributed to the attack that did it."""

    def __init__(self, name: str, folder: Path, index: int) -> None:
        self.name, self.marker = name, f"{MARKER}x{index}x"
        self.watched, self.checkout = folder / "watched", decoy_checkout(folder / "checkout")
        self.watched.mkdir(parents=True)
        (self.watched / "victim.txt").write_text("keep me")
        self.before = (tree(self.watched), tree(self.checkout))
        self.server = recording_server()

    def row(self) -> dict:
        code, test = (fill(t, self.watched, self.server.server_address[1], self.checkout).replace(MARKER, self.marker)
                      for t in ATTACKS[self.name])
        return {"instructions": f"Write f(x) = x + 1. ({self.name})", "prompt_id": self.name, "entry_point": "f",
                "target_responses": "```python\ndef f(x):\n    return x + 1\n```",
                "candidate_responses": f"```python\n{code}\n```", "test": test}

    def escapes(self, out_row: Optional[dict]) -> list[str]:
        self.server.shutdown()
        self.server.server_close()
        found = []
        if (tree(self.watched), tree(self.checkout)) != self.before:
            found.append("file")
        if self.server.hits:  # type: ignore[attr-defined]
            found.append("network")
        left = survivors(self.marker)
        if left:
            found.append("survivor")
            for pid in left:
                _kill(pid)
        if out_row is not None and CANARY in json.dumps(out_row):
            found.append("canary")
        if out_row is not None and self.name in FORGERIES and out_row.get("passed"):
            found.append("forged pass")
        return found


def _kill(pid: str) -> None:
    try:
        os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass


def _evaluate(names: list[str], work: Path, repo: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """The attacks as the rows of one `evaluation.py --allow_code_execution` (from the checkout
    `repo`), run twice (a rerun must not die on them either); {attack: escapes}."""
    scenes = [_Scene(n, work / f"attack{i}", i) for i, n in enumerate(names)]
    data = work / "resp.jsonl"
    data.write_text("".join(json.dumps(s.row()) + "\n" for s in scenes))
    out = work / "eval"
    argv = [sys.executable, "evaluation.py", "--service_llm_provider", "reference", "--lm_response_ds_id", str(data),
            "--eval_ds_id", str(out), "--allow_code_execution", "--execution_timeout_s", "4",
            "--avg_similarity_threshold", "0", "--avg_precision_threshold", "0", "--coverage_threshold", "0",
            "--service_llm_api_key", f"key-{CANARY}"]
    runs = [subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=900) for _ in range(2)]
    time.sleep(0.5)
    died = any(r.returncode not in (0, 3) for r in runs) or not (out / "eval.jsonl").is_file()
    rows = {} if died else {r["prompt_id"]: r for r in map(json.loads, (out / "eval.jsonl").read_text().splitlines())}
    printed = "".join(r.stdout + r.stderr for r in runs)
    files = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()) if out.exists() else b""
    result = {}
    for scene in scenes:
        found = scene.escapes(rows.get(scene.name))
        if died:
            found.append("evaluator died")
        result[scene.name] = found
    if CANARY in printed or CANARY.encode() in files:  # a canary outside the rows: count it once
        first = next(iter(result))
        if "canary" not in result[first]:
            result[first].append("canary")
    return result


def evaluation_campaign(work: Path, repo: Path, include_alone: bool = True) -> dict:
    """Every attack through evaluation.py, with canary secrets in the environment and on the
    command line; {attacks, contained, by_kind: {escape: attacks}, escaped: [...]}.
    `include_alone=False` leaves out the attacks that kill every process they can see: run
    against an older checkout without a PID namespace, they would kill every process of the
    user on the machine, not only the evaluation."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    env.update(PYTHONPATH=os.pathsep.join([str(repo / "src"), str(repo)]), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LLAMADUO_LOG_LEVEL="WARNING",
               OPENAI_API_KEY=f"sk-{CANARY}", HF_TOKEN=f"hf_{CANARY}", MY_SERVICE_SECRET=CANARY)
    per_attack: dict[str, list[str]] = {}
    groups = [[n for n in ATTACKS if n not in ALONE], *([[n] for n in ALONE] if include_alone else [])]
    for i, names in enumerate(groups):
        per_attack.update(_evaluate(names, work / f"group{i}", repo, env))
    return {"attacks": len(per_attack), "contained": sum(1 for e in per_attack.values() if not e),
            "by_kind": {k: sum(k in e for e in per_attack.values()) for k in ESCAPES},
            "escaped": [f"{n}: {', '.join(e)}" for n, e in per_attack.items() if e]}
