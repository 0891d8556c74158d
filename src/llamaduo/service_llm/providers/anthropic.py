"""`anthropic`, `anthropic-vertex`, `anthropic-bedrock`: the Messages API through AsyncAnthropic,
AsyncAnthropicVertex or AsyncAnthropicBedrock (one adapter; the variants differ in credentials)."""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from llamaduo.errors import UsageError
from llamaduo.service_llm.providers.base import (
    Credentials,
    RawCompletion,
    StructuredFallback,
    sdk_keywords,
    check_vertex,
)
from llamaduo.service_llm.records import ResponseSchema

DEFAULT_MAX_TOKENS = 4096  # the Messages API refuses a call without max_tokens


class AnthropicProvider(StructuredFallback):
    name = "anthropic"
    # Chosen 2026-12-02: a name in the installed SDK's anthropic.types.Model (tests/test_gen_settings.py)
    default_model = "claude-sonnet-4-5"
    family = "anthropic"
    sdk = "anthropic.AsyncAnthropic"
    key_env = ("ANTHROPIC_API_KEY",)
    base_url_env = ("ANTHROPIC_BASE_URL",)
    default_url = "https://api.anthropic.com"
    gen_names = {"max_tokens": "max_tokens", "stop": "stop_sequences", "seed": None,
                 "temperature": "temperature", "top_p": "top_p"}
    gen_defaults = {"max_tokens": DEFAULT_MAX_TOKENS}
    noisy_loggers = ("anthropic",)

    @classmethod
    def allowed_gen_keys(cls) -> Optional[set[str]]:
        from anthropic.resources.messages import AsyncMessages

        return sdk_keywords(AsyncMessages.create)

    @staticmethod
    def structured_kwargs(schema: ResponseSchema) -> Optional[dict]:
        """One tool with the schema as its input, and `tool_choice` forcing it; the object is
        the tool_use block's `input`."""
        tool = {"name": schema.name, "description": schema.description or f"Record the {schema.name} object.",
                "input_schema": schema.schema}
        return {"tools": [tool], "tool_choice": {"type": "tool", "name": schema.name}}

    def _client(self, anthropic: Any, common: dict) -> Any:
        return anthropic.AsyncAnthropic(api_key=self.spec.api_key, **common)

    def __init__(self, spec) -> None:
        import anthropic

        super().__init__(spec)
        self._anthropic = anthropic
        self.client = self._client(anthropic, dict(base_url=spec.base_url, max_retries=0, timeout=spec.timeout_s))

    async def _call(self, messages: Sequence[dict], sample_index: int,
                    schema: Optional[ResponseSchema]) -> RawCompletion:
        anthropic = self._anthropic
        gen = dict(self.spec.gen_config)
        gen.update(self.structured(schema))
        start = time.monotonic()
        try:
            resp = await self.client.messages.create(model=self.spec.model, messages=list(messages), **gen)
        except (anthropic.APIConnectionError, anthropic.APIStatusError) as err:  # timeouts are connection errors
            raise self.stainless_error(anthropic, err, schema) from None
        latency = time.monotonic() - start
        blocks = resp.content or []
        tool_input = _tool_input(blocks, schema)
        text = tool_input if tool_input is not None else "".join(
            getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "text")
        finish = resp.stop_reason or ("no_content" if not blocks else "")
        usage = resp.usage
        return RawCompletion(text, usage.input_tokens, usage.output_tokens, resp.model or self.spec.model,
                             str(finish), latency)

    async def aclose(self) -> None:
        await self.client.close()


def _tool_input(blocks: Sequence[Any], schema: Optional[ResponseSchema]) -> Optional[str]:
    """The forced tool's input as JSON text: with a schema the answer is that tool_use
    block, never the text blocks around it (which may quote the data)."""
    if schema is None:
        return None
    for block in blocks:
        if getattr(block, "type", "") == "tool_use" and getattr(block, "name", "") == schema.name:
            return json.dumps(getattr(block, "input", None), ensure_ascii=False)
    return None


class AnthropicVertexProvider(AnthropicProvider):
    name = "anthropic-vertex"
    default_model = "claude-sonnet-4-5@20250929"  # the same model, Vertex's spelling
    sdk = "anthropic.AsyncAnthropicVertex"
    key_env = ()  # SERVICE_LLM_API_KEY, if set, is an OAuth access token
    base_url_env = ()
    default_url = "https://{gcp}-aiplatform.googleapis.com"
    project_env = ("GCP_PROJECT_ID", "ANTHROPIC_VERTEX_PROJECT_ID", "GOOGLE_CLOUD_PROJECT")
    location_env = ("GCP_LOCATION", "CLOUD_ML_REGION", "GOOGLE_CLOUD_LOCATION")

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        check_vertex(cls, creds)

    def _client(self, anthropic: Any, common: dict) -> Any:
        return anthropic.AsyncAnthropicVertex(region=self.spec.gcp_location, project_id=self.spec.gcp_project_id,
                                              access_token=self.spec.api_key, **common)


class AnthropicBedrockProvider(AnthropicProvider):
    name = "anthropic-bedrock"
    default_model = "anthropic.claude-sonnet-4-5-20250929-v1:0"  # the same model, Bedrock's spelling
    sdk = "anthropic.AsyncAnthropicBedrock"
    key_env = ("AWS_BEARER_TOKEN_BEDROCK",)
    base_url_env = ("ANTHROPIC_BEDROCK_BASE_URL",)
    default_url = "https://bedrock-runtime.{aws}.amazonaws.com"
    region_env = ("AWS_LOCATION", "AWS_REGION", "AWS_DEFAULT_REGION")
    secret_env = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

    @classmethod
    def check_credentials(cls, creds: Credentials) -> None:
        if not creds.region.value:
            raise UsageError(f"provider {cls.name} needs an AWS region; looked at "
                             + ", ".join(creds.region.looked_at) + ": none is set")
        if creds.api_key.value:
            return
        if not _aws_credentials_present():
            raise UsageError(
                f"provider {cls.name} found no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a Bedrock API key as SERVICE_LLM_API_KEY")
        if importlib.util.find_spec("boto3") is None:
            raise UsageError(
                f"provider {cls.name} with AWS credentials needs boto3: pip install "
                "'anthropic[bedrock]' (or use a Bedrock API key as SERVICE_LLM_API_KEY)")

    def _client(self, anthropic: Any, common: dict) -> Any:
        return anthropic.AsyncAnthropicBedrock(aws_region=self.spec.aws_location, api_key=self.spec.api_key,
                                               **common)


def _aws_credentials_present() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    home = Path(os.path.expanduser("~"))
    return (home / ".aws" / "credentials").is_file() or (home / ".aws" / "config").is_file()
