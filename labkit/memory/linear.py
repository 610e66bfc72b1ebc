"""Linear attention: a fixed-size memory S (Dk × Dv per head) written by adding outer products.

Drop the softmax and attention becomes a running sum:

    S_t = S_{t-1} + k_t v_tᵀ            o_t = S_tᵀ q_t = Σ_{s≤t} (q_t·k_s) v_s

so a layer's memory no longer grows with the sequence. Two ways to compute the same thing:

- ``linear_attention_recurrent``: the token loop above (the specification; how decoding runs);
- ``linear_attention_chunk``: split the sequence into chunks of C tokens; inside a chunk use the parallel
  (attention-like) form, across chunks carry S: for the rows Q, K, V of one chunk,
  O = Q S_start + tril(Q Kᵀ) V  and  S_end = S_start + Kᵀ V.

``LinearAttention`` maps queries and keys through a positive feature map φ (elu + 1 by default) and,
optionally, divides by the classic normaliser φ(q_t)·z_t with z_t = Σ_{s≤t} φ(k_s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, merge_heads, split_heads

__all__ = ["FEATURE_MAPS", "LinearAttention", "linear_attention_chunk", "linear_attention_recurrent"]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, S0: torch.Tensor | None) -> None:
    """q, k: (B, H, T, Dk); v: (B, H, T, Dv); S0: (B, H, Dk, Dv) or None."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, T, Dk), got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, H, T, Dv) with (B, H, T) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if q.shape[2] < 1:
        raise ValueError("the sequence must hold at least one token (T >= 1), got T = 0")
    expected = (*q.shape[:2], q.shape[3], v.shape[3])
    if S0 is not None and tuple(S0.shape) != expected:
        raise ValueError(f"S0 must be (B, H, Dk, Dv) = {expected}, got {tuple(S0.shape)}")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, N, C, D), zero-padding T up to N·C (zero keys and values write nothing)."""
    B, H, T, D = x.shape
    x = F.pad(x, (0, 0, 0, -T % C))
    return x.reshape(B, H, -1, C, D)


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, S0: torch.Tensor | None = None,
                               scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token loop S_t = S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t · scale.

    q, k: (B, H, T, Dk); v: (B, H, T, Dv); S0: (B, H, Dk, Dv) or None (an empty memory).
    ``scale`` defaults to 1, not 1/√Dk: the module feeds feature-mapped (and normalised) queries and keys,
    so no softmax temperature is needed. Returns o: (B, H, T, Dv) and the final S: (B, H, Dk, Dv).
    """
    _check_qkv(q, k, v, S0)
    B, H, T, Dk = q.shape
    S = q.new_zeros(B, H, Dk, v.shape[-1]) if S0 is None else S0
    scale = 1.0 if scale is None else scale
    outs = []
    for t in range(T):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]) * scale)
    return torch.stack(outs, dim=2), S


def linear_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 64,
                           S0: torch.Tensor | None = None,
                           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same outputs and final state as ``linear_attention_recurrent``, computed chunk by chunk.

    q, k: (B, H, T, Dk); v: (B, H, T, Dv); S0: (B, H, Dk, Dv) or None. Per chunk n of C tokens (rows Qn, Kn,
    Vn): On = Qn S_n + tril(Qn Knᵀ) Vn, where S_n = S0 + Σ_{m<n} Kmᵀ Vm is the memory before the chunk.
    C = min(chunk_size, T); the last chunk is zero-padded. Returns o: (B, H, T, Dv) and S: (B, H, Dk, Dv).
    """
    _check_qkv(q, k, v, S0)
    _check_chunk_size(chunk_size)
    B, H, T, Dk = q.shape
    C = min(chunk_size, T)
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)  # (B, H, N, C, D)
    writes = kc.transpose(-1, -2) @ vc  # (B, H, N, Dk, Dv): what each chunk adds to S
    S_before = torch.cat([torch.zeros_like(writes[:, :, :1]), writes[:, :, :-1].cumsum(dim=2)], dim=2)
    if S0 is not None:
        S_before = S_before + S0[:, :, None]
    o = qc @ S_before + (qc @ kc.transpose(-1, -2)).tril() @ vc  # (B, H, N, C, Dv)
    o = o.reshape(B, H, -1, v.shape[-1])[:, :, :T]
    return (o if scale is None else o * scale), S_before[:, :, -1] + writes[:, :, -1]


FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1,  # positive, smooth, ≈ 1 + x near 0 (Katharopoulos et al., 2020)
    "relu": F.relu,
    "identity": lambda x: x,
}


class LinearAttention(Mixer):
    """Multi-head linear attention: o_t = S_tᵀ φ(q_t) [/ φ(q_t)·z_t], S_t = S_{t-1} + φ(k_t) v_tᵀ.

    Options: ``feature_map`` φ ("elu": elu(x) + 1, "relu", "identity"); ``normalize``: divide by φ(q_t)·z_t,
    z_t = Σ_{s≤t} φ(k_s) (needs a non-negative φ, so not with "identity"); ``chunk_size`` of the chunked form.
    State: ``"S"``: (B, H, Dk, Dv), and with ``normalize`` ``"z"``: (B, H, Dk).
    """

    name = "linear"
    eps = 1e-6  # keeps 0/0 at 0 when φ(q)·z vanishes (relu features)

    def __init__(self, d_model: int, n_heads: int = 1, *, feature_map: str = "elu", normalize: bool = True,
                 chunk_size: int = 64) -> None:
        super().__init__(d_model, n_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        if normalize and feature_map == "identity":
            # q·z can be zero or negative without a non-negative feature map: the normaliser would blow up
            raise ValueError("normalize=True needs a non-negative feature_map ('elu' or 'relu'), got 'identity'")
        _check_chunk_size(chunk_size)
        self.feature_map, self.normalize, self.chunk_size = feature_map, normalize, chunk_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"feature_map={self.feature_map!r}, normalize={self.normalize}, chunk_size={self.chunk_size}"

    def state_size(self, seq_len: int) -> int:
        H, D = self.n_heads, self.head_dim
        return H * D * D + (H * D if self.normalize else 0)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the memory after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        phi = FEATURE_MAPS[self.feature_map]
        q = phi(split_heads(self.q_proj(x), self.n_heads))  # (B, H, T, D)
        k = phi(split_heads(self.k_proj(x), self.n_heads))
        v = split_heads(self.v_proj(x), self.n_heads)
        S0 = None if state is None else state["S"]
        if self.normalize:
            # z is the memory of an all-ones value: carry it as one more value column, S0 gets z as its column
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
            S0 = None if state is None else torch.cat([S0, state["z"][..., None]], dim=-1)
        # unnormalised outputs sum T terms: scale them like softmax attention's logits, by 1/√D
        scale = None if self.normalize else self.head_dim ** -0.5
        if T == 1:
            o, S = linear_attention_recurrent(q, k, v, S0, scale)
        else:
            o, S = linear_attention_chunk(q, k, v, self.chunk_size, S0, scale)
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.eps)
            tensors = {"S": S[..., :-1], "z": S[..., -1]}
        else:
            tensors = {"S": S}
        seen = (0 if state is None else state.seen) + T
        return self.o_proj(merge_heads(o)), MemoryState(self.fingerprint, tensors, seen)
