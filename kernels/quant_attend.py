"""Decode attention over a KIVI-style quantized KV cache, with dequantization fused into the loops.

KIVI (Liu et al. 2024) quantizes keys **per channel** and values **per token**, asymmetrically (min-max)
to b ∈ {2, 4} bits, and keeps the most recent tokens in full precision (the *residual window*):

- keys: every group of G consecutive tokens shares, per channel d, a scale s and a zero z (the group's
  min): K[t, d] ≈ code[t, d] · s[t // G, d] + z[t // G, d]. Outlier channels get their own range.
- values: every token has, per group of G consecutive channels, a scale and a zero:
  V[t, d] ≈ code[t, d] · s[t, d // G] + z[t, d // G].

**Packed layout** (``QuantizedTensor``; per = 8 / bits codes per byte, Dp = ceil(D / per)):

    codes  (B, H, T, Dp) uint8   byte j of token t holds channels j·per + i at bits [i·bits, (i+1)·bits),
                                 i = 0..per-1 (the first channel in the low bits); padding channels are 0
    scale, zero                  float32; keys ("channel" mode): (B, H, T / G, D), T a multiple of G;
                                 values ("token" mode): (B, H, T, ceil(D / G)), G a multiple of per

The op attends over the logical cache [dequantized T_q tokens ; R residual tokens] (B, H, T_q + R, D):

    out[b, h] = softmax(scale · K̂[b, h, :n_b] q[b, h]) V̂[b, h, :n_b]          n_b = lengths[b]

Fusion: the scores of key group g are (q ∘ s_g) · code[t] + q · z_g, so the kernels fold the group's
scale into the query once per G tokens and never dequantize a key; values accumulate code · (p · s) per
channel group, and p · z into one number per group. The fp32 cache is never materialised.

Four implementations, top to bottom:

- ``reference``             plain torch, the spec: ``dequantize`` both, concatenate the residual, attend.
- ``numba_quant_attend``    CPU: one thread per (b, h) row, one pass, online softmax, codes unpacked in
                            float arithmetic (vectorises on AVX2).
- ``triton_quant_attend``   GPU, flash-decoding: tiles of positions unpack and dequantize in registers.
- ``quant_attend``          checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ._dispatch import check_lengths, check_scale, njit, prange, resolve_backend, tl, triton, triton_interpret
from .attend import _triton_config
from .attend import reference as attend_reference

# ------------------------------------------------------------------------------------------------------
# 0. The packed layout, quantization and dequantization (torch).
# ------------------------------------------------------------------------------------------------------


class QuantizedTensor(NamedTuple):
    """A quantized (B, H, T, D) cache tensor in the packed layout of this module (see the module docstring).

    mode "channel" (keys): scale/zero (B, H, T / G, D); mode "token" (values): (B, H, T, ceil(D / G)).
    """

    codes: torch.Tensor  # (B, H, T, ceil(D * bits / 8)) uint8
    scale: torch.Tensor  # float32
    zero: torch.Tensor  # float32
    bits: int
    group_size: int
    dim: int  # D: the head dimension (the packed width may include padding)
    mode: str  # "channel" (keys, groups of tokens) or "token" (values, groups of channels)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in (2, 4):
        raise ValueError(f"bits must be 2 or 4, got {bits!r}")
    return int(bits)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., D) integer codes < 2**bits -> (..., ceil(D / per)) uint8, channel j·per + i at bits i·bits."""
    per = 8 // bits
    D = codes.shape[-1]
    Dp = -(-D // per)
    codes = torch.nn.functional.pad(codes.to(torch.int32), (0, Dp * per - D))
    shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
    return (codes.reshape(*codes.shape[:-1], Dp, per) << shifts).sum(-1).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int, D: int) -> torch.Tensor:
    """The inverse of ``_pack``: (..., Dp) uint8 -> (..., D) int32 codes."""
    shifts = torch.arange(8 // bits, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :D]


def _minmax_codes(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max quantization of x over ``dim``: (codes, scale, zero) with x ≈ codes · scale + zero.

    A constant group gets scale 0 (codes 0, dequantized exactly to its value)."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    scale = (hi - lo) / (2**bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x - lo) / safe).clamp_(0, 2**bits - 1)
    return codes, scale, lo


def quantize_keys(K: torch.Tensor, bits: int = 4, group_size: int = 32) -> QuantizedTensor:
    """KIVI keys, per channel: K (B, H, T, D), T a multiple of ``group_size`` (the remaining tokens stay in
    the residual window) -> codes (B, H, T, ceil(D·bits/8)), scale/zero (B, H, T / G, D) float32."""
    bits = _check_bits(bits)
    if K.dim() != 4:
        raise ValueError(f"K must be 4-D (B, H, T, D), got shape {tuple(K.shape)}")
    B, H, T, D = K.shape
    if group_size < 1 or T % group_size:
        raise ValueError(f"T must be a multiple of group_size: got T={T}, group_size={group_size} (keep the last "
                         f"T % group_size tokens in the full-precision residual window)")
    x = K.detach().float().reshape(B, H, T // group_size, group_size, D)
    codes, scale, zero = _minmax_codes(x, bits, dim=3)
    codes = _pack(codes.reshape(B, H, T, D), bits)
    return QuantizedTensor(codes, scale.squeeze(3), zero.squeeze(3), bits, group_size, D, "channel")


def quantize_values(V: torch.Tensor, bits: int = 4, group_size: int = 32) -> QuantizedTensor:
    """KIVI values, per token: V (B, H, T, D) -> codes (B, H, T, ceil(D·bits/8)), scale/zero
    (B, H, T, ceil(D / G)) float32 (the last channel group may be partial). G must be a multiple of 8/bits."""
    bits = _check_bits(bits)
    if V.dim() != 4:
        raise ValueError(f"V must be 4-D (B, H, T, D), got shape {tuple(V.shape)}")
    B, H, T, D = V.shape
    per = 8 // bits
    if group_size < 1 or group_size % per:
        raise ValueError(f"group_size must be a positive multiple of 8 // bits = {per}, got {group_size}")
    n_groups = -(-D // group_size)
    x = V.detach().float()
    if n_groups * group_size > D:  # pad the last group with copies of the last channel: same min and max
        x = torch.cat([x, x[..., -1:].expand(B, H, T, n_groups * group_size - D)], dim=-1)
    codes, scale, zero = _minmax_codes(x.reshape(B, H, T, n_groups, group_size), bits, dim=4)
    codes = _pack(codes.reshape(B, H, T, n_groups * group_size)[..., :D], bits)
    return QuantizedTensor(codes, scale.squeeze(4), zero.squeeze(4), bits, group_size, D, "token")


def dequantize(x: QuantizedTensor) -> torch.Tensor:
    """A QuantizedTensor -> its float32 (B, H, T, D) approximation (the reference path; the kernels fuse it)."""
    codes = _unpack(x.codes, x.bits, x.dim).float()
    B, H, T, D = codes.shape
    G = x.group_size
    if x.mode == "channel":
        return codes * x.scale.repeat_interleave(G, dim=2) + x.zero.repeat_interleave(G, dim=2)
    scale = x.scale.repeat_interleave(G, dim=3)[..., :D]
    zero = x.zero.repeat_interleave(G, dim=3)[..., :D]
    return codes * scale + zero


# ------------------------------------------------------------------------------------------------------
# 1. The reference: dequantize, concatenate the residual window, attend.
# ------------------------------------------------------------------------------------------------------


def reference(
    q: torch.Tensor,
    K: QuantizedTensor,
    V: QuantizedTensor,
    K_res: torch.Tensor | None = None,
    V_res: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dequantize-then-attend in torch. q: (B, H, D), K/V: QuantizedTensor of T_q tokens, K_res/V_res:
    (B, H, R, D) or None, lengths: (B,) in 1..T_q + R -> (B, H, D) in q's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    K_full, V_full = dequantize(K).to(dtype), dequantize(V).to(dtype)
    if K_res is not None:
        K_full = torch.cat([K_full, K_res.to(dtype)], dim=2)
        V_full = torch.cat([V_full, V_res.to(dtype)], dim=2)
    return attend_reference(q.to(dtype), K_full, V_full, lengths, scale).to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one (b, h) row per thread, one pass over codes (then the residual), online softmax.
# ------------------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def _quant_row(q, kc, ks, kz, vc, vs, vz, Kr, Vr, n, bits, gk, gv, scale, out):  # pragma: no cover - compiled
    """One (b, h) row. q (D,); kc/vc (Tq, Dp) uint8; ks/kz (Tq/gk, D); vs/vz (Tq, NG); Kr/Vr (R, D); out (D,).

    Codes are handled "de-interleaved": slot (i, j) is channel j·per + i, the i-th field of byte j. Field i
    of a byte b is floor(b·2^-i·bits) - 2^bits·floor(b·2^-(i+1)·bits), exact in float32 (b < 256), so every
    inner loop runs over j with float arithmetic only and vectorises (AVX2 cannot convert int64 to float).
    """
    D = q.shape[0]
    Tq, Dp = kc.shape
    NG = vs.shape[1]
    per = 8 // bits
    base = np.float32(1 << bits)
    gvp = gv // per  # bytes per value group
    f = np.empty(per + 1, np.float32)  # f[i] = 2^-(i·bits), built by halving: exact even under fastmath, where a
    f[0] = np.float32(1.0)  # division 1/2^k may become an approximate reciprocal (wrong floors on newer LLVM)
    for i in range(1, per + 1):
        f[i] = f[i - 1]
        for _ in range(bits):
            f[i] *= np.float32(0.5)
    qs = np.zeros((per, Dp), np.float32)  # scale · q ∘ s_g in slot order (padding slots stay 0)
    acc = np.zeros((per, Dp), np.float32)  # Σ p · code · s (values), slot order
    zacc = np.zeros(NG, np.float32)  # Σ p · z per value group
    accr = np.zeros(D, np.float32)  # Σ p · V_res
    m = np.float32(-1e30)
    l = np.float32(0.0)
    nq = min(n, Tq)
    c = np.float32(0.0)
    for t in range(n):
        if t < nq:
            if t % gk == 0:  # a new key group: fold its scale into the query, its zero into a constant
                g = t // gk
                c = np.float32(0.0)
                for d in range(D):
                    qd = q[d] * scale
                    qs[d % per, d // per] = qd * ks[g, d]
                    c += qd * kz[g, d]
            s = c
            for i in range(per):
                fi, fn = f[i], f[i + 1]
                for j in range(Dp):
                    b = np.float32(kc[t, j])
                    s += qs[i, j] * (np.floor(b * fi) - base * np.floor(b * fn))
        else:
            s = np.float32(0.0)
            for d in range(D):
                s += q[d] * scale * Kr[t - Tq, d]
        if s > m:
            alpha = np.exp(m - s)
            l *= alpha
            for i in range(per):
                for j in range(Dp):
                    acc[i, j] *= alpha
            for k in range(NG):
                zacc[k] *= alpha
            for d in range(D):
                accr[d] *= alpha
            m = s
        p = np.exp(s - m)
        l += p
        if t < nq:
            for k in range(NG):
                w = p * vs[t, k]
                zacc[k] += p * vz[t, k]
                j0 = k * gvp
                j1 = min(j0 + gvp, Dp)
                for i in range(per):
                    fi, fn = f[i], f[i + 1]
                    for j in range(j0, j1):
                        b = np.float32(vc[t, j])
                        acc[i, j] += w * (np.floor(b * fi) - base * np.floor(b * fn))
        else:
            for d in range(D):
                accr[d] += p * Vr[t - Tq, d]
    inv = np.float32(1.0) / l
    for d in range(D):
        out[d] = (acc[d % per, d // per] + zacc[d // gv] + accr[d]) * inv


@njit(parallel=True, cache=True)
def _quant_rows(q, kc, ks, kz, vc, vs, vz, Kr, Vr, lengths, heads, bits, gk, gv, scale, out):  # pragma: no cover
    """Every (b, h) row (leading dimension BH of every array), on all cores."""
    for row in prange(q.shape[0]):
        _quant_row(q[row], kc[row], ks[row], kz[row], vc[row], vs[row], vz[row], Kr[row], Vr[row],
                   lengths[row // heads], bits, gk, gv, scale, out[row])


def _np(x: torch.Tensor, rows: int, dtype=torch.float32) -> np.ndarray:
    """A C-contiguous numpy array of x (dtype ``dtype``) with its (B, H) dimensions merged into ``rows``."""
    return x.detach().to(dtype).contiguous().numpy().reshape(rows, *x.shape[2:])


def numba_quant_attend(
    q: torch.Tensor,
    K: QuantizedTensor,
    V: QuantizedTensor,
    K_res: torch.Tensor | None = None,
    V_res: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Quantized-cache decode attention on the CPU with Numba (inputs checked by ``quant_attend``)."""
    B, H, D = q.shape
    rows, Tq = B * H, K.codes.shape[2]
    if K_res is None:
        K_res = V_res = torch.zeros(B, H, 0, D)
    T = Tq + K_res.shape[2]
    scale = D**-0.5 if scale is None else float(scale)
    n = np.full(B, T, np.int64) if lengths is None else lengths.detach().cpu().numpy().astype(np.int64)
    out = np.empty((rows, D), np.float32)
    _quant_rows(
        _np(q, rows), _np(K.codes, rows, torch.uint8), _np(K.scale, rows), _np(K.zero, rows),
        _np(V.codes, rows, torch.uint8), _np(V.scale, rows), _np(V.zero, rows), _np(K_res, rows), _np(V_res, rows),
        n, H, K.bits, K.group_size, V.group_size, np.float32(scale), out,
    )
    return torch.from_numpy(out).reshape(B, H, D).to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): flash-decoding over the logical positions [quantized ; residual]; each tile unpacks and
#    dequantizes in registers (residual positions load full-precision rows instead), then attend's merge.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _quant_split_kernel(
        q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, kr_ptr, vr_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,
        H, TQ, R, D, DP, NG, GK, GV, chunk, scale,
        BITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        PER: tl.constexpr = 8 // BITS
        MASK: tl.constexpr = (1 << BITS) - 1
        row = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        length = tl.load(len_ptr + row // H)
        start = split * chunk
        stop = tl.minimum(start + chunk, length)

        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        q = tl.load(q_ptr + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32) * scale
        shift = (offs_d % PER) * BITS  # the field of each channel within its byte
        row64 = row.to(tl.int64)
        codes_base = row64 * TQ * DP
        kmeta_base = row64 * (TQ // GK) * D
        vmeta_base = row64 * TQ * NG
        res_base = row64 * R * D

        m = -float("inf")
        l = 0.0
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for t0 in range(start, stop, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask_t = offs_t < stop
            in_q = (mask_t & (offs_t < TQ))[:, None] & mask_d[None, :]
            in_r = (mask_t & (offs_t >= TQ))[:, None] & mask_d[None, :]
            code_offs = codes_base + offs_t[:, None] * DP + (offs_d // PER)[None, :]
            kmeta = kmeta_base + (offs_t // GK)[:, None] * D + offs_d[None, :]
            res_offs = res_base + (offs_t - TQ)[:, None] * D + offs_d[None, :]

            kb = tl.load(kc_ptr + code_offs, mask=in_q, other=0).to(tl.int32)
            kcode = ((kb >> shift[None, :]) & MASK).to(tl.float32)
            k = kcode * tl.load(ks_ptr + kmeta, mask=in_q, other=0.0) + tl.load(kz_ptr + kmeta, mask=in_q, other=0.0)
            k += tl.load(kr_ptr + res_offs, mask=in_r, other=0.0).to(tl.float32)  # 0 where quantized
            s = tl.sum(k * q[None, :], axis=1)
            s = tl.where(mask_t, s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)

            vmeta = vmeta_base + offs_t[:, None] * NG + (offs_d // GV)[None, :]
            vb = tl.load(vc_ptr + code_offs, mask=in_q, other=0).to(tl.int32)
            vcode = ((vb >> shift[None, :]) & MASK).to(tl.float32)
            v = vcode * tl.load(vs_ptr + vmeta, mask=in_q, other=0.0) + tl.load(vz_ptr + vmeta, mask=in_q, other=0.0)
            v += tl.load(vr_ptr + res_offs, mask=in_r, other=0.0).to(tl.float32)
            l = l * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new

        part = row * n_splits + split
        tl.store(m_ptr + part, m)
        tl.store(l_ptr + part, l)
        tl.store(acc_ptr + part * D + offs_d, acc, mask=mask_d)


def triton_quant_attend(
    q: torch.Tensor,
    K: QuantizedTensor,
    V: QuantizedTensor,
    K_res: torch.Tensor | None = None,
    V_res: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    scale: float | None = None,
    block_t: int | None = None,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Flash-decoding over the quantized cache with Triton (inputs checked by ``quant_attend``): (B, H, D)."""
    if triton is None:
        raise RuntimeError("triton_quant_attend needs the triton package (pip install triton; Linux + CUDA)")
    from .attend import _attend_combine_kernel

    B, H, D = q.shape
    rows, device = B * H, q.device
    Tq, Dp, NG = K.codes.shape[2], K.codes.shape[3], V.scale.shape[3]
    R = 0 if K_res is None else K_res.shape[2]
    T = Tq + R
    scale = D**-0.5 if scale is None else float(scale)
    dummy_u8 = torch.zeros(1, dtype=torch.uint8, device=device)  # for empty tensors: a valid pointer
    dummy = torch.zeros(1, dtype=torch.float32, device=device)

    def arg(x, empty):
        return empty if x is None or x.numel() == 0 else x.contiguous()

    kc, vc = arg(K.codes, dummy_u8), arg(V.codes, dummy_u8)
    ks, kz, vs, vz = (arg(x.float(), dummy) for x in (K.scale, K.zero, V.scale, V.zero))
    kr, vr = arg(K_res, dummy), arg(V_res, dummy)
    n = (torch.full((B,), T, dtype=torch.int32, device=device) if lengths is None
         else lengths.to(device=device, dtype=torch.int32))
    block_t, n_splits, chunk = _triton_config(rows, T, D, device, block_t, n_splits)
    m = torch.empty((rows, n_splits), dtype=torch.float32, device=device)
    l = torch.empty_like(m)
    acc = torch.empty((rows, n_splits, D), dtype=torch.float32, device=device)
    block_d = triton.next_power_of_2(D)
    _quant_split_kernel[(rows, n_splits)](
        q.contiguous(), kc, ks, kz, vc, vs, vz, kr, vr, n, m, l, acc,
        H, Tq, R, D, Dp, NG, K.group_size, V.group_size, chunk, scale,
        BITS=K.bits, BLOCK_T=block_t, BLOCK_D=block_d,
    )
    direct = device.type == "cuda" and not triton_interpret()
    out = torch.empty((B, H, D), dtype=q.dtype if direct else torch.float32, device=device)
    _attend_combine_kernel[(rows,)](
        m, l, acc, out, n_splits, D, BLOCK_S=triton.next_power_of_2(n_splits), BLOCK_D=block_d,
    )
    return out.to(q.dtype)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------


def quant_attend(
    q: torch.Tensor,
    K: QuantizedTensor,
    V: QuantizedTensor,
    K_res: torch.Tensor | None = None,
    V_res: torch.Tensor | None = None,
    lengths: torch.Tensor | Sequence[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode attention over a quantized cache plus an optional full-precision residual window.

    q (B, H, D); K = ``quantize_keys(...)`` and V = ``quantize_values(...)`` of T_q tokens (same bits);
    K_res, V_res (B, H, R, D) in q's dtype, appended after the quantized tokens (both or neither);
    lengths (B,) ints in 1..T_q + R (None: all). Returns (B, H, D) in q's dtype; equals
    ``attend(q, cat(dequantize(K), K_res), cat(dequantize(V), V_res), lengths)``.
    backend: "auto" | "torch" (dequantize-then-attend) | "numba" (CPU) | "triton" (CUDA / interpreter).
    """
    lengths, scale = _check_inputs(q, K, V, K_res, V_res, lengths, scale)
    backend = resolve_backend(backend, q.device, op="quant_attend")
    if q.shape[0] * q.shape[1] == 0:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if backend == "torch":
        return reference(q, K, V, K_res, V_res, lengths, scale)
    if backend == "numba":
        return numba_quant_attend(q, K, V, K_res, V_res, lengths, scale)
    return triton_quant_attend(q, K, V, K_res, V_res, lengths, scale)


def _check_quantized(name: str, x, mode: str, B: int, H: int, D: int, device: torch.device) -> None:
    maker = "quantize_keys" if mode == "channel" else "quantize_values"
    if not isinstance(x, QuantizedTensor):
        raise TypeError(f"{name} must be a QuantizedTensor (from {maker}), got {type(x).__name__}")
    if x.mode != mode:
        raise ValueError(f"{name} must be quantized per {mode} (mode={mode!r}, from {maker}), got mode={x.mode!r}")
    _check_bits(x.bits)
    if x.dim != D:
        raise ValueError(f"{name}.dim must equal q's head dimension D={D}, got {x.dim}")
    Dp = -(-D // (8 // x.bits))
    if x.codes.dtype != torch.uint8 or x.codes.dim() != 4 or tuple(x.codes.shape[:2]) != (B, H) \
            or x.codes.shape[3] != Dp:
        raise ValueError(f"{name}.codes must be uint8 of shape (B, H, T, ceil(D*bits/8)) = ({B}, {H}, T, {Dp}), "
                         f"got {x.codes.dtype} {tuple(x.codes.shape)}")
    T, G = x.codes.shape[2], x.group_size
    if G < 1 or (mode == "channel" and T % G) or (mode == "token" and G % (8 // x.bits)):
        raise ValueError(f"{name}.group_size={G} does not fit T={T} and bits={x.bits}")
    meta = (B, H, T // G, D) if mode == "channel" else (B, H, T, -(-D // G))
    for field in ("scale", "zero"):
        y = getattr(x, field)
        if tuple(y.shape) != meta or not y.is_floating_point():
            raise ValueError(f"{name}.{field} must be floating point of shape {meta}, got {y.dtype} {tuple(y.shape)}")
    if {x.codes.device, x.scale.device, x.zero.device} != {device}:
        raise ValueError(f"{name} must be on q's device {device}, got codes on {x.codes.device}, scale on "
                         f"{x.scale.device}, zero on {x.zero.device}")


def _check_inputs(q, K, V, K_res, V_res, lengths, scale) -> tuple[torch.Tensor | None, float]:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if not q.is_floating_point():
        raise TypeError(f"q must hold floating-point numbers, got {q.dtype}")
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D (B, H, D), got shape {tuple(q.shape)}")
    B, H, D = q.shape
    _check_quantized("K", K, "channel", B, H, D, q.device)
    _check_quantized("V", V, "token", B, H, D, q.device)
    if K.bits != V.bits:
        raise ValueError(f"K and V must use the same bits, got K.bits={K.bits}, V.bits={V.bits}")
    Tq = K.codes.shape[2]
    if V.codes.shape[2] != Tq:
        raise ValueError(f"V must hold K's T_q={Tq} quantized tokens, got {V.codes.shape[2]}")
    if (K_res is None) != (V_res is None):
        raise ValueError("K_res and V_res must be given together (or both None)")
    R = 0
    if K_res is not None:
        for name, x in (("K_res", K_res), ("V_res", V_res)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype != q.dtype:
                raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
            if x.device != q.device:
                raise ValueError(f"{name} must be on q's device {q.device}, got {x.device}")
        if K_res.dim() != 4 or tuple(K_res.shape[:2]) != (B, H) or K_res.shape[3] != D:
            raise ValueError(f"K_res must have shape (B, H, R, D) = ({B}, {H}, R, {D}), got {tuple(K_res.shape)}")
        if V_res.shape != K_res.shape:
            raise ValueError(f"V_res must have K_res's shape {tuple(K_res.shape)}, got {tuple(V_res.shape)}")
        R = K_res.shape[2]
    if Tq + R == 0:
        raise ValueError("the cache must hold at least one position (T_q + R >= 1), got T_q=0 and R=0")
    scale = check_scale(scale, D)
    if lengths is None:
        return None, scale
    return check_lengths("lengths", lengths, B, 1, Tq + R, "T_q + R", q.device), scale
