"""Step 4 of the loop: synthetic instruction/response pairs from seed rows, generated round
after round until `target_num_pairs` survive the pair checks and llamaduo.quality's filters
(duplicates of train data and earlier rounds, near copies of test prompts).

Everything that can fail is checked before the first paid call (exit 2). Every dropped pair is
kept with its reason in the `rejected` split and counted in `summary.json`. The flow, stop
rules and exit codes: docs/data_gen.md.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from datasets import Dataset, Features, List, Value

from llamaduo.defaults import default_file
from llamaduo.config import config_to_dict, parse_config
from llamaduo.formats import check_format_args, column_map_field, data_format_field, drop_invalid_rows_field, to_messages
from llamaduo.legacy_keys import SERVICE_LLM_LEGACY
from llamaduo.data import (
    SYNTH_COLUMNS,
    assistant_reply,
    available_splits,
    canonical_synth_columns,
    first_user_message,
    load_split,
    normalize_text,
    prompt_id_for,
)
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, RunFailed, UsageError
from llamaduo.hub import check_push_possible, dataset_output_plan, local_output_dir, save_output
from llamaduo.logging_setup import setup_logging
from llamaduo.delimiters import render_data
from llamaduo.outputs import OutputPlan, guarded_output, publish_files
from llamaduo.peak_rss import peak_rss_mb
from llamaduo.prompts import check_placeholders, load_template
from llamaduo.judging import task_metrics
from llamaduo.quality import QualityConfig, QualityFilter
from llamaduo.validation import check_sft_columns
from llamaduo.service_llm import (
    INVALID,
    SKIPPED_BUDGET,
    InvalidReply,
    Job,
    ServiceLLM,
    ServiceLLMArgs,
    extract_json,
)
from llamaduo.service_llm.structured import snippet

logger = logging.getLogger("llamaduo.data_gen")

STAGE = "data_gen"
PROMPT_TABLE = "synth_data_gen"
PLACEHOLDERS = ("instruction", "response", "topic")
REJECTED_SPLIT = "rejected"
DEFAULT_TEST_SPLIT = "test_sft"
_STR = Value("string")
SYNTH_FEATURES = Features({
    "generator": _STR, "prompt_id": _STR, "prompt": _STR, "seed_prompt": _STR,
    "messages": List({"role": _STR, "content": _STR}), "category": _STR,
})
assert tuple(SYNTH_FEATURES) == SYNTH_COLUMNS  # one schema: the data contract in llamaduo.data
REJECTED_FEATURES = Features({**SYNTH_FEATURES, "reject_reason": _STR, "reject_detail": _STR,
                              "round": Value("int64")})
# Typical reply length of one synth call (a few pairs): used for --dry-run cost estimates.
EXPECTED_OUTPUT_TOKENS = 600

# pair-check reasons (the quality-filter reasons live in llamaduo.quality)
R_EMPTY = "empty_field"
R_INSTR_SHORT = "instruction_too_short"
R_INSTR_LONG = "instruction_too_long"
R_RESP_SHORT = "response_too_short"
R_RESP_LONG = "response_too_long"
R_SAME_AS_SEED = "same_as_seed"
R_NOT_A_LABEL = "label_not_in_set"
# reply-level reasons (a whole call produced nothing usable)
R_REPLY_INVALID = "reply_invalid"
R_CALL_FAILED = "call_failed"

STOP_TARGET = "target_reached"
STOP_SINGLE = "single_round_done"
STOP_ROUNDS = "round_limit"
STOP_BUDGET = "budget"


@dataclass
class DataGenArgs(ServiceLLMArgs):
    """Every key of `data_gen.py` (the service-LLM keys come from ServiceLLMArgs)."""

    prompt_tmpl_path: str = field(
        default=default_file("prompts.toml"),
        metadata={"help": "TOML file with a [synth_data_gen] prompt; placeholders $instruction $response $topic."},
    )
    # --- seeds -------------------------------------------------------------------------------
    reference_ds_id: str = field(
        default="", metadata={"help": "Seed dataset (Hub id, folder or file) with a `messages` column."}
    )
    reference_ds_split: str = field(default="train_sft", metadata={"help": "Split the seeds come from."})
    num_samples: int = field(default=10, metadata={"min": 1, "max": 1_000_000, "help": "Seed rows per round (one service-LLM call each)."})
    seed: int = field(default=2024, metadata={"help": "Random seed of the seed-row sampling (reproducible)."})
    topic: str = field(default="Coding", metadata={"help": "Task category: fills $topic and the `category` column."})
    # --- generation --------------------------------------------------------------------------
    gen_workers: int = field(default=4, metadata={"min": 1, "max": 1024, "help": "Concurrent service-LLM requests."})
    target_num_pairs: Optional[int] = field(
        default=None,
        metadata={"min": 1, "max": 100_000_000, "help": "Keep generating rounds of num_samples seeds until this many clean pairs "
                  "survive (or max_rounds / max_cost_usd). Default: one round."},
    )
    max_rounds: int = field(default=10, metadata={"min": 1, "max": 100_000, "help": "Round limit when target_num_pairs is set."})
    require_target: bool = field(
        default=False,
        metadata={"help": "Exit 1 (not 0 with a warning) when target_num_pairs was not reached."},
    )
    allow_empty_result: bool = field(
        default=False,
        metadata={"help": "Exit 0 with a warning even when no pair survived (no output split is "
                  "written then; summary.json says kept: 0), instead of 1. For demos with a weak "
                  "local model."},
    )
    min_instruction_chars: int = field(default=10, metadata={"help": "Shorter instructions are dropped."})
    max_instruction_chars: int = field(default=4000, metadata={"help": "Longer instructions are dropped."})
    min_response_chars: int = field(default=10, metadata={"help": "Shorter responses are dropped."})
    max_response_chars: int = field(default=8000, metadata={"help": "Longer responses are dropped."})
    labels: list[str] = field(
        default_factory=list,
        metadata={"help": "For a classification task: the closed label set. A pair whose response is not "
                  "exactly one of these labels (compared after strip, casefold and dropping trailing . ! ?) "
                  "is dropped as label_not_in_set. Empty: no label check. A wrong label that is in the set "
                  "cannot be caught here."},
    )
    # --- quality filters -----------------------------------------------------------------------
    test_ds_id: Optional[str] = field(
        default=None,
        metadata={"help": "Dataset whose prompts must not leak into the synthetic data. "
                  "Default: reference_ds_id."},
    )
    test_ds_split: Optional[str] = field(
        default=None,
        metadata={"help": "Split of test_ds_id to decontaminate against. Default: `test_sft` when it "
                  "exists (a warning when it does not); a split given explicitly must exist."},
    )
    decontaminate: bool = field(
        default=True, metadata={"help": "Drop pairs whose instruction near-duplicates a test prompt."}
    )
    decontam_threshold: float = field(
        default=0.6, metadata={"help": "Word n-gram Jaccard with a test prompt at/above which a pair is dropped."}
    )
    near_dup_threshold: float = field(
        default=0.8, metadata={"help": "Word n-gram Jaccard at/above which two instructions are duplicates."}
    )
    ngram_size: int = field(default=3, metadata={"min": 1, "max": 64, "help": "Words per shingle for the Jaccard similarity."})
    minhash_num_perm: int = field(default=64, metadata={"max": 4096, "help": "MinHash permutations (LSH candidate search)."})
    existing_ds_id: Optional[str] = field(
        default=None,
        metadata={"help": "Another dataset whose instructions count as existing train data for the "
                  "duplicate checks, e.g. the previous loop round's merged data."},
    )
    existing_ds_split: str = field(default="train_sft", metadata={"help": "Split of existing_ds_id."})
    dedup_against_existing: bool = field(
        default=True,
        metadata={"help": "Also drop near duplicates of the rows already in the local output split "
                  "(when appending)."},
    )
    # --- output ------------------------------------------------------------------------------
    push_synth_ds_to_hf_hub: bool = field(default=False, metadata={"help": "Push the result to the Hub."})
    synth_ds_id: str = field(
        default="outputs/synth_data",
        metadata={"help": "Output: Hub dataset id when pushing, else the local folder."},
    )
    synth_ds_split: str = field(default="train_sft", metadata={"help": "Split name of the kept pairs."})
    synth_ds_append: bool = field(
        default=False, metadata={"help": "Append to the existing splits instead of overwriting them."}
    )
    output_root: str = field(
        default="outputs", metadata={"help": "Local copies of pushed outputs go to <output_root>/<synth_ds_id>."}
    )
    # --- input format (reference and test data) ---------------------------------------------
    data_format: str = data_format_field()
    column_map: Optional[dict] = column_map_field()
    drop_invalid_rows: bool = drop_invalid_rows_field()
    overwrite_input: bool = field(
        default=False, metadata={"help": "Allow synth_ds_id to be an input (reference_ds_id or test_ds_id), "
                                         "which it then replaces; otherwise that is refused with exit 2."}
    )


# ------------------------------------------------------------------------------ validation


def validate_values(args: DataGenArgs) -> list[str]:
    """Range checks the config parser cannot do (types are checked there)."""
    problems = []
    try:
        check_format_args(args.data_format, args.column_map)
    except UsageError as err:
        problems.append(str(err))
    if args.num_samples < 1:
        problems.append(f"num_samples must be >= 1, got {args.num_samples}")
    if not args.reference_ds_id:
        problems.append("reference_ds_id is required (the seed dataset)")
    if args.target_num_pairs is not None and args.target_num_pairs < 1:
        problems.append(f"target_num_pairs must be >= 1 when set, got {args.target_num_pairs}")
    if args.max_rounds < 1:
        problems.append(f"max_rounds must be >= 1, got {args.max_rounds}")
    for what in ("instruction", "response"):
        lo, hi = getattr(args, f"min_{what}_chars"), getattr(args, f"max_{what}_chars")
        if lo < 1 or hi < lo:
            problems.append(f"need 1 <= min_{what}_chars <= max_{what}_chars, got {lo} and {hi}")
    if not args.synth_ds_id:
        problems.append("synth_ds_id is required")
    if any(not str(x).strip() for x in args.labels):
        problems.append("labels must not contain an empty label")
    if not args.synth_ds_split or args.synth_ds_split == REJECTED_SPLIT:
        problems.append(f"synth_ds_split must be set and must not be '{REJECTED_SPLIT}'")
    problems += quality_config(args).validate()
    return problems


def quality_config(args: DataGenArgs) -> QualityConfig:
    return QualityConfig(
        near_dup_threshold=args.near_dup_threshold,
        decontam_threshold=args.decontam_threshold,
        ngram_size=args.ngram_size,
        num_perm=args.minhash_num_perm,
    )


# ------------------------------------------------------------------------------ data


def row_instruction(row: dict[str, Any]) -> str:
    """The instruction of a reference/synthetic row: `prompt`, else the first user turn."""
    return str(row.get("prompt") or first_user_message(row.get("messages")) or "")


@dataclass
class Seed:
    index: int
    instruction: str
    response: str


def load_seeds(args: DataGenArgs) -> tuple[list[Seed], list[tuple[str, str]]]:
    """Seed rows (instruction, response) and the train texts for the near-dup check."""
    what = f"reference dataset '{args.reference_ds_id}' split '{args.reference_ds_split}'"
    ds = to_messages(load_split(args.reference_ds_id, args.reference_ds_split, what="reference dataset"),
                     what, args.data_format, args.column_map, require_answer=True)
    ds = check_sft_columns(ds, what, drop_invalid=args.drop_invalid_rows)
    seeds, train = [], []
    for i, row in enumerate(ds):
        instruction = row_instruction(row)
        response = assistant_reply(row["messages"])
        train.append((f"train:{i}", instruction))
        if instruction.strip() and response.strip():
            seeds.append(Seed(i, instruction, response))
    if not seeds:
        raise UsageError(
            f"reference dataset '{args.reference_ds_id}' split '{args.reference_ds_split}' has no row "
            "with both a user and an assistant message in `messages`"
        )
    return seeds, train


def resolve_test_split(args: DataGenArgs) -> tuple[str, str] | None:
    """(dataset, split) to decontaminate against, or None (with a warning) when there is none."""
    if not args.decontaminate:
        logger.warning("decontaminate is off: synthetic pairs are NOT checked against any test set")
        return None
    ref = args.test_ds_id or args.reference_ds_id
    if args.test_ds_split:
        return ref, args.test_ds_split  # explicit: must exist (load_split raises UsageError)
    splits = available_splits(ref)
    for name in (DEFAULT_TEST_SPLIT, "test"):  # a plain HF dataset's test split (load_split's fallback)
        if name in splits:
            if name != DEFAULT_TEST_SPLIT:
                logger.info("'%s' has no '%s' split: decontaminating against its '%s' split", ref,
                            DEFAULT_TEST_SPLIT, name)
            return ref, name
    logger.warning(
        "no test split to decontaminate against: '%s' has no '%s' split (splits: %s); set "
        "test_ds_id/test_ds_split, or decontaminate: false to silence this",
        ref, DEFAULT_TEST_SPLIT, ", ".join(splits) or "a single unnamed split",
    )
    return None


def load_test_prompts(ref_split: tuple[str, str] | None, data_format: str = "auto",
                      column_map: Optional[dict] = None, drop_invalid_rows: bool = False) -> list[tuple[str, str]]:
    if ref_split is None:
        return []
    ref, split = ref_split
    what = f"test dataset '{ref}' split '{split}'"
    ds = to_messages(load_split(ref, split, what="test dataset"), what, data_format, column_map)
    ds = check_sft_columns(ds, what, drop_invalid=drop_invalid_rows)
    return [(f"test:{row.get('prompt_id') or i}", row_instruction(row)) for i, row in enumerate(ds)]


def load_existing(args: DataGenArgs, out_dir: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """Instructions that already exist besides the reference split: `existing_ds_id` (must
    load), and the local output split when appending to it (may not exist yet); plus the
    normalised seed prompts those rows were generated from (their `seed_prompt` column)."""
    rows: list[tuple[str, str]] = []
    used_seeds: set[str] = set()
    if args.existing_ds_id:
        ds = canonical_synth_columns(to_messages(
            load_split(args.existing_ds_id, args.existing_ds_split, what="existing dataset (existing_ds_id)"),
            f"existing dataset '{args.existing_ds_id}'", column_map=args.column_map))
        rows += [(f"existing:{row.get('prompt_id') or i}", row_instruction(row)) for i, row in enumerate(ds)]
        used_seeds |= seed_prompts_of(ds)
    if args.synth_ds_append and args.dedup_against_existing and out_dir.exists():
        try:
            ds = canonical_synth_columns(load_split(str(out_dir), args.synth_ds_split,
                                                    what="existing synthetic dataset"))
        except UsageError:
            return rows, used_seeds  # nothing there yet
        rows += [(f"output:{row.get('prompt_id') or i}", row_instruction(row)) for i, row in enumerate(ds)]
        used_seeds |= seed_prompts_of(ds)
    return rows, used_seeds


def seed_prompts_of(ds: Dataset) -> set[str]:
    """Normalised `seed_prompt` values of earlier synthetic rows. WHY: a later loop round
    that asks again with the same seeds gets near-copies of pairs it already has (which the
    merge then drops), so the sampler prefers seeds these rows were not made from."""
    if "seed_prompt" not in ds.column_names:
        return set()
    return {normalize_text(str(s)) for s in ds["seed_prompt"] if s}


class SeedSampler:
    """Reproducible sampling without replacement; reshuffles (and says so) when used up.

    Each seed's `uses` count becomes the job's `sample_index`, so a repeated seed is a new
    call (not a ledger hit), while a rerun of the same config replays the same jobs from
    the ledger for free. Seeds in `used_before` (positions earlier data was generated from,
    e.g. an earlier loop round) come only after every other seed has been taken, and start
    at sample_index 1, so that even then the request differs from the earlier one.
    """

    def __init__(self, n: int, seed: int, used_before: frozenset[int] = frozenset()) -> None:
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.uses: Counter[int] = Counter()
        self.passes = 0
        self.used_before = used_before

    def _refill(self) -> None:
        """The next pass: seeds not taken in this run and not used before, else those not
        taken in this run, else (a repeat, with a warning) every seed."""
        order = [int(p) for p in self.rng.permutation(self.n)]
        untaken = [p for p in order if p not in self.uses]
        fresh = [p for p in untaken if p not in self.used_before]
        if fresh:
            self.order = fresh
        elif untaken:
            logger.warning("every seed row that earlier data was not generated from has been used (%d "
                           "in this run); now sampling the %d it was generated from",
                           self.n - len(untaken), len(untaken))
            self.order = untaken
        else:
            logger.warning("all %d seed rows have been used; sampling them again (pass %d) with new "
                           "sample indices", self.n, self.passes + 1)
            self.order = order
        self.passes += 1

    def take(self, k: int) -> list[tuple[int, int]]:
        """k (seed position, sample_index) pairs."""
        out = []
        for _ in range(k):
            if not self.order:
                self._refill()
            pos = self.order.pop(0)
            out.append((pos, self.uses[pos] + (pos in self.used_before)))
            self.uses[pos] += 1
        return out

    @property
    def repeated(self) -> bool:
        return any(v > 1 for v in self.uses.values())


# ------------------------------------------------------------------------------ replies & checks


def parse_synth_reply(text: str) -> list[tuple[str, str]]:
    """Lenient form of the `{"contents": [{"instruction", "response"}, ...]}` schema.

    A reply with SOME broken items is accepted: its good pairs are kept and the broken items
    are counted as `empty_field` rejects, instead of re-asking (and paying again) for the
    whole reply. A reply with no usable item at all is invalid and is re-asked.
    """
    obj = extract_json(text)
    contents = obj.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidReply("missing or empty 'contents' (a list of {instruction, response} objects)")
    items = []
    for item in contents:
        if isinstance(item, dict):
            instruction, response = item.get("instruction"), item.get("response")
            items.append((instruction.strip() if isinstance(instruction, str) else "",
                          response.strip() if isinstance(response, str) else ""))
        else:
            items.append(("", ""))
    if not any(i and r for i, r in items):
        raise InvalidReply("no item of 'contents' has both a non-empty 'instruction' and 'response'")
    return items


def check_pair(instruction: str, response: str, seed: Seed, args: DataGenArgs) -> tuple[str, str] | None:
    """(reason, detail) when a pair fails the basic checks, else None."""
    if not instruction or not response:
        return R_EMPTY, "instruction or response is empty"
    n_i, n_r = len(instruction), len(response)
    if n_i < args.min_instruction_chars:
        return R_INSTR_SHORT, f"{n_i} < {args.min_instruction_chars} chars"
    if n_i > args.max_instruction_chars:
        return R_INSTR_LONG, f"{n_i} > {args.max_instruction_chars} chars"
    if n_r < args.min_response_chars:
        return R_RESP_SHORT, f"{n_r} < {args.min_response_chars} chars"
    if n_r > args.max_response_chars:
        return R_RESP_LONG, f"{n_r} > {args.max_response_chars} chars"
    if normalize_text(instruction) == normalize_text(seed.instruction):
        return R_SAME_AS_SEED, "the instruction repeats its seed's instruction"
    if args.labels and normalize_label(response) not in {normalize_label(x) for x in args.labels}:
        return R_NOT_A_LABEL, f"response {snippet(response, 40)!r} is not one of the labels {list(args.labels)}"
    return None


def normalize_label(text: str) -> str:
    """A label as compared by the `labels` check: the same normalisation as evaluation's
    exact_match (strip, casefold, collapse spaces, drop trailing . ! ?)."""
    return task_metrics.normalize(text)


def synth_row(instruction: str, response: str, seed: Seed, generator: str, topic: str) -> dict[str, Any]:
    return {
        "generator": generator,
        "prompt_id": prompt_id_for(instruction),
        "prompt": instruction,
        "seed_prompt": seed.instruction,
        "messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
        "category": topic,
    }


def rejected_row(base: dict[str, Any], reason: str, detail: str, round_no: int) -> dict[str, Any]:
    return {**base, "reject_reason": reason, "reject_detail": detail, "round": round_no}


# ------------------------------------------------------------------------------ the run


@dataclass
class Prepared:
    """Everything validated and loaded before the first call."""

    template: str
    seeds: list[Seed]
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    test_ref: tuple[str, str] | None
    existing: list[tuple[str, str]]
    out_dir: Path
    llm: ServiceLLM
    used_seeds: frozenset[int] = frozenset()  # seed positions earlier data was generated from


def check_values(args: DataGenArgs) -> None:
    """`validate_values` as one UsageError (exit 2) naming every problem."""
    problems = validate_values(args)
    if problems:
        raise UsageError("; ".join(problems))


def prepare(args: DataGenArgs) -> Prepared:
    """All checks that can fail, in the cheapest order, before any model load or call."""
    check_values(args)
    template = load_template(args.prompt_tmpl_path, PROMPT_TABLE)
    check_placeholders(template, PLACEHOLDERS, where=f"{args.prompt_tmpl_path} [{PROMPT_TABLE}]")
    check_push_possible(args.push_synth_ds_to_hf_hub, f"synthetic dataset '{args.synth_ds_id}'")
    out_dir = local_output_dir(args.synth_ds_id, args.push_synth_ds_to_hf_hub, args.output_root)
    llm = ServiceLLM.from_args(args, workers=args.gen_workers,
                               default_ledger_path=out_dir / "service_llm_ledger.sqlite")
    seeds, train = load_seeds(args)
    test_ref = resolve_test_split(args)
    test = load_test_prompts(test_ref, args.data_format, args.column_map, args.drop_invalid_rows)
    existing, used_prompts = load_existing(args, out_dir)
    # The loop's existing_ds_id is the data trained on so far, which holds the reference rows
    # too: count (and filter against) each instruction once, not as train and again as existing.
    known = {normalize_text(text) for _, text in train}
    existing = [(key, text) for key, text in existing if normalize_text(text) not in known]
    used = frozenset(i for i, s in enumerate(seeds) if normalize_text(s.instruction) in used_prompts)
    return Prepared(template, seeds, train, test, test_ref, existing, out_dir, llm, used)


def make_jobs(picks: Sequence[tuple[int, int]], prep: Prepared, topic: str) -> list[Job]:
    return [
        # render_data: a seed that contains `</example_instruction>` (any variant) cannot end its block
        Job(render_data(prep.template, instruction=prep.seeds[pos].instruction,
                        response=prep.seeds[pos].response, topic=topic), sample_index=sample_index,
            label=f"seed row {prep.seeds[pos].index}")
        for pos, sample_index in picks
    ]


def run_round(
    round_no: int,
    picks: Sequence[tuple[int, int]],
    prep: Prepared,
    qf: QualityFilter,
    args: DataGenArgs,
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """One round: call, check, filter. Returns kept rows, rejected rows and the round's counts."""
    jobs = make_jobs(picks, prep, args.topic)
    results = prep.llm.run(jobs, parse=parse_synth_reply, desc=f"round {round_no}: generating")
    generator = prep.llm.model
    reasons: Counter[str] = Counter()
    rejected: list[dict] = []
    candidates: list[tuple[dict, Seed]] = []
    replies: Counter[str] = Counter()
    received = 0
    for (pos, _), res in zip(picks, results):
        seed = prep.seeds[pos]
        replies[res.status] += 1
        if not res.ok:
            if res.status == SKIPPED_BUDGET:
                continue  # never called: not a reject, just not done
            reason = R_REPLY_INVALID if res.status == INVALID else R_CALL_FAILED
            reasons[reason] += 1
            base = synth_row("", "", seed, generator, args.topic) | {"prompt_id": "", "messages": []}
            snippet = " ".join((res.text or "").split())[:300]
            rejected.append(rejected_row(base, reason, f"{res.error} | reply: {snippet}", round_no))
            continue
        received += len(res.value)
        for instruction, response in res.value:
            row = synth_row(instruction, response, seed, generator, args.topic)
            failed = check_pair(instruction, response, seed, args)
            if failed:
                reasons[failed[0]] += 1
                rejected.append(rejected_row(row, failed[0], failed[1], round_no))
            else:
                candidates.append((row, seed))
    verdicts = qf.check([row["prompt"] for row, _ in candidates])
    kept = []
    for (row, _), verdict in zip(candidates, verdicts):
        if verdict.keep:
            kept.append(row)
        else:
            reasons[verdict.reason] += 1
            rejected.append(rejected_row(row, verdict.reason, verdict.describe(), round_no))
    stats = {
        "round": round_no,
        "seeds": len(picks),
        "replies": dict(replies),
        "pairs_received": received,
        "kept": len(kept),
        "dropped": dict(reasons),
        "service_llm": prep.llm.last_run.as_dict(),
    }
    return kept, rejected, stats


