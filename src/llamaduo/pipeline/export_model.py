"""Merge a LoRA adapter into its base and save a standalone model: what export.py writes and
what serve.py hands to an engine that cannot load an adapter itself (`transformers serve`).

The folder loads with `AutoModelForCausalLM.from_pretrained` and no peft: safetensors weights,
the tokenizer with the chat template training used (the base's when the adapter has none), and
generation_config.json with the chat template's end-of-turn tokens as eos, so generation stops
where training taught the model to stop.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from llamaduo.errors import UsageError
from llamaduo.inference.model_ref import ModelRef

logger = logging.getLogger("llamaduo.export")

DTYPES = ("auto", "bfloat16", "float16", "float32")


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(ref: ModelRef) -> Any:
    """The adapter's tokenizer (training saves it, with its chat template), else the base's;
    a missing chat template is borrowed from the base and, failing that, refused (exit 2)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.tokenizer_path, revision=ref.tokenizer_revision)
    if not tokenizer.chat_template and ref.base_path and ref.tokenizer_path != ref.base_path:
        tokenizer.chat_template = AutoTokenizer.from_pretrained(ref.base_path, revision=ref.base_revision).chat_template
    if not tokenizer.chat_template:
        raise UsageError(f"'{ref.model_id}' has no chat template (tokenizer at {ref.tokenizer_path}); a served or "
                         "exported chat model needs one")
    return tokenizer


def merged_model(ref: ModelRef, tokenizer: Any, dtype: str = "auto") -> Any:
    """The base weights with the adapter merged in (a full model is loaded as it is)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        ref.weights_path, revision=ref.base_revision if ref.is_adapter else ref.revision, dtype=_torch_dtype(dtype))
    if not ref.is_adapter:
        return model
    from peft import PeftModel

    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # training added tokens: the adapter expects the larger table
    return PeftModel.from_pretrained(model, ref.path, revision=ref.revision).merge_and_unload()


def save_standalone(ref: ModelRef, out_dir: Path, dtype: str = "auto") -> dict[str, Any]:
    """Merge and save into `out_dir` (an empty staging folder); returns facts for the card."""
    from llamaduo.pipeline.finetune_model import write_generation_config

    tokenizer = load_tokenizer(ref)
    model = merged_model(ref, tokenizer, dtype)
    if getattr(model, "hf_quantizer", None) is not None:  # e.g. a GGUF-loaded base: saved dequantized
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_generation_config(model, tokenizer, out_dir)
    params = sum(p.numel() for p in model.parameters())
    logger.info("saved the %s model (%s, %.1fM parameters) to %s", "merged" if ref.is_adapter else "full",
                model.dtype, params / 1e6, out_dir)
    return {"architecture": type(model).__name__, "dtype": str(model.dtype).replace("torch.", ""),
            "parameters": params, "merged_adapter": ref.is_adapter, "adapter_rank": ref.adapter_rank,
            "chat_template": bool(tokenizer.chat_template), "eos_token": tokenizer.eos_token}


def ollama_modelfile(facts: dict[str, Any], stops: list[str], system: Optional[str] = None) -> str:
    """An Ollama Modelfile that imports the safetensors folder it sits in (`ollama create NAME
    -f Modelfile`; Ollama converts Llama-family safetensors itself, so no GGUF is needed)."""
    lines = ["# ollama create my-model -f Modelfile   (run in this folder)", "FROM ."]
    lines += [f'PARAMETER stop "{s}"' for s in stops if s and '"' not in s]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"
