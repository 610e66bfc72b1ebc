"""labkit.kernels.opcm_project: every backend against chapter 4's per-layer ``opcm_project`` for both projections
("masked", the paper's default, and "two_sided") on mixed and repeated shapes, 1 x 1, 1 x n, m x 1, a zero D
(r = 0), dict inputs, fp16, non-contiguous, no layers; each projection's defining properties, one OPCM update
rebuilt from opcm_project + merge_update, and the error messages. Triton runs through its CPU interpreter
(TRITON_INTERPRET=1, set in conftest.py) with whole-matrix blocks, so the shapes stay small."""

from __future__ import annotations

import pytest
import torch

from labkit.continual import merging
from labkit.continual.merging import OPCM
from labkit.kernels import available_backends, merge_update, opcm_project
from labkit.kernels.opcm_project import PROJECTIONS, numba_opcm_project, reference, torch_batched, triton_opcm_project

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


def check_properties(deltas, proj, ranks, projection):
    """masked: ⟨τ̃, D⟩_F = 0 and U_rᵀ τ̃ V_r = 0; two_sided: U_rᵀ τ̃ = 0 and τ̃ V_r = 0."""
    for d, p, r in zip(deltas, proj, ranks, strict=True):
        U, _, Vh = torch.linalg.svd(d.double(), full_matrices=False)
        assert r >= 1 or not d.any()
        p = p.double()
        if projection == "masked":
            assert abs(float((p * d.double()).sum())) < 1e-5 * (1 + float(d.double().norm() * p.norm()))
            if r:
                assert (U[:, :r].T @ p @ Vh[:r].T).abs().max() < 1e-5
        elif r:
            assert (U[:, :r].T @ p).abs().max() < 1e-5
            assert (p @ Vh[:r].T).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
def test_matches_reference(backend, projection, alpha):
    deltas, taus = make(SHAPES, seed=int(10 * alpha))
    deltas[2] = torch.zeros_like(deltas[2])  # an empty merged update: r = 0
    out = opcm_project(deltas, taus, alpha, backend=backend, projection=projection)
    check(out, reference(deltas, taus, alpha, projection))
    assert out[1][2] == 0 and torch.equal(out[0][2], taus[2])  # nothing to protect: τ̃ = τ
    check_properties(deltas, *out, projection)


def test_projections_differ_and_default_is_masked():
    """The two projections are different maps (masked keeps the cross blocks), and the default is the paper's."""
    assert PROJECTIONS == merging.PROJECTIONS
    deltas, taus = make([(12, 10), (12, 10)], seed=7)
    masked, ranks = opcm_project(deltas, taus, 0.5)
    two, ranks2 = opcm_project(deltas, taus, 0.5, projection="two_sided")
    assert ranks == ranks2 and all(0 < r < 10 for r in ranks)
    check((masked, ranks), reference(deltas, taus, 0.5, "masked"))
    for m, t, d in zip(masked, two, deltas, strict=True):
        assert m.norm() > t.norm() * 1.1  # two_sided removes strictly more
        U, _, Vh = torch.linalg.svd(d.double(), full_matrices=False)
        assert (U[:, :ranks[0]].T @ m.double()).abs().max() > 1e-2  # masked keeps U_rᵀ τ V_{r:} (a cross block)


@pytest.mark.parametrize("fn", [reference, torch_batched, numba_opcm_project, triton_opcm_project])
def test_bad_projection(fn):
    deltas, taus = make([(3, 2)])
    with pytest.raises(ValueError, match=r"projection must be one of \('masked', 'two_sided'\), got 'orthogonal'"):
        fn(deltas, taus, 0.5, "orthogonal")
    with pytest.raises(ValueError, match=r"projection must be one of .*, got None"):
        opcm_project(deltas, taus, projection=None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_dicts_dtypes_layouts(backend, projection):
    deltas, taus = make([(9, 4), (4, 9), (9, 4)], seed=3)
    names = ["a", "b", "c"]
    proj, ranks = opcm_project(dict(zip(names, deltas)), dict(zip(names, taus)), backend=backend,
                               projection=projection)
    ref = reference(deltas, taus, projection=projection)
    assert list(proj) == names and list(ranks.values()) == ref[1]
    check((list(proj.values()), list(ranks.values())), ref)
    half = make([(8, 6), (8, 6)], dtype=torch.float16, seed=4)
    check(opcm_project(*half, backend=backend, projection=projection), reference(*half, projection=projection),
          tol=2e-3)
    g = torch.Generator().manual_seed(5)
    strided = ([torch.randn(6, 10, generator=g).T, torch.randn(10, 12, generator=g)[:, ::2]],
               [torch.randn(6, 10, generator=g).T, torch.randn(10, 6, generator=g)])
    check(opcm_project(*strided, backend=backend, projection=projection), reference(*strided, projection=projection))
    assert opcm_project([], [], backend=backend) == ([], [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_rebuilds_an_opcm_update(backend, projection):
    """OPCM's second update = opcm_project on every 2-D weight + merge_update (D_new and ‖D_new‖² -> λ)."""
    g = torch.Generator().manual_seed(6)
    base = {"w1": torch.randn(12, 8, generator=g), "b1": torch.randn(12, generator=g),
            "w2": torch.randn(3, 12, generator=g)}
    models = [{n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(2)]
    opcm = OPCM(base, alpha=0.5, projection=projection)
    opcm.update(models[0])
    D = {n: opcm.D[n].clone() for n in opcm.matrices}
    taus = [{n: m[n] - base[n] for n in opcm.matrices} for m in models]
    opcm.update(models[1])
    proj, ranks = opcm_project(D, taus[1], 0.5, backend=backend, projection=projection)
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
