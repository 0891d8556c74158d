"""Issue 23's bad-input classes: inputs that used to be destroyed, escape their folder or be
paid for first. Each case must exit 2 with one `error:` line, no traceback, no request to the
service LLM, and leave its whole work folder (inputs included) byte-identical: nothing written
outside the output folder, and no output folder either.

Shared by tests/test_bad_inputs.py (in-process for most cases, a few as subprocesses) and
scripts/reliability_campaign.py (all as subprocesses). The classes:
real paths (an output that is, holds or sits in an input, by any spelling or link), split names,
counts and non-finite numbers, types at load, chat rows, and finetune's own value checks.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from tests.servers.bad_inputs import (REPO, Build, Case, Outcome, eval_argv, gen_argv, merge_argv, response_rows,
                                      run_case, sft_folder, sft_rows, write_jsonl)
from tests.servers.process import server_stats

#: folders of a case's work folder that belong to the run's scratch (stage_env's TMPDIR and cache)
SCRATCH = ("tmpdir", "cache")


# ----------------------------------------------------------------------------- argv builders


def rel(path: Path) -> str:
    """`path` spelled relative to the repo (the stages' working folder), with a detour through
    `.` and `..`: `./../../tmp/x/a/../a`. The same folder as `path`, by another spelling."""
    relative = os.path.relpath(path, REPO)
    return f"./{relative}/../{path.name}/."


def infer_argv(test: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["batch_inference.py", "--ft_model_id", "smollm2-135m-instruct", "--test_ds_id", str(test),
            "--lm_response_ds_id", str(out), "--repeat", "1", "--max_new_tokens", "4", *extra]


def finetune_argv(data: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["finetune.py", "--model_name_or_path", "smollm2-135m-instruct", "--dataset_id", str(data),
            "--dataset_splits", "train_sft", "--output_dir", str(out), "--max_steps", "1", *extra]


def _responses(work: Path) -> Path:
    folder = work / "responses"
    write_jsonl(folder / "batch_infer.jsonl", response_rows())
    return folder


def _eval(out: Callable[[Path, Path], Path | str], *extra: str) -> Build:
    """evaluation of work/responses, written to out(work, responses)."""
    def build(work: Path, url: str):
        data = _responses(work)
        return eval_argv(url, data, out(work, data), *extra), None
    return build


def _eval_flags(*extra: str) -> Build:
    return _eval(lambda work, data: work / "deep" / "er" / "eval", *extra)


def _eval_yaml(text: str) -> Build:
    def build(work: Path, url: str):
        (work / "cfg.yaml").write_text(text, encoding="utf-8")
        return eval_argv(url, _responses(work), work / "deep" / "eval", "--from-config", str(work / "cfg.yaml")), None
    return build


def _merge(out: Callable[[Path, Path], Path | str] = lambda work, first: work / "deep" / "er" / "merged",
           first_rows: list | None = None, *extra: str) -> Build:
    def build(work: Path, url: str):
        first = sft_folder(work / "first")
        if first_rows is not None:
            write_jsonl(first / "train_sft.jsonl", first_rows)
        second = write_jsonl(work / "synth.jsonl", sft_rows(3, "synth"))
        return merge_argv(first, second, out(work, first), *extra), None
    return build


def _merge_yaml_first(text: str) -> Build:
    """A merge whose first_ds_id comes from the YAML file alone."""
    def build(work: Path, url: str):
        (work / "cfg.yaml").write_text(text, encoding="utf-8")
        second = write_jsonl(work / "synth.jsonl", sft_rows(3, "synth"))
        return ["dataset_merge.py", "--from-config", str(work / "cfg.yaml"), "--second_ds_id", str(second),
                "--result_ds_id", str(work / "deep" / "merged")], None
    return build


def _merge_flags(*extra: str) -> Build:
    return _merge(lambda work, first: work / "deep" / "er" / "merged", None, *extra)


def _gen(out: Callable[[Path, Path], Path | str] = lambda work, ref: work / "deep" / "synth",
         ref_rows: list | None = None, *extra: str) -> Build:
    def build(work: Path, url: str):
        ref = sft_folder(work / "ref")
        if ref_rows is not None:
            write_jsonl(ref / "train_sft.jsonl", ref_rows)
        return gen_argv(url, ref, out(work, ref), *extra), None
    return build


def _gen_flags(*extra: str) -> Build:
    return _gen(lambda work, ref: work / "deep" / "synth", None, *extra)


def _gen_yaml(text: str) -> Build:
    def build(work: Path, url: str):
        (work / "cfg.yaml").write_text(text, encoding="utf-8")
        return gen_argv(url, sft_folder(work / "ref"), work / "deep" / "synth", "--from-config",
                        str(work / "cfg.yaml")), None
    return build


def _infer(out: Callable[[Path, Path], Path | str] = lambda work, test: work / "deep" / "responses",
           test_rows: list | None = None, *extra: str) -> Build:
    def build(work: Path, url: str):
        test = sft_folder(work / "test")
        if test_rows is not None:
            write_jsonl(test / "test_sft.jsonl", test_rows)
        return infer_argv(test, out(work, test), *extra), None
    return build


def _infer_flags(*extra: str) -> Build:
    return _infer(lambda work, test: work / "deep" / "responses", None, *extra)


def _finetune(out: Callable[[Path, Path], Path | str] = lambda work, data: work / "deep" / "model",
              train_rows: list | None = None, *extra: str) -> Build:
    def build(work: Path, url: str):
        data = sft_folder(work / "data")
        if train_rows is not None:
            write_jsonl(data / "train_sft.jsonl", train_rows)
        return finetune_argv(data, out(work, data), *extra), None
    return build


def _finetune_flags(*extra: str) -> Build:
    return _finetune(lambda work, data: work / "deep" / "model", None, *extra)


def _link(work: Path, target: Path, name: str = "link") -> Path:
    (work / name).symlink_to(target, target_is_directory=True)
    return work / name


def _dangling(work: Path, name: str = "dangling") -> Path:
    (work / name).symlink_to(work / "nowhere")
    return work / name


def _rows_with(index: int, messages) -> list[dict]:
    rows = sft_rows(4)
    rows[index]["messages"] = messages
    return rows


def _many_responses(n: int, *extra: str) -> Build:
    def build(work: Path, url: str):
        row = response_rows(1)[0]
        write_jsonl(work / "responses" / "batch_infer.jsonl", [{**row, "instructions": f"q{i}"} for i in range(n)])
        return eval_argv(url, work / "responses", work / "deep" / "eval", *extra), None
    return build


_OUTPUT_IS_INPUT = "would overwrite the input"
_SPLIT = "plain split name"

INPUT_CASES: list[Case] = [
    # --- real paths: the output is, holds, or sits in an input (any spelling, any link) --------
    Case("eval-out-is-input-relative-spelling", "evaluation", _eval(lambda w, d: rel(d)), _OUTPUT_IS_INPUT),
    Case("eval-out-is-symlink-to-input", "evaluation", _eval(lambda w, d: _link(w, d)), _OUTPUT_IS_INPUT),
    Case("eval-out-inside-input", "evaluation", _eval(lambda w, d: d / "eval"), _OUTPUT_IS_INPUT),
    Case("eval-out-dangling-symlink", "evaluation", _eval(lambda w, d: _dangling(w)), "dangling symlink"),
    Case("merge-result-is-first-relative", "dataset_merge", _merge(lambda w, f: rel(f)), _OUTPUT_IS_INPUT),
    Case("merge-result-inside-first", "dataset_merge", _merge(lambda w, f: f / "merged"), _OUTPUT_IS_INPUT),
    Case("merge-result-under-dangling-link", "dataset_merge", _merge(lambda w, f: _dangling(w) / "merged"),
         "dangling symlink"),
    Case("gen-out-inside-reference", "data_gen", _gen(lambda w, r: r / "synth"), _OUTPUT_IS_INPUT),
    Case("gen-out-symlink-to-reference", "data_gen", _gen(lambda w, r: _link(w, r)), _OUTPUT_IS_INPUT),
    Case("infer-out-is-test-relative", "batch_inference", _infer(lambda w, t: rel(t)), _OUTPUT_IS_INPUT),
    Case("infer-out-is-symlink-to-test", "batch_inference", _infer(lambda w, t: _link(w, t)), _OUTPUT_IS_INPUT),
    Case("finetune-out-is-dataset-relative", "finetune", _finetune(lambda w, d: rel(d)), _OUTPUT_IS_INPUT),
    Case("finetune-out-inside-dataset", "finetune", _finetune(lambda w, d: d / "model"), _OUTPUT_IS_INPUT),
    # --- split names: plain names only ------------------------------------------------------------
    Case("eval-split-escapes", "evaluation", _eval_flags("--eval_ds_split", "../../../escaped"), _SPLIT),
    Case("eval-input-split-absolute", "evaluation", _eval_flags("--lm_response_ds_split", "/etc/passwd"), _SPLIT),
    Case("eval-split-yaml-list", "evaluation", _eval_yaml("lm_response_ds_split: [batch_infer]\n"),
         "expects a string, got a list"),
    Case("merge-split-slash", "dataset_merge", _merge_flags("--result_ds_train_split", "a/b"), _SPLIT),
    Case("merge-split-empty", "dataset_merge", _merge_flags("--result_ds_test_split", ""), "must not be empty"),
    Case("merge-same-train-test-split", "dataset_merge",
         _merge_flags("--result_ds_train_split", "all", "--result_ds_test_split", "all"), "are both 'all'"),
    Case("gen-split-nul", "data_gen", _gen_yaml('synth_ds_split: "train\\0x"\n'), "NUL byte"),
    Case("gen-split-dotdot", "data_gen", _gen_flags("--synth_ds_split", ".."), _SPLIT),
    Case("infer-split-backslash", "batch_inference", _infer_flags("--lm_response_ds_split", "a\\..\\b"), _SPLIT),
    Case("finetune-splits-escape", "finetune", _finetune_flags("--dataset_splits", "../train_sft"), _SPLIT),
    # --- counts: an upper bound before work; NaN and infinity refused ------------------------------
    Case("eval-repeat-1e9", "evaluation", _eval_flags("--eval_repeat", "1000000000"), "must be within 1-1,000"),
    Case("eval-rows-x-repeats", "evaluation", _many_responses(10_001, "--eval_repeat", "1000"),
         "over the limit of 10,000,000"),
    Case("gen-num-samples-1e12", "data_gen", _gen_flags("--num_samples", "1000000000000"), "must be within"),
    Case("infer-repeat-1e9", "batch_inference", _infer_flags("--repeat", "1000000000"), "must be within"),
    Case("gen-target-pairs-1e11", "data_gen", _gen_flags("--target_num_pairs", "99999999999"), "must be within"),
    Case("infer-max-new-tokens-1e9", "batch_inference", _infer_flags("--max_new_tokens", "1000000000"),
         "must be within"),
    Case("eval-timeout-nan", "evaluation", _eval_flags("--execution_timeout_s", "nan"), "finite number"),
    Case("eval-max-cost-nan", "evaluation", _eval_yaml("max_cost_usd: .nan\n"), "finite number"),
    Case("eval-threshold-minus-inf", "evaluation", _eval_yaml("avg_similarity_threshold: -.inf\n"),
         "finite number"),
    Case("gen-decontam-nan", "data_gen", _gen_flags("--decontam_threshold", "NaN"), "finite number"),
    Case("infer-temperature-inf", "batch_inference", _infer_flags("--temperature", "inf"), "finite number"),
    Case("finetune-lr-nan", "finetune", _finetune_flags("--learning_rate", "nan"), "finite number"),
    Case("eval-max-cost-negative", "evaluation", _eval_flags("--max_cost_usd", "-1"), "must be >= 0"),
    # --- types at load ---------------------------------------------------------------------------
    Case("gen-topic-list", "data_gen", _gen_yaml("topic: [a, b]\n"), "expects a string, got a list"),
    Case("eval-string-nul", "evaluation", _eval_yaml('gcp_project_id: "proj\\0ect"\n'), "NUL byte"),
    Case("gen-seed-beyond-int64", "data_gen", _gen_flags("--seed", "99999999999999999999"), "too large"),
    Case("eval-int-key-infinite", "evaluation", _eval_yaml("max_retries: 1.0e+400\n"), "expects an integer"),
    Case("merge-id-mapping", "dataset_merge", _merge_yaml_first("first_ds_id: {data: 1}\n"),
         "expects a string, got a mapping"),
    # --- chat rows: empty, without content, unknown role ------------------------------------------
    Case("merge-messages-empty", "dataset_merge", _merge(first_rows=_rows_with(2, [])), "is an empty list"),
    Case("merge-role-tool", "dataset_merge",
         _merge(first_rows=_rows_with(1, [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}])),
         "unknown role 'tool'"),
    Case("gen-message-without-content", "data_gen",
         _gen(ref_rows=_rows_with(3, [{"role": "user"}, {"role": "assistant", "content": "a"}])),
         "without 'content'"),
    Case("infer-messages-empty", "batch_inference", _infer(test_rows=[*sft_rows(1, "test"), {**sft_rows(1)[0],
                                                                                          "messages": []}]),
         "is an empty list"),
    Case("finetune-role-unknown", "finetune",
         _finetune(train_rows=_rows_with(0, [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}])),
         "unknown role 'robot'"),
    # --- finetune's own value checks (also what the loop's check now runs) ------------------------
    Case("finetune-lora-r-0", "finetune", _finetune_flags("--use_peft", "--lora_r", "0"), "lora_r"),
    Case("finetune-batch-size-0", "finetune", _finetune_flags("--per_device_train_batch_size", "0"),
         "per_device_train_batch_size must be >= 1"),
]

#: run as real subprocesses in tests/test_bad_inputs.py too: the "one line, no traceback" property
#: across the process boundary, one per stage
SUBPROCESS_CASES = ("eval-out-is-input-relative-spelling", "merge-same-train-test-split", "gen-split-nul",
                    "infer-repeat-1e9", "finetune-lr-nan")


# ----------------------------------------------------------------------------- what a run left


def snapshot(work: Path) -> dict[str, str]:
    """Every entry under `work` but the scratch folders: file -> sha256, link -> its target,
    folder -> 'dir'. Equal before and after = inputs byte-identical and nothing written."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(work):
        rel_root = Path(root).relative_to(work)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in SCRATCH]
        for name in dirs + files:
            path = Path(root) / name
            key = str(rel_root / name)
            if path.is_symlink():
                found[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs: '+new', '-gone', '~changed' entries."""
    return ([f"+{k}" for k in after.keys() - before.keys()] + [f"-{k}" for k in before.keys() - after.keys()]
            + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]])


def run_in_process(case: Case, work: Path, url: str) -> tuple[Outcome, list[str]]:
    """Build the case, run its stage's `main(argv)` under `errors.run_main` in this process (from
    the repo folder, as the subprocess runs), and report the outcome and what changed in `work`.
    The caller sets the environment (stage_env)."""
    from llamaduo.errors import run_main

    work.mkdir(parents=True, exist_ok=True)
    argv, cleanup = case.build(work, url)
    before_tree = snapshot(work)
    before = server_stats(url)["total"]
    module = importlib.import_module(f"llamaduo.pipeline.{case.stage}")
    err, code, crashed = io.StringIO(), None, False
    start, cwd = time.monotonic(), os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            run_main(lambda: module.main(argv[1:]))
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - what a user would see as a traceback
        crashed = True
        err.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
        if cleanup is not None:
            cleanup()
    stderr = err.getvalue()
    outcome = Outcome(returncode=code if isinstance(code, int) else -1,
                      error_lines=[line for line in stderr.splitlines() if line.startswith("error:")],
                      traceback=crashed or "Traceback (most recent call last)" in stderr,
                      requests=server_stats(url)["total"] - before, seconds=time.monotonic() - start, stderr=stderr)
    return outcome, changes(before_tree, snapshot(work))


def run_subprocess(case: Case, work: Path, url: str, repo: Path = REPO,
                   timeout_s: float = 150) -> tuple[Outcome, list[str]]:
    """`bad_inputs.run_case` (a real subprocess of the stage script in `repo`) plus what changed in
    `work`. A refusal takes seconds; a case still running after `timeout_s` is doing the work."""
    before: dict[str, str] = {}
    outcome = run_case(case, work, url, timeout_s=timeout_s, repo=repo, on_built=lambda: before.update(snapshot(work)))
    return outcome, changes(before, snapshot(work))
