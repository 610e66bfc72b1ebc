"""labkit.kernels.delta_rule and delta_step: every available backend against the token-by-token torch
reference (plain and gated, with and without S0), chaining (steps == sequence, split sequences continue
exactly) and the error messages. Triton runs through its CPU interpreter: small shapes, few calls."""

from __future__ import annotations

import pytest
import torch

from labkit.kernels import available_backends, delta_rule, delta_step
from labkit.kernels.delta_rule import reference
from labkit.kernels.delta_step import reference as step_reference

CPU_BACKENDS = available_backends("cpu")
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(name not in CPU_BACKENDS, reason=f"{name} is not available here"))
    for name in ("torch", "numba", "triton")
]
# (B, H, T, Dk, Dv): T=1, T below/at/above the chunk and not a multiple of it, Dk != Dv, odd sizes
SHAPES = [(1, 1, 1, 8, 8), (2, 3, 37, 16, 24), (1, 2, 70, 33, 17)]


def make(B, H, T, Dk, Dv, gated=False, s0=False, dtype=torch.float32, seed=0):
    """L2-normalised keys (the delta rule's stable regime), β in [0, 1], α in [0.5, 1]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, Dk, generator=g), dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g)
    beta = torch.rand(B, H, T, generator=g)
    alpha = 0.5 + 0.5 * torch.rand(B, H, T, generator=g) if gated else None
    S0 = torch.randn(B, H, Dk, Dv, generator=g) if s0 else None
    return q.to(dtype), k.to(dtype), v.to(dtype), beta, alpha, S0


def close(out, ref, tol=2e-5):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def ref64(q, k, v, beta, alpha=None, S0=None, scale=None):
    """The reference in float64: the ground truth the fp32 kernels are held to."""
    d = (None if x is None else x.double() for x in (q, k, v, beta, alpha, S0))
    o, S = reference(*d, scale=scale)
    return o.to(q.dtype), S


# ---- delta_rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}Dk{}Dv{}".format(*s))
@pytest.mark.parametrize("gated, s0", [(False, False), (True, True)], ids=["plain", "gated+S0"])
def test_delta_rule_matches_reference(backend, shape, gated, s0):
    args = make(*shape, gated=gated, s0=s0, seed=shape[2])
    o, S = delta_rule(*args, scale=0.5, chunk_size=16, backend=backend)
    o_ref, S_ref = ref64(*args, scale=0.5)
    close(o, o_ref, 1e-5)
    close(S, S_ref, 1e-5)
    assert S.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gated, s0", [(False, True), (True, False)], ids=["plain+S0", "gated"])
def test_delta_rule_default_chunk(backend, gated, s0):
    """The default chunk of 64 with T = 100: one full chunk and a partial one."""
    args = make(2, 2, 100, 32, 16, gated=gated, s0=s0, seed=9)
    o, S = delta_rule(*args, backend=backend)
    o_ref, S_ref = ref64(*args)
    close(o, o_ref, 2e-5)
    close(S, S_ref, 2e-5)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1000])
def test_numba_any_chunk_size(chunk_size):
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba is not available here")
    args = make(2, 3, 77, 16, 16, gated=True, s0=True, seed=4)
    o, S = delta_rule(*args, chunk_size=chunk_size, backend="numba")
    o_ref, S_ref = ref64(*args)
    close(o, o_ref, 2e-5)
    close(S, S_ref, 2e-5)


def test_numba_long_sequence_threads():
    """Large enough for the parallel Numba kernel; strong decay (α down to 0.05) must not underflow into NaN."""
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba is not available here")
    q, k, v, beta, _, S0 = make(2, 4, 300, 64, 64, s0=True, seed=5)
    alpha = 0.05 + 0.95 * torch.rand(2, 4, 300, generator=torch.Generator().manual_seed(1))
    o, S = delta_rule(q, k, v, beta, alpha, S0, backend="numba")
    o_ref, S_ref = ref64(q, k, v, beta, alpha, S0)
    assert torch.isfinite(o).all()
    close(o, o_ref, 2e-5)
    close(S, S_ref, 2e-5)


def test_gated_with_alpha_one_is_plain():
    args = make(1, 2, 40, 16, 16, s0=True, seed=6)
    q, k, v, beta, _, S0 = args
    for backend in [b for b in ("numba", "triton") if b in CPU_BACKENDS]:
        ones = torch.ones_like(beta)
        o1, S1 = delta_rule(q, k, v, beta, ones, S0, chunk_size=16, backend=backend)
        o0, S0_ = delta_rule(q, k, v, beta, None, S0, chunk_size=16, backend=backend)
        close(o1, o0, 1e-6)
        close(S1, S0_, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_rule_non_contiguous_inputs(backend):
    B, H, T, Dk, Dv = 2, 3, 21, 16, 8
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, T, H, Dk, generator=g).transpose(1, 2)
    k = torch.nn.functional.normalize(torch.randn(H, B, T, Dk, generator=g), dim=-1).transpose(0, 1)
    v = torch.randn(B, H, T, 2 * Dv, generator=g)[..., ::2]
    beta = torch.rand(B, T, H, generator=g).transpose(1, 2)
    alpha = (0.5 + 0.5 * torch.rand(B, H, 2 * T, generator=g))[..., ::2]
    S0 = torch.randn(B, H, Dv, Dk, generator=g).transpose(2, 3)
    assert not any(x.is_contiguous() for x in (q, k, v, beta, alpha, S0))
    o, S = delta_rule(q, k, v, beta, alpha, S0, chunk_size=16, backend=backend)
    o_ref, S_ref = ref64(q, k, v, beta, alpha, S0)
    close(o, o_ref, 1e-5)
    close(S, S_ref, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_rule_half_precision_in_half_out(backend):
    args = make(1, 2, 33, 16, 16, gated=True, s0=True, dtype=torch.float16, seed=2)
    o, S = delta_rule(*args, chunk_size=16, backend=backend)
    o_ref, S_ref = reference(*args)  # fp32 inside from the same fp16 inputs
    assert o.dtype == torch.float16 and S.dtype == torch.float32
    close(o, o_ref, 2e-3)
    close(S, S_ref, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_continues_exactly(backend):
    """delta_rule(x[:t]) then delta_rule(x[t:], S0=S_t) == delta_rule(x) (t not on a chunk boundary)."""
    q, k, v, beta, alpha, S0 = make(1, 2, 45, 16, 16, gated=True, s0=True, seed=8)
    o, S = delta_rule(q, k, v, beta, alpha, S0, chunk_size=16, backend=backend)
    t = 19
    o1, S1 = delta_rule(q[:, :, :t], k[:, :, :t], v[:, :, :t], beta[:, :, :t], alpha[:, :, :t], S0,
                        chunk_size=16, backend=backend)
    o2, S2 = delta_rule(q[:, :, t:], k[:, :, t:], v[:, :, t:], beta[:, :, t:], alpha[:, :, t:], S1,
                        chunk_size=16, backend=backend)
    close(torch.cat([o1, o2], dim=2), o, 1e-5)
    close(S2, S, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_equal_the_sequence(backend):
    """T successive delta_step calls == one delta_rule over the T tokens (outputs and final state)."""
    q, k, v, beta, alpha, S = make(2, 2, 12, 8, 12, gated=True, s0=True, seed=10)
    o_seq, S_seq = delta_rule(q, k, v, beta, alpha, S, scale=0.3, backend=backend)
    outs = []
    for t in range(q.shape[2]):
        o_t, S = delta_step(q[:, :, t], k[:, :, t], v[:, :, t], S, beta[:, :, t], alpha[:, :, t], scale=0.3,
                            backend=backend)
        outs.append(o_t)
    close(torch.stack(outs, dim=2), o_seq, 1e-5)
    close(S, S_seq, 1e-5)


def test_reference_matches_the_matrix_form():
    """The spec's first line, S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, written with matrices."""
    q, k, v, beta, alpha, S = make(1, 1, 6, 4, 3, gated=True, s0=True, seed=11)
    S, S_ref0 = S.double()[0, 0], S
    outs = []
    for t in range(6):
        kt, vt = k[0, 0, t].double(), v[0, 0, t].double()
        b, a = beta[0, 0, t].double(), alpha[0, 0, t].double()
        S = a * (torch.eye(4, dtype=S.dtype) - b * torch.outer(kt, kt)) @ S + b * torch.outer(kt, vt)
        outs.append(S.T @ q[0, 0, t].double())
    o_ref, S_ref = reference(q, k, v, beta, alpha, S_ref0)
    close(o_ref[0, 0].double(), torch.stack(outs), 1e-5)
    close(S_ref[0, 0].double(), S, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_rule_empty(backend):
    q, k, v, beta, _, _ = make(1, 2, 0, 8, 4)
    o, S = delta_rule(q, k, v, beta, backend=backend)
    assert o.shape == (1, 2, 0, 4) and torch.equal(S, torch.zeros(1, 2, 8, 4))


# ---- delta_step ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (2, 3, 17, 40), (2, 16, 128, 128)],
                         ids=lambda s: "B{}H{}Dk{}Dv{}".format(*s))
