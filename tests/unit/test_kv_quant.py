import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.kv.quant import KIVI, dequantize, quantize, quantize_error_bound
from labkit.models import load

torch.set_num_threads(1)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.sampled_from([4, 8, 16])),
                  elements=st.floats(-100, 100, width=32)),
       st.sampled_from([2, 4, 8]), st.sampled_from([1, 2, 4]), st.sampled_from([0, 1]))
def test_round_trip_bound(a, bits, group, dim):
    x = torch.from_numpy(a)
    if x.shape[dim] % group:
        return
    codes, scale, zero = quantize(x, bits, dim=dim, group=group)
    assert codes.dtype == torch.uint8 and int(codes.max()) < 2 ** bits
    err = (dequantize(codes, scale, zero, dim=dim) - x).abs()
    bound = quantize_error_bound(x, bits, dim=dim, group=group)
    assert bool((err <= bound * (1 + 1e-5) + 1e-4).all())


def test_bad_inputs():
    with pytest.raises(ValueError, match="bits"):
        KIVI(bits=0)
    with pytest.raises(ValueError, match="group"):
        quantize(torch.randn(4, 6), 2, dim=-1, group=4)


def test_kivi_cache():
    model = load("tinylm")
    x = torch.arange(60)[None] % 250
    cache = model.new_cache()
    model(x, cache=cache)
    comp = KIVI(bits=2, group=16, residual=8)
    c = comp(model, cache.clone())
    assert c.n_quantized == 48 and c.length == 60
    assert not torch.equal(c.keys[0][:, :, :48], cache.keys[0][:, :, :48])
    assert torch.equal(c.keys[0][:, :, 48:], cache.keys[0][:, :, 48:])
    # per layer (6 heads x 32 dims): codes 2*48*192*2/8, scales+zeros 2*2*(192*3 + 48*6*2), residual 12*192*2*4
    assert comp.nbytes(c) == 4 * (4608 + 4608 + 18432) <= 0.3 * cache.bytes()
    assert KIVI(4).nbytes(KIVI(4)(model, cache.clone())) > comp.nbytes(c)
    assert model(x[:, :2], cache=c.clone()).shape == (1, 2, model.config.vocab_size)
    assert c.clone().n_quantized == 48
