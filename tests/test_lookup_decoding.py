"""Batched prompt-lookup decoding (inference/lookup_decoding.py): the answers are the ones
token-by-token greedy decoding gives, while forwards really check several tokens per row."""
from __future__ import annotations

import pytest
import torch

from llamaduo.inference import decode_attention, lookup_decoding
from llamaduo.inference.generation import GenSettings
from llamaduo.inference.hf_backend import HFGenerator, load_model, load_tokenizer
from llamaduo.inference.lookup_decoding import NgramDrafter, _accept, _Row, next_draft_length, supports_lookup
from llamaduo.inference.model_ref import resolve_model_ref
from llamaduo.inference.plan import build_work_items, plan_batches
from llamaduo.inference.prompts import PromptRecord, tokenize_prompts

# prompts whose answers copy their prompt (code to fix, JSON to edit), repeat themselves (a
# count that loops) or are short, of very different lengths; some answers reach the token limit
PROMPTS = [
    "Fix the typo in this Python code and return the whole code:\n```python\ndef area(width, height):\n"
    "    \"\"\"Return the area of a rectangle.\"\"\"\n    return width * heigth\n```",
    "Return this JSON with the key \"name\" changed to \"title\": "
    "{\"name\": \"Report\", \"pages\": 12, \"author\": \"Ann Lee\", \"year\": 2021}",
    "Write the numbers from 1 to 30 separated by commas.",
    "Rewrite this sentence in upper case: the quick brown fox jumps over the lazy dog.",
    "Translate to French: I like apples.",
]


def _items(tok, prompts):
    records = [PromptRecord(i, f"p{i}", p, "", ({"role": "user", "content": p},)) for i, p in enumerate(prompts)]
    return plan_batches(build_work_items(records, tokenize_prompts(records, tok, 16), repeat=1, seed=0), 64)[0]


@pytest.fixture(scope="module")
def real_model(embedded_model_dir):
    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    return load_model(ref, tok, "cpu", torch.float32), tok


def _decode_shapes(model) -> tuple[list[tuple[int, int, int]], object]:
    """(rows in the cache, longest block of tokens of a row, tokens) of each decode forward
    (the forwards of the model's body, without its LM head, that carry `lookup_rows`; the
    prefill's do not)."""
    shapes: list[tuple[int, int, int]] = []

    def record(_m, _a, kw):
        if kw.get("lookup_rows") is not None:
            assert kw["input_ids"].shape[0] == 1, "a decode forward is one packed sequence"
            shapes.append((kw["attention_mask"].shape[0], kw["attention_mask"].shape[2], kw["input_ids"].shape[1]))

    return shapes, model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)


def test_greedy_picks_chunk_by_chunk_equal_the_argmax_of_the_whole_head():
    """The chunked greedy head gives argmax(hidden @ W.T + b) for a vocabulary that is not a
    multiple of the chunk, with a bias, and keeps the first index when two chunks tie."""
    torch.manual_seed(0)
    vocab = 3 * lookup_decoding.HEAD_CHUNK + 17
    weight, bias, hidden = torch.randn(vocab, 24), torch.randn(vocab), torch.randn(40, 24)
    for b in (None, bias):
        full = torch.nn.functional.linear(hidden, weight, b).argmax(dim=-1)
        assert torch.equal(lookup_decoding.greedy_picks(hidden, weight, b), full)
    # row 5 of the vocabulary copied into the last chunk, and made every token's best: index 5 wins
    weight[-3] = weight[5] = hidden.sum(0) * 10
    picks = lookup_decoding.greedy_picks(hidden, weight, None)
    assert torch.equal(picks, torch.nn.functional.linear(hidden, weight).argmax(dim=-1))
    assert (picks == 5).sum() > 30


