r"""Bit-packed SDR matching: the overlap of B query SDRs with M stored SDRs, fused with the threshold test.

An SDR (sparse distributed representation) of n bits is stored packed: bit i lives in bit ``i % 64`` of word
``i // 64`` (little-endian bit order; the padding bits of the last word are zero), so an SDR is a row of
W = ⌈n/64⌉ words. torch's uint64 supports few ops, so the words are kept in an **int64** tensor with the same
bits (``pack_bits`` / ``unpack_bits`` convert; numpy's ``.view(np.uint64)`` reads the same words).

For queries Q (B, W) and stored patterns S (M, W) the op returns, for every pair,

    overlap[b, m] = Σ_j popcount(Q[b, j] & S[m, j])         (the number of ON bits the two SDRs share)
    match[b, m]   = overlap[b, m] >= theta                    (a dendritic segment with threshold θ fires)

Popcount by bit tricks (SWAR, "sideways addition") works on signed 64-bit words unchanged: every mask clears
the bits an arithmetic shift would fill, so the same five lines run in torch, Numba and Triton:

    x = x - ((x >> 1) & 0x5555…);  x = (x & 0x3333…) + ((x >> 2) & 0x3333…);  x = (x + (x >> 4)) & 0x0f0f…
    x = x + (x >> 8);  x = x + (x >> 16);  x = x + (x >> 32);  popcount = x & 0x7f

- ``pack_bits`` / ``unpack_bits``   (…, n) bool <-> (…, W) int64 words (torch, any device).
- ``popcount64``                    the SWAR popcount of int64 words (torch).
- ``reference``                     plain torch: unpack and count the shared bits with a matrix product (the spec).
- ``numba_sdr_match``               CPU: prange over queries; per pair a loop over words with the SWAR popcount.
- ``triton_sdr_match``              GPU: one program per (query block × stored block); a (BLOCK_B, BLOCK_M, BLOCK_W)
                                    AND + popcount + sum per step over the words; the threshold in the epilogue.
- ``sdr_match``                     checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._dispatch import njit, prange, resolve_backend, tl, triton, triton_interpret

__all__ = ["numba_sdr_match", "pack_bits", "popcount64", "reference", "sdr_match", "triton_sdr_match",
           "unpack_bits", "words_for"]

_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def words_for(n: int) -> int:
    """The number of 64-bit words that hold an n-bit SDR: ⌈n/64⌉."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    return (int(n) + 63) // 64


