"""The light stages answer `--help` and `--print-config` without importing torch, transformers,
TRL, PEFT or sentence-transformers (seconds of import on 2 cores before any output).

Checked in a fresh interpreter (the test process has imported everything already): one child runs
every light stage's `main` with each flag, the way the scripts do, and reports which heavy
modules `sys.modules` holds after each. finetune may import TRL: its parser is TRL's.
"""
from __future__ import annotations

import json
import subprocess
import sys

LIGHT_STAGES = ("dataset_merge", "evaluation", "data_gen", "batch_inference")
HEAVY = ("torch", "transformers", "trl", "peft", "sentence_transformers")

CHILD = """
import contextlib, importlib, io, json, sys
heavy, stages, report = json.loads(sys.argv[1]), json.loads(sys.argv[2]), {}
for stage in stages:
    main = importlib.import_module("llamaduo.pipeline." + stage).main
    for flag in ("--help", "--print-config"):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                code = main([flag])
        except SystemExit as exit:
            code = exit.code
        report[f"{stage} {flag}"] = {"code": code, "printed": len(out.getvalue()),
                                     "heavy": [m for m in heavy if m in sys.modules]}
print(json.dumps(report))
"""


def test_light_stages_help_and_print_config_import_no_heavy_library(repo_root):
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(HEAVY), json.dumps(LIGHT_STAGES)],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == 2 * len(LIGHT_STAGES)
    for run, seen in report.items():
        assert seen["code"] in (0, None) and seen["printed"] > 200, (run, seen)  # it did print help/config
    # the first run that pulled a heavy module in names the culprit (later runs inherit it)
    offenders = {run: seen["heavy"] for run, seen in report.items() if seen["heavy"]}
    assert not offenders, f"heavy imports: {offenders}"


def test_the_check_sees_a_heavy_import(repo_root):
    """The same child, made to import transformers first, reports it: the check can fail."""
    child = "import transformers\n" + CHILD
    proc = subprocess.run([sys.executable, "-c", child, json.dumps(HEAVY), json.dumps(["dataset_merge"])],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all("transformers" in seen["heavy"] for seen in report.values())
