"""Prices (USD per 1M input / output tokens) and token estimates.

Source: the maintained `genai-prices` package (pydantic's price table for the OpenAI, Anthropic,
Google... models, shipped as an offline snapshot: no network call), with the `pricing_path`
YAML as an override (default: the shipped llamaduo/defaults/pricing.yaml, which holds only
what genai-prices lacks). Names match exactly, or on an alias listed in the YAML (`aliases:`)
or known to genai-prices (a dated snapshot such as gpt-4o-2024-08-06 -> gpt-4o, logged once).
There is no prefix guessing: o1-mini is not priced as o1, claude-opus-4-5 not as Opus 4.
A model with no price costs 0 with one warning naming `pricing_path`, and `max_cost_usd` then
refuses to start (ServiceLLM.from_args).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llamaduo.errors import UsageError

logger = logging.getLogger("llamaduo.service_llm")


def estimate_tokens(text: str) -> int:
    """~4 characters per token: the usual rule of thumb for English and code with the
    GPT/Claude/Gemini tokenizers; only used for --dry-run and TPM reservations."""
    return max(1, math.ceil(len(text) / 4))


@dataclass
class Pricing:
    """model -> (input USD per 1M tokens, output USD per 1M tokens)."""

    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    _warned: set = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)
    use_maintained: bool = True
    all_free: bool = False
    _resolved: dict = field(default_factory=dict)

    @classmethod
    def free(cls) -> "Pricing":
        """For the in-process `local` provider: every model costs 0 and is 'priced'."""
        return cls(use_maintained=False, all_free=True)

    @classmethod
    def load(cls, path: str | Path) -> "Pricing":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"pricing file not found: {path} (the shipped default is llamaduo/defaults/pricing.yaml)")
        from llamaduo.yaml_strict import load_yaml_strict

        data = load_yaml_strict(path, "pricing file") or {}
        models = data.get("models", data) if isinstance(data, dict) else None
        if not isinstance(models, dict):
            raise UsageError(f"pricing file {path}: expected a mapping 'models: {{name: {{input: .., output: ..}}}}'")
        prices: dict[str, tuple[float, float]] = {}
        aliases: dict[str, str] = {}
        for name, entry in models.items():
            try:
                inp, out = float(entry["input"]), float(entry["output"])
                names = entry.get("aliases") or []
                if not isinstance(names, list):
                    raise TypeError
                aliases.update({str(a): str(name) for a in names})
            except (TypeError, KeyError, ValueError, AttributeError):
                raise UsageError(
                    f"pricing file {path}: model '{name}' needs numeric 'input' and 'output' "
                    "(USD per 1M tokens)"
                ) from None
            if inp < 0 or out < 0:
                raise UsageError(f"pricing file {path}: model '{name}' has a negative price")
            prices[str(name)] = (inp, out)
        return cls(prices, aliases=aliases)

    def price(self, model: str) -> Optional[tuple[float, float]]:
        """(input, output) USD per 1M tokens: the YAML's exact name or alias, else genai-prices'
        exact name or known alias; None when neither knows the model (never a prefix guess)."""
        if self.all_free:
            return (0.0, 0.0)
        if model in self.prices:
            return self.prices[model]
        if model in self.aliases:
            return self.prices[self.aliases[model]]
        if not self.use_maintained:
            return None
        if model not in self._resolved:
            self._resolved[model] = maintained_price(model)
        return self._resolved[model]

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model '%s' in genai-prices or the pricing_path YAML: its cost is "
                               "reported as 0; add it to a YAML of your own and set pricing_path", model)
            return 0.0
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def maintained_price(model: str) -> Optional[tuple[float, float]]:
    """Base-tier USD per 1M tokens from genai-prices' offline snapshot, or None when it does not
    know the model (or is not installed). Logs once when the name is priced as another id."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # a dependency; missing only in a broken install: the YAML alone then
        logger.warning("genai-prices is not installed: prices come from the pricing_path YAML only")
        return None
    try:
        # 1000 tokens each way: the base tier (a 1M-token call would be priced at a long-context tier)
        calc = calc_price(Usage(input_tokens=1000, output_tokens=1000), model_ref=model)
    except LookupError:
        return None
    if calc.model.id != model:
        logger.info("pricing model '%s' as genai-prices' '%s' (%s), a known alias", model, calc.model.id,
                    calc.provider.id)
    return float(calc.input_price) * 1000, float(calc.output_price) * 1000