# ------------------------------------------------------------------------------------------------------
# 0. Packing (torch, any device).
# ------------------------------------------------------------------------------------------------------


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bits: (…, n) bool (or integers 0/1) -> (…, ⌈n/64⌉) int64 words, bit i in bit i % 64 of word i // 64."""
    if not isinstance(bits, torch.Tensor):
        raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}")
    if bits.dim() < 1:
        raise ValueError(f"bits must have at least one dimension (…, n), got shape {tuple(bits.shape)}")
    if bits.dtype != torch.bool:
        if bits.is_floating_point() or bits.is_complex():
            raise TypeError(f"bits must be bool or integer 0/1, got {bits.dtype}")
        if bits.numel() and not bool(((bits == 0) | (bits == 1)).all()):
            raise ValueError("bits must hold only 0 and 1, got other values")
    n = bits.shape[-1]
    W = words_for(n)
    x = torch.zeros(*bits.shape[:-1], W * 64, dtype=torch.int64, device=bits.device)
    x[..., :n] = bits.to(torch.int64)
    shifts = torch.arange(64, dtype=torch.int64, device=bits.device)
    # distinct powers of two never carry, so the sum is the bitwise OR (bit 63 gives the int64 sign)
    return (x.view(*bits.shape[:-1], W, 64) << shifts).sum(-1)


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """words: (…, W) int64 -> (…, n) bool, the first n bits (n must need exactly W words: 64(W-1) < n <= 64W)."""
    words = _check_words("words", words)
    W = words.shape[-1]
    if words_for(n) != W:
        raise ValueError(f"n must need exactly W = {W} words (n in {64 * (W - 1) + 1}..{64 * W}), got {n}"
                         if W else f"n must be 0 for W = 0 words, got {n}")
    shifts = torch.arange(64, dtype=torch.int64, device=words.device)
    bits = ((words[..., None] >> shifts) & 1).bool()
    return bits.reshape(*words.shape[:-1], W * 64)[..., :n]


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """The number of set bits of each int64 word (SWAR bit tricks; correct for negative words too)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


def _check_words(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of packed int64 words, got {type(x).__name__}")
    if x.dtype == torch.uint64:
        x = x.view(torch.int64)
    if x.dtype != torch.int64:
        raise TypeError(f"{name} must hold packed 64-bit words (int64 or uint64; see pack_bits), got {x.dtype}")
    return x


# ------------------------------------------------------------------------------------------------------
# 1. The reference.
# ------------------------------------------------------------------------------------------------------


def reference(queries: torch.Tensor, stored: torch.Tensor, theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries: (B, W) int64 words, stored: (M, W) int64 words, theta >= 0 ->
    (match (B, M) bool = overlap >= theta, overlap (B, M) int32). Unpacks to bits and counts the shared ON bits
    with one matrix product (exact in float64 up to 2^53 bits)."""
    W = queries.shape[1]
    q = unpack_bits(queries, 64 * W).to(torch.float64) if W else queries.new_zeros(queries.shape[0], 0).double()
    s = unpack_bits(stored, 64 * W).to(torch.float64) if W else stored.new_zeros(stored.shape[0], 0).double()
    overlap = (q @ s.T).round().to(torch.int32)
    return overlap >= theta, overlap


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU).
# ------------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _match_numba(Q, S, theta, match, overlap):  # pragma: no cover
    """Q: (B, W) int64, S: (M, W) int64 (C order); writes match (B, M) uint8 and overlap (B, M) int32."""
    B, W = Q.shape
    M = S.shape[0]
    m1, m2, m4 = np.int64(_M1), np.int64(_M2), np.int64(_M4)
    for b in prange(B):
        for m in range(M):
            c = np.int64(0)
            for j in range(W):
                x = Q[b, j] & S[m, j]
                x = x - ((x >> 1) & m1)
                x = (x & m2) + ((x >> 2) & m2)
                x = (x + (x >> 4)) & m4
                x = x + (x >> 8)
                x = x + (x >> 16)
                x = x + (x >> 32)
                c += x & 0x7F
            overlap[b, m] = c
            match[b, m] = c >= theta


