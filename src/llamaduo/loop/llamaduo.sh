#!/usr/bin/env bash
# usage: llamaduo-loop [--check]              installed (pip install .): relative paths are
#                                             relative to the current folder
#        bash scripts/llamaduo.sh [--check]   in a clone: the same loop, run from the clone's root
#
# The LlamaDuo loop: chain the stages until the small model qualifies.
#
#   round 0:  base model (untuned) -> batch_inference -> evaluation
#   round k:  finetune -> batch_inference -> evaluation
#             exit 0 from evaluation (qualified)     -> stop, exit 0
#             exit 3 (not qualified), k < MAX_ROUNDS -> data_gen -> dataset_merge -> round k+1
#             exit 3 at k = MAX_ROUNDS               -> stop, exit 3
#
# Every stage runs as `$PYTHON -m llamaduo <stage> --from-config <config> [overrides]`.
# Every setting comes from the stage configs. This script only passes, per round, the paths
# that make each round write to its own folder <OUT>/round_<k>/ and read the previous one's,
# and finetune's --eval-strategy no (the round's evaluation follows the fine-tune at once).
# Variables (environment, with defaults):
#   FINETUNE_CONFIG  config/demo/finetune.yaml
#   INFER_CONFIG     config/demo/batch_inference.yaml
#   EVAL_CONFIG      config/demo/evaluation.yaml
#   DATAGEN_CONFIG   config/demo/data_gen.yaml
#   MERGE_CONFIG     config/demo/dataset_merge.yaml
#   OUT              outputs/llamaduo        (the output root)
#   MAX_ROUNDS       2                       (fine-tuning rounds after round 0)
#   MAX_COST_USD     unset = no loop budget  (USD for all service-LLM calls of the whole loop)
#   CHECK_ONLY       0                       (1 = run only the check below, then exit)
#   PYTHON           llamaduo-loop: its own interpreter; bash scripts/llamaduo.sh:
#                    .venv/bin/python if present, else python3
# Relative paths are relative to the current folder (scripts/llamaduo.sh runs from the
# clone's root, where the config/demo defaults are; elsewhere set the five *_CONFIG).
#
# Check before spending: before round 0 the loop checks all five configs as it will run them
# (python -m llamaduo.loop.check, one process): each stage's config parsed the stage's own way (what
# its --print-config shows) with the loop's overrides, the stage's own value checks, the input
# datasets and files, the service-LLM credentials and, for a paid provider, that its API
# answers. A problem exits 2 naming the stage. `--check` (or CHECK_ONLY=1) runs only that.
#
# Each round's data_gen gets seed = its config's seed + round and existing_ds_id = the data
# trained on so far, so it asks about seeds earlier rounds did not use. With MAX_COST_USD,
# each paid stage gets --max-cost-usd = what is left (the spend is summed from the stages'
# summary.json files); the loop stops with exit 1 once it is spent.
#
# Resume: a stage that exits 0 (or 3, for evaluation) leaves <OUT>/round_<k>/<stage>.done
# (exit code, seconds, config hash, peak resident memory in MB from llamaduo.loop.measured); a
# rerun with the same OUT skips it and reuses its
# recorded exit code, with a warning if its config file changed since. An interrupted stage
# has no .done and runs again; the stages resume their own partial work where they can.
# <OUT>/loop.log records every start / done / skip / failure, one line each.
#
# If the merge added no new row (its summary.json `added` is 0, e.g. every kept pair repeated
# earlier data, or data_gen kept none under allow_empty_result), the loop stops with 3:
# another round would train on the same data.
#
# Stand-in teacher (offline demo): when DATAGEN_CONFIG's service_model_name is
# llamaduo-standin-teacher, the loop starts python -m llamaduo.loop.standin_teacher on
# 127.0.0.1 (a free port) before the check, gives data_gen --service-llm-base-url for it (data_gen
# reaches it through the real `openai` provider), logs to <OUT>/standin_teacher.log (written at exit, once the check passed) and stops it
# when the loop ends, however it ends. It is a seeded generator of demo pairs, NOT an LLM.
#
# Pictures: at the end the loop also writes <OUT>/results.png (llamaduo.loop.chart): per round,
# the task metric with its 95% CI and bar, and the judge's means with their thresholds.
#
# Exit codes: 0 qualified, 3 never qualified within MAX_ROUNDS (or no new data), 1 a stage
# failed or MAX_COST_USD is spent, 2 bad usage or input (from the check, this script or a
# stage), 130 interrupted.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

