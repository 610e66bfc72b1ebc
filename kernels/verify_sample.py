"""Speculative verify-and-sample (Leviathan et al. 2023; Chen et al. 2023), fused.

The draft proposed tokens x_0..x_{γ-1}, sampling x_i from its distribution q_i; the target scored all γ+1
positions at once, giving logits z_0..z_γ and p_i = softmax(z_i / temperature). With uniforms u_0..u_γ
in [0, 1):

1. **Accept** draft token x_i, for i = 0, 1, ..., while  u_i · q_i(x_i) < p_i(x_i), i.e. u_i < p_i(x_i) /
   q_i(x_i): with probability min(1, p_i(x_i) / q_i(x_i)). n = the number accepted (0..γ).
2. **Emit one more token** with the last uniform u_γ, by inverse CDF: the smallest token v with
   r(0) + ... + r(v) > u_γ · (r(0) + ... + r(V-1)), where
   - r = max(0, p_n − q_n) (the *residual*) when draft token n was rejected (n < γ);
   - r = p_γ (the *bonus* token) when all γ were accepted.
   Should rounding leave no token above the threshold, the last token with r > 0 is taken. Should the
   residual have no mass at all (possible only when q_n sums to a little more than 1), r = p_n.

uniforms[i] (i < γ) decides only draft token i, and uniforms[γ] only the emitted token: the result is a
deterministic function of its inputs, so every backend can be tested for exact agreement. The emitted
tokens are distributed exactly as samples from the target (the *lossless* property); with ``greedy=True``
the rule is "accept while x_i = argmax p_i, then emit the argmax at position n" (the first maximum on ties;
draft_probs, uniforms and temperature are then not used).

All backends compute the probabilities in float64 (logits / temperature, then softmax), so they take the
same decisions except on inputs that tie to ~1e-15; the emitted token is found against the *unnormalised*
residual, so the fused versions never divide by the softmax sum per token.

Four implementations, top to bottom:

- ``reference``            plain torch, the spec: softmax of every row, ratios, the residual, cumsum, search.
- ``numba_verify_sample``  CPU: rows in order, each read in chunks: max, then the sum of exp; stops at the
                           first rejection; then one pass for the residual's mass and one (early-exit) pass
                           for the inverse CDF. exp is a vectorised float64 polynomial.
- ``triton_verify_sample`` GPU: one program, the same passes over tiles of the vocabulary.
- ``verify_sample``        checks the inputs and dispatches by device and ``backend=``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._dispatch import njit, resolve_backend, tl, triton

# ------------------------------------------------------------------------------------------------------
# 1. The reference: the definition, written as plainly as possible.
# ------------------------------------------------------------------------------------------------------


def reference(
    target_logits: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor | None,
    temperature: float = 1.0,
    greedy: bool = False,
) -> tuple[int, int]:
    """Verify γ draft tokens and emit the next one, in plain torch (materialises every distribution).

    target_logits (γ+1, V), draft_probs (γ, V), draft_tokens (γ,), uniforms (γ+1,) -> (n_accepted, token).
    """
    gamma = draft_tokens.shape[0]
    tokens = draft_tokens.long().tolist()
    if greedy:
        best = target_logits.argmax(dim=-1).tolist()  # the first maximum of each row
        n = 0
        while n < gamma and best[n] == tokens[n]:
            n += 1
        return n, best[n]

    p = torch.softmax(target_logits.double() / temperature, dim=-1)  # (γ+1, V)
    q = draft_probs.double()
    u = uniforms.double()
    rows = torch.arange(gamma, device=p.device)
    accept = u[:gamma] * q[rows, draft_tokens.long()] < p[rows, draft_tokens.long()]  # (γ,)
    rejected = torch.nonzero(~accept).flatten().tolist()
    n = rejected[0] if rejected else gamma

    residual = (p[n] - q[n]).clamp(min=0) if n < gamma else p[gamma]
    if n < gamma and residual.sum() == 0:  # no residual mass: draft_probs sums to a little more than 1
        residual = p[n]
    cdf = torch.cumsum(residual, dim=0)
    token = int(torch.searchsorted(cdf, (u[gamma] * cdf[-1]).reshape(1), right=True))  # first v with cdf[v] > u * total
    if token == cdf.shape[0]:  # rounding left the threshold at the very top: the last token with mass
        token = int(torch.nonzero(residual > 0).max())
    return n, token


# ------------------------------------------------------------------------------------------------------
# 2. Numba (CPU): one row at a time, in chunks, stopping at the first rejection.
# ------------------------------------------------------------------------------------------------------

_CHUNK = 1024  # vocabulary entries per chunk: exp values live in a small scratch buffer, never a full row
_EXP_MIN = -708.0  # below this, exp underflows past the smallest normal float64: taken as 0
_ROUND = 6755399441055744.0  # 1.5 * 2^52: k + _ROUND holds the integer k in its low mantissa bits
_ROUND_BITS = np.int64(0x4338000000000000)  # the bits of _ROUND


@njit(cache=True, fastmath={"contract"})  # fused multiply-adds only: no reordering, no finite-math
def _exp_chunk(z, start, n, inv_t, m, out, kbuf):  # pragma: no cover - compiled
    """out[t] = exp(z[start + t] * inv_t - m) for t < n (arguments <= 0), vectorised; 0 below -708.

    exp(x) = 2^k e^r with k = round(x / ln 2) and |r| <= ln(2) / 2; e^r by its Taylor series to degree 12
    (truncation < 2e-16): within 1 ulp of libm's exp. 2^k is built from its bits: k + 1.5 * 2^52, read
    as an int64, holds k in its low bits, so (bits - bits(1.5 * 2^52) + 1023) << 52 is 2^k; a float64 view
    of the int64 buffer reads it back. Every loop vectorises (AVX2 has no float64 -> int64 conversion,
    hence the trick): ~2.5x faster than libm's scalar exp per token. No finite-math flags: logits may be
    -inf. (z * (1 / T) may differ from the reference's z / T in the last bit: a difference of 1e-16.)
    """
    kf = kbuf.view(np.float64)
    for t in range(n):
        x = z[start + t] * inv_t - m
        v = max(x, _EXP_MIN)
        k = np.floor(v * 1.4426950408889634 + 0.5)
        r = (v - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
        p = 2.08767569878680989792e-09
        p = p * r + 2.50521083854417187751e-08
        p = p * r + 2.75573192239858906526e-07
        p = p * r + 2.75573192239858906526e-06
        p = p * r + 2.48015873015873015873e-05
        p = p * r + 1.98412698412698412698e-04
        p = p * r + 1.38888888888888888889e-03
        p = p * r + 8.33333333333333333333e-03
        p = p * r + 4.16666666666666666667e-02
        p = p * r + 1.66666666666666666667e-01
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        out[t] = p if x >= _EXP_MIN else 0.0
        kf[t] = k + _ROUND
    for t in range(n):
        kbuf[t] = (kbuf[t] - _ROUND_BITS + 1023) << 52  # the bits of the float64 2^k
    for t in range(n):
        out[t] *= kf[t]


@njit(cache=True, fastmath={"reassoc", "contract"})  # sums may be reordered (vectorised), nothing else
def _residual_chunk(z, q, start, n, inv_t, m, s, use_q, e, kbuf):  # pragma: no cover - compiled
    """e[t] = s * r(start + t) for t < n, returns their sum. r = max(0, p - q) with use_q, else p, where
    p = exp(z * inv_t - m) / s: the residual scaled by s, so no division per token."""
    _exp_chunk(z, start, n, inv_t, m, e, kbuf)
    if use_q:
        for t in range(n):
            e[t] = max(0.0, e[t] - q[start + t] * s)
    total = 0.0
    for t in range(n):
        total += e[t]
    return total


@njit(cache=True)
def _row_max(z):  # pragma: no cover - compiled
    m = z[0]
    for v in range(1, z.shape[0]):
        if z[v] > m:
            m = z[v]
    return m


@njit(cache=True)
def _first_argmax(z):  # pragma: no cover - compiled
    best, arg = z[0], 0
    for v in range(1, z.shape[0]):
        if z[v] > best:
            best, arg = z[v], v
    return arg


@njit(cache=True)
def _residual_mass(z, q, inv_t, m, s, use_q, e, kbuf):  # pragma: no cover - compiled
    """s * (the sum of r over the row), a chunk at a time. With use_q=False and s=1: sum of exp(z/T - m)."""
    V = z.shape[0]
    total = 0.0
    for c0 in range(0, V, _CHUNK):
        total += _residual_chunk(z, q, c0, min(_CHUNK, V - c0), inv_t, m, s, use_q, e, kbuf)
    return total


@njit(cache=True)
def _inverse_cdf(z, q, inv_t, m, s, use_q, threshold, e, kbuf):  # pragma: no cover - compiled
    """The first v whose running sum of s * r exceeds threshold (else the last v with r(v) > 0).

    Chunk sums come first (vectorised, as in ``_residual_mass``); only the chunk that crosses the threshold
    is scanned token by token, and the pass stops there.
    """
    V = z.shape[0]
    running, last = 0.0, -1
    for c0 in range(0, V, _CHUNK):
        n = min(_CHUNK, V - c0)
        total = _residual_chunk(z, q, c0, n, inv_t, m, s, use_q, e, kbuf)
        if running + total > threshold:
            for t in range(n):
                running += e[t]
                if e[t] > 0.0 and running > threshold:
                    return c0 + t
        else:
            running += total
        for t in range(n - 1, -1, -1):
            if e[t] > 0.0:
                last = c0 + t
                break
    return last


@njit(cache=True)
def _verify_numba(logits, q, tokens, u, inv_t, greedy):  # pragma: no cover - compiled
    """logits (γ+1, V), q (γ, V) float32/64, tokens (γ,) int64, u (γ+1,) float64 -> (n, token)."""
    gamma = tokens.shape[0]
    if greedy:
        n = 0
        while n < gamma and _first_argmax(logits[n]) == tokens[n]:
            n += 1
        return n, _first_argmax(logits[n])
    e = np.empty(_CHUNK, np.float64)
    kbuf = np.empty(_CHUNK, np.int64)
    n, m, s = 0, 0.0, 1.0
    while True:  # row n: its softmax normaliser, then (for a draft row) the acceptance test
        z = logits[n]
        m = _row_max(z) * inv_t  # = the max of z * inv_t: multiplying by 1/T > 0 keeps the order
        s = _residual_mass(z, q[0], inv_t, m, 1.0, False, e, kbuf)  # sum of exp(z / T - m)
        if n == gamma:
            break
        x = tokens[n]
        _exp_chunk(z, x, 1, inv_t, m, e, kbuf)
        if not u[n] * q[n, x] < e[0] / s:
            break
        n += 1
    use_q = n < gamma
    qn = q[n] if use_q else q[0]  # (unused for the bonus row)
    mass = _residual_mass(logits[n], qn, inv_t, m, s, use_q, e, kbuf) if use_q else s
    if use_q and mass == 0.0:  # no residual mass (draft_probs sums to a little more than 1): sample p
        use_q, mass = False, s
    return n, _inverse_cdf(logits[n], qn, inv_t, m, s, use_q, u[gamma] * mass, e, kbuf)


def _numpy(x: torch.Tensor | None, dtype=None) -> np.ndarray | None:
    """A C-contiguous numpy array (fp32/fp64 kept as is, 16-bit floats as fp32; no copy when possible)."""
    if x is None:
        return None
    x = x.detach()
    if dtype is not None:
        x = x.to(dtype)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.cpu().contiguous().numpy()


def numba_verify_sample(
    target_logits: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor | None,
    temperature: float = 1.0,
    greedy: bool = False,
) -> tuple[int, int]:
    """Verify-and-sample on the CPU with Numba (inputs checked by ``verify_sample``)."""
    gamma, V = draft_tokens.shape[0], target_logits.shape[1]
    logits = _numpy(target_logits)
    q = _numpy(draft_probs) if draft_probs is not None else np.zeros((gamma, V), logits.dtype)
    u = _numpy(uniforms, torch.float64) if uniforms is not None else np.zeros(gamma + 1)
    inv_t = 1.0 if greedy else 1.0 / float(temperature)  # greedy ignores the temperature (may be 0)
    n, token = _verify_numba(logits, q, _numpy(draft_tokens, torch.int64), u, inv_t, bool(greedy))
    return int(n), int(token)


# ------------------------------------------------------------------------------------------------------
# 3. Triton (GPU): one program walks the rows in order; every pass reads the vocabulary in tiles.
# ------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _tile_logits(row_ptr, v0, V, temperature, BLOCK_V: tl.constexpr):
        offs = v0 + tl.arange(0, BLOCK_V)
        valid = offs < V
        z = tl.load(row_ptr + offs, mask=valid, other=-float("inf")).to(tl.float64) / temperature
        return offs, valid, z

    @triton.jit
    def _softmax_stats(row_ptr, V, temperature, BLOCK_V: tl.constexpr):
        """(max, sum of exp(z / T - max)) of one row: a pass for the max, a pass for the sum."""
        m = tl.full([], -float("inf"), dtype=tl.float64)
        for v0 in range(0, V, BLOCK_V):
            offs, valid, z = _tile_logits(row_ptr, v0, V, temperature, BLOCK_V)
            m = tl.maximum(m, tl.max(z, axis=0))
        s = tl.zeros([], dtype=tl.float64)
        for v0 in range(0, V, BLOCK_V):
            offs, valid, z = _tile_logits(row_ptr, v0, V, temperature, BLOCK_V)
            s += tl.sum(tl.where(valid, tl.exp(z - m), 0.0), axis=0)
        return m, s

    @triton.jit
    def _residual_tile(row_ptr, q_row_ptr, v0, V, temperature, m, s, use_q, BLOCK_V: tl.constexpr):
        """s * r over one tile: max(0, exp(z - m) - q s) when use_q, else exp(z - m); 0 past V."""
        offs, valid, z = _tile_logits(row_ptr, v0, V, temperature, BLOCK_V)
        e = tl.where(valid, tl.exp(z - m), 0.0)
        q = tl.load(q_row_ptr + offs, mask=valid, other=0.0).to(tl.float64)  # (a real row even when unused)
        return offs, tl.where(use_q, tl.maximum(e - q * s, 0.0), e)

    @triton.jit
    def _argmax_row(row_ptr, V, BLOCK_V: tl.constexpr):
        """The first index of the row's maximum."""
        best = tl.full([], -float("inf"), dtype=tl.float64)
        arg = tl.zeros([], dtype=tl.int64)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float64)
            tile_max = tl.max(z, axis=0)
            tile_arg = tl.min(tl.where(z == tile_max, offs, V), axis=0).to(tl.int64)
            better = tile_max > best  # strictly: an earlier tile keeps its tie
            arg = tl.where(better | (v0 == 0), tile_arg, arg)
            best = tl.where(better | (v0 == 0), tile_max, best)
        return arg

    @triton.jit
    def _verify_sample_kernel(
        logits_ptr, q_ptr, tok_ptr, u_ptr, temp_ptr, out_ptr, gamma, V,
        GREEDY: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        temperature = tl.load(temp_ptr)  # float64 through memory: a float argument would arrive as fp32
        n = tl.zeros([], dtype=tl.int64)
        go = n < gamma  # a tensor: Triton may pass gamma = 1 as a constant
        if GREEDY:
            while go:
                arg = _argmax_row(logits_ptr + n * V, V, BLOCK_V)
                ok = arg == tl.load(tok_ptr + n)
                n += ok.to(tl.int64)
                go = ok & (n < gamma)
            token = _argmax_row(logits_ptr + n * V, V, BLOCK_V)
        else:
            while go:  # draft row n: accept while u_n q_n(x_n) < p_n(x_n)
                row_ptr = logits_ptr + n * V
                m, s = _softmax_stats(row_ptr, V, temperature, BLOCK_V)
                x = tl.load(tok_ptr + n)
                p_x = tl.exp(tl.load(row_ptr + x).to(tl.float64) / temperature - m) / s
                q_x = tl.load(q_ptr + n * V + x).to(tl.float64)
                ok = tl.load(u_ptr + n).to(tl.float64) * q_x < p_x
                n += ok.to(tl.int64)
                go = ok & (n < gamma)
            row_ptr = logits_ptr + n * V
            m, s = _softmax_stats(row_ptr, V, temperature, BLOCK_V)  # row n again (or the bonus row)
            use_q = n < gamma
            q_row_ptr = q_ptr + tl.minimum(n, gamma - 1) * V
            mass = tl.zeros([], dtype=tl.float64)
            for v0 in range(0, V, BLOCK_V):
                offs, r = _residual_tile(row_ptr, q_row_ptr, v0, V, temperature, m, s, use_q, BLOCK_V)
                mass += tl.sum(r, axis=0)
            use_q = use_q & (mass != 0.0)  # no residual mass (q sums to a little over 1): sample p itself
            mass = tl.where(use_q, mass, s)
            threshold = tl.load(u_ptr + gamma).to(tl.float64) * mass
            running = tl.zeros([], dtype=tl.float64)
            token = tl.full([], -1, dtype=tl.int64)
            last = tl.full([], -1, dtype=tl.int64)
            v0 = tl.zeros([], dtype=tl.int32)
            while (v0 < V) & (token < 0):  # inverse CDF, stopping in the tile that crosses the threshold
                offs, r = _residual_tile(row_ptr, q_row_ptr, v0, V, temperature, m, s, use_q, BLOCK_V)
                cdf = running + tl.cumsum(r, axis=0)
                first = tl.min(tl.where((cdf > threshold) & (r > 0.0), offs, V), axis=0).to(tl.int64)
                token = tl.where(first < V, first, token)
                last = tl.maximum(last, tl.max(tl.where(r > 0.0, offs, -1), axis=0).to(tl.int64))
                running += tl.sum(r, axis=0)
                v0 += BLOCK_V
            token = tl.where(token < 0, last, token)
        tl.store(out_ptr, n)
        tl.store(out_ptr + 1, token)


def triton_verify_sample(
    target_logits: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor | None,
    temperature: float = 1.0,
    greedy: bool = False,
    block_v: int | None = None,
) -> tuple[int, int]:
    """Verify-and-sample with Triton (inputs checked by ``verify_sample``); one program, fp64 inside.

    ``block_v`` (a power of two) overrides the vocabulary tile (tests use it to cross tile boundaries).
    """
    if triton is None:
        raise RuntimeError("triton_verify_sample needs the triton package (pip install triton; Linux + CUDA)")
    gamma, V = draft_tokens.shape[0], target_logits.shape[1]
    device = target_logits.device
    interpret = device.type != "cuda"
    logits = target_logits.contiguous()
    if interpret and logits.dtype in (torch.float16, torch.bfloat16):  # the interpreter mishandles 16-bit
        logits = logits.float()
    q = (draft_probs if draft_probs is not None else torch.zeros((gamma, V), device=device)).contiguous()
    if interpret and q.dtype in (torch.float16, torch.bfloat16):
        q = q.float()
    u = (uniforms if uniforms is not None else torch.zeros(gamma + 1, device=device)).to(torch.float64).contiguous()
    tokens = draft_tokens.to(device=device, dtype=torch.int64).contiguous()
    out = torch.empty(2, dtype=torch.int64, device=device)
    if block_v is None:
        block_v = min(triton.next_power_of_2(V), 4096 if interpret else 1024)
    temp = torch.tensor([1.0 if greedy else float(temperature)], dtype=torch.float64, device=device)
    _verify_sample_kernel[(1,)](logits, q, tokens, u, temp, out, gamma, V, GREEDY=bool(greedy), BLOCK_V=block_v)
    n, token = out.tolist()
    return int(n), int(token)


# ------------------------------------------------------------------------------------------------------
# 4. The public op: check the inputs, pick the backend.
# ------------------------------------------------------------------------------------------------------

_FLOATS = "float16, bfloat16, float32 or float64"


def verify_sample(
    target_logits: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor | None,
    temperature: float = 1.0,
    greedy: bool = False,
    backend: str = "auto",
) -> tuple[int, int]:
    """Speculative verification: accept a prefix of the draft, then emit one token -> (n_accepted, token).

    target_logits: (γ+1, V) the target's logits at the γ draft positions and the one after them.
    draft_probs: (γ, V) the draft's sampling distribution q_i at each draft position (rows sum to 1).
    draft_tokens: (γ,) ints in 0..V-1, the proposed tokens, γ >= 1.
    uniforms: (γ+1,) floats in [0, 1): uniforms[i] accepts or rejects draft token i; uniforms[γ] draws
    the emitted token (the residual's at the first rejection, the bonus token from p_γ otherwise).
    temperature: > 0, p_i = softmax(target_logits[i] / temperature) (unused when greedy).
    greedy: accept while the draft token is the target's argmax, then emit the argmax; draft_probs and
    uniforms may then be None. backend: as for ``attend``. Exact in float64: every backend returns the
    same pair. Checking the probabilities reads them on the host (one synchronisation on a GPU).
    """
    _check_inputs(target_logits, draft_probs, draft_tokens, uniforms, temperature, greedy)
    backend = resolve_backend(backend, target_logits.device, op="verify_sample")
    args = (target_logits, draft_probs, draft_tokens, uniforms, float(temperature), bool(greedy))
    if backend == "torch":
        return reference(*args)
    if backend == "numba":
        return numba_verify_sample(*args)
    return triton_verify_sample(*args)


def _check_inputs(target_logits, draft_probs, draft_tokens, uniforms, temperature, greedy) -> None:
    """Validate shapes, dtypes, devices, values, temperature; a clear error naming the argument."""
    if not isinstance(greedy, (bool, np.bool_)):
        raise TypeError(f"greedy must be a bool, got {type(greedy).__name__}")
    if not isinstance(target_logits, torch.Tensor):
        raise TypeError(f"target_logits must be a torch.Tensor, got {type(target_logits).__name__}")
    if not target_logits.is_floating_point():
        raise TypeError(f"target_logits must hold floating-point numbers ({_FLOATS}), got {target_logits.dtype}")
    if target_logits.dim() != 2:
        raise ValueError(f"target_logits must be 2-D (γ+1, V), got shape {tuple(target_logits.shape)}")
    rows, V = target_logits.shape
    if V == 0:
        raise ValueError("target_logits must have a vocabulary V >= 1, got V=0")
    gamma = rows - 1

    if not isinstance(draft_tokens, torch.Tensor):
        raise TypeError(f"draft_tokens must be a torch.Tensor, got {type(draft_tokens).__name__}")
    if draft_tokens.dtype == torch.bool or draft_tokens.is_floating_point() or draft_tokens.is_complex():
        raise TypeError(f"draft_tokens must hold integers, got {draft_tokens.dtype}")
    if draft_tokens.dim() != 1:
        raise ValueError(f"draft_tokens must be 1-D (γ,), got shape {tuple(draft_tokens.shape)}")
    if draft_tokens.shape[0] == 0:
        raise ValueError("draft_tokens must hold γ >= 1 tokens, got γ=0")
    if draft_tokens.shape[0] != gamma:
        raise ValueError(f"target_logits must have γ+1 = {draft_tokens.shape[0] + 1} rows for "
                         f"γ = {draft_tokens.shape[0]} draft tokens, got {rows}")

    tensors = {"target_logits": target_logits, "draft_tokens": draft_tokens}
    if draft_probs is not None:
        if not isinstance(draft_probs, torch.Tensor):
            raise TypeError(f"draft_probs must be a torch.Tensor, got {type(draft_probs).__name__}")
        if not draft_probs.is_floating_point():
            raise TypeError(f"draft_probs must hold floating-point numbers ({_FLOATS}), got {draft_probs.dtype}")
        if draft_probs.dim() != 2:
            raise ValueError(f"draft_probs must be 2-D (γ, V), got shape {tuple(draft_probs.shape)}")
        if draft_probs.shape[1] != V:
            raise ValueError(f"draft_probs must have the vocabulary of target_logits, V = {V} columns, "
                             f"got {draft_probs.shape[1]}")
        if draft_probs.shape[0] != gamma:
            raise ValueError(f"draft_probs must have shape (γ, V) = ({gamma}, {V}), got {tuple(draft_probs.shape)}")
        tensors["draft_probs"] = draft_probs
    elif not greedy:
        raise ValueError("draft_probs is required unless greedy=True, got None")
    if uniforms is not None:
        if not isinstance(uniforms, torch.Tensor):
            raise TypeError(f"uniforms must be a torch.Tensor, got {type(uniforms).__name__}")
        if not uniforms.is_floating_point():
            raise TypeError(f"uniforms must hold floating-point numbers ({_FLOATS}), got {uniforms.dtype}")
        if tuple(uniforms.shape) != (gamma + 1,):
            raise ValueError(f"uniforms must have shape (γ+1,) = ({gamma + 1},), got {tuple(uniforms.shape)}")
        tensors["uniforms"] = uniforms
    elif not greedy:
        raise ValueError("uniforms is required unless greedy=True, got None")
    devices = {x.device for x in tensors.values()}
    if len(devices) != 1:
        raise ValueError("target_logits, draft_probs, draft_tokens and uniforms must be on one device, got "
                         + ", ".join(f"{name} on {x.device}" for name, x in tensors.items()))

    if not greedy:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 (or use greedy=True), got {temperature}")

    # Values: a few reductions, read back to the host together (one synchronisation on a GPU).
    row_max = target_logits.amax(dim=1)  # NaN propagates; -inf iff the row is all -inf
    parts = [*row_max.aminmax(), *draft_tokens.aminmax()]
    if draft_probs is not None:
        sums = draft_probs.sum(dim=1)  # fp32 accumulation is ample for a tolerance of 1e-3
        parts += [draft_probs.amin(), *sums.aminmax()]
    if uniforms is not None:
        parts += [*uniforms.aminmax()]
    if target_logits.device.type == "cpu":  # reading scalars is cheap here; stacking them is not
        stats = [float(x) for x in parts]
    else:  # one synchronisation instead of one per scalar
        stats = torch.stack([x.double() for x in parts]).tolist()
    if math.isnan(stats[1]) or stats[1] == math.inf:
        raise ValueError("target_logits must not hold NaN or +inf (-inf masks a token)")
    if stats[0] == -math.inf:
        row = int(torch.nonzero(row_max == float("-inf"))[0])
        raise ValueError(f"target_logits must leave every row a finite logit, got row {row} all -inf")
    lo, hi = int(stats[2]), int(stats[3])
    if lo < 0 or hi >= V:
        raise ValueError(f"draft_tokens must lie in 0..V-1 = 0..{V - 1}, got values from {lo} to {hi}")
    if draft_probs is not None:
        q_min, s_min, s_max = stats[4:7]
        if not q_min >= 0:  # also NaN
            raise ValueError(f"draft_probs must hold non-negative probabilities, got a minimum of {q_min}")
        tol = 1e-2 if draft_probs.dtype in (torch.float16, torch.bfloat16) else 1e-3
        if not (abs(s_min - 1) <= tol and abs(s_max - 1) <= tol):  # also NaN and inf
            worst = s_min if abs(s_min - 1) > abs(s_max - 1) else s_max
            raise ValueError(f"draft_probs rows must sum to 1 (within {tol}), got a row summing to {worst:.6g}")
    if uniforms is not None:
        ulo, uhi = stats[-2:]
        if not (0.0 <= ulo and uhi < 1.0):
            raise ValueError(f"uniforms must lie in [0, 1), got values from {ulo} to {uhi}")
