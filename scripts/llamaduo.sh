#!/usr/bin/env bash
# The LlamaDuo loop: chain the stage scripts until the small model qualifies.
#
#   round 0:  base model (untuned) -> batch_inference -> evaluation
#   round k:  finetune -> batch_inference -> evaluation
#             exit 0 from evaluation (qualified)     -> stop, exit 0
#             exit 3 (not qualified), k < MAX_ROUNDS -> data_gen -> dataset_merge -> round k+1
#             exit 3 at k = MAX_ROUNDS               -> stop, exit 3
#
# Every setting comes from the stage configs. This script only passes, per round, the paths
# that make each round write to its own folder <OUT>/round_<k>/ and read the previous one's.
# Variables (environment, with defaults):
#   FINETUNE_CONFIG  config/demo/finetune.yaml
#   INFER_CONFIG     config/demo/batch_inference.yaml
#   EVAL_CONFIG      config/demo/evaluation.yaml
#   DATAGEN_CONFIG   config/demo/data_gen.yaml
#   MERGE_CONFIG     config/demo/dataset_merge.yaml
#   OUT              outputs/llamaduo        (the output root)
#   MAX_ROUNDS       2                       (fine-tuning rounds after round 0)
#   PYTHON           .venv/bin/python if present, else python3
# Relative paths are relative to the repository root (the script cd's there).
#
# Resume: a stage that exits 0 (or 3, for evaluation) leaves <OUT>/round_<k>/<stage>.done
# (exit code, seconds, config hash); a rerun with the same OUT skips it and reuses its
# recorded exit code, with a warning if its config file changed since. An interrupted stage
# has no .done and runs again; the stages resume their own partial work where they can.
# <OUT>/loop.log records every start / done / skip / failure, one line each.
#
# If data_gen keeps no pair (allowed by its allow_empty_result key), the loop stops with 3:
# another round would train on the same data.
#
# Exit codes: 0 qualified, 3 never qualified within MAX_ROUNDS (or no new data), 1 a stage failed,
# 2 bad usage or input (from this script or propagated from a stage), 130 interrupted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) echo "error: llamaduo.sh takes no arguments (got: $*); set the variables instead, see --help" >&2; exit 2 ;;
  esac
fi

FINETUNE_CONFIG="${FINETUNE_CONFIG:-config/demo/finetune.yaml}"
INFER_CONFIG="${INFER_CONFIG:-config/demo/batch_inference.yaml}"
EVAL_CONFIG="${EVAL_CONFIG:-config/demo/evaluation.yaml}"
DATAGEN_CONFIG="${DATAGEN_CONFIG:-config/demo/data_gen.yaml}"
MERGE_CONFIG="${MERGE_CONFIG:-config/demo/dataset_merge.yaml}"
OUT="${OUT:-outputs/llamaduo}"
MAX_ROUNDS="${MAX_ROUNDS:-2}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

die_usage() { echo "error: $*" >&2; exit 2; }

[[ "$MAX_ROUNDS" =~ ^[0-9]+$ ]] && (( MAX_ROUNDS >= 1 )) \
  || die_usage "MAX_ROUNDS must be an integer >= 1, got '$MAX_ROUNDS'"
for var in FINETUNE_CONFIG INFER_CONFIG EVAL_CONFIG DATAGEN_CONFIG MERGE_CONFIG; do
  [[ -f "${!var}" ]] || die_usage "$var=${!var}: config file not found"
done
command -v "$PYTHON" >/dev/null 2>&1 || die_usage "PYTHON=$PYTHON not found (run the setup first)"

mkdir -p "$OUT"
LOG="$OUT/loop.log"

# The loop's own small helpers need a plain interpreter with PyYAML. PYTHON may be a launcher
# wrapper (e.g. one running `accelerate launch "$@"`), so fall back when it is not one.
HELPER_PY="$PYTHON"
if ! "$HELPER_PY" -c 'import yaml' >/dev/null 2>&1; then
  if [[ -x .venv/bin/python ]]; then HELPER_PY=.venv/bin/python; else HELPER_PY=python3; fi
fi
cfg() { "$HELPER_PY" scripts/loop_config.py "$@"; }

log() {  # log ROUND STAGE EVENT...: one line to the terminal and to loop.log
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) round=$1 stage=$2 ${*:3}"
  echo "[llamaduo] $line" >&2
  echo "$line" >>"$LOG"
}

CHILD=""
on_signal() {
  # Forward the stop to the running stage (a background job ignores SIGINT in bash), wait
  # for it so it can flush its partial output, and leave no .done for it: a rerun resumes.
  if [[ -n "$CHILD" ]]; then kill -TERM "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
  log "${ROUND:--}" "${STAGE:--}" event=interrupted
  exit 130
}
trap on_signal INT TERM

