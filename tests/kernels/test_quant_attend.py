"""labkit.kernels.quant_attend: the packed layout round-trips, every backend matches dequantize-then-attend,
and the error messages. Triton runs through its CPU interpreter: small shapes."""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends
from labkit.kernels.attend import reference as attend_reference
from labkit.kernels.quant_attend import (
    QuantizedTensor,
    _pack,
    _unpack,
    dequantize,
    quant_attend,
    quantize_keys,
    quantize_values,
    reference,
)

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T_q, R, D, key group, value group): no residual, only a residual, odd D (padded bytes), partial
# value group, T_q spanning several key groups, a single token
SHAPES = [(2, 3, 64, 0, 32, 32, 32), (1, 2, 0, 5, 16, 8, 8), (2, 1, 48, 7, 33, 16, 12), (1, 1, 1, 0, 8, 1, 4),
          (3, 2, 96, 3, 64, 32, 32)]


def make(B, H, Tq, R, D, gk, gv, bits, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g).to(dtype)
    K, V = torch.randn(B, H, Tq + R, D, generator=g).to(dtype), torch.randn(B, H, Tq + R, D, generator=g).to(dtype)
    K[..., 3 % D] *= 10  # an outlier channel, as in real keys
    Kq, Vq = quantize_keys(K[:, :, :Tq], bits, gk), quantize_values(V[:, :, :Tq], bits, gv)
    res = (K[:, :, Tq:], V[:, :, Tq:]) if R else (None, None)
    return q, Kq, Vq, *res


