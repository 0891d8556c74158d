"""Context windows of well-known models, for the default `max_input_tokens`.

Why a table: without a limit, a 1 MB row is sent (and paid for) as one ~270k-token prompt, or
fails at the provider after the request is billed or rate-counted. The values are the
providers' published input context sizes; a model not listed gets DEFAULT_MAX_INPUT_TOKENS,
generous enough for any real judge or generation prompt. Matching is by longest prefix, like
pricing.yaml ("gpt-4o-2024-08-06" uses "gpt-4o").
"""
from __future__ import annotations

DEFAULT_MAX_INPUT_TOKENS = 100_000

CONTEXT_WINDOWS = {
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "gpt-4-turbo": 128_000, "gpt-4.1": 1_047_576,
    "gpt-4": 8_192, "gpt-3.5-turbo": 16_385, "o1": 200_000, "o3": 200_000, "o4-mini": 200_000,
    "claude": 200_000, "anthropic.claude": 200_000,
    "gemini-1.0-pro": 32_760, "gemini-1.5-flash": 1_048_576, "gemini-1.5-pro": 2_097_152,
    "gemini-2.0-flash": 1_048_576, "gemini-2.5": 1_048_576,
}


def default_max_input_tokens(model: str, max_output_tokens: int) -> int:
    """The model's context window minus the reply's room, or the generous default."""
    matches = [name for name in CONTEXT_WINDOWS if model.startswith(name)]
    if not matches:
        return DEFAULT_MAX_INPUT_TOKENS
    window = CONTEXT_WINDOWS[max(matches, key=len)]
    return max(1, window - max(0, max_output_tokens))
