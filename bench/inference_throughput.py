"""Throughput of batch_inference.py's batched path vs a per-prompt `model.generate` loop.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same prompts (the demo data's
coding prompts, cycled to --prompts), same greedy settings, one process, measured back to back:

  baseline: for each prompt, model.generate(one prompt)   (what a naive script does)
  batched : the project's path: chat template -> length-sorted, left-padded batches of
            --batch-size -> HFGenerator.generate (stops at eos/<|im_end|>, decodes new tokens)

Prints generated tokens/s for both (tokens up to the stop token, counted the same way), the
ratio (target >= 6x on 2 CPU cores), how many answers are identical, and peak RSS. With a CUDA
GPU and vLLM installed, --vllm adds the vLLM backend against the hf backend.

  python bench/inference_throughput.py [--prompts 64] [--max-new-tokens 64] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # the checkout's src/llamaduo, then the repo root
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from llamaduo.cli import brief_thread_spin  # noqa: E402

brief_thread_spin()  # as batch_inference.py sets it; both arms share it

import torch  # noqa: E402

from llamaduo.inference.hf_backend import GenSettings, HFGenerator, load_model, load_tokenizer  # noqa: E402
from llamaduo.inference.model_ref import resolve_model_ref  # noqa: E402
from llamaduo.inference.plan import build_work_items, plan_batches  # noqa: E402
from llamaduo.inference.prompts import PromptRecord, tokenize_prompts  # noqa: E402
from llamaduo.models import EMBEDDED_MODEL, pick_device_dtype  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def demo_prompts(n: int) -> list[str]:
    """The demo split's user prompts (test first, then train), cycled to n."""
    texts: list[str] = []
    for split in ("test_sft", "train_sft"):
        path = DEMO / f"{split}.jsonl"
        if path.is_file():
            texts += [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        texts = ["Write a Python function that reverses a string."]
    return [texts[i % len(texts)] for i in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def baseline(model, tokenizer, items, gen: HFGenerator) -> tuple[float, int, list[str]]:
    """One `model.generate` call per prompt, same decoding config, no padding."""
    texts, tokens = [], 0
    start = time.perf_counter()
    for it in items:
        ids = torch.tensor([it.input_ids], device=gen.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen.gen_config)
        g = gen._decode(out[0, ids.shape[1]:].tolist())
        texts.append(g.text)
        tokens += g.new_tokens
    return time.perf_counter() - start, tokens, texts


def batched(gen: HFGenerator, items, batch_size: int) -> tuple[float, int, list[str]]:
    results = {}
    start = time.perf_counter()
    for batch in plan_batches(items, batch_size):
        for it, g in zip(batch, gen.generate(batch)):
            results[it.row_index] = g
    elapsed = time.perf_counter() - start
    ordered = [results[i] for i in range(len(items))]
    return elapsed, sum(g.new_tokens for g in ordered), [g.text for g in ordered]


def vllm_figures(ref, tokenizer, items, settings) -> tuple[float, int] | None:
    """vLLM backend on the same items, when a GPU and vllm are present."""
    if not torch.cuda.is_available():
        return None
    try:
        from llamaduo.inference.hf_backend import stop_token_ids
        from llamaduo.inference.vllm_backend import VLLMGenerator, require_vllm

        require_vllm()
    except Exception as err:  # noqa: BLE001 - optional figure
        print(f"vllm: skipped ({err})")
        return None
    gen = VLLMGenerator(ref, settings, stop_token_ids(tokenizer))
    gen.generate(items[:2])  # warm-up (CUDA graphs, compilation)
    start = time.perf_counter()
    outs = gen.generate(items)
    return time.perf_counter() - start, sum(g.new_tokens for g in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_MODEL)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--vllm", action="store_true", help="also time the vLLM backend (CUDA GPU + vllm)")
    args = ap.parse_args()

    device, dtype = pick_device_dtype()
    ref = resolve_model_ref(args.model)
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, tokenizer, device, dtype)
    rss_loaded = peak_rss_mib()
    settings = GenSettings(args.max_new_tokens, do_sample=False, temperature=0.0, top_p=1.0, seed=0)
    gen = HFGenerator(model, tokenizer, settings)
    records = [PromptRecord(i, str(i), p, "", ({"role": "user", "content": p},))
               for i, p in enumerate(demo_prompts(args.prompts))]
    items = build_work_items(records, tokenize_prompts(records, tokenizer, 64), repeat=1, seed=0)
    gen.generate(items[:1])  # warm-up, excluded from both timings

    print(f"model {args.model} on {device} ({str(dtype).replace('torch.', '')}), {torch.get_num_threads()} threads, "
          f"{len(items)} prompts, greedy, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}")
    t_base, n_base, texts_base = baseline(model, tokenizer, items, gen)
    rss_base = peak_rss_mib()
    t_batch, n_batch, texts_batch = batched(gen, items, args.batch_size)
    rss_batch = peak_rss_mib()
    tps_base, tps_batch = n_base / t_base, n_batch / t_batch
    same = sum(a == b for a, b in zip(texts_base, texts_batch))
    print(f"per-prompt generate loop: {n_base:6d} tokens in {t_base:7.1f} s = {tps_base:7.1f} tok/s")
    print(f"batched (project path)  : {n_batch:6d} tokens in {t_batch:7.1f} s = {tps_batch:7.1f} tok/s")
    print(f"ratio batched / per-prompt: {tps_batch / tps_base:.2f}x (target >= 6x on 2 CPU cores)")
    print(f"identical answers: {same}/{len(items)} (greedy; bf16/padding can flip near-ties)")
    print(f"peak RSS: after load {rss_loaded:.0f} MiB, after baseline {rss_base:.0f} MiB, "
          f"after batched {rss_batch:.0f} MiB")
    if args.vllm:
        figures = vllm_figures(ref, tokenizer, items, settings)
        if figures:
            t_v, n_v = figures
            print(f"vllm backend            : {n_v:6d} tokens in {t_v:7.1f} s = {n_v / t_v:7.1f} tok/s "
                  f"({(n_v / t_v) / tps_batch:.2f}x the hf backend)")


if __name__ == "__main__":
    main()
