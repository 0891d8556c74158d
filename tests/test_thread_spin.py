"""batch_inference's OpenMP setting: a brief spin by default, the user's own setting wins."""
from __future__ import annotations

import subprocess
import sys

import pytest

from llamaduo.cli import brief_thread_spin


@pytest.mark.parametrize("preset,expected", [
    ({}, {"GOMP_SPINCOUNT": "1000"}),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"GOMP_SPINCOUNT": "50"}, {"GOMP_SPINCOUNT": "50"}),
], ids=["default", "policy-wins", "spincount-wins"])
def test_brief_spin_is_the_default_and_an_explicit_setting_wins(monkeypatch, preset, expected):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in preset.items():
        monkeypatch.setenv(name, value)
    brief_thread_spin()
    import os

    assert {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ} == expected


def test_set_before_torch_is_imported_in_the_stage_process():
    """libgomp reads its environment when torch loads it, so the entry point must set it first:
    in a fresh process, `cli.batch_inference`'s setting is in place before torch is imported."""
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); os.environ.pop('GOMP_SPINCOUNT', None)\n"
            "from llamaduo import cli\n"
            "cli._batch_inference = lambda: print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)\n"
            "cli.batch_inference()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1000", "False"]
