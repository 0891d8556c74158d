"""finetune's up-front plan (rows, tokens, steps, epochs) with real transformers TrainingArguments:
the demo's data-sized half epoch, and the warning when a copied max_steps covers part of the data."""
from __future__ import annotations

import logging

import pytest
from transformers import TrainingArguments

from llamaduo.pipeline.finetune_plan import log_plan, train_plan


def args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("rows, kw, steps, epochs, seen", [
    (141, {"per_device_train_batch_size": 8, "num_train_epochs": 0.5}, 9, 0.5, 72),   # the demo
    (282, {"per_device_train_batch_size": 8, "num_train_epochs": 0.5}, 18, 0.5, 144),  # grown data: more steps
    (141, {"per_device_train_batch_size": 8, "max_steps": 8}, 8, 8 / 18, 64),          # the old fixed cap
    (100, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "num_train_epochs": 3}, 18, 3, 100),
])
def test_plan_follows_the_trainer_rule(tmp_path, rows, kw, steps, epochs, seen):
    plan = train_plan(rows, 1234, args(tmp_path, **kw))
    assert (plan.steps, plan.rows_seen) == (steps, seen)
    assert plan.epochs == pytest.approx(epochs)


def test_log_says_rows_tokens_steps_epochs_and_warns_on_a_short_cap(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="llamaduo.finetune"):
        log_plan(train_plan(141, 12846, args(tmp_path, per_device_train_batch_size=8, num_train_epochs=0.5)), "d")
    assert "141 rows, 12846 tokens; 9 optimizer steps of 8 rows = 0.50 epochs" in caplog.text
    assert "WARNING" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llamaduo.finetune"):
        log_plan(train_plan(120, 9000, args(tmp_path, per_device_train_batch_size=8, max_steps=8)), "d")
    assert "max_steps=8 trains on 64 of the 120 rows" in caplog.text
