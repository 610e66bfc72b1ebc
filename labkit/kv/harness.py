"""A shared-context harness after SCBench: one context, several follow-up queries, two modes.

Contexts (≈ 60–95 tokens, TinyLM's context is 128) of three kinds, each with ``n_queries`` queries:

- ``"kv"``: English filler, then ``<doc> k1 v1 … kn vn``; query ``<sep> kq`` -> answer ``vq``.
- ``"trace"``: English filler, then a variable chain ``<doc> a v3 b a …``; query ``<sep> b`` -> ``v3``.
- ``"doc"``: an English passage; query ``<sep>`` + a 6-byte snippet of it -> the next 2 bytes.

Modes: **multi-turn** — the context is prefilled and compressed once; queries arrive in turn on that cache,
each query and its (gold) answer appended. **multi-request** — each query starts from a clone of the same
compressed prefix cache. Accuracy is exact match of the greedy answer, measured teacher-forced: the answer
is fed after the query and every answer token must be the argmax before it (identical to greedy exact
match). Time per turn in SCBench's four lifecycle stages: ``generation`` (prefill of the context, turn 0;
in multi-request the shared prefill counts once), ``compression``, ``retrieval`` (0: no compressor here
fetches from elsewhere), ``loading`` (the query and answer read the cache).

**Query-aware compression** (``compress_with_query=True``), SCBench's serving setting: the first request is
prefilled *with its question* and then compressed (SnapKV's observation window sees question 1).
multi-turn reuses that compressed cache for turns 2..n, whose questions ask about other parts of the
context; multi-request prefills and compresses context + its own question per request. ``recompress=True``
(multi-turn) evicts back to turn 1's compressed size after each later question (constant memory).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labkit.data import corpus
from labkit.kv.base import Compressor
from labkit.kv.eviction import appended_attention
from labkit.models import tokenizer as tk
from labkit.models.tinylm import KVCache, TinyLM

__all__ = ["KINDS", "MODES", "SharedContext", "bits_per_char", "evaluate", "make_context", "run_context"]

KINDS = ("kv", "trace", "doc")
MODES = ("multi-turn", "multi-request")
STAGES = ("generation", "compression", "retrieval", "loading")


@dataclass
class SharedContext:
    """One context and its queries: ``queries[i]`` asks for ``answers[i]`` (lists of token ids)."""

    kind: str
    context: list[int]
    queries: list[list[int]]
    answers: list[list[int]]


def _filler(g: np.random.Generator, n: int) -> list[int]:
    text = corpus.english_tokens("heldout")
    s = int(g.integers(len(text) - n))
    return text[s:s + n].tolist()


def make_context(kind: str, seed: int | np.random.Generator, n_queries: int = 4) -> SharedContext:
    """A context of ``kind`` (one of ``KINDS``) with ``n_queries`` (1..6) distinct queries."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or not 1 <= n_queries <= 6:
        raise ValueError(f"n_queries must be an int in 1..6, got {n_queries!r}")
    g = np.random.default_rng(seed)
    if kind == "kv":
        n_pairs = int(g.integers(10, 15))
        keys = [tk.KEY_TOKENS[i] for i in g.choice(tk.N_KEYS, n_pairs, replace=False)]
        vals = [tk.VALUE_TOKENS[i] for i in g.choice(tk.N_VALUES, n_pairs, replace=False)]
        ctx = _filler(g, 40) + [tk.DOC] + [t for kv in zip(keys, vals) for t in kv]
        qs = g.choice(n_pairs, n_queries, replace=False)
        return SharedContext(kind, ctx, [[tk.SEP, keys[q]] for q in qs], [[vals[q]] for q in qs])
    if kind == "trace":
        ep = corpus.trace_episode(g, n_vars=10)
        chain = ep.tokens[:-3]
        value_of: dict[int, int] = {}
        for a, b in zip(chain[1::2], chain[2::2]):
            value_of[a] = b if tk.is_value(b) else value_of[b]
        names = list(value_of)
        qs = g.choice(len(names), n_queries, replace=False)
        ctx = _filler(g, 40) + chain
        return SharedContext(kind, ctx, [[tk.SEP, names[q]] for q in qs], [[value_of[names[q]]] for q in qs])
    doc = _filler(g, 64)
    starts = g.choice(len(doc) - 8, n_queries, replace=False)
    return SharedContext(kind, doc, [[tk.SEP, *doc[p:p + 6]] for p in starts], [doc[p + 6:p + 8] for p in starts])


def _tensor(ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long, device=device)


