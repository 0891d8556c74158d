"""Greedy decoding that checks several likely next tokens per forward (batched prompt lookup).

WHY: answers often copy: a code answer restates its prompt's signature and docstring, an
extraction answer restates the input's values, and a small model that loops repeats its own
earlier lines. When a row's last few tokens occurred before (in its prompt or its answer so
far), the tokens that followed them then are a cheap guess of what follows now (a "draft",
as in transformers' `prompt_lookup_num_tokens` and vLLM's n-gram speculator). One forward over
the pending token plus the draft gives the model's own greedy choice at every position; the
draft is kept up to its first wrong token, and the model's choice there is kept too. So every
forward yields at least the token plain decoding would, and the answers are the ones plain
greedy decoding gives (up to floating-point ties: a forward over 9 positions sums in another
order than 9 forwards over 1).

On a CPU a forward over 9 tokens per row costs ~4.7x one over 1 token (SmolLM2-135M, 44 rows:
1213 against 255 ms), so every kept draft token is nearly free. transformers' own prompt lookup
takes one row at a time; here the whole batch goes through each forward, each row with its own
draft, in a right-padded cache where each row's positions are its own (`RowCache`).

A forward is packed: its input is one sequence of every unfinished row's tokens, each with its
own position, so the linear layers and the LM head (~80% of a forward) see only real tokens:
no padding for rows whose draft is short or empty, nothing for finished rows still in the
cache. Only attention regroups the tokens by row (`decode_attention.rows_sdpa`, told which row
each token is by the `lookup_rows` keyword the model passes down to its attention, as
transformers passes `cu_seq_lens_q` for padding-free batches). Measured (SmolLM2-135M, 44 rows,
2 cores): with 60% of the rows drafting 0-3 tokens a forward took 0.89 s against 1.16 s as one
padded [rows, 1 + longest draft] block; on HumanEval answers, where nearly every row drafts the
full 8, 16% fewer token positions and the same time within noise.

Greedy only: sampled decoding (do_sample with temperature > 0) keeps the `generate` path.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from llamaduo.inference.decode_attention import NAME as DECODE_RUNS
from llamaduo.inference.generation import DRAFT_TOKENS
from llamaduo.inference.kv_cache import CACHE_ARG

logger = logging.getLogger("llamaduo.inference")

#: the longest run of last tokens looked up; shorter ones are tried when it did not occur
NGRAM_MAX = 3
#: finished rows leave the batch (a copy of the cache) once they are this share of it
LEAVE_SHARE = 0.125
#: vocabulary rows per matmul of the greedy head (`greedy_picks`)
HEAD_CHUNK = 1024


class NgramDrafter:
    """One row's tokens and where each of its n-grams last occurred with a token after it."""

    def __init__(self, tokens: Sequence[int], n_max: int = NGRAM_MAX):
        self.seq: list[int] = []
        self.n_max = n_max
        self.last: list[dict[tuple[int, ...], int]] = [{} for _ in range(n_max + 1)]
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens. The n-grams ending just before each new token get it as their
        continuation; the row's own last n-gram is not indexed yet, so a lookup finds its most
        recent *earlier* occurrence."""
        for token in tokens:
            self.seq.append(int(token))
            p = len(self.seq) - 1
            for n in range(1, min(self.n_max, p) + 1):
                self.last[n][tuple(self.seq[p - n:p])] = p

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the row's last n tokens
        (longest n first); [] when none occurred or k < 1."""
        if k < 1:
            return []
        for n in range(min(self.n_max, len(self.seq)), 0, -1):
            at = self.last[n].get(tuple(self.seq[-n:]))
            if at is not None:
                return self.seq[at:at + k]
        return []


@dataclass
class _Slots:
    """Where the current forward's keys/values go, shared by every layer of a `RowCache`."""

    rows: int = 0              # rows of the batch (the buffers' first dimension)
    capacity: int = 0          # columns each layer's buffer is sized for (grows by doubling)
    token_rows: torch.Tensor | None = None   # [tokens] the cache row of each token of a packed forward
    token_cols: torch.Tensor | None = None   # [tokens] the column it is written at (its position)
    width: int = 0             # columns attention reads this forward (max(token_cols) + 1)
    group: torch.Tensor | None = None  # prefill: the batch rows this forward is (from column 0)


