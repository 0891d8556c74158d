"""The name a model is served and asked for under: batch_inference's openai backend asks for
it, serve.py serves under it. A light module (no torch, no SDK), so serve.py starts its engine
without paying for the inference stack's imports."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llamaduo.errors import UsageError
from llamaduo.inference.model_ref import ADAPTER_CONFIG


@dataclass(frozen=True)
class ServedTarget:
    """What to ask the servers for. `request_model` is the request's `model` field."""

    request_model: str
    lora_name: Optional[str] = None
    lora_path: Optional[str] = None  # the local adapter folder the name stands for
    base_model: Optional[str] = None


def served_target(ft_model_id: str, served_model_name: Optional[str], lora_name: str) -> ServedTarget:
    """Map `ft_model_id` (an adapter folder, or a model name/path) to the served model name.

    `lora_name` may use `{name}` (the adapter folder's name) and `{parent}` (its parent
    folder's name): the loop's round-k adapter `<OUT>/round_k/model` with `lora_name: "{parent}"`
    is `round_k`, the name to give `vllm serve --lora-modules round_k=<OUT>/round_k/model`.
    """
    folder = Path(ft_model_id)
    if (folder / ADAPTER_CONFIG).is_file():
        abs_folder = folder.resolve()
        try:
            name = lora_name.format(name=abs_folder.name, parent=abs_folder.parent.name)
        except (KeyError, IndexError, ValueError) as err:
            raise UsageError(f"lora_name '{lora_name}': only {{name}} and {{parent}} can be filled in ({err})") from None
        if not name.strip():
            raise UsageError(f"lora_name '{lora_name}' gives an empty adapter name for {ft_model_id}")
        return ServedTarget(name, name, str(abs_folder), served_model_name)
    return ServedTarget(served_model_name or ft_model_id, base_model=served_model_name or ft_model_id)