STAGE_RC=0
run_stage() {  # run_stage ROUND STAGE SCRIPT CONFIG [CLI overrides...]; sets STAGE_RC
  ROUND="$1" STAGE="$2"
  local script="$3" config="$4"; shift 4
  local dir="$OUT/round_$ROUND"
  local marker="$dir/$STAGE.done"
  mkdir -p "$dir"
  local config_sha
  config_sha="$(sha256sum "$config" | cut -c1-16)"
  if [[ -f "$marker" ]]; then
    STAGE_RC="$(head -n1 "$marker")"
    log "$ROUND" "$STAGE" event=skip rc="$STAGE_RC"
    if [[ "$(sed -n 3p "$marker")" != "$config_sha" ]]; then
      echo "warning: $config changed since round $ROUND's $STAGE ran; its old result is reused." \
        "Delete $marker (or use a new OUT) to run it again." >&2
    fi
    return 0
  fi
  log "$ROUND" "$STAGE" event=start cmd="\"$script --from-config $config $*\""
  local started=$SECONDS rc=0
  "$PYTHON" "$script" --from-config "$config" "$@" > >(tee -a "$dir/$STAGE.log") 2>&1 &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  local secs=$((SECONDS - started))
  if [[ $rc -eq 0 || ( $rc -eq 3 && "$STAGE" == evaluation ) ]]; then
    # Written last and atomically: a .done always means the stage really finished.
    printf '%s\n%s\n%s\n' "$rc" "$secs" "$config_sha" >"$marker.tmp" && mv "$marker.tmp" "$marker"
    log "$ROUND" "$STAGE" event=done rc="$rc" seconds="$secs"
    STAGE_RC=$rc
    return 0
  fi
  log "$ROUND" "$STAGE" event=failed rc="$rc" seconds="$secs" log="$dir/$STAGE.log"
  echo "error: $STAGE failed in round $ROUND (exit $rc); see $dir/$STAGE.log" >&2
  case $rc in 2|130) exit "$rc" ;; *) exit 1 ;; esac
}

finish() {  # finish CODE MESSAGE: print + write the results table, then exit
  log "${ROUND:--}" loop event=finish rc="$1" "${*:2}"
  "$HELPER_PY" scripts/results_table.py "$OUT" --write "$OUT/results.md" || true
  exit "$1"
}

log - loop event=begin out="$OUT" max_rounds="$MAX_ROUNDS" \
  configs="$FINETUNE_CONFIG,$INFER_CONFIG,$EVAL_CONFIG,$DATAGEN_CONFIG,$MERGE_CONFIG"

BASE_MODEL="$(cfg get "$FINETUNE_CONFIG" model_name_or_path)" \
  || die_usage "$FINETUNE_CONFIG must set model_name_or_path (round 0 runs that base model)"
TRAIN_SPLITS="$(cfg get "$FINETUNE_CONFIG" dataset_splits '["train_sft"]')"

# ---- round 0: the untuned base model sets the baseline ----------------------------------
R="$OUT/round_0"
run_stage 0 batch_inference batch_inference.py "$INFER_CONFIG" \
  --ft-model-id "$BASE_MODEL" --lm-response-ds-id "$R/responses"
run_stage 0 evaluation evaluation.py "$EVAL_CONFIG" \
  --lm-response-ds-id "$R/responses" --eval-ds-id "$R/eval"
if [[ $STAGE_RC -eq 0 ]]; then
  finish 0 msg="\"the base model already qualifies; nothing to fine-tune\""
fi

# ---- rounds 1..MAX_ROUNDS ----------------------------------------------------------------
for ((k = 1; k <= MAX_ROUNDS; k++)); do
  R="$OUT/round_$k"
  mkdir -p "$R"
  mixer_args=()
  if ((k == 1)); then
    # Round 1 trains on what the finetune config says; the merge starts from the merge
    # config's first dataset (point both at the same reference data).
    MIXER="$(cfg get "$FINETUNE_CONFIG" dataset_mixer)"
    FIRST_DS="$(cfg get "$MERGE_CONFIG" first_ds_id)"
  else
    # Later rounds train on the previous round's merged data, and merge onto it.
    PREV="$OUT/round_$((k - 1))/merged"
    MIXER="$(cfg mixer "$PREV")"
    mixer_args=(--dataset-mixer "$MIXER")
    FIRST_DS="$PREV"
  fi
  printf '{"dataset_mixer": %s, "dataset_splits": %s}\n' "$MIXER" "$TRAIN_SPLITS" >"$R/train_data.json"

  run_stage "$k" finetune finetune.py "$FINETUNE_CONFIG" \
    --output-dir "$R/model" "${mixer_args[@]}"
  run_stage "$k" batch_inference batch_inference.py "$INFER_CONFIG" \
    --ft-model-id "$R/model" --lm-response-ds-id "$R/responses"
  run_stage "$k" evaluation evaluation.py "$EVAL_CONFIG" \
    --lm-response-ds-id "$R/responses" --eval-ds-id "$R/eval"
  if [[ $STAGE_RC -eq 0 ]]; then
    finish 0 msg="\"qualified in round $k\""
  fi
  if ((k == MAX_ROUNDS)); then
    finish 3 msg="\"not qualified after $MAX_ROUNDS rounds (raise MAX_ROUNDS to continue)\""
  fi
  run_stage "$k" data_gen data_gen.py "$DATAGEN_CONFIG" \
    --synth-ds-id "$R/synth"
  # A weak generator (the demo's 135M `local` model) may keep no pair at all; data_gen then
  # exits 0 only with allow_empty_result. Another round would retrain on the same data and
  # score the same, so stop here instead of burning a round.
  KEPT=unknown
  if [[ -f "$R/synth/summary.json" ]]; then KEPT="$(cfg get "$R/synth/summary.json" kept unknown)"; fi
  if [[ "$KEPT" == 0 ]]; then
    log "$k" data_gen event=no_new_data summary="$R/synth/summary.json"
    finish 3 msg="\"not qualified, and data_gen kept no usable pair in round $k: nothing new to train on\""
  fi
  run_stage "$k" dataset_merge dataset_merge.py "$MERGE_CONFIG" \
    --first-ds-id "$FIRST_DS" --second-ds-id "$R/synth" --result-ds-id "$R/merged"
done
