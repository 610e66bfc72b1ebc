"""Softmax attention as a memory: it keeps every key and value it has read (the KV cache) and reads them all.

Its state grows with the sequence: after T tokens one layer holds 2·d_model·T numbers (keys and values of
every head). With ``window`` set it keeps only the last ``window`` tokens (sliding-window attention), a
fixed-size memory that forgets exactly, by age. No positional encoding: the model's short convolution in
front of every mixer gives the tokens their order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, merge_heads, split_heads

__all__ = ["SoftmaxAttention"]


class SoftmaxAttention(Mixer):
    """Causal multi-head softmax attention, optionally over a sliding ``window`` of the latest tokens.

    State: ``"k"``, ``"v"``: (B, H, S, D), the cached keys and values of the last S tokens
    (S = all tokens seen, or at most ``window``).
    """

    name = "attention"

    def __init__(self, d_model: int, n_heads: int = 1, *, window: int | None = None) -> None:
        super().__init__(d_model, n_heads)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        self.window = window
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"window={self.window}"

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * self.d_model * cached

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the KV cache after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_heads)
        v = split_heads(self.v_proj(x), self.n_heads)
        if state is not None:
            k = torch.cat([state["k"], k], dim=2)  # (B, H, P + T, D): P cached tokens come first
            v = torch.cat([state["v"], v], dim=2)
        P = k.shape[2] - T
        if P == 0 and self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(T, P, x.device))
        if self.window is not None:
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]
        seen = (0 if state is None else state.seen) + T
        return self.o_proj(merge_heads(y)), MemoryState(self.fingerprint, {"k": k, "v": v}, seen)

    def mask(self, T: int, P: int, device: torch.device | None = None) -> torch.Tensor:
        """(T, P + T) bool, True where query i (position P + i) may read key j: j <= P + i, and within the window."""
        i = torch.arange(P, P + T, device=device)[:, None]
        j = torch.arange(P + T, device=device)[None, :]
        allowed = j <= i
        if self.window is not None:
            allowed &= i - j < self.window
        return allowed
