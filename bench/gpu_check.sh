#!/usr/bin/env bash
# The one prepared GPU check, for the lent H200 (docs/gpu_check.md). The exact device call:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Before it, here on the CPU (once): `python bench/gpu_check.py prepare` (downloads trl, datasets,
# dill, multiprocess and bitsandbytes wheels for Python 3.12 into .whl/wheels, copies SmolLM2's
# config and tokenizer into .whl/model_assets, writes the CPU reference answers to
# bench/gpu_check_reference.json), then `bash bench/gpu_check.sh --dry-run` (the plan; checks
# that the carried files and the working tree fit in 64 MiB). The device image has Python 3.12,
# torch 2.11, transformers 5.17, peft and accelerate, no network. Prints one table; ~5 min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "${1:-}" == "--dry-run" ]]; then
  exec "${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}" bench/gpu_check.py dry-run
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD"
python3 -c 'import torch, transformers, peft, trl, datasets; print("torch", torch.__version__, "transformers",
transformers.__version__, "peft", peft.__version__, "trl", trl.__version__, "datasets", datasets.__version__,
"cuda", torch.cuda.is_available())'
python3 bench/gpu_check.py run 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
