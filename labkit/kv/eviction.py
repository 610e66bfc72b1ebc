"""Token-axis compression: keep some cached positions, drop the rest (StreamingLLM, H2O, SnapKV).

All three score the cached positions and keep ``k = floor(budget · T)`` of them (at least one), always
including the most recent one. Scores come from attention recomputed after prefill: the model is re-run on
the cached tokens with a hook on each layer's ``q_proj`` to collect the queries, which are rotated (RoPE)
and scored against the cached (already rotated) keys (``attention_probs``).

**Per-head selection.** ``KVCache`` stores K/V per head, ``(B, n_kv_heads, T, head_dim)``, so H2O and SnapKV
may keep *different* positions in each layer and head: every (layer, head) keeps the same count ``k``,
gathered along T, in increasing position order (``gather_per_head``). One row of ``cache.tokens`` /
``cache.positions`` cannot describe every head, so after a per-head selection they describe layer 0,
head 0; the model reads only the *last* entry (the next position and token shift's previous token), and
the last position is kept by every head, so it stays exact. ``per_head=False`` selects one set shared by
all layers and heads (scores averaged) and leaves ``tokens``/``positions`` exact everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from labkit.kv.base import Compressor
from labkit.models.tinylm import KVCache, TinyLM, apply_rope, rope_cos_sin

__all__ = [
    "H2O", "SnapKV", "StreamingLLM", "appended_attention", "attention_probs", "gather_per_head", "h2o_scores",
    "snapkv_scores", "streaming_indices", "top_k_indices",
]


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@torch.no_grad()
def attention_probs(model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Causal softmax attention of every prefill query over the cached keys, per layer:
    a list of ``n_layers`` tensors (B, n_kv_heads, T, T) (grouped-query heads averaged over their group).

    The cache must be a plain prefill (T entries, one per token). tokens: (B, T) default ``cache.tokens``.
    """
    tokens = cache.tokens if tokens is None else tokens
    cfg = model.config
    queries: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.layers):
        def hook(_module, _inputs, out, i=i):
            queries[i] = out
        hooks.append(block.self_attn.q_proj.register_forward_hook(hook))
    try:
        model(tokens, positions=cache.positions)
    finally:
        for h in hooks:
            h.remove()
    B, T = tokens.shape
    cos, sin = rope_cos_sin(cache.positions, cfg.head_dim, cfg.rope_base)
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
    groups = cfg.n_heads // cfg.n_kv_heads
    probs = []
    for i in range(cfg.n_layers):
        q = queries[i].view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin).float()  # (B, H, T, Dh)
        k = cache.keys[i].float().repeat_interleave(groups, dim=1)  # (B, H, T, Dh)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)  # (B, H, T, T)
        probs.append(p.view(B, cfg.n_kv_heads, groups, T, T).mean(2))
    return probs