class RowLayer(DynamicLayer):
    """One layer's keys/values, right-padded: row r keeps its positions at columns [0, n_r).
    Each packed forward writes every token at its own row and column (`_Slots.token_rows`,
    `token_cols`), so rows that kept different numbers of draft tokens stay contiguous without
    moving anything."""

    def __init__(self, slots: _Slots):
        super().__init__()
        self.slots = slots
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.slots
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._k is None or self._k.shape[-2] < s.capacity:
            self._grow(key_states, s.capacity)
        if s.group is not None:  # prefill of a group of rows: the whole prompt from column 0
            q = key_states.shape[-2]
            self._k[s.group, :, :q] = key_states
            self._v[s.group, :, :q] = value_states
            return key_states, value_states
        # a packed forward: key_states is [1, kv heads, tokens, dim]; token t goes to its row's column
        self._k[s.token_rows, :, s.token_cols] = key_states[0].transpose(0, 1)
        self._v[s.token_rows, :, s.token_cols] = value_states[0].transpose(0, 1)
        self.keys, self.values = self._k[:, :, :s.width], self._v[:, :, :s.width]
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, capacity: int) -> None:
        shape = (self.slots.rows, like.shape[1], capacity, like.shape[-1])
        k, v = like.new_zeros(shape), like.new_zeros(shape)  # zeros: masked columns are still multiplied
        if self._k is not None:
            old = self._k.shape[-2]
            k[:, :, :old], v[:, :, :old] = self._k, self._v
        self._k, self._v = k, v

    def keep_rows(self, index: torch.Tensor, columns: int) -> None:
        """Only these rows stay (their first `columns` columns are copied)."""
        if self._k is not None:
            # zeros, not empty: attention multiplies masked columns by 0, and 0 * NaN garbage is NaN
            k, v = self._k.new_zeros((len(index), *self._k.shape[1:])), self._v.new_zeros((len(index), *self._v.shape[1:]))
            k[:, :, :columns], v[:, :, :columns] = self._k[index, :, :columns], self._v[index, :, :columns]
            self._k, self._v = k, v

    def get_seq_length(self) -> int:
        return self.slots.width


class RowCache(Cache):
    """A transformers Cache of `RowLayer`s for `num_layers` layers."""

    def __init__(self, num_layers: int, rows: int, capacity: int):
        self.slots = _Slots(rows=rows, capacity=capacity)
        super().__init__(layers=[RowLayer(self.slots) for _ in range(num_layers)])

    def ensure(self, columns: int) -> None:
        """Room for `columns` columns per row (doubling, so growing is amortised)."""
        while self.slots.capacity < columns:
            self.slots.capacity *= 2

    def keep_rows(self, index: torch.Tensor, columns: int) -> None:
        for layer in self.layers:
            layer.keep_rows(index, columns)
        self.slots.rows = len(index)


def supports_lookup(model: Any) -> bool:
    """Whether this model can run `lookup_generate`: the CPU decode attention
    (inference/decode_attention.py: SDPA that takes our boolean mask and attends on the
    key/value heads as they are; plain SDPA would copy the cache per query head at every step)
    and full attention in every layer (a sliding window would need its own mask)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != DECODE_RUNS:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(t == "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is None


@dataclass
class _Row:
    """One answer being generated."""

    index: int                 # its place in the caller's list
    drafter: NgramDrafter
    pending: int               # the newest token: known, not yet in the cache
    start: int                 # its column: the row's cache holds columns [0, start)
    draft_len: int = DRAFT_TOKENS  # tokens its next draft may have (`next_draft_length`)
    new: list[int] = field(default_factory=list)
    done: bool = False


def next_draft_length(current: int, drafted: int, kept: int, most: int) -> int:
    """How many tokens a row drafts next, from how its last draft fared.

    WHY: a forward costs ~2.4 ms per token it reads plus ~0.33 s for 44 rows of 1 token
    (SmolLM2-135M, 2 cores), so a row whose drafts keep failing (an answer in new words, not
    copied) should stop paying for 8 rejected tokens: 44 rows x 9 tokens take 1.2 s a forward,
    x 2 tokens 0.45 s. A fully kept draft grows by 4 (up to `most`); a draft cut after `kept`
    tokens shrinks to 2 x kept + 1 (1 when its first token was wrong); no draft (nothing to look
    up) leaves it as it was. Measured (docs/batch_inference.md, "Prompt lookup"): 44 prose answers
    43 s against 62 s always drafting `most` (42.5 s with no drafts at all); the HumanEval
    answers, which copy, the same time within noise. The answers stay greedy's."""
    if drafted == 0:
        return current
    if kept == drafted:
        return min(most, current + 4)
    return max(1, min(current, 2 * kept + 1))


