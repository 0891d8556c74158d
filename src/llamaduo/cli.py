"""Console entry points (`llamaduo-finetune`, ...), the top-level scripts and `python -m llamaduo STAGE`:
one shape for every stage.

Each stage runs `llamaduo.pipeline.<stage>.main(argv) -> int` under `errors.run_main`, which turns
expected errors into one line and an exit code. The stage module is imported only when its
command runs, so `llamaduo-merge --help` does not pay for importing torch.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, NoReturn

from llamaduo.errors import run_main


def _print_version_and_exit() -> None:
    """`--version` answered before the stage module (and torch) is imported."""
    from llamaduo.version import version_line, wants_version

    if wants_version(sys.argv[1:]):
        print(version_line(os.path.basename(sys.argv[0]) or "llamaduo"))
        sys.exit(0)


def _stage(name: str) -> Callable[[], NoReturn]:
    def entry() -> NoReturn:
        _print_version_and_exit()
        run_main(importlib.import_module(f"llamaduo.pipeline.{name}").main)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"Run the {name} stage with sys.argv (exits with its code)."
    return entry


finetune = _stage("finetune")
evaluation = _stage("evaluation")
data_gen = _stage("data_gen")
dataset_merge = _stage("dataset_merge")
collect = _stage("collect")
export = _stage("export")
_serve = _stage("serve")
_batch_inference = _stage("batch_inference")


def brief_thread_spin() -> None:
    """Idle OpenMP threads spin only briefly (libgomp's GOMP_SPINCOUNT=1000, microseconds) before
    they sleep. WHY: by default they spin ~300k times, which on a shared 2-core machine took the
    demo's generation from 36 s to 170 s; sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes every
    one of a decode step's ~2,000 small ops wake the other thread, and 2 threads then ran slower
    than one (44 rows x 460 tokens, one step: 673 ms passive, 480 ms brief spin, 553 ms one
    thread, with a second job on the machine; 1,685 against 1,254 ms with the cores full).
    Set before torch is imported; an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "1000"


def batch_inference() -> NoReturn:
    """Run batch inference, with OpenMP threads that spin only briefly when idle (brief_thread_spin)."""
    brief_thread_spin()
    _batch_inference()


def serve() -> NoReturn:
    """Serve a model behind an OpenAI-compatible API. The engine is exec'd; like batch
    inference, idle OpenMP threads sleep instead of spinning (set before torch is imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _serve()


def loop() -> NoReturn:
    """`llamaduo-loop`: exec bash on the packaged loop script with this command's arguments and
    environment. The stages run as `$PYTHON -m llamaduo STAGE`; PYTHON defaults to this
    interpreter (the one llamaduo is installed in). Relative paths are relative to the current
    folder."""
    from llamaduo.loop import script_path

    _print_version_and_exit()
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)
    env.setdefault("LLAMADUO_HELPER_PYTHON", sys.executable)
    sys.stdout.flush()
    os.execvpe("bash", ["bash", script_path(), *sys.argv[1:]], env)


# `python -m llamaduo NAME`: the loop's stage names, and the console scripts' short names
COMMANDS: dict[str, Callable[[], NoReturn]] = {
    "finetune": finetune, "batch_inference": batch_inference, "evaluation": evaluation,
    "data_gen": data_gen, "dataset_merge": dataset_merge, "loop": loop,
    "collect": collect, "serve": serve, "export": export,
    "infer": batch_inference, "eval": evaluation, "datagen": data_gen, "merge": dataset_merge,
}