@pytest.mark.parametrize("rule", ["linear", "gated-linear", "delta", "gated-delta"])
def test_delta_step_matches_reference(backend, shape, rule):
    B, H, Dk, Dv = shape
    g = torch.Generator().manual_seed(Dk)
    q, k = torch.randn(B, H, Dk, generator=g), torch.nn.functional.normalize(torch.randn(B, H, Dk, generator=g), dim=-1)
    v, S = torch.randn(B, H, Dv, generator=g), torch.randn(B, H, Dk, Dv, generator=g)
    beta = torch.rand(B, H, generator=g) if "delta" in rule else None
    alpha = 0.5 + 0.5 * torch.rand(B, H, generator=g) if "gated" in rule else None
    S_before = S.clone()
    o, S_new = delta_step(q, k, v, S, beta, alpha, scale=0.7, backend=backend)
    o_ref, S_ref = step_reference(*(x.double() for x in (q, k, v, S)), None if beta is None else beta.double(),
                                  None if alpha is None else alpha.double(), scale=0.7)
    close(o, o_ref.float(), 1e-5)
    close(S_new, S_ref, 1e-5)
    assert torch.equal(S, S_before)  # a new state; the old one is left alone


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta_on", [False, True], ids=["linear", "delta"])
def test_delta_step_inplace(backend, beta_on):
    """inplace=True overwrites S (and returns it) with exactly the state a fresh call returns."""
    g = torch.Generator().manual_seed(14)
    q, k = torch.randn(2, 3, 24, generator=g), torch.nn.functional.normalize(torch.randn(2, 3, 24, generator=g), dim=-1)
    v, S = torch.randn(2, 3, 40, generator=g), torch.randn(2, 3, 24, 40, generator=g)
    beta, alpha = (torch.rand(2, 3, generator=g) if beta_on else None), 0.5 + 0.5 * torch.rand(2, 3, generator=g)
    o_ref, S_ref = delta_step(q, k, v, S, beta, alpha, backend=backend)
    o, S_new = delta_step(q, k, v, S, beta, alpha, inplace=True, backend=backend)
    assert S_new is S
    close(o, o_ref, 0)
    close(S, S_ref, 0)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="triton is not importable or not interpreted here")
