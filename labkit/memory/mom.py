"""MoM: mixture of memories (Du et al., 2025): several linear memories, a router picks which ones a token uses.

One fixed-size memory mixes everything it is told; MoM keeps ``n_memories`` separate ones (each a Dk × Dv
matrix per head, written by linear attention or the delta rule) and a router, as in a mixture of experts:

    p_t = softmax(W_r x_t)  (n_memories)          R_t = top-k of p_t          w_{m,t} = p_{m,t} / Σ_{j∈R_t} p_{j,t}

- write: memory m learns only from the tokens routed to it, with its own keys k_{m,t} = W_K^m x_t and
  values v_{m,t} = W_V^m x_t. Unrouted tokens are masked: linear attention adds k_{m,t} v_{m,t}ᵀ with
  k_{m,t} set to 0; the delta rule gets β_{m,t} = 0 (S_t = (I − 0) S_{t−1} + 0 = S_{t−1}).
- read: o_t = Σ_{m∈R_t} w_{m,t} S_{m,t}ᵀ q_t (+ S_{shared,t}ᵀ q_t with weight 1): one query q_t = W_Q x_t,
  shared by all memories. The optional shared memory sees every token.

The router is trained with a load-balancing loss (Switch Transformer): n · Σ_m f_m P_m, with f_m the
fraction of routing choices that went to memory m and P_m the mean router probability of m. It is 1 for
perfectly uniform routing and grows when a few memories take most tokens; ``aux_loss`` holds it times
``aux_loss_scale`` after every forward (add it to the training loss).

All memories run as extra heads of one call to ``linear_attention_chunk`` / ``delta_rule_chunk`` (the
recurrent forms when T = 1); those are exact at any split point, so continuation is exact everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, merge_heads, split_heads
from labkit.memory.deltanet import delta_rule_chunk, delta_rule_recurrent
from labkit.memory.linear import linear_attention_chunk, linear_attention_recurrent

__all__ = ["MoM", "load_balancing_loss", "route"]

MEMORIES = ("linear", "delta")


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing from router logits (..., n): returns (weights, routed, probs), each (..., n).

    probs = softmax(logits); routed: bool, True for the k most probable memories; weights: probs on the
    routed memories renormalised to sum to 1 over them, 0 elsewhere.
    """
    n = logits.shape[-1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an int in [1, n_memories={n}], got {top_k!r}")
    probs = logits.softmax(dim=-1)
    top = probs.topk(top_k, dim=-1).indices
    routed = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)
    kept = probs * routed
    return kept / kept.sum(dim=-1, keepdim=True), routed, probs