@torch.no_grad()
def _ask(model: TinyLM, cache: KVCache, query: list[int], answer: list[int]) -> bool:
    """Feed query + answer into ``cache`` (appended); True when every answer token is the greedy choice."""
    device = cache.tokens.device
    logits = model(_tensor(query + answer, device), cache=cache)[0]  # (Q + A, V)
    pred = logits[len(query) - 1:-1].argmax(-1).tolist()
    return pred == answer


def _check_options(compressor: Compressor, mode: str, compress_with_query: bool, recompress: bool) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(compress_with_query, bool):
        raise ValueError(f"compress_with_query must be a bool, got {compress_with_query!r}")
    if not isinstance(recompress, bool):
        raise ValueError(f"recompress must be a bool, got {recompress!r}")
    if recompress and not (compress_with_query and mode == "multi-turn"):
        raise ValueError("recompress needs compress_with_query=True and mode='multi-turn' (a request in "
                         f"multi-request mode is compressed once), got mode={mode!r}, "
                         f"compress_with_query={compress_with_query!r}")
    if recompress and not callable(getattr(compressor, "recompress", None)):
        raise ValueError(f"recompress needs an eviction compressor (StreamingLLM, H2O, SnapKV), got {compressor!r}")


def _greedy_ok(first: torch.Tensor, logits: torch.Tensor, answer: list[int]) -> bool:
    """``first`` (V,): the logits before answer[0]; ``logits`` (A, V): those of the answer tokens fed."""
    return [int(first.argmax())] + logits[:-1].argmax(-1).tolist() == answer


@torch.no_grad()
def _run_query_aware(model: TinyLM, compressor: Compressor, ctx: SharedContext, mode: str,
                     recompress: bool, device: torch.device) -> list[dict]:
    """Query-aware compression (SCBench's serving setting): prefill context + question, compress, answer.
    The first answer token comes from the prefill's last logits (full attention, as in real serving); the
    rest of the answer, and every later turn in multi-turn, read the compressed cache."""
    turns: list[dict] = []
    cache, cap = None, 0
    for i, (q, a) in enumerate(zip(ctx.queries, ctx.answers)):
        gen = comp = 0.0
        if mode == "multi-request" or i == 0:  # a fresh request: prefill context + its question, compress
            t0 = time.perf_counter()
            cache = model.new_cache(1)
            first = model(_tensor(ctx.context + q, device), cache=cache)[0, -1]
            t1 = time.perf_counter()
            cache = compressor(model, cache)
            t2 = time.perf_counter()
            gen, comp, cap = t1 - t0, t2 - t1, cache.length
            held = compressor.nbytes(cache)
            t3 = time.perf_counter()
            ok = _greedy_ok(first, model(_tensor(a, device), cache=cache)[0], a)
            t4 = time.perf_counter()
        elif recompress:  # later turn, evicted back to the first compression's size with this question in view
            t3 = time.perf_counter()
            logits, probs = appended_attention(model, cache, _tensor(q, device))
            t5 = time.perf_counter()
            cache = compressor.recompress(cache, probs, cap)
            t6 = time.perf_counter()
            held = compressor.nbytes(cache)
            ok = _greedy_ok(logits[0, -1], model(_tensor(a, device), cache=cache)[0], a)
            t4 = time.perf_counter()
            comp, t4 = t6 - t5, t4 - (t6 - t5)  # loading: the question and answer reads, not the eviction
        else:  # later turn on the cache compressed with question 1 (query + answer appended)
            held = compressor.nbytes(cache)
            t3 = time.perf_counter()
            ok = _ask(model, cache, q, a)
            t4 = time.perf_counter()
        turns.append({"turn": i, "kind": ctx.kind, "correct": ok, "kv_bytes": held, "generation": gen,
                      "compression": comp, "retrieval": 0.0, "loading": t4 - t3})
    return turns


