"""Stage 2 of the loop: the fine-tuned model answers every test prompt, `repeat` times.

Flow (every check that can fail on bad input runs before any weights load):
  config values -> test split + prompt columns -> model reference (adapter base, tokenizer,
  chat template) -> work plan -> [load model] -> length-sorted batches, appended to a partial
  file after each one -> (all ranks done) -> one dataset in original order -> save/push.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from datasets import Dataset
from tqdm.auto import tqdm

from llamaduo.config import config_to_dict, parse_config
from llamaduo.formats import check_format_args, column_map_field, data_format_field, to_messages
from llamaduo.legacy_keys import BATCH_INFERENCE_LEGACY
from llamaduo.data import RESPONSE_COLUMNS, load_split
from llamaduo.value_checks import check_planned
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, RunFailed, UsageError
from llamaduo.logging_setup import setup_logging
from llamaduo.hub import check_push_possible, dataset_output_plan, local_output_dir, save_output
from llamaduo.inference import distributed
from llamaduo.inference.carry import carry_columns
# hf_backend (torch, transformers) is imported where a model is loaded: `--help` and
# `--print-config` stay free of both
from llamaduo.inference.generation import DRAFT_TOKENS, FINISH_LENGTH, FINISH_STOP, GenSettings
from llamaduo.inference.model_ref import ModelRef, resolve_model_ref
from llamaduo.inference.plan import batches_for_rank, build_work_items, padding_waste, plan_batches
from llamaduo.inference.prompts import PromptRecord, WorkItem, prompt_records, tokenize_prompts
from llamaduo.inference.store import PartialStore, run_key
from llamaduo.outputs import OutputPlan, guarded_output
from llamaduo.validation import check_sft_columns
from llamaduo.peak_rss import peak_gpu_mb, peak_rss_mb

logger = logging.getLogger("llamaduo.batch_inference")

STAGE = "batch_inference"
OUTPUT_COLUMNS = (*RESPONSE_COLUMNS, "prompt_id", "repeat_index", "finish_reason")
# vLLM batches continuously inside one call; hand it large chunks and only use them as the
# unit of incremental saving.
VLLM_CHUNK = 256
SUMMARY_NAME = "summary.json"


@dataclass
class BatchInferenceConfig:
    """batch_inference.py settings. The first twelve keys are the original tool's, unchanged."""

    ft_model_id: Optional[str] = field(default=None, metadata={
        "help": "fine-tuned model: merged/full model or PEFT adapter, as a local folder or Hub id, "
                "or the embedded alias 'smollm2-135m-instruct'"})
    ft_model_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of ft_model_id"})
    ft_model_config_path: Optional[str] = field(default=None, metadata={
        "help": "training YAML; its model_name_or_path is the adapter's base when adapter_config.json's is unusable"})
    test_ds_id: Optional[str] = field(default=None, metadata={
        "help": "test prompts: Hub dataset id, save_to_disk folder, folder of <split>.jsonl files, or a file"})
    test_ds_split: str = field(default="test_sft", metadata={"help": "split of test_ds_id to answer"})
    batch_infer_data_preprocess_bs: int = field(default=16, metadata={
        "help": "how many prompts are chat-templated and tokenized at a time"})
    inference_bs: int = field(default=4, metadata={"min": 1, "max": 65_536, "help": "samples per generate() batch (hf backend)"})
    repeat: int = field(default=4, metadata={"min": 1, "max": 1000, "help": "samples per prompt, each with its own seed"})
    push_lm_responses_to_hf_hub: bool = field(default=False, metadata={"help": "push the responses to the Hub"})
    lm_response_ds_id: Optional[str] = field(default=None, metadata={
        "help": "output: a local folder, or the Hub dataset repo id when pushing"})
    lm_response_ds_split: str = field(default="batch_infer", metadata={"help": "output split name"})
    lm_response_append: bool = field(default=True, metadata={
        "help": "append to the existing split (local and Hub) instead of overwriting it"})
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit weights via bitsandbytes (CUDA only)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit weights via bitsandbytes (CUDA only)"})
    temperature: float = field(default=0.4, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold in (0, 1]"})
    max_new_tokens: int = field(default=1024, metadata={"min": 1, "max": 1_000_000, "help": "most tokens generated per answer"})
    do_sample: bool = field(default=True, metadata={"help": "sample (true) or decode greedily (false)"})
    seed: int = field(default=42, metadata={"help": "base seed; each (prompt, repeat) derives its own from it"})
    stop_strings: list[str] = field(default_factory=list, metadata={
        "help": "extra stop strings: an answer is cut before the first one (end-of-turn tokens and eos "
                "always stop); the original's ft_model_gen_config_path fills it"})
    ft_model_gen_config_path: Optional[str] = field(default=None, metadata={
        "help": "the original LlamaDuo's generation file for the fine-tuned model: its do_sample, temperature, "
                "top_p, max_new_tokens and stop_strings fill those keys (explicit keys win); needed by a run"})
    prompt_lookup_tokens: int = field(default=DRAFT_TOKENS, metadata={"min": 0, "max": 64, "help":
        "greedy decoding on a CPU (hf backend): per row and forward, up to this many tokens that followed the "
        "row's last tokens where they occurred before (in its prompt or answer) are checked at once (fewer for "
        "a row whose drafts fail); same answers, fewer forwards when answers copy or repeat; 0 = one token "
        "per forward"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "weights dtype; auto = bf16 on GPUs and on CPUs with fast bf16, else fp32"})
    backend: Literal["hf", "vllm", "openai"] = field(default="hf", metadata={
        "help": "hf (transformers), vllm (in-process, GPU) or openai (any OpenAI-compatible server)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per model replica (vllm backend)"})
    openai_base_url: Optional[str] = field(default=None, metadata={
        "help": "openai backend: the server's base URL, e.g. http://localhost:8000/v1; several, comma-separated, "
                "share the requests"})
    served_model_name: Optional[str] = field(default=None, metadata={
        "help": "openai backend: the base model's name on the server, asked for when ft_model_id is not a "
                "local LoRA adapter folder (default: ft_model_id)"})
    lora_name: str = field(default="{name}", metadata={
        "help": "openai backend: the served name of a local adapter folder ft_model_id, as in vLLM's "
                "--lora-modules NAME=PATH; {name} = the folder's name, {parent} = its parent's"})
    load_lora_at_runtime: bool = field(default=False, metadata={
        "help": "openai backend: if a server does not list the adapter, load it with vLLM's "
                "POST /v1/load_lora_adapter (server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"})
    openai_workers: int = field(default=16, metadata={"min": 1, "max": 1024, "help": "openai backend: requests in flight at once"})
    openai_spread: Literal["least_loaded", "round_robin"] = field(default="least_loaded", metadata={
        "help": "openai backend: how requests are shared across several base URLs"})
    rate_limit_per_minute: int = field(default=0, metadata={
        "help": "openai backend: requests per minute, paced smoothly (0 = no limit)"})
    max_retries: int = field(default=6, metadata={
        "help": "openai backend: retries per request on 429/5xx/timeouts/dropped connections"})
    request_timeout_s: float = field(default=600.0, metadata={"help": "openai backend: per-request timeout"})
    output_root: str = field(default="outputs", metadata={
        "help": "parent folder of the local copy when pushing (the local copy is <output_root>/<repo id>)"})
    data_format: str = data_format_field()
    column_map: Optional[dict] = column_map_field()
    overwrite_input: bool = field(default=False, metadata={
        "help": "allow lm_response_ds_id to be test_ds_id (written into it); otherwise refused with exit 2"})


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    return run(*parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> tuple[BatchInferenceConfig]:
    """(BatchInferenceConfig,) from the CLI and an optional `--from-config` YAML (also the loop's check)."""
    return parse_config(BatchInferenceConfig, argv=argv, epilog=EXIT_CODES_HELP,
                        description="Generate the fine-tuned model's answers to every test prompt.",
                        legacy_keys=BATCH_INFERENCE_LEGACY)


def validate(cfg: BatchInferenceConfig) -> None:
    """Value checks that need no files: exit 2 at once."""
    if not cfg.ft_model_id:
        raise UsageError("ft_model_id is required")
    if not cfg.test_ds_id:
        raise UsageError("test_ds_id is required")
    if not cfg.lm_response_ds_id:
        raise UsageError("lm_response_ds_id is required (a local folder, or a Hub dataset id when pushing)")
    for name in ("repeat", "inference_bs", "max_new_tokens", "batch_infer_data_preprocess_bs", "tensor_parallel_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.temperature < 0:
        raise UsageError(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.load_in_8bit and cfg.load_in_4bit:
        raise UsageError("load_in_8bit and load_in_4bit are both set; choose one")
    check_format_args(cfg.data_format, cfg.column_map)
    if cfg.backend == "openai":
        from llamaduo.inference.openai_backend import parse_base_urls

        parse_base_urls(cfg.openai_base_url)
        for name in ("openai_workers", "max_retries", "rate_limit_per_minute"):
            if getattr(cfg, name) < (1 if name == "openai_workers" else 0):
                raise UsageError(f"{name} must be >= {1 if name == 'openai_workers' else 0}, got {getattr(cfg, name)}")
        if not cfg.request_timeout_s > 0:
            raise UsageError(f"request_timeout_s must be > 0, got {cfg.request_timeout_s}")
    if cfg.ft_model_gen_config_path and not Path(cfg.ft_model_gen_config_path).expanduser().is_file():
        raise UsageError(f"ft_model_gen_config_path not found: {cfg.ft_model_gen_config_path}")


def settings_of(cfg: BatchInferenceConfig) -> GenSettings:
    return GenSettings(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed,
                       tuple(cfg.stop_strings or ()))


def output_plan(cfg: BatchInferenceConfig) -> OutputPlan:
    """The folder this run writes and the input it must not replace. Only the main process
    locks it: the other ranks of the same run write their partial files into it too."""
    if not distributed.dist_info().is_main:
        return OutputPlan(None)
    return dataset_output_plan(cfg.lm_response_ds_id, "lm_response_ds_id", push=cfg.push_lm_responses_to_hf_hub,
                               output_root=cfg.output_root,
                               inputs={"test_ds_id": cfg.test_ds_id, "ft_model_id": cfg.ft_model_id},
                               overwrite_input=cfg.overwrite_input)


@guarded_output(output_plan, precheck=validate)
def run(cfg: BatchInferenceConfig) -> int:
    validate(cfg)
    started = time.perf_counter()
    if cfg.backend == "openai":
        return _run_openai(cfg, started)  # a server generates: no torch in this process
    if cfg.backend == "vllm":  # before torch is imported: a missing vllm is one line at once, not after ~10 s
        from llamaduo.inference.vllm_backend import require_vllm

        require_vllm()
    from llamaduo.inference.hf_backend import load_tokenizer  # torch: only once a local run starts

    info = distributed.dist_info()
    if cfg.backend == "vllm" and info.world_size > 1:
        raise UsageError("backend 'vllm' parallelises itself (tensor_parallel_size); run it as one process, "
                         "not under torchrun/accelerate launch")
    if info.is_main:
        check_push_possible(cfg.push_lm_responses_to_hf_hub, f"responses to '{cfg.lm_response_ds_id}'")
    ds, records = load_test_split(cfg)
    ref = resolve_model_ref(cfg.ft_model_id, cfg.ft_model_revision, cfg.ft_model_config_path)
    tokenizer = load_tokenizer(ref)
    settings = settings_of(cfg)
    if cfg.repeat > 1 and not settings.sampling:
        logger.warning("repeat=%d with greedy decoding: every repeat of a prompt will be identical", cfg.repeat)
    items = build_work_items(records, tokenize_prompts(records, tokenizer, cfg.batch_infer_data_preprocess_bs),
                             cfg.repeat, cfg.seed)
    sha = _model_sha(ref)
    store = _open_store(cfg, info, ref, sha, records)
    batches = plan_batches(items, VLLM_CHUNK if cfg.backend == "vllm" else cfg.inference_bs)
    distributed.init_process_group(info)
    try:
        _generate_missing(cfg, info, ref, tokenizer, settings, store, batches)
        distributed.barrier(info)
        if not info.is_main:
            return EXIT_OK
        done = store.load()
        folder, n_out = write_responses(cfg, ds, records, done, sha, started, inputs={}, summary={})
        store.remove()
        print(f"batch_inference: {n_out} responses ({len(records)} prompts x {cfg.repeat}) -> "
              f"{folder} split '{cfg.lm_response_ds_split}'")
        return EXIT_OK
    finally:
        distributed.shutdown(info)


def _run_openai(cfg: BatchInferenceConfig, started: float) -> int:
    """The openai backend: the same records, work items (and seeds) and output as the hf
    backend, but each sample is one Chat Completions request; the ledger is the resume store."""
    from llamaduo.inference import openai_backend as oa
    from llamaduo.models import model_sha

    urls = oa.parse_base_urls(cfg.openai_base_url)
    target = oa.served_target(cfg.ft_model_id, cfg.served_model_name, cfg.lora_name)
    check_push_possible(cfg.push_lm_responses_to_hf_hub, f"responses to '{cfg.lm_response_ds_id}'")
    ds, records = load_test_split(cfg)
    target = oa.check_servers(urls, target, oa.api_key(), cfg.load_lora_at_runtime)
    sha = oa.model_sha_of(target, model_sha(target.lora_path) if target.lora_path else None)
    items = build_work_items(records, [()] * len(records), cfg.repeat, cfg.seed)
    out_dir = local_output_dir(cfg.lm_response_ds_id, cfg.push_lm_responses_to_hf_hub, cfg.output_root)
    # one ledger per served model + adapter content: a retrained adapter under the same name never
    # reuses the old answers
    ledger = out_dir / "openai_ledger" / f"{run_key({'model_sha': sha})}.sqlite"
    opts = oa.OpenAISettings(urls, target, cfg.openai_workers, cfg.rate_limit_per_minute, cfg.max_retries,
                             cfg.request_timeout_s, cfg.openai_spread, ledger)
    client = oa.make_client(opts, settings_of(cfg))
    logger.info("asking %s for '%s' at %s (%d requests, %d in flight)", "the server" if len(urls) == 1 else
                f"{len(urls)} servers", target.request_model, ", ".join(urls), len(items), cfg.openai_workers)
    try:
        answers = oa.generate_all(client, records, items)
    finally:
        client.close()
    done = {key: {"candidate_responses": g.text, "new_tokens": g.new_tokens, "finish_reason": g.finish_reason}
            for key, g in answers.items()}
    folder, n_out = write_responses(
        cfg, ds, records, done, sha, started, inputs={"served_model": target.request_model},
        summary={"served_model": target.request_model, "model_sha": sha, "service_llm": client.usage.as_dict(),
                 "requests_by_url": client.requests_by_url})
    print(f"batch_inference: {n_out} responses ({len(records)} prompts x {cfg.repeat}) from "
          f"'{target.request_model}' -> {folder} split '{cfg.lm_response_ds_split}'")
    return EXIT_OK


def load_test_split(cfg: BatchInferenceConfig) -> tuple[Dataset, list[PromptRecord]]:
    """The test split as `messages` (any supported format, `column_map` applied) and its prompts.
    One loader for every backend, so data_format/column_map mean the same for each."""
    what = f"test dataset '{cfg.test_ds_id}' split '{cfg.test_ds_split}'"
    ds = to_messages(load_split(cfg.test_ds_id, cfg.test_ds_split, what="test dataset"), what,
                     cfg.data_format, cfg.column_map)
    ds = check_sft_columns(ds, what)
    check_planned(what, len(ds), cfg.repeat, "repeat")
    return ds, prompt_records(ds, what=what)


def write_responses(cfg: BatchInferenceConfig, ds: Dataset, records: Sequence[PromptRecord],
                    done: dict[tuple[int, int], dict[str, Any]], sha: str, started: float,
                    inputs: dict[str, Any], summary: dict[str, Any]) -> tuple[Path, int]:
    """Assemble, carry the test split's other columns (`test`, `entry_point`: evaluation runs
    them), save and write summary.json: one writer for every backend, so each output has the
    same columns. Returns (folder, rows written)."""
    out = assemble(records, done, cfg.repeat, cfg.ft_model_id, sha, cfg.max_new_tokens)
    out = carry_columns(out, ds, [r.row_index for r in records for _ in range(cfg.repeat)])
    folder = save_output({cfg.lm_response_ds_split: out}, cfg.lm_response_ds_id,
                         push=cfg.push_lm_responses_to_hf_hub, append=cfg.lm_response_append, stage=STAGE,
                         config=_card_config(cfg), output_root=cfg.output_root,
                         inputs={"ft_model_id": cfg.ft_model_id, "model_sha": sha, **inputs,
                                 "test_ds_id": cfg.test_ds_id, "test_ds_split": cfg.test_ds_split})
    write_summary(folder, cfg, len(records), len(out), started,
                  {"new_tokens": sum(int(r.get("new_tokens") or 0) for r in done.values()), **summary})
    return Path(folder), len(out)


def write_summary(folder: Path, cfg: BatchInferenceConfig, prompts: int, responses: int, started: float,
                  extra: dict[str, Any]) -> None:
    """summary.json beside the responses: counts, time and peak memory (read by the loop)."""
    summary = {"stage": STAGE, "backend": cfg.backend, "prompts": prompts, "repeat": cfg.repeat,
               "responses": responses, "seconds": round(time.perf_counter() - started, 1),
               "peak_rss_mb": peak_rss_mb(), **extra}
    if peak_gpu_mb() is not None:
        summary["peak_gpu_mb"] = peak_gpu_mb()
    (Path(folder) / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")


def _model_sha(ref: ModelRef) -> str:
    from llamaduo.models import model_sha

    return model_sha(ref.path, None if ref.is_local else ref.revision)


def _open_store(cfg: BatchInferenceConfig, info: distributed.DistInfo, ref: ModelRef, sha: str,
                records: Sequence[PromptRecord]) -> PartialStore:
    """The partial-results folder of exactly this model + prompts + decoding settings."""
    key_fields = {
        "model_sha": sha, "base": ref.base_path if ref.is_adapter else None, "backend": cfg.backend,
        "prompts": run_key({"p": [(r.prompt_id, r.chat) for r in records]}),
        "repeat": cfg.repeat, "inference_bs": cfg.inference_bs, "dtype": cfg.dtype,
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
    }
    out_dir = local_output_dir(cfg.lm_response_ds_id, cfg.push_lm_responses_to_hf_hub, cfg.output_root)
    return PartialStore(out_dir, run_key(key_fields), info.rank,
                        meta={**key_fields, "ft_model_id": cfg.ft_model_id, "test_ds_id": cfg.test_ds_id})


def _generate_missing(cfg: BatchInferenceConfig, info: distributed.DistInfo, ref: ModelRef, tokenizer,
                      settings: GenSettings, store: PartialStore, batches: list[list[WorkItem]]) -> None:
    """Generate this rank's batches that are not already on disk, saving after each batch."""
    done = store.load()
    todo = [b for b in batches_for_rank(batches, info.rank, info.world_size)
            if any(it.key not in done for it in b)]
    n_done = sum(len(b) for b in batches_for_rank(batches, info.rank, info.world_size)) - sum(len(b) for b in todo)
    if n_done:
        logger.info("resuming: %d samples already generated, %d batches left", n_done, len(todo))
    if not todo:
        return
    generator = _make_generator(cfg, info, ref, tokenizer, settings)
    logger.info("rank %d/%d: %d batches, padding waste %.1f%%", info.rank, info.world_size, len(todo),
                100 * padding_waste(todo))
    total = sum(len(b) for b in todo)
    tokens, started = 0, time.perf_counter()
    with tqdm(total=total, desc=f"generating (rank {info.rank})" if info.world_size > 1 else "generating",
              unit="sample", position=info.rank, disable=None) as bar:
        for batch in todo:
            outs = generator.generate(batch)
            store.append({"row_index": it.row_index, "repeat_index": it.repeat_index, "prompt_id": it.prompt_id,
                          "candidate_responses": o.text, "new_tokens": o.new_tokens, "finish_reason": o.finish_reason}
                         for it, o in zip(batch, outs) if it.key not in done)
            tokens += sum(o.new_tokens for o in outs)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.1f}")


def _make_generator(cfg: BatchInferenceConfig, info: distributed.DistInfo, ref: ModelRef, tokenizer,
                    settings: GenSettings):
    from llamaduo.inference.hf_backend import HFGenerator, load_model, stop_token_ids
    from llamaduo.models import pick_device_dtype

    device, dtype = pick_device_dtype()
    if cfg.dtype != "auto":
        import torch

        dtype = getattr(torch, cfg.dtype)
    if cfg.backend == "vllm":
        from llamaduo.inference.vllm_backend import VLLMGenerator

        return VLLMGenerator(ref, settings, stop_token_ids(tokenizer), cfg.tensor_parallel_size,
                             dtype=str(dtype).replace("torch.", ""))
    device = distributed.device_for_rank(device, info)
    distributed.share_cpu_threads(info)
    logger.info("loading %s on %s (%s)", ref.model_id, device, dtype)
    model = load_model(ref, tokenizer, device, dtype, cfg.load_in_8bit, cfg.load_in_4bit)
    return HFGenerator(model, tokenizer, settings, lookup_tokens=cfg.prompt_lookup_tokens)


def assemble(records: Sequence[PromptRecord], done: dict[tuple[int, int], dict[str, Any]], repeat: int,
             model_id: str, sha: str, max_new_tokens: int | None = None) -> Dataset:
    """The response dataset in original order: each prompt's repeats together, by row index."""
    missing = [(r.row_index, k) for r in records for k in range(repeat) if (r.row_index, k) not in done]
    if missing:
        raise RunFailed(f"{len(missing)} samples are missing after generation (first: row {missing[0][0]}, "
                        f"repeat {missing[0][1]}); rerun to resume")
    rows = {c: [] for c in OUTPUT_COLUMNS}
    for r in records:
        for k in range(repeat):
            rows["instructions"].append(r.instruction)
            rows["target_responses"].append(r.target)
            rows["candidate_responses"].append(done[(r.row_index, k)]["candidate_responses"])
            rows["model_id"].append(model_id)
            rows["model_sha"].append(sha)
            rows["prompt_id"].append(r.prompt_id)
            rows["repeat_index"].append(k)
            rows["finish_reason"].append(finish_reason_of(done[(r.row_index, k)], max_new_tokens))
    return Dataset.from_dict(rows)


def finish_reason_of(record: dict[str, Any], max_new_tokens: int | None) -> str | None:
    """The record's finish_reason. A partial file written before the column existed has only
    `new_tokens`; the hf backend stops a row early only on a stop token, so a row that used
    every allowed token was cut ("length"). None when neither is known."""
    if record.get("finish_reason"):
        return record["finish_reason"]
    if max_new_tokens is None or record.get("new_tokens") is None:
        return None
    return FINISH_LENGTH if record["new_tokens"] >= max_new_tokens else FINISH_STOP


def _card_config(cfg: BatchInferenceConfig) -> dict[str, Any]:
    """The config for the dataset card, credentials masked (none today, but masking is cheap)."""
    return config_to_dict(cfg)
