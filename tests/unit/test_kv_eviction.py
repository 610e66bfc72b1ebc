import pytest
import torch

from labkit.kv.eviction import H2O, SnapKV, StreamingLLM, h2o_scores, streaming_indices, top_k_indices
from labkit.models import load

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return load("tinylm")


@pytest.fixture(scope="module")
def prefilled(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 50), generator=g)
    cache = model.new_cache()
    model(x, cache=cache)
    return x, cache


def test_streaming_indices():
    assert streaming_indices(20, 8, 4).tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    assert streaming_indices(5, 8, 4).tolist() == [0, 1, 2, 3, 4]
    assert streaming_indices(20, 3, 4).tolist() == [0, 1, 19]


def test_streaming_cache(model, prefilled):
    _, cache = prefilled
    c = StreamingLLM(0.5, n_sink=4)(model, cache.clone())
    assert c.positions[0].tolist() == [0, 1, 2, 3, *range(29, 50)]


@pytest.mark.parametrize("cls", [StreamingLLM, H2O, SnapKV])
@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25, 0.01])
def test_budget_never_exceeded(model, prefilled, cls, budget):
    x, cache = prefilled
    comp = cls(budget)
    c = comp(model, cache.clone())
    assert c.length <= max(1, int(budget * 50))
    assert all(k.shape[2] == c.length for k in c.keys)
    assert comp.nbytes(c) <= max(budget, 1 / 50) * cache.bytes()
    assert c.positions[0, -1].item() == 49  # the last entry is always kept
    out = model(x[:, :3], cache=c)  # the compressed cache still decodes
    assert out.shape == (1, 3, model.config.vocab_size)
    if budget == 1.0:
        assert torch.equal(out, model(x[:, :3], cache=cache.clone()))


def test_h2o_hand_made():
    # 1 batch, 1 head, 5 queries over 5 keys (causal): key 1 gets most mass, then key 3
    p = torch.zeros(1, 1, 5, 5)
    p[0, 0, 0, 0] = 1
    p[0, 0, 1, 1] = 1
    p[0, 0, 2, 1] = 1
    p[0, 0, 3, 3] = 0.6
    p[0, 0, 3, 1] = 0.4
    p[0, 0, 4, 3] = 0.5
    p[0, 0, 4, 4] = 0.5
    s = h2o_scores(p)
    assert s[0, 0].tolist() == pytest.approx([1, 2.4, 0, 1.1, 0.5])
    assert top_k_indices(s, 3, 1)[0, 0].tolist() == [1, 3, 4]  # recent 4 + heavy hitters 1, 3


def test_per_head_differs(model, prefilled):
    _, cache = prefilled
    c = SnapKV(0.25, window=4)(model, cache.clone())
    assert c.keys[0].shape[2] == 12
    k0 = [c.keys[layer] for layer in range(model.config.n_layers)]
    assert len(k0) == model.config.n_layers


@pytest.mark.parametrize("kw", [dict(window=0), dict(kernel=4), dict(pooling="min"), dict(budget=0)])
def test_bad_snapkv(kw):
    args = dict(budget=0.5) | kw
    with pytest.raises(ValueError, match=next(iter(kw))):
        SnapKV(**args)
