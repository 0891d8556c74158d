"""Stage 1 of the loop: supervised fine-tuning (LoRA, QLoRA or full) with TRL's SFTTrainer.

Flow (every check that can fail on bad input runs before any weights load):
  config (alignment-handbook YAML keys accepted) -> value checks, output-dir state, push
  possible -> tokenizer + chat template -> datasets (mixer, splits, `messages`, assistant turns)
  -> tokenized with labels on the assistant replies only -> conversations longer than max_length
  counted and dropped/refused/kept (`truncation`) -> [load model] -> LoRA target check
  -> train (resumable) -> adapter/model + tokenizer/template + generation config + summary +
  model card -> optional merged copy -> optional push through `llamaduo.hub`.

Runs the same under `python`, `torchrun` and `accelerate launch` (see docs/finetune.md).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from llamaduo.config import config_to_dict, parse_config, unwrap_accept_none
from llamaduo.formats import check_format_args, column_map_field, data_format_field, drop_invalid_rows_field
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, RunFailed, UsageError
from llamaduo.logging_setup import setup_logging
from llamaduo.outputs import OutputPlan, guarded_output
from llamaduo.peak_rss import peak_rss_mb

logger = logging.getLogger("llamaduo.finetune")

STAGE = "finetune"
RENAMED_KEYS = {
    "max_seq_length": "max_length",
    "evaluation_strategy": "eval_strategy",
    "torch_dtype": "dtype",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float < 1 in warmup_steps is a ratio
}
_RUN_MARKERS = ("trainer_state.json", "adapter_config.json", "adapter_model.safetensors", "model.safetensors",
                "finetune_summary.json")
_LATEST = ("true", "latest", "last", "yes", "1")
_KNOWN_DATASET_KWARGS = ("add_special_tokens", "append_concat_token", "skip_prepare_dataset")


@dataclass
class ScriptArgs:
    """Data and output keys of finetune.py (the model keys are TRL's ModelConfig, the training
    keys TRL's SFTConfig; the alignment-handbook names are accepted for all three)."""

    dataset_mixer: Optional[dict] = field(default=None, metadata={
        "help": "training data: mapping of dataset reference (Hub id, save_to_disk folder, folder of "
                "<split>.jsonl files, or a file) to the fraction of its train rows to use, in (0, 1]. "
                "On the CLI as JSON: --dataset-mixer '{\"data/demo\": 1.0}'"})
    dataset_id: Optional[str] = field(default=None, metadata={
        "help": "one dataset reference to train on (all of it); overrides dataset_mixer. "
                "Handy on the CLI: --dataset-id outputs/round_1/merged"})
    dataset_name: Optional[str] = field(default=None, metadata={
        "help": "TRL's name for dataset_id (`trl sft --dataset_name`): one dataset reference to train on"})
    dataset_splits: list[str] = field(default_factory=lambda: ["train_sft", "test_sft"], metadata={
        "help": "splits to load from every dataset: names containing 'train' are trained on, names containing "
                "'test' are the eval set (used only when eval_strategy is not 'no'); train_sft/test_sft fall "
                "back to train/test when a dataset lacks them"})
    dataset_train_split: Optional[str] = field(default=None, metadata={
        "help": "TRL's name: the split to train on, whatever its name (overrides the train names of dataset_splits)"})
    dataset_test_split: Optional[str] = field(default=None, metadata={
        "help": "TRL's name: the eval split, whatever its name (overrides the test names of dataset_splits)"})
    base_model_hub_id: Optional[str] = field(default=None, metadata={
        "help": "Hub id to record as the base model (adapter_config.json, model card) when model_name_or_path "
                "is a local folder; default: its config.json _name_or_path when that is a Hub id, else the "
                "folder's name. The embedded alias records HuggingFaceTB/SmolLM2-135M-Instruct"})
    data_format: str = data_format_field()
    column_map: Optional[dict] = column_map_field()
    drop_invalid_rows: bool = drop_invalid_rows_field()
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={
        "help": "processes for tokenizing the data (alignment-handbook key; default: dataset_num_proc)"})
    tokenizer_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "tokenizer to use (default: the model's)"})
    chat_template: Optional[str] = field(default=None, metadata={
        "help": "chat template to train with and save: inline Jinja, a .jinja file or a tokenizer folder "
                "(default: the tokenizer's own; SFTConfig's chat_template_path works too)"})
    train_on_prompt: bool = field(default=False, metadata={
        "help": "also put the loss on system/user tokens (default: assistant replies only)"})
    merge_adapter: bool = field(default=False, metadata={
        "help": "also save the adapter merged into the base weights in <output_dir>/merged"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start over when output_dir already holds a run (its checkpoints are deleted)"})
    cpu_fast_path: bool = field(default=True, metadata={
        "help": "on a CPU: padding-free batches (unless packing is on), an LM head that scores only the "
                "labelled tokens, and attention within each conversation (src/llamaduo/sft_cpu.py). Same loss "
                "and gradients as TRL's GPU-minded defaults, about 2x the tokens/s (bench/finetune_throughput.py). "
                "false: batches, head and attention exactly as configured. No effect on a CUDA GPU"})
    truncation: Literal["drop", "error", "keep"] = field(default="drop", metadata={
        "help": "conversations longer than max_length (cutting one drops its reply's end-of-turn label): "
                "drop = train without them, with a warning; error = exit 2 before training, naming how many "
                "and a max_length that fits; keep = train on them cut, with a warning"})


# --------------------------------------------------------------------------- config


def _flash_attention(value: Any) -> dict:
    return {"attn_implementation": "flash_attention_2"} if value else {}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def machine_defaults(values: dict) -> dict:
    """Make the merged config runnable on this machine *before* SFTConfig validates it.

    SFTConfig defaults to bf16 and raises "Your setup doesn't support bf16/gpu" without a GPU;
    a laptop CPU must just work, so CPU runs get `use_cpu` and bf16 only where the CPU has
    fast bf16. Requests that cannot work here (4-bit, flash attention, missing loggers) fall
    back with one warning each instead of failing mid-run.
    """
    from llamaduo.models import cpu_supports_bf16

    out = dict(values)
    cuda = _cuda_available()
    if not cuda:
        if not out.get("use_cpu"):
            logger.info("no CUDA GPU found: training on the CPU (use_cpu=true)")
            out["use_cpu"] = True
        if out.get("bf16") is None:
            out["bf16"] = cpu_supports_bf16()
        elif out.get("bf16") and not cpu_supports_bf16():
            logger.warning("bf16 requested but this CPU has no fast bf16 support: training in fp32")
            out["bf16"] = False
        if out.get("fp16"):
            logger.warning("fp16 needs a GPU: training on the CPU without fp16")
            out["fp16"] = False
        if out.get("cpu_fast_path", True) and not out.get("packing"):
            # The fast path's batches: real tokens only. A GPU recipe (sample_config.yaml) pads every
            # batch to its longest row, which on a CPU is compute spent on padding; _cpu_fast_path
            # logs the one line saying so.
            out["padding_free"] = True
        for bits in ("load_in_4bit", "load_in_8bit"):
            if out.get(bits):
                logger.warning("%s (QLoRA via bitsandbytes) needs a CUDA GPU and none was found: "
                               "falling back to plain LoRA on unquantized weights", bits)
                out[bits] = False
    if str(out.get("attn_implementation") or "").startswith("flash_attention") and not _flash_attn_usable(cuda):
        logger.warning("attn_implementation=%s needs a CUDA GPU and the flash-attn package: using sdpa",
                       out["attn_implementation"])
        out["attn_implementation"] = "sdpa"
    out["report_to"] = _available_reporters(out.get("report_to"))
    return out


def _flash_attn_usable(cuda: bool) -> bool:
    import importlib.util

    return cuda and importlib.util.find_spec("flash_attn") is not None


def _available_reporters(report_to: Any) -> Any:
    if report_to in (None, "none", "all") or report_to == ["none"]:
        return report_to
    from transformers.integrations import get_available_reporting_integrations

    wanted = [report_to] if isinstance(report_to, str) else list(report_to)
    available = set(get_available_reporting_integrations())
    for name in [w for w in wanted if w not in available and w != "none"]:
        logger.warning("report_to '%s' is not installed (pip install %s): not reporting to it", name, name)
    kept = [w for w in wanted if w in available]
    return kept or "none"


def _plain_type(t: Any) -> Any:
    """The converter transformers' HfArgumentParser would have used for a field.

    WHY: TrlParser builds on TRL's own copy of HfArgumentParser, which wraps `X | None` types in
    `_accept_none` and has its own `string_to_bool`; `llamaduo.config` recognises dict/bool/int
    fields by the transformers converters (for YAML type checks, JSON mappings on the CLI and
    `--no-flag`), so the wrappers are undone here.
    """
    from transformers.hf_argparser import string_to_bool as hf_string_to_bool

    t = unwrap_accept_none(t)
    if getattr(t, "__name__", "") == "string_to_bool" and getattr(t, "__module__", "").startswith("trl."):
        return hf_string_to_bool
    return t


def _parser_cls() -> type:
    from trl import TrlParser

    class FinetuneParser(TrlParser):
        """TrlParser whose argument converters are the plain transformers ones (see _plain_type)."""

        @staticmethod
        def _parse_dataclass_field(parser: Any, field: Any) -> None:
            before = len(parser._actions)
            TrlParser._parse_dataclass_field(parser, field)
            for action in parser._actions[before:]:
                action.type = _plain_type(action.type)

    return FinetuneParser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Any, Any, Any]:
    """(ScriptArgs, ModelConfig, SFTConfig) from the CLI and an optional `--from-config` YAML."""
    from transformers.hf_argparser import string_to_bool
    from trl import ModelConfig, SFTConfig

    return parse_config(
        ScriptArgs, ModelConfig, SFTConfig, argv=argv, parser_cls=_parser_cls(), renamed_keys=RENAMED_KEYS,
        key_transforms={"use_flash_attention_2": (string_to_bool, _flash_attention)},
        adjust=machine_defaults,
        description="Fine-tune a small LLM on chat data (LoRA, QLoRA on CUDA, or full) with TRL. "
                    "Accepts the alignment-handbook YAML keys; see docs/finetune.md.",
        epilog=EXIT_CODES_HELP,
    )


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    script, model_args, sft = parse_args(argv)
    return run(script, model_args, sft)


# --------------------------------------------------------------------------- checks before any model load


def check_values(script: Any, model_args: Any, sft: Any) -> None:
    """Value checks the dataclasses do not do; UsageError (exit 2) on the first problem."""
    if not model_args.model_name_or_path:
        raise UsageError("model_name_or_path is required (a Hub id, a local folder, or 'smollm2-135m-instruct')")
    if model_args.use_peft:
        if model_args.lora_r <= 0 or model_args.lora_alpha <= 0:
            raise UsageError(f"lora_r and lora_alpha must be positive, got {model_args.lora_r}, {model_args.lora_alpha}")
        if not 0.0 <= model_args.lora_dropout < 1.0:
            raise UsageError(f"lora_dropout must be in [0, 1), got {model_args.lora_dropout}")
    elif model_args.load_in_4bit or model_args.load_in_8bit:
        raise UsageError("quantized (4/8-bit) weights can only be trained through an adapter: set use_peft: true")
    if sft.max_length is not None and sft.max_length <= 0:
        raise UsageError(f"max_length must be positive, got {sft.max_length}")
    if sft.learning_rate <= 0:
        raise UsageError(f"learning_rate must be positive, got {sft.learning_rate}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(sft, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(sft, name)}")
    if sft.max_steps <= 0 and sft.num_train_epochs <= 0:
        raise UsageError(f"num_train_epochs must be positive (or max_steps set), got {sft.num_train_epochs}")
    if script.chat_template and sft.chat_template_path:
        raise UsageError("set only one of chat_template and chat_template_path")
    if sft.push_to_hub and not sft.hub_model_id:
        raise UsageError("push_to_hub is set but hub_model_id is not: name the Hub model repo to push to")
    if isinstance(sft.dataset_kwargs, str):  # from the CLI: JSON text
        try:
            sft.dataset_kwargs = json.loads(sft.dataset_kwargs)
        except json.JSONDecodeError as err:
            raise UsageError(f"dataset_kwargs must be a JSON mapping, got {sft.dataset_kwargs!r}") from err
    if sft.dataset_kwargs is not None and not isinstance(sft.dataset_kwargs, dict):
        raise UsageError(f"dataset_kwargs must be a mapping, got {sft.dataset_kwargs!r}")
    extra = sorted(set(sft.dataset_kwargs or {}) - set(_KNOWN_DATASET_KWARGS))
    if extra:
        raise UsageError(f"dataset_kwargs: unknown key(s) {extra}; known: {', '.join(_KNOWN_DATASET_KWARGS)}")


def holds_run(out_dir: Path) -> bool:
    """Whether a folder already holds a (possibly unfinished) training run."""
    if not out_dir.is_dir():
        return False
    return any((out_dir / m).exists() for m in _RUN_MARKERS) or bool(checkpoints(out_dir))


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json), oldest first. A checkpoint half-written
    when the run was killed has no trainer_state.json yet and is skipped."""
    found = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(sft: Any, out_dir: Path) -> str | None:
    """The checkpoint to resume from: `latest` (or `true`) picks the last complete one in
    output_dir and fails without one; `auto` does the same but starts normally without one
    (for reruns of an interrupted loop); a path is used as given."""
    value = sft.resume_from_checkpoint
    if value in (None, "", "false", "False", "no", "0"):
        return None
    if str(value).lower() == "auto":  # resume when there is something to resume, else start normally
        found = checkpoints(out_dir)
        return str(found[-1]) if found else None
    if str(value).lower() in _LATEST:
        found = checkpoints(out_dir)
        if not found:
            raise UsageError(f"resume_from_checkpoint={value}: no complete checkpoint-* folder in {out_dir}")
        return str(found[-1])
    path = Path(value)
    if not (path / "trainer_state.json").is_file():
        raise UsageError(f"resume_from_checkpoint {value} is not a checkpoint folder (no trainer_state.json)")
    return str(path)


def prepare_output_dir(script: Any, sft: Any) -> str | None:
    """Refuse to silently mix two runs in one folder; returns the checkpoint to resume from."""
    out_dir = Path(sft.output_dir)
    resume = resolve_resume(sft, out_dir)
    if resume or not holds_run(out_dir):
        return resume
    if not script.overwrite_output_dir:
        raise UsageError(f"output_dir {out_dir} already holds a training run; set overwrite_output_dir: true to "
                         f"start over, or resume_from_checkpoint: latest to continue it")
    if _is_main_process():
        for ckpt in out_dir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(out_dir / "merged", ignore_errors=True)
        logger.info("overwrite_output_dir: removed the old checkpoints in %s", out_dir)
    return None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_base(model_args: Any) -> str:
    """The local folder or Hub id to load; the embedded alias is provisioned here."""
    from llamaduo.models import resolve_model

    name = model_args.model_name_or_path
    resolved = resolve_model(name)
    path = Path(resolved).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model_name_or_path {name} is a folder without config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UsageError(f"model_name_or_path {name}: path not found")
    from llamaduo.hub import ensure_hub_reachable, hub_offline
    from llamaduo.hub_cache import is_model_cached

    if hub_offline() and is_model_cached(name, model_args.model_revision):
        logger.info("model '%s': HF_HUB_OFFLINE is set; loading the copy in the local Hugging Face cache", name)
        return name
    ensure_hub_reachable(f"model '{name}'")
    return name


def load_tokenizer(script: Any, model_args: Any, sft: Any, base: str) -> Any:
    from transformers import AutoTokenizer

    from llamaduo.chat_template import apply_template_choice, load_chat_template
    from llamaduo.models import resolve_model

    source = resolve_model(script.tokenizer_name_or_path) if script.tokenizer_name_or_path else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=None if script.tokenizer_name_or_path
                                                  else model_args.model_revision)
    except OSError as err:
        raise UsageError(f"could not load the tokenizer from {source}: {err}") from err
    configured = load_chat_template(script.chat_template or sft.chat_template_path)
    apply_template_choice(tokenizer, configured, "chat_template" if script.chat_template else "chat_template_path")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # TRL does the same; done here so it is saved with the output
    return tokenizer


# --------------------------------------------------------------------------- run


def dataset_reference(script: Any) -> str | None:
    """`dataset_id`, or TRL's `dataset_name` for it; both set to different values is a usage error."""
    if script.dataset_id and script.dataset_name and script.dataset_id != script.dataset_name:
        raise UsageError(f"dataset_id '{script.dataset_id}' and dataset_name '{script.dataset_name}' name "
                         f"different datasets; set one of them")
    return script.dataset_id or script.dataset_name


