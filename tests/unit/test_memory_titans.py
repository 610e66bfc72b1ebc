"""Titans (and its MAG/MAC hybrids), Atlas and MoM: specifications, closed forms, continuation, routing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.memory.atlas import Atlas, newton_schulz, omega_chunk, omega_recurrent, power_features
from labkit.memory.base import MemoryState, merge_heads, split_heads
from labkit.memory.mom import MoM, load_balancing_loss, route
from labkit.memory.titans import (
    KINDS,
    Titans,
    TitansMAC,
    TitansMAG,
    init_memory,
    linear_scan,
    memory_grad,
    memory_loss,
    titans_chunk,
    titans_recurrent,
)

D64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(B=2, H=2, T=11, D=4, seed=0):
    """Unit q, k; values; gates in safe ranges (θ small enough that the MLP memory does not diverge)."""
    g = _gen(seed)
    q = F.normalize(torch.randn(B, H, T, D, generator=g, dtype=D64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, D, generator=g, dtype=D64), dim=-1)
    v = torch.randn(B, H, T, D, generator=g, dtype=D64)
    theta = 0.3 * torch.rand(B, H, T, generator=g, dtype=D64)
    eta = torch.rand(B, H, T, generator=g, dtype=D64)
    alpha = 0.1 * torch.rand(B, H, T, generator=g, dtype=D64)
    return q, k, v, theta, eta, alpha


def _memory0(kind, B=2, H=2, D=4, seed=0):
    torch.manual_seed(seed)
    return {n: w.to(D64).expand(B, *w.shape) for n, w in init_memory(kind, H, D, D, hidden=2).items()}


# ---------------------------------------------------------------------------------------------------------
# Titans: closed forms and the chunk rule


def test_linear_scan_is_the_recurrence():
    g = _gen(1)
    a, b, x0 = torch.rand(2, 3, 5, generator=g), torch.randn(2, 3, 5, 4, 2, generator=g), torch.randn(2, 3, 4, 2)
    xs, x = [], x0
    for t in range(5):
        x = a[:, :, t, None, None] * x + b[:, :, t]
        xs.append(x)
    torch.testing.assert_close(linear_scan(a, b, x0), torch.stack(xs, dim=2))
    torch.testing.assert_close(linear_scan(None, b, x0), x0[:, :, None] + b.cumsum(dim=2))


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_gradients_equal_autograd(kind):
    """memory_grad on a single example (one batch element, head and token) equals autograd's gradient."""
    M = {n: w[:1].clone() for n, w in _memory0(kind, B=1, H=1).items()}  # (1, 1, ...)
    if kind == "linear":
        M["W"] = torch.randn_like(M["W"])  # a non-zero matrix: the error is not just −v
    _, k, v, *_ = _inputs(B=1, H=1, T=1)
    leaves = {n: w.clone().requires_grad_(True) for n, w in M.items()}
    loss = memory_loss(kind, leaves, k, v).sum()
    auto = torch.autograd.grad(loss, list(leaves.values()))
    closed = memory_grad(kind, M, k, v)
    for (n, a) in zip(leaves, auto):
        torch.testing.assert_close(closed[n][:, :, 0], a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4])
@pytest.mark.parametrize("momentum,forgetting", [(True, True), (False, False)])
def test_chunked_equals_recurrent_spec(kind, chunk_size, momentum, forgetting):
    q, k, v, theta, eta, alpha = _inputs()
    M0 = _memory0(kind)
    S0 = {n: torch.zeros_like(w) for n, w in M0.items()} if momentum else None
    eta, alpha = (eta if momentum else None), (alpha if forgetting else None)
    o1, M1, S1 = titans_recurrent(q, k, v, theta, eta, alpha, M0, S0, kind=kind, chunk_size=chunk_size)
    o2, M2, S2, _ = titans_chunk(q, k, v, theta, eta, alpha, M0, S0, kind=kind, chunk_size=chunk_size)
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    for n in M0:
        torch.testing.assert_close(M2[n], M1[n], rtol=1e-10, atol=1e-10)
        if momentum:
            torch.testing.assert_close(S2[n], S1[n], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("momentum,forgetting", [(True, True), (False, True), (True, False)])
def test_chunked_gradients_equal_recurrent_spec(kind, momentum, forgetting):
    """Backward through the chunk form (decay products, momentum scan, closed-form gradients) equals backward
    through the token loop, for every input: q, k, v, the gates (α included) and the memory's weights."""
    q, k, v, theta, eta, alpha = _inputs(T=9)
    M0 = {n: w + 0.1 * torch.randn(w.shape, generator=_gen(7), dtype=D64) for n, w in _memory0(kind).items()}
    eta, alpha = (eta if momentum else None), (alpha if forgetting else None)
    S0 = {n: 0.1 * torch.randn(w.shape, generator=_gen(8), dtype=D64) for n, w in M0.items()} if momentum else None
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, theta, eta, alpha, *M0.values()) if x is not None]
    weights = dict(zip(M0, leaves[-len(M0):]))
    gates = iter(leaves[3:-len(M0)])
    theta_, eta_, alpha_ = next(gates), (next(gates) if momentum else None), (next(gates) if forgetting else None)
    w = torch.randn(2, 2, 9, 4, generator=_gen(9), dtype=D64)
    o1, *_ = titans_recurrent(*leaves[:3], theta_, eta_, alpha_, weights, S0, kind=kind, chunk_size=4)
    o2, *_ = titans_chunk(*leaves[:3], theta_, eta_, alpha_, weights, S0, kind=kind, chunk_size=4)
    g1 = torch.autograd.grad((o1 * w).sum(), leaves)
    g2 = torch.autograd.grad((o2 * w).sum(), leaves)
    for a, b in zip(g2, g1):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


