"""A CPU run of the shipped recipes (issue 27): the CPU fast path by default (one log line says
so, or says it is off), at least two losses (the first and the last step always), a logging
interval scaled to the run's length, and evaluation during training done once, not twice.
In-process, on the tiny random model and a few rows."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llamaduo.pipeline.finetune_logging import scaled_logging_steps
from tests.test_finetune import _rows, _write_jsonl


@pytest.fixture(scope="module")
def rows24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cpu-recipe-data")
    _write_jsonl(folder / "train_sft.jsonl", _rows(24))
    _write_jsonl(folder / "test_sft.jsonl", _rows(4))
    return folder


def _run(config: Path, model: Path, data: Path, out: Path, *extra: str) -> tuple[dict, list[str]]:
    from llamaduo.pipeline import finetune

    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("llamaduo.finetune")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        code = finetune.main(["--from-config", str(config), "--model-name-or-path", str(model),
                              "--dataset-id", str(data), "--output-dir", str(out), "--report-to", "none",
                              "--save-strategy", "no", "--dataloader-num-workers", "0", *extra])
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert code == 0
    return json.loads((out / "finetune_summary.json").read_text()), records


def test_the_cpu_recipe_takes_the_fast_path_and_logs_first_and_last_loss(repo_root: Path, tiny_model_dir: Path,
                                                                        rows24: Path, tmp_path: Path) -> None:
    # config/cpu/finetune.yaml as shipped: half an epoch of batches of 8 = 2 steps on 24 rows,
    # logging_steps 5 (which alone would log no loss at all in 2 steps)
    summary, log = _run(repo_root / "config/cpu/finetune.yaml", tiny_model_dir, rows24, tmp_path / "cpu")
    fast = [m for m in log if m.startswith("CPU fast path")]
    assert len(fast) == 1 and fast[0].startswith("CPU fast path on: padding-free batches"), fast
    assert "sdpa_varlen" in fast[0] and summary["attn_implementation"] == "sdpa_varlen"
    # the tiny Llama's 2 layers x 7 LoRA targets (q, k, v, o, gate, up, down)
    assert "LoRA: 14 of 14 layers compute in one autograd function each (CPU fast path)" in log, log
    assert summary["global_step"] == 2 and summary["loss_steps"] == [1, 2], summary
    assert len(summary["losses"]) == 2 and summary["first_loss"] != summary["last_loss"]
    assert any("every 1 steps instead of every 5" in m for m in log), log
    assert any("loss " in m and "at step 1 ->" in m and "at step 2, 2 losses logged" in m for m in log), log


def test_fused_lora_layers_train_the_same_under_gradient_checkpointing(repo_root: Path, tiny_model_dir: Path,
                                                                      rows24: Path, tmp_path: Path) -> None:
    """Checkpointing recomputes each layer's forward in the backward pass, through the fused LoRA
    function too: the same seeded run gives the same losses with and without it."""
    plain, _ = _run(repo_root / "config/cpu/finetune.yaml", tiny_model_dir, rows24, tmp_path / "plain")
    checked, log = _run(repo_root / "config/cpu/finetune.yaml", tiny_model_dir, rows24, tmp_path / "ckpt",
                        "--gradient-checkpointing", "true")
    assert "LoRA: 14 of 14 layers compute in one autograd function each (CPU fast path)" in log
    assert len(plain["losses"]) == 2 and plain["losses"] == pytest.approx(checked["losses"], rel=1e-5)


def test_lora_dropout_keeps_pefts_layers_and_says_so(repo_root: Path, tiny_model_dir: Path, rows24: Path,
                                                     tmp_path: Path) -> None:
    _, log = _run(repo_root / "config/cpu/finetune.yaml", tiny_model_dir, rows24, tmp_path / "dropout",
                  "--lora-dropout", "0.05")
    (line,) = [m for m in log if m.startswith("LoRA: ")]
    assert line.startswith("LoRA: 0 of 14 layers compute in one autograd function each") and "lora_dropout > 0" in line


def test_the_gpu_recipe_on_a_cpu_takes_the_fast_path(repo_root: Path, tiny_model_dir: Path,
                                                                       rows24: Path, tmp_path: Path) -> None:
    """config/sample_config.yaml (padded batches, eval every epoch) as a CPU-only site runs it:
    padding-free and the fast head anyway, every step logged, and the epoch's eval metrics kept."""
    summary, log = _run(repo_root / "config/sample_config.yaml", tiny_model_dir, rows24, tmp_path / "gpu",
                        "--tokenizer-name-or-path", str(tiny_model_dir), "--no-push-to-hub",
                        "--num-train-epochs", "1", "--max-length", "256",
                        "--no-merge-adapter", "--preprocessing-num-workers", "1")
    assert [m for m in log if m.startswith("CPU fast path on: padding-free batches")], log
    assert summary["attn_implementation"] == "sdpa_varlen"
    # 24 rows / batch 4 / accumulation 2 = 3 steps; every step logged (5 > 3 // 20)
    assert summary["loss_steps"] == [1, 2, 3] and "eval_loss" in summary["metrics"]


def test_turning_the_fast_path_off_is_said_and_kept(repo_root: Path, tiny_model_dir: Path, rows24: Path,
                                                    tmp_path: Path) -> None:
    summary, log = _run(repo_root / "config/cpu/finetune.yaml", tiny_model_dir, rows24, tmp_path / "off",
                        "--no-cpu-fast-path")
    (line,) = [m for m in log if m.startswith("CPU fast path")]
    assert line.startswith("CPU fast path off (cpu_fast_path: false)") and "padding_free=False" in line
    assert not [m for m in log if "one autograd function" in m], log  # PEFT's own LoRA layers
    assert summary["attn_implementation"] == "sdpa" and len(summary["losses"]) == 2


@pytest.mark.parametrize("configured, steps, expected", [(5, 8, 1), (5, 100, 5), (10, 100, 5), (50, 10_000, 50),
                                                         (1, 3, 1), (0.1, 8, 0.1)])
def test_logging_interval_scales_with_the_run(configured: float, steps: int, expected: float) -> None:
    assert scaled_logging_steps(configured, steps) == expected