def output_plan(script: Any, model_args: Any, sft: Any) -> OutputPlan:
    """Lock output_dir for the run (main process only: the other ranks write into it too).
    Not replaced atomically: checkpoints are written, and resumed from, in place."""
    if not sft.output_dir or not _is_main_process():
        return OutputPlan(None)
    datasets = [script.dataset_id] if script.dataset_id else list(script.dataset_mixer or {})
    inputs = {f"training dataset {i + 1}": str(ref) for i, ref in enumerate(datasets)}
    if model_args.model_name_or_path:
        inputs["model_name_or_path"] = model_args.model_name_or_path
    return OutputPlan(Path(sft.output_dir), str(sft.output_dir), "output_dir", inputs, overwrite_key=None)


def precheck(script: Any, model_args: Any, sft: Any) -> None:
    """The checks that read no file, before the output folder is locked (a refused value writes nothing)."""
    check_values(script, model_args, sft)
    check_format_args(script.data_format, script.column_map)


@guarded_output(output_plan, precheck=precheck)
def run(script: Any, model_args: Any, sft: Any) -> int:
    from llamaduo.chat_template import tokenize_dataset
    from llamaduo.hub import check_push_possible
    from llamaduo.pipeline.finetune_data import load_mixed, resolve_mixer
    from llamaduo.pipeline.finetune_truncation import apply_truncation_policy
    from llamaduo.pipeline.finetune_logging import scale_logging
    from llamaduo.pipeline.finetune_plan import log_plan, train_plan

    started = time.time()
    check_values(script, model_args, sft)
    check_format_args(script.data_format, script.column_map)
    mixer = resolve_mixer(script.dataset_mixer, dataset_reference(script))
    want_eval = str(getattr(sft.eval_strategy, "value", sft.eval_strategy)) != "no"
    resume = prepare_output_dir(script, sft)
    push, sft.push_to_hub = bool(sft.push_to_hub), False  # pushing goes through llamaduo.hub, once, at the end
    check_push_possible(push, f"the fine-tuned model '{sft.hub_model_id}'", sft.hub_model_id, "push_to_hub")
    from llamaduo.models import is_embedded_alias

    # a Hub id that cannot be used (offline and not cached) fails before the data is read
    early_base = None if is_embedded_alias(model_args.model_name_or_path) else resolve_base(model_args)

    data = load_mixed(mixer, script.dataset_splits, seed=sft.seed, want_eval=want_eval,
                      data_format=script.data_format, column_map=script.column_map,
                      drop_invalid_rows=script.drop_invalid_rows,
                      train_split=script.dataset_train_split, test_split=script.dataset_test_split)
    if want_eval and data.eval is None:
        raise UsageError(f"eval_strategy={sft.eval_strategy} needs a test split in dataset_splits "
                         f"(got {script.dataset_splits}) or dataset_test_split; or set eval_strategy: no")
    base = early_base or resolve_base(model_args)  # may convert the embedded model once: after the cheap checks
    tokenizer = load_tokenizer(script, model_args, sft, base)
    kwargs = sft.dataset_kwargs if isinstance(sft.dataset_kwargs, dict) else {}
    num_proc = script.preprocessing_num_workers or sft.dataset_num_proc
    # TRL refuses padding_free without packing while max_length is set, because it would not
    # truncate; the truncation is done here instead, so `padding_free: true` just works.
    limit = sft.max_length
    self_truncate = bool(sft.padding_free and not sft.packing and sft.max_length)
    tok_kwargs = {"train_on_prompt": script.train_on_prompt, "num_proc": num_proc,
                  "add_special_tokens": bool(kwargs.get("add_special_tokens", False))}
    if self_truncate:
        sft.max_length = None
    fit = {"truncate_here": self_truncate, "num_proc": num_proc}
    train_ds, cut = apply_truncation_policy(
        tokenize_dataset(data.train, tokenizer, desc="Tokenizing train data", **tok_kwargs), limit,
        script.truncation, "training data", **fit)
    truncation = cut.as_dict()
    eval_ds = None
    if want_eval:
        eval_ds, eval_cut = apply_truncation_policy(
            tokenize_dataset(data.eval, tokenizer, desc="Tokenizing eval data", **tok_kwargs), limit,
            script.truncation, "eval data", **fit)
        truncation["eval"] = eval_cut.as_dict()
    n_tokens = sum(len(x) for x in train_ds["input_ids"])
    plan = train_plan(len(train_ds), n_tokens, sft)
    log_plan(plan, mixer)
    scale_logging(sft, plan.steps)

    trainer = _build_trainer(script, model_args, sft, base, tokenizer, train_ds, eval_ds)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if eval_ds is not None:
        metrics.update(_final_eval(trainer))
    trainer.save_model(sft.output_dir)
    if trainer.is_world_process_zero():
        _finish(trainer, script, model_args, sft, base, tokenizer, data, metrics, n_tokens, resume, push,
                started, truncation, limit)
    return EXIT_OK


