"""labkit.kernels.sdr_match: packing (bit order, n not a multiple of 64, round trip), the SWAR popcount, every backend
against the torch reference on random sizes (empty, one query, one word, odd sizes, non-contiguous, uint64 words),
the threshold, and the error messages. Triton runs through its CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.kernels import available_backends
from labkit.kernels.sdr_match import pack_bits, popcount64, reference, sdr_match, unpack_bits, words_for

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]


def random_bits(rows: int, n: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, n, generator=g) < density


def test_pack_bit_order_and_round_trip():
    bits = torch.zeros(3, 130, dtype=torch.bool)
    bits[0, 0] = True  # word 0, bit 0
    bits[1, 63] = True  # word 0, bit 63: the int64 sign bit
    bits[2, 129] = True  # word 2, bit 1
    words = pack_bits(bits)
    assert words.shape == (3, 3) and words.dtype == torch.int64
    assert words[0].tolist() == [1, 0, 0]
    assert words[1].tolist() == [-(2**63), 0, 0]
    assert words[2].tolist() == [0, 0, 2]
    assert torch.equal(unpack_bits(words, 130), bits)
    for n in (1, 63, 64, 65, 200):
        b = random_bits(4, n, 0.5, n)
        assert pack_bits(b).shape == (4, words_for(n))
        assert torch.equal(unpack_bits(pack_bits(b), n), b)
        assert torch.equal(pack_bits(b.to(torch.uint8)), pack_bits(b))  # 0/1 integers pack like bools


def test_popcount64():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (500,), generator=g, dtype=torch.int64)
    x = torch.cat([x, torch.tensor([0, -1, 1, 2**63 - 1, -(2**63), 0x5555555555555555])])
    want = [bin(v & (2**64 - 1)).count("1") for v in x.tolist()]
    assert popcount64(x).tolist() == want


def hand_overlaps():
    q = torch.zeros(2, 100, dtype=torch.bool)
    s = torch.zeros(3, 100, dtype=torch.bool)
    q[0, [0, 1, 64, 99]] = True
    q[1, [5, 70]] = True
    s[0, [0, 64, 99]] = True  # shares 3 with q0, 0 with q1
    s[1, [1, 5, 70, 80]] = True  # shares 1 with q0, 2 with q1
    s[2, [2]] = True
    return q, s, torch.tensor([[3, 1, 0], [0, 2, 0]], dtype=torch.int32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case(backend):
    q, s, want = hand_overlaps()
    match, ov = sdr_match(pack_bits(q), pack_bits(s), 2, backend=backend)
    assert ov.dtype == torch.int32 and match.dtype == torch.bool
    assert torch.equal(ov, want)
    assert torch.equal(match, want >= 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, M, n, density", [(0, 5, 70, 0.3), (4, 0, 70, 0.3), (1, 1, 1, 1.0), (1, 9, 64, 0.5),
                                               (7, 13, 129, 0.1), (33, 70, 1000, 0.05), (5, 3, 2048, 0.02)],
                         ids=str)
def test_matches_reference(backend, B, M, n, density):
    q, s = random_bits(B, n, density, seed=n + B), random_bits(M, n, density, seed=n + M + 1)
    Q, S = pack_bits(q), pack_bits(s)
    theta = max(1, int(density * density * n))
    match, ov = sdr_match(Q, S, theta, backend=backend)
    want = (q.double() @ s.double().T).to(torch.int32)
    assert ov.shape == (B, M) and match.shape == (B, M)
    assert torch.equal(ov, want)
    assert torch.equal(match, want >= theta)
    ref = reference(Q, S, theta)
    assert torch.equal(ref[1], want) and torch.equal(ref[0], match)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_query_noncontiguous_uint64_and_thresholds(backend):
    q, s = random_bits(6, 300, 0.2, seed=1), random_bits(40, 300, 0.2, seed=2)
    Q, S = pack_bits(q), pack_bits(s)
    want = (q.double() @ s.double().T).to(torch.int32)
    match, ov = sdr_match(Q[2], S, 10, backend=backend)  # one query: 1-D results
    assert ov.shape == (40,) and torch.equal(ov, want[2]) and torch.equal(match, want[2] >= 10)
    S_nc = S.T.contiguous().T  # same values, not contiguous
    assert not S_nc.is_contiguous()
    assert torch.equal(sdr_match(Q[::2], S_nc, 10, backend=backend)[1], want[::2])
    assert torch.equal(sdr_match(Q.view(torch.uint64), S.view(torch.uint64), 10, backend=backend)[1], want)
    assert bool(sdr_match(Q, S, 0, backend=backend)[0].all())  # θ = 0: everything matches
    assert not bool(sdr_match(Q, S, 301, backend=backend)[0].any())  # θ > n: nothing does
    self_match, self_ov = sdr_match(S, S, 1, backend=backend)
    assert torch.equal(self_ov.diagonal(), s.sum(1).to(torch.int32))  # an SDR overlaps itself in all its ON bits


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_words(backend):
    match, ov = sdr_match(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.int64), 0,
                          backend=backend)
    assert ov.shape == (3, 2) and int(ov.abs().sum()) == 0 and bool(match.all())


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 9), M=st.integers(0, 12), n=st.integers(1, 300), density=st.floats(0.0, 1.0),
       theta=st.integers(0, 40), seed=st.integers(0, 10**6))
def test_property_cpu_backends(B, M, n, density, theta, seed):
    q, s = random_bits(B, n, density, seed), random_bits(M, n, density, seed + 1)
    Q, S = pack_bits(q), pack_bits(s)
    want = (q.double() @ s.double().T).to(torch.int32)
    for backend in [b for b in ("torch", "numba", "triton") if b in CPU_BACKENDS]:
        match, ov = sdr_match(Q, S, theta, backend=backend)
        assert torch.equal(ov, want), backend
        assert torch.equal(match, want >= theta), backend


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"theta": -1}, ValueError, r"theta must be an integer >= 0, got -1"),
        ({"theta": 1.5}, ValueError, r"theta must be an integer >= 0, got 1.5"),
        ({"queries": torch.zeros(2, 3)}, TypeError, r"queries must hold packed 64-bit words"),
        ({"queries": torch.zeros(2, 2, 3, dtype=torch.long)}, ValueError, r"queries must have shape \(B, W\)"),
        ({"stored": torch.zeros(3, dtype=torch.long)}, ValueError, r"stored must have shape \(M, W\)"),
        ({"queries": torch.zeros(2, 2, dtype=torch.long)}, ValueError, r"queries must have W = 3 words like stored"),
        ({"queries": [1, 2, 3]}, TypeError, r"queries must be a torch.Tensor"),
        ({"backend": "gpu"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    args = {"queries": torch.zeros(2, 3, dtype=torch.long), "stored": torch.zeros(4, 3, dtype=torch.long),
            "theta": 1} | kwargs
    with pytest.raises(error, match=message):
        sdr_match(**args)


def test_bad_packing():
    with pytest.raises(ValueError, match=r"bits must hold only 0 and 1"):
        pack_bits(torch.tensor([0, 2, 1]))
    with pytest.raises(TypeError, match=r"bits must be bool or integer 0/1, got torch.float32"):
        pack_bits(torch.zeros(3))
    with pytest.raises(ValueError, match=r"n must need exactly W = 2 words \(n in 65..128\), got 64"):
        unpack_bits(torch.zeros(1, 2, dtype=torch.long), 64)
    with pytest.raises(ValueError, match=r"n must be an integer >= 0"):
        words_for(-1)
