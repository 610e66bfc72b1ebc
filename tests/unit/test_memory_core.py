"""Chapter 3 core mixers: softmax / linear attention, DeltaNet, LSSL: chunked == recurrent, exact continuation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit.memory.attention import SoftmaxAttention
from labkit.memory.base import MemoryState
from labkit.memory.deltanet import DeltaNet, GatedDeltaNet, delta_rule_chunk, delta_rule_recurrent
from labkit.memory.linear import LinearAttention, linear_attention_chunk, linear_attention_recurrent
from labkit.memory.lssl import LSSL, discretize, hippo_legs, ssm_kernel, ssm_recurrent

F64 = torch.float64


def _qkv(T: int, seed: int = 0, B: int = 2, H: int = 2, Dk: int = 4, Dv: int = 3, unit_keys: bool = True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=g, dtype=F64)
    k = torch.randn(B, H, T, Dk, generator=g, dtype=F64)
    if unit_keys:
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=F64)
    beta = torch.sigmoid(torch.randn(B, H, T, generator=g, dtype=F64))
    alpha = torch.sigmoid(torch.randn(B, H, T, generator=g, dtype=F64) + 2)
    S0 = torch.randn(B, H, Dk, Dv, generator=g, dtype=F64)
    return q, k, v, beta, alpha, S0


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-10) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=0), f"max |diff| = {(a - b).abs().max().item():.3g}"


# ---------------------------------------------------------------- functional ops: chunked == recurrent


@pytest.mark.parametrize("T", [1, 7, 16, 33])
@pytest.mark.parametrize("chunk_size", [4, 16])
@pytest.mark.parametrize("with_S0", [False, True])
def test_linear_chunk_equals_recurrent(T, chunk_size, with_S0):
    q, k, v, _, _, S0 = _qkv(T)
    S0 = S0 if with_S0 else None
    o_ref, S_ref = linear_attention_recurrent(q, k, v, S0)
    o, S = linear_attention_chunk(q, k, v, chunk_size, S0)
    _close(o, o_ref)
    _close(S, S_ref)
    o2, _ = linear_attention_chunk(q, k, v, chunk_size, S0, scale=0.5)
    _close(o2, 0.5 * o_ref)


def test_linear_gradients_match():
    leaves = [t.requires_grad_() for t in _qkv(13)[:3]] + [_qkv(13)[5].requires_grad_()]
    q, k, v, S0 = leaves
    grads = []
    for op in (lambda: linear_attention_recurrent(q, k, v, S0), lambda: linear_attention_chunk(q, k, v, 4, S0)):
        o, S = op()
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)).sum() + S.square().sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for g_ref, g in zip(*grads):
        _close(g, g_ref)


@pytest.mark.parametrize("T", [1, 7, 16, 33])
@pytest.mark.parametrize("chunk_size", [4, 16])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("with_S0", [False, True])
def test_delta_chunk_equals_recurrent(T, chunk_size, gated, with_S0):
    q, k, v, beta, alpha, S0 = _qkv(T, seed=T)
    alpha = alpha if gated else None
    S0 = S0 if with_S0 else None
    o_ref, S_ref = delta_rule_recurrent(q, k, v, beta, S0, alpha)
    o, S = delta_rule_chunk(q, k, v, beta, chunk_size, S0, alpha)
    _close(o, o_ref)
    _close(S, S_ref)


@pytest.mark.parametrize("gated", [False, True])
def test_delta_gradients_match(gated):
    q, k, v, beta, alpha, S0 = (t.requires_grad_() for t in _qkv(11, seed=3))
    leaves = [q, k, v, beta, S0] + ([alpha] if gated else [])
    grads = []
    for chunked in (False, True):
        a = alpha if gated else None
        if chunked:
            o, S = delta_rule_chunk(q, k, v, beta, 4, S0, a)
        else:
            o, S = delta_rule_recurrent(q, k, v, beta, S0, a)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)).sum() + S.square().sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for g_ref, g in zip(*grads):
        _close(g, g_ref)


def test_delta_chunk_survives_zero_decay():
    q, k, v, beta, alpha, S0 = _qkv(9, seed=5)
    alpha = alpha.clone()
    alpha[:, :, 4] = 0.0  # a full reset: the memory before token 4 is forgotten
    o_ref, S_ref = delta_rule_recurrent(q, k, v, beta, S0, alpha)
    o, S = delta_rule_chunk(q, k, v, beta, 4, S0, alpha)
    _close(o, o_ref)
    _close(S, S_ref)


def test_delta_rule_is_one_sgd_step():
    q, k, v, beta, alpha, S0 = _qkv(1, seed=7)
    S = S0.clone().requires_grad_()
    loss = 0.5 * (torch.einsum("bhkv,bhk->bhv", S, k[:, :, 0]) - v[:, :, 0]).square().sum()
    (grad,) = torch.autograd.grad(loss, S)  # the loss is a sum over (b, h): each (b, h) gets its own gradient
    _, S1 = delta_rule_recurrent(q, k, v, beta, S0)
    _close(S1, S0 - beta[:, :, 0, None, None] * grad)
    _, S1_gated = delta_rule_recurrent(q, k, v, beta, S0, alpha)  # the gated step starts from α S
    Sa = (alpha[:, :, 0, None, None] * S0).requires_grad_()
    loss = 0.5 * (torch.einsum("bhkv,bhk->bhv", Sa, k[:, :, 0]) - v[:, :, 0]).square().sum()
    (grad,) = torch.autograd.grad(loss, Sa)
    _close(S1_gated, Sa.detach() - beta[:, :, 0, None, None] * grad)


@pytest.mark.parametrize("op", ["recurrent", "chunk"])
def test_delta_rule_stores_and_retrieves(op):
    D, Dv = 6, 3
    keys = torch.linalg.qr(torch.randn(D, D, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    k = keys.T[None, None]  # (1, 1, 6, 6): six orthonormal keys, one per token
    v = torch.randn(1, 1, D, Dv, dtype=F64)
    beta = torch.ones(1, 1, D, dtype=F64)
    S0 = torch.randn(1, 1, D, Dv, dtype=F64)  # old content under every key is overwritten (β = 1)
    if op == "recurrent":
        _, S = delta_rule_recurrent(k, k, v, beta, S0)
    else:
        _, S = delta_rule_chunk(k, k, v, beta, 4, S0)
    read, _ = delta_rule_recurrent(k, k, torch.zeros_like(v), torch.zeros_like(beta), S)  # β = 0: read only
    _close(read, v)


def test_bad_gates_and_shapes_raise():
    q, k, v, beta, alpha, _ = _qkv(5)
    for op in (delta_rule_recurrent, delta_rule_chunk):
        with pytest.raises(ValueError, match="beta"):
            op(q, k, v, beta + 1)
        with pytest.raises(ValueError, match="alpha"):
            op(q, k, v, beta, alpha=-alpha)
        with pytest.raises(ValueError, match="beta"):
            op(q, k, v, beta[:, :, :3])
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule_chunk(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_chunk(q, k, v, chunk_size=2.5)
    with pytest.raises(ValueError, match="v must be"):
        linear_attention_recurrent(q, k, v[:, :, :2])
    with pytest.raises(ValueError, match="S0 must be"):
        linear_attention_chunk(q, k, v, S0=torch.zeros(2, 2, 3, 3, dtype=F64))


# ---------------------------------------------------------------- modules

D_MODEL, HEADS = 8, 2
MODULES = {
    "attention": lambda: SoftmaxAttention(D_MODEL, HEADS),
    "attention_window": lambda: SoftmaxAttention(D_MODEL, HEADS, window=4),
    "linear": lambda: LinearAttention(D_MODEL, HEADS, chunk_size=4),
    "linear_relu_unnormalised": lambda: LinearAttention(D_MODEL, HEADS, feature_map="relu", normalize=False,
                                                        chunk_size=4),
    "deltanet": lambda: DeltaNet(D_MODEL, HEADS, chunk_size=4),
    "gated_deltanet": lambda: GatedDeltaNet(D_MODEL, HEADS, chunk_size=4),
    "lssl": lambda: LSSL(D_MODEL, HEADS, state_dim=6),
}


def _module(name: str, dtype=F64):
    torch.manual_seed(0)
    return MODULES[name]().to(dtype)


@pytest.mark.parametrize("name", list(MODULES))
def test_module_shapes_and_state(name):
    m = _module(name, torch.float32)
    x = torch.randn(3, 10, D_MODEL)
    y, state = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert isinstance(state, MemoryState) and state.owner == m.fingerprint and state.seen == 10
    assert state.numel() == 3 * m.state_size(10)
    _, state = m(x[:, :1], state)
    assert state.seen == 11
    assert m.name in {"attention", "linear", "deltanet", "gated_deltanet", "lssl"}
    y.sum().backward()  # differentiable end to end
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", list(MODULES))
def test_module_continuation_is_exact(name):
    m = _module(name)
    x = torch.randn(2, 11, D_MODEL, dtype=F64)
    y_full, s_full = m(x)
    y_a, s = m(x[:, :5])  # split at t = 5 (not a multiple of the chunk size 4)
    y_b, s = m(x[:, 5:], s)
    _close(torch.cat([y_a, y_b], dim=1), y_full)
    for key in s_full.tensors:
        _close(s.tensors[key], s_full.tensors[key])
    steps, s = [], None
    for t in range(x.shape[1]):  # decoding, one token at a time
        y_t, s = m(x[:, t:t + 1], s)
        steps.append(y_t)
    _close(torch.cat(steps, dim=1), y_full)
    assert s.seen == 11


@pytest.mark.parametrize("name", list(MODULES))
def test_module_continuation_float32(name):
    m = _module(name, torch.float32)
    x = torch.randn(2, 9, D_MODEL)
    y_full, _ = m(x)
    y_a, s = m(x[:, :5])
    y_b, _ = m(x[:, 5:], s)
    _close(torch.cat([y_a, y_b], dim=1), y_full, atol=1e-5)


@pytest.mark.parametrize("make, other", [
    (lambda: DeltaNet(8, 2, chunk_size=4), lambda: DeltaNet(8, 2, chunk_size=8)),
    (lambda: DeltaNet(8, 2), lambda: GatedDeltaNet(8, 2)),
    (lambda: LinearAttention(8, 2), lambda: LinearAttention(8, 2, normalize=False)),
    (lambda: SoftmaxAttention(8, 2), lambda: SoftmaxAttention(8, 2, window=3)),
    (lambda: LSSL(8, 2), lambda: LSSL(8, 2, dt_max=0.5)),
    (lambda: SoftmaxAttention(8, 2), lambda: LinearAttention(8, 2)),
])
def test_state_from_another_config_is_rejected(make, other):
    x = torch.randn(1, 3, 8)
    _, state = make()(x)
    with pytest.raises(ValueError, match="state was made by"):
        other()(x, state)


def test_module_option_errors():
    with pytest.raises(ValueError, match="window"):
        SoftmaxAttention(8, window=0)
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttention(8, feature_map="softmax")
    with pytest.raises(ValueError, match="normalize"):
        LinearAttention(8, feature_map="identity")
    with pytest.raises(ValueError, match="chunk_size"):
        DeltaNet(8, chunk_size=0)
    with pytest.raises(ValueError, match="state_dim"):
        LSSL(8, state_dim=0)
    with pytest.raises(ValueError, match="dt_min"):
        LSSL(8, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="x must be"):
        DeltaNet(8)(torch.randn(2, 3, 4))


def test_state_sizes():
    assert SoftmaxAttention(8, 2).state_size(100) == 2 * 8 * 100
    assert SoftmaxAttention(8, 2, window=16).state_size(100) == 2 * 8 * 16
    assert SoftmaxAttention(8, 2, window=16).state_size(10) == 2 * 8 * 10
    assert LinearAttention(8, 2).state_size(100) == 2 * 4 * 4 + 2 * 4
    assert LinearAttention(8, 2, normalize=False).state_size(100) == 2 * 4 * 4
    assert GatedDeltaNet(8, 2).state_size(100) == 2 * 4 * 4
    assert LSSL(8, 2, state_dim=5).state_size(100) == 8 * 5


def test_gated_deltanet_starts_with_slow_decay():
    m = GatedDeltaNet(16, 4)
    alpha = m.decay(torch.zeros(1, 1, 16))
    assert torch.allclose(alpha[0, :, 0], torch.linspace(0.95, 0.99, 4), atol=1e-6)


@pytest.mark.parametrize("window", [None, 3])
def test_softmax_attention_matches_manual(window):
    m = _module("attention", F64)
    m.window = window
    x = torch.randn(2, 9, D_MODEL, dtype=F64)
    y, _ = m(x)
    B, T, _ = x.shape
    q, k, v = (p(x).view(B, T, HEADS, -1).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    logits = q @ k.transpose(-1, -2) / math.sqrt(D_MODEL // HEADS)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    att = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    _close(y, m.o_proj(att.transpose(1, 2).reshape(B, T, D_MODEL)))


def test_windowed_cache_is_trimmed():
    m = SoftmaxAttention(8, 2, window=4)
    _, s = m(torch.randn(1, 10, 8))
    assert s["k"].shape == (1, 2, 4, 4) and s["v"].shape == (1, 2, 4, 4)


# ---------------------------------------------------------------- LSSL


def test_hippo_legs_formula():
    A, B = hippo_legs(4)
    r = [math.sqrt(2 * n + 1) for n in range(4)]
    expected = torch.tensor([
        [-1.0, 0.0, 0.0, 0.0],
        [-r[1] * r[0], -2.0, 0.0, 0.0],
        [-r[2] * r[0], -r[2] * r[1], -3.0, 0.0],
        [-r[3] * r[0], -r[3] * r[1], -r[3] * r[2], -4.0],
    ], dtype=F64)
    assert A.dtype == F64 and B.dtype == F64
    _close(A, expected, atol=1e-14)
    _close(B, torch.tensor(r, dtype=F64), atol=1e-14)


@pytest.mark.parametrize("method", ["bilinear", "zoh"])
def test_discretisation_is_stable(method):
    A, B = hippo_legs(16)
    dt = torch.tensor([1e-3, 1e-2, 1e-1, 1.0], dtype=F64)
    Ad, Bd = discretize(A, B, dt, method)
    assert Ad.shape == (4, 16, 16) and Bd.shape == (4, 16)
    assert torch.linalg.eigvals(Ad).abs().max() < 1


def test_bilinear_and_zoh_agree_for_small_steps():
    A, B = hippo_legs(8)
    (Ab, Bb), (Az, Bz) = discretize(A, B, 1e-4), discretize(A, B, 1e-4, "zoh")
    _close(Ab, Az, atol=1e-7)
    _close(Bb, Bz, atol=1e-7)
    # zoh against its closed form A⁻¹(exp(dt A) − I) B (A is invertible here)
    _close(Bz, torch.linalg.solve(A, (torch.linalg.matrix_exp(1e-4 * A) - torch.eye(8, dtype=F64)) @ B), 1e-12)


def test_ssm_kernel_is_the_impulse_response():
    A, B = hippo_legs(6)
    Ad, Bd = discretize(A, B, torch.tensor([0.01, 0.1, 0.5], dtype=F64))
    C = torch.randn(3, 6, dtype=F64)
    L = 37
    K = ssm_kernel(Ad, Bd, C, L)
    impulse = torch.zeros(1, 3, L, dtype=F64)
    impulse[..., 0] = 1
    y, _ = ssm_recurrent(Ad, Bd, C, impulse)
    _close(K, y[0], atol=1e-12)


def test_lssl_convolution_with_initial_state_matches_recurrence():
    m = _module("lssl")
    x = torch.randn(2, 12, D_MODEL, dtype=F64)
    _, s = m(x[:, :6])
    y_conv, s_conv = m(x[:, 6:], s)  # T > 1 with a state: convolution plus the free response
    y_rec, s_rec = [], s
    for t in range(6, 12):
        y_t, s_rec = m(x[:, t:t + 1], s_rec)
        y_rec.append(y_t)
    _close(y_conv, torch.cat(y_rec, dim=1))
    _close(s_conv["x"], s_rec["x"])
