"""Model side of fine-tuning: load the base model, check LoRA targets, and write what inference
needs next to the weights (tokenizer + chat template, generation config, model card, merged copy).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from llamaduo.chat_template import end_of_turn_ids
from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.finetune")

SUMMARY_FILE = "finetune_summary.json"
MERGED_DIR = "merged"
_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


def load_base_model(path: str, model_args: Any, *, on_cuda: bool, attn_implementation: str | None = None) -> Any:
    """Load the base model as configured (dtype, attention, 4/8-bit on CUDA); `attn_implementation`
    overrides the configured attention without changing the config that is saved with the run."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": dtype,
                              "trust_remote_code": bool(getattr(model_args, "trust_remote_code", False))}
    if attn_implementation or model_args.attn_implementation:
        kwargs["attn_implementation"] = attn_implementation or model_args.attn_implementation
    quant = get_quantization_config(model_args) if on_cuda else None
    if quant is not None:
        kwargs["quantization_config"] = quant
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().local_process_index}  # each rank's own GPU
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def module_leaf_names(model: Any) -> list[str]:
    """Last name part of every module with weights LoRA can wrap (Linear, Conv, Embedding...)."""
    names = set()
    for name, module in model.named_modules():
        if name and hasattr(module, "weight") and not list(module.children()):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_lora_targets(model: Any, targets: str | list[str] | None) -> str | list[str] | None:
    """Every target must name an existing module; returns the targets in PEFT's form.

    WHY the str case: TRL's ModelConfig turns a one-item list into a bare string, which PEFT
    then reads as a *regex* that must match the full module path, so `[q_proj]` would match
    nothing. A plain name is turned back into a one-item list.
    """
    if targets is None or targets == "all-linear":
        return targets
    full_names = [n for n, _ in model.named_modules() if n]
    leaves = module_leaf_names(model)
    if isinstance(targets, str):
        if _REGEX_CHARS.search(targets):
            if not any(re.fullmatch(targets, n) for n in full_names):
                raise UsageError(f"lora_target_modules regex '{targets}' matches no module of the model; "
                                 f"modules that exist: {', '.join(leaves)}")
            return targets
        targets = [targets]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in full_names)]
    if missing:
        raise UsageError(f"lora_target_modules {missing} do not exist in the model; "
                         f"modules that exist: {', '.join(leaves)}")
    return list(targets)


def write_generation_config(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """generation_config.json with the stop tokens of the chat template and the pad token, so
    batch inference stops where training taught the model to stop."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    gen = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    stops = end_of_turn_ids(tokenizer)
    if stops:
        gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None and gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.save_pretrained(str(out_dir))


def save_merged(trainer: Any, base_path: str, model_args: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Merge the adapter into the base weights and save a standalone model in `out_dir/merged`.

    A 4-bit base cannot be merged into exactly, so then the base is reloaded unquantized and
    the saved adapter applied to it.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    target = out_dir / MERGED_DIR
    model = trainer.model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        dtype = torch.bfloat16 if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
        base = AutoModelForCausalLM.from_pretrained(base_path, revision=model_args.model_revision, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(out_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    write_generation_config(merged, tokenizer, target)
    logger.info("merged model saved to %s", target)
    return target


def model_card(*, base_model: str, base_path: str, use_peft: bool, sources: Iterable[dict], config: dict,
               metrics: dict, merged: bool) -> str:
    """README.md for the output folder (and the Hub): base model, data, config, results."""
    sources = list(sources)
    hub_datasets = sorted({s["dataset"] for s in sources if not Path(s["dataset"]).exists()})
    header: dict[str, Any] = {"base_model": base_model, "library_name": "peft" if use_peft else "transformers",
                              "tags": ["llamaduo", "sft", "trl"] + (["lora"] if use_peft else [])}
    if hub_datasets:
        header["datasets"] = hub_datasets
    data_rows = "\n".join(f"| {s['dataset']} | {s['split']} | {s['fraction']} | {s['rows']} |" for s in sources)
    kind = "a LoRA adapter" if use_peft else "a fully fine-tuned model"
    usage = ("The folder holds the adapter (`adapter_config.json`, `adapter_model.safetensors`), "
             "the tokenizer with the chat template used in training, and `generation_config.json`."
             if use_peft else "The folder holds the full model, its tokenizer and chat template, "
                              "and `generation_config.json`.")
    if merged:
        usage += " `merged/` holds the adapter merged into the base weights."
    body = (
        f"# LlamaDuo fine-tune of `{base_model}`\n\n"
        f"{kind.capitalize()} trained with supervised fine-tuning (TRL `SFTTrainer`) by LlamaDuo's "
        f"`finetune.py`, with the loss on the assistant replies only. "
        f"Base weights: `{base_model}` (loaded from `{base_path}`).\n\n{usage}\n\n"
        f"## Training data\n\n| dataset | split | fraction | rows |\n|---|---|---|---|\n{data_rows}\n\n"
        f"## Results\n\n```json\n{json.dumps(metrics, indent=2, default=str)}\n```\n\n"
        f"## Config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False, allow_unicode=True).strip()}\n```\n"
    )
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n{body}"
