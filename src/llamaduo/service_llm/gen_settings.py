"""Provider-neutral generation settings, mapped onto each provider's own parameter names.

One file works for every provider (switching the judge used to mean rewriting it):

    temperature: 0.7
    max_tokens: 4096        # Gemini: max_output_tokens; local: max_new_tokens
    top_p: 0.95
    stop: ["###"]           # OpenAI: stop; Anthropic/Gemini: stop_sequences; local: stop_strings
    seed: 1234              # dropped with a note where the provider has none (Anthropic)
    openai:    {frequency_penalty: 0.1}   # provider-specific extras, native names, per family
    gemini:    {top_k: 40}

Each provider class declares its names (`gen_names`); a provider's own spelling of a neutral
setting is accepted too, other flat keys pass through to the SDK check, and other providers'
sections are ignored. Details: docs/service_llm.md.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.service_llm")

NEUTRAL_KEYS = ("temperature", "max_tokens", "top_p", "stop", "seed")

# every accepted spelling of a concept
SPELLINGS = {
    "max_tokens": ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens"),
    "stop": ("stop", "stop_sequences", "stop_strings"),
    "seed": ("seed",),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
}


def to_provider(provider: Any, raw: Mapping[str, Any], where: str, allowed: Optional[set[str]] = None,
                sections: Sequence[str] = ()) -> dict[str, Any]:
    """Map a (neutral, native or mixed) generation mapping to `provider`'s SDK kwargs.

    `provider`: the provider class (its `family`, `gen_names`...). `allowed`: the SDK call's
    parameters, when known. A neutral setting the installed SDK has no parameter for (the
    current Anthropic SDK has no temperature/top_p) is dropped with a note, so one shared file
    keeps working; a flat non-neutral key is left for the SDK check to refuse. `sections`: every
    provider family's section name (those keys are never settings).
    """
    fam = provider.family
    section = raw.get(fam) or {}
    if not isinstance(section, dict):
        raise UsageError(f"generation config {where}: section '{fam}' must be a mapping of {fam} parameters")
    flat = {k: v for k, v in raw.items() if k not in sections and k != fam}
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
        _map_concept(provider, concept, key, value, out, where, allowed)
    for key, value in section.items():
        concept = next((c for c, names in SPELLINGS.items() if key in names), None)
        if concept is not None:
            for name in SPELLINGS[concept]:  # the section's spelling replaces the flat one
                out.pop(name, None)
        out[key] = value
    return out


def _map_concept(provider: Any, concept: str, key: str, value: Any, out: dict, where: str,
                 allowed: Optional[set[str]]) -> None:
    native = provider.gen_names[concept]
    if key in provider.own_gen_names:
        native = key  # the SDK's own newer spelling (OpenAI's max_completion_tokens): keep it
    fam = provider.family
    if native is None or (allowed is not None and native not in allowed):
        logger.info("%s: %s dropped: the installed %s SDK has no such parameter", where, key, fam)
        return
    if concept == "stop" and provider.stop_as_list and isinstance(value, str):
        value = [value]
    own = {n for n in provider.gen_names.values() if n} | set(provider.own_gen_names)
    if key not in (concept, native) and key not in own:
        logger.info("%s: %s (another provider's name) read as %s for %s", where, key, native, fam)
    out[native] = value