def close(out, ref, tol=2e-5):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("D", [1, 7, 8, 33])
def test_pack_round_trips(bits, D):
    codes = torch.randint(0, 2**bits, (2, 3, D))
    packed = _pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == -(-D * bits // 8)
    assert torch.equal(_unpack(packed, bits, D), codes.int())


@pytest.mark.parametrize("bits", [2, 4])
def test_quantization_error_is_within_half_a_step(bits):
    g = torch.Generator().manual_seed(0)
    K, V = torch.randn(2, 2, 64, 24, generator=g), torch.randn(2, 2, 64, 24, generator=g)
    Kq, Vq = quantize_keys(K, bits, 16), quantize_values(V, bits, 8)
    assert Kq.scale.shape == (2, 2, 4, 24) and Vq.scale.shape == (2, 2, 64, 3)
    step_k = Kq.scale.repeat_interleave(16, dim=2)
    step_v = Vq.scale.repeat_interleave(8, dim=3)
    assert ((dequantize(Kq) - K).abs() <= step_k / 2 + 1e-6).all()
    assert ((dequantize(Vq) - V).abs() <= step_v / 2 + 1e-6).all()
    const = quantize_keys(torch.full((1, 1, 4, 3), 2.5), bits, 4)  # a constant group dequantizes exactly
    assert torch.equal(dequantize(const), torch.full((1, 1, 4, 3), 2.5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Tq{}R{}D{}gk{}gv{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
def test_matches_reference_fp32(backend, bits, shape, masked):
    B, T = shape[0], shape[2] + shape[3]
    args = make(*shape, bits=bits, seed=T + bits)
    lengths = None
    if masked:
        lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(T))
        lengths[0] = 1
        lengths[-1] = T if B > 1 else lengths[-1]
    close(quant_attend(*args, lengths=lengths, backend=backend), reference(*args, lengths=lengths))


def test_reference_is_attention_over_the_dequantized_cache():
    q, Kq, Vq, Kr, Vr = make(2, 2, 32, 4, 16, 8, 8, bits=4)
    K = torch.cat([dequantize(Kq), Kr], dim=2)
    V = torch.cat([dequantize(Vq), Vr], dim=2)
    close(reference(q, Kq, Vq, Kr, Vr), attend_reference(q, K, V))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_query_and_residual(backend):
    q, Kq, Vq, Kr, Vr = make(2, 2, 32, 9, 16, 16, 16, bits=4, dtype=torch.float16, seed=2)
    out = quant_attend(q, Kq, Vq, Kr, Vr, backend=backend)
    close(out, reference(q, Kq, Vq, Kr, Vr), tol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    q, Kq, Vq, Kr, Vr = make(2, 3, 32, 6, 16, 16, 16, bits=2, seed=3)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)
    Kr = Kr.transpose(1, 2).contiguous().transpose(1, 2)
    Kq = Kq._replace(scale=Kq.scale.transpose(2, 3).contiguous().transpose(2, 3))
    Vq = Vq._replace(codes=Vq.codes.transpose(0, 1).contiguous().transpose(0, 1))
    assert not any(x.is_contiguous() for x in (q, Kr, Kq.scale, Vq.codes))
    close(quant_attend(q, Kq, Vq, Kr, Vr, lengths=[20, 38], backend=backend),
          reference(q, Kq, Vq, Kr, Vr, torch.tensor([20, 38])))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, Kq, Vq, _, _ = make(0, 2, 8, 0, 8, 8, 8, bits=4)
    assert quant_attend(q, Kq, Vq, backend=backend).shape == (0, 2, 8)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
def test_triton_splits_straddle_the_residual():
    from labkit.kernels.quant_attend import triton_quant_attend

    args = make(2, 2, 40, 13, 16, 8, 8, bits=4, seed=5)
    lengths = torch.tensor([3, 53])
    close(triton_quant_attend(*args, lengths=lengths, block_t=16, n_splits=3), reference(*args, lengths=lengths))


# ---- errors ------------------------------------------------------------------------------------------------


def test_bad_quantize_arguments():
    with pytest.raises(ValueError, match=r"bits must be 2 or 4, got 3"):
        quantize_keys(torch.zeros(1, 1, 4, 8), bits=3, group_size=4)
    with pytest.raises(ValueError, match=r"T must be a multiple of group_size: got T=5, group_size=4"):
        quantize_keys(torch.zeros(1, 1, 5, 8), bits=4, group_size=4)
    with pytest.raises(ValueError, match=r"group_size must be a positive multiple of 8 // bits = 4, got 6"):
        quantize_values(torch.zeros(1, 1, 5, 8), bits=2, group_size=6)
    with pytest.raises(ValueError, match=r"V must be 4-D"):
        quantize_values(torch.zeros(5, 8))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be 3-D"),
        (lambda a: {**a, "K": a["K"].codes},
         TypeError, r"K must be a QuantizedTensor \(from quantize_keys\), got Tensor"),
        (lambda a: {**a, "K": a["V"]}, ValueError, r"K must be quantized per channel .* got mode='token'"),
        (lambda a: {**a, "V": a["V"]._replace(bits=3)}, ValueError, r"bits must be 2 or 4, got 3"),
        (lambda a: {**a, "V": quantize_values(torch.zeros(2, 3, 8, 8), 2, 4)},
         ValueError, r"same bits, got K.bits=4, V.bits=2"),
        (lambda a: {**a, "V": quantize_values(torch.zeros(2, 3, 4, 8), 4, 4)}, ValueError, r"V must hold K's T_q=8"),
        (lambda a: {**a, "K": a["K"]._replace(scale=a["K"].scale[:, :, :1])},
         ValueError, r"K.scale must be floating point of shape \(2, 3, 2, 8\)"),
        (lambda a: {**a, "K": a["K"]._replace(dim=9)}, ValueError, r"K.dim must equal q's head dimension D=8, got 9"),
        (lambda a: {**a, "K_res": torch.zeros(2, 3, 2, 8)}, ValueError, r"K_res and V_res must be given together"),
        (lambda a: {**a, "K_res": torch.zeros(2, 3, 2, 8), "V_res": torch.zeros(2, 3, 3, 8)},
         ValueError, r"V_res must have K_res's shape"),
        (lambda a: {**a, "K_res": torch.zeros(2, 3, 2, 8).half(), "V_res": torch.zeros(2, 3, 2, 8)},
         TypeError, r"K_res must have q's dtype"),
        (lambda a: {**a, "lengths": [1, 9]},
         ValueError, r"lengths must lie in 1..T_q \+ R = 1..8, got values from 1 to 9"),
    ],
)
def test_bad_inputs(change, error, message):
    q, Kq, Vq, _, _ = make(2, 3, 8, 0, 8, 4, 4, bits=4)
    args = change({"q": q, "K": Kq, "V": Vq})
    with pytest.raises(error, match=message):
        quant_attend(**args)


def test_empty_cache_is_an_error():
    q, Kq, Vq, _, _ = make(1, 1, 0, 0, 8, 4, 4, bits=4)
    with pytest.raises(ValueError, match=r"T_q \+ R >= 1\), got T_q=0 and R=0"):
        quant_attend(q, Kq, Vq)


def test_quantized_tensor_is_a_named_tuple():
    _, Kq, _, _, _ = make(1, 1, 8, 0, 8, 4, 4, bits=2)
    assert isinstance(Kq, QuantizedTensor) and Kq.mode == "channel" and Kq.codes.shape == (1, 1, 8, 2)
