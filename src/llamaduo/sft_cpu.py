"""CPU fast path for TRL's SFT step: score only labelled tokens, with a plain log-softmax head,
attend within each conversation of a padding-free batch, and run each LoRA linear layer as one
autograd function (`fuse_lora_linears`).

WHY: TRL is tuned for GPUs; on a CPU its fused head scores every position in many elementwise
passes, and padding-free SDPA attends over the whole row (profile and numbers:
docs/finetune.md). Liger-Kernel and Cut Cross-Entropy are Triton-only and torch's varlen
attention has no CPU kernel, so this module does both. The attention uses transformers'
`AttentionInterface`; the head replaces two private names of `trl.trainer.utils`, and both
`enable_fast_lm_head` and `disable_fast_lm_head` leave TRL alone if those names move.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

from llamaduo.sdpa_variants import needs_the_mask, register_sdpa_variant

logger = logging.getLogger("llamaduo.sft_cpu")

VARLEN_ATTENTION = "sdpa_varlen"
ROWS_PER_CHUNK = 1024  # labelled tokens whose [rows, vocab] logits are live at once (~200 MB at 49k vocab)


# --------------------------------------------------------------------------- attention


def varlen_sdpa_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                          dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                          **kwargs: Any) -> tuple[Any, None]:
    """SDPA run once per conversation of a padding-free row; anything else goes to plain SDPA.

    A padding-free row holds several conversations, each restarting `position_ids` at 0; causal
    attention inside each one is exactly what transformers' block-diagonal mask computes, without
    the cross-conversation blocks (tests/test_sft_cpu.py checks outputs and gradients are equal).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = None if needs_the_mask(kwargs) else \
        _conversation_bounds(kwargs.get("position_ids"), query, key)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=p, is_causal=True, scale=scaling,
        enable_gqa=gqa) for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _conversation_bounds(position_ids: Any, query: Any, key: Any) -> list[int] | None:
    """Start offsets of the conversations in a one-row training batch (plus its end), or None
    when the batch is not a padding-free row of several conversations (padded batches, decoding)."""
    if position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return None
    # A new conversation starts wherever the positions do not go up by one: the same rule as
    # transformers' find_packed_sequence_indices, so both see the same conversations.
    pos = position_ids[0]
    starts = [0] + ((pos[1:] - pos[:-1]) != 1).nonzero().flatten().add(1).tolist()
    if len(starts) < 2:
        return None
    return starts + [query.shape[2]]


def register_varlen_attention() -> str:
    """Make `attn_implementation="sdpa_varlen"` loadable (idempotent); returns its name."""
    return register_sdpa_variant(VARLEN_ATTENTION, varlen_sdpa_attention)


# --------------------------------------------------------------------------- LM head and loss


def plain_logprobs(hidden: Any, weight: Any, bias: Any, targets: Any, temperature: float, chunk_size: int,
                   final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                   outputs: tuple[str, ...] = ("log_probs",)) -> tuple:
    """Same inputs and outputs as TRL's `ChunkedLogProbFunction.apply`, done with ordinary autograd.

    Returns (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1); fields not in `outputs`
    are None. Only log_probs carries a gradient: SFT uses the others as detached metrics, and
    `enable_fast_lm_head` is only called by finetune.py. `chunk_size` (TRL's vocabulary tile) is
    unused: the logits of `ROWS_PER_CHUNK` rows are built whole.

    Each chunk runs under activation checkpointing: autograd keeps only the chunk's hidden
    states and recomputes its logits in the backward pass. Without it every chunk's
    [rows, vocab] log-softmax stays alive until backward, so memory grows with the labelled
    tokens of the batch (measured: +1.2 GB at 3k labelled tokens of SmolLM2, 49k vocab); with it
    the head holds one chunk at a time, for one extra head matmul per chunk.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    def rows(h: Any, t: Any) -> tuple:
        return _logprob_rows(h, weight, bias, t, temperature, final_logit_softcapping, logit_scale, outputs)

    # One chunk alone is alive at a time either way, so it is not checkpointed: that would only
    # add a head matmul (one conversation per forward, as config/cpu trains, is one chunk).
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad) \
        and hidden.shape[0] > ROWS_PER_CHUNK
    pieces = [checkpoint(rows, hidden[s:s + ROWS_PER_CHUNK], targets[s:s + ROWS_PER_CHUNK], use_reentrant=False)
              if recompute else rows(hidden[s:s + ROWS_PER_CHUNK], targets[s:s + ROWS_PER_CHUNK])
              for s in range(0, max(1, hidden.shape[0]), ROWS_PER_CHUNK)]
    return tuple(None if piece[0] is None else torch.cat(piece) for piece in zip(*pieces))


def _logprob_rows(hidden: Any, weight: Any, bias: Any, targets: Any, temperature: float,
                  softcap: float | None, logit_scale: float, outputs: tuple[str, ...]) -> tuple:
    import torch

    z = torch.nn.functional.linear(hidden, weight, bias).float()
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if temperature != 1.0:
        z = z / temperature
    log_p = torch.log_softmax(z, dim=-1)
    log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        log_sum_sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # first maximum, like TRL
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class _LogProbDispatch:
    """Stands in for TRL's `ChunkedLogProbFunction` inside trl.trainer.utils: CPU tensors take
    `plain_logprobs`, every other device keeps TRL's kernel."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def apply(self, hidden: Any, *args: Any) -> tuple:
        if hidden.device.type == "cpu":
            return plain_logprobs(hidden, *args)
        return self.original.apply(hidden, *args)


