"""evaluation.py reports the answers cut at max_new_tokens (batch inference's `finish_reason`),
end to end against the local protocol server; "unknown" for outputs without the column."""
from __future__ import annotations

import pytest

from llamaduo.judging.truncation import truncated_summary, truncation_line
from llamaduo.pipeline.evaluation import main
from tests.servers.protocol_server import ProtocolServer
from tests.test_evaluation import base_argv, marker_rows, read_summary, write_responses

REASONS = ["stop", "length", "stop", "length", "length"]


@pytest.fixture(scope="module")
def server():
    with ProtocolServer(latency=0.0) as srv:
        yield srv


def test_cut_answers_are_counted_warned_and_flagged(server, repo_root, tmp_path, capsys):
    data = write_responses(tmp_path / "resp.jsonl", marker_rows(), finish_reason=REASONS,
                           prompt_id=[f"p{i}" for i in range(5)], repeat_index=[0] * 5)
    out = tmp_path / "eval"
    main(base_argv(server, repo_root, data, out, "--eval_repeat", "1"))
    assert read_summary(out)["truncated"] == {"rows": 3, "share": 0.6, "total": 5, "unknown_rows": 0}
    screen = capsys.readouterr().out
    assert "WARNING: 3 of 5 answers (60.0%) were cut at max_new_tokens" in screen
    report = (out / "report.md").read_text()
    assert "WARNING: 3 of 5 answers" in report
    table = report[report.index("## All rows"):].splitlines()
    flags = {line.split("|")[2].strip(): line.split("|")[6].strip() for line in table if line.startswith("| ")
             and line.split("|")[2].strip() not in ("instruction", "---")}
    # rows named by their instruction, not a prompt_id hash
    assert flags == {f"Write function number {i} in Python.": "**yes**" if r == "length" else "no"
                     for i, r in enumerate(REASONS)}
    # the worst row (p4: sim 40, prec 20) is flagged where its candidate is shown
    assert "### 1. similarity 40.0, precision 20.0 (answer cut at max_new_tokens)" in report


def test_no_finish_reason_column_is_unknown_not_zero(server, repo_root, tmp_path, capsys):
    data = write_responses(tmp_path / "resp.jsonl", marker_rows())
    out = tmp_path / "eval"
    main(base_argv(server, repo_root, data, out, "--eval_repeat", "1"))
    assert read_summary(out)["truncated"]["rows"] is None
    assert "answers cut at max_new_tokens: unknown" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "| ? |" in report and "**yes**" not in report


def test_summary_of_finish_reasons():
    assert truncated_summary(["stop", "stop"]) == {"rows": 0, "share": 0.0, "total": 2, "unknown_rows": 0}
    assert truncation_line({"truncated": truncated_summary(["stop", "stop"])}) == \
        "answers cut at max_new_tokens: 0 of 2"
    mixed = truncated_summary(["length", None, "stop", "length"])  # older rows appended: unknown
    assert mixed == {"rows": 2, "share": 0.5, "total": 4, "unknown_rows": 1}
    assert "1 rows unknown" in truncation_line({"truncated": mixed})
    assert truncated_summary([]) == {"rows": 0, "share": 0.0, "total": 0, "unknown_rows": 0}