def lookup_generate(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                    pad_id: int, draft_tokens: int = DRAFT_TOKENS,
                    groups: Callable[[list[int]], list[list[int]]] | None = None) -> list[list[int]]:
    """Greedy new token ids for each prompt: up to `max_new_tokens`, ending with the first stop
    token when there is one (as `generate` returns them). `groups` splits the prompts into
    prefill groups of similar length (row indices); default: one group."""
    started, stops = time.perf_counter(), set(int(t) for t in stop_ids)
    lengths = [len(p) for p in prompts]
    if min(lengths, default=1) < 1:
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    cache = RowCache(model.config.num_hidden_layers, len(prompts),
                     max(lengths) + min(max_new_tokens, 64) + draft_tokens + 1)
    rows = [_Row(i, NgramDrafter(p), int(p[-1]), len(p) - 1, draft_tokens) for i, p in enumerate(prompts)]
    split = _body_and_head(model)
    _prefill(model, split, cache, prompts, groups(lengths) if groups else [list(range(len(prompts)))], pad_id, device)
    forwards = drafted = kept = 0
    live = list(rows)  # the rows in the cache, in its row order
    while any(not r.done for r in live):
        choice, drafts = _forward(model, split, cache, live, max_new_tokens, device)
        forwards += 1
        for r, draft, picks in zip(live, drafts, choice):
            if r.done:
                continue
            n = 0
            while n < len(draft) and draft[n] == picks[n]:
                n += 1
            drafted, kept = drafted + len(draft), kept + n
            r.draft_len = next_draft_length(r.draft_len, len(draft), n, draft_tokens)
            _accept(r, draft[:n] + [picks[n]], stops, max_new_tokens)
        finished = [j for j, r in enumerate(live) if r.done]
        if finished and len(finished) < len(live) and len(finished) >= max(1, LEAVE_SHARE * len(live)):
            keep = [j for j, r in enumerate(live) if not r.done]
            cache.keep_rows(torch.tensor(keep, device=device), max(live[j].start for j in keep))
            live = [live[j] for j in keep]
    logger.debug("lookup decoding: %d rows, %d forwards, %d of %d draft tokens kept, %.1f s",
                 len(rows), forwards, kept, drafted, time.perf_counter() - started)
    return [r.new for r in rows]


def _prefill(model: Any, split: tuple[Any, torch.nn.Linear] | None, cache: RowCache, prompts: Sequence[Sequence[int]],
             groups: list[list[int]], pad_id: int, device: torch.device) -> None:
    """Every prompt but its last token into the cache, group by group, from column 0 (no logits:
    the first new token comes from the first decode forward, over each prompt's last token)."""
    run, head_off = (split[0], {}) if split else (model, {"logits_to_keep": 1})
    for group in groups:
        width = max(len(prompts[i]) for i in group) - 1
        if width < 1:
            continue
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        for j, i in enumerate(group):
            ids[j, :len(prompts[i]) - 1] = torch.tensor(list(prompts[i][:-1]), dtype=torch.long)
        positions = torch.arange(width).expand(len(group), -1)
        cache.slots.group, cache.slots.width = torch.tensor(group, device=device), width
        with torch.inference_mode():
            run(input_ids=ids.to(device), attention_mask=_mask(torch.zeros(len(group), dtype=torch.long), width, width).to(device),
                position_ids=positions.to(device), use_cache=True, **{CACHE_ARG: cache}, **head_off)
    cache.slots.group = None


