"""Fine-tuning throughput on CPU: padded batches vs padding-free vs packing, in one run.

Trains the embedded SmolLM2-135M-Instruct with LoRA (r=16, all linear layers; no gradient
checkpointing, as in config/demo/finetune.yaml) for one epoch over the first `--rows` demo
conversations, once per variant, each in its own process so the peak RSS of one does not hide
in another's. The same conversations, tokenized the same way (llamaduo.chat_template,
assistant-only labels), go through each variant:

  padded_trl    TRL's SFTTrainer as shipped: each batch padded to its longest row (baseline)
  padded        the same padded batches with finetune.py's CPU fast path (src/llamaduo/sft_cpu.py:
                only labelled tokens reach the LM head), to separate the two effects
  padding_free  finetune.py's default: each batch one row of real tokens, per-conversation
                attention, plus the fast LM head
  packing       best-fit-decreasing packing into max_length rows, same fast path

Prints real (non-pad) train tokens/s, peak RSS, and each variant's ratio to `padded_trl` and
to `padded`. Targets (issue 4): padding-free/packing >= 1.3x padded tokens/s, peak RSS < 4 GB.

    python bench/finetune_throughput.py [--rows 64] [--batch-size 8]
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
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # the checkout's src/llamaduo, then the repo root

VARIANTS = ("padded_trl", "padded", "padding_free", "packing")
TARGET_RATIO = 1.3
TARGET_RSS_GB = 4.0


def measure(variant: str, rows: int, batch_size: int, max_length: int, threads: int | None,
            checkpointing: bool) -> dict:
    """Train one epoch in this process; return tokens/s and peak RSS."""
    import logging

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

    from llamaduo.chat_template import tokenize_dataset
    from llamaduo.data import load_split
    from llamaduo.models import pick_device_dtype, resolve_model
    from llamaduo.sft_cpu import enable_fast_lm_head, register_varlen_attention

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
    flat = variant in ("padding_free", "packing")
    if variant != "padded_trl":
        enable_fast_lm_head()  # what finetune.py does on a CPU (cpu_fast_path: true)
    attn = register_varlen_attention() if flat else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    peft = get_peft_config(ModelConfig(use_peft=True, lora_r=16, lora_alpha=32, lora_target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    # Packing: rows of max_length; batch chosen so a step holds about as many tokens as the others.
    packed_batch = max(1, round(batch_size * tokens / len(train) / max_length))
    args = SFTConfig(
        output_dir=f"/tmp/llamaduo-bench-{variant}-{os.getpid()}", use_cpu=True, bf16=dtype == torch.bfloat16,
        num_train_epochs=1, per_device_train_batch_size=packed_batch if variant == "packing" else batch_size,
        learning_rate=1e-4, gradient_checkpointing=checkpointing, save_strategy="no", report_to="none",
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
    ap.add_argument("--batch-size", type=int, default=8, help="conversations per step (padded / padding-free)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On a shared, busy machine use 1 and read the "
                         "tokens per CPU-second figures: wall time then mostly measures the other processes")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute activations in backward (TRL's default; off in config/demo/finetune.yaml)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print("RESULT " + json.dumps(measure(args._child, args.rows, args.batch_size, args.max_length, args.threads,
                                             args.gradient_checkpointing)))
        return 0
    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--_child", variant, "--rows", str(args.rows),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
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
    report(results)
    return 0


def report(results: dict) -> None:
    """Ratios of the padding-free variants to both padded baselines, and the two targets (the
    RSS target is for what finetune.py runs: padding-free or packing)."""
    baselines = [b for b in ("padded_trl", "padded") if b in results]
    flat = [v for v in ("padding_free", "packing") if v in results]
    for base in baselines:
        b = results[base]
        for variant in [v for v in results if v != base and not (base == "padded" and v == "padded_trl")]:
            r = results[variant]
            print(f"ratio {variant}/{base} tokens/s: {r['tokens_per_s'] / b['tokens_per_s']:.2f}x; "
                  f"per CPU-second: {r['tokens_per_cpu_s'] / b['tokens_per_cpu_s']:.2f}x")
    for base in baselines:
        if flat:
            best = max(results[v]["tokens_per_s"] for v in flat) / results[base]["tokens_per_s"]
            print(f"target padding-free/packing >= {TARGET_RATIO}x {base}: {best:.2f}x "
                  f"{'met' if best >= TARGET_RATIO else 'NOT met'}")
    for group in (flat, baselines):
        if group:
            peak = max(results[v]["peak_rss_gb"] for v in group)
            print(f"peak RSS of {'/'.join(group)}: {peak:.2f} GB"
                  + (f" (target < {TARGET_RSS_GB} GB: {'met' if peak < TARGET_RSS_GB else 'NOT met'})"
                     if group is flat else ""))

if __name__ == "__main__":
    raise SystemExit(main())
