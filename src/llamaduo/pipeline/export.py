"""After the loop: the qualified adapter merged into its base and saved as a standalone model
(safetensors, tokenizer + chat template, generation_config, a card with the evaluation verdict,
an Ollama Modelfile) that loads with `AutoModelForCausalLM.from_pretrained` and no peft; pushed
to the Hub through llamaduo.hub like every other output. What was and was not possible (GGUF):
docs/export.md.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from llamaduo.config import config_to_dict, parse_config
from llamaduo.errors import EXIT_CODES_HELP, EXIT_OK, RunFailed, UsageError
from llamaduo.hub import check_push_possible, push_model_folder, scrub_secrets
from llamaduo.inference.model_ref import ModelRef, resolve_model_ref
from llamaduo.logging_setup import setup_logging
from llamaduo.outputs import OutputPlan, guarded_output, staged_output

logger = logging.getLogger("llamaduo.export")

STAGE = "export"
SUMMARY_FILE = "summary.json"


@dataclass
class ExportArgs:
    """Every key of `export.py`."""

    adapter_id: str = field(default="", metadata={
        "help": "The LoRA adapter to export: a local folder (finetune.py's output), a Hub id, or a full model "
                "(then re-saved standalone)."})
    base_model_id: Optional[str] = field(default=None, metadata={
        "help": "The adapter's base model (default: the one its adapter_config.json names)."})
    output_dir: str = field(default="outputs/export", metadata={
        "help": "Local folder of the standalone model (replaced atomically)."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={
        "help": "dtype of the saved weights; auto = the base model's."})
    evaluation_summary: Optional[str] = field(default=None, metadata={
        "help": "evaluation.py's summary.json (or its output folder) for this adapter: its verdict and "
                "scores go into the model card."})
    ollama_modelfile: bool = field(default=True, metadata={
        "help": "Also write an Ollama Modelfile that imports the safetensors folder (`ollama create`)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the folder to the Hub model repo hub_model_id."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub model repo to push to (owner/name)."})
    hub_private_repo: Optional[bool] = field(default=None, metadata={"help": "Create the Hub repo as private."})
    overwrite_input: bool = field(default=False, metadata={
        "help": "Allow output_dir to be the adapter folder, which it then replaces; otherwise exit 2."})


# ------------------------------------------------------------------------------ checks


def read_evaluation(path: Optional[str]) -> Optional[dict[str, Any]]:
    """The evaluation summary (exit 2 when the given path holds none)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / SUMMARY_FILE
    if not p.is_file():
        raise UsageError(f"evaluation_summary: {p} not found (give evaluation.py's summary.json or its folder)")
    try:
        summary = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UsageError(f"evaluation_summary: {p} is not JSON ({err})") from None
    if not isinstance(summary, dict) or "qualified" not in summary:
        raise UsageError(f"evaluation_summary: {p} has no 'qualified' verdict; is it evaluation.py's summary.json?")
    return summary


def resolve(args: ExportArgs) -> ModelRef:
    """The adapter and its base, checked without loading weights."""
    if not args.adapter_id:
        raise UsageError("adapter_id is required (the adapter folder to export)")
    if not args.output_dir:
        raise UsageError("output_dir is required")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("push_to_hub needs hub_model_id (owner/name)")
    if args.base_model_id:
        from llamaduo.inference.model_ref import _locate

        path, is_local = _locate(args.base_model_id, None, what="base_model_id")
        ref = resolve_model_ref(args.adapter_id)
        if not ref.is_adapter:
            raise UsageError(f"base_model_id is set but adapter_id '{args.adapter_id}' is a full model, not an adapter")
        from dataclasses import replace

        return replace(ref, base_path=path, base_is_local=is_local, base_revision=None)
    return resolve_model_ref(args.adapter_id)


# ------------------------------------------------------------------------------ card


def verdict_text(summary: Optional[dict[str, Any]]) -> str:
    if summary is None:
        return "No evaluation summary was given to export.py, so this card states no verdict."
    from llamaduo.judging.report import verdict_line

    keys = ("rows", "scored_rows", "mean_similarity", "mean_precision", "judges", "model_id")
    numbers = {k: summary[k] for k in keys if k in summary}
    try:
        line = verdict_line(summary)
    except (KeyError, TypeError, ValueError):  # a summary.json of another version: the verdict alone
        line = f"verdict: {'QUALIFIED' if summary.get('qualified') else 'NOT QUALIFIED'}"
    return f"{line}\n\n```json\n{json.dumps(numbers, indent=2, default=str)}\n```"