def test_same_answers_as_token_by_token_with_fewer_forwards(real_model, monkeypatch):
    """The real model, greedy, 90 new tokens (past the cache's first size, so it grows): every
    answer, its token count and finish reason equal plain decoding's; decode forwards check more
    than one token per row, drafts are kept, there are far fewer forwards than tokens, and rows
    that stopped leave the batch."""
    model, tok = real_model
    monkeypatch.setattr(lookup_decoding, "LEAVE_SHARE", 0.01)  # every finished row leaves at once
    items = _items(tok, PROMPTS)
    settings = GenSettings(90, False, 0.0, 1.0, 7)
    plain = HFGenerator(model, tok, settings, lookup_tokens=0).generate(items)
    calls: list[int] = []  # the row of each accepted forward result
    real_accept = lookup_decoding._accept
    monkeypatch.setattr(lookup_decoding, "_accept", lambda r, t, *a: calls.append(r.index) or real_accept(r, t, *a))
    steps, hook = _decode_shapes(model)
    try:
        looked = HFGenerator(model, tok, settings).generate(items)
    finally:
        hook.remove()
    assert [(o.text, o.new_tokens, o.finish_reason) for o in looked] == \
        [(o.text, o.new_tokens, o.finish_reason) for o in plain]
    assert {o.finish_reason for o in plain} == {"stop", "length"}, "the prompts must include short and long answers"
    assert any(q > 1 for _, q, _ in steps) and max(q for _, q, _ in steps) <= lookup_decoding.DRAFT_TOKENS + 1, steps
    # packed: a forward holds only real tokens, so rows with short drafts add no padding
    assert any(n < rows * q for rows, q, n in steps), steps
    forwards = [calls.count(i) for i in range(len(items))]  # forwards each row took part in
    tokens = [o.new_tokens for o in plain]
    assert sum(forwards) < 0.8 * sum(tokens), (forwards, tokens)
    assert any(f <= t / 2 for f, t in zip(forwards, tokens)), "a row that copies must take far fewer forwards"
    rows = [r for r, _, _ in steps]
    assert rows[0] == len(items) and rows[-1] < rows[0] and rows == sorted(rows, reverse=True), rows


def test_answers_do_not_depend_on_the_draft_length(real_model):
    """1 and 5 draft tokens per forward give the same answers (the draft only decides how many
    tokens a forward checks, never which)."""
    model, tok = real_model
    items = _items(tok, PROMPTS[:3])
    settings = GenSettings(30, False, 0.0, 1.0, 7)
    answers = [HFGenerator(model, tok, settings, lookup_tokens=k).generate(items) for k in (1, 5)]
    assert answers[0] == answers[1]


def test_sampling_and_a_zero_setting_keep_generate(real_model):
    model, tok = real_model
    assert HFGenerator(model, tok, GenSettings(8, True, 0.8, 0.95, 7)).lookup_tokens == 0
    assert HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 7), lookup_tokens=0).lookup_tokens == 0
    assert HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 7)).lookup_tokens == lookup_decoding.DRAFT_TOKENS
    # temperature 0 is greedy even with do_sample (as in vLLM and the OpenAI API)
    assert HFGenerator(model, tok, GenSettings(8, True, 0.0, 1.0, 7)).lookup_tokens == lookup_decoding.DRAFT_TOKENS


def test_drafter_continues_the_latest_earlier_occurrence_longest_match_first():
    d = NgramDrafter([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3])
    assert d.draft(3) == [7, 5, 2]       # (2, 3) last occurred before the tail at positions 5-6
    d.extend([8])                         # tail (2, 3, 8): never before; (3, 8), (8): neither
    assert d.draft(4) == []
    d.extend([1, 2])                      # (8, 1, 2) no; (1, 2) last at 4-5 -> 3, 7, 5, 2
    assert d.draft(4) == [3, 7, 5, 2] and d.draft(2) == [3, 7] and d.draft(0) == []
    assert NgramDrafter([4, 4, 4]).draft(5) == [4]      # the continuation ends at the row's end
    assert NgramDrafter([5]).draft(3) == [] and NgramDrafter([]).draft(3) == []


