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
from llamaduo.models import EMBEDDED_HUB_ID

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


LOSS_CURVE = "loss_curve.png"


def write_loss_curve(log_history: list[dict], path: Path, title: str) -> Path | None:
    """Training (and eval) loss per step as a PNG next to the weights; None when nothing was
    logged (e.g. fewer steps than logging_steps). Agg backend: no display needed."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), marker="o" if len(train) < 30 else None, label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", linestyle="--", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def base_hub_id(model_name_or_path: str, base_path: str, hint: str | None = None) -> str:
    """The name of the base model to record in adapter_config.json and the model card: a Hub id,
    never a path on the training machine (a pushed adapter must load elsewhere).

    The embedded alias maps to its Hub repo; a Hub id stays; a local folder gives `hint`
    (`base_model_hub_id`), else its config.json `_name_or_path` when that is a Hub id, else the
    folder's name (a name, never an absolute path)."""
    from llamaduo.models import is_embedded_alias

    if is_embedded_alias(model_name_or_path):
        return EMBEDDED_HUB_ID
    if hint:
        return hint
    local = Path(base_path).expanduser()
    if not local.exists():
        return model_name_or_path
    try:
        recorded = json.loads((local / "config.json").read_text()).get("_name_or_path") or ""
    except (OSError, ValueError):
        recorded = ""
    if _HUB_ID.fullmatch(str(recorded)) and not Path(str(recorded)).expanduser().exists():
        return str(recorded)
    return local.resolve().name


def record_base_hub_id(out_dir: Path, hub_id: str) -> None:
    """Rewrite adapter_config.json's base_model_name_or_path (PEFT writes the absolute path it
    loaded from). Batch inference still finds the exact local base through finetune_summary.json."""
    path = out_dir / "adapter_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = hub_id
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def portable(value: Any) -> Any:
    """A config value for a card that leaves this machine: absolute/home paths become the
    folder or file name (a path on the training machine means nothing on the Hub)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return Path(value).name
    return value


def model_card(*, base_model: str, use_peft: bool, sources: Iterable[dict], config: dict,
               metrics: dict, merged: bool, license: str | None = None,
               eval_results: list[dict] | None = None, model_name: str | None = None) -> str:
    """README.md for the output folder (and the Hub), built with huggingface_hub's ModelCard:
    card data (base model Hub id, library, tags, Hub datasets, license, model-index results),
    then the data, config and results. No absolute path of the training machine appears."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    sources = list(sources)
    hub_datasets = sorted({s["dataset"] for s in sources if _HUB_ID.fullmatch(str(s["dataset"]))
                           and not Path(s["dataset"]).exists()})
    results = [EvalResult(**r) for r in eval_results or []]
    data = ModelCardData(base_model=base_model, library_name="peft" if use_peft else "transformers",
                         tags=["llamaduo", "sft", "trl"] + (["lora"] if use_peft else []),
                         datasets=hub_datasets or None, license=license, pipeline_tag="text-generation",
                         model_name=model_name if results else None, eval_results=results or None)
    data_rows = "\n".join(f"| {portable(s['dataset'])} | {s['split']} | {s['fraction']} | {s['rows']} |"
                          for s in sources)
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
        f"`finetune.py`, with the loss on the assistant replies only. Base model: `{base_model}`.\n\n{usage}\n\n"
        f"## Training data\n\n| dataset | split | fraction | rows |\n|---|---|---|---|\n{data_rows}\n\n"
        f"## Results\n\n```json\n{json.dumps(metrics, indent=2, default=str)}\n```\n\n"
        f"## Config\n\n```yaml\n{yaml.safe_dump(portable(config), sort_keys=False, allow_unicode=True).strip()}\n```\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
