"""labkit.kernels.evict_compact: every backend keeps exactly the reference's positions (ties included) and
copies the rows bit for bit; the error messages. Triton runs through its CPU interpreter: small shapes."""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends
from labkit.kernels.evict_compact import evict_compact, reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T, D, k): T=1, k=0, k=T, odd sizes
SHAPES = [(1, 1, 1, 8, 1), (2, 3, 17, 5, 4), (1, 2, 50, 3, 0), (2, 2, 100, 16, 100), (3, 1, 257, 33, 64)]


def make(B, H, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, generator=g), torch.randn(B, H, T, D, generator=g).to(dtype),
            torch.randn(B, H, T, D, generator=g).to(dtype))


def same(out, ref):
    for x, y in zip(out, ref, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}D{}k{}".format(*s))
def test_matches_reference(backend, shape):
    scores, K, V = make(*shape[:4], seed=shape[2])
    out = evict_compact(scores, K, V, shape[4], backend=backend)
    same(out, reference(scores, K, V, shape[4]))
    idx = out[2]
    assert (idx[..., 1:] > idx[..., :-1]).all()  # time order


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_earlier_position(backend):
    scores = torch.randint(0, 3, (2, 2, 64), generator=torch.Generator().manual_seed(1)).float()
    scores[0, 0, :5] = float("inf")  # protected positions
    scores[0, 1, 7] = -0.0  # the two zeros tie
    scores[1, 0, :] = 1.0  # a row of equal scores keeps its first k positions
    scores[1, 1, 10:] = float("-inf")
    _, K, V = make(2, 2, 64, 4)
    out = evict_compact(scores, K, V, 20, backend=backend)
    same(out, reference(scores, K, V, 20))
    assert torch.equal(out[2][1, 0], torch.arange(20))
    assert (out[2][0, 0, :5] == torch.arange(5)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_rows_are_copied_bit_for_bit(backend, dtype):
    scores, K, V = make(2, 3, 40, 7, dtype=dtype, seed=2)
    same(evict_compact(scores.half(), K, V, 13, backend=backend), reference(scores.half(), K, V, 13))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, H, T, D = 2, 3, 30, 6
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(B, T, H, generator=g).transpose(1, 2)
    K = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    V = torch.randn(B, H, T, 2 * D, generator=g)[..., ::2]
    same(evict_compact(scores, K, V, 11, backend=backend), reference(scores, K, V, 11))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "k": 6}, ValueError, r"k must be in 0..T = 0..5, got 6"),
        (lambda a: {**a, "k": -1}, ValueError, r"k must be in 0..T = 0..5, got -1"),
        (lambda a: {**a, "k": 2.0}, TypeError, r"k must be an integer, got float"),
        (lambda a: {**a, "scores": a["scores"][..., :4]},
         ValueError, r"scores must have shape \(B, H, T\) = \(2, 3, 5\)"),
        (lambda a: {**a, "scores": a["scores"].long()}, TypeError, r"scores must hold floating-point numbers"),
        (lambda a: {**a, "K": a["K"][0]}, ValueError, r"K must be 4-D"),
        (lambda a: {**a, "V": a["V"][:, :, :4]}, ValueError, r"V must have K's shape"),
        (lambda a: {**a, "V": a["V"].half()}, TypeError, r"V must have K's dtype torch.float32, got torch.float16"),
        (lambda a: {**a, "scores": torch.full((2, 3, 5), float("nan"))}, ValueError, r"scores must not hold NaN"),
        (lambda a: {**a, "backend": "gpu"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(change, error, message):
    scores, K, V = make(2, 3, 5, 4)
    with pytest.raises(error, match=message):
        evict_compact(**change({"scores": scores, "K": K, "V": V, "k": 2}))
