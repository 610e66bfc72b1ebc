"""DeltaNet and Gated DeltaNet: the linear-attention memory S, written by the delta rule (and decayed).

Linear attention only adds: an old value stored under key k stays there and blurs every later read of k.
The delta rule first reads what the memory holds for k_t and writes only the correction:

    v_new = β_t (v_t − S_{t-1}ᵀ k_t)        S_t = S_{t-1} + k_t v_newᵀ        o_t = S_tᵀ q_t

i.e. S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ. Gated DeltaNet decays the memory first, by α_t ∈ (0, 1]:
S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ (so the read inside v_new sees α_t S_{t-1}).

- ``delta_rule_recurrent``: the token loop (the specification; how decoding runs);
- ``delta_rule_chunk``: the chunkwise-parallel form (WY / UT transform), derived in its docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, check_gate, merge_heads, split_heads
from labkit.memory.linear import _check_chunk_size, _check_qkv, _chunks

__all__ = ["DeltaNet", "GatedDeltaNet", "delta_rule_chunk", "delta_rule_recurrent"]


def _check_gates(q: torch.Tensor, beta: torch.Tensor, alpha: torch.Tensor | None) -> None:
    for name, gate in (("beta", beta), ("alpha", alpha)):
        if gate is None:
            continue
        check_gate(name, gate, 0, 1)
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         S0: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
                         scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule, token by token: one step of online regression per token.

    q, k: (B, H, T, Dk); v: (B, H, T, Dv); beta (learning rates), alpha (decays, None = 1): (B, H, T) in
    [0, 1]; S0: (B, H, Dk, Dv) or None (empty). Per token:

        S' = α_t S_{t-1};   v_new = β_t (v_t − S'ᵀ k_t);   S_t = S' + k_t v_newᵀ;   o_t = S_tᵀ q_t · scale

    Why "delta rule": the memory should map k_t to v_t, so take the loss L(S) = ½‖Sᵀk_t − v_t‖².
    Its gradient is ∇_S L = k_t (Sᵀk_t − v_t)ᵀ, and one SGD step with learning rate β_t from S' gives
    S' − β_t k_t (S'ᵀk_t − v_t)ᵀ = S' + k_t v_newᵀ: exactly the update above.

    ``scale`` defaults to 1 (with unit keys, reading q = k_i returns what was stored under k_i).
    Returns o: (B, H, T, Dv) and the final S: (B, H, Dk, Dv).
    """
    _check_qkv(q, k, v, S0)
    _check_gates(q, beta, alpha)
    B, H, T, Dk = q.shape
    S = q.new_zeros(B, H, Dk, v.shape[-1]) if S0 is None else S0
    scale = 1.0 if scale is None else scale
    outs = []
    for t in range(T):
        if alpha is not None:
            S = alpha[:, :, t, None, None] * S
        k_t = k[:, :, t]
        v_new = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., :, None] * v_new[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]) * scale)
    return torch.stack(outs, dim=2), S


