"""Prices (USD per 1M input / output tokens, from pricing_path; default: the shipped llamaduo/defaults/pricing.yaml) and token estimates.

Prices change; the YAML is the user's to edit. A model missing from it costs 0 with one
warning (and `max_cost_usd` then refuses to start, see ServiceLLM.from_args). Names match
exactly, else by the longest listed prefix, so "gpt-4o-2024-08-06" uses "gpt-4o".
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

    @classmethod
    def free(cls) -> "Pricing":
        """For the in-process `local` provider: every model costs 0 and is 'priced'."""
        p = cls()
        p.prices[""] = (0.0, 0.0)  # the empty prefix matches every model name
        return p

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
        prices = {}
        for name, entry in models.items():
            try:
                inp, out = float(entry["input"]), float(entry["output"])
            except (TypeError, KeyError, ValueError):
                raise UsageError(
                    f"pricing file {path}: model '{name}' needs numeric 'input' and 'output' "
                    "(USD per 1M tokens)"
                ) from None
            if inp < 0 or out < 0:
                raise UsageError(f"pricing file {path}: model '{name}' has a negative price")
            prices[str(name)] = (inp, out)
        return cls(prices)

    def price(self, model: str) -> Optional[tuple[float, float]]:
        if model in self.prices:
            return self.prices[model]
        matches = [name for name in self.prices if model.startswith(name)]
        if matches:
            return self.prices[max(matches, key=len)]
        return None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model '%s' in pricing.yaml: its cost is reported as 0", model)
            return 0.0
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