def _final_eval(trainer: Any) -> dict:
    """The eval metrics of the trained model: the ones logged at the last step when the eval
    strategy already evaluated there (an epoch strategy does), else one evaluation now. WHY:
    evaluating the same weights twice cost a held-out CPU run 206 s per pass."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def _build_trainer(script: Any, model_args: Any, sft: Any, base: str, tokenizer: Any, train_ds: Any,
                   eval_ds: Any) -> Any:
    from trl import SFTTrainer, get_peft_config

    from llamaduo.pipeline.finetune_logging import first_and_last_loss_callback
    from llamaduo.pipeline.finetune_model import check_lora_targets, load_base_model

    on_cuda = _cuda_available()
    attn = _cpu_fast_path(script, model_args, sft) if not on_cuda else None
    model = load_base_model(base, model_args, on_cuda=on_cuda, attn_implementation=attn)
    peft_config = None
    if model_args.use_peft:
        model_args.lora_target_modules = check_lora_targets(model, model_args.lora_target_modules)
        peft_config = get_peft_config(model_args)
        if model_args.model_revision and model_args.model_revision != "main":
            peft_config.revision = model_args.model_revision
    # The data is already tokenized with assistant-only labels (llamaduo.chat_template); TRL's own
    # template/masking options must not act on it a second time.
    sft.assistant_only_loss = False
    sft.completion_only_loss = None
    sft.chat_template_path = None
    if isinstance(sft.dataset_kwargs, dict):
        sft.dataset_kwargs = {k: v for k, v in sft.dataset_kwargs.items() if k == "skip_prepare_dataset"} or None
    trainer = SFTTrainer(model=model, args=sft, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[first_and_last_loss_callback()])
    logger.info("world size %d (rank %d); %s", sft.world_size, sft.process_index,
                "LoRA adapter" if peft_config else "full fine-tuning")
    if peft_config and not on_cuda and script.cpu_fast_path:
        from llamaduo.sft_cpu import fuse_lora_linears

        fused, total = fuse_lora_linears(trainer.model)
        logger.info("LoRA: %d of %d layers compute in one autograd function each (CPU fast path)%s", fused, total,
                    "" if fused == total else "; the others keep PEFT's layer (lora_dropout > 0, DoRA or a non-CPU device)")
    return trainer


def _cpu_fast_path(script: Any, model_args: Any, sft: Any) -> str | None:
    """Turn on llamaduo.sft_cpu when training on a CPU; returns the attention to load the model with
    (None: as configured)."""
    from llamaduo.sft_cpu import (disable_fast_lm_head, enable_fast_lm_head, register_varlen_attention,
                             return_freed_memory_to_os)

    return_freed_memory_to_os()  # bounded RSS on a CPU (src/llamaduo/sft_cpu.py says why), fast path or not
    if not script.cpu_fast_path:
        disable_fast_lm_head()  # the patch is process-wide: an earlier run in this process may have set it
        logger.info("CPU fast path off (cpu_fast_path: false): batches (padding_free=%s, packing=%s), LM head "
                    "and attention as configured", bool(sft.padding_free), bool(sft.packing))
        return None
    head = enable_fast_lm_head()
    attn = None
    if (sft.padding_free or sft.packing) and model_args.attn_implementation in (None, "sdpa"):
        attn = register_varlen_attention()
    logger.info("CPU fast path on: %s batches, %s, attention %s (cpu_fast_path: false trains as configured)",
                "packed" if sft.packing else "padding-free",
                "LM head on labelled tokens only" if head else "TRL's own LM head (this TRL's is not the known one)",
                attn or f"{model_args.attn_implementation} as configured (per-conversation attention needs sdpa)")
    return attn


def _finish(trainer: Any, script: Any, model_args: Any, sft: Any, base: str, tokenizer: Any, data: Any,
            metrics: dict, n_tokens: int, resume: str | None, push: bool, started: float,
            truncation: dict, max_length: int | None) -> None:
    """Main process only: everything inference and people need next to the weights."""
    from llamaduo.hub import push_model_folder
    from llamaduo.pipeline.finetune_model import (LOSS_CURVE, SUMMARY_FILE, base_hub_id, model_card,
                                                  record_base_hub_id, save_merged, write_generation_config,
                                                  write_loss_curve)

    out_dir = Path(sft.output_dir)
    hub_id = base_hub_id(model_args.model_name_or_path, base, script.base_model_hub_id)
    record_base_hub_id(out_dir, hub_id)
    tokenizer.save_pretrained(str(out_dir))
    write_generation_config(trainer.model, tokenizer, out_dir)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logged]
    summary = {
        "base_model": model_args.model_name_or_path, "base_model_path": base, "base_model_hub_id": hub_id,
        "adapter": bool(model_args.use_peft), "world_size": sft.world_size,
        "global_step": trainer.state.global_step, "resumed_from": resume,
        "train_rows": len(data.train), "eval_rows": len(data.eval) if data.eval is not None else 0,
        "train_tokens": n_tokens,
        "tokens_seen": next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None),
        "truncation": truncation, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "losses": losses,
        "loss_steps": [h.get("step") for h in logged], "metrics": metrics,
        "data": data.sources, "seconds": round(time.time() - started, 1),
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "peak_rss_mb": peak_rss_mb(),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    write_loss_curve(trainer.state.log_history, out_dir / LOSS_CURVE,
                     f"Fine-tune of {hub_id}: {len(data.train)} rows, {trainer.state.global_step} steps")
    merged = bool(script.merge_adapter and model_args.use_peft)
    if script.merge_adapter and not model_args.use_peft:
        logger.info("merge_adapter ignored: full fine-tuning already saved a full model")
    if merged:
        save_merged(trainer, base, model_args, tokenizer, out_dir)
    config = config_to_dict(script, model_args, sft) | {"max_length": max_length}  # the limit trained with
    card = model_card(base_model=hub_id, use_peft=bool(model_args.use_peft), license=_base_license(model_args),
                      sources=data.sources, config=_card_config(config), merged=merged,
                      metrics={k: summary[k] for k in ("global_step", "first_loss", "last_loss", "train_tokens")}
                      | {"metrics": metrics})
    (out_dir / "README.md").write_text(card)
    logger.info("fine-tuned %s saved to %s (loss %s at step %s -> %s at step %s, %d losses logged)",
                "adapter" if model_args.use_peft else "model", out_dir, _short(summary["first_loss"]),
                summary["loss_steps"][0] if logged else None, _short(summary["last_loss"]),
                summary["loss_steps"][-1] if logged else None, len(losses))
    if push:
        try:
            push_model_folder(out_dir, sft.hub_model_id, card, private=sft.hub_private_repo)
        except Exception as err:  # noqa: BLE001 - the local copy is intact and must be named
            raise RunFailed(f"push to the Hub model '{sft.hub_model_id}' failed ({err}); "
                            f"the local output is intact at {out_dir}") from err
        logger.info("pushed %s to the Hub model repo %s", out_dir, sft.hub_model_id)


def _short(loss: float | None) -> str:
    return "none" if loss is None else f"{loss:.4f}"


def _base_license(model_args: Any) -> str | None:
    """The embedded model's license (Apache-2.0, from its wheel); others are not guessed."""
    from llamaduo.models import is_embedded_alias

    return "apache-2.0" if is_embedded_alias(model_args.model_name_or_path) else None


_CARD_KEYS_SKIP = ("logging_dir", "hub_token", "push_to_hub_token", "deepspeed", "fsdp_config", "accelerator_config")


def _card_config(config: dict) -> dict:
    """The keys that differ from TRL's defaults: the full TrainingArguments dump is 150+ keys,
    which buries the few a reader of the model card needs."""
    import dataclasses

    from trl import ModelConfig, SFTConfig

    defaults = {f.name: f.default for cls in (ModelConfig, SFTConfig) for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    return {k: v for k, v in config.items()
            if k not in _CARD_KEYS_SKIP and not (k in defaults and _same(defaults[k], v))}


def _same(default: Any, value: Any) -> bool:
    default = getattr(default, "value", default)
    return default == value or str(default) == str(value)
