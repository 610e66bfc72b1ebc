"""Continual Inference Networks (Hedegaard 2023): the same outputs on a stream, without recomputing the window.

A model that looks at the last n steps of a stream (a temporal conv net, a transformer encoder over a
window) is usually run **over the whole window again at every step**: n − 1 of its n inputs were already
seen, and most of what it computes was computed one step before. A *Continual Inference Network* keeps
that work in a state and, per step, computes only what the new input changes; the outputs are identical.
The names follow the thesis and its papers, top to bottom:

* **continual convolution** (``ContinualConv1d``, "Continual 3D CNNs"): a causal temporal convolution
  keeps the last ``kernel_size − 1`` inputs in a state buffer; ``step(x_t)`` produces the output for the
  window ending at t, exactly what the regular ``nn.Conv1d`` produces there. ``from_conv1d`` reuses
  trained weights.
* **continual single-output attention** (``ContinualAttention``, "Continual Transformers"): a transformer
  encoder layer over a window of n steps keeps the window's keys and values in a ring buffer; each step
  projects only the newest input and computes only the newest query's output, O(n·d) instead of the
  O(n²·d + n·d²) of the whole layer, and equal to the regular layer's output at the last position. No
  positional encoding (an absolute one would change every cached key as the window slides), so the
  output does not depend on where in the ring buffer a key sits. ``from_encoder_layer`` reuses the
  weights of a ``torch.nn.TransformerEncoderLayer``.
* **the baseline and the comparison**: ``sliding_window_recompute`` runs the regular module over the
  window ending at every step; ``continual_run`` steps the continual one; ``count_flops`` (measured with
  ``torch.utils.flop_counter``) and ``time_per_step`` compare one step of each.

Streams are (B, T, C): batch, time, channels. At the start of a stream the window reaches before its
first step; both the baseline and the continual modules treat those steps as zero inputs (the baseline
pads the stream on the left with ``window − 1`` zero steps, the continual modules start from the state
those zeros produce), so the outputs are equal from the first step on.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ContinualAttention",
    "ContinualConv1d",
    "continual_run",
    "count_flops",
    "sliding_window_recompute",
    "time_per_step",
]

MODES = ("recompute", "continual")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_stream(stream, channels: int, name: str = "stream") -> torch.Tensor:
    if not isinstance(stream, torch.Tensor) or not stream.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor (B, T, C), got {type(stream).__name__}")
    if stream.dim() != 3 or stream.shape[2] != channels or stream.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T >= 1, C={channels}), got {tuple(stream.shape)}")
    return stream


def _check_step_input(x: torch.Tensor, channels: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor (B, C), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != channels:
        raise ValueError(f"x must have shape (B, C={channels}), one step of the stream, got {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------------------
# 1. Continual convolution
# --------------------------------------------------------------------------------------------------------


class ContinualConv1d(nn.Module):
    """A causal temporal convolution, run over a window (``forward_window``) or one step at a time (``step``).

    weight: (out_channels, in_channels, kernel_size), bias: (out_channels,) or None; stride 1, no dilation.
    The output at step t is ``bias + Σ_j weight[:, :, j] @ x[t − kernel_size + 1 + j]``.
    ``step`` keeps the last ``kernel_size − 1`` inputs in ``state`` (B, in_channels, kernel_size − 1),
    zeros at the start of a stream; ``reset()`` starts a new stream.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.out_channels = _check_int("out_channels", out_channels, 1)
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1 / math.sqrt(in_channels * kernel_size)  # nn.Conv1d's initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.state: torch.Tensor | None = None

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d) -> ContinualConv1d:
        """A continual copy of a trained ``nn.Conv1d`` (stride 1, dilation 1, groups 1, padding 0)."""
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"conv must be a torch.nn.Conv1d, got {type(conv).__name__}")
        for name, want in (("stride", (1,)), ("dilation", (1,)), ("groups", 1), ("padding", (0,))):
            if getattr(conv, name) != want:
                raise ValueError(f"conv.{name} must be {want} (a causal continual conv pads the stream itself), "
                                 f"got {getattr(conv, name)}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], bias=conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new.to(conv.weight.device)

    @property
    def channels(self) -> int:
        return self.in_channels

    def reset(self) -> None:
        """Forget the stream: the next ``step`` starts a new one (its past taken as zeros)."""
        self.state = None

    def forward_window(self, window: torch.Tensor) -> torch.Tensor:
        """The regular computation: convolve the whole window (B, n, C_in), n >= kernel_size, and return
        the output at its last step (B, C_out). Computes all n − kernel_size + 1 outputs, as a conv net
        run on the window does."""
        if window.dim() != 3 or window.shape[2] != self.in_channels or window.shape[1] < self.kernel_size:
            raise ValueError(f"window must have shape (B, n >= kernel_size={self.kernel_size}, "
                             f"C={self.in_channels}), got {tuple(window.shape)}")
        outputs = F.conv1d(window.transpose(1, 2), self.weight, self.bias)  # (B, C_out, n - k + 1)
        return outputs[:, :, -1]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One new input x (B, C_in) -> the output at this step (B, C_out); updates the state."""
        x = _check_step_input(x, self.in_channels)
        k = self.kernel_size
        if self.state is None or self.state.shape[0] != x.shape[0]:
            self.state = x.new_zeros(x.shape[0], self.in_channels, k - 1)
        window = torch.cat([self.state, x[:, :, None]], dim=2)  # (B, C_in, k): the last k inputs
        out = torch.einsum("oik,bik->bo", self.weight, window)
        if self.bias is not None:
            out = out + self.bias
        self.state = window[:, :, 1:]
        return out


# --------------------------------------------------------------------------------------------------------
# 2. Continual single-output attention (a transformer encoder layer)
# --------------------------------------------------------------------------------------------------------


class ContinualAttention(nn.Module):
    """A transformer encoder layer over a window of ``window`` steps, with a continual single-output step.

    The layer (as ``nn.TransformerEncoderLayer``, no dropout, no positional encoding), on x (B, n, d)::

        post-norm (norm_first=False):  y = norm1(x + SA(x));      out = norm2(y + FF(y))
        pre-norm  (norm_first=True):   y = x + SA(norm1(x));      out = y + FF(norm2(y))

    with SA multi-head softmax attention (every position attends to the whole window) and
    FF(y) = W2 act(W1 y + b1) + b2. ``forward_window`` computes it for the whole window and returns the
    last position (B, d). ``step(x_t)`` (B, d) keeps the window's keys and values in a ring buffer
    (B, heads, window, head_dim), writes the newest over the oldest, and computes only the newest
    position: the same output, with a fraction of the work.
    """

    def __init__(self, d_model: int, n_heads: int, window: int, d_ff: int, norm_first: bool = False,
                 activation: str = "relu", eps: float = 1e-5) -> None:
        super().__init__()
        self.d_model = _check_int("d_model", d_model, 1)
        self.n_heads = _check_int("n_heads", n_heads, 1)
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model={d_model}, got {n_heads}")
        self.window = _check_int("window", window, 1)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.head_dim = d_model // n_heads
        self.norm_first, self.activation = norm_first, activation
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.o_proj = nn.Linear(d_model, d_model)
        self.linear1, self.linear2 = nn.Linear(d_model, _check_int("d_ff", d_ff, 1)), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model, eps=eps), nn.LayerNorm(d_model, eps=eps)
        self.keys: torch.Tensor | None = None  # ring buffers (B, heads, window, head_dim)
        self.values: torch.Tensor | None = None
        self.t = 0  # steps seen; the next key is written at slot t mod window

    @classmethod
    def from_encoder_layer(cls, layer: nn.TransformerEncoderLayer, window: int) -> ContinualAttention:
        """A continual copy of a trained ``nn.TransformerEncoderLayer`` (ReLU or GELU, any norm_first)."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        attn = layer.self_attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.bias_k is not None:
            raise ValueError("layer.self_attn must use one in_proj with biases and no bias_k/bias_v")
        act = {F.relu: "relu", F.gelu: "gelu"}.get(layer.activation)
        if act is None:
            raise ValueError(f"layer.activation must be F.relu or F.gelu, got {layer.activation!r}")
        d = attn.embed_dim
        new = cls(d, attn.num_heads, window, layer.linear1.out_features, layer.norm_first, act, layer.norm1.eps)
        with torch.no_grad():
            for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                proj.weight.copy_(attn.in_proj_weight[i * d:(i + 1) * d])
                proj.bias.copy_(attn.in_proj_bias[i * d:(i + 1) * d])
            new.o_proj.load_state_dict(attn.out_proj.state_dict())
            for name in ("linear1", "linear2", "norm1", "norm2"):
                getattr(new, name).load_state_dict(getattr(layer, name).state_dict())
        return new.to(attn.in_proj_weight.device)

    @property
    def channels(self) -> int:
        return self.d_model

    def reset(self) -> None:
        """Forget the stream: the next ``step`` starts a new one (its past taken as zero inputs)."""
        self.keys = self.values = None
        self.t = 0

    # -- the pieces shared by both computations ---------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, d) -> (B, heads, n, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, H, m, Dh) over k, v (B, H, n, Dh) -> (B, m, d) after the output projection."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, m, n)
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, m, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.d_model))

    def _feed_forward(self, y: torch.Tensor) -> torch.Tensor:
        act = F.relu if self.activation == "relu" else F.gelu
        return self.linear2(act(self.linear1(y)))

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residuals, norms and the FFN around the attention output of the positions x (B, m, d)."""
        if self.norm_first:
            y = x + attended
            return y + self._feed_forward(self.norm2(y))
        y = self.norm1(x + attended)
        return self.norm2(y + self._feed_forward(y))

    # -- the regular computation -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole layer over x (B, n, d) -> (B, n, d): every position attends to every position."""
        if x.dim() != 3 or x.shape[2] != self.d_model:
            raise ValueError(f"x must have shape (B, n, d_model={self.d_model}), got {tuple(x.shape)}")
        z = self.norm1(x) if self.norm_first else x
        attended = self._attend(self._heads(self.q_proj(z)), self._heads(self.k_proj(z)), self._heads(self.v_proj(z)))
        return self._finish(x, attended)

    def forward_window(self, window: torch.Tensor) -> torch.Tensor:
        """The regular computation over the window (B, window, d): the whole layer, then its last position."""
        if window.dim() != 3 or window.shape[1] != self.window:
            raise ValueError(f"window must have shape (B, window={self.window}, d_model={self.d_model}), "
                             f"got {tuple(window.shape)}")
        return self.forward(window)[:, -1]

    # -- the continual step ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One new input x (B, d) -> the layer's output at the newest position of the window (B, d)."""
        x = _check_step_input(x, self.d_model)[:, None]  # (B, 1, d)
        z = self.norm1(x) if self.norm_first else x
        if self.keys is None or self.keys.shape[0] != x.shape[0]:
            # the window before the stream holds zero inputs: fill the buffers with their keys and values
            zero = self.norm1(torch.zeros_like(x)) if self.norm_first else torch.zeros_like(x)
            self.keys = self._heads(self.k_proj(zero)).repeat(1, 1, self.window, 1)
            self.values = self._heads(self.v_proj(zero)).repeat(1, 1, self.window, 1)
            self.t = 0
        slot = self.t % self.window  # the oldest entry: replaced by the newest (in place: an inference state)
        self.keys[:, :, slot] = self._heads(self.k_proj(z))[:, :, 0]
        self.values[:, :, slot] = self._heads(self.v_proj(z))[:, :, 0]
        self.t += 1
        attended = self._attend(self._heads(self.q_proj(z)), self.keys, self.values)  # (B, 1, d)
        return self._finish(x, attended)[:, 0]


