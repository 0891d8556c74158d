"""`gemini`, `gemini-vertex`: generateContent through google-genai (`Client(...).aio`), AI Studio
or Vertex AI."""
from __future__ import annotations

import copy
import time
from typing import Any, Optional, Sequence

from llamaduo.errors import UsageError
from llamaduo.service_llm.pricing import estimate_tokens
from llamaduo.service_llm.providers.base import (
    Credentials,
    RawCompletion,
    StructuredFallback,
    check_vertex,
    network_error,
    status_error,
)
from llamaduo.service_llm.records import ResponseSchema


class GeminiProvider(StructuredFallback):
    name = "gemini"
    default_model = "gemini-2.5-flash"  # chosen 2026-12-02 (google-genai ships no model list)
    family = "gemini"
    sdk = "google-genai (AI Studio)"
    key_env = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # google-genai prefers GOOGLE_API_KEY
    default_url = "https://generativelanguage.googleapis.com"
    gen_names = {"max_tokens": "max_output_tokens", "stop": "stop_sequences", "seed": "seed",
                 "temperature": "temperature", "top_p": "top_p"}
    noisy_loggers = ("google_genai",)

    @classmethod
    def validate_gen(cls, gen: dict, where: str) -> dict:
        from google.genai import types

        try:
            types.GenerateContentConfig(**gen)
        except Exception as err:  # pydantic.ValidationError: names the bad key and type
            first = str(err).splitlines()[:3]
            raise UsageError(f"generation config {where} is invalid for {cls.name}: {' '.join(first)}") from None
        return super().validate_gen(gen, where)

    @staticmethod
    def structured_kwargs(schema: ResponseSchema) -> Optional[dict]:
        """JSON mode with a response schema (the OpenAPI subset: `additionalProperties` is
        dropped, the stage's parser still checks the keys)."""
        return {"response_mime_type": "application/json",
                "response_schema": _without_additional_properties(copy.deepcopy(schema.schema))}

    def _client(self, genai: Any, http: Any) -> Any:
        return genai.Client(api_key=self.spec.api_key, http_options=http)

    def __init__(self, spec) -> None:
        from google import genai
        from google.genai import errors, types

        super().__init__(spec)
        self._types = types
        self._errors = errors
        # timeout is in milliseconds; no retry_options: google-genai then does not retry
        http = types.HttpOptions(base_url=spec.base_url, timeout=int(spec.timeout_s * 1000))
        self.client = self._client(genai, http)

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        types, errors = self._types, self._errors
        contents = [
            types.Content(role="model" if m["role"] == "assistant" else "user", parts=[types.Part(text=m["content"])])
            for m in messages
        ]
        gen = dict(self.spec.gen_config)
        gen["seed"] = int(gen.get("seed", 0)) + sample_index
        gen.update(self.structured(schema))
        start = time.monotonic()
        try:
            resp = await self.client.aio.models.generate_content(
                model=self.spec.model, contents=contents, config=types.GenerateContentConfig(**gen)
            )
        except errors.APIError as err:
            headers = getattr(getattr(err, "response", None), "headers", None)
            self.check_rejection(schema, int(err.code or 0), str(err.message or err))
            raise status_error(int(err.code or 0), str(err.message or err), headers) from None
        except Exception as err:
            mapped = network_error(err)
            if mapped is None:
                raise
            raise mapped from None
        latency = time.monotonic() - start
        candidates = resp.candidates or []
        if not candidates:
            text, finish = "", "no_candidates"
        else:
            cand = candidates[0]
            parts = (cand.content.parts if cand.content and cand.content.parts else []) or []
            text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
            finish = cand.finish_reason.name if cand.finish_reason is not None else ""
        meta = resp.usage_metadata
        in_tok = (meta.prompt_token_count if meta and meta.prompt_token_count is not None
                  else estimate_tokens("\n".join(m["content"] for m in messages)))
        if meta:  # thinking tokens are billed as output
            out_tok = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
        else:
            out_tok = estimate_tokens(text)
        return RawCompletion(text, in_tok, out_tok, resp.model_version or self.spec.model, finish, latency)

    async def aclose(self) -> None:
        await self.client.aio.aclose()


class GeminiVertexProvider(GeminiProvider):
    name = "gemini-vertex"
    sdk = "google-genai, vertexai=True"
    key_env = ()  # SERVICE_LLM_API_KEY, if set, is an OAuth access token
    default_url = "https://{gcp}-aiplatform.googleapis.com"
    project_env = ("GCP_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    location_env = ("GCP_LOCATION", "GOOGLE_CLOUD_LOCATION")

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        check_vertex(cls, creds)

    def _client(self, genai: Any, http: Any) -> Any:
        credentials = None
        if self.spec.api_key:
            from google.oauth2.credentials import Credentials as OAuth

            credentials = OAuth(token=self.spec.api_key)
        return genai.Client(vertexai=True, project=self.spec.gcp_project_id, location=self.spec.gcp_location,
                            credentials=credentials, http_options=http)


def _without_additional_properties(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_additional_properties(v) for k, v in node.items() if k != "additionalProperties"}
    if isinstance(node, list):
        return [_without_additional_properties(v) for v in node]
    return node