CHECK_ONLY="${CHECK_ONLY:-0}"
if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -V|--version) "${LLAMADUO_HELPER_PYTHON:-${PYTHON:-python3}}" -c 'from llamaduo.version import version_line; print(version_line("llamaduo-loop"))'; exit 0 ;;
    --check) [[ $# -eq 1 ]] || { echo "error: --check takes no value (got: $*)" >&2; exit 2; }; CHECK_ONLY=1 ;;
    *) echo "error: the loop takes no arguments but --check (got: $*); set the variables instead, see --help" >&2; exit 2 ;;
  esac
fi

# The config variables the user did not set (for the message when a default is missing)
UNSET_CONFIGS=""
for var in FINETUNE_CONFIG INFER_CONFIG EVAL_CONFIG DATAGEN_CONFIG MERGE_CONFIG; do
  [[ -n "${!var:-}" ]] || UNSET_CONFIGS+=" $var"
done
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

# at most 4 digits before bash arithmetic sees it: 99999999999999999999 wraps around in (( ))
[[ "$MAX_ROUNDS" =~ ^0*[0-9]{1,4}$ ]] && (( 10#$MAX_ROUNDS >= 1 )) \
  || die_usage "MAX_ROUNDS must be an integer within 1-9999, got '$MAX_ROUNDS'"
MAX_ROUNDS=$((10#$MAX_ROUNDS))
MAX_COST_USD="${MAX_COST_USD:-}"
[[ -z "$MAX_COST_USD" || "$MAX_COST_USD" =~ ^([0-9]{1,12}\.?[0-9]{0,12}|\.[0-9]{1,12})$ && ! "$MAX_COST_USD" =~ ^[0.]+$ ]] \
  || die_usage "MAX_COST_USD must be a number > 0 (USD, at most 12 digits before the point), got '$MAX_COST_USD'"
[[ "$CHECK_ONLY" == 0 || "$CHECK_ONLY" == 1 ]] || die_usage "CHECK_ONLY must be 0 or 1, got '$CHECK_ONLY'"
missing=0
for var in FINETUNE_CONFIG INFER_CONFIG EVAL_CONFIG DATAGEN_CONFIG MERGE_CONFIG; do
  [[ -f "${!var}" ]] && continue
  missing=1
  hint=""
  [[ "${!var}" == /* ]] || hint=" (relative to the current folder $PWD)"
  [[ " $UNSET_CONFIGS " == *" $var "* ]] \
    && hint+="; that is the default, the demo config of a clone: set $var to your config (see --help)"
  echo "error: $var=${!var}: config file not found$hint" >&2
done
((missing == 0)) || exit 2
command -v "$PYTHON" >/dev/null 2>&1 || die_usage "PYTHON=$PYTHON not found (run the setup first)"

LOG="$OUT/loop.log"

# The loop's own small helpers (python -m llamaduo.loop.*) need a plain interpreter that imports
# llamaduo. PYTHON may be a launcher wrapper (e.g. one running `accelerate launch "$@"`), so fall
# back when it is not one: to llamaduo-loop's own interpreter, .venv/bin/python, python3.
HELPER_PY="$PYTHON"
if ! "$HELPER_PY" -c 'import yaml, llamaduo.loop' >/dev/null 2>&1; then
  if [[ -n "${LLAMADUO_HELPER_PYTHON:-}" ]]; then HELPER_PY="$LLAMADUO_HELPER_PYTHON"
  elif [[ -x .venv/bin/python ]]; then HELPER_PY=.venv/bin/python; else HELPER_PY=python3; fi
fi
cfg() { "$HELPER_PY" -m llamaduo.loop.config "$@"; }

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
run_stage() {  # run_stage ROUND STAGE CONFIG [CLI overrides...]; sets STAGE_RC
  ROUND="$1" STAGE="$2"
  local config="$3"; shift 3
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
  log "$ROUND" "$STAGE" event=start cmd="\"llamaduo $STAGE --from-config $config $*\""
  local started=$SECONDS rc=0
  "$HELPER_PY" -m llamaduo.loop.measured "$dir/$STAGE.rss" -- "$PYTHON" -m llamaduo "$STAGE" --from-config "$config" "$@" \
    > >(tee -a "$dir/$STAGE.log") 2>&1 &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  local secs=$((SECONDS - started))
  if [[ $rc -eq 0 || ( $rc -eq 3 && "$STAGE" == evaluation ) ]]; then
    # Written last and atomically: a .done always means the stage really finished.
    local rss_mb
    rss_mb="$(cat "$dir/$STAGE.rss" 2>/dev/null || echo -)"
    printf '%s\n%s\n%s\n%s\n' "$rc" "$secs" "$config_sha" "$rss_mb" >"$marker.tmp" && mv "$marker.tmp" "$marker"
    log "$ROUND" "$STAGE" event=done rc="$rc" seconds="$secs" peak_rss_mb="$rss_mb"
    STAGE_RC=$rc
    return 0
  fi
  log "$ROUND" "$STAGE" event=failed rc="$rc" seconds="$secs" log="$dir/$STAGE.log"
  echo "error: $STAGE failed in round $ROUND (exit $rc); see $dir/$STAGE.log" >&2
  case $rc in 2|130) exit "$rc" ;; *) exit 1 ;; esac
}

finish() {  # finish CODE MESSAGE: print + write the results table and picture, then exit
  log "${ROUND:--}" loop event=finish rc="$1" "${*:2}"
  "$HELPER_PY" -m llamaduo.loop.results_table "$OUT" --write "$OUT/results.md" || true
  "$HELPER_PY" -m llamaduo.loop.chart "$OUT" --write "$OUT/results.png" || true
  exit "$1"
}

# ---- the stand-in teacher (offline demo): started before the check, stopped on any exit ----
TEACHER_PID="" TEACHER_URL="" TEACHER_DIR=""
CHECK_PASSED=0
stop_teacher() {
  if [[ -n "$TEACHER_PID" ]]; then
    kill -TERM "$TEACHER_PID" 2>/dev/null || true
    wait "$TEACHER_PID" 2>/dev/null || true
    TEACHER_PID=""
  fi
  if [[ -n "$TEACHER_DIR" ]]; then
    # The log lives in a temporary folder until the check passes: a refused run writes nothing to OUT.
    if [[ "$CHECK_PASSED" == 1 && -f "$TEACHER_DIR/standin_teacher.log" ]]; then
      mkdir -p "$OUT" && cat "$TEACHER_DIR/standin_teacher.log" >>"$OUT/standin_teacher.log"
    fi
    rm -rf "$TEACHER_DIR"; TEACHER_DIR=""
  fi
}
trap stop_teacher EXIT
start_teacher() {  # start_teacher: python -m llamaduo.loop.standin_teacher on a free port; sets TEACHER_URL
  TEACHER_DIR="$(mktemp -d)"
  local tlog="$TEACHER_DIR/standin_teacher.log"
  "$HELPER_PY" -m llamaduo.loop.standin_teacher --port 0 --port-file "$TEACHER_DIR/port" --parent-pid $$ \
    2>>"$tlog" &
  TEACHER_PID=$!
  local waited=0
  until [[ -s "$TEACHER_DIR/port" ]]; do
    kill -0 "$TEACHER_PID" 2>/dev/null \
      || die_usage "the stand-in teacher did not start: $(tail -n 1 "$tlog" 2>/dev/null)"
    ((waited++ < 300)) || die_usage "the stand-in teacher did not listen within 30 s: $(tail -n 1 "$tlog" 2>/dev/null)"
    sleep 0.1
  done
  TEACHER_URL="http://127.0.0.1:$(cat "$TEACHER_DIR/port")/v1"
  echo "[llamaduo] data_gen's teacher is a STAND-IN (llamaduo.loop.standin_teacher: a seeded generator of" \
    "demo pairs, not an LLM) at $TEACHER_URL; log: $OUT/standin_teacher.log (written when the loop ends)" >&2
}

BASE_MODEL="$(cfg get "$FINETUNE_CONFIG" model_name_or_path)" \
  || die_usage "$FINETUNE_CONFIG must set model_name_or_path (round 0 runs that base model)"
TRAIN_SPLITS="$(cfg get "$FINETUNE_CONFIG" dataset_splits '["train_sft"]')"
FIRST_DS="$(cfg get "$MERGE_CONFIG" first_ds_id)"
FIRST_TRAIN_SPLIT="$(cfg get "$MERGE_CONFIG" first_ds_train_split train_sft)"
MERGED_TRAIN_SPLIT="$(cfg get "$MERGE_CONFIG" result_ds_train_split train_sft)"
DATAGEN_SEED="$(cfg get "$DATAGEN_CONFIG" seed 2024)"
DATAGEN_MODEL="$(cfg get "$DATAGEN_CONFIG" service_model_name "")"
if [[ "$DATAGEN_MODEL" == llamaduo-standin-teacher ]]; then start_teacher; fi
[[ "$DATAGEN_SEED" =~ ^-?[0-9]+$ ]] || die_usage "$DATAGEN_CONFIG: seed must be an integer, got '$DATAGEN_SEED'"

# ---- the per-round CLI overrides: one place, used by the check and by the rounds --------
OVR=()
overrides() {  # overrides STAGE K: set OVR to the loop's CLI overrides for that stage in round K
  # data/split: what round K trains on and merges onto (round 1: the merge config's first
  # dataset; round K: round K-1's merged data)
  local R="$OUT/round_$2" data="$FIRST_DS" split="$FIRST_TRAIN_SPLIT"
  if (($2 > 1)); then data="$OUT/round_$(($2 - 1))/merged" split="$MERGED_TRAIN_SPLIT"; fi
  case "$1" in
    finetune)
      # Round 1 trains on what the finetune config says (point the merge config's first_ds_id
      # at the same reference data); later rounds on the previous round's merged data.
      # --eval-strategy no: the loop evaluates the model right after (batch_inference + evaluation),
      # so evaluating the test split during training too only costs time (206 s a pass on CPU).
      OVR=(--output-dir "$R/model" --eval-strategy no)
      if (($2 > 1)); then OVR+=(--dataset-mixer "$(cfg mixer "$data")"); fi ;;
    batch_inference)
      local model="$R/model"; if (($2 == 0)); then model="$BASE_MODEL"; fi
      OVR=(--ft-model-id "$model" --lm-response-ds-id "$R/responses") ;;
    evaluation) OVR=(--lm-response-ds-id "$R/responses" --eval-ds-id "$R/eval") ;;
    data_gen)
      # A new sampling seed per round, and the data trained on so far as existing data: new
      # seeds are preferred and near-duplicates of known pairs are dropped.
      OVR=(--synth-ds-id "$R/synth" --seed "$((DATAGEN_SEED + $2))" --existing-ds-id "$data" --existing-ds-split "$split")
      if [[ -n "$TEACHER_URL" ]]; then OVR+=(--service-llm-base-url "$TEACHER_URL"); fi ;;
    dataset_merge) OVR=(--first-ds-id "$data" --second-ds-id "$R/synth" --result-ds-id "$R/merged") ;;
  esac
}

config_of() {
  case "$1" in
    finetune) echo "$FINETUNE_CONFIG" ;; batch_inference) echo "$INFER_CONFIG" ;; evaluation) echo "$EVAL_CONFIG" ;;
    data_gen) echo "$DATAGEN_CONFIG" ;; dataset_merge) echo "$MERGE_CONFIG" ;;
  esac
}
is_paid() {  # is_paid STAGE: the stage calls a service LLM that may cost money
  [[ "$1" == evaluation || "$1" == data_gen ]] || return 1
  [[ "$1" == data_gen && -n "$TEACHER_URL" ]] && return 1  # the stand-in teacher is free (and has no price)
  local provider; provider="$(cfg get "$(config_of "$1")" service_llm_provider gemini)"
  [[ "$provider" != reference && "$provider" != local ]]
}

# ---- the check before anything runs (or is paid for) --------------------------------------
check_args=()
for stage in batch_inference evaluation finetune data_gen dataset_merge; do
  # round 0 for the two stages that run on the base model first, round 1 for the others
  k=1; [[ $stage == batch_inference || $stage == evaluation ]] && k=0
  overrides "$stage" "$k"
  if [[ -n "$MAX_COST_USD" ]] && is_paid "$stage"; then OVR+=(--max-cost-usd "$MAX_COST_USD"); fi
  check_args+=(--stage "$stage" "$(config_of "$stage")" "${OVR[@]}")
done
check_rc=0
"$HELPER_PY" -m llamaduo.loop.check "${check_args[@]}" || check_rc=$?
if ((check_rc != 0)); then
  echo "error: the check before round 0 failed (see above); nothing was run" >&2
  exit 2
fi
CHECK_PASSED=1
if [[ "$CHECK_ONLY" == 1 ]]; then exit 0; fi

mkdir -p "$OUT"
log - loop event=begin out="$OUT" max_rounds="$MAX_ROUNDS" max_cost_usd="${MAX_COST_USD:-none}" \
  configs="$FINETUNE_CONFIG,$INFER_CONFIG,$EVAL_CONFIG,$DATAGEN_CONFIG,$MERGE_CONFIG"
if [[ -n "$TEACHER_URL" ]]; then
  log - teacher event=standin_started url="$TEACHER_URL" note="\"stand-in teacher: a seeded generator of demo pairs, not an LLM\""
fi

# budget STAGE K: set LEFT to what the paid STAGE of round K may spend; stop (exit 1) when
# MAX_COST_USD is spent. A stage that already finished (resume) needs no budget.
LEFT=""
budget() {
  LEFT=""
  if [[ -z "$MAX_COST_USD" || -f "$OUT/round_$2/$1.done" ]] || ! is_paid "$1"; then return 0; fi
  if ! LEFT="$(cfg budget "$OUT" "$MAX_COST_USD" "$(cfg get "$(config_of "$1")" max_cost_usd "")")"; then
    log "$2" "$1" event=budget_spent spent_usd="$LEFT"
    echo "error: MAX_COST_USD=$MAX_COST_USD is spent (\$$LEFT so far); stopped before round $2's $1" >&2
    ROUND="$2" finish 1 msg="\"MAX_COST_USD=$MAX_COST_USD is spent (\$$LEFT): stopped before round $2's $1\""
  fi
}

# run STAGE K: the stage with the loop's overrides (and, when paid, what is left of the budget)
run() {
  overrides "$1" "$2"
  budget "$1" "$2"
  if [[ -n "$LEFT" ]]; then OVR+=(--max-cost-usd "$LEFT"); fi
  run_stage "$2" "$1" "$(config_of "$1")" "${OVR[@]}"
}

# ---- round 0: the untuned base model sets the baseline ----------------------------------
run batch_inference 0
run evaluation 0
if [[ $STAGE_RC -eq 0 ]]; then
  finish 0 msg="\"the base model already qualifies; nothing to fine-tune\""
fi

# ---- rounds 1..MAX_ROUNDS ----------------------------------------------------------------
for ((k = 1; k <= MAX_ROUNDS; k++)); do
  R="$OUT/round_$k"
  mkdir -p "$R"
  if ((k == 1)); then MIXER="$(cfg get "$FINETUNE_CONFIG" dataset_mixer)"; else MIXER="$(cfg mixer "$OUT/round_$((k - 1))/merged")"; fi
  printf '{"dataset_mixer": %s, "dataset_splits": %s}\n' "$MIXER" "$TRAIN_SPLITS" >"$R/train_data.json"

  budget evaluation "$k"  # no fine-tuning for a round whose evaluation could not be paid for
  run finetune "$k"
  run batch_inference "$k"
  run evaluation "$k"
  if [[ $STAGE_RC -eq 0 ]]; then
    finish 0 msg="\"qualified in round $k\""
  fi
  if ((k == MAX_ROUNDS)); then
    finish 3 msg="\"not qualified after $MAX_ROUNDS rounds (raise MAX_ROUNDS to continue)\""
  fi
  run data_gen "$k"
  # A weak generator (the demo's 135M `local` model) may keep no pair at all; data_gen then
  # exits 0 only with allow_empty_result, and there is nothing to merge.
  if [[ -f "$R/synth/summary.json" && "$(cfg get "$R/synth/summary.json" kept unknown)" == 0 ]]; then
    log "$k" data_gen event=no_new_data summary="$R/synth/summary.json"
    finish 3 msg="\"not qualified, and data_gen kept no usable pair in round $k: nothing new to train on\""
  fi
  run dataset_merge "$k"
  # Kept pairs may all repeat data trained on already: the merge's `added` is what is new.
  # Another round on unchanged data would score the same, so stop.
  if [[ "$(cfg get "$R/merged/summary.json" added unknown)" == 0 ]]; then
    log "$k" dataset_merge event=no_new_data summary="$R/merged/summary.json"
    finish 3 msg="\"not qualified, and the merge added no new row in round $k (every kept pair was already in the training data)\""
  fi
done
