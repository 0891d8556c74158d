"""GrowingLayer keeps exactly what transformers' DynamicLayer keeps, without copying on append."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from llamaduo.inference.kv_cache import MIN_CAPACITY, GrowingLayer, growing_cache


def _feed(layer, chunks):
    out = None
    for k, v in chunks:
        out = layer.update(k, v)
    return out


def _chunks(batch=3, heads=2, dim=4, lengths=(5, 1, 1, 70, 1)):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, heads, n, dim, generator=g), torch.randn(batch, heads, n, dim, generator=g))
            for n in lengths]


def test_updates_return_what_dynamic_layer_returns_across_growth():
    chunks = _chunks()
    grow, dyn = GrowingLayer(), DynamicLayer()
    for k, v in chunks:
        gk, gv = grow.update(k, v)
        dk, dv = dyn.update(k, v)
        assert torch.equal(gk, dk) and torch.equal(gv, dv)
        assert grow.get_seq_length() == dyn.get_seq_length()
    assert grow._k.shape[-2] >= 78 and grow._k.shape[-2] >= MIN_CAPACITY  # grew past the first buffer


def test_append_writes_into_the_buffer_without_reallocating():
    grow = GrowingLayer()
    _feed(grow, _chunks(lengths=(5,)))
    buffer = grow._k.data_ptr()
    _feed(grow, _chunks(lengths=(1, 1, 1)))
    assert grow._k.data_ptr() == buffer and grow.get_seq_length() == 8


def test_rows_leave_and_crop_like_dynamic_layer():
    chunks = _chunks(batch=4)
    grow, dyn = GrowingLayer(), DynamicLayer()
    _feed(grow, chunks[:3]), _feed(dyn, chunks[:3])
    keep = torch.tensor([0, 2])
    grow.batch_select_indices(keep), dyn.batch_select_indices(keep)
    grow.crop(-2), dyn.crop(-2)
    assert torch.equal(grow.keys, dyn.keys) and torch.equal(grow.values, dyn.values)
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    assert torch.equal(grow.update(k, v)[0], dyn.update(k, v)[0])


def test_growing_cache_is_a_transformers_cache_of_growing_layers():
    cache = growing_cache()
    assert cache is not None
    cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), layer_idx=0)
    assert isinstance(cache.layers[0], GrowingLayer) and cache.get_seq_length() == 3


def test_drop_front_forgets_the_first_columns_and_keeps_appending():
    """drop_front(n) leaves exactly the later columns, copies nothing, and later appends (also
    across a growth of the buffer) land after them."""
    chunks = _chunks(lengths=(10, 1, 1, 80))
    grow = GrowingLayer()
    _feed(grow, chunks[:1])
    buffer = grow._k.data_ptr()
    grow.drop_front(4)
    assert grow.get_seq_length() == 6 and torch.equal(grow.keys, chunks[0][0][:, :, 4:])
    assert grow._k.untyped_storage().data_ptr() == buffer
    keys, values = _feed(grow, chunks[1:])
    expect_k = torch.cat([chunks[0][0][:, :, 4:]] + [k for k, _ in chunks[1:]], dim=2)
    expect_v = torch.cat([chunks[0][1][:, :, 4:]] + [v for _, v in chunks[1:]], dim=2)
    assert torch.equal(keys, expect_k) and torch.equal(values, expect_v) and grow.get_seq_length() == 88
