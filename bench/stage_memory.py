"""Peak resident memory of every loop stage on HumanEval-sized data, against a baseline measured
in the same run: a process that only loads the model (SmolLM2-135M) and its tokenizer.

    python bench/stage_memory.py                # ~10-15 min on 2 idle cores
    python bench/stage_memory.py --before       # also the old finetune setting (no gradient
                                                # checkpointing): ~12 GB, several minutes more

The workload is the one that once reached 12.5 GB: 120 train conversations of up to ~1k tokens
(max length 1024, padding-free batches of 8), 44 test prompts x 384 new tokens, the embedded
SmolLM2-135M, the demo configs. Data are synthetic (bench/humaneval_sized.py), offline.
Each stage is its own process; its peak is `ru_maxrss` from os.wait4 (the kernel's figure for
that child), and the stage's own `peak_rss_mb` (summary.json) is shown beside it. Target: no
stage above 4 GiB. Exit 1 if one is.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # the checkout's src/llamaduo, then the repo root

LIMIT_MB = 4096
LOAD_ONLY = ("from transformers import AutoModelForCausalLM, AutoTokenizer; from llamaduo.models import resolve_model; "
             "p = resolve_model('smollm2-135m-instruct'); AutoTokenizer.from_pretrained(p); "
             "AutoModelForCausalLM.from_pretrained(p)")


def measure(cmd: list[str], log: Path) -> float:
    """Run `cmd` (from the repo root) and return its peak RSS in MiB; raise if it fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):  # evaluation exits 3 when not qualified: still a finished run
        raise SystemExit(f"{cmd[1]} failed with exit {code}; see {log}")
    return usage.ru_maxrss / 1024


def summary_peak(path: Path) -> float | None:
    return json.loads(path.read_text()).get("peak_rss_mb") if path.is_file() else None


def stages(work: Path, data: Path, steps: int, before: bool) -> list[tuple[str, list[str], Path]]:
    """(label, command, summary.json) per stage, in loop order."""
    py = sys.executable
    ft = [py, "finetune.py", "--from-config", "config/demo/finetune.yaml", "--dataset-mixer",
          json.dumps({str(data): 1.0}), "--dataset-splits", "train_sft", "--max-seq-length", "1024",
          "--max-steps", str(steps), "--save-strategy", "no"]
    out = [("finetune", ft + ["--output-dir", str(work / "model")], work / "model" / "finetune_summary.json")]
    if before:
        out.append(("finetune, no gradient checkpointing (before)",
                    ft + ["--output-dir", str(work / "model_before"), "--no-gradient-checkpointing"],
                    work / "model_before" / "finetune_summary.json"))
    out += [
        ("batch_inference", [py, "batch_inference.py", "--from-config", "config/demo/batch_inference.yaml",
                             "--ft-model-id", str(work / "model"), "--test-ds-id", str(data),
                             "--max-new-tokens", "384", "--lm-response-ds-id", str(work / "responses")],
         work / "responses" / "summary.json"),
        ("evaluation (reference judge)", [py, "evaluation.py", "--from-config", "config/demo/evaluation.yaml",
                                          "--lm-response-ds-id", str(work / "responses"),
                                          "--eval-ds-id", str(work / "eval")], work / "eval" / "summary.json"),
        ("data_gen (local SmolLM2)", [py, "data_gen.py", "--from-config", "config/demo/data_gen.yaml",
                                      "--reference-ds-id", str(data), "--synth-ds-id", str(work / "synth")],
         work / "synth" / "summary.json"),
        ("dataset_merge", [py, "dataset_merge.py", "--from-config", "config/demo/dataset_merge.yaml",
                           "--first-ds-id", str(data), "--second-ds-id", str(work / "synth"),
                           "--result-ds-id", str(work / "merged")], work / "merged" / "summary.json"),
    ]
    return out


def main() -> int:
    from bench.humaneval_sized import write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/llamaduo_stage_memory")
    parser.add_argument("--steps", type=int, default=2, help="fine-tuning steps (peak memory comes with the first)")
    parser.add_argument("--before", action="store_true", help="also run the old finetune setting")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write(work / "data")
    base = measure([sys.executable, "-c", LOAD_ONLY], work / "load_only.log")
    print(f"baseline: loading SmolLM2-135M + tokenizer only: {base:.0f} MiB", flush=True)
    rows = []
    for label, cmd, summary in stages(work, data, args.steps, args.before):
        peak = measure(cmd, work / f"{label.split()[0]}.log")
        rows.append((label, peak, summary_peak(summary)))
        print(f"  {label}: {peak:.0f} MiB", flush=True)
    print("\n| stage | peak RSS (MiB) | x model-load baseline | stage's own peak_rss_mb | <= 4 GiB |")
    print("|---|---|---|---|---|")
    for label, peak, own in rows:
        print(f"| {label} | {peak:.0f} | {peak / base:.2f}x | {own} | {'yes' if peak <= LIMIT_MB else 'NO'} |")
    over = [label for label, peak, _ in rows if peak > LIMIT_MB and "before" not in label]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