def _forward(model: Any, split: tuple[Any, torch.nn.Linear] | None, cache: RowCache, live: list[_Row],
             max_new_tokens: int, device: torch.device) -> tuple[list[list[int]], list[list[int]]]:
    """One packed forward over every unfinished row's pending token and draft; returns each
    live row's greedy choices at its tokens ([] for finished rows) and the drafts. `split`:
    `_body_and_head(model)`, looked up once per batch."""
    drafts = [[] if r.done else r.drafter.draft(min(r.draft_len, max_new_tokens - len(r.new) - 1)) for r in live]
    ids: list[int] = []
    rows: list[int] = []
    slots: list[int] = []
    counts: list[int] = []
    for j, (r, d) in enumerate(zip(live, drafts)):
        n = 0 if r.done else 1 + len(d)
        ids += [r.pending, *d][:n]
        rows += [j] * n
        slots += range(n)
        counts.append(n)
    q = max(counts)
    starts = torch.tensor([r.start for r in live], dtype=torch.long)
    token_rows, token_slots = torch.tensor(rows), torch.tensor(slots)
    positions = starts[token_rows] + token_slots
    width = int(positions.max()) + 1
    cache.ensure(width)
    cache.slots.token_rows, cache.slots.token_cols, cache.slots.width = token_rows.to(device), positions.to(device), width
    inputs = dict(input_ids=torch.tensor([ids], device=device), attention_mask=_mask(starts, q, width).to(device),
                  position_ids=positions[None].to(device), use_cache=True,
                  lookup_rows=(token_rows.to(device), token_slots.to(device)), **{CACHE_ARG: cache})
    with torch.inference_mode():
        if split is None:
            picks = model(**inputs).logits[0].argmax(dim=-1).tolist()
        else:
            body, head = split
            picks = greedy_picks(body(**inputs).last_hidden_state[0], head.weight, head.bias).tolist()
    return [picks[end - n:end] for n, end in zip(counts, accumulate(counts))], drafts


def _body_and_head(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """(the model without its LM head, the head) when the head is a plain linear layer; None
    otherwise (the whole model's logits are used). The argmax of the head's output is the argmax
    of the model's logits: what some models do after the head (a positive logit scale, a tanh
    soft cap) keeps the order of the logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(head, torch.nn.Linear) or body is None or body is model:
        return None
    return body, head


def greedy_picks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """argmax over the vocabulary of `hidden @ weight.T + bias`, one row per hidden state,
    computed `HEAD_CHUNK` vocabulary rows at a time (the first index wins a tie, as in argmax).

    WHY: the LM head is ~1/3 of a lookup forward's cost per token on a CPU (49k x 576 for
    SmolLM2): as one matmul its [tokens, vocab] output (39 MB at 200 tokens) streams through
    memory; chunk by chunk it stays in cache and only each chunk's maximum is kept. Measured on
    2 cores: 200 tokens 210 -> 120 ms, 44 tokens 59 -> 43 ms, the same picks."""
    values, indices = [], []
    for start in range(0, weight.shape[0], HEAD_CHUNK):
        end = start + HEAD_CHUNK
        logits = torch.nn.functional.linear(hidden, weight[start:end], None if bias is None else bias[start:end])
        best = logits.argmax(dim=-1)
        values.append(logits.gather(-1, best[:, None])[:, 0])
        indices.append(best + start)
    which = torch.stack(values, dim=-1).argmax(dim=-1, keepdim=True)  # the first chunk holding the maximum
    return torch.stack(indices, dim=-1).gather(-1, which)[:, 0]


def _mask(starts: torch.Tensor, q: int, width: int) -> torch.Tensor:
    """[rows, 1, q, width] boolean: the token at position starts[r] + j sees columns up to it."""
    limit = starts[:, None] + torch.arange(q)
    return (torch.arange(width)[None, None, :] <= limit[:, :, None])[:, None]


def _accept(row: _Row, tokens: list[int], stops: set[int], max_new_tokens: int) -> None:
    """Append the kept tokens (the pending one and the kept draft are now in the cache), cut at
    the first stop token or the token limit."""
    row.start += len(tokens)  # the pending token and the kept draft tokens now sit in the cache
    tokens = tokens[:max_new_tokens - len(row.new)]
    end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
    if end is not None:
        tokens, row.done = tokens[:end], True
    row.new += tokens
    row.drafter.extend(tokens)
    row.pending = tokens[-1]
    if len(row.new) >= max_new_tokens:
        row.done = True