FRESH_CHUNKED = {
    **{f"{kind}{'_momentum' * mom}{'_forgetting' * fg}": (kind, mom, fg) for kind in KINDS
       for mom in (False, True) for fg in (False, True)},
    "atlas": ("atlas", True, True),
}


def _fresh_chunked(name: str, d_model: int = 16):
    """A fresh mixer with chunks of 16 (Atlas: and a window of 4) whose output projection is the identity."""
    kind, momentum, forgetting = FRESH_CHUNKED[name]
    torch.manual_seed(0)
    if kind == "atlas":
        m = Atlas(d_model, 2, window=4, degree=2, chunk_size=16)
    else:
        m = Titans(d_model, 2, memory=kind, chunk_size=16, momentum=momentum, forgetting=forgetting)
    with torch.no_grad():
        m.o_proj.weight.copy_(torch.eye(d_model))
    return m.to(D64)


@pytest.mark.parametrize("name", list(FRESH_CHUNKED))
def test_fresh_chunked_memory_reads_stay_of_the_size_of_the_values(name):
    """Random tokens through a fresh memory with C = 16: the reads M_t(q_t) must stay of the order of the
    values written. Inside a chunk all C gradients are taken at the chunk's start weights, so a chunk step is
    one gradient step on Σ_i θ_i ℓ_i; with θ starting at max_lr/2 = 1/2 it expanded the memory at every chunk
    (reads 30x to 10^41x the values here; on MQAR the regime in which Titans with forgetting never left
    chance). θ now starts at 1/C (Atlas: 1/(C·c))."""
    m = _fresh_chunked(name)
    x = torch.randn(2, 64, 16, generator=_gen(3), dtype=D64)
    with torch.no_grad():
        y, _ = m(x)
        v = (m.v_proj if name == "atlas" else m.ltm.v_proj)(x)
    assert torch.isfinite(y).all()
    assert y.norm(dim=-1).max() < 2 * v.norm(dim=-1).max(), (y.norm(dim=-1).max() / v.norm(dim=-1).max()).item()


@pytest.mark.parametrize("name", [n for n, (_, momentum, _) in FRESH_CHUNKED.items() if not momentum])
def test_fresh_chunk_step_does_not_expand_on_a_repeated_key(name):
    """The worst case for the chunk rule, one key repeated (all C gradients of a chunk point the same way).
    Without momentum a chunk step maps the error e = M(k) − v to about (a_C − 2 Σ θ_i) e: with θ starting at
    1/C that is ≈ −1 (the edge, the error flips sign per chunk), and with θ = 1/2 it was −15 (×10⁴ over 64
    tokens). The tokens are tiny, so the gates sit at their start; the MLP memory's curvature only helps."""
    m = _fresh_chunked(name, d_model=8)
    kind = FRESH_CHUNKED[name][0]
    x = 1e-3 * torch.randn(1, 1, 8, generator=_gen(4), dtype=D64).expand(1, 64, 8)
    with torch.no_grad():
        _, state = m(x)
        ltm = m.ltm
        k = F.normalize(split_heads(ltm.k_proj(x[:, :1]), 2), dim=-1)
        v = split_heads(ltm.v_proj(x[:, :1]), 2)
        error0, error = (memory_loss(kind, W, k, v).sqrt()
                         for W in (ltm.current(ltm.initial(1)), ltm.current(state.tensors)))
    assert (error < 1.1 * error0).all(), (error / error0).flatten().tolist()


