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