def test_triton_step_column_blocks():
    from labkit.kernels.delta_step import triton_delta_step

    g = torch.Generator().manual_seed(12)
    q, k, v = torch.randn(2, 2, 24, generator=g), torch.randn(2, 2, 24, generator=g), torch.randn(2, 2, 50, generator=g)
    S, beta = torch.randn(2, 2, 24, 50, generator=g), torch.rand(2, 2, generator=g)
    o, S_new = triton_delta_step(q, k, v, S, beta, None, None, block_v=16)  # 4 blocks, the last one partial
    o_ref, S_ref = step_reference(q, k, v, S, beta)
    close(o, o_ref)
    close(S_new, S_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_step_non_contiguous_half(backend):
    g = torch.Generator().manual_seed(13)
    q = torch.randn(3, 2, 16, generator=g).transpose(0, 1).half()
    k = torch.nn.functional.normalize(torch.randn(2, 3, 32, generator=g)[..., ::2], dim=-1).half()
    v = torch.randn(2, 3, 8, generator=g).half()
    S = torch.randn(2, 3, 8, 16, generator=g).transpose(2, 3)
    beta = torch.rand(3, 2, generator=g).T
    o, S_new = delta_step(q, k, v, S, beta, backend=backend)
    o_ref, S_ref = step_reference(q, k, v, S, beta)
    assert o.dtype == torch.float16 and S_new.dtype == torch.float32
    close(o, o_ref, 2e-3)
    close(S_new, S_ref, 1e-5)


# ---- errors name the argument, what was expected and what was given ------------------------------------


def _rule_args():
    q, k, v, beta, alpha, S0 = make(2, 3, 5, 8, 4, gated=True, s0=True)
    return {"q": q, "k": k, "v": v, "beta": beta, "alpha": alpha, "S0": S0}


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, ValueError, r"q must be 4-D \(B, H, T, Dk\), got shape \(3, 5, 8\)"),
        (lambda a: {**a, "v": a["v"][0]}, ValueError, r"v must be 4-D \(B, H, T, Dv\)"),
        (lambda a: {**a, "q": a["q"][..., :4]}, ValueError, r"q must have the shape of k .* = \(2, 3, 5, 8\)"),
        (lambda a: {**a, "v": a["v"][:, :, :4]}, ValueError, r"v must have shape \(B, H, T, Dv\) with"),
        (lambda a: {**a, "k": a["k"].half()}, TypeError, r"one dtype, got q torch.float32, k torch.float16"),
        (lambda a: {**a, "v": a["v"].long()}, TypeError, r"v must hold floating-point numbers"),
        (lambda a: {**a, "beta": a["beta"][..., :4]}, ValueError, r"beta must have shape \(2, 3, 5\), got \(2, 3, 4\)"),
        (lambda a: {**a, "beta": a["beta"] + 1.5}, ValueError, r"beta must lie in \[0, 1\], got values from"),
        (lambda a: {**a, "beta": a["beta"] - 1.5}, ValueError, r"beta must lie in \[0, 1\]"),
        (lambda a: {**a, "alpha": torch.zeros(2, 3, 5)}, ValueError, r"alpha must lie in \(0, 1\], got values from 0"),
        (lambda a: {**a, "alpha": torch.full((2, 3, 5), 1.01)}, ValueError, r"alpha must lie in \(0, 1\]"),
        (lambda a: {**a, "alpha": torch.ones(2, 3)}, ValueError, r"alpha must have shape \(2, 3, 5\)"),
        (lambda a: {**a, "S0": a["S0"][..., :3]}, ValueError, r"S0 must have shape \(B, H, Dk, Dv\) = \(2, 3, 8, 4\)"),
        (lambda a: {**a, "chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
        (lambda a: {**a, "chunk_size": 16.0}, ValueError, r"chunk_size must be a positive int, got 16.0"),
        (lambda a: {**a, "scale": float("nan")}, ValueError, r"scale must be finite"),
        (lambda a: {**a, "backend": "cuda"}, ValueError, r"backend must be one of .*got 'cuda'"),
    ],
)
def test_delta_rule_bad_inputs(change, error, message):
    with pytest.raises(error, match=message):
        delta_rule(**change(_rule_args()))


