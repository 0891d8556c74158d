"""How much of the data a fine-tuning run will see, said before it starts.

WHY: a `max_steps` copied from a demo silently trains on part of a grown dataset (8 steps of
8 rows = 64 of 120 rows). The trainer only reports epochs afterwards; this computes rows,
tokens, optimizer steps and epochs up front with the same rule as transformers' Trainer
(`ceil(rows / (batch x world)) // grad_accum` steps per epoch, `ceil(epochs x that)` steps
when `max_steps` is not set), so the log says it and a cap below one epoch is a warning.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("llamaduo.finetune")


@dataclass(frozen=True)
class TrainPlan:
    rows: int
    tokens: int
    steps: int
    epochs: float
    rows_per_step: int
    by_max_steps: bool  # True: `max_steps` fixed the length; False: `num_train_epochs` did

    @property
    def rows_seen(self) -> int:
        return min(self.rows, self.steps * self.rows_per_step)

    def describe(self) -> str:
        basis = "max_steps" if self.by_max_steps else "num_train_epochs"
        return (f"{self.rows} rows, {self.tokens} tokens; {self.steps} optimizer steps of {self.rows_per_step} "
                f"rows = {self.epochs:.2f} epochs (from {basis})")


def train_plan(rows: int, tokens: int, sft: Any) -> TrainPlan:
    """The run's length in rows, steps and epochs, from the SFT/Trainer arguments."""
    world = max(1, int(getattr(sft, "world_size", 1) or 1))
    batch = max(1, int(sft.per_device_train_batch_size)) * world
    accum = max(1, int(sft.gradient_accumulation_steps))
    per_epoch = max(1, math.ceil(rows / batch) // accum)
    if sft.max_steps and sft.max_steps > 0:
        steps, epochs, by_steps = int(sft.max_steps), sft.max_steps / per_epoch, True
    else:
        epochs = float(sft.num_train_epochs)
        steps, by_steps = max(1, math.ceil(epochs * per_epoch)), False
    return TrainPlan(rows, tokens, steps, epochs, batch * accum, by_steps)


def log_plan(plan: TrainPlan, source: Any) -> None:
    """One line before training; a warning when `max_steps` stops it short of one epoch."""
    logger.info("training data: %s, from %s", plan.describe(), source)
    if plan.by_max_steps and plan.rows_seen < plan.rows:
        logger.warning("max_steps=%d trains on %d of the %d rows (%.2f epochs); set max_steps: -1 and "
                       "num_train_epochs to size the run from the data", plan.steps, plan.rows_seen,
                       plan.rows, plan.epochs)
