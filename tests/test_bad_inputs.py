"""The bad-input matrix (tests/servers/bad_inputs.py): every case, run as a real stage
subprocess against the protocol server, exits 2 with exactly one `error:` line naming the
problem, prints no traceback, and sends no request to the service LLM."""
from __future__ import annotations

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
