"""serve.py's startup against the engine it runs, started bare, on the same machine back to back.

  baseline: `transformers serve <embedded model folder>` (the engine alone)
  serve.py: `serve.py --model-id smollm2-135m-instruct` (config, model resolution, served-name
            link, then exec of the same engine)

For each: seconds until GET /v1/models answers, seconds for one greedy 32-token chat completion,
and seconds from SIGTERM to exit. Prints the startup ratio (target <= 1.3: serve.py adds only
its own imports) and the absolute startup (the issue's goal: well under a minute on an idle
2-core CPU; a loaded machine inflates both arms alike).

  python bench/serve_startup.py [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llamaduo.models import EMBEDDED_MODEL, provision_embedded_model  # noqa: E402
from llamaduo.pipeline.serve import TRANSFORMERS_CLI  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(cmd: list[str], port: int, model: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               HF_HUB_DISABLE_UPDATE_CHECK="1", OMP_WAIT_POLICY="PASSIVE")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:3]} exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        up = time.monotonic() - start
        body = json.dumps({"model": model, "max_tokens": 32, "temperature": 0,
                           "messages": [{"role": "user", "content": "Write a Python function that reverses a string."}]})
        t = time.monotonic()
        req = urllib.request.Request(url + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        json.load(urllib.request.urlopen(req, timeout=600))
        chat = time.monotonic() - t
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        return {"startup_s": round(up, 1), "chat_s": round(chat, 1), "stop_s": round(time.monotonic() - t, 1),
                "exit_code": proc.returncode}
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    folder = provision_embedded_model()
    for i in range(args.repeats):
        port = free_port()
        bare = measure([sys.executable, "-c", TRANSFORMERS_CLI, "serve", str(folder), "--host", "127.0.0.1",
                        "--port", str(port), "--device", "cpu"], port, str(folder))
        port = free_port()
        ours = measure([sys.executable, "serve.py", "--model-id", EMBEDDED_MODEL, "--port", str(port)], port,
                       EMBEDDED_MODEL)
        ratio = ours["startup_s"] / bare["startup_s"]
        print(json.dumps({"run": i + 1, "transformers_serve": bare, "serve_py": ours,
                          "startup_ratio": round(ratio, 2), "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
