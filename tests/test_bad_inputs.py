"""The bad-input matrix (tests/servers/bad_inputs.py): every case, run as a real stage
subprocess against the protocol server, exits 2 with exactly one `error:` line naming the
problem, prints no traceback, and sends no request to the service LLM."""
from __future__ import annotations

import os

import pytest

from tests.servers.bad_inputs import CASES, run_case
from tests.servers.protocol_server import ProtocolServer


@pytest.fixture(scope="module")
def server():
    with ProtocolServer() as srv:
        yield srv


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line_and_no_call(case, server, tmp_path):
    outcome = run_case(case, tmp_path, server.url)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert not outcome.traceback, outcome.stderr[-3000:]
    assert len(outcome.error_lines) == 1, outcome.stderr[-3000:]
    assert case.expect in outcome.error_lines[0], outcome.error_lines[0]
    assert outcome.requests == 0


# ----------------------------------------------------------------------------- issue 23's classes
# In-process (`main(argv)` under run_main), since the process boundary is not what these test;
# SUBPROCESS_CASES repeat one per stage as real subprocesses for "one line, no traceback".

from tests.servers.bad_inputs import stage_env  # noqa: E402
from tests.servers.input_cases import INPUT_CASES, SUBPROCESS_CASES, changes, run_in_process, snapshot  # noqa: E402


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c.name for c in INPUT_CASES])
def test_input_class_exits_2_before_any_call_and_leaves_everything_as_it_was(case, server, tmp_path, monkeypatch):
    env = stage_env(tmp_path)
    for key in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key != "PYTHONPATH":
            monkeypatch.setenv(key, value)
    outcome, changed = run_in_process(case, tmp_path, server.url)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert not outcome.traceback, outcome.stderr[-3000:]
    assert len(outcome.error_lines) == 1, outcome.stderr[-3000:]
    assert case.expect in outcome.error_lines[0], outcome.error_lines[0]
    assert outcome.requests == 0
    assert changed == [], changed  # inputs byte-identical, nothing written anywhere, not even a lock file
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_input_class_as_a_subprocess_prints_one_line_and_no_traceback(name, server, tmp_path):
    case = next(c for c in INPUT_CASES if c.name == name)
    outcome = run_case(case, tmp_path, server.url)
    assert outcome.returncode == 2 and outcome.requests == 0, outcome.stderr[-3000:]
    assert not outcome.traceback and len(outcome.error_lines) == 1, outcome.stderr[-3000:]
    assert case.expect in outcome.error_lines[0]