def _recorded_base(ref: ModelRef) -> str | None:
    """The Hub id finetune.py recorded as the adapter's base (adapter_config.json), if any:
    the card names it rather than a folder of this machine."""
    if not (ref.is_adapter and ref.is_local):
        return None
    try:
        recorded = json.loads((Path(ref.path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return str(recorded) if recorded and not str(recorded).startswith(("/", "~", ".")) else None


def eval_results(summary: dict[str, Any]) -> list:
    """huggingface_hub EvalResults from an evaluation summary: the judge's mean scores (0-100)
    and the execution pass rate when there was one."""
    from huggingface_hub import EvalResult

    dataset = str(summary.get("lm_response_ds_id") or "llamaduo-evaluation")
    judge = str(summary.get("evaluator") or "judge")
    common = {"task_type": "text-generation", "dataset_type": dataset, "dataset_name": Path(dataset).name or dataset,
              "dataset_split": summary.get("lm_response_ds_split")}
    out = []
    for key, name in (("mean_similarity", f"mean similarity (0-100, judge {judge})"),
                      ("mean_precision", f"mean precision (0-100, judge {judge})")):
        if isinstance(summary.get(key), (int, float)):
            out.append(EvalResult(**common, metric_type=key, metric_name=name, metric_value=summary[key]))
    rate = (summary.get("execution") or {}).get("pass_rate") if isinstance(summary.get("execution"), dict) else None
    if isinstance(rate, (int, float)):
        out.append(EvalResult(**common, metric_type="pass@1", metric_name="pass@1 (unit tests)", metric_value=rate))
    return out


def model_card(ref: ModelRef, facts: dict[str, Any], summary: Optional[dict[str, Any]], config: dict) -> str:
    """README.md: where the weights come from, the evaluation verdict, how to load it."""
    hub_base = _recorded_base(ref)
    base = hub_base or (ref.base_path if ref.is_adapter else ref.path)
    header: dict[str, Any] = {"library_name": "transformers", "tags": ["llamaduo", "llamaduo-export", "merged-lora"]}
    if hub_base or (ref.is_adapter and not ref.base_is_local):
        header["base_model"] = hub_base or ref.base_path
    if summary is not None:
        header["tags"].append("qualified" if summary.get("qualified") else "not-qualified")
        results = eval_results(summary)
        if results:  # model-index: the Hub shows the evaluation beside the model
            from huggingface_hub import ModelCardData

            index = ModelCardData(model_name=Path(ref.model_id).name, eval_results=results).to_dict()
            header["model-index"] = index["model-index"]
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    origin = (f"The LoRA adapter `{ref.model_id}` (rank {facts.get('adapter_rank')}) merged into its base `{base}`"
              if ref.is_adapter else f"The full model `{ref.model_id}`, re-saved")
    body = (
        f"# LlamaDuo export of `{Path(ref.model_id).name}`\n\n"
        f"{origin} by LlamaDuo's `export.py` on {when}: a standalone {facts['architecture']} "
        f"({facts['parameters'] / 1e6:.1f}M parameters, {facts['dtype']}) that loads without peft.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(\"<this folder or repo>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<this folder or repo>\")  # with the chat template\n```\n\n"
        f"## Evaluation\n\n{verdict_text(summary)}\n\n"
        f"## Export config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False).strip()}\n```\n"
    )
    return scrub_secrets(f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n{body}")


# ------------------------------------------------------------------------------ the run


def output_plan(args: ExportArgs) -> OutputPlan:
    if not args.output_dir:
        return OutputPlan(None)
    return OutputPlan(Path(args.output_dir), args.output_dir, "output_dir",
                      {"adapter_id": args.adapter_id, "base_model_id": args.base_model_id}, args.overwrite_input)


@guarded_output(output_plan)
def run(args: ExportArgs) -> int:
    ref = resolve(args)
    summary = read_evaluation(args.evaluation_summary)
    check_push_possible(args.push_to_hub, f"model '{args.hub_model_id}'")
    if summary is not None and not summary.get("qualified"):
        logger.warning("the evaluation summary says NOT QUALIFIED; exporting anyway (the card says so)")
    from llamaduo.pipeline.export_model import ollama_modelfile, save_standalone

    out_dir = Path(args.output_dir)
    config = config_to_dict(args)
    with staged_output(out_dir) as staging:
        facts = save_standalone(ref, staging, args.dtype)
        card = model_card(ref, facts, summary, config)
        (staging / "README.md").write_text(card)
        if args.ollama_modelfile:
            stops = _stop_strings(staging)
            (staging / "Modelfile").write_text(ollama_modelfile(facts, stops))
        (staging / "export.json").write_text(json.dumps({"stage": STAGE, "adapter_id": ref.model_id,
                                                          "base": ref.weights_path, **facts,
                                                          "qualified": None if summary is None else summary.get("qualified")},
                                                         indent=2))
    logger.info("exported %s to %s", ref.model_id, out_dir)
    if args.push_to_hub:
        try:
            push_model_folder(out_dir, args.hub_model_id, card, private=args.hub_private_repo,
                              commit_message="llamaduo export")
        except Exception as err:  # noqa: BLE001 - any push failure keeps and names the local copy
            raise RunFailed(f"push to the Hub model '{args.hub_model_id}' failed ({err}); the exported model is "
                            f"intact at {out_dir}") from err
        logger.info("pushed %s to the Hub model %s", out_dir, args.hub_model_id)
    return EXIT_OK


def _stop_strings(folder: Path) -> list[str]:
    """The eos tokens of the saved generation config, as text (the Modelfile's stop words)."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(folder))
    eos = GenerationConfig.from_pretrained(str(folder)).eos_token_id
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return [tok.convert_ids_to_tokens(int(i)) for i in ids]


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    (args,) = parse_config(
        ExportArgs, argv=argv, epilog=EXIT_CODES_HELP,
        description="Merge a LoRA adapter into its base and save a standalone model (safetensors, tokenizer, "
        "chat template, generation_config, a card with the evaluation verdict); optionally push it to the Hub.",
    )
    return run(args)
