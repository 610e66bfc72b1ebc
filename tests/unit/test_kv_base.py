import pytest
import torch

from labkit.kv.base import Compose, Compressor, NoCompression, kv_bytes
from labkit.kv.eviction import StreamingLLM
from labkit.models import load
from labkit.models.tinylm import TinyLM, TinyLMConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load("tinylm")


def test_kv_bytes_formula(model):
    c = model.config
    assert kv_bytes(c, 10, 32) == 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4 * 10
    cache = model.new_cache()
    model(torch.arange(10)[None], cache=cache)
    assert cache.bytes() == kv_bytes(c, 10, 32) == 2 * kv_bytes(c, 10, 16)


@pytest.mark.parametrize("b", [0, -0.1, 1.5, True, "x"])
def test_bad_budget(b):
    with pytest.raises(ValueError, match="budget"):
        Compressor(b)


def test_no_compression_exact(model):
    x = torch.arange(40)[None] % 300
    ref = model(torch.cat([x, x[:, :5]], 1))[:, 40:]
    cache = model.new_cache()
    model(x, cache=cache)
    for comp in (NoCompression(), StreamingLLM(1.0), Compose([NoCompression(), StreamingLLM(1.0)])):
        c = comp(model, cache.clone())
        assert torch.equal(model(x[:, :5], cache=c), ref)


def test_positions_continue_after_eviction(model):
    cache = model.new_cache()
    model(torch.arange(20)[None], cache=cache)
    cache.select(torch.arange(10, 20))
    model(torch.tensor([[5]]), cache=cache)
    assert cache.positions[0, -1].item() == 20


def test_foreign_cache_rejected(model):
    other = TinyLM(TinyLMConfig(vocab_size=387, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=8,
                                context=128))
    cache = other.new_cache()
    other(torch.arange(5)[None], cache=cache)
    with pytest.raises(ValueError, match="cache"):
        NoCompression()(model, cache)


def test_compose_bad():
    with pytest.raises(ValueError, match="compressors"):
        Compose([])
