"""labkit.kernels.sim_topk: every backend against the full-matrix reference (self excluded, separate queries, odd
blocks, k = 1 and k = N-1, a threshold), exact ties broken by index on integer-valued embeddings, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.kernels import available_backends
from labkit.kernels.sim_topk import reference, sim_topk

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N, d, k, block", [(2, 3, 1, None), (7, 5, 6, 3), (200, 16, 10, 17), (257, 32, 5, None)],
                         ids=str)
def test_matches_reference(backend, N, d, k, block):
    X = unit_rows(N, d, seed=N)
    idx, val = sim_topk(X, k, block=block, backend=backend)
    ref_idx, ref_val = reference(X, k)
    assert idx.shape == (N, k) and idx.dtype == torch.int64 and val.dtype == torch.float32
    torch.testing.assert_close(val, ref_val, atol=1e-5, rtol=0)
    assert [set(r) for r in idx.tolist()] == [set(r) for r in ref_idx.tolist()]
    assert not (idx == torch.arange(N)[:, None]).any()  # self excluded
    # brute force in float64: the k-th best score of every row is the smallest kept score
    S = X.double() @ X.double().T
    S.fill_diagonal_(-math.inf)
    torch.testing.assert_close(val[:, -1].double(), torch.sort(S, 1, descending=True).values[:, k - 1], atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_and_threshold(backend):
    X, Q = unit_rows(120, 8, seed=1), unit_rows(33, 8, seed=2)
    idx, val = sim_topk(X, 120, Q=Q, block=10, backend=backend)  # k = N with separate queries: a full ranking
    ref_idx, ref_val = reference(X, 120, Q=Q)
    torch.testing.assert_close(val, ref_val, atol=1e-5, rtol=0)
    assert (torch.sort(idx, 1).values == torch.arange(120)).all()
    idx, val = sim_topk(X, 20, threshold=0.5, backend=backend)
    ref_idx, ref_val = reference(X, 20, threshold=0.5)
    assert ((idx == -1) == (ref_idx == -1)).all()
    assert ((idx == -1) == (val == -math.inf)).all() and (val[idx >= 0] >= 0.5).all()
    assert [set(r) for r in idx.tolist()] == [set(r) for r in ref_idx.tolist()]
    assert (idx == -1).any() and (idx >= 0).any()  # the threshold bites somewhere, not everywhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_by_index(backend):
    """Integer-valued embeddings give exact ties: order is score descending, then index ascending."""
    g = torch.Generator().manual_seed(3)
    X = torch.randint(-2, 3, (90, 4), generator=g).float()
    X[10] = X[20] = X[30] = X[0]  # duplicates of row 0
    for block in (None, 7):
        idx, val = sim_topk(X, 12, block=block, backend=backend)
        ref_idx, ref_val = reference(X, 12)
        assert torch.equal(idx, ref_idx) and torch.equal(val, ref_val)
        assert bool(((val[:, 1:] < val[:, :-1]) | ((val[:, 1:] == val[:, :-1]) & (idx[:, 1:] > idx[:, :-1]))).all())
    idx, val = sim_topk(X, 90, Q=X[:1], backend=backend)  # with separate queries the row itself is kept
    copies = torch.nonzero((X == X[0]).all(1)).flatten().tolist()  # 0, 10, 20, 30 (and any random repeat)
    assert {0, 10, 20, 30} <= set(copies)
    tied = idx[0][val[0] == val[0, idx[0].tolist().index(0)]].tolist()  # every row scoring like row 0 itself
    assert tied == sorted(tied) and set(copies) <= set(tied)  # adjacent, by index


def test_empty_queries():
    idx, val = sim_topk(unit_rows(5, 3, 0), 2, Q=torch.empty(0, 3))
    assert idx.shape == (0, 2) and val.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"k": 5}, ValueError, r"k must be an integer in 1..4 \(N-1\), got 5"),
        ({"k": 0}, ValueError, r"k must be an integer in 1..4"),
        ({"Q": torch.ones(2, 4)}, ValueError, r"Q must have X's width d = 3, got shape \(2, 4\)"),
        ({"X": torch.ones(5)}, ValueError, r"X must have shape \(N, d\), got \(5,\)"),
        ({"X": torch.ones(5, 3, dtype=torch.long)}, TypeError, r"X must hold floating-point"),
        ({"X": torch.full((5, 3), math.nan)}, ValueError, r"X must be finite"),
        ({"threshold": math.nan}, ValueError, r"threshold must be a real number or None, got nan"),
        ({"block": 0}, ValueError, r"block must be an integer >= 1 or None, got 0"),
        ({"backend": "gpu"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    args = {"X": unit_rows(5, 3, 0), "k": 2} | kwargs
    with pytest.raises(error, match=message):
        sim_topk(**args)
