"""What the two SDPA variants (training's `sdpa_varlen` in sft_cpu, inference's
`sdpa_decode_runs` in inference/decode_attention) share: how to register one with transformers,
and which attention features make a layer keep transformers' own masked SDPA."""
from __future__ import annotations

from typing import Any, Callable

# Attention features whose mask is more than causal-with-padding (sliding windows, logit
# soft-capping, attention sinks, additive position biases): layers using them keep plain SDPA.
NEEDS_THE_MASK = ("sliding_window", "softcap", "s_aux", "position_bias")


def needs_the_mask(kwargs: dict) -> bool:
    """True when the attention call uses a feature only the full masked SDPA handles."""
    return any(kwargs.get(k) is not None for k in NEEDS_THE_MASK)


def register_sdpa_variant(name: str, attention: Callable[..., Any]) -> str:
    """Make `attn_implementation=name` loadable (idempotent), with SDPA's ordinary boolean masks
    (padded batches still need them); returns `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