def _step_args():
    g = torch.Generator().manual_seed(0)
    return {"q": torch.randn(2, 3, 8, generator=g), "k": torch.randn(2, 3, 8, generator=g),
            "v": torch.randn(2, 3, 4, generator=g), "S": torch.randn(2, 3, 8, 4, generator=g),
            "beta": torch.rand(2, 3, generator=g), "alpha": torch.rand(2, 3, generator=g) * 0.5 + 0.5}


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "S": a["S"][0]}, ValueError, r"S must be 4-D \(B, H, Dk, Dv\), got shape \(3, 8, 4\)"),
        (lambda a: {**a, "q": a["q"][..., :5]}, ValueError, r"q must have shape \(2, 3, 8\) to match S"),
        (lambda a: {**a, "v": a["v"][None]}, ValueError, r"v must be 3-D \(B, H, Dv\)"),
        (lambda a: {**a, "beta": a["beta"] * 2 + 0.1}, ValueError, r"beta must lie in \[0, 1\]"),
        (lambda a: {**a, "alpha": a["alpha"] * 0}, ValueError, r"alpha must lie in \(0, 1\]"),
        (lambda a: {**a, "beta": a["beta"][0]}, ValueError, r"beta must have shape \(2, 3\)"),
        (lambda a: {**a, "S": a["S"].int()}, TypeError, r"S must hold floating-point numbers"),
        (lambda a: {**a, "backend": "jax"}, ValueError, r"backend must be one of"),
        (lambda a: {**a, "S": a["S"].double(), "inplace": True}, ValueError, r"inplace=True needs S .*float64"),
        (lambda a: {**a, "S": a["S"].transpose(0, 1).contiguous().transpose(0, 1), "inplace": True},
         ValueError, r"inplace=True needs S .*\(not contiguous\)"),
    ],
)
def test_delta_step_bad_inputs(change, error, message):
    with pytest.raises(error, match=message):
        delta_step(**change(_step_args()))
