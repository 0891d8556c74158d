"""The original LlamaDuo's config tree loads unchanged (issue 17), and the config layer's
conveniences: dash keys in YAML, `--config`, a lone positional YAML path.

The tree is tests/data/original_llamaduo: copies rebuilt key for key from the original repo.
Each stage file is loaded as a user would, from the tree's root, with `--print-config` in a
subprocess; the printed effective config must show the legacy keys mapped.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from src.config import parse_config
from src.errors import UsageError
from src.legacy_keys import BATCH_INFERENCE_LEGACY, SERVICE_LLM_LEGACY

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "tests" / "data" / "original_llamaduo"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    shutil.copytree(TREE, tmp_path / "original")
    return tmp_path / "original"


def print_config(tree: Path, stage: str, config: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / f"{stage}.py"), "--from-config", config, "--print-config",
                           *flags], cwd=tree, capture_output=True, text=True, timeout=300)


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
    assert "user_delimiter" not in cfg and "ft_model_gen_config_path" not in cfg
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
    with pytest.raises(UsageError, match="ft_model_gen_config_path not found"):
        parse_config(Bi, argv=["--from-config", write(tmp_path, "ft_model_gen_config_path: nope.yaml\n")],
                     legacy_keys=BATCH_INFERENCE_LEGACY)


def test_dash_keys_config_alias_and_positional_yaml(tmp_path):
    path = write(tmp_path, "lm-response-append: false\nmax-new-tokens: 7\n")
    for argv in (["--from-config", path], ["--config", path], [path]):
        (a,) = parse_config(Bi, argv=argv)
        assert (a.lm_response_append, a.max_new_tokens) == (False, 7), argv
    (cli,) = parse_config(Bi, argv=[path, "--max-new-tokens", "9"])
    assert cli.max_new_tokens == 9
    with pytest.raises(UsageError, match="given twice"):
        parse_config(Bi, argv=["--from-config", write(tmp_path, "max-new-tokens: 7\nmax_new_tokens: 8\n", "d.yaml")])


def test_the_script_counts_loaded_over_tried(tmp_path):
    """scripts/load_original_configs.py on a one-file tree: the count is real, and a bad file fails it."""
    tree = tmp_path / "t"
    (tree / "config").mkdir(parents=True)
    shutil.copy(TREE / "config/dataset_merge.yaml", tree / "config/dataset_merge.yaml")
    (tree / "config/dataset_merge_typo.yaml").write_text("first_ds_idd: x\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts/load_original_configs.py"), str(tree)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "loaded 1/2 stage configs" in proc.stdout


def test_stop_strings_cut_the_answer(tiny_model_dir):
    """The original's stop_strings (via ft_model_gen_config_path) cut a decoded answer; a stop
    string that is an added token of the tokenizer also stops generation as a token id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from src.inference.hf_backend import GenSettings, HFGenerator, cut_at_stop_strings

    assert cut_at_stop_strings("def f(): pass\n### next task", ["###", "<|end_of_text|>"]) == "def f(): pass\n"
    assert cut_at_stop_strings("no stop here", ["###"]) == "no stop here"
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    gen = HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 0, ("###", "<|im_start|>")))
    assert tok.convert_tokens_to_ids("<|im_start|>") in gen.stop_ids
    ids = tok("The answer is 4. ### Now another question", add_special_tokens=False)["input_ids"]
    assert gen._decode(ids).text == "The answer is 4."
