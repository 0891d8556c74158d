"""The transformers backend: load the fine-tuned model and generate in padded batches.

Batches arrive already length-sorted (see `llamaduo.inference.plan`), are left-padded (decoder-only
models continue from the last position, so padding must sit on the left), and every row stops
at eos or the template's end-of-turn token. Only the newly generated tokens are decoded: the
prompt is sliced off by position, never by searching for "assistant\\n" in the text.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Sequence

import torch

from llamaduo.errors import UsageError
# the torch-free half (settings, results, stop strings) lives in generation.py; re-exported here
from llamaduo.inference.generation import (  # noqa: F401
    DRAFT_TOKENS,
    END_OF_TURN_TOKENS,
    FINISH_LENGTH,
    FINISH_STOP,
    Generated,
    GenSettings,
    cut_at_stop_strings,
)
from llamaduo.inference.decode_attention import use_decode_runs, use_plain_sdpa
from llamaduo.inference.kv_cache import CACHE_ARG, growing_cache
from llamaduo.inference.lookup_decoding import lookup_generate, supports_lookup
from llamaduo.inference.model_ref import ModelRef
from llamaduo.inference.prompts import WorkItem
from llamaduo.inference.sampling import PerRowSampler

logger = logging.getLogger("llamaduo.inference")

def load_tokenizer(ref: ModelRef):
    """The tokenizer saved by training (fallback: the base's), set up for left padding.

    Raises UsageError when no chat template can be found, since prompting a chat model
    without its template produces garbage silently.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.tokenizer_path, revision=ref.tokenizer_revision)
    if not tokenizer.chat_template and ref.is_adapter and ref.base_path and ref.tokenizer_path != ref.base_path:
        base_tok = AutoTokenizer.from_pretrained(ref.base_path, revision=ref.base_revision)
        tokenizer.chat_template = base_tok.chat_template
    if not tokenizer.chat_template:
        raise UsageError(f"model '{ref.model_id}' has no chat template (tokenizer at {ref.tokenizer_path}); "
                         "save the tokenizer with its template when fine-tuning")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """eos plus every known end-of-turn token present in the vocabulary."""
    ids: list[int] = []
    sources = [tokenizer.eos_token_id]
    if generation_config is not None:
        eos = generation_config.eos_token_id
        sources += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    vocab = tokenizer.get_vocab()
    sources += [vocab.get(t) for t in END_OF_TURN_TOKENS if t in tokenizer.all_special_tokens or
                t in getattr(tokenizer, "added_tokens_encoder", {})]
    for i in sources:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def load_model(ref: ModelRef, tokenizer, device: str, dtype: torch.dtype,
               load_in_8bit: bool = False, load_in_4bit: bool = False):
    """Load weights (and merge a LoRA adapter into them, which makes decoding faster)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype}
    quantized = (load_in_8bit or load_in_4bit) and device.startswith("cuda")
    if load_in_8bit or load_in_4bit:
        if quantized:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit)
            kwargs["device_map"] = {"": device}
        else:
            logger.warning("load_in_8bit/load_in_4bit need a CUDA GPU; loading unquantized on %s", device)
    model = AutoModelForCausalLM.from_pretrained(
        ref.weights_path, revision=ref.base_revision if ref.is_adapter else ref.revision, **kwargs)
    if ref.is_adapter:
        model = _attach_adapter(model, ref, tokenizer, merge=not quantized)
    if not quantized:
        model = model.to(device)
    model.eval()
    return model


def _attach_adapter(model, ref: ModelRef, tokenizer, merge: bool):
    from peft import PeftModel

    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # Training added tokens (e.g. a chat template's markers): the adapter expects the resized table.
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, ref.path, revision=ref.revision)
    return model.merge_and_unload() if merge else model


# New tokens per `generate` call before finished rows leave the batch: a finished row costs at
# most this many wasted steps; each call costs a few milliseconds of setup.
CHUNK_TOKENS = 32
# On a CPU the prompts are read into the cache in groups of similar length, each group padded to
# its own longest prompt, with padding at most this share of a group's positions.
PREFILL_WASTE = 0.1


class HFGenerator:
    """Generates a batch of WorkItems with `model.generate`."""

    def __init__(self, model, tokenizer, settings: GenSettings, chunk_tokens: int = CHUNK_TOKENS,
                 growing_kv: bool = True, prefill_waste: float | None = PREFILL_WASTE, decode_runs: bool = True,
                 lookup_tokens: int = DRAFT_TOKENS):
        from transformers import GenerationConfig

        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.chunk_tokens = max(1, chunk_tokens)
        self.growing_kv = growing_kv  # False: transformers' own cache (the bench's baseline)
        # prompts prefilled in length groups only on a CPU with our cache (a GPU reads a padded
        # batch in parallel anyway); None: one padded prefill of the whole batch
        self.prefill_waste = prefill_waste if (growing_kv and self.device.type == "cpu"
                                               and growing_cache() is not None) else None
        if self.device.type == "cpu":  # decode attention that skips most left padding (inference/decode_attention.py)
            use_decode_runs(model) if decode_runs else use_plain_sdpa(model)
        # greedy decoding on a CPU checks up to this many copied tokens per row and forward
        # (inference/lookup_decoding.py); 0: token by token through `generate`
        self.lookup_tokens = lookup_tokens if (lookup_tokens > 0 and self.prefill_waste is not None
                                               and not settings.sampling and supports_lookup(model)) else 0
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        added = getattr(tokenizer, "added_tokens_encoder", {})
        self.stop_ids += [added[s] for s in settings.stop_strings if s in added and added[s] not in self.stop_ids]
        # Greedy at the library level: sampling, when asked for, is done per row by PerRowSampler.
        # Every sampling knob is set explicitly so the model's own generation_config.json
        # (often do_sample/temperature/top_p) cannot leak in.
        self.gen_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
            temperature=1.0, top_p=1.0, top_k=None, repetition_penalty=1.0,
            eos_token_id=self.stop_ids, pad_token_id=tokenizer.pad_token_id,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, items: Sequence[WorkItem]) -> list[Generated]:
        """Generate the batch in rounds of `CHUNK_TOKENS` new tokens; between rounds the rows that
        hit a stop token leave the batch (their cache rows too), and the rest continue from the
        cache. WHY: `generate` computes every row until the longest one ends; on HumanEval-sized
        prompts a third of the answers run to the limit, so most of the compute past the median
        answer went to rows that had already ended. transformers has no CPU-fast way to drop them
        (its continuous batching ran 1.5x slower than this on a CPU), hence this loop.
        Greedy decoding on a CPU goes through `lookup_generate` instead (same answers, fewer forwards)."""
        if self.lookup_tokens:
            new = lookup_generate(self.model, [it.input_ids for it in items], self.settings.max_new_tokens, self.stop_ids,
                                  self.tokenizer.pad_token_id or 0, self.lookup_tokens,
                                  groups=lambda lengths: prefill_groups([n - 1 for n in lengths], self.prefill_waste))
            return [self._decode(ids) for ids in new]
        input_ids, attention_mask = left_pad([it.input_ids for it in items], self.tokenizer.pad_token_id)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        sampler = PerRowSampler([it.seed for it in items], self.settings.temperature, self.settings.top_p) \
            if self.settings.sampling else None
        rows, new_ids = list(range(len(items))), [[] for _ in items]
        cache = self._prefill(input_ids, attention_mask) if self.prefill_waste is not None else None
        if cache is None and self.growing_kv:
            cache = growing_cache()
        left, stops = self.settings.max_new_tokens, set(self.stop_ids)
        while rows and left > 0:
            step, started = min(self.chunk_tokens, left), time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          generation_config=self._config_for(step), **{CACHE_ARG: cache},
                                          logits_processor=[sampler] if sampler else [])
            fresh = out.sequences[:, input_ids.shape[1]:]
            logger.debug("round: %d rows x %d columns, %d new tokens each, %.1f s", len(rows),
                         input_ids.shape[1], fresh.shape[1], time.perf_counter() - started)
            for j, row in enumerate(rows):
                new_ids[row] += fresh[j].tolist()
            left -= step
            going = [j for j, row in enumerate(rows) if not stops.intersection(new_ids[row])]
            if not going or left <= 0:
                break
            cache = getattr(out, CACHE_ARG)
            if len(going) < len(rows):  # drop the finished rows from the batch and its cache
                index = torch.tensor(going, device=input_ids.device)
                cache.batch_select_indices(index)
                if sampler:
                    sampler.keep(going)
                rows = [rows[j] for j in going]
                input_ids, attention_mask, fresh = out.sequences[index], attention_mask[index], fresh[index]
                if self.growing_kv:
                    input_ids, attention_mask = _drop_shared_padding(input_ids, attention_mask, cache)
            else:
                input_ids = out.sequences
            attention_mask = torch.cat([attention_mask, torch.ones_like(fresh)], dim=1)
        return [self._decode(ids) for ids in new_ids]

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """A cache holding every prompt but its last token, computed in groups of similar
        length (`prefill_groups`) and laid out left-padded like the batch; `generate` then
        starts from each prompt's last token. WHY: one padded prefill computes every prompt at
        the longest one's length; on HumanEval's test prompts (109-436 tokens) 53% of that work
        was padding, and on a CPU the prefill is compute-bound, so the padding cost its full
        share (one thread: 122 CPU-s padded against 39 CPU-s per group). None: nothing to
        prefill (every prompt is one token)."""
        width, started = input_ids.shape[1] - 1, time.perf_counter()
        if width < 1:
            return None
        lengths = attention_mask.sum(dim=1).tolist()
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in prefill_groups([n - 1 for n in lengths], self.prefill_waste):
            g_width = max(lengths[i] for i in group) - 1
            if g_width < 1:
                continue
            index = torch.tensor(group, device=input_ids.device)
            ids, mask = input_ids[index, -g_width - 1:-1], attention_mask[index, -g_width - 1:-1]
            part = growing_cache()
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=True, logits_to_keep=1, **{CACHE_ARG: part})
            for k, layer in enumerate(part.layers):
                if len(layers) <= k:
                    shape = (input_ids.shape[0], layer.keys.shape[1], width, layer.keys.shape[-1])
                    layers.append((layer.keys.new_zeros(shape), layer.values.new_zeros(shape)))
                layers[k][0][index, :, width - g_width:] = layer.keys
                layers[k][1][index, :, width - g_width:] = layer.values
        cache = growing_cache()
        for k, (keys, values) in enumerate(layers):
            cache.update(keys, values, k)
        logger.debug("prefill: %d prompts, %d columns, %.1f s", len(lengths), width + 1, time.perf_counter() - started)
        return cache

    def _config_for(self, new_tokens: int):
        """The generation config of one round: `new_tokens` new tokens, the cache returned."""
        config = copy.deepcopy(self.gen_config)
        config.max_new_tokens, config.return_dict_in_generate = new_tokens, True
        return config

    def _decode(self, new_ids: list[int]) -> Generated:
        """Cut at the first stop token, then decode only those new tokens. No stop token means
        the row ran to max_new_tokens (generate only ends a row early on a stop token)."""
        stops = set(self.stop_ids)
        end = next((i for i, t in enumerate(new_ids) if t in stops), None)
        reason = FINISH_LENGTH if end is None else FINISH_STOP
        end = len(new_ids) if end is None else end
        decoded = self.tokenizer.decode(new_ids[:end], skip_special_tokens=True)
        text = cut_at_stop_strings(decoded, self.settings.stop_strings)
        if len(text) < len(decoded):  # a stop string ended the answer, not the token limit
            reason = FINISH_STOP
        return Generated(text.strip(), end, reason)


def _drop_shared_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, cache):
    """Cut the leading columns that are padding in every remaining row from the batch and from
    the cache (GrowingLayer.drop_front). WHY: the batch is padded to its longest prompt, and
    every decode step attends over the whole width; once the rows with the longest prompts have
    finished, that padding is work for nothing. Positions come from the mask, so they do not move."""
    used = attention_mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0 or not all(hasattr(layer, "drop_front") for layer in getattr(cache, "layers", [None])):
        return input_ids, attention_mask
    for layer in cache.layers:
        layer.drop_front(first)
    return input_ids[:, first:], attention_mask[:, first:]


def prefill_groups(lengths: Sequence[int], max_waste: float) -> list[list[int]]:
    """Row indices in groups of similar length, longest first: a group grows while padding every
    row to its longest stays within `max_waste` of its positions; a row that would break that
    starts the next group."""
    groups: list[list[int]] = []
    real = 0  # the current group's positions that are not padding
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= (1 + max_waste) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into a left-padded batch and its attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask
