"""finetune.py: loss masking, bad input (exit 2 before any model load), what a run saves,
full fine-tuning, and the alignment-handbook configs. All on the tiny random model.

The slow process-level tests (resume after a kill, 2-process DDP, dstack) are in
tests/test_finetune_processes.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llamaduo.chat_template import IGNORE_INDEX, tokenize_conversation
from llamaduo.errors import UsageError
from llamaduo.inference.model_ref import resolve_model_ref

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 is 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 is 6, which is even."},
]
PLAIN_TEMPLATE = ("{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '\\n\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}")
# ChatML without SmolLM2's injected default system prompt: a "configured" template.
CUSTOM_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


def _rows(n: int, *, with_assistant: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Write a Python function that returns {i} plus one."}]
        if with_assistant:
            messages.append({"role": "assistant",
                             "content": f"```python\ndef f():\n    return {i} + 1\n```\nThis function returns {i + 1}."})
        rows.append({"prompt": messages[0]["content"], "messages": messages, "category": "coding"})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data")
    _write_jsonl(folder / "train_sft.jsonl", _rows(8))
    _write_jsonl(folder / "test_sft.jsonl", _rows(4))
    return folder


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model's config and tokenizer with unreadable weights: any code path that loads
    the model fails with a non-usage error, so an exit-2 test proves no model load happened."""
    folder = tmp_path_factory.mktemp("broken-model")
    for f in tiny_model_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, folder / f.name)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-name-or-path", str(model), "--use-peft", "--dataset-id", str(data), "--output-dir", str(out),
            "--per-device-train-batch-size", "4", "--max-length", "128", "--logging-steps", "1",
            "--report-to", "none", "--save-strategy", "no", "--no-gradient-checkpointing",
            "--lora-r", "4", "--lora-alpha", "8", "--seed", "0", "--dataloader-num-workers", "0", *extra]


def _finetune(argv: list[str]) -> int:
    from llamaduo.pipeline import finetune

    return finetune.main(argv)


def _label_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for tok, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if current:
                spans.append(current)
                current = []
        else:
            assert lab == tok
            current.append(tok)
    return spans + ([current] if current else [])


# --------------------------------------------------------------------------- loss masking


@pytest.mark.parametrize("template, end_of_turn", [(None, "<|im_end|>"), (PLAIN_TEMPLATE, "")],
                         ids=["smollm2-chatml", "plain-no-eos"])
