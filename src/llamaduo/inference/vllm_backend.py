"""The vLLM backend (GPU): same inputs and outputs as the transformers backend.

vLLM is imported lazily, so the rest of the project never needs it; `require_vllm` runs during
validation and turns a missing install into a clear exit-2 message before anything loads.
Prompts are passed as token ids (the same chat-templated ids the hf backend uses), each sample
gets its own `SamplingParams.seed`, and a LoRA adapter is served on top of its base model with
`LoRARequest` instead of being merged. vLLM parallelises inside one process
(`tensor_parallel_size`), so it is not combined with the data-parallel launcher path.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from llamaduo.errors import UsageError
from llamaduo.inference.generation import FINISH_LENGTH, FINISH_STOP, Generated, GenSettings
from llamaduo.inference.model_ref import ModelRef
from llamaduo.inference.prompts import WorkItem

logger = logging.getLogger("llamaduo.inference")

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise UsageError(
            "backend 'vllm' needs the vllm package, which runs on CUDA GPUs: `pip install vllm` on a "
            f"GPU machine, or use `backend: hf` ({err})"
        ) from err


def _local_adapter_dir(ref: ModelRef) -> str:
    """vLLM's LoRARequest wants a local folder; fetch a Hub adapter into the HF cache."""
    if ref.is_local:
        return ref.path
    from huggingface_hub import snapshot_download

    return snapshot_download(ref.path, revision=ref.revision)


class VLLMGenerator:
    """Generates WorkItems with `vllm.LLM.generate`."""

    def __init__(self, ref: ModelRef, settings: GenSettings, stop_ids: Sequence[int],
                 tensor_parallel_size: int = 1, dtype: str = "auto"):
        from vllm import LLM

        self.settings = settings
        self.stop_ids = list(stop_ids)
        self.lora = None
        kwargs: dict = {}
        if ref.is_adapter:
            from vllm.lora.request import LoRARequest

            rank = int(ref.adapter_rank or 16)
            kwargs.update(enable_lora=True, max_lora_rank=next((r for r in _LORA_RANKS if r >= rank), rank))
            self.lora = LoRARequest("ft", 1, str(Path(_local_adapter_dir(ref))))
        self.llm = LLM(model=ref.weights_path, tokenizer=ref.tokenizer_path,
                       tokenizer_revision=ref.tokenizer_revision,
                       revision=ref.base_revision if ref.is_adapter else ref.revision,
                       tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=settings.seed, **kwargs)

    def generate(self, items: Sequence[WorkItem]) -> list[Generated]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = self.settings
        params = [SamplingParams(n=1, max_tokens=s.max_new_tokens, seed=it.seed,
                                 temperature=s.temperature if s.sampling else 0.0,
                                 top_p=s.top_p if s.sampling else 1.0,
                                 stop_token_ids=self.stop_ids, stop=list(s.stop_strings) or None,
                                 skip_special_tokens=True)
                  for it in items]
        prompts = [TokensPrompt(prompt_token_ids=list(it.input_ids)) for it in items]
        outs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        return [_generated(o.outputs[0]) for o in outs]


def _generated(out) -> Generated:
    """vLLM's CompletionOutput -> Generated. Its finish_reason is "length" when max_tokens cut
    the answer and "stop" on a stop token/string; anything else (an aborted request) is not a
    cut at the token limit, so it maps to "stop"."""
    reason = FINISH_LENGTH if out.finish_reason == FINISH_LENGTH else FINISH_STOP
    return Generated(out.text.strip(), len(out.token_ids), reason)