def test_accept_cuts_at_the_first_stop_token_and_at_the_limit():
    row = _Row(0, NgramDrafter([1, 2]), pending=2, start=1)
    _accept(row, [5, 6, 0, 7], {0}, max_new_tokens=10)
    assert row.new == [5, 6, 0] and row.done and row.start == 5
    row = _Row(0, NgramDrafter([1, 2]), pending=2, start=1, new=[3, 3, 3])
    _accept(row, [4, 4, 4], {0}, max_new_tokens=5)
    assert row.new == [3, 3, 3, 4, 4] and row.done and row.pending == 4
    row = _Row(0, NgramDrafter([1, 2]), pending=2, start=1)
    _accept(row, [4, 5], {0}, max_new_tokens=5)
    assert row.new == [4, 5] and not row.done and row.pending == 5 and row.drafter.seq == [1, 2, 4, 5]


def test_only_models_with_the_decode_attention_and_full_attention_in_every_layer(real_model):
    model, tok = real_model
    HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 7), decode_runs=False)
    assert not supports_lookup(model)  # plain SDPA: copies the cache per query head at every step
    HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 7))
    assert supports_lookup(model)

    class Config:
        _attn_implementation = decode_attention.NAME

    class Model:
        config = Config()

    assert supports_lookup(Model())
    Config.layer_types = ["full_attention", "sliding_attention"]
    assert not supports_lookup(Model())
    Config.layer_types = None
    Config.sliding_window = 4096
    assert not supports_lookup(Model())
    Config.sliding_window, Config._attn_implementation = None, "eager"
    assert not supports_lookup(Model())


def test_packed_gqa_attention_equals_transformers_sdpa():
    """A masked step over a few tokens per row attends on the key/value heads as they are; the
    result is transformers' SDPA (which copies each key/value head per query head) on the same
    inputs: 3 query heads per key/value head, rows of different lengths in a right-padded cache."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attention(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    torch.manual_seed(0)
    rows, kv_heads, q, width, dim = 4, 2, 5, 23, 16
    query = torch.randn(rows, kv_heads * 3, q, dim)
    key, value = torch.randn(rows, kv_heads, width, dim), torch.randn(rows, kv_heads, width, dim)
    mask = lookup_decoding._mask(torch.tensor([18, 3, 10, 0]), q, width)
    ours, _ = decode_attention.decode_runs_sdpa(Attention(), query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Attention(), query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (rows, q, kv_heads * 3, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # the mask matters: a row that may see fewer columns gets another result
    assert not torch.allclose(ours[1], decode_attention.decode_runs_sdpa(
        Attention(), query, key, value, lookup_decoding._mask(torch.tensor([18, 9, 10, 0]), q, width), scaling=0.25)[0][1])


@pytest.mark.parametrize("groups", [3, 1])
def test_packed_tokens_attend_as_their_rows_blocks(groups):
    """A packed forward's attention (`rows_sdpa`): tokens of different rows, with different
    block lengths (0 for a finished row), in one sequence; each token's output is the one its
    row's block gets from the block attention, with and without grouped-query heads."""
    class Attention(torch.nn.Module):
        num_key_value_groups = groups
        is_causal = True

    torch.manual_seed(1)
    kv_heads, width, dim = 2, 23, 16
    counts, starts = [3, 0, 1, 5], torch.tensor([12, 4, 20, 7])  # row 1 is finished: no tokens
    rows = torch.tensor([r for r, n in enumerate(counts) for _ in range(n)])
    slots = torch.tensor([j for n in counts for j in range(n)])
    query = torch.randn(1, kv_heads * groups, len(rows), dim)
    key, value = torch.randn(4, kv_heads, width, dim), torch.randn(4, kv_heads, width, dim)
    mask = lookup_decoding._mask(starts, max(counts), width)
    out, _ = decode_attention.decode_runs_sdpa(Attention(), query, key, value, mask, scaling=0.25,
                                               lookup_rows=(rows, slots))
    assert out.shape == (1, len(rows), kv_heads * groups, dim)
    for t, (r, j) in enumerate(zip(rows.tolist(), slots.tolist())):
        seen = starts[r] + j + 1  # the token at position starts[r] + j sees columns up to it
        q = query[0, :, t][:, None]  # [heads, 1, dim]
        k = key[r].repeat_interleave(groups, 0)[:, :seen]
        v = value[r].repeat_interleave(groups, 0)[:, :seen]
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)[:, 0]
        torch.testing.assert_close(out[0, t], expected, rtol=1e-5, atol=1e-6)


