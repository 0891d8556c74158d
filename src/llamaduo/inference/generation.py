"""The torch-free half of local generation: decoding settings, one answer's record, finish
reasons, stop strings and per-sample seeds.

WHY a module of its own: `batch_inference.py --help`/`--print-config`, the work plan and the
OpenAI-compatible backend need these names, and must not import torch or transformers (seconds
on 2 cores) to get them. The backends that generate (hf_backend.py, sampling.py, vllm_backend.py)
import from here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

# End-of-turn markers of common chat templates; whichever exist in the vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


@dataclass(frozen=True)
class GenSettings:
    """Decoding settings shared by both backends."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int
    stop_strings: tuple[str, ...] = ()

    @property
    def sampling(self) -> bool:
        """Temperature 0 means greedy, as in vLLM and the OpenAI API."""
        return self.do_sample and self.temperature > 0


FINISH_STOP, FINISH_LENGTH = "stop", "length"
#: greedy CPU decoding: draft tokens checked per row and forward (batch_inference's
#: `prompt_lookup_tokens`; inference/lookup_decoding.py)
DRAFT_TOKENS = 8


@dataclass(frozen=True)
class Generated:
    """One answer. `finish_reason` is "stop" when the model ended its turn (eos/end-of-turn)
    and "length" when max_new_tokens cut it off: a cut answer is usually unfinished code, and
    evaluation must be able to say how many there were."""

    text: str
    new_tokens: int
    finish_reason: str = FINISH_STOP


def cut_at_stop_strings(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (stop strings that are special tokens are already
    stop token ids, see `hf_backend.stop_token_ids`)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def sample_seed(seed: int, prompt_id: str, repeat_index: int) -> int:
    """A stable 63-bit seed for one sample. Hash-based so it survives reordering and resume."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{repeat_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