# --------------------------------------------------------------------------------------------------------
# 3. The baseline, the continual run and their costs
# --------------------------------------------------------------------------------------------------------


def _check_module(module) -> None:
    if not isinstance(module, (ContinualConv1d, ContinualAttention)):
        raise TypeError(f"module must be a ContinualConv1d or a ContinualAttention, got {type(module).__name__}")


def _check_window(module, window) -> int:
    if isinstance(module, ContinualAttention):
        if window != module.window:
            raise ValueError(f"window must equal the module's window of {module.window} steps, got {window!r}")
        return window
    return _check_int("window", window, module.kernel_size)


def sliding_window_recompute(module, stream: torch.Tensor, window: int) -> torch.Tensor:
    """The baseline: at every step, run the regular module over the last ``window`` steps. (B, T, C_out).

    stream: (B, T, C). The stream is padded on the left with ``window − 1`` zero steps, so output t is
    ``module.forward_window(stream[:, t − window + 1 : t + 1])`` with zeros before the start. window:
    the module's window for a ``ContinualAttention``; any window >= kernel_size for a ``ContinualConv1d``
    (its output depends on the last kernel_size steps only; a conv net recomputes the whole window anyway).
    """
    _check_module(module)
    window = _check_window(module, window)
    stream = _check_stream(stream, module.channels)
    padded = F.pad(stream, (0, 0, window - 1, 0))
    return torch.stack([module.forward_window(padded[:, t:t + window]) for t in range(stream.shape[1])], dim=1)