def test_chunk_size_one_is_online_sgd_with_momentum_and_decay():
    """chunk_size = 1: every gradient at the latest memory; a hand-written per-token loop, matrix by matrix."""
    q, k, v, theta, eta, alpha = _inputs(B=1, H=1, T=9)
    M0 = torch.randn(4, 4, generator=_gen(3), dtype=D64)
    M, S = M0, torch.zeros(4, 4, dtype=D64)
    outs = []
    for t in range(9):
        kt, vt = k[0, 0, t], v[0, 0, t]
        grad = 2 * torch.outer(kt, M.T @ kt - vt)  # ∇_M ‖Mᵀk − v‖²
        S = eta[0, 0, t] * S - theta[0, 0, t] * grad
        M = (1 - alpha[0, 0, t]) * M + S
        outs.append(M.T @ q[0, 0, t])
    W0 = {"W": M0[None, None]}
    o, M_end, S_end, _ = titans_chunk(q, k, v, theta, eta, alpha, W0, {"W": torch.zeros_like(W0["W"])},
                                      chunk_size=1)
    torch.testing.assert_close(o[0, 0], torch.stack(outs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(M_end["W"][0, 0], M, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S_end["W"][0, 0], S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_module_equals_recurrent_spec(kind):
    torch.manual_seed(0)
    m = Titans(8, 2, memory=kind, chunk_size=4).to(D64)
    x = torch.randn(2, 11, 8, dtype=D64)
    y, _ = m(x)
    ltm = m.ltm
    k = F.normalize(split_heads(ltm.k_proj(x), 2), dim=-1)
    theta, eta, alpha = ltm.gates(x)
    M0 = {n: w.expand(2, *w.shape) for n, w in ltm.init.items()}
    S0 = {n: torch.zeros_like(w) for n, w in M0.items()}
    o, _, _ = titans_recurrent(ltm.queries(x), k, split_heads(ltm.v_proj(x), 2), theta, eta, alpha, M0, S0,
                               kind=kind, chunk_size=4)
    torch.testing.assert_close(y, m.o_proj(merge_heads(o)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_repeating_a_pair_memorises_it(kind):
    """The same token over and over: the memory's loss ‖M(k) − v‖² on it falls at every step (plain online
    gradient descent: no momentum, which may overshoot, and no forgetting, which stops it at a floor)."""
    torch.manual_seed(0)
    m = Titans(8, 2, memory=kind, chunk_size=1, momentum=False, forgetting=False, max_lr=1.0).to(D64)
    x = torch.randn(1, 1, 8, dtype=D64)
    ltm = m.ltm
    k = F.normalize(split_heads(ltm.k_proj(x), 2), dim=-1)
    v = split_heads(ltm.v_proj(x), 2)
    losses, state = [], None
    with torch.no_grad():
        tensors = ltm.initial(1)
        losses.append(memory_loss(kind, ltm.current(tensors), k, v).sum().item())
        for _ in range(25):
            _, state = m(x, state)
            losses.append(memory_loss(kind, ltm.current(state.tensors), k, v).sum().item())
    assert all(b < a or b < 1e-20 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-3 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------
# every mixer of this file: gradients, continuation, state size, configuration checks


MIXERS = {
    "titans_linear": lambda: Titans(8, 2, memory="linear", chunk_size=4),
    "titans_mlp": lambda: Titans(8, 2, memory="mlp", chunk_size=4),
    "titans_mlp_plain": lambda: Titans(8, 2, memory="mlp", chunk_size=3, momentum=False, forgetting=False),
    "titans_mag": lambda: TitansMAG(8, 2, window=5, chunk_size=4),
    "titans_mac": lambda: TitansMAC(8, 2, chunk_size=4, memory="mlp"),
    "titans_mac_seg": lambda: TitansMAC(8, 2, chunk_size=4, segment=6, n_persistent=2),
    "atlas": lambda: Atlas(8, 2, window=3, degree=2, chunk_size=4),
    "atlas_muon": lambda: Atlas(8, 2, window=2, degree=3, chunk_size=4, muon=True),
    "mom_linear": lambda: MoM(8, 2),
    "mom_delta": lambda: MoM(8, 2, memory="delta", shared_memory=False, top_k=1, n_memories=3),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    m = MIXERS[name]()
    x = torch.randn(2, 10, 8)
    y, _ = m(x)
    loss = y.square().mean() + getattr(m, "aux_loss", 0)
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(MIXERS))
def test_continuation_is_exact_at_any_split(name):
    """Chunk boundaries (4, 8) and points inside chunks/segments/windows (1, 6, 9), and token by token."""
    torch.manual_seed(0)
    m = MIXERS[name]().to(D64)
    x = torch.randn(2, 11, 8, dtype=D64)
    y, state = m(x)
    assert y.shape == x.shape and state.seen == 11 and state.owner == m.fingerprint
    assert state.numel() == 2 * m.state_size(11)
    for t in (1, 4, 6, 8, 9):
        y1, s1 = m(x[:, :t])
        assert s1.numel() == 2 * m.state_size(t)
        y2, s2 = m(x[:, t:], s1)
        torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-10, atol=1e-10)
        assert s2.seen == 11
    s, outs = None, []
    for t in range(11):
        y_t, s = m(x[:, t:t + 1], s)
        outs.append(y_t)
    torch.testing.assert_close(torch.cat(outs, dim=1), y, rtol=1e-10, atol=1e-10)


def test_states_of_other_configurations_are_rejected():
    x = torch.randn(1, 3, 8)
    for a, b in ((Titans(8, 2, chunk_size=4), Titans(8, 2, chunk_size=8)),
                 (Titans(8, 2), Titans(8, 2, memory="mlp")),
                 (Atlas(8, 2, window=2), Atlas(8, 2, window=3)),
                 (MoM(8, 2, top_k=1), MoM(8, 2, top_k=2)),
                 (TitansMAG(8, 2), TitansMAC(8, 2))):
        _, state = a(x)
        with pytest.raises(ValueError, match="state was made by"):
            b(x, state)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="memory must be one of"):
        Titans(8, memory="deep")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        Titans(8, chunk_size=0)
    with pytest.raises(ValueError, match="max_lr"):
        Titans(8, max_lr=-1.0)
    with pytest.raises(ValueError, match="window must be a positive int"):
        Atlas(8, window=0)
    with pytest.raises(ValueError, match=r"top_k must be an int in \[1, n_memories=2\], got 3"):
        MoM(8, n_memories=2, top_k=3)
    q, k, v, theta, eta, alpha = _inputs()
    M0 = _memory0("linear")
    with pytest.raises(ValueError, match="start .* is required when offset > 0"):
        titans_chunk(q, k, v, theta, None, None, M0, chunk_size=4, offset=2)
    with pytest.raises(ValueError, match="eta and momentum go together"):
        titans_chunk(q, k, v, theta, eta, None, M0, chunk_size=4)
    with pytest.raises(ValueError, match="theta must lie in"):
        titans_chunk(q, k, v, -theta, None, None, M0, chunk_size=4)


# ---------------------------------------------------------------------------------------------------------
# Atlas


def test_power_features():
    k = F.normalize(torch.randn(3, 5, dtype=D64), dim=-1)
    torch.testing.assert_close(power_features(k, 1), k)
    phi = power_features(k, 3)
    assert phi.shape == (3, 15)
    torch.testing.assert_close(phi.norm(dim=-1), torch.ones(3, dtype=D64))


def test_newton_schulz_orthogonalises():
    X = torch.randn(4, 12, 6, dtype=D64)
    s = torch.linalg.svdvals(newton_schulz(X))
    assert bool((s > 0.6).all() and (s < 1.3).all()), s
    torch.testing.assert_close(newton_schulz(-X), -newton_schulz(X))


@pytest.mark.parametrize("muon", [False, True])
@pytest.mark.parametrize("window,chunk_size", [(1, 1), (3, 1), (3, 4), (5, 3)])
def test_omega_chunk_equals_recurrent_spec(muon, window, chunk_size):
    q, k, v, theta, eta, alpha = _inputs(seed=4)
    gamma = torch.rand(theta.shape, generator=_gen(5), dtype=D64)
    M0 = torch.randn(2, 2, 4, 4, generator=_gen(6), dtype=D64)
    S0 = torch.zeros_like(M0)
    o1, M1, S1 = omega_recurrent(q, k, v, gamma, theta, eta, alpha, M0, S0, window=window, chunk_size=chunk_size,
                                 muon=muon)
    o2, M2, S2, _, _ = omega_chunk(q, k, v, gamma, theta, eta, alpha, M0, S0, window=window,
                                   chunk_size=chunk_size, muon=muon)
    for a, b in ((o2, o1), (M2, M1), (S2, S1)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_atlas_with_window_1_degree_1_is_titans_linear():
    torch.manual_seed(0)
    titans = Titans(8, 2, memory="linear", chunk_size=4).to(D64)
    atlas = Atlas(8, 2, window=1, degree=1, chunk_size=4).to(D64)
    atlas.load_state_dict({n.removeprefix("ltm."): p for n, p in titans.state_dict().items()})
    x = torch.randn(2, 11, 8, dtype=D64)
    (y1, s1), (y2, s2) = titans(x), atlas(x)
    torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2["memory.W"], s1["memory.W"], rtol=1e-12, atol=1e-12)


def test_atlas_window_buffer_holds_the_last_tokens():
    torch.manual_seed(0)
    m = Atlas(8, 2, window=4, degree=2, chunk_size=4).to(D64)
    x = torch.randn(2, 6, 8, dtype=D64)
    _, state = m(x)
    k = power_features(F.normalize(split_heads(m.k_proj(x), 2), dim=-1), 2)
    torch.testing.assert_close(state["window.k"], k[:, :, -3:])
    _, short = m(x[:, :2])  # fewer tokens than the window: zeros (which write nothing) come first
    assert short["window.k"][:, :, 0].abs().max() == 0


# ---------------------------------------------------------------------------------------------------------
# MoM


def test_routing_weights_sum_to_one_over_the_top_k():
    logits = torch.randn(5, 7, 4, generator=_gen(7))
    weights, routed, probs = route(logits, 2)
    assert (routed.sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 7))
    assert (weights[~routed] == 0).all() and (weights[routed] > 0).all()
    torch.testing.assert_close(probs, logits.softmax(-1))
    top2 = probs.topk(2, dim=-1).values
    torch.testing.assert_close(weights.topk(2, dim=-1).values, top2 / top2.sum(-1, keepdim=True))


@pytest.mark.parametrize("memory", ["linear", "delta"])
@pytest.mark.parametrize("T", [1, 5])
def test_unrouted_memories_stay_unchanged(memory, T):
    torch.manual_seed(0)
    m = MoM(8, 2, n_memories=4, top_k=1, memory=memory).to(D64)
    _, state = m(torch.randn(1, 6, 8, dtype=D64))
    x = torch.randn(1, 2, 8, dtype=D64)[:, [0, 1, 0, 1, 1][:T]]  # two distinct tokens: two memories at most
    _, routed, _ = m.route(x)
    _, after = m(x, state)
    used = routed[0].any(dim=0)  # (n_memories,): got at least one token
    assert (~used).sum() >= (3 if T == 1 else 2)  # top-1 routing
    H = 2
    for j in range(4):
        rows = slice(j * H, (j + 1) * H)
        same = torch.equal(after["S"][:, rows], state["S"][:, rows])
        assert same == (not bool(used[j])), (j, used)
    assert not torch.equal(after["S"][:, -H:], state["S"][:, -H:])  # the shared memory always learns


def test_load_balancing_loss_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    routed = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    f = torch.tensor([3 / 4, 0, 1 / 4])
    P = probs.mean(0)
    torch.testing.assert_close(load_balancing_loss(probs, routed), 3 * (f * P).sum())
    uniform = torch.full((6, 3), 1 / 3)
    balanced = torch.eye(3, dtype=torch.bool).repeat(2, 1)
    torch.testing.assert_close(load_balancing_loss(uniform, balanced), torch.tensor(1.0))
    assert load_balancing_loss(probs, routed) > 1


def test_aux_loss_is_set_every_forward_and_minimal_when_uniform():
    torch.manual_seed(0)
    m = MoM(8, 2, n_memories=4, top_k=2, aux_loss_scale=0.05)
    x = torch.randn(2, 6, 8)
    m(x)
    _, routed, probs = m.route(x)
    torch.testing.assert_close(m.aux_loss, 0.05 * load_balancing_loss(probs.reshape(-1, 4), routed.reshape(-1, 4)))
    assert m.aux_loss.dim() == 0 and m.aux_loss.requires_grad
    with torch.no_grad():
        m.router.weight.zero_()  # every memory equally probable
    m(x)
    torch.testing.assert_close(m.aux_loss, torch.tensor(0.05))


def test_memory_state_is_a_memory_state():
    _, state = Titans(8, 2)(torch.randn(1, 2, 8))
    assert isinstance(state, MemoryState) and isinstance(state.detach(), MemoryState)
