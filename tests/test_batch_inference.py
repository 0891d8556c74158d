"""batch_inference.py: validation, loading, batching, seeds, output schema, append/overwrite.

Runs on the tiny random model (`tiny_model_dir`) with a handful of new tokens; the slower
process-level tests (kill + resume, torchrun data parallel) are in
test_batch_inference_processes.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from llamaduo.errors import UsageError
from llamaduo.inference.hf_backend import (GenSettings, HFGenerator, load_model, load_tokenizer, prefill_groups,
                                           stop_token_ids)
from llamaduo.inference.decode_attention import decode_runs
from llamaduo.inference.model_ref import resolve_model_ref
from llamaduo.inference.plan import build_work_items, padding_waste, plan_batches
from llamaduo.inference.prompts import prompt_records, tokenize_prompts
from llamaduo.inference.store import PartialStore
from llamaduo.models import model_sha
from llamaduo.pipeline import batch_inference as bi

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Sum a list.",
    "Write a function that checks whether a number is prime, and explain it in one sentence.",
    "Hello",
    "Write a Python function that returns the factorial of n using recursion, with a docstring.",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny-model ops are too small to gain from threads; on a shared 2-core machine two
    spinning OpenMP threads made each forward pass ~30x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_split(folder: Path, prompts=PROMPTS, *, system: str | None = None, with_messages=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "test_sft.jsonl", "w") as fh:
        for i, p in enumerate(prompts):
            row = {"prompt": p, "prompt_id": f"p{i}", "category": "coding"}
            if with_messages:
                msgs = ([{"role": "system", "content": system}] if system else [])
                msgs += [{"role": "user", "content": p}, {"role": "assistant", "content": f"answer {i}"}]
                row["messages"] = msgs
            fh.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture
def test_split(tmp_path) -> Path:
    return write_split(tmp_path / "data")


def argv_for(model, data, out, **over) -> list[str]:
    args = {"ft_model_id": str(model), "test_ds_id": str(data), "lm_response_ds_id": str(out),
            "max_new_tokens": 6, "inference_bs": 2, "repeat": 1, "do_sample": "true", "temperature": 1.0,
            "dtype": "float32", "lm_response_append": "false"}
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def run_stage(model, data, out, **over):
    assert bi.main(argv_for(model, data, out, **over)) == 0
    return load_from_disk(str(out))["batch_infer"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if any weights are loaded: bad input must be caught before that."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")
    from llamaduo.inference import hf_backend  # the stage imports load_model from here when it loads one

    monkeypatch.setattr(hf_backend, "load_model", refuse)


# --------------------------------------------------------------------------- bad input -> exit 2


@pytest.mark.parametrize("key,value", [("repeat", 0), ("inference_bs", 0), ("max_new_tokens", 0),
                                       ("top_p", 0), ("temperature", -1)])
def test_bad_values_fail_before_model_load(tiny_model_dir, test_split, tmp_path, no_model_load, key, value):
    with pytest.raises(UsageError, match=key):
        bi.main(argv_for(tiny_model_dir, test_split, tmp_path / "out", **{key: value}))


def test_missing_prompt_columns(tiny_model_dir, tmp_path, no_model_load):
    data = tmp_path / "d"
    data.mkdir()
    (data / "test_sft.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UsageError, match=r"no known data format in columns question, answer.*column_map"):
        bi.main(argv_for(tiny_model_dir, data, tmp_path / "out"))


def test_missing_model_path(test_split, tmp_path, no_model_load):
    with pytest.raises(UsageError, match="does not exist"):
        bi.main(argv_for(tmp_path / "no" / "such-model", test_split, tmp_path / "out"))


def test_adapter_without_findable_base(tiny_adapter, test_split, tmp_path, no_model_load):
    orphan = _copy_adapter(tiny_adapter, tmp_path / "orphan", base="/nonexistent/base-model")
    with pytest.raises(UsageError, match="cannot find the base model"):
        bi.main(argv_for(orphan, test_split, tmp_path / "out"))


def test_vllm_backend_missing_is_a_usage_error(tiny_model_dir, test_split, tmp_path, no_model_load):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(UsageError, match="pip install vllm"):
        bi.main(argv_for(tiny_model_dir, test_split, tmp_path / "out", backend="vllm"))


def test_script_exit_code_and_message(repo_root, test_split, tmp_path):
    """The real script file (run as `__main__` in this process: the refusal is the point, not an
    interpreter start; tests/test_bad_inputs.py refuses in a real batch_inference process): one
    clean line on stderr and exit code 2."""
    from tests.inprocess import run_script

    proc = run_script(repo_root / "batch_inference.py", argv_for(tmp_path / "missing", test_split, tmp_path / "out"),
                      cwd=repo_root)
    assert proc.returncode == 2, proc.stderr
    assert "error: ft_model_id path does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- output


def test_output_columns_order_and_sha(tiny_model_dir, tmp_path):
    data = write_split(tmp_path / "data", system="You answer in Python.")
    out = run_stage(tiny_model_dir, data, tmp_path / "out", repeat=2)
    assert out.column_names == ["instructions", "target_responses", "candidate_responses", "model_id",
                                "model_sha", "prompt_id", "repeat_index", "finish_reason",
                                "category"]  # category: carried from the test split
    assert len(out) == 2 * len(PROMPTS)
    assert out["prompt_id"] == [f"p{i}" for i in range(len(PROMPTS)) for _ in range(2)]
    assert out["repeat_index"] == [0, 1] * len(PROMPTS)
    assert out["instructions"][::2] == PROMPTS  # the user turn, not the system turn
    assert out["target_responses"][::2] == [f"answer {i}" for i in range(len(PROMPTS))]
    assert set(out["model_sha"]) == {model_sha(str(tiny_model_dir))}
    assert set(out["model_id"]) == {str(tiny_model_dir)}
    assert all(isinstance(c, str) and c for c in out["candidate_responses"])
    assert not (tmp_path / "out" / "partial").exists()  # removed once the output is saved
    assert (tmp_path / "out" / "batch_infer.jsonl").is_file()


def test_test_split_columns_are_carried_next_to_each_answer(tiny_model_dir, tmp_path):
    """Evaluation runs each answer against its row's `test`: the test split's extra columns
    (any name, any type) reach the output row of every repeat, unchanged."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "test_sft.jsonl", "w") as fh:
        for i, p in enumerate(PROMPTS):
            fh.write(json.dumps({"prompt": p, "prompt_id": f"p{i}", "test": f"assert f({i}) == {i}",
                                 "entry_point": f"f{i}", "difficulty": i * 1.5,
                                 "messages": [{"role": "user", "content": p},
                                              {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
    out = run_stage(tiny_model_dir, data, tmp_path / "out", repeat=2)
    assert out.column_names[8:] == ["test", "entry_point", "difficulty"]  # not messages/prompt
    assert out["test"] == [f"assert f({i}) == {i}" for i in range(len(PROMPTS)) for _ in range(2)]
    assert out["entry_point"] == [f"f{i}" for i in range(len(PROMPTS)) for _ in range(2)]
    assert out["difficulty"] == [i * 1.5 for i in range(len(PROMPTS)) for _ in range(2)]
    reloaded = load_from_disk(str(tmp_path / "out"))["batch_infer"]
    assert reloaded["test"] == out["test"]


def test_append_and_overwrite(tiny_model_dir, test_split, tmp_path):
    out = tmp_path / "out"
    assert len(run_stage(tiny_model_dir, test_split, out)) == len(PROMPTS)
    assert len(run_stage(tiny_model_dir, test_split, out, lm_response_append="true")) == 2 * len(PROMPTS)
    assert len(run_stage(tiny_model_dir, test_split, out, lm_response_append="false")) == len(PROMPTS)


def test_prompt_column_only_dataset(tiny_model_dir, tmp_path):
    data = write_split(tmp_path / "data", with_messages=False)
    out = run_stage(tiny_model_dir, data, tmp_path / "out")
    assert out["instructions"] == PROMPTS
    assert out["target_responses"] == [""] * len(PROMPTS)


def _with_extra_stop_tokens(model_dir: Path, dest: Path, prompts) -> Path:
    """A copy of the model whose generation_config also stops on the token it greedily emits
    first for each prompt: the model really ends its turn, as a trained model does with eos."""
    import shutil

    from transformers import AutoModelForCausalLM, GenerationConfig

    ref = resolve_model_ref(str(model_dir))
    tok = load_tokenizer(ref)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    firsts = set()
    for ids in tokenize_prompts(_records(prompts), tok, 4):
        with torch.inference_mode():
            firsts.add(int(model(torch.tensor([list(ids)])).logits[0, -1].argmax()))
    shutil.copytree(model_dir, dest)
    cfg = GenerationConfig.from_pretrained(str(dest))
    cfg.eos_token_id = [tok.eos_token_id, *sorted(firsts)]
    cfg.save_pretrained(str(dest))
    return dest


def test_finish_reason_length_and_stop(tiny_model_dir, test_split, tmp_path):
    """Random weights never end their turn within 4 tokens: every answer is cut ("length");
    a model that emits its stop token at once finishes every answer ("stop")."""
    cut = run_stage(tiny_model_dir, test_split, tmp_path / "cut", max_new_tokens=4, do_sample="false")
    assert cut["finish_reason"] == ["length"] * len(PROMPTS)
    stopping = _with_extra_stop_tokens(tiny_model_dir, tmp_path / "stopping", PROMPTS)
    done = run_stage(stopping, test_split, tmp_path / "stop", max_new_tokens=4, do_sample="false")
    assert done["finish_reason"] == ["stop"] * len(PROMPTS)


def test_vllm_finish_reason_is_mapped_from_its_completion_output():
    """vLLM cannot run here (no CUDA); this stands in for its CompletionOutput with the three
    documented fields the backend reads. "abort" is not a cut at the token limit."""
    from types import SimpleNamespace

    from llamaduo.inference.vllm_backend import _generated

    for theirs, ours in (("length", "length"), ("stop", "stop"), ("abort", "stop")):
        out = _generated(SimpleNamespace(text=" def f(): ", token_ids=[1, 2, 3], finish_reason=theirs))
        assert (out.text, out.new_tokens, out.finish_reason) == ("def f():", 3, ours)


def test_finish_reason_of_partial_records_from_older_runs():
    """Partial files written before finish_reason existed still resume into the column."""
    assert bi.finish_reason_of({"finish_reason": "stop", "new_tokens": 8}, 8) == "stop"
    assert bi.finish_reason_of({"new_tokens": 8}, 8) == "length"
    assert bi.finish_reason_of({"new_tokens": 3}, 8) == "stop"
    assert bi.finish_reason_of({}, 8) is None


# --------------------------------------------------------------------------- seeds


def test_sampling_is_reproducible_and_independent_of_batching(tiny_model_dir, test_split, tmp_path):
    a = run_stage(tiny_model_dir, test_split, tmp_path / "a", repeat=2, inference_bs=1)
    b = run_stage(tiny_model_dir, test_split, tmp_path / "b", repeat=2, inference_bs=3)
    assert a["candidate_responses"] == b["candidate_responses"]
    texts = a["candidate_responses"]
    assert any(texts[2 * i] != texts[2 * i + 1] for i in range(len(PROMPTS)))  # repeats differ
    c = run_stage(tiny_model_dir, test_split, tmp_path / "c", repeat=2, inference_bs=3, seed=7)
    assert c["candidate_responses"] != texts


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny_generator(tiny_model_dir):
    ref = resolve_model_ref(str(tiny_model_dir))
    tok = load_tokenizer(ref)
    return tok, load_model(ref, tok, "cpu", torch.float32)


def _records(prompts):
    from datasets import Dataset

    return prompt_records(Dataset.from_list([{"prompt": p, "prompt_id": f"p{i}"} for i, p in enumerate(prompts)]))


def _items(tok, prompts=PROMPTS, repeat=1, seed=0):
    recs = _records(prompts)
    return build_work_items(recs, tokenize_prompts(recs, tok, 2), repeat, seed)


def test_batched_left_padded_equals_one_by_one(tiny_generator):
    tok, model = tiny_generator
    gen = HFGenerator(model, tok, GenSettings(8, True, 1.0, 1.0, 0))
    items = _items(tok)
    batched = gen.generate(items)
    alone = [gen.generate([it])[0] for it in items]
    assert batched == alone
    assert len({g.text for g in batched}) == len(items)


def test_decodes_only_new_tokens_and_cuts_at_end_of_turn(tiny_generator):
    tok, model = tiny_generator
    gen = HFGenerator(model, tok, GenSettings(8, False, 0.0, 1.0, 0))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tok)
    words = tok("def add(a, b):", add_special_tokens=False)["input_ids"]
    out = gen._decode(words + [im_end] + tok("junk after the end", add_special_tokens=False)["input_ids"])
    assert (out.text, out.new_tokens, out.finish_reason) == ("def add(a, b):", len(words), "stop")
    cut = gen._decode(words)  # no end-of-turn token: max_new_tokens ended the answer
    assert (cut.text, cut.new_tokens, cut.finish_reason) == ("def add(a, b):", len(words), "length")
    # Real generate call: the prompt (and its template) never appears in the decoded answer.
    items = _items(tok, prompts=["Reverse a string UNIQUE-MARKER-42"])
    gen_s = HFGenerator(model, tok, GenSettings(8, True, 1.0, 1.0, 0))
    text = gen_s.generate(items)[0].text
    assert "UNIQUE-MARKER" not in text and "<|im_start|>" not in text


def test_real_model_stops_at_end_of_turn(embedded_model_dir):
    """The real SmolLM2 ends its turn with <|im_end|> long before the token limit."""
    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    model = load_model(ref, tok, "cpu", torch.float32)
    gen = HFGenerator(model, tok, GenSettings(60, False, 0.0, 1.0, 0))
    out = gen.generate(_items(tok, prompts=["What is the capital of France? Answer in one short sentence."]))[0]
    assert 0 < out.new_tokens < 60 and out.finish_reason == "stop"
    assert "Paris" in out.text
    assert "<|im_end|>" not in out.text and "assistant" not in out.text.lower()[:20]


def _generate_recording_batch_shapes(generator: HFGenerator, items) -> tuple[list, list[tuple[int, int]]]:
    """The generator's answers, and the (rows, columns) of the batch each `model.generate` round
    was given (the model's own generate runs; it is only observed)."""
    shapes: list[tuple[int, int]] = []
    real_generate = generator.model.generate

    def recording_generate(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real_generate(*args, **kwargs)

    generator.model.generate = recording_generate
    try:
        return generator.generate(items), shapes
    finally:
        generator.model.generate = real_generate


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampled"])
def test_rows_leave_the_batch_when_they_stop_and_no_answer_changes(embedded_model_dir, sampling):
    """Rows that hit their end-of-turn token leave the batch between rounds of `chunk_tokens`
    new tokens (the batch really shrinks), and every answer, its length and its finish reason
    are the ones a single `generate` over the whole batch gives, greedy and seeded sampling."""
    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    model = load_model(ref, tok, "cpu", torch.float32)
    prompts = ["What is the capital of France? Answer in one short sentence.",
               "Write a Python function that returns the nth Fibonacci number, with a docstring.",
               "Say yes.", "Explain in detail how a hash map works, with an example in Python."]
    settings = GenSettings(24, sampling, 0.8 if sampling else 0.0, 0.95 if sampling else 1.0, 7)
    items = _items(tok, prompts=prompts)
    whole = HFGenerator(model, tok, settings, chunk_tokens=24, lookup_tokens=0).generate(items)
    chunked, shapes = _generate_recording_batch_shapes(HFGenerator(model, tok, settings, chunk_tokens=6, lookup_tokens=0), items)
    sizes = [rows for rows, _ in shapes]
    assert [(o.text, o.new_tokens, o.finish_reason) for o in chunked] == \
        [(o.text, o.new_tokens, o.finish_reason) for o in whole]
    reasons = {o.finish_reason for o in whole}
    assert reasons == {"stop", "length"}, "the prompts must include short and long answers"
    assert sizes[0] == len(prompts) and sizes[-1] < sizes[0] and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampled"])
def test_prompts_prefilled_in_length_groups_give_the_same_answers(embedded_model_dir, sampling):
    """On a CPU the prompts are read into the cache in groups of similar length, not as one batch
    padded to the longest prompt: the groups really are separate forwards, each no wider than
    its own longest prompt, and every answer is the one the padded prefill gives."""
    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    model = load_model(ref, tok, "cpu", torch.float32)
    prompts = ["Say yes.", "Name a colour.",
               "Write a Python function that returns the nth Fibonacci number, with a docstring. " * 3,
               "Explain in detail how a hash map works, with an example in Python, and say when a "
               "balanced tree is the better choice, with the costs of both. " * 4]
    settings = GenSettings(12, sampling, 0.8 if sampling else 0.0, 0.95 if sampling else 1.0, 7)
    items = _items(tok, prompts=prompts)
    padded = HFGenerator(model, tok, settings, prefill_waste=None, lookup_tokens=0).generate(items)
    widths: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(tuple(kw["input_ids"].shape)) if kw.get("input_ids") is not None else None,
        with_kwargs=True)
    try:
        grouped = HFGenerator(model, tok, settings, lookup_tokens=0).generate(items)
    finally:
        hook.remove()
    assert grouped == padded
    longest = max(len(it.input_ids) for it in items)
    prefill = [w for w in widths if w[1] > 1]
    assert len(prefill) >= 2, "prompts of very different lengths must be prefilled in separate groups"
    assert sum(rows for rows, _ in prefill) == len(items) and all(w < longest for _, w in prefill)
    assert sorted(w for _, w in prefill)[0] < longest // 3


def test_padding_left_by_finished_long_prompts_is_dropped(embedded_model_dir):
    """When the row with the longest prompt has finished, the left padding that every remaining
    row has is cut from the batch and its cache (decode attends over fewer columns), and the
    answers are the ones a single `generate` gives."""
    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    model = load_model(ref, tok, "cpu", torch.float32)
    prompts = ["Is the following list empty? [" + "1, " * 40 + "1] Answer yes or no.",  # long prompt, 2-token answer
               "Explain in detail how a hash map works, with an example in Python.",
               "Write a Python function that returns the nth Fibonacci number, with a docstring."]
    settings = GenSettings(30, False, 0.0, 1.0, 7)
    items = _items(tok, prompts=prompts)
    whole = HFGenerator(model, tok, settings, chunk_tokens=30, lookup_tokens=0).generate(items)
    chunked, shapes = _generate_recording_batch_shapes(HFGenerator(model, tok, settings, chunk_tokens=5, lookup_tokens=0), items)
    assert chunked == whole
    assert whole[0].finish_reason == "stop" and whole[0].new_tokens <= 5, "the long prompt must end first"
    longest, others = len(items[0].input_ids), max(len(it.input_ids) for it in items[1:])
    assert longest > others + 40
    rows, width = shapes[-1]
    assert rows == 2 and width <= others + 5 * (len(shapes) - 1), shapes


def test_decode_attention_in_runs_of_rows_gives_the_same_answers(embedded_model_dir, monkeypatch):
    """On a CPU each decode step attends in runs of rows, each run from its own first real column
    (inference/decode_attention.py): the runs really are used on a batch of prompts of very
    different lengths, and every answer is the one plain SDPA over the whole width gives."""
    from llamaduo.inference import decode_attention

    ref = resolve_model_ref(str(embedded_model_dir))
    tok = load_tokenizer(ref)
    model = load_model(ref, tok, "cpu", torch.float32)
    prompts = ["Say yes.", "Name a colour.", "What is 2 + 2?", "Name a fruit that is red.",
               "Write a haiku about the sea. " * 3, "List three prime numbers and say why each is prime. " * 4,
               "Explain how a hash map works, with an example in Python. " * 6,
               "Describe the water cycle for a child, step by step, with one example per step. " * 8]
    items = plan_batches(_items(tok, prompts=prompts), 8)[0]
    settings = GenSettings(10, False, 0.0, 1.0, 7)
    plain = HFGenerator(model, tok, settings, decode_runs=False, lookup_tokens=0).generate(items)
    assert model.config._attn_implementation == "sdpa"
    used: list[list] = []
    real_runs = decode_attention.decode_runs
    monkeypatch.setattr(decode_attention, "decode_runs",
                        lambda *a, **k: used.append(real_runs(*a, **k)) or used[-1])
    in_runs = HFGenerator(model, tok, settings, lookup_tokens=0).generate(items)
    assert model.config._attn_implementation == decode_attention.NAME
    assert in_runs == plain
    HFGenerator(model, tok, settings, decode_runs=False, lookup_tokens=0)
    assert model.config._attn_implementation == "sdpa"  # a baseline arm gets plain SDPA back
    assert any(spans for spans in used), "the decode steps must attend in runs of rows"


def test_decode_runs_split_sorted_rows_and_skip_when_not_worth_it():
    first = [0, 0, 10, 20, 40, 60, 80, 100]
    assert decode_runs(first, 120) == [(0, 2, 0), (2, 4, 10), (4, 6, 40), (6, 8, 80)]
    assert decode_runs(list(reversed(first)), 120) is None  # rows must rise: runs are views
    assert decode_runs([0, 0, 0, 0, 0, 0, 1, 1], 120) is None  # too little padding to skip
    assert decode_runs(first[:7], 120) is None  # fewer than two rows per run


def test_prefill_groups_bound_their_padding():
    lengths = [5, 300, 7, 290, 6, 120, 310, 1, 118]
    groups = prefill_groups(lengths, 0.1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        width = max(lengths[i] for i in g)
        assert width * len(g) <= 1.1 * sum(lengths[i] for i in g) or len(g) == 1
    assert [lengths[g[0]] for g in groups] == sorted((lengths[g[0]] for g in groups), reverse=True)
    assert {frozenset(g) for g in groups} >= {frozenset({1, 3, 6}), frozenset({5, 8})}
    assert prefill_groups(lengths, float("inf")) == [sorted(range(len(lengths)), key=lambda i: -lengths[i])]


def test_length_sorted_batches_waste_less_padding(tiny_generator):
    tok, _ = tiny_generator
    items = _items(tok, prompts=PROMPTS * 4)
    sorted_batches = plan_batches(items, 4)
    unsorted = [items[i:i + 4] for i in range(0, len(items), 4)]
    assert padding_waste(sorted_batches) < padding_waste(unsorted)
    lengths = [len(it.input_ids) for b in sorted_batches for it in b]
    assert lengths == sorted(lengths, reverse=True)


def test_system_message_is_part_of_the_prompt(tiny_generator):
    tok, _ = tiny_generator
    from datasets import Dataset

    ds = Dataset.from_list([{"messages": [{"role": "system", "content": "SYS-RULE"},
                                          {"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}]}])
    rec = prompt_records(ds)[0]
    assert rec.chat[0] == {"role": "system", "content": "SYS-RULE"}
    assert (rec.instruction, rec.target) == ("hi", "hello")
    assert "SYS-RULE" in tok.decode(list(tokenize_prompts([rec], tok, 1)[0]))


# --------------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) B, so it really changes the outputs, saved the
    way finetune.py saves one: adapter + tokenizer with a training-time chat template."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = "TRAINED-TEMPLATE " + tok.chat_template
    tok.save_pretrained(str(out))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(out / "merged"))
    tok.save_pretrained(str(out / "merged"))
    return out


def _copy_adapter(src: Path, dst: Path, base: str) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("merged"))
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_adapter_equals_merged_model_and_uses_training_tokenizer(tiny_adapter, tiny_model_dir):
    ref = resolve_model_ref(str(tiny_adapter))
    assert ref.is_adapter and Path(ref.base_path) == Path(tiny_model_dir).resolve()
    tok = load_tokenizer(ref)
    assert tok.chat_template.startswith("TRAINED-TEMPLATE")
    merged_ref = resolve_model_ref(str(tiny_adapter / "merged"))
    assert not merged_ref.is_adapter
    ids = torch.tensor([tok("def reverse(s):", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        from_adapter = load_model(ref, tok, "cpu", torch.float32)(ids).logits
        from_merged = load_model(merged_ref, tok, "cpu", torch.float32)(ids).logits
        base = load_model(resolve_model_ref(str(tiny_model_dir)), tok, "cpu", torch.float32)(ids).logits
    torch.testing.assert_close(from_adapter, from_merged, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(from_adapter, base, atol=1e-3)


def test_adapter_base_from_training_yaml(tiny_adapter, tiny_model_dir, test_split, tmp_path):
    moved = _copy_adapter(tiny_adapter, tmp_path / "moved", base="/other/machine/base")
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text(f"model_name_or_path: {tiny_model_dir}\nlearning_rate: 1.0e-4\n")
    out = run_stage(moved, test_split, tmp_path / "out", ft_model_config_path=yaml_path)
    direct = run_stage(tiny_adapter, test_split, tmp_path / "direct")
    assert out["candidate_responses"] == direct["candidate_responses"]
    assert out["model_sha"][0] == model_sha(str(moved))


# --------------------------------------------------------------------------- store


def test_store_drops_a_torn_last_line(tmp_path):
    store = PartialStore(tmp_path, "k", rank=0)
    store.append([{"row_index": 0, "repeat_index": 0, "candidate_responses": "a"}])
    with open(store.path, "a") as fh:
        fh.write('{"row_index": 1, "repeat_index": 0, "candi')  # killed mid-write
    assert set(PartialStore(tmp_path, "k", rank=0).load()) == {(0, 0)}
    store2 = PartialStore(tmp_path, "k", rank=0)
    store2.append([{"row_index": 1, "repeat_index": 0, "candidate_responses": "b"}])
    assert set(store2.load()) == {(0, 0), (1, 0)}
    assert all(json.loads(line) for line in store2.path.read_text().splitlines())
