"""Reading a compressed cache in place: one decode step through the fused kernels of ``labkit.kernels``.

A compressor is only half of the story: at every decode step attention must *read* the compressed cache.
The unfused way decompresses first (reconstruct K̂ = Kc Uᵀ, dequantize the codes, gather the kept rows)
and then attends over a full-width fp32 cache, so the memory traffic that compression saved is spent again.
The fused kernels read the compressed form directly:

- ``project_attend``  scores and values in rank r: q̃ = q U_k, softmax(Kc q̃) Vc, one back-projection U_v;
- ``quant_attend``    dequantization folded into the score and value loops (KIVI codes, fp32 residual);
- ``evict_compact``   score → top-k → gather in one pass; attention then reads only the kept rows.

``decode_queries`` captures the real queries of one decode step of the tiny LM; ``read_compressed`` sends
one layer's query and cache through each kernel and through its unfused twin, and reports how far apart
they are (rounding only) and how far each is from full attention (the compression's own error);
``time_readers`` times both ways on a long synthetic cache (the benchmark in ``benchmarks/run.py`` does the
same with flushed caches and more repeats).
"""

from __future__ import annotations

import time

import torch

from labkit.kernels.attend import attend
from labkit.kernels.evict_compact import evict_compact
from labkit.kernels.evict_compact import reference as evict_reference
from labkit.kernels.project_attend import project_attend
from labkit.kernels.quant_attend import QuantizedTensor, quant_attend, quantize_keys, quantize_values
from labkit.kernels.quant_attend import reference as quant_reference
from labkit.models.tinylm import KVCache, TinyLM, apply_rope, rope_cos_sin

__all__ = ["decode_queries", "head_bases", "read_compressed", "time_readers"]


@torch.no_grad()
def decode_queries(model: TinyLM, cache: KVCache, token: int) -> tuple[list[torch.Tensor], KVCache]:
    """Feed one ``token`` into a clone of ``cache`` (batch 1) and capture every layer's query.

    Returns ``(queries, appended)``: per layer the rotated (RoPE'd) query of the new position, (1, H, Dh),
    exactly what attention scores against the cache; and the cache after the append (the input is untouched).
    """
    if not isinstance(cache, KVCache) or cache.length == 0:
        raise ValueError("cache must be a non-empty KVCache (prefill a context first)")
    if cache.batch_size != 1:
        raise ValueError(f"cache must hold one sequence, got batch_size={cache.batch_size}")
    cfg = model.config
    if not 0 <= token < cfg.vocab_size:
        raise ValueError(f"token must be in 0..{cfg.vocab_size - 1}, got {token}")
    appended = cache.clone()
    captured: dict[int, torch.Tensor] = {}
    hooks = [block.self_attn.q_proj.register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
             for i, block in enumerate(model.layers)]
    try:
        model(torch.tensor([[token]]), cache=appended)
    finally:
        for h in hooks:
            h.remove()
    cos, sin = rope_cos_sin(appended.positions[:, -1:], cfg.head_dim, cfg.rope_base)
    queries = [apply_rope(captured[i].view(1, 1, cfg.n_heads, cfg.head_dim).transpose(1, 2), cos, sin)[:, :, 0]
               for i in range(cfg.n_layers)]
    return queries, appended


def head_bases(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Per head, the ``rank`` leading right singular vectors of its rows: x (B, H, T, D) -> (H, D, rank).

    Uncentred on purpose: the kernel reads ``Kc Uᵀ``, so the best rank-r subspace of the rows themselves
    (not of the rows minus their mean) is the one that minimises what the projection drops."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, H, T, D), got shape {tuple(x.shape)}")
    D = x.shape[-1]
    if not 1 <= rank <= D:
        raise ValueError(f"rank must be in 1..D = 1..{D}, got {rank}")
    rows = x.float().transpose(0, 1).reshape(x.shape[1], -1, D)  # (H, B*T, D)
    return torch.linalg.svd(rows, full_matrices=False).Vh[:, :rank].transpose(1, 2).contiguous()


def _split_for_groups(T: int, group: int) -> int:
    """How many leading tokens KIVI quantizes: whole key groups; the rest stay in the fp32 residual."""
    return T // group * group


def _quantized(K: torch.Tensor, V: torch.Tensor, bits: int, group: int):
    T_q = _split_for_groups(K.shape[2], group)
    if T_q == 0:
        raise ValueError(f"the cache must hold at least one group of {group} tokens to quantize, got T={K.shape[2]}")
    Kq, Vq = quantize_keys(K[:, :, :T_q], bits, group), quantize_values(V[:, :, :T_q], bits, group)
    return Kq, Vq, K[:, :, T_q:].contiguous(), V[:, :, T_q:].contiguous()


