"""`local`: an in-process transformers chat model (default: the embedded SmolLM2), for fully
offline runs. Generation is the inference backend's (llamaduo.inference.hf_backend: adapters,
end-of-turn stops, one seed per row); this module only gathers concurrent requests into
batches (batched generation on CPU is ~5x faster than one at a time), one batch at a time in
a worker thread so the event loop stays free."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from llamaduo.errors import UsageError
from llamaduo.service_llm.providers.base import Credentials, RawCompletion, ServiceProvider
from llamaduo.service_llm.records import PermanentError, ResponseSchema

BATCH_SIZE = 8


class LocalProvider(ServiceProvider):
    name = "local"
    default_model = "smollm2-135m-instruct"
    family = "local"
    sdk = "in-process transformers (llamaduo.inference)"
    takes_api_key = False
    free = True
    default_gen_config = None
    gen_names = {"max_tokens": "max_new_tokens", "stop": "stop_strings", "seed": "seed",
                 "temperature": "temperature", "top_p": "top_p"}
    gen_defaults = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    GEN_KEYS = {"max_new_tokens", "max_tokens", "max_output_tokens", "temperature", "top_p", "do_sample",
                "stop_strings", "seed"}  # what llamaduo.inference.hf_backend.GenSettings takes

    _models: dict[str, tuple[Any, Any]] = {}  # model name -> (model, tokenizer), per process

    @classmethod
    def allowed_gen_keys(cls) -> Optional[set[str]]:
        return set(cls.GEN_KEYS)

    @classmethod
    def validate_gen(cls, gen: dict, where: str) -> dict:
        gen = super().validate_gen(gen, where)
        for alias in ("max_tokens", "max_output_tokens"):
            if alias in gen:
                gen["max_new_tokens"] = gen.pop(alias)
        if isinstance(gen.get("stop_strings"), str):
            gen["stop_strings"] = [gen["stop_strings"]]
        return gen

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        pass  # nothing to authenticate

    @classmethod
    def check_model(cls, model: str) -> None:
        from llamaduo.models import is_embedded_alias

        if is_embedded_alias(model) or Path(model).exists():
            return
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid repo id either
            cached = None
        if not isinstance(cached, str):
            raise UsageError(
                f"local service model '{model}' is neither a folder, the alias smollm2-135m-instruct, "
                "nor a model in the local Hugging Face cache")

    # ------------------------------------------------------------------ the call
    def __init__(self, spec) -> None:
        super().__init__(spec)
        self._generator: Any = None
        self._pending: list[tuple[Sequence[dict], int, asyncio.Future]] = []
        self._runner: Optional[asyncio.Task] = None

    def _load(self) -> Any:
        """The backend's generator for this spec (weights loaded once per process)."""
        from llamaduo.inference.hf_backend import GenSettings, HFGenerator, load_model, load_tokenizer
        from llamaduo.inference.model_ref import resolve_model_ref
        from llamaduo.models import pick_device_dtype

        if self.spec.model not in self._models:
            ref = resolve_model_ref(self.spec.model)
            tokenizer = load_tokenizer(ref)
            device, dtype = pick_device_dtype()
            self._models[self.spec.model] = (load_model(ref, tokenizer, device, dtype), tokenizer)
        model, tokenizer = self._models[self.spec.model]
        gen = self.spec.gen_config
        settings = GenSettings(max_new_tokens=int(gen["max_new_tokens"]), do_sample=bool(gen.get("do_sample")),
                               temperature=float(gen.get("temperature", 1.0)), top_p=float(gen.get("top_p", 1.0)),
                               seed=int(gen.get("seed", 0)), stop_strings=tuple(gen.get("stop_strings") or ()))
        return HFGenerator(model, tokenizer, settings)

    def _generate_batch(self, batch: list[tuple[Sequence[dict], int]]) -> list[RawCompletion]:
        from llamaduo.data import prompt_id_for
        from llamaduo.inference.prompts import PromptRecord, WorkItem, tokenize_prompts
        from llamaduo.inference.generation import sample_seed

        if self._generator is None:
            self._generator = self._load()
        gen = self._generator
        start = time.monotonic()
        records = [PromptRecord(i, prompt_id_for(json.dumps(list(msgs), sort_keys=True)), "", "", tuple(msgs))
                   for i, (msgs, _) in enumerate(batch)]
        ids = tokenize_prompts(records, gen.tokenizer, batch_size=len(records))
        items = [WorkItem(r.row_index, r.prompt_id, index, tuple(t), sample_seed(gen.settings.seed, r.prompt_id, index))
                 for r, t, (_, index) in zip(records, ids, batch)]
        outs = gen.generate(items)
        latency = time.monotonic() - start
        return [RawCompletion(out.text, len(item.input_ids), max(1, out.new_tokens), self.spec.model,
                              out.finish_reason, latency) for item, out in zip(items, outs)]

    async def _run_batches(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:BATCH_SIZE], self._pending[BATCH_SIZE:]
            try:
                outs = await asyncio.to_thread(self._generate_batch, [(m, i) for m, i, _ in batch])
            except Exception as err:  # a model error fails these calls, not the event loop
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(PermanentError(f"local model failed: {type(err).__name__}: {err}"))
                continue
            for (_, _, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)

    async def complete(self, messages: Sequence[dict], sample_index: int,
                       schema: Optional[ResponseSchema] = None) -> RawCompletion:
        """`schema` is not enforced (no constrained decoding): the reply is free text, read by
        the stage's parser like any text-fallback reply."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((messages, sample_index, fut))
        if self._runner is None or self._runner.done():
            await asyncio.sleep(0)  # let the other workers enqueue, so the first batch is full
            if self._runner is None or self._runner.done():
                self._runner = asyncio.create_task(self._run_batches())
        return await fut

    async def aclose(self) -> None:
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
