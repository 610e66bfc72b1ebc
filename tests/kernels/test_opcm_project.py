"""labkit.kernels.opcm_project: every backend against chapter 4's per-layer ``opcm_project`` (mixed and repeated
shapes, 1 x 1, 1 x n, m x 1, a zero D (r = 0), dict inputs, fp16, non-contiguous, no layers), the projection's
defining property, one OPCM update rebuilt from opcm_project + merge_update, and the error messages."""

from __future__ import annotations

import pytest
import torch

from labkit.continual.merging import OPCM
from labkit.kernels import available_backends, merge_update, opcm_project
from labkit.kernels.opcm_project import reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
SHAPES = [(7, 5), (7, 5), (4, 9), (1, 1), (1, 6), (6, 1), (7, 5), (16, 16)]  # repeated shapes form groups


def make(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    taus = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    return deltas, taus


def check(out, ref, tol=1e-5):
    (proj, ranks), (proj_ref, ranks_ref) = out, ref
    assert ranks == ranks_ref
    assert len(proj) == len(proj_ref)
    for p, q in zip(proj, proj_ref, strict=True):
        assert p.shape == q.shape and p.dtype == q.dtype
        torch.testing.assert_close(p.float(), q.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
def test_matches_reference(backend, alpha):
    deltas, taus = make(SHAPES, seed=int(10 * alpha))
    deltas[2] = torch.zeros_like(deltas[2])  # an empty merged update: r = 0, τ̃ = τ
    out = opcm_project(deltas, taus, alpha, backend=backend)
    check(out, reference(deltas, taus, alpha))
    assert out[1][2] == 0 and torch.equal(out[0][2], taus[2])
    for d, p, r in zip(deltas, out[0], out[1], strict=True):  # U_rᵀ τ̃ = 0 and τ̃ V_r = 0
        U, _, Vh = torch.linalg.svd(d.double())
        assert r >= 1 or not d.any()
        if r:
            assert (U[:, :r].T @ p.double()).abs().max() < 1e-5
            assert (p.double() @ Vh[:r].T).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_dicts_dtypes_layouts(backend):
    deltas, taus = make([(9, 4), (4, 9), (9, 4)], seed=3)
    names = ["a", "b", "c"]
    proj, ranks = opcm_project(dict(zip(names, deltas)), dict(zip(names, taus)), backend=backend)
    ref = reference(deltas, taus)
    assert list(proj) == names and list(ranks.values()) == ref[1]
    check((list(proj.values()), list(ranks.values())), ref)
    half = make([(8, 6), (8, 6)], dtype=torch.float16, seed=4)
    check(opcm_project(*half, backend=backend), reference(*half), tol=2e-3)
    g = torch.Generator().manual_seed(5)
    strided = ([torch.randn(6, 10, generator=g).T, torch.randn(10, 12, generator=g)[:, ::2]],
               [torch.randn(6, 10, generator=g).T, torch.randn(10, 6, generator=g)])
    check(opcm_project(*strided, backend=backend), reference(*strided))
    assert opcm_project([], [], backend=backend) == ([], [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebuilds_an_opcm_update(backend):
    """OPCM's second update = opcm_project on every 2-D weight + merge_update (D_new and ‖D_new‖² -> λ)."""
    g = torch.Generator().manual_seed(6)
    base = {"w1": torch.randn(12, 8, generator=g), "b1": torch.randn(12, generator=g),
            "w2": torch.randn(3, 12, generator=g)}
    models = [{n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(2)]
    opcm = OPCM(base, alpha=0.5)
    opcm.update(models[0])
    D = {n: opcm.D[n].clone() for n in opcm.matrices}
    taus = [{n: m[n] - base[n] for n in opcm.matrices} for m in models]
    opcm.update(models[1])
    proj, ranks = opcm_project(D, taus[1], 0.5, backend=backend)
    assert ranks == opcm.last_ranks
    sq = 0.0
    for n in opcm.matrices:
        _, D[n], sq_n = merge_update(None, D[n], proj[n], backend=backend)
        sq += sq_n
        torch.testing.assert_close(D[n], opcm.D[n], atol=1e-6, rtol=1e-5)
    norms = [sum(float(t[n].double().square().sum()) for n in opcm.matrices) ** 0.5 for t in taus]
    assert sq**0.5 / (sum(norms) / 2) == pytest.approx(opcm.lam, rel=1e-6)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (([torch.ones(3, 2)], [torch.ones(3, 2)], 0.0), ValueError, r"alpha must be in \(0, 1\), got 0.0"),
        (([torch.ones(3, 2)], [torch.ones(3, 2)], 1.0), ValueError, r"alpha must be in \(0, 1\), got 1.0"),
        (([torch.ones(3, 2)], [torch.ones(2, 3)]), ValueError,
         r"deltas\[0\] and taus\[0\] must be 2-D of one shape, got \(3, 2\) and \(2, 3\)"),
        (([torch.ones(3)], [torch.ones(3)]), ValueError, r"deltas\[0\] and taus\[0\] must be 2-D"),
        (([torch.ones(3, 2)], []), ValueError, r"taus must hold one tensor per delta \(1\), got 0"),
        (([torch.ones(0, 2)], [torch.ones(0, 2)]), ValueError, r"deltas\[0\] must not be empty"),
        (({"a": torch.ones(2, 2)}, {"b": torch.ones(2, 2)}), ValueError, r"deltas and taus must have the same names"),
        (([torch.ones(2, 2, dtype=torch.long)], [torch.ones(2, 2)]), TypeError, r"deltas\[0\] must be a floating"),
    ],
)
def test_bad_inputs(args, error, message):
    with pytest.raises(error, match=message):
        opcm_project(*args)
