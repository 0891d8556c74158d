"""Decode-step attention that skips most of a left-padded batch's padding.

WHY: a batch of prompts is left-padded to its longest prompt, and at every decode step each row
attends over the whole width, padding included. On HumanEval's 44 test prompts (109-436 tokens)
half of the prompt columns are padding, and attention was ~40% of a decode step on a CPU. The
batch is sorted longest prompt first (`inference.plan`), so its rows' first real columns rise
down the batch: cut it into a few runs of consecutive rows and each run attends only from its
own first real column on (views, no copy). The linear layers still see the whole batch.
A step over a few tokens per row (lookup decoding, inference/lookup_decoding.py) attends on the
key/value heads as they are (`packed_gqa_sdpa`); when its tokens come packed into one sequence
(`lookup_rows`), `rows_sdpa` regroups them by row around that. Everything else (prefill) goes to
transformers' SDPA unchanged.
"""
from __future__ import annotations

from typing import Any

from llamaduo.sdpa_variants import needs_the_mask, register_sdpa_variant

NAME = "sdpa_decode_runs"
RUNS = 4  # runs per batch: each is one SDPA call per layer, a few microseconds of overhead
MIN_SAVED = 0.1  # below this share of skipped columns, one call over the whole batch
PACK_MAX_QUERY = 64  # query tokens per row up to which a masked step attends on the key/value heads


def decode_runs(first_columns: list[int], width: int, runs: int = RUNS) -> list[tuple[int, int, int]] | None:
    """(start row, end row, first column) of `runs` runs of consecutive rows, or None when the
    rows' first real columns do not rise down the batch or too little would be skipped."""
    rows = len(first_columns)
    if rows < 2 * runs or any(a > b for a, b in zip(first_columns, first_columns[1:])):
        return None
    bounds = [round(k * rows / runs) for k in range(runs + 1)]
    spans = [(a, b, first_columns[a]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    skipped = sum((b - a) * first for a, b, first in spans)
    return spans if skipped >= MIN_SAVED * rows * width else None


def decode_runs_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
    """transformers' SDPA, called once per run of rows on that run's columns during decoding."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("lookup_rows") is not None:
        return rows_sdpa(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] == 1 < key.shape[0]:  # a packed lookup forward whose keyword did not get here
        raise RuntimeError("this model's layers do not pass keyword arguments down to their attention, which "
                           "prompt lookup decoding needs; set prompt_lookup_tokens: 0 (batch_inference)")
    if (1 < query.shape[2] <= PACK_MAX_QUERY and getattr(module, "num_key_value_groups", 1) > 1
            and attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.dim() == 4
            and attention_mask.shape[1] == 1 and not needs_the_mask(kwargs)):
        return packed_gqa_sdpa(module, query, key, value, attention_mask, **kwargs)
    spans = None
    if (query.shape[2] == 1 and attention_mask is not None and attention_mask.dtype == torch.bool
            and attention_mask.dim() == 4 and not needs_the_mask(kwargs)):
        valid = attention_mask[:, 0, -1, :]
        spans = decode_runs(valid.to(torch.int8).argmax(dim=-1).tolist(), valid.shape[-1])
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    parts = [sdpa_attention_forward(module, query[a:b], key[a:b, :, first:], value[a:b, :, first:],
                                    attention_mask[a:b, :, :, first:], **kwargs)[0] for a, b, first in spans]
    return torch.cat(parts, dim=0), None


def packed_gqa_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                    **kwargs: Any) -> tuple[Any, None]:
    """SDPA over a few query tokens per row with grouped-query attention, on the key/value heads
    as they are: the query heads that share a key/value head are stacked along the query axis
    (and the mask with them). WHY: with a mask, transformers' SDPA copies every key and value
    once per query head of its group (`repeat_kv`); over a whole cache that copy cost more than
    the attention itself (SmolLM2: 3 query heads per key/value head, 44 rows x 450 columns:
    ~45 ms per layer and step on 2 cores). transformers does this itself for one query token
    (`pack_gqa`); this is the same for a few."""
    import torch

    rows, heads, q, dim = query.shape
    groups = getattr(module, "num_key_value_groups", 1)  # 1: one query head per key/value head
    packed = query.reshape(rows, heads // groups, groups * q, dim)  # head k*groups + r, token j -> row r*q + j
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask[:, :, :, :key.shape[-2]].repeat(1, 1, groups, 1),
        scale=kwargs.get("scaling"))
    return out.reshape(rows, heads, q, dim).transpose(1, 2).contiguous(), None


def rows_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *,
              lookup_rows: tuple[Any, Any], **kwargs: Any) -> tuple[Any, None]:
    """Attention for a packed lookup-decoding forward: `query` is [1, heads, tokens, dim], token t
    belonging to cache row `lookup_rows[0][t]` at offset `lookup_rows[1][t]` of that row's block;
    `key`/`value` are the per-row cache [rows, kv heads, columns, dim] and `attention_mask`
    [rows, 1, longest block, columns]. The tokens are spread into per-row blocks (zeros where a
    row has fewer), attended as `packed_gqa_sdpa` does, and gathered back to [1, tokens, heads, dim].
    WHY: the linear layers of a packed forward see only real tokens; attention needs each row's
    own cache, so only it works on blocks."""
    token_rows, token_slots = lookup_rows
    rows, block = attention_mask.shape[0], attention_mask.shape[2]
    blocks = query.new_zeros(rows, query.shape[1], block, query.shape[-1])
    blocks[token_rows, :, token_slots] = query[0].transpose(0, 1)
    out, _ = packed_gqa_sdpa(module, blocks, key, value, attention_mask, **kwargs)
    return out[token_rows, token_slots][None], None


def use_decode_runs(model: Any) -> bool:
    """Switch a model that attends with SDPA to `decode_runs_sdpa` (False: left as it was)."""
    if getattr(model.config, "_attn_implementation", None) == NAME:
        return True
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        model.set_attn_implementation(register_sdpa_variant(NAME, decode_runs_sdpa))
    except (ImportError, AttributeError, ValueError):  # an older transformers: plain SDPA
        return False
    return model.config._attn_implementation == NAME


def use_plain_sdpa(model: Any) -> None:
    """Undo `use_decode_runs` (the bench's and the tests' baseline arms share one model)."""
    if getattr(model.config, "_attn_implementation", None) == NAME:
        model.set_attn_implementation("sdpa")