def _nbytes(x: QuantizedTensor | torch.Tensor) -> int:
    if isinstance(x, QuantizedTensor):
        return sum(t.numel() * t.element_size() for t in (x.codes, x.scale, x.zero))
    return x.numel() * x.element_size()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def read_compressed(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scores: torch.Tensor, *, rank: int,
                    bits: int, keep: int, group: int = 32, backend: str = "auto") -> list[dict]:
    """One layer's decode attention over three compressed forms of its cache, fused and unfused.

    q (B, H, D) rotated queries; K, V (B, H, T, D) the cache (H query heads: repeat grouped K/V heads first);
    scores (B, H, T) eviction scores (e.g. H2O's accumulated attention). Compressions: rank-``rank``
    projection (per-head bases from ``head_bases``), KIVI at ``bits`` with groups of ``group`` (the last
    T mod group tokens in fp32), and eviction to the ``keep`` best positions.

    Returns one row per method: the fraction of the fp32 cache's bytes the kernel reads, the largest
    difference between the fused kernel and the unfused path (decompress, then attend; rounding only), and
    the relative error of each against full attention (what the compression itself costs).
    """
    if q.dim() != 3 or K.dim() != 4 or K.shape != V.shape or q.shape != (*K.shape[:2], K.shape[-1]):
        raise ValueError(f"expected q (B, H, D) and K, V (B, H, T, D) of one shape, got q {tuple(q.shape)}, "
                         f"K {tuple(K.shape)}, V {tuple(V.shape)}")
    if scores.shape != K.shape[:3]:
        raise ValueError(f"scores must have shape (B, H, T) = {tuple(K.shape[:3])}, got {tuple(scores.shape)}")
    T = K.shape[2]
    if not 1 <= keep <= T:
        raise ValueError(f"keep must be in 1..T = 1..{T}, got {keep}")
    q, K, V, scores = (x.float().contiguous() for x in (q, K, V, scores))
    full = attend(q, K, V, backend="torch")
    full_bytes = _nbytes(K) + _nbytes(V)
    rows = []

    U_k, U_v = head_bases(K, rank), head_bases(V, rank)
    Kc, Vc = torch.einsum("bhtd,hdr->bhtr", K, U_k).contiguous(), torch.einsum("bhtd,hdr->bhtr", V, U_v).contiguous()
    fused = project_attend(q, Kc, Vc, U_k, U_v, backend=backend)
    unfused = attend(q, torch.einsum("bhtr,hdr->bhtd", Kc, U_k), torch.einsum("bhtr,hdr->bhtd", Vc, U_v),
                     backend="torch")
    rows.append(("projection", f"rank {rank} of {K.shape[-1]}", _nbytes(Kc) + _nbytes(Vc), fused, unfused))

    Kq, Vq, K_res, V_res = _quantized(K, V, bits, group)
    fused = quant_attend(q, Kq, Vq, K_res, V_res, backend=backend)
    unfused = quant_reference(q, Kq, Vq, K_res, V_res)
    held = _nbytes(Kq) + _nbytes(Vq) + _nbytes(K_res) + _nbytes(V_res)
    rows.append(("quantization", f"KIVI {bits}-bit, fp32 last {T - Kq.codes.shape[2]}", held, fused, unfused))

    K_kept, V_kept, _ = evict_compact(scores, K, V, keep, backend=backend)
    fused = attend(q, K_kept, V_kept, backend="torch")
    K_ref, V_ref, _ = evict_reference(scores, K, V, keep)
    unfused = attend(q, K_ref, V_ref, backend="torch")
    rows.append(("eviction", f"keep {keep} of {T}", _nbytes(K_kept) + _nbytes(V_kept), fused, unfused))

    return [{"method": m, "setting": s, "bytes read / full": held / full_bytes,
             "fused vs unfused (max abs)": float((f - u).abs().max()),
             "error vs full attention": _relative(f, full)} for m, s, held, f, u in rows]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: compilation, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def time_readers(B: int, H: int, T: int, D: int, *, rank: int, bits: int, keep: int, group: int = 32,
                 repeats: int = 5, backend: str = "auto", seed: int = 0) -> list[dict]:
    """Median milliseconds of one decode step's attention over a random (B, H, T, D) cache: full attention,
    then each compressed form read by its fused kernel (``backend``) and by the unfused torch path; for
    eviction, the one-off compaction and the per-step attention over the kept rows, separately.
    Returns records ``{"method", "path", "ms"}`` for ``viz.bench_bar(..., group="method", color="path")``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g)
    K, V = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    scores = torch.rand(B, H, T, generator=g)
    U = torch.linalg.qr(torch.randn(H, D, D, generator=g))[0][..., :rank].contiguous()
    Kc, Vc = (torch.einsum("bhtd,hdr->bhtr", x, U).contiguous() for x in (K, V))
    Kq, Vq, K_res, V_res = _quantized(K, V, bits, group)

    K_kept, V_kept, _ = evict_compact(scores, K, V, keep, backend=backend)
    runs = {
        ("full cache", "fused kernel"): lambda: attend(q, K, V, backend=backend),
        ("full cache", "unfused torch"): lambda: attend(q, K, V, backend="torch"),
        (f"projection r={rank}", "fused kernel"): lambda: project_attend(q, Kc, Vc, U, U, backend=backend),
        (f"projection r={rank}", "unfused torch"): lambda: attend(
            q, torch.einsum("bhtr,hdr->bhtd", Kc, U), torch.einsum("bhtr,hdr->bhtd", Vc, U), backend="torch"),
        (f"KIVI {bits}-bit", "fused kernel"): lambda: quant_attend(q, Kq, Vq, K_res, V_res, backend=backend),
        (f"KIVI {bits}-bit", "unfused torch"): lambda: quant_reference(q, Kq, Vq, K_res, V_res),
        # eviction compacts once, when the cache is compressed; every later step reads only the kept rows
        (f"evict to {keep} (once)", "fused kernel"): lambda: evict_compact(scores, K, V, keep, backend=backend),
        (f"evict to {keep} (once)", "unfused torch"): lambda: evict_reference(scores, K, V, keep),
        (f"attend the kept {keep}", "fused kernel"): lambda: attend(q, K_kept, V_kept, backend=backend),
        (f"attend the kept {keep}", "unfused torch"): lambda: attend(q, K_kept, V_kept, backend="torch"),
    }
    return [{"method": m, "path": p, "ms": _median_ms(fn, repeats)} for (m, p), fn in runs.items()]
