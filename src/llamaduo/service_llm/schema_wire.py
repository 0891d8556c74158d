"""A ResponseSchema in each provider's wire form, and how to tell that a server refused it.

Pure dict building (no SDK import) so that providers.py stays the only SDK importer and the
mappings can be tested on their own:
- OpenAI Chat Completions: `response_format={"type": "json_schema", "json_schema": {name,
  strict: true, schema}}`; the reply's message content is the object.
- Anthropic Messages: one tool whose `input_schema` is the schema and `tool_choice={"type":
  "tool", "name": ...}`, which forces the model to answer with that tool; the object is the
  tool_use block's `input`.
- Gemini generateContent: `response_mime_type="application/json"` and `response_schema`
  (the OpenAPI subset: `additionalProperties` is dropped, the parser still checks the keys).
"""
from __future__ import annotations

import copy
import re
from typing import Any

from llamaduo.service_llm.records import ResponseSchema

# Words a 400/422 names when the server does not support the structured-output fields.
_REJECTION_MARKERS = re.compile(
    r"response_format|json_schema|structured|tool_choice|\btools?\b|response_?schema|responseschema|"
    r"response_?mime_?type|responsemimetype|input_schema",
    re.IGNORECASE,
)


def openai_kwargs(schema: ResponseSchema) -> dict:
    """`response_format` with a strict json_schema (the schema must list every property as
    required and forbid additional ones: strict mode's rules)."""
    spec: dict[str, Any] = {"name": schema.name, "strict": True, "schema": schema.schema}
    if schema.description:
        spec["description"] = schema.description
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


def anthropic_kwargs(schema: ResponseSchema) -> dict:
    """A single tool with the schema as its input, and `tool_choice` forcing that tool."""
    tool = {"name": schema.name, "description": schema.description or f"Record the {schema.name} object.",
            "input_schema": schema.schema}
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": schema.name}}


def _without_additional_properties(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_additional_properties(v) for k, v in node.items() if k != "additionalProperties"}
    if isinstance(node, list):
        return [_without_additional_properties(v) for v in node]
    return node


def gemini_kwargs(schema: ResponseSchema) -> dict:
    """JSON mode with a response schema (GenerateContentConfig keys)."""
    return {"response_mime_type": "application/json",
            "response_schema": _without_additional_properties(copy.deepcopy(schema.schema))}


def rejects_structured(status: int, message: str) -> bool:
    """True when an HTTP error says the server does not take the structured-output fields
    (vLLM/llama.cpp/older proxies answer 400 or 422 naming `response_format` or `tools`), so
    the request should be sent again as plain text rather than fail the row."""
    return status in (400, 422) and bool(_REJECTION_MARKERS.search(message or ""))