def enable_fast_lm_head() -> bool:
    """Patch TRL's fused LM head for CPU (idempotent). Returns False, with a warning, when this
    TRL no longer has the two names patched, so an upgrade degrades to TRL's own speed, not a crash."""
    from trl.trainer import utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    function = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if use_triton is None or function is None or not hasattr(function, "apply"):
        logger.warning("this TRL version's fused LM head is not the one the CPU fast path knows; "
                       "training at TRL's own speed")
        return False
    if getattr(use_triton, "_llamaduo", False):
        return True

    def score_labelled_only(device: Any) -> bool:
        # TRL reads this as "score only the labelled positions"; on a CPU that is always right.
        return device.type == "cpu" or use_triton(device)

    score_labelled_only._llamaduo = True  # type: ignore[attr-defined]
    score_labelled_only.original = use_triton  # type: ignore[attr-defined]
    trl_utils._use_triton = score_labelled_only
    trl_utils._ChunkedLogProbFunction = _LogProbDispatch(function)
    return True


def disable_fast_lm_head() -> None:
    """Undo `enable_fast_lm_head` (finetune.py, the benchmark's TRL-default baseline and the tests
    use it). Restores what it replaced, read off its own patches, and skips a name this TRL does
    not have, as `enable_fast_lm_head` does: never a crash after a TRL rename."""
    from trl.trainer import utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if getattr(use_triton, "_llamaduo", False):
        trl_utils._use_triton = use_triton.original
    function = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if isinstance(function, _LogProbDispatch):
        trl_utils._ChunkedLogProbFunction = function.original


# --------------------------------------------------------------------------- LoRA layers


@functools.cache
def lora_linear_function() -> Any:
    """The autograd function y = x W^T + b + s (x A^T) B^T with a hand-written backward; same
    values and gradients as PEFT's LoRA layer. Built on first use, so importing this module does
    not import torch."""
    import torch

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float) -> Any:
            flat = x.reshape(-1, x.shape[-1])
            u = flat @ lora_a.t()
            y = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
            y.addmm_(u, lora_b.t(), alpha=scaling)  # in place: no [tokens, out] temporaries
            ctx.save_for_backward(flat, weight, lora_a, lora_b, u)
            ctx.scaling, ctx.in_shape = scaling, x.shape
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, dy: Any) -> tuple:
            flat, weight, lora_a, lora_b, u = ctx.saved_tensors
            dy = dy.reshape(-1, dy.shape[-1])
            g = (dy @ lora_b).mul_(ctx.scaling)  # the gradient at x A^T: [tokens, rank]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = (dy @ weight).addmm_(g, lora_a).view(ctx.in_shape)
            da = g.t() @ flat if ctx.needs_input_grad[3] else None
            db = (dy.t() @ u).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None
            return dx, None, None, da, db, None

    return LoraLinear


