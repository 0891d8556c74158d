#!/usr/bin/env bash
# The LlamaDuo loop in a clone: runs the packaged loop (src/llamaduo/loop/llamaduo.sh, installed
# as `llamaduo-loop`) from the clone's root, with this checkout's src/ first on PYTHONPATH, so
# relative paths (the config/demo defaults) are relative to the clone as before. See --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec bash "$ROOT/src/llamaduo/loop/llamaduo.sh" "$@"
