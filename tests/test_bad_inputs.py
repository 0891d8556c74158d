"""The bad-input matrix (tests/servers/bad_inputs.py): every case, run against the protocol server,
exits 2 with exactly one `error:` line naming the problem, prints no traceback, and sends no
request to the service LLM.

The matrix runs its stage's `main(argv)` in this process, the way its script runs it (`run_main`,
stderr captured): what a case tests is the refusal, not an interpreter start, and each stage
process spends 2-5 CPU-seconds importing before it reads one flag. Real subprocesses stay where
the process is the point: a case whose output folder is locked by another process (this one), and
one case per stage below ("one line, no traceback" across the process boundary).
scripts/reliability_campaign.py still runs every case as a subprocess."""
from __future__ import annotations

import os

import pytest

from tests.servers.bad_inputs import CASES, run_case, stage_env
from tests.servers.input_cases import INPUT_CASES, SUBPROCESS_CASES, run_in_process
from tests.servers.protocol_server import ProtocolServer

#: cases that need a second process: the output folder's lock is held by this test process
ANOTHER_PROCESS = ("output-locked",)
IN_PROCESS_CASES = [c for c in CASES if c.name not in ANOTHER_PROCESS]


@pytest.fixture(scope="module")
def server():
    with ProtocolServer() as srv:
        yield srv


@pytest.fixture()
def stage_environment(tmp_path, monkeypatch):
    """The environment a stage subprocess gets (stage_env), set in this process for an in-process run."""
    env = stage_env(tmp_path)
    for key in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key != "PYTHONPATH":
            monkeypatch.setenv(key, value)


def _refused_alone(outcome, case) -> None:
    """Exit 2, one `error:` line naming the problem, no traceback, no request."""
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert not outcome.traceback, outcome.stderr[-3000:]
    assert len(outcome.error_lines) == 1, outcome.stderr[-3000:]
    assert case.expect in outcome.error_lines[0], outcome.error_lines[0]
    assert outcome.requests == 0


@pytest.mark.parametrize("case", IN_PROCESS_CASES, ids=[c.name for c in IN_PROCESS_CASES])
def test_bad_input_exits_2_with_one_line_and_no_call(case, server, tmp_path, stage_environment):
    outcome, _ = run_in_process(case, tmp_path, server.url)
    _refused_alone(outcome, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ANOTHER_PROCESS], ids=list(ANOTHER_PROCESS))
def test_bad_input_of_another_process_exits_2_with_one_line_and_no_call(case, server, tmp_path):
    _refused_alone(run_case(case, tmp_path, server.url), case)


# ----------------------------------------------------------------------------- issue 23's classes
# In-process (`main(argv)` under run_main), since the process boundary is not what these test;
# SUBPROCESS_CASES repeat one per stage as real subprocesses for "one line, no traceback".


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c.name for c in INPUT_CASES])
def test_input_class_exits_2_before_any_call_and_leaves_everything_as_it_was(case, server, tmp_path,
                                                                             stage_environment):
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