def output_plan(args: DataGenArgs) -> OutputPlan:
    """The folder this run writes (locked for the run) and the inputs it must not replace."""
    if args.dry_run:
        return OutputPlan(None)
    return dataset_output_plan(args.synth_ds_id, "synth_ds_id", push=args.push_synth_ds_to_hf_hub,
                               output_root=args.output_root, overwrite_input=args.overwrite_input,
                               inputs={"reference_ds_id": args.reference_ds_id, "test_ds_id": args.test_ds_id,
                                       "existing_ds_id": args.existing_ds_id})


@guarded_output(output_plan, precheck=check_values)
def run(args: DataGenArgs) -> int:
    """The whole stage; returns the exit code."""
    prep = prepare(args)
    sampler = SeedSampler(len(prep.seeds), args.seed, prep.used_seeds)
    if args.dry_run:
        est = prep.llm.estimate(make_jobs(sampler.take(args.num_samples), prep, args.topic),
                                expected_output_tokens=EXPECTED_OUTPUT_TOKENS)
        rounds = args.max_rounds if args.target_num_pairs else 1
        print(f"{est.summary()}\nper round of {args.num_samples} seeds; at most {rounds} round(s)")
        return EXIT_OK
    logger.info(
        "data_gen: %s; %d seed rows from %s[%s] (%d used by earlier data: taken last); %d train rows "
        "(%d reference + %d earlier) and %d test prompts for the filters%s",
        prep.llm.describe(), len(prep.seeds), args.reference_ds_id, args.reference_ds_split, len(prep.used_seeds),
        len(prep.train) + len(prep.existing), len(prep.train), len(prep.existing), len(prep.test),
        f" ({prep.test_ref[0]}[{prep.test_ref[1]}])" if prep.test_ref else " (NO decontamination)",
    )
    qf = QualityFilter(quality_config(args), train=prep.train + prep.existing, test=prep.test)
    target = args.target_num_pairs
    max_rounds = args.max_rounds if target else 1
    kept: list[dict] = []
    rejected: list[dict] = []
    rounds: list[dict] = []
    stop = STOP_SINGLE
    try:
        for round_no in range(1, max_rounds + 1):
            round_kept, round_rejected, stats = run_round(round_no, sampler.take(args.num_samples),
                                                          prep, qf, args)
            kept += round_kept
            rejected += round_rejected
            rounds.append(stats)
            logger.info("round %d: kept %d pairs (total %d%s); dropped %s", round_no, len(round_kept),
                        len(kept), f"/{target}" if target else "", stats["dropped"] or "none")
            if target and len(kept) >= target:
                stop = STOP_TARGET
                break
            if prep.llm.last_run.stopped_for_budget:
                stop = STOP_BUDGET
                break
            stop = STOP_ROUNDS if target else STOP_SINGLE
    finally:
        prep.llm.close()
    return finish(args, prep, kept, rejected, rounds, stop, sampler)