def test_labels_cover_exactly_the_assistant_replies(tiny_model_dir: Path, template: str | None,
                                                    end_of_turn: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    if template:
        tok.chat_template = template
    out = tokenize_conversation(tok, CONVERSATION)
    ids, labels = out["input_ids"], out["labels"]

    # The ids are the whole rendered conversation...
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    # ...and the trained tokens are exactly the two replies, each with its end-of-turn token.
    spans = [tok.decode(s) for s in _label_spans(ids, labels)]
    assert spans == ["2 + 2 is 4." + end_of_turn, "3 + 3 is 6, which is even." + end_of_turn]
    # The prompt tokens are the very ids batch inference will feed (same template, same split).
    prompt_ids = tok(tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert all(lab == IGNORE_INDEX for lab in labels[: len(prompt_ids)])

    everything = tokenize_conversation(tok, CONVERSATION, train_on_prompt=True)
    assert everything["input_ids"] == ids
    assert sum(lab != IGNORE_INDEX for lab in everything["labels"]) > sum(lab != IGNORE_INDEX for lab in labels)


def test_template_that_is_not_prefix_consistent_is_refused(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # Renders the number of turns first: every prefix differs from the full conversation.
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UsageError, match="prefix"):
        tokenize_conversation(tok, CONVERSATION)


# --------------------------------------------------------------------------- bad input: exit 2, no model load


def test_the_broken_model_sentinel_does_fail_on_load(broken_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    """Control for the exit-2 tests below: with valid inputs the broken model is loaded and fails
    with a non-usage error; so those tests' UsageErrors did come before any model load."""
    with pytest.raises(Exception) as info:
        _finetune(_argv(broken_model_dir, sft_data, tmp_path / "out", "--max-steps", "1"))
    assert not isinstance(info.value, UsageError)


def _bad_cases(tmp: Path, data: Path) -> dict[str, tuple[list[str], str]]:
    no_messages = tmp / "no_messages"
    _write_jsonl(no_messages / "train_sft.jsonl", [{"prompt": "p", "label": "r"}])
    no_reply = tmp / "no_reply"
    _write_jsonl(no_reply / "train_sft.jsonl", _rows(3, with_assistant=False))
    used = tmp / "used_out"
    used.mkdir()
    (used / "adapter_config.json").write_text("{}")
    unknown = tmp / "unknown.yaml"
    unknown.write_text("lora_rank: 8\n")
    return {
        "unknown-key": (["--from-config", str(unknown)], "unknown key 'lora_rank'.*lora_r"),
        "no-messages-column": (["--dataset-id", str(no_messages)], "has prompts but no answers.*column_map"),
        "no-assistant-turn": (["--dataset-id", str(no_reply)], "no assistant turn"),
        "fraction-zero": (["--dataset-id", "", "--dataset-mixer", json.dumps({str(data): 0.0})], r"\(0, 1\]"),
        "fraction-too-big": (["--dataset-id", "", "--dataset-mixer", json.dumps({str(data): 1.5})], r"\(0, 1\]"),
        "output-dir-holds-a-run": (["--output-dir", str(used)], "already holds a training run"),
        "eval-without-test-split": (["--eval-strategy", "epoch", "--dataset-splits", "train_sft"], "test split"),
        "split-name": (["--dataset-splits", "train_sft", "validation"], "must contain 'train' or 'test'"),
        "bad-dataset-kwargs": (["--dataset-kwargs", '{"packing_magic": true}'], "dataset_kwargs"),
        "missing-model": (["--model-name-or-path", str(tmp / "nope")], "path not found"),
    }


@pytest.mark.parametrize("case", ["unknown-key", "no-messages-column", "no-assistant-turn", "fraction-zero",
                                  "fraction-too-big", "output-dir-holds-a-run", "eval-without-test-split",
                                  "split-name", "bad-dataset-kwargs", "missing-model"])
def test_bad_input_is_a_usage_error_before_model_load(case: str, broken_model_dir: Path, sft_data: Path,
                                                      tmp_path: Path) -> None:
    extra, message = _bad_cases(tmp_path, sft_data)[case]
    with pytest.raises(UsageError, match=message):
        _finetune(_argv(broken_model_dir, sft_data, tmp_path / "out", "--max-steps", "1", *extra))


def test_cli_exits_2_with_one_line(repo_root: Path, tmp_path: Path) -> None:
    """The exit status and the one line, as finetune.py runs main (in-process: a finetune process
    spends ~10 CPU-seconds importing TRL before it parses; tests/test_bad_inputs.py runs a refusal
    in a real finetune process)."""
    from tests.inprocess import run_stage

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model_name_or_path: smollm2-135m-instruct\nlearning_rat: 0.1\n")
    proc = run_stage("finetune", ["--from-config", str(cfg)], cwd=repo_root)
    assert proc.returncode == 2, proc.stderr
    assert "error: config file" in proc.stderr and "learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_lora_target_names_the_existing_modules(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\['qkv_proj'\] do not exist.*q_proj.*v_proj"):
        _finetune(_argv(tiny_model_dir, sft_data, tmp_path / "out", "--max-steps", "1",
                        "--lora-target-modules", "q_proj", "qkv_proj"))


# --------------------------------------------------------------------------- what a run saves


def test_lora_run_saves_adapter_template_generation_config_and_merged_model(
        tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llamaduo import hub
    from tests.fake_hub import FakeHubApi

    out = tmp_path / "adapter"
    fake = FakeHubApi()
    hub.set_api(fake)  # the one allowed fake: the Hub, at llamaduo.hub's seam
    try:
        assert _finetune(_argv(tiny_model_dir, sft_data, out, "--max-steps", "2", "--merge-adapter",
                               "--chat-template", CUSTOM_CHATML, "--eval-strategy", "steps", "--eval-steps", "2",
                               "--lora-target-modules", "q_proj", "--save-strategy", "steps", "--save-steps", "1",
                               "--push-to-hub", "--hub-model-id", "me/tiny-lora", "--padding-free")) == 0
    finally:
        hub.set_api(None)
    pushed = fake.repos["me/tiny-lora"]
    assert {"adapter_model.safetensors", "adapter_config.json", "chat_template.jinja", "generation_config.json",
            "merged/model.safetensors", "README.md"} <= set(pushed)
    assert not any(p.startswith("checkpoint-") for p in pushed) and (out / "checkpoint-2").is_dir()
    assert pushed["README.md"] == (out / "README.md").read_bytes()

    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == tiny_model_dir.resolve().name  # a name, never a path
    assert adapter_cfg["target_modules"] == ["q_proj"]
    # Trained with the CPU fast path's attention (padding-free), saved with a config any loader knows.
    assert "sdpa_varlen" not in (out / "merged" / "config.json").read_text()
    assert (out / "adapter_model.safetensors").is_file()

    base_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for folder in (out, out / "merged"):
        tok = AutoTokenizer.from_pretrained(str(folder))
        assert tok.chat_template == CUSTOM_CHATML  # the configured template, not the base one
        assert (tok.eos_token, tok.pad_token) == (base_tok.eos_token, base_tok.pad_token)
        gen = GenerationConfig.from_pretrained(str(folder))
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        assert base_tok.convert_tokens_to_ids("<|im_end|>") in eos
        assert gen.pad_token_id == base_tok.pad_token_id

    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["train_rows"] == 8 and summary["eval_rows"] == 4
    assert summary["attn_implementation"] == "sdpa_varlen"  # padding-free on a CPU: per-conversation attention
    assert "eval_loss" in summary["metrics"]
    assert summary["peak_rss_mb"] > 100  # a trained model was in memory
    card = (out / "README.md").read_text()
    assert sft_data.name in card and f"base_model: {tiny_model_dir.name}" in card and "lora_r: 4" in card
    assert str(tmp_path) not in card and str(tiny_model_dir) not in card  # no path of the training machine
    assert "max_length: 128" in card  # the limit trained with, though padding-free truncates it here
    assert resolve_model_ref(str(out)).base_path == str(tiny_model_dir.resolve())  # the exact local base
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss_curve.png" in pushed

    # The merged model computes what base + adapter computes.
    ids = torch.tensor([base_tok("Write a Python function")["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                             str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_cpu_fast_path_trains_what_trl_trains(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    """The same 3 optimizer steps, as TRL does them (padded, its own head) and through the CPU
    fast path (padding-free, per-conversation attention, labelled-only head): the same losses.
    Packing mixes conversations differently, so it is only checked to train."""
    from trl.trainer import utils as trl_utils

    runs = {}
    for name, extra in {"padding_free": ["--padding-free"], "trl": ["--no-cpu-fast-path"],
                        "packing": ["--packing"]}.items():
        assert _finetune(_argv(tiny_model_dir, sft_data, tmp_path / name, "--max-steps", "3", *extra)) == 0
        runs[name] = json.loads((tmp_path / name / "finetune_summary.json").read_text())
        # the TRL run, after a fast one in the same process, really ran TRL's own head
        assert getattr(trl_utils._use_triton, "_llamaduo", False) == (name != "trl")
    assert [runs[n]["attn_implementation"] for n in runs] == ["sdpa_varlen", "sdpa", "sdpa_varlen"]
    assert len(runs["trl"]["losses"]) == 3
    assert runs["padding_free"]["losses"] == pytest.approx(runs["trl"]["losses"], rel=1e-4)
    assert all(0 < x < 20 for x in runs["packing"]["losses"]) and len(runs["packing"]["losses"]) == 3


def test_full_finetune_saves_a_full_model_and_its_loss_falls(tiny_model_dir: Path, sft_data: Path,
                                                             tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    argv = [a for a in _argv(tiny_model_dir, sft_data, out) if a != "--use-peft"]
    assert _finetune(argv + ["--max-steps", "8", "--learning-rate", "1e-2", "--lr-scheduler-type", "constant"]) == 0

    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["adapter"] is False and len(summary["losses"]) == 8
    assert summary["last_loss"] < 0.8 * summary["first_loss"], summary["losses"]
    assert not (out / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(str(out))  # a complete, loadable model
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == \
        AutoTokenizer.from_pretrained(str(tiny_model_dir)).chat_template


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("old_names", [False, True], ids=["shipped", "original-names"])
def test_alignment_handbook_sample_config_loads_unchanged(repo_root: Path, caplog: pytest.LogCaptureFixture,
                                                          tmp_path: Path, old_names: bool) -> None:
    from llamaduo.pipeline.finetune import _cuda_available, parse_args

    path = repo_root / "config/sample_config.yaml"
    if old_names:  # the original's spelling of the same file
        text = path.read_text()
        for new, old in (("dtype:", "torch_dtype:"), ("eval_strategy:", "evaluation_strategy:"),
                         ("max_length:", "max_seq_length:"), ("warmup_steps:", "warmup_ratio:")):
            text = text.replace(f"\n{new}", f"\n{old}")
        path = tmp_path / "sample_config.yaml"
        path.write_text(text)
    with caplog.at_level("WARNING"):
        script, model_args, sft = parse_args(["--from-config", str(path)])
    renamed = [r.getMessage() for r in caplog.records if "is renamed to" in r.getMessage()]
    # the shipped file prints no rename warning; the original names are mapped with one each
    assert len(renamed) == (4 if old_names else 0)
    assert script.dataset_mixer == {"data/demo": 1.0}  # the real set chains on one reference dataset
    assert script.dataset_splits == ["train_sft", "test_sft"] and script.preprocessing_num_workers == 12
    assert script.overwrite_output_dir is True and script.merge_adapter is True
    assert model_args.dtype == "bfloat16" and model_args.use_peft and model_args.lora_r == 8
    assert sft.max_length == 2048 and str(sft.eval_strategy.value) == "epoch" and sft.warmup_steps == 0.1
    assert sft.dataset_kwargs == {"add_special_tokens": False, "append_concat_token": False}
    assert sft.gradient_checkpointing_kwargs == {"use_reentrant": False}
    if not _cuda_available():  # the GPU recipe still parses on a laptop, with CPU fallbacks
        assert sft.use_cpu and model_args.load_in_4bit is False and model_args.attn_implementation == "sdpa"


def test_demo_config_and_cli_dataset_overrides(repo_root: Path) -> None:
    from llamaduo.pipeline.finetune import parse_args
    from llamaduo.pipeline.finetune_data import resolve_mixer

    demo = ["--from-config", str(repo_root / "config/demo/finetune.yaml")]
    script, model_args, _ = parse_args(demo)
    assert model_args.model_name_or_path == "smollm2-135m-instruct" and script.dataset_mixer == {"data/demo_tickets": 1.0}
    script, _, _ = parse_args(demo + ["--dataset-mixer", '{"outputs/round_1/merged": 1.0}'])
    assert resolve_mixer(script.dataset_mixer, script.dataset_id) == {"outputs/round_1/merged": 1.0}
    script, _, _ = parse_args(demo + ["--dataset-id", "outputs/round_2/merged"])
    assert resolve_mixer(script.dataset_mixer, script.dataset_id) == {"outputs/round_2/merged": 1.0}


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp", "deepspeed_zero3"])
def test_accelerate_configs_load_with_accelerate(repo_root: Path, name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(repo_root / "config" / "accelerate" / f"{name}.yaml"))
    expected = {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}[name]
    assert str(cfg.distributed_type).endswith(expected)
    assert cfg.mixed_precision == "bf16" and cfg.num_processes == 8


def test_resume_picks_the_last_complete_checkpoint(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from llamaduo.pipeline.finetune import resolve_resume

    out = tmp_path / "run"
    assert resolve_resume(SimpleNamespace(resume_from_checkpoint="auto"), out) is None  # nothing yet: fresh start
    with pytest.raises(UsageError, match="no complete checkpoint"):
        resolve_resume(SimpleNamespace(resume_from_checkpoint="latest"), out)
    for step in (2, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-12").mkdir()  # half-written when the process was killed
    for value in ("latest", "true", "auto"):
        assert resolve_resume(SimpleNamespace(resume_from_checkpoint=value), out) == str(out / "checkpoint-10")
    with pytest.raises(UsageError, match="not a checkpoint"):
        resolve_resume(SimpleNamespace(resume_from_checkpoint=str(out / "checkpoint-12")), out)


def test_trl_style_config_with_dataset_name_and_plain_splits(tiny_model_dir: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A `trl sft --config` file: dataset_name + dataset_train_split/dataset_test_split, a dataset
    with plain train/test splits; the adapter and card name the base by Hub id / name, no path."""
    data = tmp_path / "plain"
    _write_jsonl(data / "train.jsonl", _rows(8))
    _write_jsonl(data / "test.jsonl", _rows(2))
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "acme/tiny-chat"}))
    out = tmp_path / "out"
    trl_yaml = tmp_path / "trl.yaml"
    trl_yaml.write_text(f"model_name_or_path: {base}\ndataset_name: {data}\ndataset_train_split: train\n"
                        f"dataset_test_split: test\neval_strategy: steps\neval_steps: 1\nmax_steps: 1\n"
                        f"use_peft: true\nlora_r: 4\nlora_alpha: 8\noutput_dir: {out}\nreport_to: none\n"
                        f"save_strategy: 'no'\nmax_length: 128\nper_device_train_batch_size: 4\n"
                        f"gradient_checkpointing: false\ndataloader_num_workers: 0\n")
    assert _finetune(["--config", str(trl_yaml)]) == 0
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "acme/tiny-chat"  # the recorded Hub id
    card = (out / "README.md").read_text()
    assert "base_model: acme/tiny-chat" in card and str(tmp_path) not in card
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["train_rows"] == 8 and summary["eval_rows"] == 2
    # the same on the CLI, TRL's flag; and the default train_sft/test_sft fall back to train/test, logged
    out2 = tmp_path / "out2"
    caplog.set_level("INFO")
    argv = _argv(tiny_model_dir, data, out2, "--max-steps", "1")
    del argv[argv.index("--dataset-id"):argv.index("--dataset-id") + 2]
    assert _finetune(argv + ["--dataset_name", str(data)]) == 0
    assert "has no split 'train_sft': using its 'train' split" in caplog.text
    with pytest.raises(UsageError, match="name different datasets"):
        _finetune(_argv(tiny_model_dir, data, tmp_path / "o3") + ["--dataset_name", str(tmp_path)])


def test_embedded_alias_records_the_smollm2_hub_id(embedded_model_dir: Path, tmp_path: Path) -> None:
    from llamaduo.pipeline.finetune_model import base_hub_id

    # an adapter naming the Hub id loads offline: on the training base (finetune_summary.json),
    # or without it on the embedded copy of that repo
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path":
                                                              "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 8}))
    assert resolve_model_ref(str(tmp_path)).base_path == str(embedded_model_dir)

    assert base_hub_id("smollm2-135m-instruct", "/root/.cache/llamaduo/smollm2-135m-instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_hub_id("acme/x", "acme/x") == "acme/x"
    assert base_hub_id("/somewhere/my-base", "/nonexistent/my-base", "org/hint") == "org/hint"