def test_draft_length_follows_how_the_last_draft_fared():
    """A row whose drafts are kept drafts more (up to the setting); one whose drafts fail drafts
    less, down to 1 token when its first draft token was wrong; no draft changes nothing."""
    assert next_draft_length(4, drafted=4, kept=4, most=8) == 8
    assert next_draft_length(8, drafted=8, kept=8, most=8) == 8
    assert next_draft_length(2, drafted=2, kept=2, most=16) == 6
    assert next_draft_length(8, drafted=8, kept=0, most=8) == 1
    assert next_draft_length(8, drafted=8, kept=2, most=8) == 5
    assert next_draft_length(3, drafted=3, kept=2, most=8) == 3  # never grows on a cut draft
    assert next_draft_length(1, drafted=1, kept=0, most=8) == 1  # always at least one: it can recover
    assert next_draft_length(5, drafted=0, kept=0, most=8) == 5
    # a short draft (the token limit or the history cut it) that was fully kept still grows
    assert next_draft_length(8, drafted=2, kept=2, most=12) == 12


def test_rows_whose_drafts_fail_draft_less(real_model, monkeypatch):
    """On the real model, a row's draft length follows `next_draft_length`: after a forward
    that rejected its first draft token, the row's next draft has at most 1 token."""
    model, tok = real_model
    seen: list[tuple[int, int, int]] = []  # (row, drafted, kept) of each forward
    real_rule = lookup_decoding.next_draft_length

    def spy(current, drafted, kept, most):
        seen.append((current, drafted, kept))
        return real_rule(current, drafted, kept, most)

    monkeypatch.setattr(lookup_decoding, "next_draft_length", spy)
    items = _items(tok, PROMPTS[:3])
    HFGenerator(model, tok, GenSettings(40, False, 0.0, 1.0, 7)).generate(items)
    assert any(k < d for _, d, k in seen) and any(k == d > 0 for _, d, k in seen), seen
    assert all(d <= c for c, d, _ in seen), "a draft is never longer than the row's draft length"
    assert any(c == 1 for c, _, _ in seen), "some row came down to 1-token drafts"


def test_a_packed_forward_without_its_rows_is_a_clear_error():
    """A model whose layers drop the `lookup_rows` keyword would attend one packed row against
    a cache of several: a clear error naming the setting that turns lookup off, not a shape error."""
    class Attention(torch.nn.Module):
        num_key_value_groups = 3

    query, key = torch.randn(1, 6, 7, 16), torch.randn(4, 2, 23, 16)
    with pytest.raises(RuntimeError, match="prompt_lookup_tokens: 0"):
        decode_attention.decode_runs_sdpa(Attention(), query, key, key, lookup_decoding._mask(torch.tensor([1, 2, 3, 4]), 3, 23))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "gemma"])
def test_other_architectures_give_generates_answers(arch):
    """Tiny random models of other transformers architectures (GQA, q/k norms, qkv biases,
    scaled embeddings): their layers pass `lookup_rows` down to attention, and the packed
    lookup forwards give token-by-token `generate`'s greedy answers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"head_dim": 16} if arch in ("qwen3", "gemma") else {}
    config = AutoConfig.for_model(arch, vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **extra)
    if hasattr(config, "sliding_window"):
        config.sliding_window = None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    assert decode_attention.use_decode_runs(model) and supports_lookup(model)
    prompts = [[1, 5, 7, 9, 5, 7], [3, 4, 2], [8, 8, 8, 8, 9, 10, 11, 12]]
    looked = lookup_decoding.lookup_generate(model, prompts, 20, [0], 0)
    plain = [model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=0,
                            pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert looked == plain
