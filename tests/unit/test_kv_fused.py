"""labkit.kv.fused: the captured decode queries are the model's own, fused readers equal their unfused
twins, the lossless settings reproduce full attention, and bad input is named."""

from __future__ import annotations

import pytest
import torch

from labkit import models
from labkit.kv import eviction, fused


@pytest.fixture(scope="module")
def prefilled():
    model = models.load("tinylm")
    tokens = torch.tensor([[5, 17, 42, 9, 100, 3, 77, 8] * 9])  # 72 tokens
    cache = model.new_cache()
    with torch.no_grad():
        model(tokens, cache=cache)
    return model, cache


def test_decode_queries_are_the_models_queries(prefilled):
    """softmax(q K^T / sqrt(d)) from the captured queries equals the attention the model itself computes
    for the new token (eviction.appended_attention, a separate code path)."""
    model, cache = prefilled
    queries, appended = fused.decode_queries(model, cache, 11)
    assert cache.length == 72 and appended.length == 73  # the input cache is untouched
    _, probs = eviction.appended_attention(model, cache.clone(), torch.tensor([[11]]))
    d = model.config.head_dim
    for layer, q in enumerate(queries):
        mine = torch.softmax(torch.einsum("bhd,bhtd->bht", q, appended.keys[layer]) / d**0.5, dim=-1)
        torch.testing.assert_close(mine, probs[layer][:, :, 0], atol=1e-5, rtol=1e-5)


def _inputs(prefilled, layer=1):
    model, cache = prefilled
    queries, appended = fused.decode_queries(model, cache, 11)
    probs = eviction.attention_probs(model, cache)
    scores = torch.cat([eviction.h2o_scores(probs[layer]), torch.full((1, 6, 1), float("inf"))], dim=-1)
    return queries[layer], appended.keys[layer], appended.values[layer], scores


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_fused_equals_unfused(prefilled, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    q, K, V, scores = _inputs(prefilled)
    rows = fused.read_compressed(q, K, V, scores, rank=8, bits=2, keep=18, backend=backend)
    assert [r["method"] for r in rows] == ["projection", "quantization", "eviction"]
    for r in rows:
        assert r["fused vs unfused (max abs)"] < 1e-5, r
        assert 0 < r["error vs full attention"] < 2
    assert rows[0]["bytes read / full"] == pytest.approx(8 / 32)
    assert rows[2]["bytes read / full"] == pytest.approx(18 / 73)


def test_lossless_settings_reproduce_full_attention(prefilled):
    q, K, V, scores = _inputs(prefilled)
    rows = {r["method"]: r for r in fused.read_compressed(q, K, V, scores, rank=32, bits=4, keep=73)}
    assert rows["projection"]["error vs full attention"] < 1e-5
    assert rows["eviction"]["error vs full attention"] < 1e-6
    assert 0 < rows["quantization"]["error vs full attention"] < 0.2  # 4 bits: small, never zero


def test_time_readers_records():
    recs = fused.time_readers(1, 2, 96, 16, rank=4, bits=4, keep=24, repeats=1, backend="torch")
    assert len(recs) == 10 and all(r["ms"] > 0 for r in recs)
    assert {r["path"] for r in recs} == {"fused kernel", "unfused torch"}


def test_bad_input(prefilled):
    model, cache = prefilled
    q, K, V, scores = _inputs(prefilled)
    with pytest.raises(ValueError, match=r"keep must be in 1..T = 1..73, got 0"):
        fused.read_compressed(q, K, V, scores, rank=8, bits=2, keep=0)
    with pytest.raises(ValueError, match=r"scores must have shape \(B, H, T\)"):
        fused.read_compressed(q, K, V, scores[..., :5], rank=8, bits=2, keep=4)
    with pytest.raises(ValueError, match=r"rank must be in 1..D = 1..32, got 33"):
        fused.read_compressed(q, K, V, scores, rank=33, bits=2, keep=4)
    with pytest.raises(ValueError, match=r"at least one group of 32 tokens"):
        fused.read_compressed(q, K[:, :, :20], V[:, :, :20], scores[..., :20], rank=8, bits=2, keep=4)
    with pytest.raises(ValueError, match=r"token must be in 0..386"):
        fused.decode_queries(model, cache, 387)
    with pytest.raises(ValueError, match=r"non-empty KVCache"):
        fused.decode_queries(model, model.new_cache(), 3)
