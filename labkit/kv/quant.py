"""Bit-axis compression: KIVI-style asymmetric quantization of the cache.

Round to ``2^bits`` levels between a group's min and max::

    scale = (max - min) / (2^bits - 1),  code = round((x - min) / scale),  x̂ = code · scale + min

so ``|x - x̂| <= scale / 2`` for every element. KIVI's observation: key outliers live in fixed *channels*,
so keys are quantized **per channel** (a group = ``group`` consecutive tokens of one channel), values
**per token** (a group = ``group`` consecutive channels of one token); the most recent ``residual`` tokens
stay in full precision (the keys' groups along T are not complete yet).

The compressor simulates the quantized cache: it stores the dequantized values (attention reads x̂) in a
``QuantizedKVCache`` that remembers how many leading entries are quantized, and ``nbytes`` counts what a
real implementation holds: packed ``bits``-bit codes, an fp16 scale and zero per group, and the residual
at the cache's own precision.
"""

from __future__ import annotations

import torch

from labkit.kv.base import Compressor
from labkit.models.tinylm import KVCache, TinyLM

__all__ = ["KIVI", "QuantizedKVCache", "dequantize", "quantize", "quantize_error_bound"]

SCALE_BYTES = 2  # fp16 scale and fp16 zero point per group


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
    return bits


def _grouped(x: torch.Tensor, dim: int, group: int) -> torch.Tensor:
    """x with ``dim`` split into (n_groups, group), the group axis last: (..., n_groups, group)."""
    dim = dim % x.dim()
    if isinstance(group, bool) or not isinstance(group, int) or group < 1 or x.shape[dim] % group:
        raise ValueError(f"group must be a positive int dividing x.shape[{dim}]={x.shape[dim]}, got {group!r}")
    x = x.movedim(dim, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def quantize(x: torch.Tensor, bits: int, dim: int = -1, group: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric ``bits``-bit quantization in groups of ``group`` consecutive elements along ``dim``
    (default: the whole axis). x: any shape (float). Returns ``codes`` (uint8, x's shape) and ``scale``,
    ``zero`` (float32, x's shape with ``dim`` replaced by n_groups = x.shape[dim] / group)."""
    _check_bits(bits)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
    dim = dim % x.dim()
    group = x.shape[dim] if group is None else group
    g = _grouped(x.float(), dim, group)  # (..., n_groups, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo) / (2 ** bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round((g - lo) / safe), 0, 2 ** bits - 1).to(torch.uint8)
    codes = codes.reshape(*codes.shape[:-2], -1).movedim(-1, dim)
    return codes, scale.squeeze(-1).movedim(-1, dim), lo.squeeze(-1).movedim(-1, dim)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Inverse of ``quantize``: ``codes · scale + zero`` with each group's scale/zero repeated along ``dim``.
    Returns float32 of codes' shape."""
    dim = dim % codes.dim()
    if scale.shape != zero.shape or scale.dim() != codes.dim() or codes.shape[dim] % scale.shape[dim]:
        raise ValueError(f"scale/zero must have codes' shape {tuple(codes.shape)} with dim {dim} divided into "
                         f"groups, got {tuple(scale.shape)} and {tuple(zero.shape)}")
    group = codes.shape[dim] // scale.shape[dim]
    return (codes.float() * scale.repeat_interleave(group, dim) + zero.repeat_interleave(group, dim))


def quantize_error_bound(x: torch.Tensor, bits: int, dim: int = -1, group: int | None = None) -> torch.Tensor:
    """The analytic per-element bound ``scale / 2`` of ``quantize(x, bits, dim, group)``, x's shape."""
    _, scale, _ = quantize(x, bits, dim, group)
    dim = dim % x.dim()
    return scale.repeat_interleave(x.shape[dim] // scale.shape[dim], dim) / 2


class QuantizedKVCache(KVCache):
    """A KVCache whose first ``n_quantized`` entries hold dequantized KIVI values (``bits``, ``group``)."""

    n_quantized: int = 0
    bits: int = 16
    group: int = 1

    def clone(self) -> QuantizedKVCache:
        new = object.__new__(QuantizedKVCache)
        new.__dict__.update(super().clone().__dict__)
        new.n_quantized, new.bits, new.group = self.n_quantized, self.bits, self.group
        return new

    def crop(self, n: int) -> QuantizedKVCache:
        super().crop(n)
        self.n_quantized = min(self.n_quantized, n)
        return self


class KIVI(Compressor):
    """KIVI-style cache quantization: keys per channel, values per token, ``bits`` in {2, 4} (any of 1..8
    accepted), ``group`` tokens (keys) / channels (values) per scale, the last >= ``residual`` tokens in full
    precision. Keeps every token (``budget`` = 1); ``nbytes`` counts codes + fp16 scales/zeros + residual."""

    name = "kivi"

    def __init__(self, bits: int = 2, group: int = 16, residual: int = 8) -> None:
        super().__init__(1.0)
        self.bits = _check_bits(bits)
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive int, got {group!r}")
        if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
            raise ValueError(f"residual must be an int >= 0, got {residual!r}")
        self.group, self.residual = group, residual
        self.name = f"kivi{bits}"

    def _value_group(self, head_dim: int) -> int:
        g = min(self.group, head_dim)
        if head_dim % g:
            raise ValueError(f"group must divide head_dim={head_dim} (values are grouped per token), got {g}")
        return g

    def compress(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> QuantizedKVCache:
        T = cache.length
        n_q = max(0, (T - self.residual) // self.group * self.group)  # whole key groups only
        new = object.__new__(QuantizedKVCache)
        new.__dict__.update(cache.__dict__)
        new.keys, new.values = list(cache.keys), list(cache.values)
        new.n_quantized, new.bits, new.group = n_q, self.bits, self.group
        if n_q == 0:
            return new
        gv = self._value_group(cache.keys[0].shape[-1])
        for layer in range(cache.n_layers):
            k, v = cache.keys[layer], cache.values[layer]  # (B, Hkv, T, Dh)
            kq = dequantize(*quantize(k[:, :, :n_q], self.bits, dim=2, group=self.group), dim=2)
            vq = dequantize(*quantize(v[:, :, :n_q], self.bits, dim=3, group=gv), dim=3)
            new.keys[layer] = torch.cat([kq.to(k.dtype), k[:, :, n_q:]], dim=2)
            new.values[layer] = torch.cat([vq.to(v.dtype), v[:, :, n_q:]], dim=2)
        return new

    def nbytes(self, cache: KVCache) -> int:
        n_q = getattr(cache, "n_quantized", 0)
        total = 0
        for k, v in zip(cache.keys, cache.values):
            B, H, T, D = k.shape
            elems = B * H * n_q * D  # quantized elements in K (and as many in V)
            codes = 2 * -(-elems * self.bits // 8)  # packed bits, K and V
            k_groups = B * H * D * (n_q // self.group)
            v_groups = B * H * n_q * (D // self._value_group(D))
            scales = 2 * SCALE_BYTES * (k_groups + v_groups)  # a scale and a zero per group
            residual = (T - n_q) * B * H * D * (k.element_size() + v.element_size())
            total += codes + scales + residual
        return total
