"""The bad-input matrix: inputs every stage must refuse with exit 2, one line, no traceback and
no request to the service LLM. Shared by tests/test_bad_inputs.py (one test per case) and
scripts/reliability_campaign.py (the reliability table in docs/reliability.md).

Each case builds its inputs in a fresh folder and returns the stage command line; `run_case`
runs it as a real subprocess against a protocol server and reports what happened.
"""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tests.servers.process import server_stats

REPO = Path(__file__).resolve().parents[2]

Build = Callable[[Path, str], "tuple[list[str], Optional[Callable[[], None]]]"]


@dataclass
class Case:
    name: str
    stage: str  # evaluation | data_gen | dataset_merge
    build: Build
    expect: str  # a fragment the one error line must contain


@dataclass
class Outcome:
    returncode: int
    error_lines: list[str]
    traceback: bool
    requests: int
    seconds: float
    stderr: str

    @property
    def handled(self) -> bool:
        return self.returncode == 2 and len(self.error_lines) == 1 and not self.traceback and self.requests == 0


# ----------------------------------------------------------------------------- inputs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def response_rows(n: int = 3) -> list[dict]:
    return [{"instructions": f"Write function {i}.", "target_responses": f"def f{i}(): return {i}",
             "candidate_responses": f"def f{i}(): return {i}", "model_id": "tiny", "model_sha": "abc"}
            for i in range(n)]


def sft_rows(n: int = 4, prefix: str = "train") -> list[dict]:
    return [{"prompt": f"{prefix} question {i} about sorting lists", "prompt_id": f"{prefix}{i}",
             "messages": [{"role": "user", "content": f"{prefix} question {i} about sorting lists"},
                          {"role": "assistant", "content": f"answer {i}: use sorted() on the list"}],
             "category": "coding"} for i in range(n)]


def sft_folder(path: Path) -> Path:
    write_jsonl(path / "train_sft.jsonl", sft_rows(4, "train"))
    write_jsonl(path / "test_sft.jsonl", sft_rows(2, "test"))
    return path


def service_flags(url: str, model: str) -> list[str]:
    """The provider keys every service-LLM stage gets in these cases: the protocol server."""
    return ["--service_llm_provider", "openai", "--service_model_name", model, "--service_llm_api_key", "sk-test",
            "--service_llm_base_url", f"{url}/v1", "--rate_limit_per_minute", "0", "--max_retries", "0",
            "--prompt_tmpl_path", str(REPO / "src/llamaduo/defaults/prompts.toml"),
            "--pricing_path", str(REPO / "src/llamaduo/defaults/pricing.yaml")]


