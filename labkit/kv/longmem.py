"""A LongMem-style memory bank: old chunks of the KV cache offloaded, retrieved top-k by key similarity.

LongMem (Wang et al., "Augmenting Language Models with Long-Term Memory") caches the key/value pairs of
past context in a memory bank, retrieves for each query the top-k *chunks* by key similarity, and fuses
them through a memory-augmented layer trained with a residual side network. Here the model is frozen and
nothing is trained: **retrieved K/V simply re-enter ordinary attention** in every layer, in front of the
local window, at their original (already rotated) positions. This is the training-free variant; it can
only recover what the frozen model would have read from a full cache.

The lifecycle, for one context and one query::

    prefill   the context is processed in chunks of ``chunk_size`` tokens; whenever the fast cache holds
              more than ``window`` tokens its oldest chunk is *offloaded*: its per-layer K/V move to the
              bank (CPU, optionally fp16), with one mean key per chunk, layer and head for retrieval.
    retrieve  the query runs once against the window alone; its last token's (rotated) query vectors
              score every chunk: score = max over heads of q · mean_k / sqrt(head_dim) (the chunk's mean
              attention logit), at one layer or summed over layers; the top-k chunks win.
    load      the winners are copied back (cast to the model's dtype and device) in front of the window,
              in position order, and the query is answered with ordinary attention over both.

Shapes: per layer the bank holds keys/values ``(B, n_kv_heads, n_chunks, chunk_size, head_dim)``; chunk
boundaries are shared by the batch rows (contexts of equal length), the retrieved chunks are per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from labkit.data import SeedLike, rng
from labkit.models import tokenizer as tk
from labkit.models.tinylm import KVCache, TinyLM, apply_rope, rope_cos_sin

__all__ = [
    "LongMemStats", "MemoryBank", "far_lookup_episodes", "full_cache_answer", "longmem_answer",
    "longmem_experiment", "longmem_generate", "longmem_prefill", "longmem_query", "retrieval_head_hits",
]

PREFILL_MODES = ("streaming", "full")
SCORES = ("mean", "max")  # chunk score: q · mean key (LongMem's chunk key) or the best token's q · k


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------------------------------------
# The bank
# ------------------------------------------------------------------------------------------------------


class MemoryBank:
    """Offloaded chunks of a KV cache, retrievable by key similarity.

    chunk_size: tokens per chunk; top_k: chunks loaded back per query (0 = window only);
    dtype: storage dtype (None keeps the cache's, ``torch.float16`` halves the bank);
    device: where chunks live (the "slow" memory, default CPU);
    layer: the layer whose query/keys score the chunks (None: scores summed over all layers);
    head: the query head that scores (None: the max over heads);
    score: "mean" (q · the chunk's mean key, LongMem's chunk-level key: one vector per chunk) or "max"
    (the best token's q · k in the chunk: token-level search, reading every stored key).

    keys[l], values[l]: (B, n_kv_heads, n_chunks, chunk_size, head_dim); mean_keys[l]:
    (B, n_kv_heads, n_chunks, head_dim) float32; tokens, positions: (B, n_chunks, chunk_size).
    """

    def __init__(self, chunk_size: int, top_k: int, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", layer: int | None = None, head: int | None = None,
                 score: str = "mean") -> None:
        self.chunk_size = _check_int("chunk_size", chunk_size, 1)
        self.top_k = _check_int("top_k", top_k, 0)
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
        if layer is not None:
            _check_int("layer", layer, 0)
        if head is not None:
            _check_int("head", head, 0)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.layer, self.head, self.score = layer, head, score
        self.reset()

    def reset(self) -> MemoryBank:
        """Forget every chunk. Returns self."""
        self.model_id: str | None = None
        self.batch_size = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mean_keys: list[torch.Tensor] = []
        self.tokens: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.offload_s = 0.0
        return self

    # -- reading ----------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]

    def __len__(self) -> int:
        return self.n_chunks

    def bytes(self) -> int:
        """Bytes of the stored K and V (the retrieval index of mean keys is counted by ``index_bytes``)."""
        return _tensor_bytes((*self.keys, *self.values))

    def index_bytes(self) -> int:
        """Bytes of the mean keys used for retrieval."""
        return _tensor_bytes(self.mean_keys)

    def __repr__(self) -> str:
        return (f"MemoryBank(chunk_size={self.chunk_size}, top_k={self.top_k}, n_chunks={self.n_chunks}, "
                f"bytes={self.bytes()}, layer={self.layer}, head={self.head}, score={self.score!r})")

    # -- writing ----------------------------------------------------------------------------------
    def offload(self, cache: KVCache) -> KVCache:
        """Move the oldest ``chunk_size`` entries of ``cache`` into the bank (the cache is cut in place).

        Returns the cache. Raises if the cache is shorter than a chunk or belongs to another model.
        """
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        c = self.chunk_size
        if cache.length < c:
            raise ValueError(f"cache must hold at least chunk_size={c} entries to offload one, got {cache.length}")
        if self.n_chunks and (cache.model_id != self.model_id or cache.batch_size != self.batch_size
                              or cache.n_layers != len(self.keys)):
            raise ValueError(f"cache (model_id {cache.model_id!r}, batch_size {cache.batch_size}) does not match "
                             f"the bank's chunks (model_id {self.model_id!r}, batch_size {self.batch_size})")
        if self.layer is not None and self.layer >= cache.n_layers:
            raise ValueError(f"layer must be in 0..{cache.n_layers - 1} for this model, got {self.layer}")
        t0 = time.perf_counter()
        dtype = self.dtype

        def store(x: torch.Tensor) -> torch.Tensor:  # (B, H, c, D) -> (B, H, 1, c, D) on the bank's device
            return x[:, :, :c].to(device=self.device, dtype=dtype or x.dtype).unsqueeze(2)

        new_k = [store(k) for k in cache.keys]
        new_v = [store(v) for v in cache.values]
        new_mean = [k.float().mean(dim=3) for k in new_k]  # (B, H, 1, D)
        new_tok = cache.tokens[:, None, :c].to(self.device)
        new_pos = cache.positions[:, None, :c].to(self.device)
        if not self.n_chunks:
            self.model_id, self.batch_size = cache.model_id, cache.batch_size
            self.keys, self.values, self.mean_keys = new_k, new_v, new_mean
            self.tokens, self.positions = new_tok, new_pos
        else:
            self.keys = [torch.cat([a, b], dim=2) for a, b in zip(self.keys, new_k)]
            self.values = [torch.cat([a, b], dim=2) for a, b in zip(self.values, new_v)]
            self.mean_keys = [torch.cat([a, b], dim=2) for a, b in zip(self.mean_keys, new_mean)]
            self.tokens = torch.cat([self.tokens, new_tok], dim=1)
            self.positions = torch.cat([self.positions, new_pos], dim=1)
        cache.select(torch.arange(c, cache.length))
        self.offload_s += time.perf_counter() - t0
        return cache

    # -- retrieval --------------------------------------------------------------------------------
    def scores(self, queries: list[torch.Tensor]) -> torch.Tensor:
        """Chunk scores for one query token per row.

        queries: per layer (B, n_heads, head_dim), rotated like the keys (RoPE at the query's position).
        Per layer and query head h: s[b, h, n] = q[b, h] · mean_k[b, h // groups, n] / sqrt(D) (score="mean")
        or max over the chunk's tokens t of q[b, h] · k[b, h // groups, n, t] / sqrt(D) (score="max"); then
        the bank's ``head`` is taken or the max over heads, and its ``layer`` or the sum over layers.
        Returns (B, n_chunks) float32.
        """
        if not self.n_chunks:
            raise ValueError("the bank holds no chunks: offload some before scoring")
        if not isinstance(queries, (list, tuple)) or len(queries) != len(self.mean_keys):
            got = len(queries) if isinstance(queries, (list, tuple)) else type(queries).__name__
            raise ValueError(f"queries must be a list of {len(self.mean_keys)} per-layer tensors, got {got}")
        layers = range(len(queries)) if self.layer is None else [self.layer]
        total = None
        for i in layers:
            mean = self.mean_keys[i]  # (B, Hkv, N, D)
            B, Hkv, N, D = mean.shape
            q = queries[i]
            if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != B or q.shape[2] != D \
                    or q.shape[1] % Hkv:
                got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
                raise ValueError(f"queries[{i}] must have shape ({B}, a multiple of {Hkv}, {D}), got {got}")
            if self.head is not None and self.head >= q.shape[1]:
                raise ValueError(f"head must be in 0..{q.shape[1] - 1} for this model, got {self.head}")
            q = q.float().to(mean.device).view(B, Hkv, q.shape[1] // Hkv, D)  # (B, Hkv, groups, D)
            if self.score == "mean":
                s = torch.einsum("bhgd,bhnd->bhgn", q, mean) / D**0.5  # (B, Hkv, groups, N)
            else:
                s = torch.einsum("bhgd,bhncd->bhgnc", q, self.keys[i].float()).amax(dim=-1) / D**0.5
            s = s.flatten(1, 2)  # (B, n_heads, N): query head h = kv head * groups + g
            s = s.amax(dim=1) if self.head is None else s[:, self.head]  # (B, N)
            total = s if total is None else total + s
        return total

    def retrieve(self, queries: list[torch.Tensor], top_k: int | None = None) -> torch.Tensor:
        """The ``top_k`` (default: the bank's) best chunks per row, in position order. Returns (B, k) int64."""
        k = self.top_k if top_k is None else _check_int("top_k", top_k, 0)
        k = min(k, self.n_chunks)
        if k == 0:
            return torch.empty((max(self.batch_size, 1), 0), dtype=torch.long)
        best = self.scores(queries).topk(k, dim=1).indices
        return best.sort(dim=1).values

    def load(self, indices: torch.Tensor, dtype: torch.dtype, device: torch.device | str
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Copy the chunks ``indices`` (B, k) back: per-layer keys and values (B, n_kv_heads, k * chunk_size,
        head_dim) in ``dtype`` on ``device``, and tokens, positions (B, k * chunk_size)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.dim() != 2 or idx.shape[0] != self.batch_size:
            raise ValueError(f"indices must have shape (B={self.batch_size}, k), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_chunks):
            raise ValueError(f"indices must lie in 0..{self.n_chunks - 1}, got {int(idx.min())}..{int(idx.max())}")
        B, k = idx.shape
        idx = idx.to(self.device)

        def gather(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, c, D) -> (B, H, k * c, D)
            _, H, _, c, D = x.shape
            g = x.gather(2, idx[:, None, :, None, None].expand(B, H, k, c, D))
            return g.reshape(B, H, k * c, D).to(device=device, dtype=dtype)

        keys = [gather(x) for x in self.keys]
        values = [gather(x) for x in self.values]
        sel = idx[:, :, None].expand(B, k, self.chunk_size)
        tokens = self.tokens.gather(1, sel).reshape(B, -1).to(device)
        positions = self.positions.gather(1, sel).reshape(B, -1).to(device)
        return keys, values, tokens, positions


# ------------------------------------------------------------------------------------------------------
# Prefill, query, answer
# ------------------------------------------------------------------------------------------------------


@dataclass
class LongMemStats:
    """What one LongMem query cost: bytes in the fast cache (window + loaded chunks, at answer time) and in
    the bank, and seconds in each lifecycle stage. ``retrieved``: (B, k) chunk indices."""

    fast_bytes: int = 0
    bank_bytes: int = 0
    index_bytes: int = 0
    n_chunks: int = 0
    prefill_s: float = 0.0
    offload_s: float = 0.0
    retrieval_s: float = 0.0
    loading_s: float = 0.0
    answer_s: float = 0.0
    retrieved: torch.Tensor = field(default_factory=lambda: torch.empty(1, 0, dtype=torch.long))


def _check_tokens(model: TinyLM, name: str, x: object, batch: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dim() != 2 or x.shape[1] == 0:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an integer tensor (B, T) with T >= 1, got {got}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have B={batch} rows (as the context), got {x.shape[0]}")
    return x.long().to(model.embed_tokens.weight.device)


@torch.no_grad()
def longmem_prefill(model: TinyLM, context: torch.Tensor, window: int, bank: MemoryBank,
                    prefill: str = "streaming") -> KVCache:
    """Process ``context`` (B, T), offloading chunks that leave the last ``window`` tokens into ``bank``.

    The bank is reset first. prefill="streaming": chunk by chunk, each chunk attends only to what the fast
    cache holds (LongMem's setting: memory is written as the text streams past); "full": the whole context
    at once with a full cache, then the old chunks are offloaded (their K/V equal the full cache's).
    Returns the fast cache: the last <= ``window`` context tokens (whole chunks leave, so window >= chunk_size).
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    if not isinstance(bank, MemoryBank):
        raise TypeError(f"bank must be a MemoryBank, got {type(bank).__name__}")
    context = _check_tokens(model, "context", context)
    window = _check_int("window", window, 1)
    if window < bank.chunk_size:
        raise ValueError(f"window must be >= the bank's chunk_size={bank.chunk_size}, got {window}")
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}")
    B, T = context.shape
    if T > model.config.context:
        raise ValueError(f"context must hold at most {model.config.context} tokens (the model's context), got {T}")
    if bank.layer is not None and bank.layer >= model.config.n_layers:
        raise ValueError(f"bank.layer must be in 0..{model.config.n_layers - 1}, got {bank.layer}")
    bank.reset()
    cache = model.new_cache(B)
    device = context.device
    if prefill == "full":
        model(context, cache=cache)
        while cache.length > window:
            bank.offload(cache)
        return cache
    c = bank.chunk_size
    for start in range(0, T, c):
        chunk = context[:, start:start + c]
        positions = (start + torch.arange(chunk.shape[1], device=device)).expand(B, -1)
        model(chunk, cache=cache, positions=positions)
        while cache.length > window:
            bank.offload(cache)
    return cache


def _query_vectors(model: TinyLM, query: torch.Tensor, cache: KVCache, positions: torch.Tensor
                   ) -> list[torch.Tensor]:
    """Rotated query vectors of the last query token, per layer (B, n_heads, head_dim), read with hooks on
    ``q_proj`` while the query runs against ``cache`` (a throwaway copy is appended to)."""
    cfg = model.config
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        captured.append(out[:, -1].view(out.shape[0], cfg.n_heads, cfg.head_dim))

    handles = [block.self_attn.q_proj.register_forward_hook(hook) for block in model.layers]
    try:
        model(query, cache=cache.clone(), positions=positions)
    finally:
        for h in handles:
            h.remove()
    cos, sin = rope_cos_sin(positions[:, -1:], cfg.head_dim, cfg.rope_base)  # (B, 1, 1, D)
    return [apply_rope(q[:, :, None], cos, sin)[:, :, 0] for q in captured]


@torch.no_grad()
def longmem_query(model: TinyLM, query: torch.Tensor, cache: KVCache, bank: MemoryBank,
                  top_k: int | None = None, max_new_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor, LongMemStats]:
    """Answer ``query`` (B, Tq) after a prefill: retrieve the top-k chunks, load them before the window.

    cache: the fast cache from ``longmem_prefill`` (not modified; reuse it for many queries).
    max_new_tokens: greedy tokens generated after the query (with the same loaded chunks).
    Returns (logits (B, vocab) after the last query token, generated (B, max_new_tokens), stats).
    """
    if not isinstance(cache, KVCache) or cache.length == 0:
        raise ValueError("cache must be a non-empty KVCache from longmem_prefill")
    if cache.model_id != model.model_id:
        raise ValueError(f"cache belongs to another model (model_id {cache.model_id!r}), expected {model.model_id!r}")
    if bank.n_chunks and bank.model_id != model.model_id:
        raise ValueError(f"bank holds chunks of another model (model_id {bank.model_id!r}), "
                         f"expected {model.model_id!r}")
    query = _check_tokens(model, "query", query, cache.batch_size)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    B, Tq = query.shape
    start = cache.positions[:, -1:] + 1  # (B, 1) the next position after the context
    end = int(start.max()) + Tq + max_new_tokens
    if end > model.config.context:
        raise ValueError(f"query: context + {Tq} query + {max_new_tokens} new tokens reach position {end}, "
                         f"beyond the model's context of {model.config.context}")
    positions = start + torch.arange(Tq, device=query.device)
    stats = LongMemStats(bank_bytes=bank.bytes(), index_bytes=bank.index_bytes(), n_chunks=bank.n_chunks,
                         offload_s=bank.offload_s)
    k = bank.top_k if top_k is None else _check_int("top_k", top_k, 0)

    t0 = time.perf_counter()
    if k and bank.n_chunks:
        chosen = bank.retrieve(_query_vectors(model, query, cache, positions), k)
    else:
        chosen = torch.empty((B, 0), dtype=torch.long)
    stats.retrieval_s = time.perf_counter() - t0
    stats.retrieved = chosen

    t0 = time.perf_counter()
    fast = cache.clone()
    if chosen.shape[1]:
        p = model.embed_tokens.weight
        keys, values, tokens, pos = bank.load(chosen, p.dtype, p.device)
        fast.keys = [torch.cat([a, b], dim=2) for a, b in zip(keys, fast.keys)]
        fast.values = [torch.cat([a, b], dim=2) for a, b in zip(values, fast.values)]
        fast.tokens = torch.cat([tokens, fast.tokens], dim=1)
        fast.positions = torch.cat([pos, fast.positions], dim=1)
    stats.loading_s = time.perf_counter() - t0
    stats.fast_bytes = fast.bytes()

    t0 = time.perf_counter()
    logits = model(query, cache=fast, positions=positions)[:, -1]
    out = []
    nxt_logits = logits
    for i in range(max_new_tokens):
        nxt = nxt_logits.argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        if i + 1 < max_new_tokens:
            nxt_logits = model(nxt, cache=fast, positions=positions[:, -1:] + 1 + i)[:, -1]
    stats.answer_s = time.perf_counter() - t0
    generated = torch.cat(out, dim=1) if out else torch.empty((B, 0), dtype=torch.long, device=query.device)
    return logits, generated, stats


def longmem_answer(model: TinyLM, context: torch.Tensor, query: torch.Tensor, window: int, bank: MemoryBank,
                   top_k: int | None = None, prefill: str = "streaming") -> tuple[torch.Tensor, LongMemStats]:
    """Prefill ``context`` (B, T) into window + bank, then answer ``query`` (B, Tq).

    Returns (logits (B, vocab) after the last query token, stats). ``top_k`` overrides the bank's.
    """
    t0 = time.perf_counter()
    cache = longmem_prefill(model, context, window, bank, prefill)
    prefill_s = time.perf_counter() - t0
    logits, _, stats = longmem_query(model, query, cache, bank, top_k)
    stats.prefill_s = prefill_s
    return logits, stats


def longmem_generate(model: TinyLM, context: torch.Tensor, query: torch.Tensor, window: int, bank: MemoryBank,
                     max_new_tokens: int, top_k: int | None = None, prefill: str = "streaming"
                     ) -> tuple[torch.Tensor, LongMemStats]:
    """Greedy continuation of ``query`` after ``context`` through window + retrieved chunks.

    Chunks are retrieved once, for the query's last token. Returns (tokens (B, max_new_tokens), stats).
    """
    t0 = time.perf_counter()
    cache = longmem_prefill(model, context, window, bank, prefill)
    prefill_s = time.perf_counter() - t0
    _, generated, stats = longmem_query(model, query, cache, bank, top_k, _check_int("max_new_tokens",
                                                                                       max_new_tokens, 1))
    stats.prefill_s = prefill_s
    return generated, stats


@torch.no_grad()
def full_cache_answer(model: TinyLM, context: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The reference: the whole context cached, then the query. Returns (logits (B, vocab), the context's KV
    bytes)."""
    context = _check_tokens(model, "context", context)
    query = _check_tokens(model, "query", query, context.shape[0])
    cache = model.new_cache(context.shape[0])
    model(context, cache=cache)
    held = cache.bytes()
    return model(query, cache=cache)[:, -1], held


# ------------------------------------------------------------------------------------------------------
# The experiment: a lookup whose pair lies far back
# ------------------------------------------------------------------------------------------------------


def far_lookup_episodes(seed: SeedLike, n_episodes: int, n_pairs: int = 8, filler: int = 48
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lookups whose records lie far back: ``<doc> k1 v1 … kn vn`` + ``filler`` bytes of held-out English,
    then the query ``<sep> kq``.

    Returns contexts (N, 1 + 2 n_pairs + filler), queries (N, 2), answers (N,) and the position of the
    answer's value token in the context (N,) (the chunk holding it is ``position // chunk_size``).
    """
    from labkit.data import corpus

    n_episodes = _check_int("n_episodes", n_episodes, 1)
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 1 <= n_pairs <= min(tk.N_KEYS, tk.N_VALUES):
        raise ValueError(f"n_pairs must be an int in 1..{min(tk.N_KEYS, tk.N_VALUES)}, got {n_pairs!r}")
    filler = _check_int("filler", filler, 0)
    g = rng(seed)
    text = corpus.english_tokens("heldout")
    contexts, queries, answers, where = [], [], [], []
    for _ in range(n_episodes):
        keys = g.choice(tk.N_KEYS, size=n_pairs, replace=False)
        vals = g.choice(tk.N_VALUES, size=n_pairs, replace=False)
        q = int(g.integers(n_pairs))
        ctx = [tk.DOC] + [t for i in range(n_pairs) for t in (tk.key(int(keys[i])), tk.value(int(vals[i])))]
        start = int(g.integers(len(text) - filler))
        ctx += text[start:start + filler].tolist()
        contexts.append(ctx)
        queries.append([tk.SEP, tk.key(int(keys[q]))])
        answers.append(tk.value(int(vals[q])))
        where.append(2 + 2 * q)
    return (torch.tensor(contexts), torch.tensor(queries), torch.tensor(answers), torch.tensor(where))


@torch.no_grad()
def retrieval_head_hits(model: TinyLM, contexts: torch.Tensor, queries: torch.Tensor, where: torch.Tensor,
                        window: int = 32, chunk_size: int = 8, top_k: int = 2, score: str = "max") -> torch.Tensor:
    """How often each (layer, query head) alone puts the chunk holding position ``where`` (N,) in its top-k.

    contexts (N, T), queries (N, Tq) as from ``far_lookup_episodes``. Returns (n_layers, n_heads) hit rates:
    a calibration to pick the bank's ``layer`` and ``head`` (do it on episodes you do not evaluate on).
    """
    cfg = model.config
    bank = MemoryBank(chunk_size, top_k, score=score)
    cache = longmem_prefill(model, contexts, window, bank)
    query = _check_tokens(model, "queries", queries, contexts.shape[0])
    positions = cache.positions[:, -1:] + 1 + torch.arange(query.shape[1], device=query.device)
    qs = _query_vectors(model, query, cache, positions)
    target = (torch.as_tensor(where) // chunk_size)[:, None].to(bank.device)
    hits = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            bank.layer, bank.head = layer, head
            chosen = bank.retrieve(qs)
            hits[layer, head] = (chosen == target).any(dim=1).float().mean()
    return hits


def longmem_experiment(model: TinyLM, n_episodes: int = 200, window: int = 32, chunk_size: int = 8,
                       top_k: int = 2, n_pairs: int = 8, filler: int = 48,
                       bank_dtype: torch.dtype | None = torch.float16, prefill: str = "streaming",
                       batch_size: int = 100, seed: int = 0) -> list[dict]:
    """Lookup accuracy when the queried pair lies beyond the window (``far_lookup_episodes``), by setting:

    window only; window + top-k chunks scored by mean keys over all layers (LongMem's chunk keys); by the
    best token over all layers and heads; by the one (layer, head) that retrieves best on *calibration*
    episodes (seed + 1); window + every chunk (the bank's ceiling); the full cache.

    Returns one row per setting: setting, accuracy, fast_bytes_per_row (KV bytes attention reads),
    bank_bytes_per_row, retrieval_hit (fraction of rows whose chunks hold the answer's value token),
    retrieval_ms and loading_ms (per batch of ``batch_size`` rows).
    """
    contexts, queries, answers, where = far_lookup_episodes(seed, n_episodes, n_pairs, filler)
    cal = far_lookup_episodes(seed + 1, n_episodes, n_pairs, filler)
    hits = retrieval_head_hits(model, cal[0], cal[1], cal[3], window, chunk_size, top_k)
    best = int(hits.argmax())
    layer, head = divmod(best, model.config.n_heads)
    n_all = max(0, -(-(contexts.shape[1] - window) // chunk_size))
    settings = {
        "window only": dict(top_k=0),
        f"+ top-{top_k}, mean keys": dict(top_k=top_k, score="mean"),
        f"+ top-{top_k}, best token": dict(top_k=top_k, score="max"),
        f"+ top-{top_k}, layer {layer} head {head}": dict(top_k=top_k, score="max", layer=layer, head=head),
        f"+ all {n_all} chunks": dict(top_k=n_all),
    }
    rows = []
    for name, kw in settings.items():
        bank = MemoryBank(chunk_size, dtype=bank_dtype, **kw)
        correct = found = fast = bank_b = n_batches = 0
        ret = load = 0.0
        for i in range(0, n_episodes, batch_size):
            sl = slice(i, i + batch_size)
            logits, st = longmem_answer(model, contexts[sl], queries[sl], window, bank, prefill=prefill)
            correct += int((logits.argmax(-1).cpu() == answers[sl]).sum())
            chunk_of = (where[sl] // chunk_size)[:, None]
            found += int((st.retrieved.cpu() == chunk_of).any(dim=1).sum())
            fast, bank_b = fast + st.fast_bytes, bank_b + st.bank_bytes
            ret, load, n_batches = ret + st.retrieval_s, load + st.loading_s, n_batches + 1
        rows.append({"setting": name, "accuracy": correct / n_episodes,
                     "fast_bytes_per_row": fast // n_episodes, "bank_bytes_per_row": bank_b // n_episodes,
                     "retrieval_hit": found / n_episodes, "retrieval_ms": 1e3 * ret / n_batches,
                     "loading_ms": 1e3 * load / n_batches})
    correct = full_b = 0
    for i in range(0, n_episodes, batch_size):
        sl = slice(i, i + batch_size)
        logits, b = full_cache_answer(model, contexts[sl], queries[sl])
        correct += int((logits.argmax(-1).cpu() == answers[sl]).sum())
        full_b += b
    rows.append({"setting": "full cache", "accuracy": correct / n_episodes,
                 "fast_bytes_per_row": full_b // n_episodes, "bank_bytes_per_row": 0,
                 "retrieval_hit": 1.0, "retrieval_ms": 0.0, "loading_ms": 0.0})
    return rows