def to_dataset(rows: list[dict], features: Features) -> Dataset:
    """Explicit features: a column of only empty `messages` (failed replies) still gets the
    schema the other stages (and a later append) expect."""
    return Dataset.from_dict({col: [r[col] for r in rows] for col in features}, features=features)


def summarize(args: DataGenArgs, prep: Prepared, kept: list, rejected: list, rounds: list[dict],
              stop: str, sampler: SeedSampler) -> dict[str, Any]:
    """The machine-readable account of the run (summary.json)."""
    dropped: Counter[str] = Counter()
    for r in rounds:
        dropped.update(r["dropped"])
    usage = prep.llm.usage.as_dict()
    return {
        "stage": STAGE,
        "stop_reason": stop,
        "target_num_pairs": args.target_num_pairs,
        "target_reached": bool(args.target_num_pairs and len(kept) >= args.target_num_pairs),
        "kept": len(kept),
        "rejected": len(rejected),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "rounds": rounds,
        "seeds": {"available": len(prep.seeds), "used": sum(sampler.uses.values()),
                  "distinct_used": len(sampler.uses), "repeated": sampler.repeated,
                  "used_by_earlier_data": len(prep.used_seeds),
                  "reused_from_earlier_data": len(prep.used_seeds & set(sampler.uses))},
        "decontamination": {
            "test_dataset": f"{prep.test_ref[0]}[{prep.test_ref[1]}]" if prep.test_ref else None,
            "test_prompts": len(prep.test),
            "threshold": args.decontam_threshold,
        },
        "near_duplicates": {"threshold": args.near_dup_threshold, "ngram_size": args.ngram_size,
                            "reference_rows": len(prep.train), "existing_rows": len(prep.existing)},
        "generator": prep.llm.model,
        "service_llm": usage,
        "peak_rss_mb": peak_rss_mb(),
    }


