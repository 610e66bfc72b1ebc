"""The one interface every chapter-3 mixer keeps: sequence in, sequence out, explicit state for decoding.

A *mixer* mixes information across positions (the rest of a block only mixes across features). Every
mixer in ``labkit.memory`` is an ``nn.Module`` with

    y, state = mixer(x, state=None)        x, y: (B, T, d_model); state: a ``MemoryState`` or None

- ``state=None`` starts from an empty memory. The returned state continues the sequence exactly:
  ``mixer(x)[0]`` equals ``cat(mixer(x[:, :t])[0], mixer(x[:, t:], state=s)[0])`` with ``s`` the state
  after the first part (decoding one token at a time is the case ``T = 1``).
- ``state_size(seq_len)``: the numbers one sequence's memory holds after ``seq_len`` tokens (per layer);
  constant for recurrent mixers, growing with ``seq_len`` for attention (its KV cache). The chapter's
  main figure puts this on the x-axis.

Layout inside mixers: (B, H, T, D) per head, as in ``labkit.kernels``. Functional ops (``*_recurrent``,
``*_chunk``) take and return that layout; modules take (B, T, d_model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["MemoryState", "Mixer", "check_gate", "split_heads", "merge_heads"]


@dataclass
class MemoryState:
    """What a mixer carries between calls: named tensors plus who made them.

    ``owner`` is the mixer's ``fingerprint`` (class name, sizes, options); a state passed to a different
    mixer is rejected by ``Mixer.check_state`` with a message naming both. ``seen`` counts tokens so far.
    """

    owner: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def numel(self) -> int:
        """Numbers held (all tensors, the whole batch)."""
        return sum(t.numel() for t in self.tensors.values())

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return MemoryState(self.owner, {k: v.detach() for k, v in self.tensors.items()}, self.seen)


class Mixer(nn.Module):
    """Base class: subclasses set ``name`` and implement ``forward`` and ``state_size``."""

    name = "mixer"

    def __init__(self, d_model: int, n_heads: int = 1) -> None:
        super().__init__()
        for arg, value in (("d_model", d_model), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model={d_model}, got {n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads

    @property
    def fingerprint(self) -> str:
        """Identifies which mixers may exchange states: class, sizes and ``extra_repr`` options."""
        return f"{type(self).__name__}(d_model={self.d_model}, n_heads={self.n_heads}, {self.extra_repr()})"

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, d_model={self.d_model}), got shape {tuple(x.shape)}")

    def check_state(self, state: MemoryState | None, batch_size: int) -> None:
        """Reject a state made by another mixer (or configuration) or for another batch size."""
        if state is None:
            return
        if not isinstance(state, MemoryState):
            raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
        if state.owner != self.fingerprint:
            raise ValueError(f"state was made by {state.owner}, not by this mixer {self.fingerprint}")
        for name, t in state.tensors.items():
            if t.shape[0] != batch_size:
                raise ValueError(f"state tensor {name!r} holds batch size {t.shape[0]}, x has {batch_size}")

    def state_size(self, seq_len: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: MemoryState | None = None):  # pragma: no cover - abstract
        raise NotImplementedError


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    B, T, HD = x.shape
    return x.view(B, T, n_heads, HD // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def check_gate(name: str, gate: torch.Tensor, low: float = 0.0, high: float = 1.0) -> None:
    """Gates (learning rates β, decays α, momenta η) must lie in [low, high]: a clear error otherwise."""
    if not torch.is_tensor(gate):
        raise TypeError(f"{name} must be a tensor, got {type(gate).__name__}")
    if gate.numel() and (bool((gate < low).any()) or bool((gate > high).any()) or bool(gate.isnan().any())):
        raise ValueError(f"{name} must lie in [{low}, {high}], got values from {gate.min().item():.4g} "
                         f"to {gate.max().item():.4g}")
