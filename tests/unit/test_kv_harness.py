import pytest
import torch

from labkit.kv.base import NoCompression
from labkit.kv.eviction import StreamingLLM
from labkit.kv.harness import bits_per_char, evaluate, make_context
from labkit.models import load

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load("tinylm")


def test_full_cache_lookup(model):
    r = evaluate(model, NoCompression(), n_contexts=4, mode="multi-turn", kinds=("kv",))
    assert r["accuracy"] >= 0.9 and r["n"] == 16
    assert set(r["time"]) == {"generation", "compression", "retrieval", "loading"}


def test_modes_and_determinism(model):
    a = evaluate(model, StreamingLLM(0.5), n_contexts=1, mode="multi-request", seed=3)
    b = evaluate(model, StreamingLLM(0.5), n_contexts=1, mode="multi-request", seed=3)
    c = evaluate(model, StreamingLLM(0.5), n_contexts=1, mode="multi-turn", seed=3)
    assert a["accuracy_by_turn"] == b["accuracy_by_turn"] and a["kv_bytes"] == b["kv_bytes"]
    assert c["kv_bytes"] > a["kv_bytes"]  # multi-turn: the cache grows with each turn
    for kind in ("kv", "trace", "doc"):
        ctx = make_context(kind, 0)
        assert 40 <= len(ctx.context) <= 95 and len(ctx.queries) == 4


def test_bits_per_char(model):
    full = bits_per_char(model, NoCompression(), n_windows=2)
    assert 0.5 < full < 4
    assert bits_per_char(model, StreamingLLM(0.25), n_windows=2) > 0.5


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="mode"):
        evaluate(model, NoCompression(), 1, mode="x")
    with pytest.raises(ValueError, match="kind"):
        make_context("poem", 0)
    with pytest.raises(ValueError, match="n_contexts"):
        evaluate(model, NoCompression(), 0)


def test_query_aware_snapkv_window_is_the_question(model):
    # Constructed case: SnapKV's window = the question (2 tokens), so the kept set is chosen by the question's
    # attention alone. (On TinyLM that does not keep the queried pair more often than query-agnostic SnapKV.)
    from labkit.kv.eviction import SnapKV, attention_probs, snapkv_scores, top_k_indices

    ctx = make_context("kv", 0)
    q = ctx.queries[0]
    cache = model.new_cache()
    model(torch.tensor([ctx.context + q]), cache=cache)
    T = cache.length
    want = top_k_indices(torch.stack([s / s.sum(-1, keepdim=True) for s in
                                      (snapkv_scores(p, len(q)) for p in attention_probs(model, cache))]).mean((0, 2)),
                         int(0.25 * T), len(q))
    got = SnapKV(0.25, window=len(q), per_head=False)(model, cache)
    assert got.positions.tolist() == want.tolist() and got.positions[0, -2:].tolist() == [T - 2, T - 1]


def test_query_aware_modes(model):
    from labkit.kv.eviction import H2O, SnapKV

    kw = dict(n_contexts=2, kinds=("kv",), seed=1, compress_with_query=True)
    for mode, rc in (("multi-turn", False), ("multi-turn", True), ("multi-request", False)):
        a = evaluate(model, SnapKV(0.35), mode=mode, recompress=rc, **kw)
        b = evaluate(model, SnapKV(0.35), mode=mode, recompress=rc, **kw)
        assert a["accuracy_by_turn"] == b["accuracy_by_turn"] and a["kv_bytes"] == b["kv_bytes"]
        assert a["n"] == 8 and a["compress_with_query"] and a["recompress"] == rc
        assert a["accuracy_by_turn"][0] == 1.0  # the first answer token comes from the full prefill
    turn = evaluate(model, H2O(0.35), mode="multi-turn", **kw)
    fixed = evaluate(model, H2O(0.35), mode="multi-turn", recompress=True, **kw)
    assert fixed["kv_bytes"] < turn["kv_bytes"]  # recompression holds the cache at turn 1's size
    full = evaluate(model, NoCompression(), mode="multi-request", **kw)
    assert full["accuracy"] >= 0.75 and full["time"]["generation"] > 0


def test_query_aware_options(model):
    kw = dict(n_contexts=1, kinds=("kv",))
    with pytest.raises(ValueError, match="recompress"):
        evaluate(model, StreamingLLM(0.5), recompress=True, **kw)  # needs compress_with_query
    with pytest.raises(ValueError, match="recompress"):
        evaluate(model, StreamingLLM(0.5), mode="multi-request", compress_with_query=True, recompress=True, **kw)
    with pytest.raises(ValueError, match="eviction"):
        evaluate(model, NoCompression(), compress_with_query=True, recompress=True, **kw)
    with pytest.raises(ValueError, match="compress_with_query"):
        evaluate(model, NoCompression(), compress_with_query=1, **kw)
