"""Provider-neutral generation settings, mapped onto each provider's own parameter names.

Why: a generation file written for one provider used to fail for another ("unknown key(s)
['max_output_tokens'] for provider openai"), so switching the judge meant rewriting files. One
shape now works everywhere:

    temperature: 0.7
    max_tokens: 4096        # Gemini: max_output_tokens; local: max_new_tokens
    top_p: 0.95
    stop: ["###"]           # OpenAI: stop; Anthropic/Gemini: stop_sequences; local: stop_strings
    seed: 1234              # OpenAI, Gemini (Anthropic has none: dropped with a note)
    openai:    {frequency_penalty: 0.1}   # provider-specific extras, native names, per family
    anthropic: {top_k: 40}
    gemini:    {top_k: 40}
    local:     {repetition_penalty: 1.1}

A provider's own spelling of a neutral setting (`max_output_tokens` in the original's Gemini
files, `max_tokens` in its GPT/Claude files, `stop_sequences`...) is accepted and mapped too,
so every original file keeps loading. Other flat keys pass through unchanged and are checked
against the SDK by providers.py, exactly as before. Sections of other providers are ignored:
that is what lets one file serve every provider.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Optional

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.service_llm")

FAMILIES = ("openai", "anthropic", "gemini", "local")
NEUTRAL_KEYS = ("temperature", "max_tokens", "top_p", "stop", "seed")

# concept -> {family: native name (None: the provider has no such parameter)}
NATIVE = {
    "max_tokens": {"openai": "max_tokens", "anthropic": "max_tokens", "gemini": "max_output_tokens",
                   "local": "max_new_tokens"},
    "stop": {"openai": "stop", "anthropic": "stop_sequences", "gemini": "stop_sequences", "local": "stop_strings"},
    "seed": {"openai": "seed", "anthropic": None, "gemini": "seed", "local": None},
    "temperature": {f: "temperature" for f in FAMILIES},
    "top_p": {f: "top_p" for f in FAMILIES},
}
# every accepted spelling of a concept
SPELLINGS = {
    "max_tokens": ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens"),
    "stop": ("stop", "stop_sequences", "stop_strings"),
    "seed": ("seed",),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
}
# OpenAI reasoning models refuse max_tokens (they take max_completion_tokens).
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


def family(provider: str) -> str:
    """openai, anthropic (also -vertex, -bedrock), gemini (also -vertex) or local."""
    return next((f for f in FAMILIES if provider.startswith(f)), provider)


def to_provider(provider: str, model: str, raw: Mapping[str, Any], where: str,
                base_url: Optional[str] = None, allowed: Optional[set[str]] = None) -> dict[str, Any]:
    """Map a (neutral, native or mixed) generation mapping to the provider's SDK kwargs.

    `allowed`: the SDK call's parameters, when known. A neutral setting the installed SDK has no
    parameter for (the current Anthropic SDK has no temperature/top_p) is dropped with a note,
    so one shared file keeps working; a flat non-neutral key is left for the SDK check to refuse.
    """
    fam = family(provider)
    section = raw.get(fam) or {}
    if not isinstance(section, dict):
        raise UsageError(f"generation config {where}: section '{fam}' must be a mapping of {fam} parameters")
    flat = {k: v for k, v in raw.items() if k not in FAMILIES}
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in flat.items():
        concept = next((c for c, names in SPELLINGS.items() if key in names), None)
        if concept is None:
            out[key] = value
            continue
        if concept in seen:
            raise UsageError(f"generation config {where}: '{seen[concept]}' and '{key}' both set {concept}; keep one")
        seen[concept] = key
        _map_concept(concept, key, value, fam, out, where, allowed)
    for key, value in section.items():
        concept = next((c for c, names in SPELLINGS.items() if key in names), None)
        if concept is not None:
            for name in SPELLINGS[concept]:  # the section's spelling replaces the flat one
                out.pop(name, None)
        out[key] = value
    if fam == "openai" and base_url is None and _OPENAI_REASONING.match(model) and "max_tokens" in out:
        out["max_completion_tokens"] = out.pop("max_tokens")
        logger.info("%s: max_tokens sent as max_completion_tokens (%s is a reasoning model)", where, model)
    return out


def _map_concept(concept: str, key: str, value: Any, fam: str, out: dict, where: str,
                 allowed: Optional[set[str]]) -> None:
    native = NATIVE[concept][fam]
    if fam == "openai" and key == "max_completion_tokens":
        native = key  # OpenAI's own newer spelling: keep it
    if native is None or (allowed is not None and native not in allowed):
        logger.info("%s: %s dropped: the installed %s SDK has no such parameter", where, key, fam)
        return
    if concept == "stop" and fam != "openai" and isinstance(value, str):
        value = [value]
    if key not in (concept, native) and key not in _own_spellings(fam):
        logger.info("%s: %s (another provider's name) read as %s for %s", where, key, native, fam)
    out[native] = value


def _own_spellings(fam: str) -> set[str]:
    own = {names[fam] for names in NATIVE.values() if names[fam]}
    return own | ({"max_completion_tokens"} if fam == "openai" else set())
