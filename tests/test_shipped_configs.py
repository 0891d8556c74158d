"""Every shipped config loads, and each set chains: a stage's input is the previous stage's output.

Both sets are read exactly as a user runs them (`<stage>.py --from-config FILE --print-config`
from the repository root; the stage's `main` runs in-process as its script runs it,
tests/inprocess.py), so renamed keys, legacy keys and defaults are resolved as in a real run:

    finetune.output_dir -> batch_inference.ft_model_id (round 0 of the demo: the base model)
    batch_inference.lm_response_ds_id/_split -> evaluation.lm_response_ds_id/_split
    evaluation (exit 3) -> data_gen: reads the reference data, writes synth_ds_id/_split
    data_gen.synth_ds_id/_split -> dataset_merge.second_ds_id/_train_split
    dataset_merge.result_ds_id -> finetune's data (round 0: the same reference data)
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.inprocess import run_stage

REPO = Path(__file__).resolve().parents[1]
SETS = {
    "real": {"finetune": "config/sample_config.yaml", "batch_inference": "config/batch_inference.yaml",
             "evaluation": "config/evaluation.yaml", "data_gen": "config/synth_data_gen.yaml",
             "dataset_merge": "config/dataset_merge.yaml"},
    "demo": {"finetune": "config/demo/finetune.yaml", "batch_inference": "config/demo/batch_inference.yaml",
             "evaluation": "config/demo/evaluation.yaml", "data_gen": "config/demo/data_gen.yaml",
             "dataset_merge": "config/demo/dataset_merge.yaml"},
}
# the demo loop with batch inference served by vLLM (docs/batch_inference.md): a drop-in for one stage
SETS["demo-served"] = {**SETS["demo"], "batch_inference": "config/batch_inference_openai.yaml"}
# the real set at a CPU-only site (docs/loop.md): its own fine-tune and batch inference, the rest real
SETS["cpu"] = {**SETS["real"], "finetune": "config/cpu/finetune.yaml", "batch_inference": "config/cpu/batch_inference.yaml"}
STAGE_CONFIGS = {str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml")} | {
    str(p.relative_to(REPO)) for folder in ("config/demo", "config/cpu") for p in (REPO / folder).glob("*.yaml")}
# files that are no stage config: generation settings and prices
NOT_STAGE = {"src/llamaduo/defaults/pricing.yaml", "src/llamaduo/defaults/service_llm_gen.yaml", "config/gpt_gen_configs.yaml",
             "config/claude_gen_configs.yaml", "config/gemini_gen_configs.yaml"}


def load(stage: str, config: str) -> tuple[dict, str]:
    proc = run_stage(stage, ["--from-config", config, "--print-config"], cwd=REPO)
    assert proc.returncode == 0, f"{config}: {proc.stderr[-1500:]}"
    return yaml.safe_load(proc.stdout), proc.stderr


# step 0 (collect.py) writes the reference dataset the sets read
COLLECT = "config/collect.yaml"


def test_every_shipped_config_file_is_in_a_set():
    in_sets = {c for s in SETS.values() for c in s.values()}
    assert STAGE_CONFIGS - NOT_STAGE == in_sets | {COLLECT}


def test_collect_writes_what_the_real_set_reads():
    """collect.py's output has the splits the real set reads as its reference data (point the
    sets' reference keys at it, docs/loop.md), and it writes where no stage writes."""
    col, _ = load("collect", COLLECT)
    mg, _ = load("dataset_merge", SETS["real"]["dataset_merge"])
    bi, _ = load("batch_inference", SETS["real"]["batch_inference"])
    dg, _ = load("data_gen", SETS["real"]["data_gen"])
    assert (col["train_split"], col["test_split"]) == (mg["first_ds_train_split"], mg["first_ds_test_split"])
    assert col["test_split"] == bi["test_ds_split"] and col["train_split"] == dg["reference_ds_split"]
    assert col["reference_ds_id"] not in (mg["result_ds_id"], bi["lm_response_ds_id"], dg["synth_ds_id"])


@pytest.mark.parametrize("name", sorted(SETS))
def test_the_set_chains_end_to_end(name):
    loaded = {stage: load(stage, config) for stage, config in SETS[name].items()}
    c = {stage: cfg for stage, (cfg, _) in loaded.items()}
    ft, bi, ev, dg, mg = (c[s] for s in ("finetune", "batch_inference", "evaluation", "data_gen", "dataset_merge"))
    # finetune -> batch_inference (the demo's standalone batch inference is round 0: the base model)
    allowed = {ft["output_dir"], f"{ft['output_dir']}/merged"} | ({ft["model_name_or_path"]} if name.startswith("demo") else set())
    assert bi["ft_model_id"] in allowed
    if name in ("real", "cpu"):
        assert bi["ft_model_id"] == ft["output_dir"] and bi["ft_model_config_path"] == SETS[name]["finetune"]
        assert ft["max_steps"] == -1 and ft["num_train_epochs"] > 0  # real runs train by epochs
    # batch_inference -> evaluation
    assert (ev["lm_response_ds_id"], ev["lm_response_ds_split"]) == (bi["lm_response_ds_id"], bi["lm_response_ds_split"])
    # the reference data is one dataset everywhere: test prompts, seeds, merge base, round-0 training
    reference = mg["first_ds_id"]
    assert bi["test_ds_id"] == reference and dg["reference_ds_id"] == reference
    assert dg["test_ds_id"] in (None, reference)
    assert bi["test_ds_split"] == mg["first_ds_test_split"] == mg["result_ds_test_split"]
    assert dg["reference_ds_split"] == mg["first_ds_train_split"]
    # data_gen -> dataset_merge
    assert (mg["second_ds_id"], mg["second_ds_train_split"]) == (dg["synth_ds_id"], dg["synth_ds_split"])
    # dataset_merge -> finetune (round 0 trains on the reference data the merge starts from)
    assert set(ft["dataset_mixer"]) <= {mg["result_ds_id"], reference}
    assert mg["result_ds_train_split"] in ft["dataset_splits"] and mg["first_ds_train_split"] in ft["dataset_splits"]
    # every stage writes somewhere of its own
    outputs = [ft["output_dir"], bi["lm_response_ds_id"], ev["eval_ds_id"], dg["synth_ds_id"], mg["result_ds_id"]]
    assert len(set(outputs)) == 5 and reference not in outputs
    if name.startswith("demo"):  # our own demo configs use current key names: no "renamed" warnings
        assert not [s for s, (_, err) in loaded.items() if "is renamed to" in err]
    assert not [s for s, (_, err) in loaded.items() if "kernels-community" in err]
