"""labkit.kernels.ties_merge: every backend against the torch reference (odd sizes, T = 1, P = 0 and 1, fp16,
non-contiguous, given thresholds, base + scale), equality with chapter 4's ``_ties_vector`` on distinct
magnitudes, the tie rule at the threshold, exact sign cancellation, and the error messages."""

from __future__ import annotations

import pytest
import torch

from labkit.continual.merging import _ties_vector, ties
from labkit.kernels import available_backends, ties_merge
from labkit.kernels.ties_merge import reference, ties_k, ties_thresholds

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
SHAPES = [(1, 1), (1, 17), (3, 1000), (8, 4099)]  # (T, P)


def make(T, P, dtype=torch.float32, seed=0):
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed)).to(dtype)


def close(out, ref, tol=1e-6):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}P{}".format(*s))
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_matches_reference(backend, shape, density):
    tv = make(*shape, seed=shape[1])
    close(ties_merge(tv, density, backend=backend), reference(tv, density))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("density", [0.2, 0.7])
def test_equals_chapter_ties_on_distinct_magnitudes(backend, density):
    g = torch.Generator().manual_seed(4)
    base = {"w": torch.randn(30, 11, generator=g), "b": torch.randn(11, generator=g)}
    tvs = [{n: torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(5)]
    flat = torch.stack([torch.cat([t[n].reshape(-1) for n in base]) for t in tvs])
    assert flat.abs().unique().numel() == flat.numel()  # distinct magnitudes: no ties at any threshold
    want = torch.cat([v.reshape(-1) for v in _ties_vector(tvs, density).values()])
    close(ties_merge(flat, density, backend=backend), want)
    theta = torch.cat([v.reshape(-1) for v in ties(base, tvs, density, 0.8).values()])
    close(ties_merge(flat, density, base=torch.cat([v.reshape(-1) for v in base.values()]), scale=0.8,
                     backend=backend), theta, tol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_at_the_threshold_are_all_kept(backend):
    """k = 2 of P = 6, but three entries of τ_0 tie at the threshold 3: all three are kept (the rule)."""
    tv = torch.tensor([[3.0, -3.0, 3.0, 1.0, 0.0, 2.0],
                       [-1.0, 1.0, 0.5, -4.0, 0.0, 5.0]])
    assert ties_k(6, 0.3) == 2
    assert ties_thresholds(tv, 0.3).tolist() == [3.0, 4.0]
    # τ̂_0 = [3, -3, 3, 0, 0, 0], τ̂_1 = [0, 0, 0, -4, 0, 5]
    want = torch.tensor([3.0, -3.0, 3.0, -4.0, 0.0, 5.0])
    out = ties_merge(tv, 0.3, backend=backend)
    close(out, want)
    close(out, reference(tv, 0.3))
    ints = torch.randint(-3, 4, (4, 501), generator=torch.Generator().manual_seed(5)).float()  # many ties
    close(ties_merge(ints, 0.3, backend=backend), reference(ints, 0.3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sign_election_and_cancellation(backend):
    tv = torch.tensor([[2.0, 1.0, -1.0, 4.0],
                       [-2.0, 3.0, -3.0, -1.0],
                       [1.0, -1.0, 2.0, -1.0]])
    # column 0: 2 - 2 + 1 > 0 -> mean(2, 1); column 1: sum 3 -> mean(1, 3); column 2: sum -2 -> mean(-1, -3);
    # column 3: 4 - 1 - 1 > 0 -> 4
    close(ties_merge(tv, 1.0, backend=backend), torch.tensor([1.5, 2.0, -2.0, 4.0]))
    cancel = torch.tensor([[1.5, 2.0], [-1.5, 1.0]])  # column 0 cancels exactly: elected sign 0 -> 0
    close(ties_merge(cancel, 1.0, backend=backend), torch.tensor([0.0, 1.5]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_dtypes_layouts(backend):
    tv = make(4, 777, seed=6)
    thr = ties_thresholds(tv, 0.25)
    close(ties_merge(tv, thresholds=thr, backend=backend), reference(tv, 0.25))
    base = torch.randn(777, generator=torch.Generator().manual_seed(7))
    close(ties_merge(tv, 0.25, base=base, scale=0.5, backend=backend), reference(tv, 0.25, base=base, scale=0.5))
    half = tv.half()
    out = ties_merge(half, 0.25, base=base.half(), backend=backend)
    assert out.dtype == torch.float16
    close(out, reference(half, 0.25, base=base.half()), tol=1e-3)
    strided = torch.randn(777, 4, generator=torch.Generator().manual_seed(8)).T  # (T, P), not contiguous
    close(ties_merge(strided, 0.4, backend=backend), reference(strided.contiguous(), 0.4))
    assert ties_merge(torch.empty(3, 0), 0.5, backend=backend).shape == (0,)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((torch.empty(0, 5),), {}, ValueError, r"at least one task vector \(T >= 1\), got T = 0"),
        ((torch.ones(5),), {}, ValueError, r"task_vectors must be 2-D \(T, P\), got shape \(5,\)"),
        ((torch.ones(2, 5, dtype=torch.long),), {}, TypeError, r"task_vectors must hold floating-point"),
        ((torch.ones(2, 5), 0.0), {}, ValueError, r"density must be in \(0, 1\], got 0.0"),
        ((torch.ones(2, 5), 1.5), {}, ValueError, r"density must be in \(0, 1\], got 1.5"),
        ((torch.ones(2, 5),), {"thresholds": torch.ones(3)}, ValueError,
         r"thresholds must be a tensor of shape \(T,\) = \(2,\), got \(3,\)"),
        ((torch.ones(2, 5),), {"thresholds": -torch.ones(2)}, ValueError, r"thresholds must be finite non-negative"),
        ((torch.ones(2, 5),), {"base": torch.ones(4)}, ValueError,
         r"base must be a tensor of shape \(P,\) = \(5,\), got \(4,\)"),
        ((torch.ones(2, 5),), {"scale": float("inf")}, ValueError, r"scale must be a finite real number"),
        ((torch.ones(2, 5),), {"backend": "cuda"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        ties_merge(*args, **kwargs)


@pytest.mark.skipif("numba" not in CPU_BACKENDS, reason="numba is not available here")
@pytest.mark.parametrize("density", [0.01, 0.3, 1.0])
def test_numba_radix_select_equals_kthvalue(density):
    from labkit.kernels.ties_merge import numba_ties_thresholds

    g = torch.Generator().manual_seed(9)
    cases = [torch.randn(5, 3001, generator=g), torch.randint(-3, 4, (3, 500), generator=g).float(),
             torch.randn(2, 1, generator=g), 1e-30 * torch.randn(2, 100, generator=g), torch.zeros(1, 7),
             torch.randn(4, 300, generator=g).half().float()]
    for tv in cases:
        assert torch.equal(numba_ties_thresholds(tv, density), ties_thresholds(tv, density))