def eval_argv(url: str, data: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["evaluation.py", *service_flags(url, "mock-judge"), "--eval_repeat", "1",
            "--lm_response_ds_id", str(data), "--eval_ds_id", str(out), *extra]


def gen_argv(url: str, reference: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["data_gen.py", *service_flags(url, "gpt-4o-mini"), "--num_samples", "2",
            "--reference_ds_id", str(reference), "--synth_ds_id", str(out), *extra]


def merge_argv(first: Path | str, second: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["dataset_merge.py", "--first_ds_id", str(first), "--second_ds_id", str(second),
            "--result_ds_id", str(out), *extra]


def _eval_with_rows(rows: list[dict], *extra: str) -> Build:
    def build(work: Path, url: str):
        return eval_argv(url, write_jsonl(work / "resp.jsonl", rows), work / "eval", *extra), None
    return build


def _candidate(value) -> list[dict]:
    rows = response_rows(3)
    rows[1]["candidate_responses"] = value
    return rows


def _eval_raw(data: bytes) -> Build:
    def build(work: Path, url: str):
        (work / "resp.jsonl").write_bytes(data)
        return eval_argv(url, work / "resp.jsonl", work / "eval"), None
    return build


def _good_line() -> bytes:
    return (json.dumps(response_rows(1)[0]) + "\n").encode()


def _eval_config(text: bytes) -> Build:
    def build(work: Path, url: str):
        (work / "cfg.yaml").write_bytes(text)
        data = write_jsonl(work / "resp.jsonl", response_rows())
        return eval_argv(url, data, work / "eval", "--from-config", str(work / "cfg.yaml")), None
    return build


def _eval_ledger(prepare: Callable[[Path], Path]) -> Build:
    def build(work: Path, url: str):
        ledger = prepare(work)
        data = write_jsonl(work / "resp.jsonl", response_rows())
        return eval_argv(url, data, work / "eval", "--ledger_path", str(ledger)), None
    return build


def _random_bytes(work: Path) -> Path:
    path = work / "ledger.sqlite"
    path.write_bytes(os.urandom(8192))
    return path


def _folder(work: Path) -> Path:
    path = work / "ledger.sqlite"
    path.mkdir()
    return path


def _read_only_ledger(work: Path) -> Path:
    path = work / "ledger.sqlite"
    sqlite3.connect(path).close()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    return path


def _foreign_sqlite(work: Path) -> Path:
    path = work / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE completions (id INTEGER PRIMARY KEY, body TEXT)")
    return path


def _ledger_under_file(work: Path) -> Path:
    (work / "afile").write_text("x")
    return work / "afile" / "ledger.sqlite"


def _eval_out(prepare: Callable[[Path], Path]) -> Build:
    def build(work: Path, url: str):
        data = write_jsonl(work / "resp.jsonl", response_rows())
        return eval_argv(url, data, prepare(work)), None
    return build


def _read_only_out(work: Path) -> Path:
    out = work / "eval"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return out


def _out_under_file(work: Path) -> Path:
    (work / "afile").write_text("x")
    return work / "afile" / "eval"


def _out_is_file(work: Path) -> Path:
    (work / "eval").write_text("x")
    return work / "eval"


def _eval_out_is_input(work: Path, url: str):
    folder = work / "responses"
    write_jsonl(folder / "batch_infer.jsonl", response_rows())
    return eval_argv(url, folder, folder), None


def _eval_locked(work: Path, url: str):
    from llamaduo.outputs import OutputLock

    data = write_jsonl(work / "resp.jsonl", response_rows())
    lock = OutputLock(work / "eval", "eval_ds_id").__enter__()
    return eval_argv(url, data, work / "eval"), lambda: lock.__exit__(None, None, None)


def _gen_messages(value) -> Build:
    def build(work: Path, url: str):
        rows = sft_rows(4)
        rows[2]["messages"] = value
        write_jsonl(work / "ref" / "train_sft.jsonl", rows)
        write_jsonl(work / "ref" / "test_sft.jsonl", sft_rows(2, "test"))
        return gen_argv(url, work / "ref", work / "synth"), None
    return build


def _gen_non_utf8(work: Path, url: str):
    sft_folder(work / "ref")
    with (work / "ref" / "train_sft.jsonl").open("ab") as f:
        f.write(b'{"prompt": "caf\xe9", "messages": []}\n')
    return gen_argv(url, work / "ref", work / "synth"), None


def _gen_out_is_input(work: Path, url: str):
    ref = sft_folder(work / "ref")
    return gen_argv(url, ref, ref), None


def _merge(first_rows: Optional[list] = None, same_output: bool = False, raw_second: bytes | None = None) -> Build:
    def build(work: Path, url: str):
        first = sft_folder(work / "first")
        if first_rows is not None:
            write_jsonl(first / "train_sft.jsonl", first_rows)
        second = work / "synth.jsonl"
        if raw_second is not None:
            second.write_bytes(raw_second)
        else:
            write_jsonl(second, sft_rows(3, "synth"))
        return merge_argv(first, second, first if same_output else work / "merged"), None
    return build


def _rows_with_messages(value) -> list[dict]:
    rows = sft_rows(4)
    rows[1]["messages"] = value
    return rows


def _big_prompt(work: Path, url: str):
    rows = response_rows(3)
    rows[2]["candidate_responses"] = "word " * 220_000  # ~1.1 MB, ~275k tokens
    return eval_argv(url, write_jsonl(work / "resp.jsonl", rows), work / "eval"), None


CASES: list[Case] = [
    # evaluation: input rows
    Case("eval-non-utf8-jsonl", "evaluation", _eval_raw(_good_line() + b'{"instructions": "caf\xe9"}\n'),
         "not UTF-8"),
    Case("eval-candidate-list", "evaluation", _eval_with_rows(_candidate(["a", "b"])), "is a list"),
    Case("eval-candidate-dict", "evaluation", _eval_with_rows(_candidate({"a": 1})), "is a mapping"),
    Case("eval-candidate-int", "evaluation", _eval_with_rows(_candidate(42)), "is an integer"),
    Case("eval-candidate-null", "evaluation", _eval_with_rows(_candidate(None)), "is null"),
    Case("eval-all-candidates-null", "evaluation",
         _eval_with_rows([{**r, "candidate_responses": None} for r in response_rows()]), "is null"),
    Case("eval-instruction-int", "evaluation",
         _eval_with_rows([{**r, "instructions": 7} for r in response_rows()]), "is an integer"),
    Case("eval-invalid-json-line", "evaluation", _eval_raw(_good_line() + b"{not json\n"), "could not be read"),
    Case("eval-mixed-types", "evaluation", _eval_with_rows(
        [response_rows(1)[0], {**response_rows(2)[1], "candidate_responses": ["x"]}]), "candidate_responses"),
    Case("eval-missing-column", "evaluation", _eval_with_rows(
        [{k: v for k, v in r.items() if k != "target_responses"} for r in response_rows()]), "missing column"),
    Case("eval-1mb-prompt", "evaluation", _big_prompt, "max_input_tokens"),
    # config files
    Case("config-utf16", "evaluation", _eval_config("eval_repeat: 2\n".encode("utf-16")), "not UTF-8"),
    Case("config-duplicate-key", "evaluation", _eval_config(b"eval_repeat: 5\neval_repeat: 10\n"),
         "'eval_repeat' appears twice"),
    Case("config-non-utf8-latin1", "evaluation", _eval_config(b"topic: caf\xe9\n"), "not UTF-8"),
    # the ledger
    Case("ledger-random-bytes", "evaluation", _eval_ledger(_random_bytes), "not a usable SQLite ledger"),
    Case("ledger-is-folder", "evaluation", _eval_ledger(_folder), "is a folder"),
    Case("ledger-read-only", "evaluation", _eval_ledger(_read_only_ledger), "read-only"),
    Case("ledger-foreign-schema", "evaluation", _eval_ledger(_foreign_sqlite), "not a ledger's"),
    Case("ledger-under-a-file", "evaluation", _eval_ledger(_ledger_under_file), "is a file"),
    # the output folder
    Case("output-read-only", "evaluation", _eval_out(_read_only_out), "not writable"),
    Case("output-under-a-file", "evaluation", _eval_out(_out_under_file), "under the file"),
    Case("output-is-a-file", "evaluation", _eval_out(_out_is_file), "is a file"),
    Case("output-is-input", "evaluation", _eval_out_is_input, "would overwrite the input"),
    Case("output-locked", "evaluation", _eval_locked, "in use by another run (pid"),
    # data_gen
    Case("gen-messages-string", "data_gen", _gen_messages("hello"), "is a string"),
    Case("gen-message-content-int", "data_gen", _gen_messages([{"role": "user", "content": 5}]), "is an integer"),
    Case("gen-non-utf8-jsonl", "data_gen", _gen_non_utf8, "not UTF-8"),
    Case("gen-output-is-input", "data_gen", _gen_out_is_input, "would overwrite the input"),
    # dataset_merge
    Case("merge-result-is-first", "dataset_merge", _merge(same_output=True), "would overwrite the input"),
    Case("merge-messages-string", "dataset_merge", _merge(first_rows=_rows_with_messages("hi")), "is a string"),
    Case("merge-messages-null", "dataset_merge", _merge(first_rows=_rows_with_messages(None)), "is null"),
    Case("merge-non-utf8", "dataset_merge", _merge(raw_second=b'{"messages": "caf\xe9"}\n'), "not UTF-8"),
]


def stage_env(work: Path, repo: Path = REPO) -> dict[str, str]:
    """Quiet logs, a private temp folder (sidecars), no inherited key, offline Hub."""
    tmp = work / "tmpdir"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=os.pathsep.join([str(repo / "src"), str(repo)]), LLAMADUO_LOG_LEVEL="WARNING", TMPDIR=str(tmp), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LLAMADUO_CACHE=str(work / "cache"))
    return env


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_case(case: Case, work: Path, url: str, timeout_s: float = 300, repo: Path = REPO,
             on_built: Optional[Callable[[], None]] = None) -> Outcome:
    """Build the case in `work`, run its stage (from the checkout `repo`) as a subprocess,
    count the server's requests. `on_built` runs between the two (e.g. a snapshot of `work`)."""
    work.mkdir(parents=True, exist_ok=True)
    argv, cleanup = case.build(work, url)
    if on_built is not None:
        on_built()
    before = server_stats(url)["total"]
    start = time.monotonic()
    try:
        res = subprocess.run([sys.executable, *argv], cwd=repo, env=stage_env(work, repo), capture_output=True,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:  # it ran instead of refusing (an older checkout): not handled
        res = subprocess.CompletedProcess(argv, 124, _text(err.stdout), _text(err.stderr) + f"\n[timed out after {timeout_s} s]")
    finally:
        if cleanup is not None:
            cleanup()
    seconds = time.monotonic() - start
    output = res.stdout + res.stderr
    return Outcome(
        returncode=res.returncode,
        error_lines=[line for line in res.stderr.splitlines() if line.startswith("error:")],
        traceback="Traceback (most recent call last)" in output,
        requests=server_stats(url)["total"] - before,
        seconds=seconds,
        stderr=res.stderr,
    )