def finish(args: DataGenArgs, prep: Prepared, kept: list[dict], rejected: list[dict], rounds: list[dict],
           stop: str, sampler: SeedSampler) -> int:
    """Write the splits and summary.json, then decide the exit code."""
    summary = summarize(args, prep, kept, rejected, rounds, stop, sampler)
    splits: dict[str, Dataset] = {}
    if kept:  # never an empty split: datasets 5.2 cannot load_from_disk a folder holding one
        splits[args.synth_ds_split] = to_dataset(kept, SYNTH_FEATURES)
    if rejected:
        splits[REJECTED_SPLIT] = to_dataset(rejected, REJECTED_FEATURES)
    out_dir = prep.out_dir

    def write_summary(folder: Path) -> None:  # inside the atomic replacement, with the splits
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))

    if splits:
        out_dir = save_output(
            splits, args.synth_ds_id, push=args.push_synth_ds_to_hf_hub,
            append=args.synth_ds_append, stage=STAGE, config=config_to_dict(args),
            inputs={"reference": f"{args.reference_ds_id}[{args.reference_ds_split}]",
                    "test": summary["decontamination"]["test_dataset"]},
            output_root=args.output_root, extra_files=write_summary,
        )
    else:
        publish_files(out_dir, write_summary)
    logger.info("kept %d pairs, rejected %d (%s); stop: %s; summary: %s", len(kept), len(rejected),
                summary["dropped_by_reason"] or "none", stop, out_dir / "summary.json")
    if not kept and args.allow_empty_result:
        logger.warning("no usable synthetic pair survived (%s); exit 0 because allow_empty_result is "
                       "set; no '%s' split was written", summary["dropped_by_reason"] or "no reply",
                       args.synth_ds_split)
        return EXIT_OK
    if not kept:
        raise RunFailed(
            f"no usable synthetic pair survived ({summary['dropped_by_reason'] or 'no reply'}); "
            f"see the '{REJECTED_SPLIT}' split and {out_dir / 'summary.json'}"
        )
    target = args.target_num_pairs
    if target and len(kept) < target:
        why = "the budget (max_cost_usd) was reached" if stop == STOP_BUDGET else \
            f"the round limit ({args.max_rounds}) was hit"
        msg = f"target_num_pairs={target} NOT reached: {len(kept)} pairs kept; {why}"
        if args.require_target:
            raise RunFailed(msg + " (require_target is set)")
        logger.warning("%s; the %d pairs are written (exit 0; set require_target to fail instead)",
                       msg, len(kept))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    return run(*parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> tuple[DataGenArgs]:
    """(DataGenArgs,) from the CLI and an optional `--from-config` YAML (also the loop's check)."""
    return parse_config(
        DataGenArgs, argv=argv,
        description="Generate synthetic instruction/response pairs like the seed dataset, "
        "deduplicated and decontaminated against the test split.",
        epilog=EXIT_CODES_HELP, legacy_keys=SERVICE_LLM_LEGACY,
    )