def _covered_adapter(layer: Any) -> str | None:
    """The one active adapter's name when `layer`, as it is now, is a plain CPU LoRA linear layer
    that `lora_linear_function` computes (else None: PEFT's own forward runs)."""
    import torch

    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    base = layer.get_base_layer()
    if (name not in layer.lora_A or layer.use_dora.get(name) or getattr(layer, "lora_bias", {}).get(name)
            or layer.fan_in_fan_out or type(base) is not torch.nn.Linear
            or not isinstance(layer.lora_dropout[name], torch.nn.Identity)):
        return None
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    if (base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
            or base.weight.device.type != "cpu" or not base.weight.dtype == a.dtype == b.dtype):
        return None
    return name


def _covered_call(layer: Any, x: Any, args: tuple, kwargs: dict) -> str | None:
    """`_covered_adapter` for one call: an input of the weights' dtype, no extra arguments, and
    no bf16 autocast (how the Trainer runs bf16 on CPUs with fast bf16: PEFT's layers cast)."""
    import torch

    if args or kwargs or x.dtype != layer.get_base_layer().weight.dtype or torch.is_autocast_enabled("cpu"):
        return None
    return _covered_adapter(layer)


def fuse_lora_linears(model: Any) -> tuple[int, int]:
    """Give each PEFT LoRA linear layer of `model` that the function covers as it is now a forward
    through one autograd function (`lora_linear_function`); returns (layers given it, LoRA linear
    layers). Layers with dropout, DoRA, several adapters or a trainable base bias keep PEFT's
    forward; so does any call the function does not cover (another device or dtype, bf16
    autocast, a disabled adapter).

    WHY: PEFT's layer is a base matmul, two rank-r matmuls, a scaling multiply and an add, each
    its own autograd node; the [tokens, out] products, scaled copies and sums are memory passes
    that cost more than the rank-16 matmuls themselves on a CPU. The function adds the LoRA
    term into the base output in place and does the same in the backward pass (gradient at the
    input: dy W + (s dy B) A; at A: (s dy B)^T x; at B: s dy^T (x A^T)). Measured on 2 cores,
    621 tokens, rank 16, forward and backward: 576->1536 27.7/22.9 -> 20.9/20.2 ms,
    576->576 9.0/8.8 -> 8.0/7.8 ms, 576->192 4.1 -> 3.6 ms; outputs and gradients equal
    (tests/test_sft_cpu.py)."""
    import types

    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return 0, 0

    def forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        name = _covered_call(self, x, args, kwargs)
        if name is None:
            return LoraLinear.forward(self, x, *args, **kwargs)
        base = self.get_base_layer()
        return lora_linear_function().apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                            self.lora_B[name].weight, self.scaling[name])

    fused = total = 0
    for module in model.modules():
        if type(module) is not LoraLinear:  # exactly PEFT's: subclasses (quantized bases) keep their forward
            continue
        total += 1
        if _covered_adapter(module) is not None:
            module.forward = types.MethodType(forward, module)
            fused += 1
    return fused, total


# --------------------------------------------------------------------------- allocator

MMAP_THRESHOLD_BYTES = 32 << 20


def return_freed_memory_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve every allocation of `threshold` bytes or more with its own mmap, so a
    freed block that large goes back to the OS at once (glibc only; False elsewhere).

    WHY: glibc raises its mmap threshold as large blocks are freed, so the LM head's 200 MB
    logit chunks and a long batch's activations would then stay in heap arenas that never
    shrink. WHY 32 MiB and not lower: every mmap'd block is fresh memory, and the kernel faults
    and zeroes it page by page. At 1 MiB every activation was one: a 1.3k-token LoRA step of
    SmolLM2-135M (gradient checkpointing on) took 48 CPU-seconds, 16 of them in the kernel,
    against 30 (1 in the kernel) with glibc's default (measured, one thread). Without
    checkpointing the step takes 17.7 CPU-seconds (1.2 in the kernel) at 32 MiB and about the
    same with the default, at the same peak RSS. Same as MALLOC_MMAP_THRESHOLD_=33554432; a
    MALLOC_MMAP_THRESHOLD_ set in the environment wins (glibc applied it at start; kept as is).
    """
    import ctypes
    import os
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
