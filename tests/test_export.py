"""export.py on a real adapter (a peft-initialised LoRA with non-zero weights on the tiny model):
the folder loads with AutoModelForCausalLM in a process without peft, generates, equals the
adapter applied with peft, carries the chat template, generation config and the verdict; push
goes through the fake Hub."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamaduo import hub
from llamaduo.errors import UsageError
from llamaduo.pipeline import export
from tests.fake_hub import FakeHubApi


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("round_1") / "model"
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))  # random B: the merge changes the weights
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(folder))
    return folder


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_export_loads_without_peft_and_equals_the_adapter(adapter, tiny_model_dir, tmp_path, repo_root):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary = tmp_path / "eval"
    summary.mkdir()
    (summary / "summary.json").write_text(json.dumps({
        "qualified": True, "scored_rows": 12, "rows": 12, "mean_similarity": 91.5, "mean_precision": 88.0,
        "criteria": [{"name": "mean similarity", "value": 91.5, "bar": 80, "passed": True}]}))
    out = tmp_path / "exported"
    assert export.main(["--adapter-id", str(adapter), "--output-dir", str(out),
                        "--evaluation-summary", str(summary)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "Modelfile"} <= files
    assert "adapter_config.json" not in files
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    card = (out / "README.md").read_text()
    assert "QUALIFIED" in card and "91.5" in card and "qualified" in card.split("---")[1]
    from huggingface_hub import ModelCard

    results = ModelCard(card).data.eval_results  # model-index, as the Hub reads it
    assert any(r.metric_type == "mean_similarity" and r.metric_value == 91.5 for r in results)

    # a fresh process, peft blocked from importing: loads with transformers alone and generates
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "enc = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "new = m.generate(**enc, max_new_tokens=4, do_sample=False)[0, enc['input_ids'].shape[1]:]\n"
        "print(type(m).__name__, len(new))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(repo_root / "src")))
    assert res.returncode == 0, res.stderr[-2000:]
    name, n_new = res.stdout.split()
    assert name == "LlamaForCausalLM" and 1 <= int(n_new) <= 4

    ids = torch.tensor([[1, 20, 30, 40, 50]])
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                           str(adapter)).eval()
    assert torch.allclose(logits(exported, ids), logits(peft_model, ids), atol=1e-4)
    assert not torch.allclose(logits(exported, ids), logits(base, ids), atol=1e-4)


def test_push_goes_through_hub_and_not_qualified_is_stated(adapter, tmp_path):
    fake = FakeHubApi()
    hub.set_api(fake)
    try:
        summary = tmp_path / "summary.json"
        summary.write_text(json.dumps({"qualified": False, "scored_rows": 3, "criteria": []}))
        out = tmp_path / "exported"
        assert export.main(["--adapter-id", str(adapter), "--output-dir", str(out), "--evaluation-summary",
                            str(summary), "--push-to-hub", "--hub-model-id", "me/exported", "--no-ollama-modelfile"]) == 0
    finally:
        hub.set_api(None)
    pushed = fake.repos["me/exported"]
    assert "model.safetensors" in pushed and "Modelfile" not in pushed
    assert b"NOT QUALIFIED" in pushed["README.md"]
    assert fake.commits and "export" in str(fake.commits[-1])


@pytest.mark.parametrize("extra, message", [
    (["--evaluation-summary", "/nonexistent/summary.json"], "not found"),
    (["--push-to-hub"], "needs hub_model_id"),
])
def test_bad_inputs_exit_2_before_loading(adapter, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        export.main(["--adapter-id", str(adapter), "--output-dir", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists()


def test_output_over_the_adapter_is_refused(adapter):
    with pytest.raises(UsageError, match="adapter_id"):
        export.main(["--adapter-id", str(adapter), "--output-dir", str(adapter)])
