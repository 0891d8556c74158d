"""`openai`: Chat Completions through AsyncOpenAI, at api.openai.com or any OpenAI-compatible
server (vLLM, Ollama, llama.cpp, TGI: set `service_llm_base_url`, no key needed)."""
from __future__ import annotations

import logging
import re
import time
from typing import Optional, Sequence

from llamaduo.service_llm.pricing import estimate_tokens
from llamaduo.service_llm.providers.base import (
    Credentials,
    RawCompletion,
    StructuredFallback,
    sdk_keywords,
)
from llamaduo.service_llm.records import ResponseSchema
from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.service_llm")

# OpenAI reasoning models refuse max_tokens (they take max_completion_tokens).
_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


class OpenAIProvider(StructuredFallback):
    name = "openai"
    # Chosen 2026-12-02: a name in the installed SDK's openai.types.ChatModel (checked by
    # tests/test_gen_settings.py); non-reasoning, so the shared settings apply unchanged.
    default_model = "gpt-4.1"
    family = "openai"
    sdk = "openai.AsyncOpenAI"
    key_env = ("OPENAI_API_KEY",)
    base_url_env = ("OPENAI_BASE_URL",)
    default_url = "https://api.openai.com/v1"
    own_gen_names = frozenset({"max_completion_tokens"})
    stop_as_list = False
    noisy_loggers = ("openai",)

    @classmethod
    def allowed_gen_keys(cls) -> Optional[set[str]]:
        from openai.resources.chat.completions import AsyncCompletions

        return sdk_keywords(AsyncCompletions.create)

    @classmethod
    def adjust_gen(cls, gen: dict, model: str, base_url: Optional[str], where: str) -> dict:
        if base_url is None and _REASONING.match(model) and "max_tokens" in gen:
            gen = dict(gen)
            gen["max_completion_tokens"] = gen.pop("max_tokens")
            logger.info("%s: max_tokens sent as max_completion_tokens (%s is a reasoning model)", where, model)
        return gen

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        if creds.base_url is None and not creds.api_key.value:  # a keyless local server is fine
            raise UsageError(
                f"provider openai needs an API key; looked at {', '.join(creds.api_key.looked_at)}: none is set "
                "(or set service_llm_base_url / OPENAI_BASE_URL for a keyless OpenAI-compatible server)")

    @staticmethod
    def structured_kwargs(schema: ResponseSchema) -> Optional[dict]:
        """`response_format` with a strict json_schema (every property required, no additional
        ones: strict mode's rules); the reply's message content is the object."""
        spec: dict = {"name": schema.name, "strict": True, "schema": schema.schema}
        if schema.description:
            spec["description"] = schema.description
        return {"response_format": {"type": "json_schema", "json_schema": spec}}

    def __init__(self, spec) -> None:
        import openai

        super().__init__(spec)
        self._openai = openai
        self.client = openai.AsyncOpenAI(
            api_key=spec.api_key or "EMPTY",  # keyless local servers still need a string here
            base_url=spec.base_url,
            max_retries=0,
            timeout=spec.timeout_s,
        )

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        openai = self._openai
        gen = dict(self.spec.gen_config)
        gen["seed"] = int(gen.get("seed", 0)) + sample_index
        gen.update(self.structured(schema))
        start = time.monotonic()
        try:
            resp = await self.client.chat.completions.create(model=self.spec.model, messages=list(messages), **gen)
        except (openai.APIConnectionError, openai.APIStatusError) as err:  # timeouts are connection errors
            raise self.stainless_error(openai, err, schema) from None
        latency = time.monotonic() - start
        usage = getattr(resp, "usage", None)
        if not resp.choices:
            text, finish = "", "no_choices"
        else:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = choice.finish_reason or ""
            if not text and getattr(choice.message, "refusal", None):
                text, finish = "", "refusal"
        in_tok = usage.prompt_tokens if usage else estimate_tokens("\n".join(m["content"] for m in messages))
        out_tok = usage.completion_tokens if usage else estimate_tokens(text)
        return RawCompletion(text, in_tok, out_tok, resp.model or self.spec.model, str(finish), latency)

    async def aclose(self) -> None:
        await self.client.close()
