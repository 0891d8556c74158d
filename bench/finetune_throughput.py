"""Fine-tuning throughput on CPU: padded batches vs padding-free vs packing, in one run.

Trains the embedded SmolLM2-135M-Instruct with LoRA (r=16, all linear layers, gradient
checkpointing as in TRL's defaults) for one epoch
over the first `--rows` demo conversations, once per variant, each in its own process so the
peak RSS of one does not hide in another's. The same conversations, tokenized the same way
(src.chat_template, assistant-only labels), go through each variant:

  padded        TRL's default: each batch padded to its longest row (the baseline)
  padding_free  each batch flattened into one row, no padding (position_ids mark the rows)
  packing       best-fit-decreasing packing into max_length rows (padding-free inside)

Prints real (non-pad) train tokens/s, peak RSS, and each variant's ratio to `padded`.
Targets (issue 4): padding-free/packing >= 1.3x padded tokens/s, peak RSS < 4 GB.

    python bench/finetune_throughput.py [--rows 64] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("padded", "padding_free", "packing")
TARGET_RATIO = 1.3
TARGET_RSS_GB = 4.0


def measure(variant: str, rows: int, batch_size: int, max_length: int, threads: int | None) -> dict:
    """Train one epoch in this process; return tokens/s and peak RSS."""
    import logging

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

    from src.chat_template import tokenize_dataset
    from src.data import load_split
    from src.models import pick_device_dtype, resolve_model

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)
    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    data = load_split(str(ROOT / "data" / "demo"), "train_sft", required_columns=("messages",))
    data = Dataset.from_dict({"messages": data["messages"][:rows]})
    train = tokenize_dataset(data, tok, train_on_prompt=False, add_special_tokens=False, num_proc=None,
                             desc="tokenize", max_length=max_length)
    tokens = sum(len(x) for x in train["input_ids"])
    _, dtype = pick_device_dtype()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft = get_peft_config(ModelConfig(use_peft=True, lora_r=16, lora_alpha=32, lora_target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    # Packing: rows of max_length; batch chosen so a step holds about as many tokens as the others.
    packed_batch = max(1, round(batch_size * tokens / len(train) / max_length))
    args = SFTConfig(
        output_dir=f"/tmp/llamaduo-bench-{variant}-{os.getpid()}", use_cpu=True, bf16=dtype == torch.bfloat16,
        num_train_epochs=1, per_device_train_batch_size=packed_batch if variant == "packing" else batch_size,
        learning_rate=1e-4, gradient_checkpointing=True, save_strategy="no", report_to="none",
        logging_steps=1000, seed=0, disable_tqdm=True,
        padding_free=variant == "padding_free", packing=variant == "packing",
        max_length=None if variant == "padding_free" else max_length)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=peft)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return {"variant": variant, "tokens": tokens, "seconds": round(seconds, 2), "steps": trainer.state.global_step,
            "tokens_per_s": round(tokens / seconds, 1), "cpu_seconds": round(cpu_seconds, 2),
            "tokens_per_cpu_s": round(tokens / cpu_seconds, 1), "peak_rss_gb": round(rss_gb, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64, help="demo conversations per variant (one epoch)")
    ap.add_argument("--batch-size", type=int, default=16, help="conversations per step (padded / padding-free)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On a shared, busy machine use 1 and read the "
                         "tokens per CPU-second figures: wall time then mostly measures the other processes")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print("RESULT " + json.dumps(measure(args._child, args.rows, args.batch_size, args.max_length, args.threads)))
        return 0
    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--_child", variant, "--rows", str(args.rows),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(f"{variant}: failed (exit {out.returncode})\n{out.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[variant] = json.loads(line[len("RESULT "):])
        r = results[variant]
        print(f"{variant:13s} {r['tokens']:6d} tokens in {r['seconds']:7.1f} s ({r['steps']} steps): "
              f"{r['tokens_per_s']:7.1f} tokens/s ({r['tokens_per_cpu_s']:.1f} tokens per CPU-second), "
              f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    if "padded" not in results:
        return 0
    base, cpu_base = results["padded"]["tokens_per_s"], results["padded"]["tokens_per_cpu_s"]
    ok = True
    for variant, r in results.items():
        if variant == "padded":
            continue
        ratio = r["tokens_per_s"] / base
        print(f"ratio {variant}/padded tokens/s: {ratio:.2f}x (target >= {TARGET_RATIO}x); "
              f"per CPU-second: {r['tokens_per_cpu_s'] / cpu_base:.2f}x")
        ok = ok and ratio >= TARGET_RATIO
    peak = max(r["peak_rss_gb"] for r in results.values())
    print(f"peak RSS (max over variants): {peak:.2f} GB (target < {TARGET_RSS_GB} GB)")
    print("targets met" if ok and peak < TARGET_RSS_GB else "targets NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