def load_balancing_loss(probs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """n · Σ_m f_m P_m for router probabilities and routing choices of N tokens: probs, routed (N, n).

    f_m = (choices of m) / (all choices) (sums to 1); P_m = mean of probs[:, m]. Uniform routing gives 1.
    Gradients reach the router through P only (f counts choices).
    """
    if probs.dim() != 2 or routed.shape != probs.shape:
        raise ValueError(f"probs and routed must both be (N, n_memories), got {tuple(probs.shape)} and "
                         f"{tuple(routed.shape)}")
    n = probs.shape[-1]
    counts = routed.to(probs.dtype).sum(dim=0)
    f = counts / counts.sum()
    return n * (f * probs.mean(dim=0)).sum()


class MoM(Mixer):
    """Mixture of memories: ``n_memories`` routed memories (top-``top_k`` per token) + an optional shared one.

    Options: ``n_memories``, ``top_k`` (1 ≤ top_k ≤ n_memories), ``shared_memory`` (one more memory every
    token writes and reads), ``memory`` "linear" (linear attention, S += k vᵀ) or "delta" (delta rule,
    β_t = sigmoid(Linear(x_t)) per memory and head), ``aux_loss_scale`` of the load-balancing loss.
    Queries and keys are L2-normalised per head. After every forward, ``aux_loss`` (a scalar tensor) is
    the scaled load-balancing loss of that call's tokens.

    State: ``"S"``: (B, (n_memories + shared)·H, Dk, Dv), memory m's heads at rows m·H … m·H + H − 1, the
    shared memory last.
    """

    name = "mom"

    def __init__(self, d_model: int, n_heads: int = 1, *, n_memories: int = 4, top_k: int = 2,
                 shared_memory: bool = True, memory: str = "linear", aux_loss_scale: float = 0.01) -> None:
        super().__init__(d_model, n_heads)
        if isinstance(n_memories, bool) or not isinstance(n_memories, int) or n_memories < 1:
            raise ValueError(f"n_memories must be a positive int, got {n_memories!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_memories:
            raise ValueError(f"top_k must be an int in [1, n_memories={n_memories}], got {top_k!r}")
        if not isinstance(shared_memory, bool):
            raise ValueError(f"shared_memory must be a bool, got {shared_memory!r}")
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {list(MEMORIES)}, got {memory!r}")
        if (isinstance(aux_loss_scale, bool) or not isinstance(aux_loss_scale, (int, float))
                or not 0 <= aux_loss_scale < math.inf):
            raise ValueError(f"aux_loss_scale must be a finite number >= 0, got {aux_loss_scale!r}")
        self.n_memories, self.top_k, self.shared_memory = n_memories, top_k, shared_memory
        self.memory, self.aux_loss_scale = memory, float(aux_loss_scale)
        self.n_slots = n_memories + int(shared_memory)  # memories held in the state
        self.router = nn.Linear(d_model, n_memories, bias=False)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, self.n_slots * d_model, bias=False)  # each memory its own keys ...
        self.v_proj = nn.Linear(d_model, self.n_slots * d_model, bias=False)  # ... and values
        self.b_proj = nn.Linear(d_model, self.n_slots * n_heads) if memory == "delta" else None  # β per memory, head
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.aux_loss = torch.zeros(())

    def extra_repr(self) -> str:
        return (f"n_memories={self.n_memories}, top_k={self.top_k}, shared_memory={self.shared_memory}, "
                f"memory={self.memory!r}, aux_loss_scale={self.aux_loss_scale}")

    def state_size(self, seq_len: int) -> int:
        return self.n_slots * self.n_heads * self.head_dim * self.head_dim

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, routed, probs) for x (B, T, d_model), each (B, T, n_memories); see ``route``."""
        return route(self.router(x), self.top_k)

    def _per_memory(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, n_slots·d_model) -> (B, n_slots·H, T, D): every memory's heads become heads."""
        B, T, _ = t.shape
        t = t.view(B, T, self.n_slots, self.d_model).transpose(1, 2)  # (B, n_slots, T, d)
        return split_heads(t.reshape(B * self.n_slots, T, self.d_model), self.n_heads).reshape(
            B, self.n_slots * self.n_heads, T, self.head_dim)

    def _per_head(self, gate: torch.Tensor) -> torch.Tensor:
        """(B, T, n_slots) -> (B, n_slots·H, T): one value per memory, repeated over its heads."""
        return gate.transpose(1, 2).repeat_interleave(self.n_heads, dim=1)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the memories after these T tokens; sets ``aux_loss``."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        H, D, n = self.n_heads, self.head_dim, self.n_slots
        weights, routed, probs = self.route(x)  # (B, T, n_memories)
        self.aux_loss = self.aux_loss_scale * load_balancing_loss(probs.reshape(-1, self.n_memories),
                                                                  routed.reshape(-1, self.n_memories))
        write, read = routed.to(x.dtype), weights
        if self.shared_memory:  # the shared memory: always written, read with weight 1
            ones = x.new_ones(B, T, 1)
            write, read = torch.cat([write, ones], dim=-1), torch.cat([read, ones], dim=-1)

        q = F.normalize(split_heads(self.q_proj(x), H), dim=-1)  # (B, H, T, D), shared by all memories
        q = q.repeat(1, n, 1, 1)  # (B, n·H, T, D)
        k = F.normalize(self._per_memory(self.k_proj(x)), dim=-1)
        v = self._per_memory(self.v_proj(x))
        S0 = None if state is None else state["S"]
        if self.memory == "linear":
            k = k * self._per_head(write)[..., None]  # unrouted tokens write k vᵀ = 0
            o, S = (linear_attention_recurrent(q, k, v, S0=S0) if T == 1 else
                    linear_attention_chunk(q, k, v, S0=S0))
        else:
            beta = torch.sigmoid(self.b_proj(x)).view(B, T, n, H).permute(0, 2, 3, 1).reshape(B, n * H, T)
            beta = beta * self._per_head(write)  # unrouted tokens: β = 0 leaves S unchanged
            o, S = (delta_rule_recurrent(q, k, v, beta, S0=S0) if T == 1 else
                    delta_rule_chunk(q, k, v, beta, S0=S0))
        o = (o * self._per_head(read)[..., None]).view(B, n, H, T, D).sum(dim=1)  # routed mixture (+ shared)
        seen = (0 if state is None else state.seen) + T
        return self.o_proj(merge_heads(o)), MemoryState(self.fingerprint, {"S": S}, seen)
