"""labkit.kernels.spike_propagate: exact slots of a hand-made case; every backend against the torch reference on
random CSR and dense synapses (per-synapse and shared delays, empty rows, repeated spikes, wrap-around of the ring,
float32/float64, no spikes, one column, a non-contiguous buffer); only spiking rows are read; bad input. Triton runs
through its CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.kernels import available_backends
from labkit.kernels.spike_propagate import reference, spike_propagate

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
FAST = [b for b in ("numba", "triton") if b in CPU_BACKENDS]


def random_csr(M: int, N: int, E: int, D: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, max(M, 1), (E,), generator=g) if M else torch.zeros(0, dtype=torch.int64)
    if M > 2:
        src = src.clamp(max=M - 2)  # the last row is empty
    order = torch.argsort(src, stable=True)
    src = src[order]
    indptr = torch.zeros(M + 1, dtype=torch.int64)
    if M:
        indptr[1:] = torch.cumsum(torch.bincount(src, minlength=M), 0)
    indices = torch.randint(0, max(N, 1), (E,), generator=g) if N else torch.zeros(0, dtype=torch.int64)
    weights = torch.randn(E, generator=g, dtype=torch.float64).to(dtype)
    delays = torch.randint(0, D, (E,), generator=g)
    return indptr, indices, weights, delays


def test_hand_case_slots():
    """Row 0 → (j=1, w=2, d=1), (j=3, w=5, d=2); row 1 → (j=1, w=7, d=0); row 2 → (j=0, w=1, d=3). Spikes of rows 0
    and 2 at t = 6 with D = 4 land in slots (6 + d) mod 4."""
    indptr = torch.tensor([0, 2, 3, 4])
    indices = torch.tensor([1, 3, 1, 0])
    w = torch.tensor([2.0, 5.0, 7.0, 1.0], dtype=torch.float64)
    d = torch.tensor([1, 2, 0, 3])
    want = torch.zeros(4, 4, dtype=torch.float64)
    want[(6 + 1) % 4, 1] = 2.0
    want[(6 + 2) % 4, 3] = 5.0
    want[(6 + 3) % 4, 0] = 1.0
    for backend in CPU_BACKENDS:
        buf = torch.zeros(4, 4, dtype=torch.float64)
        out = spike_propagate(buf, 6, torch.tensor([0, 2]), w, indptr, indices, d, backend=backend)
        assert out is buf and torch.equal(buf, want), backend
        # the same synapses as a dense matrix with (M, N) delays
        Wd = torch.zeros(3, 4, dtype=torch.float64)
        Dd = torch.ones(3, 4, dtype=torch.int64)
        for i in range(3):
            for e in range(int(indptr[i]), int(indptr[i + 1])):
                Wd[i, indices[e]], Dd[i, indices[e]] = w[e], d[e]
        buf2 = torch.zeros(4, 4, dtype=torch.float64)
        spike_propagate(buf2, 6, torch.tensor([0, 2]), Wd, delays=Dd, backend=backend)
        assert torch.equal(buf2, want), backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("M, N, E, D, per_synapse", [(1, 1, 3, 2, True), (13, 7, 60, 5, True), (40, 33, 400, 3, False),
                                                     (9, 50, 0, 1, False), (100, 1, 250, 4, True)], ids=str)
def test_csr_matches_reference(backend, dtype, M, N, E, D, per_synapse):
    indptr, indices, w, d = random_csr(M, N, E, D, seed=M * N + E, dtype=dtype)
    delays = d if per_synapse else D - 1
    g = torch.Generator().manual_seed(1)
    spiking = torch.randint(0, M, (max(1, M // 3),), generator=g)
    spiking = torch.cat([spiking, spiking[:1]])  # a repeated index adds twice
    for t in (0, 3, 1001):  # the ring wraps around
        base = torch.randn(D, N, generator=g, dtype=torch.float64).to(dtype)
        want = reference(base.clone(), t, spiking, w, indptr, indices, delays)
        got = spike_propagate(base.clone(), t, spiking, w, indptr, indices, delays, backend=backend)
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("M, N, D, per_synapse", [(1, 1, 1, False), (17, 300, 4, True), (30, 45, 2, False)], ids=str)
def test_dense_matches_reference(backend, dtype, M, N, D, per_synapse):
    g = torch.Generator().manual_seed(M + N)
    W = torch.randn(M, N, generator=g, dtype=torch.float64).to(dtype)
    delays = torch.randint(0, D, (M, N), generator=g) if per_synapse else D - 1
    spiking = torch.randperm(M, generator=g)[: max(1, M // 2)]
    for t in (0, 7):
        base = torch.randn(D, N, generator=g, dtype=torch.float64).to(dtype)
        want = reference(base.clone(), t, spiking, W, delays=delays)
        got = spike_propagate(base.clone(), t, spiking, W, delays=delays, backend=backend)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        if not per_synapse:  # with one delay it is a row sum into one slot
            manual = base.clone()
            manual[(t + D - 1) % D] += W[spiking].sum(0)
            torch.testing.assert_close(got, manual, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 30), N=st.integers(1, 30), E=st.integers(0, 120), D=st.integers(1, 6), S=st.integers(0, 10),
       t=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_property_csr(backend, M, N, E, D, S, t, seed):
    indptr, indices, w, d = random_csr(M, N, E, D, seed)
    spiking = torch.randint(0, M, (S,), generator=torch.Generator().manual_seed(seed))
    want = reference(torch.zeros(D, N, dtype=torch.float64), t, spiking, w, indptr, indices, d)
    got = spike_propagate(torch.zeros(D, N, dtype=torch.float64), t, spiking, w, indptr, indices, d, backend=backend)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_spiking_rows_are_read(backend):
    """Rows that did not spike are never read: NaN weights there change nothing."""
    indptr, indices, w, d = random_csr(10, 8, 50, 3, seed=5)
    w[int(indptr[3]): int(indptr[4])] = float("nan")
    spiking = torch.tensor([0, 5, 7])
    got = spike_propagate(torch.zeros(3, 8, dtype=torch.float64), 2, spiking, w, indptr, indices, d, backend=backend,
                          validate=False)
    assert torch.isfinite(got).all() and got.abs().sum() > 0
    W = torch.randn(10, 8, dtype=torch.float64)
    W[3] = float("nan")
    got = spike_propagate(torch.zeros(3, 8, dtype=torch.float64), 2, spiking, W, delays=1, backend=backend)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_spikes_and_non_contiguous_buffer(backend):
    indptr, indices, w, d = random_csr(6, 5, 20, 3, seed=2)
    buf = torch.zeros(3, 5, dtype=torch.float64)
    assert torch.equal(spike_propagate(buf, 0, torch.zeros(0, dtype=torch.int64), w, indptr, indices, d,
                                       backend=backend), torch.zeros(3, 5, dtype=torch.float64))
    big = torch.zeros(5, 3, dtype=torch.float64)
    view = big.T  # (3, 5), not contiguous
    spike_propagate(view, 4, torch.tensor([1, 2]), w, indptr, indices, d, backend=backend)
    want = reference(torch.zeros(3, 5, dtype=torch.float64), 4, torch.tensor([1, 2]), w, indptr, indices, d)
    assert torch.equal(big.T, want)


def test_bad_input():
    indptr, indices, w, d = random_csr(4, 3, 10, 3, seed=0)
    buf = torch.zeros(3, 3, dtype=torch.float64)
    sp = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"delays must lie in 0..D-1 = 0..2 steps, got 5"):
        spike_propagate(buf, 0, sp, w, indptr, indices, 5)
    with pytest.raises(ValueError, match="delays must lie in 0..D-1"):
        spike_propagate(buf, 0, sp, w, indptr, indices, d + 3)
    with pytest.raises(ValueError, match=r"spiking must lie in 0..M-1 = 0..3, got values from 0 to 4"):
        spike_propagate(buf, 0, torch.tensor([0, 4]), w, indptr, indices, d)
    with pytest.raises(ValueError, match=r"indices must lie in 0..N-1 = 0..1, got values from 0 to 2"):
        spike_propagate(torch.zeros(3, 2, dtype=torch.float64), 0, sp, w, indptr, indices, d)
    with pytest.raises(ValueError, match=r"CSR weights must have shape \(E,\) = \(10,\)"):
        spike_propagate(buf, 0, sp, w[:9], indptr, indices, d)
    with pytest.raises(TypeError, match="weights must be a torch.float64 tensor"):
        spike_propagate(buf, 0, sp, w.float(), indptr, indices, d)
    with pytest.raises(ValueError, match="indptr must start at 0 and end at len"):
        spike_propagate(buf, 0, sp, w, indptr - 1, indices, d)
    with pytest.raises(ValueError, match=r"dense weights must have shape \(M, N\) with N = 3"):
        spike_propagate(buf, 0, sp, torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="t must be an integer >= 0"):
        spike_propagate(buf, -1, sp, w, indptr, indices, d)
    with pytest.raises(TypeError, match="spiking must hold integers"):
        spike_propagate(buf, 0, sp.float(), w, indptr, indices, d)
    with pytest.raises(TypeError, match="delays must hold integers"):
        spike_propagate(buf, 0, sp, w, indptr, indices, d.float())
    with pytest.raises(ValueError, match="indices is given without indptr"):
        spike_propagate(buf, 0, sp, torch.zeros(4, 3, dtype=torch.float64), None, indices)
