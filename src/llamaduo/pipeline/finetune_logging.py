"""Loss logging that shows learning on short runs: the first and the last step always, and a
logging interval scaled to the run's length.

WHY: a recipe's `logging_steps` is written for one run length. `logging_steps: 5` on a CPU run
of 8 steps logged one loss (step 5), so the summary read `loss 0.334 -> 0.334`, as if nothing
was learned. The interval is therefore capped at about 20 points per run, and a callback logs
step 1 and the final step whatever the interval or strategy.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("llamaduo.finetune")

POINTS_PER_RUN = 20  # at least this many logged losses when the run has that many steps


def scaled_logging_steps(configured: float, steps: int) -> int | float:
    """The interval to log at: the configured one, or `max(1, steps // 20)` when that is smaller
    (a long run keeps its configured interval). A ratio (< 1) is transformers' own scaling: kept."""
    if configured < 1:
        return configured
    return min(int(configured), max(1, steps // POINTS_PER_RUN))


def scale_logging(sft: Any, steps: int) -> None:
    """Set `sft.logging_steps` for a run of `steps` optimizer steps, with one line when it changes."""
    if str(getattr(sft.logging_strategy, "value", sft.logging_strategy)) != "steps":
        return  # "epoch" or "no": the callback still logs the first and last step
    configured = sft.logging_steps
    scaled = scaled_logging_steps(configured, steps)
    if scaled != configured:
        logger.info("logging the loss every %d steps instead of every %s: the run has %d steps", scaled,
                    configured, steps)
        sft.logging_steps = scaled


def first_and_last_loss_callback() -> Any:
    """A TrainerCallback that logs (loss, learning rate) at step 1 and at the final step."""
    from transformers import TrainerCallback

    class FirstAndLastLoss(TrainerCallback):
        """Sets `should_log` where the interval may not: after step 1 and after the last step.
        The Trainer's logged loss is the mean since the previous log, so step 1's is exact."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == 1 or state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return FirstAndLastLoss()
