"""``MemoryLM``: a small language model whose token mixing is any chapter-3 mixer.

One block, the same for every mixer so that only the memory differs::

    x ──┬─ norm ─ short causal conv ─ mixer ──(+)──┬─ norm ─ MLP ──(+)── x'
        └──────────────────────────────────────────┘└────────────────┘

The short depthwise convolution (kernel 3 by default) lets each position see its last few tokens before
the mixer runs, so a key can be glued to the value right after it without spending memory on it. Every
modern recurrent model has one; on MQAR it is the difference between attention stuck near the shortcut
baseline and attention solving the task.

``forward(tokens, state)`` returns the state after the tokens, so decoding one token at a time with the
state gives the same logits as one forward over the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory import make_mixer
from labkit.memory.base import MemoryState

__all__ = ["MemoryLM", "ShortConv", "RMSNorm"]

LayerState = tuple[torch.Tensor | None, MemoryState | None]


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class ShortConv(nn.Module):
    """Causal depthwise convolution over time: ``y_t = Σ_{j<k} w_j ⊙ x_{t-j}`` per channel.

    ``forward(x (B, T, d), buffer (B, d, k-1) or None) -> (y (B, T, d), buffer)``; the buffer holds the
    last ``k - 1`` inputs (zeros before the sequence starts), so chunked calls equal one call.
    The kernel starts as a random token shift: weight 1 on the current token and ±1 (a random sign per
    channel) on the previous one, older taps 0. Which token came just before is then readable from the
    first step; from the identity (or PyTorch's default random init) attention sits on a long plateau
    on MQAR before it finds the key-value lookup (≈250 instead of ≈100 steps at vocab 64, d_model 32).
    """

    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.d, self.kernel = d, kernel
        weight = torch.zeros(d, 1, kernel)
        weight[:, 0, -1] = 1.0  # the last tap multiplies the current token
        if kernel > 1:  # a random token shift: x_t + x_{t-1} in half the channels, x_t - x_{t-1} in the rest
            weight[:, 0, -2] = 2.0 * torch.randint(0, 2, (d,)) - 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor, buffer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, d = x.shape
        if buffer is None:
            buffer = x.new_zeros(B, d, self.kernel - 1)
        if buffer.shape != (B, d, self.kernel - 1):
            raise ValueError(f"conv buffer must be (B={B}, d={d}, kernel-1={self.kernel - 1}), "
                             f"got {tuple(buffer.shape)}")
        seq = torch.cat([buffer, x.transpose(1, 2)], dim=2)  # (B, d, k-1+T)
        y = F.conv1d(seq, self.weight, groups=d)  # (B, d, T)
        return y.transpose(1, 2), seq[:, :, seq.shape[2] - (self.kernel - 1):]

    def extra_repr(self) -> str:
        return f"d={self.d}, kernel={self.kernel}"


class Block(nn.Module):
    """norm → short conv → mixer → residual, then norm → MLP (×4, GELU) → residual."""

    def __init__(self, d_model: int, mixer: nn.Module, short_conv: int, mlp: bool, norm: type) -> None:
        super().__init__()
        self.norm1 = norm(d_model)
        self.conv = ShortConv(d_model, short_conv) if short_conv else None
        self.mixer = mixer
        self.norm2 = norm(d_model) if mlp else None
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)) \
            if mlp else None

    def forward(self, x: torch.Tensor, state: LayerState | None) -> tuple[torch.Tensor, LayerState]:
        buffer, memory = state if state is not None else (None, None)
        h = self.norm1(x)
        if self.conv is not None:
            h, buffer = self.conv(h, buffer)
        h, memory = self.mixer(h, state=memory)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, (buffer, memory)


class MemoryLM(nn.Module):
    """Embedding → ``n_layers`` blocks around a named mixer → norm → head. Logits for every position.

    ``mixer`` is a name from ``labkit.memory.MIXERS`` (built with ``make_mixer(mixer, d_model, n_heads,
    **mixer_options)``). ``short_conv`` is the kernel of the causal convolution before each mixer (0: none).
    ``norm`` is "rms" or "layer"; ``tie_head`` shares the embedding matrix with the output head.

    ``forward(tokens (B, T), state=None) -> (logits (B, T, vocab_size), state)``; ``state`` is a list with
    one ``(conv buffer (B, d_model, short_conv-1) or None, mixer MemoryState)`` per layer.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, mixer: str = "attention",
                 n_heads: int = 1, mixer_options: dict | None = None, short_conv: int = 3, mlp: bool = True,
                 norm: str = "rms", tie_head: bool = False) -> None:
        super().__init__()
        for arg, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 0:
            raise ValueError(f"short_conv must be a non-negative int (0: no convolution), got {short_conv!r}")
        norms = {"rms": RMSNorm, "layer": nn.LayerNorm}
        if norm not in norms:
            raise ValueError(f"norm must be one of {sorted(norms)}, got {norm!r}")
        self.vocab_size, self.d_model, self.mixer_name = vocab_size, d_model, mixer
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02 if tie_head else 1.0)
        options = dict(mixer_options or {})
        self.blocks = nn.ModuleList(
            Block(d_model, make_mixer(mixer, d_model, n_heads=n_heads, **options), short_conv, mlp, norms[norm])
            for _ in range(n_layers)
        )
        self.norm = norms[norm](d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_head:
            self.head.weight = self.embed.weight

    @property
    def mixers(self) -> list[nn.Module]:
        return [block.mixer for block in self.blocks]

    def forward(self, tokens: torch.Tensor, state: list[LayerState] | None = None
                ) -> tuple[torch.Tensor, list[LayerState]]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state must hold one entry per layer ({len(self.blocks)}), got {len(state)}")
        x = self.embed(tokens)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i])
            new_state.append(layer_state)
        return self.head(self.norm(x)), new_state

    @property
    def aux_loss(self) -> torch.Tensor:
        """Sum of the mixers' ``aux_loss`` from the last forward (mixture-of-memories routers); 0 if none."""
        total = torch.zeros((), device=self.head.weight.device)
        for mixer in self.mixers:
            aux = getattr(mixer, "aux_loss", None)
            if aux is not None:
                total = total + aux
        return total

    def state_size(self, seq_len: int) -> int:
        """Numbers the mixers' memories hold for one sequence after ``seq_len`` tokens, summed over layers.

        The convolution buffers (``n_layers · d_model · (short_conv - 1)``, the same for every mixer) are
        left out: this is the memory the chapter compares.
        """
        return int(sum(mixer.state_size(seq_len) for mixer in self.mixers))
