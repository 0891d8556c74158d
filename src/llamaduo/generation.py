"""Public entry points for generating with a local (fine-tuned) model.

A thin facade over `llamaduo.inference` so callers outside batch inference (the benchmark, a
future serving script) need one import: resolve a model reference, load it, and generate
answers for chat prompts in length-sorted, left-padded batches.
"""
from __future__ import annotations

from typing import Sequence

from llamaduo.inference.hf_backend import Generated, GenSettings, HFGenerator, load_model, load_tokenizer, stop_token_ids
from llamaduo.inference.model_ref import ModelRef, resolve_model_ref
from llamaduo.inference.plan import build_work_items, plan_batches
from llamaduo.inference.prompts import PromptRecord, WorkItem, tokenize_prompts

__all__ = [
    "Generated", "GenSettings", "HFGenerator", "ModelRef", "PromptRecord", "WorkItem",
    "build_work_items", "generate_chats", "load_model", "load_tokenizer", "plan_batches",
    "resolve_model_ref", "stop_token_ids", "tokenize_prompts",
]


def generate_chats(generator: HFGenerator, chats: Sequence[Sequence[dict]], batch_size: int,
                   seed: int = 0) -> list[Generated]:
    """Answer each chat once, batched the way batch_inference.py does; results in input order."""
    records = [PromptRecord(i, str(i), "", "", tuple(c)) for i, c in enumerate(chats)]
    ids = tokenize_prompts(records, generator.tokenizer, batch_size=max(1, len(records)))
    items = build_work_items(records, ids, repeat=1, seed=seed)
    results: dict[int, Generated] = {}
    for batch in plan_batches(items, batch_size):
        for item, out in zip(batch, generator.generate(batch)):
            results[item.row_index] = out
    return [results[i] for i in range(len(records))]
