"""src/llamaduo/sft_cpu.py: the CPU fast path must compute exactly what TRL computes, only faster.

Each test compares against TRL's own code (its chunked LM-head kernel, its fused head without
the patch) or transformers' own SDPA with its block-diagonal mask, on real tensors and the real
tiny Llama; the speed is measured in bench/finetune_throughput.py, not here.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.fixture(autouse=True)
def _trl_restored():
    """Every test leaves TRL as it found it."""
    from llamaduo.sft_cpu import disable_fast_lm_head

    yield
    disable_fast_lm_head()


@pytest.mark.parametrize("softcap, logit_scale, temperature", [(None, 1.0, 1.0), (30.0, 0.5, 0.7)])
def test_plain_head_matches_trls_kernel(monkeypatch: pytest.MonkeyPatch, softcap: float | None,
                                        logit_scale: float, temperature: float) -> None:
    from trl.kernels import ChunkedLogProbFunction

    from llamaduo import sft_cpu

    monkeypatch.setattr(sft_cpu, "ROWS_PER_CHUNK", 7)  # several row chunks, one of them short
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, 16, generator=gen)
    weight = torch.randn(300, 16, generator=gen)
    bias = torch.randn(300, generator=gen)
    targets = torch.randint(0, 300, (20,), generator=gen)
    targets[3] = int((hidden[3] @ weight.T + bias).argmax())  # at least one top-1 hit

    def run(fn):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = fn(h, w, bias, targets, temperature, 64, softcap, logit_scale, OUTPUTS)
        (-out[0].sum()).backward()
        return out, h.grad, w.grad

    ours, ours_h, ours_w = run(sft_cpu.plain_logprobs)
    trl, trl_h, trl_w = run(ChunkedLogProbFunction.apply)
    for name, a, b in zip(OUTPUTS, ours, trl):
        assert a.shape == b.shape, name
        if a.dtype == torch.bool:
            assert torch.equal(a, b), name
        else:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    assert bool(ours[4].any())
    assert torch.allclose(ours_h, trl_h, atol=1e-4) and torch.allclose(ours_w, trl_w, atol=1e-4)


def test_plain_head_leaves_unrequested_fields_out_and_accepts_no_rows() -> None:
    from llamaduo.sft_cpu import plain_logprobs

    out = plain_logprobs(torch.zeros(0, 8), torch.randn(50, 8), None, torch.zeros(0, dtype=torch.long),
                         1.0, 64, None, 1.0, ("log_probs",))
    assert out[0].shape == (0,) and out[1:] == (None, None, None, None)


def _tiny(tiny_model_dir: Path, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, attn_implementation=attn)


def _packed_row(lengths: list[int], vocab: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=gen)
    # the last conversation continues a split one (it starts at 7, not 0), as bfd_split packing can do
    pos = torch.cat([torch.arange(n) for n in lengths[:-1]] + [torch.arange(7, 7 + lengths[-1])]).unsqueeze(0)
    # use_cache=False as in training: transformers only builds the block-diagonal mask without a cache
    return {"input_ids": ids, "position_ids": pos, "use_cache": False}


def test_varlen_attention_equals_sdpa_with_its_block_diagonal_mask(tiny_model_dir: Path) -> None:
    from llamaduo.sft_cpu import register_varlen_attention

    name = register_varlen_attention()
    ref, ours = _tiny(tiny_model_dir, "sdpa"), _tiny(tiny_model_dir, name)
    batch = _packed_row([5, 9, 3, 12], ref.config.vocab_size)
    out_ref, out_ours = ref(**batch).logits, ours(**batch).logits
    assert torch.allclose(out_ref, out_ours, atol=1e-5)
    out_ref.square().mean().backward()
    out_ours.square().mean().backward()
    for (n, p_ref), (_, p_ours) in zip(ref.named_parameters(), ours.named_parameters()):
        assert torch.allclose(p_ref.grad, p_ours.grad, atol=1e-5), n
    # ...and the conversations really are kept apart: the last one alone gives the same logits.
    alone = ours(input_ids=batch["input_ids"][:, -12:], position_ids=batch["position_ids"][:, -12:],
                 use_cache=False).logits
    assert torch.allclose(alone, out_ours[:, -12:], atol=1e-5)


def test_varlen_attention_leaves_sliding_window_layers_to_the_mask(embedded_model_dir: Path) -> None:
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from llamaduo.sft_cpu import register_varlen_attention

    vocab = len(AutoTokenizer.from_pretrained(str(embedded_model_dir)))
    config = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=3)
    torch.manual_seed(0)
    ref = MistralForCausalLM(copy.deepcopy(config))
    ours = MistralForCausalLM(copy.deepcopy(config))
    ours.load_state_dict(ref.state_dict())
    ref.config._attn_implementation = "sdpa"
    ours.config._attn_implementation = register_varlen_attention()
    batch = _packed_row([6, 9], vocab)  # conversations longer than the window
    assert torch.allclose(ref(**batch).logits, ours(**batch).logits, atol=1e-5)


def test_varlen_attention_leaves_padded_batches_to_sdpa(tiny_model_dir: Path) -> None:
    from llamaduo.sft_cpu import register_varlen_attention

    ref, ours = _tiny(tiny_model_dir, "sdpa"), _tiny(tiny_model_dir, register_varlen_attention())
    ids = torch.randint(0, ref.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    assert torch.allclose(ref(input_ids=ids, attention_mask=mask).logits,
                          ours(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


def test_fast_head_scores_only_labelled_tokens_with_the_same_loss(tiny_model_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from trl.trainer.utils import add_fused_lm_head

    from llamaduo import sft_cpu

    model = _tiny(tiny_model_dir, "sdpa")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    batch = _packed_row([6, 10], model.config.vocab_size)
    labels = batch["input_ids"].clone()
    labels[:, :4] = -100  # a prompt
    labels[:, 6:9] = -100  # the second conversation's prompt
    expected_rows = int((labels[:, 1:] != -100).sum())

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        out = model(**batch, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    trl_loss, trl_grad = loss_and_grad()
    rows: list[int] = []
    real = sft_cpu.plain_logprobs
    monkeypatch.setattr(sft_cpu, "plain_logprobs", lambda hidden, *a: rows.append(hidden.shape[0]) or real(hidden, *a))
    assert sft_cpu.enable_fast_lm_head() and sft_cpu.enable_fast_lm_head()  # idempotent
    fast_loss, fast_grad = loss_and_grad()
    assert rows == [expected_rows]  # not every position: only those with a label
    assert fast_loss == pytest.approx(trl_loss, rel=1e-5)
    assert torch.allclose(fast_grad, trl_grad, atol=1e-6)

    sft_cpu.disable_fast_lm_head()
    rows.clear()
    assert loss_and_grad()[0] == pytest.approx(trl_loss, rel=1e-6) and rows == []


def test_a_trl_without_the_patched_names_trains_at_its_own_speed(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from trl.trainer import utils as trl_utils

    from llamaduo.sft_cpu import enable_fast_lm_head

    monkeypatch.delattr(trl_utils, "_use_triton")
    with caplog.at_level("WARNING", logger="llamaduo.sft_cpu"):
        assert enable_fast_lm_head() is False
    assert "TRL's own speed" in caplog.text
    assert not hasattr(trl_utils, "_use_triton")  # nothing half-patched


@pytest.mark.parametrize("missing", ["_use_triton", "_ChunkedLogProbFunction"])
def test_turning_the_head_off_survives_a_trl_without_the_patched_names(monkeypatch: pytest.MonkeyPatch,
                                                                      missing: str) -> None:
    """finetune.py calls `disable_fast_lm_head` on every run with cpu_fast_path off: a TRL that
    renamed a private name must not crash it (the real TRL module, one attribute removed)."""
    from trl.trainer import utils as trl_utils

    from llamaduo.sft_cpu import disable_fast_lm_head

    monkeypatch.delattr(trl_utils, missing)
    disable_fast_lm_head()
    assert not hasattr(trl_utils, missing)


def test_turning_the_head_off_restores_trls_own_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """It restores what `enable_fast_lm_head` replaced, without importing TRL's private kernel
    module (whose `_use_triton` may move): removed here, the restore still works."""
    import trl.kernels.chunked_logprob as kernel
    from trl.trainer import utils as trl_utils

    from llamaduo import sft_cpu

    use_triton, function = trl_utils._use_triton, trl_utils._ChunkedLogProbFunction
    assert sft_cpu.enable_fast_lm_head()
    assert trl_utils._use_triton is not use_triton
    monkeypatch.delattr(kernel, "_use_triton")
    sft_cpu.disable_fast_lm_head()
    assert trl_utils._use_triton is use_triton and trl_utils._ChunkedLogProbFunction is function


def test_mmap_threshold_is_set_unless_the_environment_sets_its_own(monkeypatch):
    """finetune sets glibc's mmap threshold (32 MiB: big blocks go back to the OS, activations
    are not faulted in afresh each step); a MALLOC_MMAP_THRESHOLD_ the user exported wins."""
    import platform

    from llamaduo.sft_cpu import MMAP_THRESHOLD_BYTES, return_freed_memory_to_os

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert MMAP_THRESHOLD_BYTES == 32 << 20
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert return_freed_memory_to_os() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert return_freed_memory_to_os() is True


def _lora_model(tiny_model_dir: Path, **lora: object):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                       "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(_tiny(tiny_model_dir, "sdpa"), LoraConfig(**{**config, **lora}))
    for name, p in model.named_parameters():  # B starts at zero in PEFT: give the LoRA term a value
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_grads(model, batch) -> tuple:
    model.zero_grad()
    loss = model(**batch).logits.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Each call of the fused LoRA function appends to the returned list."""
    from llamaduo.sft_cpu import lora_linear_function

    function, calls = lora_linear_function(), []
    original = function.apply
    monkeypatch.setattr(function, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


def test_fused_lora_layers_give_peft_outputs_and_gradients(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every LoRA linear layer goes through the one-function forward, and the loss and every
    LoRA gradient are PEFT's own; gradients flow to the input (the layers below train too)."""
    from llamaduo.sft_cpu import fuse_lora_linears

    ref, ours = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    batch = _packed_row([5, 9, 3, 12], ref.config.vocab_size)
    layers = ref.config.num_hidden_layers
    assert fuse_lora_linears(ours) == (7 * layers, 7 * layers)
    calls = _count_calls(monkeypatch)
    loss_ours, grads_ours = _loss_and_grads(ours, batch)
    assert len(calls) == 7 * layers
    loss_ref, grads_ref = _loss_and_grads(ref, batch)
    assert torch.allclose(loss_ref, loss_ours, rtol=1e-6)
    assert grads_ref.keys() == grads_ours.keys() and len(grads_ref) == 2 * 7 * layers
    for name, grad in grads_ref.items():
        assert torch.allclose(grad, grads_ours[name], rtol=1e-4, atol=1e-7), name


def test_fused_lora_layers_leave_what_they_do_not_cover_to_peft(tiny_model_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout (random masks), a disabled adapter and bf16 autocast keep PEFT's forward; the
    function is not called."""
    from llamaduo.sft_cpu import fuse_lora_linears

    dropped = _lora_model(tiny_model_dir, lora_dropout=0.1)
    plain = _lora_model(tiny_model_dir)
    layers = 7 * plain.config.num_hidden_layers
    assert fuse_lora_linears(dropped) == (0, layers) and fuse_lora_linears(plain) == (layers, layers)
    batch = _packed_row([4, 6], plain.config.vocab_size)
    calls = _count_calls(monkeypatch)
    dropped(**batch)
    with plain.disable_adapter():
        without = plain(**batch).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):  # how the Trainer runs bf16 on a CPU with fast bf16
        autocast_loss = plain(**batch).logits.float().square().mean()
    autocast_loss.backward()  # PEFT's layers: their backward takes the bf16 gradients
    assert calls == []
    base = _tiny(tiny_model_dir, "sdpa")
    assert torch.allclose(without, base(**batch).logits, atol=1e-6)
