"""Step 0 of the migration: the reference dataset (`train_sft`/`test_sft`) from the prompts the
app sends, answered by the service LLM.

Rows that already hold an answer (chat logs, fine-tuning JSONL, a Batch API output) are kept
without a call; exact and near-duplicate prompts are dropped before any call (so never paid
for); the other prompts go through llamaduo.service_llm (pacing, retries, the ledger: a rerun,
or a rerun after a kill, pays for nothing twice). Then a seeded split, stratified by category,
with no prompt in both splits. Keys, inputs and the summary: docs/collect.md.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from datasets import Dataset, Features, List, Value

from llamaduo.config import config_to_dict, parse_config
from llamaduo.data import prompt_id_for
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, RunFailed, UsageError
from llamaduo.hub import check_push_possible, dataset_output_plan, local_output_dir, save_output
from llamaduo.legacy_keys import SERVICE_LLM_LEGACY
from llamaduo.logging_setup import setup_logging
from llamaduo.outputs import OutputPlan, guarded_output
from llamaduo.peak_rss import peak_rss_mb
from llamaduo.pipeline.collect_inputs import SOURCE_PROMPT, Item, read_batch_pair, read_prompts
from llamaduo.quality import QualityConfig, QualityFilter
from llamaduo.service_llm import InvalidReply, Job, ServiceLLM, ServiceLLMArgs
from llamaduo.splits import stratified_split, rows_for_test

logger = logging.getLogger("llamaduo.collect")

STAGE = "collect"
_STR = Value("string")
REFERENCE_FEATURES = Features({"prompt": _STR, "prompt_id": _STR,
                               "messages": List({"role": _STR, "content": _STR}), "category": _STR})
# Typical answer length, for --dry-run cost estimates.
EXPECTED_OUTPUT_TOKENS = 400


@dataclass
class CollectArgs(ServiceLLMArgs):
    """Every key of `collect.py` (the service-LLM keys come from ServiceLLMArgs)."""

    # --- inputs --------------------------------------------------------------------------------
    prompts_ds_id: Optional[str] = field(default=None, metadata={
        "help": "The app's prompts: a .txt file (one per line), a jsonl/csv/parquet file, a folder or a Hub "
                "dataset with a prompt column (prompt, instruction, question or input) and/or answered rows "
                "(messages ending with an assistant turn, OpenAI fine-tuning JSONL, prompt + completion)."})
    prompts_ds_split: str = field(default="train", metadata={
        "help": "Split of prompts_ds_id (a single file serves any split name)."})
    batch_input: Optional[str] = field(default=None, metadata={
        "help": "OpenAI Batch API input file (JSONL of {custom_id, body: {messages}}), instead of or besides "
                "prompts_ds_id."})
    batch_output: Optional[str] = field(default=None, metadata={
        "help": "The matching Batch API output file: answers joined on custom_id are kept with no call; "
                "requests without a successful answer are asked through the service layer."})
    category_column: str = field(default="category", metadata={"help": "Input column holding each row's category."})
    default_category: str = field(default="general", metadata={
        "help": "Category of rows without one (the `category` column of the output)."})
    system_prompt: Optional[str] = field(default=None, metadata={
        "help": "A system message sent with every prompt that has none (and stored with it in `messages`)."})
    column_map: Optional[dict] = field(default=None, metadata={
        "help": "Map your column names onto ours, {our name: your column}, e.g. {prompt: text, category: "
                "task}; our names: prompt, question, instruction, input, completion, output, messages, "
                "conversations, system, category."})
    # --- calls -----------------------------------------------------------------------------------
    gen_workers: int = field(default=4, metadata={"help": "Concurrent service-LLM requests."})
    allow_failed: bool = field(default=False, metadata={
        "help": "Exit 0 (warning) when some prompts got no answer after retries; they are left out and a "
                "rerun asks for them again. Default: write the answered rows, then exit 1."})
    # --- cleaning and splitting --------------------------------------------------------------------
    near_dup_threshold: float = field(default=0.9, metadata={
        "help": "Word n-gram Jaccard at/above which two prompts are duplicates (the later one is dropped; "
                "an answered row wins over a bare prompt). Exact duplicates (case and spacing ignored) "
                "always go."})
    ngram_size: int = field(default=3, metadata={"help": "Words per shingle for the Jaccard similarity."})
    minhash_num_perm: int = field(default=64, metadata={"help": "MinHash permutations (LSH candidate search)."})
    test_size: float = field(default=0.1, metadata={
        "help": "Rows of test_sft: a count (a whole number >= 1, e.g. 50) or a fraction in (0, 1)."})
    seed: int = field(default=2024, metadata={"help": "Seed of the train/test split (reproducible)."})
    stratify: bool = field(default=True, metadata={
        "help": "Keep each category's share in both splits (when the input has categories)."})
    # --- output -----------------------------------------------------------------------------------
    reference_ds_id: str = field(default="outputs/reference", metadata={
        "help": "Output: the reference dataset (local folder, or Hub dataset id when pushing), read by "
                "finetune, batch_inference and data_gen."})
    train_split: str = field(default="train_sft", metadata={"help": "Output train split name."})
    test_split: str = field(default="test_sft", metadata={"help": "Output test split name."})
    push_reference_ds_to_hf_hub: bool = field(default=False, metadata={"help": "Push the result to the Hub."})
    output_root: str = field(default="outputs", metadata={
        "help": "Local copies of pushed outputs go to <output_root>/<reference_ds_id>."})
    overwrite_input: bool = field(default=False, metadata={
        "help": "Allow reference_ds_id to be an input, which it then replaces; otherwise exit 2."})


# ------------------------------------------------------------------------------ validation


def validate_values(args: CollectArgs) -> list[str]:
    """Range checks the config parser cannot do (types are checked there)."""
    problems = []
    if not args.prompts_ds_id and not args.batch_input:
        problems.append("give prompts_ds_id (the app's prompts) and/or batch_input (a Batch API input file)")
    if args.batch_output and not args.batch_input:
        problems.append("batch_output needs batch_input (the answers are joined to it on custom_id)")
    if not args.reference_ds_id:
        problems.append("reference_ds_id is required (the output dataset)")
    if args.gen_workers < 1:
        problems.append(f"gen_workers must be >= 1, got {args.gen_workers}")
    if not args.train_split or not args.test_split or args.train_split == args.test_split:
        problems.append("train_split and test_split must be set and differ")
    if not args.default_category.strip():
        problems.append("default_category must not be empty")
    try:
        rows_for_test(args.test_size, 10**9)
    except UsageError as err:
        problems.append(str(err))
    problems += quality_config(args).validate()
    return problems


def quality_config(args: CollectArgs) -> QualityConfig:
    # decontamination is not used here (no test set yet): its threshold only has to be valid
    return QualityConfig(near_dup_threshold=args.near_dup_threshold, ngram_size=args.ngram_size,
                         num_perm=args.minhash_num_perm)


# ------------------------------------------------------------------------------ preparation


@dataclass
class Prepared:
    """Everything read and checked before the first call."""

    kept: list[Item]
    dropped: dict[str, int]
    empty_rows: int
    batch_counts: dict[str, Any]
    read: int
    out_dir: Path
    llm: ServiceLLM
    has_categories: bool


def read_items(args: CollectArgs) -> tuple[list[Item], int, dict[str, Any]]:
    """Every input row as an Item (prompts file first, then the Batch API pair)."""
    items: list[Item] = []
    empty, batch_counts = 0, {}
    if args.prompts_ds_id:
        items, empty = read_prompts(args.prompts_ds_id, args.prompts_ds_split, args.column_map, args.category_column)
    if args.batch_input:
        batch_items, batch_counts = read_batch_pair(args.batch_input, args.batch_output, args.category_column)
        items += batch_items
    if not items:
        raise UsageError("the inputs hold no prompt")
    if args.system_prompt:
        for item in items:
            if not any(t["role"] == "system" for t in item.turns):
                item.turns.insert(0, {"role": "system", "content": args.system_prompt})
    return items, empty, batch_counts


def drop_duplicates(items: list[Item], args: CollectArgs) -> tuple[list[Item], Counter[str]]:
    """Exact and near-duplicate prompts removed, first kept; answered rows are checked first so
    a prompt that is also answered in the input costs no call."""
    order = sorted(range(len(items)), key=lambda i: items[i].answer is None)  # stable: answered first
    qf = QualityFilter(quality_config(args), progress=False)
    verdicts = qf.check([items[i].prompt for i in order])
    keep = sorted(i for i, v in zip(order, verdicts) if v.keep)
    return [items[i] for i in keep], Counter(v.reason for v in verdicts if not v.keep)


def prepare(args: CollectArgs) -> Prepared:
    """All checks that can fail, cheapest first, before any call."""
    problems = validate_values(args)
    if problems:
        raise UsageError("; ".join(problems))
    check_push_possible(args.push_reference_ds_to_hf_hub, f"reference dataset '{args.reference_ds_id}'")
    out_dir = local_output_dir(args.reference_ds_id, args.push_reference_ds_to_hf_hub, args.output_root)
    llm = ServiceLLM.from_args(args, workers=args.gen_workers,
                               default_ledger_path=out_dir / "service_llm_ledger.sqlite")
    items, empty, batch_counts = read_items(args)
    kept, dropped = drop_duplicates(items, args)
    n_test = rows_for_test(args.test_size, len(kept))  # a count larger than the data: exit 2 before any call
    if n_test == 0:
        raise UsageError(f"only {len(kept)} distinct prompt(s): too few for a train and a test split")
    has_categories = any(item.category for item in kept)
    return Prepared(kept, dict(dropped), empty, batch_counts, len(items), out_dir, llm, has_categories)


# ------------------------------------------------------------------------------ calls


def parse_answer(text: str) -> str:
    """Any non-empty reply is the answer (re-asked when empty)."""
    if not text or not text.strip():
        raise InvalidReply("empty reply")
    return text.strip()


def make_jobs(items: Sequence[Item]) -> list[Job]:
    """One job per unanswered prompt; the whole conversation is sent when there is more than
    the single user turn (a system message, earlier turns)."""
    jobs = []
    for item in items:
        multi = len(item.turns) > 1
        jobs.append(Job(item.prompt, label=item.label,
                        messages=tuple(dict(t) for t in item.turns) if multi else None))
    return jobs


def answer_missing(prep: Prepared) -> tuple[list[str], dict[str, Any]]:
    """Ask the service LLM for every unanswered prompt; the answers are set on the items.
    Returns the labels of prompts that got no answer and the call statistics."""
    todo = [item for item in prep.kept if item.answer is None]
    failed: list[str] = []
    if todo:
        results = prep.llm.run(make_jobs(todo), parse=parse_answer, desc="collecting answers")
        for item, res in zip(todo, results):
            if res.ok:
                item.answer = res.value
            else:
                failed.append(f"{item.label}: {res.error or res.status}")
    return failed, prep.llm.last_run.as_dict() if todo else {}


# ------------------------------------------------------------------------------ output


def reference_row(item: Item, default_category: str) -> dict[str, Any]:
    prompt = item.prompt
    return {"prompt": prompt, "prompt_id": item.prompt_id or prompt_id_for(prompt),
            "messages": [*item.turns, {"role": "assistant", "content": item.answer or ""}],
            "category": item.category or default_category}


def split_rows(rows: list[dict], args: CollectArgs, stratify: bool) -> tuple[list[dict], list[dict]]:
    keys = [row["category"] for row in rows] if stratify else [""] * len(rows)
    train_idx, test_idx = stratified_split(keys, rows_for_test(args.test_size, len(rows)), args.seed)
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]


def output_plan(args: CollectArgs) -> OutputPlan:
    """The folder this run writes (locked for the run) and the inputs it must not replace."""
    if args.dry_run:
        return OutputPlan(None)
    return dataset_output_plan(args.reference_ds_id, "reference_ds_id", push=args.push_reference_ds_to_hf_hub,
                               output_root=args.output_root, overwrite_input=args.overwrite_input,
                               inputs={"prompts_ds_id": args.prompts_ds_id, "batch_input": args.batch_input,
                                       "batch_output": args.batch_output})


def service_record(llm: ServiceLLM) -> dict[str, Any]:
    """What the card and summary say about the service LLM: provider, model, generation
    settings; never a key (the base URL goes through redact with the rest of the card)."""
    return {"provider": llm.provider, "model": llm.model, "base_url": llm.spec.base_url,
            "generation_settings": dict(llm.spec.gen_config)}


@guarded_output(output_plan)
def run(args: CollectArgs) -> int:
    """The whole stage; returns the exit code."""
    prep = prepare(args)
    todo = [item for item in prep.kept if item.answer is None]
    if args.dry_run:
        est = prep.llm.estimate(make_jobs(todo), expected_output_tokens=EXPECTED_OUTPUT_TOKENS)
        print(f"{est.summary()}\n{len(prep.kept)} distinct prompts ({len(prep.kept) - len(todo)} already "
              f"answered), {sum(prep.dropped.values())} duplicate(s) dropped")
        return EXIT_OK
    logger.info("collect: %s; %d input rows, %d duplicates dropped, %d distinct prompts of which %d need an answer",
                prep.llm.describe(), prep.read, sum(prep.dropped.values()), len(prep.kept), len(todo))
    try:
        failed, calls = answer_missing(prep)
    finally:
        prep.llm.close()
    return finish(args, prep, failed, calls)


def finish(args: CollectArgs, prep: Prepared, failed: list[str], calls: dict[str, Any]) -> int:
    """Split, write the dataset with summary.json, then decide the exit code."""
    rows = [reference_row(item, args.default_category) for item in prep.kept if item.answer]
    stratify = args.stratify and prep.has_categories
    if len(rows) < 2:
        raise RunFailed(f"only {len(rows)} prompt(s) have an answer: too few to write a train and a test split"
                        + (f"; first failure: {failed[0]}" if failed else ""))
    train, test = split_rows(rows, args, stratify)
    service = service_record(prep.llm)
    summary = {
        "stage": STAGE,
        "input_rows": prep.read,
        "rows_without_prompt": prep.empty_rows,
        "duplicates_dropped": sum(prep.dropped.values()),
        "dropped_by_reason": dict(sorted(prep.dropped.items())),
        "distinct_prompts": len(prep.kept),
        "already_answered": sum(1 for i in prep.kept if i.source != SOURCE_PROMPT),
        "answered_by_service_llm": len(rows) - sum(1 for i in prep.kept if i.source != SOURCE_PROMPT),
        "failed": len(failed),
        "failures": failed[:20],
        "rows": {args.train_split: len(train), args.test_split: len(test)},
        "split": {"test_size": args.test_size, "seed": args.seed, "stratified_by_category": stratify},
        "batch": prep.batch_counts or None,
        "service_llm": service,
        "calls": calls,
        "peak_rss_mb": peak_rss_mb(),
    }

    def write_summary(folder: Path) -> None:  # inside the atomic replacement, with the splits
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))

    splits = {args.train_split: Dataset.from_list(train, features=REFERENCE_FEATURES),
              args.test_split: Dataset.from_list(test, features=REFERENCE_FEATURES)}
    out_dir = save_output(
        splits, args.reference_ds_id, push=args.push_reference_ds_to_hf_hub, stage=STAGE,
        config=config_to_dict(args), output_root=args.output_root, extra_files=write_summary,
        inputs={"prompts": f"{args.prompts_ds_id}[{args.prompts_ds_split}]" if args.prompts_ds_id else None,
                "batch_input": args.batch_input, "batch_output": args.batch_output,
                "service_llm": service},
    )
    logger.info("wrote %d train and %d test rows to %s (%d duplicates dropped, %d already answered, %d failed)",
                len(train), len(test), out_dir, summary["duplicates_dropped"], summary["already_answered"],
                len(failed))
    if failed:
        why = (f"max_cost_usd={args.max_cost_usd} was reached before {len(failed)} prompt(s) were asked"
               if prep.llm.last_run.stopped_for_budget else
               f"{len(failed)} prompt(s) got no answer (first: {failed[0]})")
        msg = (f"{why}; the {len(rows)} answered rows are written to {out_dir}, and a rerun asks only for "
               "the missing ones")
        if not args.allow_failed:
            raise RunFailed(msg)
        logger.warning("%s (exit 0: allow_failed is set)", msg)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    (args,) = parse_config(
        CollectArgs, argv=argv,
        description="Step 0: build the reference dataset (train_sft/test_sft) from the app's prompts, "
        "answered by the service LLM; already answered rows cost no call, a rerun pays for nothing twice.",
        epilog=EXIT_CODES_HELP, legacy_keys=SERVICE_LLM_LEGACY,
    )
    return run(args)