def _segsum(log_alpha: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (..., C, C): out[i, j] = Σ_{j<l≤i} log α_l = log(γ_i / γ_j) for j ≤ i, −inf for j > i.

    Summing only the terms between j and i (rather than subtracting two cumulative sums) avoids
    cancellation when some α are tiny.
    """
    C = log_alpha.shape[-1]
    x = log_alpha[..., :, None].expand(*log_alpha.shape, C)  # x[i, j] = log α_i
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=log_alpha.device).tril(-1)
    x = x.masked_fill(~strictly_lower, 0).cumsum(dim=-2)  # x[i, j] = Σ_{j<l≤i} log α_l
    lower = torch.ones(C, C, dtype=torch.bool, device=log_alpha.device).tril()
    return x.masked_fill(~lower, float("-inf"))


def delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, chunk_size: int = 16,
                     S0: torch.Tensor | None = None, alpha: torch.Tensor | None = None,
                     scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same outputs and final state as ``delta_rule_recurrent``, computed chunk by chunk (WY / UT form).

    Shapes as in ``delta_rule_recurrent``. C = min(chunk_size, T); the last chunk is padded with β = 0, α = 1.

    Derivation, for one chunk starting from memory S, tokens i = 1..C, γ_i = Π_{l≤i} α_l (γ ≡ 1 when
    alpha is None). Unrolling S_i = α_i S_{i-1} + k_i u_iᵀ gives

        S_i = γ_i S + Σ_{j≤i} (γ_i/γ_j) k_j u_jᵀ,     so     α_i S_{i-1} = γ_i S + Σ_{j<i} (γ_i/γ_j) k_j u_jᵀ.

    Put that into u_i = β_i (v_i − (α_i S_{i-1})ᵀ k_i) and collect the u's on the left, as rows of U':

        (I + A) U' = diag(β) V − diag(β) diag(γ) K S,     A_ij = β_i (γ_i/γ_j) k_i·k_j for j < i, else 0.

    I + A is unit lower-triangular, so with T = (I + A)⁻¹ diag(β) (a triangular solve):
    W = T diag(γ) K, U = T V and U' = U − W S. Then o_i = S_iᵀ q_i and S_C give

        O = diag(γ) Q S + (Q Kᵀ ⊙ Γ) U',    S_end = γ_C S + (diag(γ_C/γ) K)ᵀ U',

    with Γ_ij = γ_i/γ_j for j ≤ i and 0 above (the causal mask, diagonal included). Only the small
    S-dependent products run in a loop over chunks; everything else is batched over all chunks.
    """
    _check_qkv(q, k, v, S0)
    _check_gates(q, beta, alpha)
    _check_chunk_size(chunk_size)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    if alpha is None:
        log_alpha = torch.zeros_like(beta)
    else:
        # α = 0 is allowed: clamp to the smallest positive number instead of log 0 = −inf (NaN gradients)
        log_alpha = alpha.clamp_min(torch.finfo(alpha.dtype).tiny).log()
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)  # (B, H, N, C, D)
    betac = _chunks(beta[..., None], C)[..., 0]  # (B, H, N, C), padded with β = 0: the write is skipped
    log_alphac = _chunks(log_alpha[..., None], C)[..., 0]  # padded with log α = 0: no decay
    N = qc.shape[2]

    Gamma = _segsum(log_alphac).exp()  # (B, H, N, C, C): γ_i/γ_j, 0 above the diagonal
    gamma = log_alphac.cumsum(dim=-1).exp()  # (B, H, N, C): γ_i
    A = (betac[..., None] * Gamma * (kc @ kc.transpose(-1, -2))).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = betac[..., None] * torch.cat([gamma[..., None] * kc, vc], dim=-1)
    WU = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    W, U = WU.split([Dk, Dv], dim=-1)
    scores = (qc @ kc.transpose(-1, -2)) * Gamma  # (Q Kᵀ ⊙ Γ)
    q_decayed = gamma[..., None] * qc  # diag(γ) Q
    k_to_end = Gamma[..., -1, :, None] * kc  # diag(γ_C/γ) K

    S = q.new_zeros(B, H, Dk, Dv) if S0 is None else S0
    outs = []
    for n in range(N):
        U_n = U[:, :, n] - W[:, :, n] @ S  # U' = U − W S
        outs.append(q_decayed[:, :, n] @ S + scores[:, :, n] @ U_n)
        S = gamma[:, :, n, -1, None, None] * S + k_to_end[:, :, n].transpose(-1, -2) @ U_n
    o = torch.stack(outs, dim=2).reshape(B, H, N * C, Dv)[:, :, :T]
    return (o if scale is None else o * scale), S


class DeltaNet(Mixer):
    """Multi-head DeltaNet: q, k L2-normalised per head, β_t = sigmoid(w_βᵀ x_t) per head.

    Option ``chunk_size`` of the chunked form (used when T > 1; T = 1 runs the recurrence).
    State: ``"S"``: (B, H, Dk, Dv).
    """

    name = "deltanet"

    def __init__(self, d_model: int, n_heads: int = 1, *, chunk_size: int = 16) -> None:
        super().__init__(d_model, n_heads)
        _check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads)  # one learning rate β per head and token
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"chunk_size={self.chunk_size}"

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_dim * self.head_dim

    def decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """α: (B, H, T) in (0, 1], or None for no decay (plain DeltaNet)."""
        return None

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the memory after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        q = F.normalize(split_heads(self.q_proj(x), self.n_heads), dim=-1)  # (B, H, T, D)
        k = F.normalize(split_heads(self.k_proj(x), self.n_heads), dim=-1)
        v = split_heads(self.v_proj(x), self.n_heads)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # (B, H, T)
        alpha = self.decay(x)
        S0 = None if state is None else state["S"]
        if T == 1:
            o, S = delta_rule_recurrent(q, k, v, beta, S0, alpha)
        else:
            o, S = delta_rule_chunk(q, k, v, beta, self.chunk_size, S0, alpha)
        seen = (0 if state is None else state.seen) + T
        return self.o_proj(merge_heads(o)), MemoryState(self.fingerprint, {"S": S}, seen)


class GatedDeltaNet(DeltaNet):
    """DeltaNet with a data-dependent decay α_t = sigmoid(w_αᵀ x_t + b) per head and token.

    The bias starts at logit(α) for α spread over [0.95, 0.99] across heads: memories that start by
    forgetting slowly, with a few time scales (1/(1 − α) ≈ 20 to 100 tokens).
    """

    name = "gated_deltanet"

    def __init__(self, d_model: int, n_heads: int = 1, *, chunk_size: int = 16) -> None:
        super().__init__(d_model, n_heads, chunk_size=chunk_size)
        self.a_proj = nn.Linear(d_model, n_heads)
        with torch.no_grad():
            alpha0 = torch.linspace(0.95, 0.99, n_heads)
            self.a_proj.bias.copy_(torch.log(alpha0 / (1 - alpha0)))

    def decay(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a_proj(x)).transpose(1, 2)  # (B, H, T)
