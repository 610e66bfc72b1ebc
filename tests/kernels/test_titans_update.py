"""labkit.kernels.titans_update: every available backend against the token-by-token torch reference (with and
without momentum and forgetting, M0/S0 given or zero, odd shapes, non-contiguous inputs), equality with
chapter 3's ``titans_recurrent`` / ``titans_chunk`` (kind="linear"), exact continuation at a chunk boundary
and the error messages. Triton runs through its CPU interpreter: small shapes, few calls."""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends, titans_update
from labkit.kernels.titans_update import reference
from labkit.memory.titans import titans_chunk, titans_recurrent

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T, Dk, Dv): T=1, T not a multiple of the chunk, Dk != Dv, odd sizes
SHAPES = [(1, 1, 1, 8, 8), (2, 3, 37, 16, 24), (1, 2, 40, 33, 17)]


def make(B, H, T, Dk, Dv, momentum=True, forgetting=True, states=True, dtype=torch.float32, seed=0):
    """L2-normalised keys (Titans' regime), θ in [0, 0.3] (a stable chunk rule), η in [0, 1], α in [0, 0.2]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, Dk, generator=g), dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g)
    theta = 0.3 * torch.rand(B, H, T, generator=g)
    eta = torch.rand(B, H, T, generator=g) if momentum else None
    alpha = 0.2 * torch.rand(B, H, T, generator=g) if forgetting else None
    M0 = 0.5 * torch.randn(B, H, Dk, Dv, generator=g) if states else None
    S0 = 0.1 * torch.randn(B, H, Dk, Dv, generator=g) if states and momentum else None
    return {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype), "theta": theta, "eta": eta, "alpha": alpha,
            "M0": M0, "S0": S0}


def close(out, ref, tol=2e-5):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def ref64(chunk_size=16, **a):
    """The reference in float64: the ground truth the fp32 kernels are held to."""
    o, M, S = reference(**{n: None if x is None else x.double() for n, x in a.items()}, chunk_size=chunk_size)
    return o.to(a["q"].dtype), M, S


def check_all(out, ref, tol=2e-5):
    (o, M, S), (o_ref, M_ref, S_ref) = out, ref
    close(o, o_ref, tol)
    close(M, M_ref, tol)
    assert M.dtype == torch.float32
    assert (S is None) == (S_ref is None)
    if S is not None:
        close(S, S_ref, tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}Dk{}Dv{}".format(*s))
@pytest.mark.parametrize("momentum, forgetting, states", [(True, True, True), (False, False, False),
                                                          (True, False, False), (False, True, True)],
                         ids=["mom+forget+states", "plain", "mom", "forget+M0"])
def test_matches_reference(backend, shape, momentum, forgetting, states):
    a = make(*shape, momentum=momentum, forgetting=forgetting, states=states, seed=shape[2])
    check_all(titans_update(**a, chunk_size=16, backend=backend), ref64(16, **a))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunk_sizes(backend, chunk_size):
    """C = 1 (fully online), C not a power of two, C > T (one chunk)."""
    if backend == "triton" and chunk_size == 1:
        pytest.skip("the interpreter walks 50 one-token chunks: covered by the others")
    a = make(2, 2, 50, 16, 12, seed=chunk_size)
    check_all(titans_update(**a, chunk_size=chunk_size, backend=backend), ref64(chunk_size, **a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_gates(backend):
    """α = 1 (forget everything), η ∈ {0, 1}, θ ∈ {0, 1}: products of exact zeros and ones, no NaN."""
    a = make(1, 2, 40, 8, 8, seed=3)
    g = torch.Generator().manual_seed(7)
    pick = torch.randint(0, 3, (3, 1, 2, 40), generator=g)
    a["alpha"] = torch.where(pick[0] == 0, 1.0, torch.where(pick[0] == 1, 0.0, a["alpha"]))
    a["eta"] = torch.where(pick[1] == 0, 0.0, torch.where(pick[1] == 1, 1.0, a["eta"]))
    a["theta"] = torch.where(pick[2] == 0, 0.0, torch.where(pick[2] == 1, 0.3, a["theta"]))
    out = titans_update(**a, chunk_size=8, backend=backend)
    assert all(torch.isfinite(x).all() for x in out)
    check_all(out, ref64(8, **a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, H, T, Dk, Dv = 2, 3, 21, 16, 8
    g = torch.Generator().manual_seed(3)
    a = {
        "q": torch.randn(B, T, H, Dk, generator=g).transpose(1, 2),
        "k": torch.nn.functional.normalize(torch.randn(H, B, T, Dk, generator=g), dim=-1).transpose(0, 1),
        "v": torch.randn(B, H, T, 2 * Dv, generator=g)[..., ::2],
        "theta": 0.3 * torch.rand(B, T, H, generator=g).transpose(1, 2),
        "eta": torch.rand(B, H, 2 * T, generator=g)[..., ::2],
        "alpha": 0.2 * torch.rand(H, B, T, generator=g).transpose(0, 1),
        "M0": torch.randn(B, H, Dv, Dk, generator=g).transpose(2, 3),
        "S0": 0.1 * torch.randn(H, B, Dk, Dv, generator=g).transpose(0, 1),
    }
    assert not any(x.is_contiguous() for x in a.values())
    check_all(titans_update(**a, chunk_size=8, backend=backend), ref64(8, **a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_in_half_out(backend):
    a = make(1, 2, 33, 16, 16, dtype=torch.float16, seed=2)
    o, M, S = titans_update(**a, backend=backend)
    o_ref, M_ref, S_ref = reference(**a)  # fp32 inside from the same fp16 inputs
    assert o.dtype == torch.float16 and M.dtype == S.dtype == torch.float32
    close(o, o_ref, 2e-3)
    close(M, M_ref, 1e-4)
    close(S, S_ref, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_at_chunk_boundary_continues_exactly(backend):
    """titans_update(x[:t]) then titans_update(x[t:], M0=M_t, S0=S_t) == titans_update(x), t a multiple of C."""
    a = make(1, 2, 45, 16, 16, seed=8)
    o, M, S = titans_update(**a, chunk_size=8, backend=backend)
    t = 24
    first = {n: x if n in ("M0", "S0") else x[:, :, :t] for n, x in a.items()}
    o1, M1, S1 = titans_update(**first, chunk_size=8, backend=backend)
    second = {n: x[:, :, t:] for n, x in a.items() if n not in ("M0", "S0")}
    o2, M2, S2 = titans_update(**second, M0=M1, S0=S1, chunk_size=8, backend=backend)
    close(torch.cat([o1, o2], dim=2), o, 1e-5)
    close(M2, M, 1e-5)
    close(S2, S, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum, forgetting", [(True, True), (False, False), (False, True)],
                         ids=["mom+forget", "plain", "forget"])
def test_equals_chapter3_titans(backend, momentum, forgetting):
    """The same numbers as labkit.memory.titans: the token loop with autograd gradients and the chunk form."""
    a = make(2, 2, 29, 12, 10, momentum=momentum, forgetting=forgetting, seed=11)
    C = 8
    memory = {"W": a["M0"]}
    mom = None if not momentum else {"W": a["S0"]}
    args = (a["q"], a["k"], a["v"], a["theta"], a["eta"], a["alpha"], memory, mom)
    o_rec, M_rec, S_rec = titans_recurrent(*args, kind="linear", chunk_size=C)
    o_chk, M_chk, S_chk, _ = titans_chunk(*args, kind="linear", chunk_size=C)
    o, M, S = titans_update(**a, chunk_size=C, backend=backend)
    for o_x, M_x, S_x in ((o_rec, M_rec, S_rec), (o_chk, M_chk, S_chk)):
        close(o, o_x, 2e-5)
        close(M, M_x["W"], 2e-5)
        assert (S is None) == (S_x is None)
        if S is not None:
            close(S, S_x["W"], 2e-5)


def test_numba_long_sequence_threads():
    """Large enough for the parallel Numba kernel."""
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba is not available here")
    a = make(2, 4, 300, 32, 32, seed=5)
    out = titans_update(**a, backend="numba")
    assert torch.isfinite(out[0]).all()
    check_all(out, ref64(16, **a), 5e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    a = make(1, 2, 0, 8, 4, states=False)
    o, M, S = titans_update(**a, backend=backend)
    assert o.shape == (1, 2, 0, 4) and torch.equal(M, torch.zeros(1, 2, 8, 4)) and torch.equal(S, M)


def test_reference_is_the_rule_in_matrices():
    """The spec's lines, written with one head's matrices: u = 2 k (M'ᵀk − v)ᵀ, S = ηS − θu, M = (1−α)M + S."""
    a = make(1, 1, 7, 4, 3, seed=12)
    M, S = a["M0"][0, 0].double(), a["S0"][0, 0].double()
    outs = []
    for t in range(7):
        if t % 3 == 0:
            M_start = M
        k, v = a["k"][0, 0, t].double(), a["v"][0, 0, t].double()
        u = 2 * torch.outer(k, M_start.T @ k - v)
        S = a["eta"][0, 0, t].double() * S - a["theta"][0, 0, t].double() * u
        M = (1 - a["alpha"][0, 0, t].double()) * M + S
        outs.append(M.T @ a["q"][0, 0, t].double())
    o_ref, M_ref, S_ref = reference(**a, chunk_size=3)
    close(o_ref[0, 0].double(), torch.stack(outs), 1e-5)
    close(M_ref[0, 0].double(), M, 1e-5)
    close(S_ref[0, 0].double(), S, 1e-5)


# ---- errors name the argument, what was expected and what was given ------------------------------------


def _args():
    return make(2, 3, 5, 8, 4, seed=1)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be 4-D \(B, H, T, Dk\), got shape \(3, 5, 8\)"),
        (lambda a: {**a, "v": a["v"][0]}, ValueError, r"v must be 4-D \(B, H, T, Dv\)"),
        (lambda a: {**a, "q": a["q"][..., :4]}, ValueError, r"q must have the shape of k .* = \(2, 3, 5, 8\)"),
        (lambda a: {**a, "v": a["v"][:, :, :4]}, ValueError, r"v must have shape \(B, H, T, Dv\) with"),
        (lambda a: {**a, "k": a["k"].half()}, TypeError, r"one dtype, got q torch.float32, k torch.float16"),
        (lambda a: {**a, "v": a["v"].long()}, TypeError, r"v must hold floating-point numbers"),
        (lambda a: {**a, "theta": a["theta"][..., :4]}, ValueError,
         r"theta must have shape \(2, 3, 5\), got \(2, 3, 4\)"),
        (lambda a: {**a, "theta": a["theta"] + 1.5}, ValueError, r"theta must lie in \[0, 1\], got values from"),
        (lambda a: {**a, "theta": a["theta"] - 1.5}, ValueError, r"theta must lie in \[0, 1\]"),
        (lambda a: {**a, "theta": a["theta"].long()}, TypeError, r"theta must hold floating-point numbers"),
        (lambda a: {**a, "eta": a["eta"] + 1.01}, ValueError, r"eta must lie in \[0, 1\]"),
        (lambda a: {**a, "eta": torch.full((2, 3, 5), float("nan"))}, ValueError, r"eta must lie in \[0, 1\]"),
        (lambda a: {**a, "alpha": a["alpha"] - 0.5}, ValueError, r"alpha must lie in \[0, 1\]"),
        (lambda a: {**a, "alpha": torch.ones(2, 3)}, ValueError, r"alpha must have shape \(2, 3, 5\)"),
        (lambda a: {**a, "M0": a["M0"][..., :3]}, ValueError, r"M0 must have shape \(B, H, Dk, Dv\) = \(2, 3, 8, 4\)"),
        (lambda a: {**a, "S0": a["S0"].transpose(2, 3)}, ValueError, r"S0 must have shape \(B, H, Dk, Dv\)"),
        (lambda a: {**a, "M0": a["M0"].int()}, TypeError, r"M0 must be a floating-point torch.Tensor"),
        (lambda a: {**a, "eta": None}, ValueError, r"S0 \(the momentum\) needs eta"),
        (lambda a: {**a, "chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
        (lambda a: {**a, "chunk_size": 16.0}, ValueError, r"chunk_size must be a positive int, got 16.0"),
        (lambda a: {**a, "chunk_size": True}, ValueError, r"chunk_size must be a positive int, got True"),
        (lambda a: {**a, "backend": "cuda"}, ValueError, r"backend must be one of .*got 'cuda'"),
    ],
)
def test_bad_inputs(change, error, message):
    with pytest.raises(error, match=message):
        titans_update(**change(_args()))


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
def test_triton_chunk_too_large():
    a = make(1, 1, 300, 8, 8, seed=0)
    with pytest.raises(ValueError, match=r"backend='triton' supports chunk_size up to 128"):
        titans_update(**a, chunk_size=256, backend="triton")
