"""labkit.kernels.project_attend: every available backend against the torch reference, the identity with
full-cache attention, and the error messages. Triton runs through its CPU interpreter: small shapes."""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends
from labkit.kernels.attend import reference as attend_reference
from labkit.kernels.project_attend import project_attend, reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T, D, r_k, r_v): T=1, odd sizes, r = D, r = 1, different ranks, one big enough for Numba's threads
SHAPES = [(1, 1, 1, 8, 8, 8), (2, 3, 17, 33, 5, 7), (3, 1, 64, 17, 1, 17), (1, 5, 130, 64, 16, 16),
          (2, 3, 700, 32, 16, 8)]


def bases(H, D, r, seed=0, dtype=torch.float32):
    """(H, D, r) with orthonormal columns per head."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(H, D, D, generator=g))[0][..., :r].contiguous().to(dtype)


def make(B, H, T, D, rk, rv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g).to(dtype)
    Kc = torch.randn(B, H, T, rk, generator=g).to(dtype)
    Vc = torch.randn(B, H, T, rv, generator=g).to(dtype)
    return q, Kc, Vc, bases(H, D, rk, seed + 1), bases(H, D, rv, seed + 2)


def some_lengths(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = 1
    if B > 1:
        lengths[-1] = T
    return lengths


def close(out, ref, tol=2e-5):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}D{}rk{}rv{}".format(*s))
@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
def test_matches_reference_fp32(backend, shape, masked):
    B, H, T = shape[:3]
    args = make(*shape, seed=T)
    lengths = some_lengths(B, T, seed=H) if masked else None
    close(project_attend(*args, lengths, backend=backend), reference(*args, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_attention_over_the_reconstructed_cache(backend):
    """The identity behind the op, for any rank: K̂ = Kc U_kᵀ, V̂ = Vc U_vᵀ."""
    q, Kc, Vc, Uk, Uv = make(2, 3, 50, 24, 6, 10, seed=7)
    K_hat = torch.einsum("bhtr,hdr->bhtd", Kc, Uk)
    V_hat = torch.einsum("bhtr,hdr->bhtd", Vc, Uv)
    lengths = torch.tensor([13, 50])
    close(project_attend(q, Kc, Vc, Uk, Uv, lengths, backend=backend), attend_reference(q, K_hat, V_hat, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_rank_is_full_attention(backend):
    """r = D with a square orthogonal basis: projecting the true cache loses nothing."""
    B, H, T, D = 2, 2, 40, 16
    g = torch.Generator().manual_seed(8)
    q = torch.randn(B, H, D, generator=g)
    K, V = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    Uk, Uv = bases(H, D, D, 1), bases(H, D, D, 2)
    Kc, Vc = torch.einsum("bhtd,hdr->bhtr", K, Uk), torch.einsum("bhtd,hdr->bhtr", V, Uv)
    close(project_attend(q, Kc, Vc, Uk, Uv, backend=backend), attend_reference(q, K, V), tol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_in_half_out(backend, dtype):
    q, Kc, Vc, Uk, Uv = make(2, 3, 77, 32, 8, 8, dtype=dtype, seed=1)
    lengths = torch.tensor([5, 77])
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    close(project_attend(q, Kc, Vc, Uk, Uv, lengths, backend=backend), reference(q, Kc, Vc, Uk, Uv, lengths), tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, H, T, D, r = 2, 3, 40, 24, 6
    g = torch.Generator().manual_seed(3)
    q = torch.randn(H, B, D, generator=g).transpose(0, 1)
    Kc = torch.randn(B, T, H, r, generator=g).transpose(1, 2)
    Vc = torch.randn(B, H, T, 2 * r, generator=g)[..., ::2]
    Uk = bases(H, D, r, 1).transpose(0, 1).contiguous().transpose(0, 1)  # (H, D, r) view of a (D, H, r) tensor
    Uv = bases(H, D, 2 * r, 2)[..., ::2]
    assert not any(x.is_contiguous() for x in (q, Kc, Vc, Uk, Uv))
    lengths = torch.tensor([T, 9])
    close(project_attend(q, Kc, Vc, Uk, Uv, lengths, backend=backend), reference(q, Kc, Vc, Uk, Uv, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rising_scores_stay_stable(backend):
    B, H, T, D, r = 1, 2, 200, 16, 4
    q, _, Vc, Uk, Uv = make(B, H, T, D, r, r, seed=4)
    q_r = torch.einsum("bhd,hdr->bhr", q, Uk)
    Kc = torch.linspace(0, 1, T)[None, None, :, None] * q_r[:, :, None, :] * 50.0
    out = project_attend(q, Kc, Vc, Uk, Uv, scale=0.7, backend=backend)
    assert torch.isfinite(out).all()
    close(out, reference(q, Kc, Vc, Uk, Uv, scale=0.7))


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
@pytest.mark.parametrize("n_splits", [1, 3])
def test_triton_merges_splits(n_splits):
    from labkit.kernels.project_attend import triton_project_attend

    args = make(3, 2, 100, 20, 5, 3, seed=5)
    lengths = torch.tensor([1, 37, 100])
    close(triton_project_attend(*args, lengths, block_t=16, n_splits=n_splits), reference(*args, lengths))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    assert project_attend(*make(0, 2, 5, 8, 4, 4), backend=backend).shape == (0, 2, 8)


# ---- errors name the argument, what was expected and what was given ------------------------------------


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be 3-D \(B, H, D\), got shape \(3, 8\)"),
        (lambda a: {**a, "Kc": a["Kc"][0]}, ValueError, r"Kc must be 4-D \(B, H, T, r_k\)"),
        (lambda a: {**a, "Vc": a["Vc"][:, :, :4]},
         ValueError, r"Vc must have shape \(B, H, T, r_v\) with \(B, H, T\) = \(2, 3, 5\)"),
        (lambda a: {**a, "Kc": torch.zeros(2, 3, 5, 9)}, ValueError, r"r_k .* must be in 1..D = 1..8, got 9"),
        (lambda a: {**a, "Kc": torch.zeros(2, 3, 0, 4), "Vc": torch.zeros(2, 3, 0, 4)},
         ValueError, r"T >= 1\), got T=0"),
        (lambda a: {**a, "U_k": a["U_k"][:, :, :3]},
         ValueError, r"U_k must have shape \(H, D, r_k\) = \(3, 8, 4\), got \(3, 8, 3\)"),
        (lambda a: {**a, "U_v": a["U_v"][0]}, ValueError, r"U_v must have shape \(H, D, r_v\)"),
        (lambda a: {**a, "Kc": a["Kc"].half()}, TypeError, r"one dtype, got q torch.float32, Kc torch.float16"),
        (lambda a: {**a, "U_k": a["U_k"].long()}, TypeError, r"U_k must hold floating-point numbers"),
        (lambda a: {**a, "lengths": torch.tensor([0, 5])},
         ValueError, r"lengths must lie in 1..T = 1..5, got values from 0 to 5"),
        (lambda a: {**a, "scale": float("nan")}, ValueError, r"scale must be finite"),
        (lambda a: {**a, "backend": "cuda"}, ValueError, r"backend must be one of"),
    ],
)
def test_bad_inputs(change, error, message):
    q, Kc, Vc, Uk, Uv = make(2, 3, 5, 8, 4, 4)
    args = change({"q": q, "Kc": Kc, "Vc": Vc, "U_k": Uk, "U_v": Uv})
    with pytest.raises(error, match=message):
        project_attend(**args)


def test_vectorised_exp_matches_numpy():
    """The Numba kernel's own exp (2^n times a Taylor series for 2^f): relative error below 1e-5 on [-87, 0]
    (rounding y = x log2 e in float32 costs |y| 2^-24, up to 5e-6 at x = -87; the series adds 2e-7),
    exactly 0 where float32 exp underflows anyway, and the returned sum is the sum of what it wrote."""
    pytest.importorskip("numba")
    import numpy as np

    from labkit.kernels.project_attend import _exp_shifted

    x = np.concatenate([np.linspace(-87.0, 0.0, 10_001), [-1e4, -200.0, -88.0]]).astype(np.float32)
    m = np.float32(3.5)
    s, two_n = x + m, np.empty(x.size, np.float32)
    want = np.exp(s.astype(np.float64) - m)  # the shift the kernel sees (x + m rounds in float32)
    total = _exp_shifted(s, x.size, m, two_n, two_n.view(np.int32))
    np.testing.assert_allclose(s[:-3], want[:-3], rtol=1e-5, atol=0)
    np.testing.assert_allclose(s[-2001:-3], want[-2001:-3], rtol=1e-6, atol=0)  # x in [-17, 0]: ~1e-6
    assert (s[-3:] < 1e-37).all()
    assert abs(total - s.astype(np.float64).sum()) <= 1e-5 * total