def continual_run(module, stream: torch.Tensor) -> torch.Tensor:
    """Step the continual module through the stream (B, T, C) from a fresh state -> (B, T, C_out).

    Equal to ``sliding_window_recompute(module, stream, window)`` (up to float rounding); the module's
    state afterwards holds the stream's end, so further ``step`` calls continue it.
    """
    _check_module(module)
    stream = _check_stream(stream, module.channels)
    module.reset()
    return torch.stack([module.step(stream[:, t]) for t in range(stream.shape[1])], dim=1)


def _one_step(module, window: int, mode: str, batch_size: int, seed: int):
    """A function running one step of ``mode`` on a warmed-up module (a random stream already seen)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_module(module)
    window = _check_window(module, window)
    device = next(module.parameters()).device
    g = torch.Generator().manual_seed(seed)
    stream = torch.randn(batch_size, window, module.channels, generator=g).to(device)
    if mode == "recompute":
        return lambda: module.forward_window(stream)
    continual_run(module, stream[:, :-1])  # the state of a stream that has been running
    newest = stream[:, -1]
    return lambda: module.step(newest)


@torch.no_grad()
def count_flops(module, window: int, mode: str = "continual", batch_size: int = 1, seed: int = 0) -> int:
    """Floating-point operations of one stream step, measured with ``torch.utils.flop_counter``.

    mode: "recompute" (the regular module over the ``window`` last steps) or "continual" (one ``step``).
    Counts matrix products and convolutions (2 per multiply-add), as the counter does; softmax, norms and
    elementwise ops are not counted (they are O(n·d) in both modes).
    """
    run = _one_step(module, window, mode, batch_size, seed)
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


@torch.no_grad()
def time_per_step(module, window: int, mode: str = "continual", batch_size: int = 1, repeats: int = 20,
                  seed: int = 0) -> float:
    """Median seconds of one stream step in ``mode`` ("recompute" | "continual"), after one warm-up call.

    Machine-dependent; at small sizes the per-call overhead of PyTorch dominates both modes.
    """
    repeats = _check_int("repeats", repeats, 1)
    run = _one_step(module, window, mode, batch_size, seed)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
