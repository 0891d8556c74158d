"""The original LlamaDuo's config tree loads unchanged (issue 17), and the config layer's
conveniences: dash keys in YAML, `--config`, a lone positional YAML path.

The tree is tests/data/original_llamaduo: copies rebuilt key for key from the original repo.
Each stage file is loaded as a user would, from the tree's root, with `--print-config` (the
stage's `main` run in-process, as its script runs it: tests/inprocess.py); the printed effective
config must show the legacy keys mapped. scripts/load_original_configs.py, which parses every file
in its one process, is run for real (as a process) on a two-file tree.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llamaduo.config import parse_config
from llamaduo.errors import UsageError
from llamaduo.legacy_keys import BATCH_INFERENCE_LEGACY, SERVICE_LLM_LEGACY
from llamaduo.pipeline.batch_inference import BatchInferenceConfig, validate
from scripts.load_original_configs import stage_of
from tests.inprocess import run_stage

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "tests" / "data" / "original_llamaduo"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    shutil.copytree(TREE, tmp_path / "original")
    return tmp_path / "original"


def print_config(tree: Path, stage: str, config: str, *flags: str) -> subprocess.CompletedProcess:
    return run_stage(stage, ["--from-config", config, "--print-config", *flags], cwd=tree)


def loaded(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return yaml.safe_load(proc.stdout)


def test_batch_inference_config_maps_ft_gen_config_delimiters_and_dash_key(tree):
    proc = print_config(tree, "batch_inference", "config/llama3_1b/batch-infer/batch_inference-coding.yaml")
    cfg = loaded(proc)
    # from ft_gen_configs.yaml: the original's decoding settings for the fine-tuned model
    assert (cfg["do_sample"], cfg["temperature"], cfg["max_new_tokens"]) == (True, 0.8, 1024)
    assert cfg["stop_strings"] == ["<|im_end|>", "<|end_of_text|>"]
    assert cfg["lm_response_append"] is False  # `lm-response-append: false`
    assert "user_delimiter" not in cfg  # accepted and dropped; the gen file's path is kept, it is read by runs
    assert cfg["ft_model_gen_config_path"] == "config/llama3_1b/batch-infer/ft_gen_configs.yaml"
    for key in ("user_delimiter", "model_delimiter"):
        assert proc.stderr.count(f"{key}: ") == 1 and "ignored: answers are cut" in proc.stderr
    assert "padding_side" in proc.stderr  # noted, not applied


def test_explicit_cli_flag_beats_the_ft_gen_config(tree):
    cfg = loaded(print_config(tree, "batch_inference", "config/llama3_3b/batch-infer/batch_inference-summarization.yaml",
                              "--temperature", "0.2", "--no-do-sample"))
    assert cfg["temperature"] == 0.2 and cfg["do_sample"] is False and cfg["max_new_tokens"] == 1024


@pytest.mark.parametrize("config, provider", [
    ("config/llama3_1b/eval/evaluation-gemini-coding.yaml", "gemini-vertex"),
    ("config/llama3_3b/eval/evaluation-gpt-coding.yaml", "openai"),
])
def test_evaluation_rate_limit_on_false_turns_pacing_off(tree, config, provider):
    proc = print_config(tree, "evaluation", config)
    cfg = loaded(proc)
    assert cfg["service_llm_provider"] == provider
    assert cfg["rate_limit_per_minute"] == 0  # the file also says 1000 (or 1000000): rate_limit_on wins
    assert cfg["eval_repeat"] == 10 and "rate_limit_on" not in cfg
    assert proc.stderr.count("rate_limit_on: false") == 1


def test_block_list_gen_file_greedy_decoding_and_a_padded_path(tree):
    """The shape of the original's own ft_gen_configs.yaml: `do_sample: False`, `stop_strings:`
    as a block list; its stage config ends a path with a stray space."""
    cfg = loaded(print_config(tree, "batch_inference", "config/mistral_7b/batch-infer/batch_inference-summarization.yaml"))
    assert (cfg["do_sample"], cfg["temperature"], cfg["max_new_tokens"]) == (False, 0.7, 512)
    assert cfg["stop_strings"] == ["</s>", "<|im_end|>"] and cfg["inference_bs"] == 8
    assert cfg["ft_model_config_path"] == "config/mistral_7b/batch-infer/mistral_7b_0.3_summarization_128k.yaml"


def test_a_gen_file_missing_from_the_tree_loads_and_a_run_exits_2(tree):
    """Two of the original's batch-inference configs point at config/llama3.1_8b/, which only
    existed on its author's machine: the config loads (one warning, nothing mapped from the file);
    a run stops before anything else, exit 2, one line."""
    config = "config/llama3_8b/batch-infer/batch_inference-closedqa.yaml"
    proc = print_config(tree, "batch_inference", config)
    cfg = loaded(proc)
    assert cfg["ft_model_gen_config_path"] == "config/llama3.1_8b/batch-infer/ft_gen_configs.yaml"
    assert cfg["temperature"] == 0.4 and cfg["stop_strings"] == []  # the defaults: nothing was read
    assert proc.stderr.count("ft_model_gen_config_path not found") == 1
    run = run_stage("batch_inference", ["--from-config", config], cwd=tree)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == ("error: ft_model_gen_config_path not found: "
                                                   "config/llama3.1_8b/batch-infer/ft_gen_configs.yaml")


def test_evaluation_whose_gen_file_is_not_in_the_tree_loads(tree):
    """The original's llama3_8b and mistral_7b evaluation configs: rate 60 with rate_limit_on
    false, 10 workers, a generation file under config/llama3.1_8b/ (read by a run, not to load)."""
    proc = print_config(tree, "evaluation", "config/mistral_7b/eval/evaluation-gpt-summarization.yaml")
    cfg = loaded(proc)
    assert (cfg["rate_limit_per_minute"], cfg["eval_workers"], cfg["eval_ds_append"]) == (0, 10, False)
    assert cfg["service_llm_gen_config_path"] == "config/llama3.1_8b/eval/gpt_gen_configs.yaml"


def test_synth_data_gen_with_its_prompt_path_given_twice_loads(tree):
    """The original's root synth_data_gen.yaml gives `prompt_tmpl_path` twice, with one value;
    its later version adds `rate_limit_per_minute` and `synth_ds_append`."""
    path = tree / "config/synth_data_gen.yaml"
    path.write_text(path.read_text() + "\nprompt_tmpl_path: config/prompts.toml\nrate_limit_per_minute: 60\n"
                                       "synth_ds_append: true\n")
    cfg = loaded(print_config(tree, "data_gen", "config/synth_data_gen.yaml"))
    assert cfg["prompt_tmpl_path"] == "config/prompts.toml"
    assert (cfg["rate_limit_per_minute"], cfg["synth_ds_append"], cfg["num_samples"]) == (60, True, 5)


def test_finetune_recipe_without_a_tokenizer_loads(tree):
    """The original's Mistral recipes name no tokenizer_name_or_path (the base model's is used)."""
    cfg = loaded(print_config(tree, "finetune", "config/mistral_7b/fine-tune/mistral_7b_0.3_coding_100k.yaml"))
    assert cfg["tokenizer_name_or_path"] is None and cfg["model_name_or_path"] == "mistralai/Mistral-7B-v0.3"
    assert (cfg["max_length"], cfg["eval_strategy"], cfg["lora_r"], cfg["learning_rate"]) == (512, "epoch", 16, 0.002)


def test_finetune_recipe_of_the_original_loads(tree):
    cfg = loaded(print_config(tree, "finetune", "config/llama3_1b/fine-tune/llama3_1b_coding_100k.yaml"))
    assert cfg["model_name_or_path"] == "meta-llama/Llama-3.2-1B"
    assert cfg["max_length"] == 1024 and cfg["eval_strategy"] == "epoch" and cfg["num_train_epochs"] == 10
    assert cfg["chat_template"].startswith("{% if messages[0]['role']")


def test_a_typo_in_the_same_file_still_exits_2(tree):
    path = tree / "config/llama3_1b/eval/evaluation-claude3sonnet-coding.yaml"
    path.write_text(path.read_text().replace("rate_limit_on:", "rate_limit_onn:"))
    proc = print_config(tree, "evaluation", str(path.relative_to(tree)))
    assert proc.returncode == 2
    assert "unknown key 'rate_limit_onn'" in proc.stderr and "rate_limit_on" in proc.stderr.split("did you mean")[-1]
    assert "Traceback" not in proc.stderr


def test_a_typo_in_a_batch_inference_file_still_exits_2(tree):
    path = tree / "config/llama3_1b/batch-infer/batch_inference-coding.yaml"
    path.write_text(path.read_text().replace("ft_model_gen_config_path:", "ft_model_gen_config_pth:"))
    proc = print_config(tree, "batch_inference", str(path.relative_to(tree)))
    assert proc.returncode == 2 and "unknown key 'ft_model_gen_config_pth'" in proc.stderr
    assert "ft_model_gen_config_path" in proc.stderr.split("did you mean")[-1]


# ------------------------------------------------------------------------ in-process: the rules


@dataclass
class Svc:
    rate_limit_per_minute: int = field(default=60)
    eval_workers: int = field(default=8)


@dataclass
class Bi:
    temperature: float = 0.4
    do_sample: bool = True
    top_p: float = 1.0
    max_new_tokens: int = 1024
    stop_strings: list[str] = field(default_factory=list)
    lm_response_append: bool = True
    ft_model_gen_config_path: str | None = None  # a legacy key whose value is kept


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_rate_limit_on_true_keeps_the_rate(tmp_path):
    (a,) = parse_config(Svc, argv=["--from-config", write(tmp_path, "rate_limit_on: true\nrate_limit_per_minute: 30\n")],
                        legacy_keys=SERVICE_LLM_LEGACY)
    assert a.rate_limit_per_minute == 30
    (b,) = parse_config(Svc, argv=["--rate-limit-on", "false"], legacy_keys=SERVICE_LLM_LEGACY)
    assert b.rate_limit_per_minute == 0
    with pytest.raises(UsageError, match="rate_limit_on"):
        parse_config(Svc, argv=["--from-config", write(tmp_path, "rate_limit_on: sometimes\n")],
                     legacy_keys=SERVICE_LLM_LEGACY)


def test_legacy_keys_are_only_those_named(tmp_path):
    with pytest.raises(UsageError, match="unknown key 'user_delimiter'"):
        parse_config(Svc, argv=["--from-config", write(tmp_path, "user_delimiter: user\n")],
                     legacy_keys=SERVICE_LLM_LEGACY)  # a batch-inference key, not an evaluation one


def test_ft_gen_config_same_yaml_key_wins_and_bad_files_exit_2(tmp_path):
    gen = write(tmp_path, "temperature: 0.8\nmax_new_tokens: 64\nstop_strings: '###'\n", "gen.yaml")
    (a,) = parse_config(Bi, argv=["--from-config", write(tmp_path, f"ft_model_gen_config_path: {gen}\ntemperature: 0.1\n")],
                        legacy_keys=BATCH_INFERENCE_LEGACY)
    assert (a.temperature, a.max_new_tokens, a.stop_strings) == (0.1, 64, ["###"])
    bad = write(tmp_path, "num_beams: 4\n", "bad.yaml")
    with pytest.raises(UsageError, match=r"unsupported key\(s\) \['num_beams'\]"):
        parse_config(Bi, argv=["--from-config", write(tmp_path, f"ft_model_gen_config_path: {bad}\n")],
                     legacy_keys=BATCH_INFERENCE_LEGACY)
    (c,) = parse_config(Bi, argv=["--ft-model-gen-config-path", gen, "--max-new-tokens", "9"],
                        legacy_keys=BATCH_INFERENCE_LEGACY)  # as a CLI flag: explicit flags still win
    assert (c.temperature, c.max_new_tokens, c.ft_model_gen_config_path) == (0.8, 9, gen)
    # a missing file: the config loads; the stage's check refuses to run it
    argv = ["--from-config", write(tmp_path, "ft_model_gen_config_path: nope.yaml\nft_model_id: m\n"
                                             "test_ds_id: t\nlm_response_ds_id: o\n", "m.yaml")]
    (cfg,) = parse_config(BatchInferenceConfig, argv=argv, legacy_keys=BATCH_INFERENCE_LEGACY)
    assert cfg.ft_model_gen_config_path == "nope.yaml" and cfg.temperature == 0.4
    with pytest.raises(UsageError, match="ft_model_gen_config_path not found: nope.yaml"):
        validate(cfg)


def test_dash_keys_config_alias_and_positional_yaml(tmp_path):
    path = write(tmp_path, "lm-response-append: false\nmax-new-tokens: 7\n")
    for argv in (["--from-config", path], ["--config", path], [path]):
        (a,) = parse_config(Bi, argv=argv)
        assert (a.lm_response_append, a.max_new_tokens) == (False, 7), argv
    (cli,) = parse_config(Bi, argv=[path, "--max-new-tokens", "9"])
    assert cli.max_new_tokens == 9
    with pytest.raises(UsageError, match="given twice"):
        parse_config(Bi, argv=["--from-config", write(tmp_path, "max-new-tokens: 7\nmax_new_tokens: 8\n", "d.yaml")])


def test_the_script_counts_tried_and_loaded_and_names_each_failure(tmp_path):
    """scripts/load_original_configs.py on a two-file tree: the count is real, a bad file fails it
    with its own line, and a file that only holds generation settings is not a stage config."""
    tree = tmp_path / "t"
    (tree / "config").mkdir(parents=True)
    shutil.copy(TREE / "config/dataset_merge.yaml", tree / "config/dataset_merge.yaml")
    shutil.copy(TREE / "config/gpt_gen_configs.yaml", tree / "config/gpt_gen_configs.yaml")
    (tree / "config/dataset_merge_typo.yaml").write_text("first_ds_idd: x\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts/load_original_configs.py"), "--tree", str(tree)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 1 and lines[-1] == "2 tried / 1 loaded"
    assert len(lines) == 2 and lines[0].startswith("FAIL dataset_merge config/dataset_merge_typo.yaml: exit 2: ")
    assert "first_ds_idd" in lines[0]


def test_the_script_picks_the_stage_from_the_keys(tmp_path):
    (tmp_path / "batch-infer").mkdir()
    recipe = tmp_path / "batch-infer/mistral_7b_0.3_coding_100k.yaml"  # a recipe filed under batch-infer/
    recipe.write_text("model_name_or_path: m\n")
    infer = tmp_path / "batch-infer/anything.yaml"
    infer.write_text("ft_model_id: m\nlm-response-append: false\n")
    synth = tmp_path / "my_synth.yaml"
    synth.write_text("reference_ds_id: r\n")
    gen = tmp_path / "batch-infer/ft_gen_configs.yaml"
    gen.write_text("do_sample: true\n")
    assert [stage_of(p) for p in (recipe, infer, synth, gen)] == ["finetune", "batch_inference", "data_gen", None]


def test_every_stage_config_of_the_shipped_tree_loads():
    """The whole synthesised tree, each file loaded the way scripts/load_original_configs.py loads
    it (its stage picked by `stage_of`, `--print-config` from the tree's root), in-process: the
    script's own process handling is tested on a small tree above."""
    stage_files = sorted(p for p in (TREE / "config").rglob("*.yaml") if "gen_config" not in p.name)
    assert len(stage_files) >= 10
    failed = {}
    for path in stage_files:
        proc = run_stage(stage_of(path), ["--from-config", str(path.relative_to(TREE)), "--print-config"], cwd=TREE)
        if proc.returncode != 0 or not yaml.safe_load(proc.stdout):
            failed[str(path.relative_to(TREE))] = proc.stderr.strip().splitlines()[-1:]
    assert not failed, failed


def test_stop_strings_cut_the_answer(tiny_model_dir):
    """The original's stop_strings (via ft_model_gen_config_path) cut a decoded answer; a stop
    string that is an added token of the tokenizer also stops generation as a token id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamaduo.inference.hf_backend import GenSettings, HFGenerator, cut_at_stop_strings

    assert cut_at_stop_strings("def f(): pass\n### next task", ["###", "<|end_of_text|>"]) == "def f(): pass\n"
    assert cut_at_stop_strings("no stop here", ["###"]) == "no stop here"
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    gen = HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 0, ("###", "<|im_start|>")))
    assert tok.convert_tokens_to_ids("<|im_start|>") in gen.stop_ids
    ids = tok("The answer is 4. ### Now another question", add_special_tokens=False)["input_ids"]
    assert gen._decode(ids).text == "The answer is 4."