@torch.no_grad()
def appended_attention(model: TinyLM, cache: KVCache, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Feed ``tokens`` (B, n) into ``cache`` (appended, exactly ``model(tokens, cache=cache)``) and return
    ``(logits, probs)``: logits (B, n, V) and, per layer, the causal attention of the n new queries over every
    cached key after the append, (B, n_kv_heads, n, S) (grouped-query heads averaged over their group).

    Unlike ``attention_probs`` the cache may already be compressed (per head, too): only the new queries are
    scored, so re-compression after a turn can use the question just asked as its observation window."""
    cfg = model.config
    queries: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.layers):
        def hook(_module, _inputs, out, i=i):
            queries[i] = out
        hooks.append(block.self_attn.q_proj.register_forward_hook(hook))
    try:
        logits = model(tokens, cache=cache)
    finally:
        for h in hooks:
            h.remove()
    B, n = tokens.shape
    S = cache.length
    cos, sin = rope_cos_sin(cache.positions[:, -n:], cfg.head_dim, cfg.rope_base)
    dev = tokens.device
    visible = torch.arange(S, device=dev)[None, :] <= (S - n + torch.arange(n, device=dev))[:, None]  # (n, S)
    groups = cfg.n_heads // cfg.n_kv_heads
    probs = []
    for i in range(cfg.n_layers):
        q = queries[i].view(B, n, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin).float()  # (B, H, n, Dh)
        k = cache.keys[i].float().repeat_interleave(groups, dim=1)  # (B, H, S, Dh)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)
        p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)  # (B, H, n, S)
        probs.append(p.view(B, cfg.n_kv_heads, groups, n, S).mean(2))
    return logits, probs


def h2o_scores(probs: torch.Tensor) -> torch.Tensor:
    """H2O's heavy-hitter score: attention mass each key receives, summed over all queries.
    probs: (..., T_q, T_k) -> (..., T_k)."""
    return probs.sum(-2)


def snapkv_scores(probs: torch.Tensor, window: int, kernel: int = 5, pooling: str = "max") -> torch.Tensor:
    """SnapKV's score: attention of the last ``window`` queries, summed, then pooled over ``kernel``
    neighbouring keys (``pooling`` "max" or "avg") so that kept positions come with their context.
    probs: (B, H, T, T) -> (B, H, T)."""
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    _check_int("kernel", kernel, 1)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (centred pooling), got {kernel}")
    s = probs[..., -window:, :].sum(-2)  # (B, H, T)
    B, H, T = s.shape
    flat = s.reshape(B * H, 1, T)
    pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
    extra = {} if pooling == "max" else {"count_include_pad": False}
    return pool(flat, kernel, stride=1, padding=kernel // 2, **extra).reshape(B, H, T)


def streaming_indices(n_tokens: int, n_keep: int, n_sink: int) -> torch.Tensor:
    """StreamingLLM's kept positions: the first ``n_sink`` (attention sinks) and the most recent
    ``n_keep - n_sink``; all of them when ``n_keep >= n_tokens``. Returns (min(n_keep, n_tokens),) sorted."""
    _check_int("n_tokens", n_tokens, 1)
    _check_int("n_keep", n_keep, 1)
    _check_int("n_sink", n_sink, 0)
    if n_keep >= n_tokens:
        return torch.arange(n_tokens)
    sinks = min(n_sink, n_keep - 1)  # always keep the most recent entry
    recent = n_keep - sinks
    return torch.cat([torch.arange(sinks), torch.arange(n_tokens - recent, n_tokens)])


def top_k_indices(scores: torch.Tensor, n_keep: int, n_recent: int) -> torch.Tensor:
    """The last ``n_recent`` positions plus the ``n_keep - n_recent`` best-scored earlier ones, per row.
    scores: (..., T) -> indices (..., min(n_keep, T)), sorted increasing (ties: the earlier position)."""
    T = scores.shape[-1]
    n_keep = min(n_keep, T)
    n_recent = max(1, min(n_recent, n_keep))
    s = scores.float().clone()
    s[..., T - n_recent:] = float("inf")
    idx = torch.topk(s, n_keep, dim=-1, sorted=False).indices
    return idx.sort(dim=-1).values


def gather_per_head(cache: KVCache, indices: list[torch.Tensor]) -> KVCache:
    """Keep, in each layer l and head h, the entries ``indices[l][b, h]`` (B, n_kv_heads, k), same k
    everywhere, sorted. tokens/positions follow layer 0, head 0 (see the module docstring). Returns self."""
    if len(indices) != cache.n_layers:
        raise ValueError(f"indices must hold one tensor per layer ({cache.n_layers}), got {len(indices)}")
    k = indices[0].shape[-1]
    for layer, idx in enumerate(indices):
        if idx.shape != (*cache.keys[layer].shape[:2], k):
            raise ValueError(f"indices[{layer}] must have shape {(*cache.keys[layer].shape[:2], k)}, "
                             f"got {tuple(idx.shape)}")
        g = idx[..., None].expand(-1, -1, -1, cache.keys[layer].shape[-1])
        cache.keys[layer] = cache.keys[layer].gather(2, g)
        cache.values[layer] = cache.values[layer].gather(2, g)
    row = indices[0][:, 0]  # (B, k)
    cache.tokens = cache.tokens.gather(1, row)
    cache.positions = cache.positions.gather(1, row)
    return cache


class StreamingLLM(Compressor):
    """Attention sinks + a sliding window: keep the first ``n_sink`` and the most recent positions."""

    name = "streamingllm"

    def __init__(self, budget: float, n_sink: int = 4) -> None:
        super().__init__(budget)
        self.n_sink = _check_int("n_sink", n_sink, 0)

    def compress(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> KVCache:
        keep = streaming_indices(cache.length, self.n_keep(cache.length), self.n_sink)
        return cache.select(keep.to(cache.tokens.device))

    def recompress(self, cache: KVCache, probs: list[torch.Tensor], n_keep: int) -> KVCache:
        """Evict an already-compressed cache down to ``n_keep`` entries (sinks + most recent; ``probs``, the
        new queries' attention from ``appended_attention``, is not needed by this rule)."""
        keep = streaming_indices(cache.length, _check_int("n_keep", n_keep, 1), self.n_sink)
        return cache.select(keep.to(cache.tokens.device))


class _Scored(Compressor):
    """Shared by H2O and SnapKV: per-layer scores (B, Hkv, T) -> per-head (or shared) top-k."""

    def __init__(self, budget: float, window: int, per_head: bool) -> None:
        super().__init__(budget)
        self.window = _check_int("window", window, 1)
        self.per_head = bool(per_head)

    def scores(self, probs: torch.Tensor) -> torch.Tensor:  # (B, Hkv, T, T) -> (B, Hkv, T)
        raise NotImplementedError

    def compress(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> KVCache:
        T = cache.length
        k = self.n_keep(T)
        if k >= T:
            return cache
        return self._keep(cache, attention_probs(model, cache, tokens), k)

    def recompress(self, cache: KVCache, probs: list[torch.Tensor], n_keep: int) -> KVCache:
        """Evict an already-compressed cache (per head or not) down to ``n_keep`` entries, scored by ``probs``:
        the attention of the queries just appended (``appended_attention``), rows (B, Hkv, n_new, S). SnapKV's
        window is then the last ``min(window, n_new)`` new queries; H2O sums the new queries' attention (the
        mass accumulated before this turn is not kept, an approximation of H2O's running sum)."""
        _check_int("n_keep", n_keep, 1)
        if n_keep >= cache.length:
            return cache
        return self._keep(cache, probs, n_keep)

    def _keep(self, cache: KVCache, probs: list[torch.Tensor], k: int) -> KVCache:
        scores = [self.scores(p) for p in probs]
        if self.per_head:
            return gather_per_head(cache, [top_k_indices(s, k, self.window) for s in scores])
        shared = torch.stack([s / s.sum(-1, keepdim=True) for s in scores]).mean((0, 2))  # (B, T)
        return cache.select(top_k_indices(shared, k, self.window))


class H2O(_Scored):
    """Heavy hitters + recent window: keep the ``window`` most recent positions and the positions with the
    largest attention mass accumulated over all prefill queries (per head by default)."""

    name = "h2o"

    def __init__(self, budget: float, window: int = 8, per_head: bool = True) -> None:
        super().__init__(budget, window, per_head)

    def scores(self, probs: torch.Tensor) -> torch.Tensor:
        return h2o_scores(probs)


class SnapKV(_Scored):
    """Observation window + pooling: score every position by the attention of the last ``window`` queries,
    pooled over ``kernel`` neighbours; keep the window and the top-scored positions, per head."""

    name = "snapkv"

    def __init__(self, budget: float, window: int = 8, kernel: int = 5, pooling: str = "max",
                 per_head: bool = True) -> None:
        super().__init__(budget, window, per_head)
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        _check_int("kernel", kernel, 1)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (centred pooling), got {kernel}")
        self.kernel, self.pooling = kernel, pooling

    def scores(self, probs: torch.Tensor) -> torch.Tensor:
        return snapkv_scores(probs, self.window, self.kernel, self.pooling)
