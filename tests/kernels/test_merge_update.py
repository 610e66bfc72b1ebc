"""labkit.kernels.merge_update: every backend against the torch reference (with and without w0, odd sizes,
sizes across the Numba chunk, P = 0 and 1, n-D, fp16, non-contiguous, in place), the float64 norm, equality
with chapter 4's continual mergers, and the error messages. Triton runs through its CPU interpreter."""

from __future__ import annotations

import pytest
import torch

from labkit.continual.merging import ContinualAverage, ContinualTaskArithmetic
from labkit.kernels import available_backends, merge_update
from labkit.kernels.merge_update import reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
SHAPES = [(1,), (17,), (1000,), ((1 << 16) + 3,), (3, 5, 7)]  # P = 1, odd, one chunk, across two chunks, n-D


def make(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g).to(dtype) for _ in range(3))


def check(out, ref, tol=1e-6):
    (m, d, sq), (m_ref, d_ref, sq_ref) = out, ref
    assert (m is None) == (m_ref is None)
    if m is not None:
        assert m.shape == m_ref.shape and m.dtype == m_ref.dtype
        torch.testing.assert_close(m.float(), m_ref.float(), atol=tol, rtol=tol)
    assert d.shape == d_ref.shape and d.dtype == torch.float32
    torch.testing.assert_close(d, d_ref, atol=tol, rtol=tol)
    assert isinstance(sq, float)
    assert sq == pytest.approx(sq_ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_w0", [True, False], ids=["w0", "no-w0"])
def test_matches_reference(backend, shape, with_w0):
    w0, delta, tau = make(shape, seed=sum(shape))
    w0 = w0 if with_w0 else None
    args = (w0, delta, tau, 0.7, -0.3, 0.9)
    out = merge_update(*args, backend=backend)
    check(out, reference(*args))
    assert out[2] == pytest.approx(float((0.9 * delta.double() + 0.7 * tau.double()).square().sum()), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_fp16(backend):
    w0, delta, tau = make((0,))
    check(merge_update(w0, delta, tau, backend=backend), reference(w0, delta, tau))
    w0, delta, tau = make((301,), dtype=torch.float16, seed=1)
    out = merge_update(w0, delta, tau, 1.0, 0.5, backend=backend)
    assert out[0].dtype == torch.float16
    check(out, reference(w0, delta, tau, 1.0, 0.5), tol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_inplace(backend):
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(40, 30, generator=g).T  # transposed view
    delta = torch.randn(30, 80, generator=g)[:, ::2]  # strided view
    tau = torch.randn(30, 40, generator=g)
    check(merge_update(w0, delta, tau, 2.0, 0.1, backend=backend), reference(w0, delta, tau, 2.0, 0.1))
    D = torch.randn(1234, generator=g)
    expected = reference(None, D, D + 1, 0.5, 1.0, 0.25)
    out = merge_update(None, D, D + 1, 0.5, 1.0, 0.25, inplace=True, backend=backend)
    assert out[1] is D
    check(out, expected)
    torch.testing.assert_close(D, expected[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_continual_mergers(backend):
    """β = μ = 1, λ = scale is ContinualTaskArithmetic; β = 1 − 1/t, μ = 1/t is ContinualAverage."""
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(20, 7, generator=g), "b": torch.randn(7, generator=g)}
    models = [{n: v + torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(3)]
    ta, avg = ContinualTaskArithmetic(base, scale=0.3), ContinualAverage(base)
    flat = torch.cat([v.reshape(-1) for v in base.values()])
    S, M = torch.zeros_like(flat), torch.zeros_like(flat)
    for t, model in enumerate(models, start=1):
        ta.update(model)
        avg.update(model)
        tau = torch.cat([model[n].reshape(-1) for n in base]) - flat
        merged_ta, S, _ = merge_update(flat, S, tau, mu=1.0, lam=0.3, backend=backend)
        merged_avg, M, _ = merge_update(flat, M, tau, mu=1 / t, lam=1.0, beta=1 - 1 / t, backend=backend)
        for merged, merger in ((merged_ta, ta), (merged_avg, avg)):
            want = torch.cat([v.reshape(-1) for v in merger.merged().values()])
            torch.testing.assert_close(merged, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "tau": a["tau"][:4]}, r"tau must have delta's shape \(5,\), got \(4,\)"),
        (lambda a: {**a, "w0": a["w0"][None]}, r"w0 must have delta's shape \(5,\), got \(1, 5\)"),
        (lambda a: {**a, "mu": float("nan")}, r"mu must be a finite real number, got nan"),
        (lambda a: {**a, "lam": "1"}, r"lam must be a finite real number"),
        (lambda a: {**a, "beta": True}, r"beta must be a finite real number"),
        (lambda a: {**a, "delta": a["delta"].half(), "inplace": True}, r"inplace=True needs delta"),
        (lambda a: {**a, "backend": "gpu"}, r"backend must be one of"),
    ],
)
def test_bad_inputs(change, message):
    w0, delta, tau = make((5,))
    with pytest.raises(ValueError, match=message):
        merge_update(**change({"w0": w0, "delta": delta, "tau": tau}))
    with pytest.raises(TypeError, match="tau must hold floating-point"):
        merge_update(w0, delta, tau.long())