@torch.no_grad()
def run_context(model: TinyLM, compressor: Compressor, ctx: SharedContext, mode: str = "multi-turn",
                compress_with_query: bool = False, recompress: bool = False) -> list[dict]:
    """Answer ``ctx``'s queries in ``mode``; one dict per turn: correct, kv_bytes (held while answering,
    after compression, before the query), and the four stage times in seconds.

    compress_with_query: compress *after* the first question is prefilled with the context (query-aware:
    SnapKV's observation window covers the question; StreamingLLM and H2O keep their rules). multi-turn
    reuses that cache for turns 2..n; multi-request prefills and compresses context + its own question per
    request (``generation`` and ``compression`` then count every request). kv_bytes is then measured after
    compression (turn 1 / every request). recompress (multi-turn with compress_with_query only; eviction
    compressors): after each later question is appended, evict back to the size held after turn 1's
    compression, scored by that question's attention (``appended_attention``) — constant memory."""
    if not isinstance(compressor, Compressor):
        raise TypeError(f"compressor must be a labkit.kv Compressor, got {type(compressor).__name__}")
    _check_options(compressor, mode, compress_with_query, recompress)
    need = len(ctx.context) + sum(len(q) + len(a) for q, a in zip(ctx.queries, ctx.answers))
    if need > model.config.context:
        raise ValueError(f"ctx needs {need} positions, more than the context of {model.config.context}")
    device = next(model.parameters()).device
    compressor.install(model)
    try:
        if compress_with_query:
            return _run_query_aware(model, compressor, ctx, mode, recompress, device)
        t0 = time.perf_counter()
        cache = model.new_cache(1)
        model(_tensor(ctx.context, device), cache=cache)
        t1 = time.perf_counter()
        cache = compressor(model, cache)
        t2 = time.perf_counter()
        turns = []
        for i, (q, a) in enumerate(zip(ctx.queries, ctx.answers)):
            held = compressor.nbytes(cache)
            work = cache if mode == "multi-turn" else cache.clone()
            t3 = time.perf_counter()
            ok = _ask(model, work, q, a)
            t4 = time.perf_counter()
            first = i == 0
            turns.append({"turn": i, "kind": ctx.kind, "correct": ok, "kv_bytes": held,
                          "generation": (t1 - t0) if first else 0.0, "compression": (t2 - t1) if first else 0.0,
                          "retrieval": 0.0, "loading": t4 - t3})
    finally:
        compressor.remove(model)
    return turns


def evaluate(model: TinyLM, compressor: Compressor, n_contexts: int = 6, mode: str = "multi-turn", seed: int = 0,
             kinds: tuple[str, ...] = KINDS, n_queries: int = 4, compress_with_query: bool = False,
             recompress: bool = False) -> dict:
    """Run ``n_contexts`` contexts per kind (``compress_with_query``, ``recompress``: see ``run_context``).
    Returns {"accuracy", "accuracy_by_turn" (list), "accuracy_by_kind", "kv_bytes" (mean held), "time"
    (seconds per stage, summed), "compressor", "mode", "compress_with_query", "recompress", "n"}."""
    if isinstance(n_contexts, bool) or not isinstance(n_contexts, int) or n_contexts < 1:
        raise ValueError(f"n_contexts must be a positive int, got {n_contexts!r}")
    _check_options(compressor, mode, compress_with_query, recompress)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    rows = []
    for j, kind in enumerate(kinds):
        for c in range(n_contexts):
            ctx = make_context(kind, np.random.SeedSequence([seed, j, c]), n_queries)
            rows += run_context(model, compressor, ctx, mode, compress_with_query, recompress)
    acc = lambda sel: float(np.mean([r["correct"] for r in sel])) if sel else math.nan  # noqa: E731
    return {
        "compressor": compressor.name, "mode": mode, "compress_with_query": compress_with_query,
        "recompress": recompress, "n": len(rows),
        "accuracy": acc(rows),
        "accuracy_by_turn": [acc([r for r in rows if r["turn"] == t]) for t in range(n_queries)],
        "accuracy_by_kind": {k: acc([r for r in rows if r["kind"] == k]) for k in kinds},
        "kv_bytes": float(np.mean([r["kv_bytes"] for r in rows])),
        "time": {s: float(sum(r[s] for r in rows)) for s in STAGES},
    }


@torch.no_grad()
def bits_per_char(model: TinyLM, compressor: Compressor, n_windows: int = 16, prefix: int = 64,
                  continuation: int = 63, seed: int = 0) -> float:
    """Bits per byte of held-out English continuations: prefill ``prefix`` bytes, compress, then score the
    next ``continuation`` bytes read through the compressed cache (teacher-forced)."""
    if prefix < 1 or continuation < 1 or prefix + continuation > model.config.context:
        raise ValueError(f"prefix + continuation must be in 2..{model.config.context}, got {prefix}+{continuation}")
    g = np.random.default_rng(seed)
    text = corpus.english_tokens("heldout")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    compressor.install(model)
    try:
        for _ in range(n_windows):
            s = int(g.integers(len(text) - prefix - continuation - 1))
            window = torch.as_tensor(text[s:s + prefix + continuation + 1].astype(np.int64), device=device)[None]
            cache = model.new_cache(1)
            first = model(window[:, :prefix], cache=cache)[:, -1:]  # predicts byte `prefix`
            cache = compressor(model, cache)
            rest = model(window[:, prefix:prefix + continuation], cache=cache)
            logits = torch.cat([first, rest], dim=1)[0]  # (continuation + 1, V)
            targets = window[0, prefix:prefix + continuation + 1]
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += targets.numel()
    finally:
        compressor.remove(model)
    return total / math.log(2) / count