def numba_sdr_match(queries: torch.Tensor, stored: torch.Tensor, theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused popcount + threshold on the CPU (inputs checked by ``sdr_match``); same contract as ``reference``."""
    Q = np.ascontiguousarray(queries.numpy())
    S = np.ascontiguousarray(stored.numpy())
    B, M = Q.shape[0], S.shape[0]
    match = np.empty((B, M), np.uint8)
    overlap = np.empty((B, M), np.int32)
    if B and M:
        _match_numba(Q, S, np.int64(theta), match, overlap)
    return torch.from_numpy(match).view(torch.bool), torch.from_numpy(overlap)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU).
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _popc(x):
        x = x - ((x >> 1) & 0x5555555555555555)
        x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
        x = x + (x >> 8)
        x = x + (x >> 16)
        x = x + (x >> 32)
        return x & 0x7F

    @triton.jit
    def _match_kernel(q_ptr, s_ptr, match_ptr, ov_ptr, B, M, W, theta,
                      BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_m = tl.program_id(1)
        rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        bmask = rb < B
        mmask = rm < M
        acc = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.int32)
        for j0 in range(0, W, BLOCK_W):
            rw = j0 + tl.arange(0, BLOCK_W)
            wmask = rw < W
            q = tl.load(q_ptr + rb[:, None].to(tl.int64) * W + rw[None, :], mask=bmask[:, None] & wmask[None, :],
                        other=0)
            s = tl.load(s_ptr + rm[:, None].to(tl.int64) * W + rw[None, :], mask=mmask[:, None] & wmask[None, :],
                        other=0)
            x = q[:, None, :] & s[None, :, :]  # (BLOCK_B, BLOCK_M, BLOCK_W)
            acc += tl.sum(_popc(x), axis=2).to(tl.int32)
        offs = rb[:, None].to(tl.int64) * M + rm[None, :]
        m2 = bmask[:, None] & mmask[None, :]
        tl.store(ov_ptr + offs, acc, mask=m2)
        tl.store(match_ptr + offs, (acc >= theta).to(tl.int8), mask=m2)


def triton_sdr_match(queries: torch.Tensor, stored: torch.Tensor, theta: int, block_b: int | None = None,
                     block_m: int | None = None, block_w: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused popcount + threshold with Triton (inputs checked by ``sdr_match``); same contract as
    ``reference``. Tiles (powers of two) default to 16 × 32 × 4 words on a GPU and to a few large tiles in the
    interpreter."""
    if triton is None:
        raise RuntimeError("triton_sdr_match needs the triton package (pip install triton; Linux + CUDA)")
    Q, S = queries.contiguous(), stored.contiguous()
    B, W = Q.shape
    M = S.shape[0]
    match = torch.empty(B, M, dtype=torch.int8, device=Q.device)
    overlap = torch.empty(B, M, dtype=torch.int32, device=Q.device)
    if B == 0 or M == 0:
        return match.view(torch.bool), overlap
    gpu = Q.device.type == "cuda" and not triton_interpret()
    if block_b is None:
        block_b = 16 if gpu else min(64, triton.next_power_of_2(B))
    if block_m is None:
        block_m = 32 if gpu else min(64, triton.next_power_of_2(M))
    if block_w is None:
        block_w = 4 if gpu else min(32, triton.next_power_of_2(max(W, 1)))
    grid = (triton.cdiv(B, block_b), triton.cdiv(M, block_m))
    _match_kernel[grid](Q, S, match, overlap, B, M, W, int(theta), BLOCK_B=block_b, BLOCK_M=block_m,
                        BLOCK_W=block_w)
    return match.view(torch.bool), overlap


# ------------------------------------------------------------------------------------------------------
# 4. The public op.
# ------------------------------------------------------------------------------------------------------


def sdr_match(queries: torch.Tensor, stored: torch.Tensor, theta: int, backend: str = "auto",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match B packed query SDRs against M packed stored SDRs.

    queries: (B, W) or (W,) packed words (int64 or uint64, from ``pack_bits``); stored: (M, W) packed words on the
    same device; theta: the integer threshold >= 0. Returns (match, overlap): match (B, M) bool
    (``overlap >= theta``), overlap (B, M) int32 (shared ON bits); a 1-D query gives (M,) results.
    backend: "auto" | "torch" | "numba" (CPU) | "triton" (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    """
    queries, stored = _check_words("queries", queries), _check_words("stored", stored)
    if isinstance(theta, bool) or not isinstance(theta, numbers.Integral) or theta < 0:
        raise ValueError(f"theta must be an integer >= 0, got {theta!r}")
    if queries.dim() not in (1, 2):
        raise ValueError(f"queries must have shape (B, W) or (W,), got {tuple(queries.shape)}")
    if stored.dim() != 2:
        raise ValueError(f"stored must have shape (M, W), got {tuple(stored.shape)}")
    single = queries.dim() == 1
    q = queries[None] if single else queries
    if q.shape[1] != stored.shape[1]:
        raise ValueError(f"queries must have W = {stored.shape[1]} words like stored, got {q.shape[1]}")
    if q.device != stored.device:
        raise ValueError(f"queries must be on stored's device {stored.device}, got {q.device}")
    if theta >= 2**31:
        raise ValueError(f"theta must be < 2^31, got {theta}")
    q, s = q.contiguous(), stored.contiguous()
    backend = resolve_backend(backend, s.device, op="sdr_match")
    if backend == "torch":
        match, overlap = reference(q, s, int(theta))
    elif backend == "numba":
        match, overlap = numba_sdr_match(q, s, int(theta))
    else:
        match, overlap = triton_sdr_match(q, s, int(theta))
    return (match[0], overlap[0]) if single else (match, overlap)
