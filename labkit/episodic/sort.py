"""SORT: Sequence Order Recall Tasks (Pink et al., "Assessing Episodic Memory in LLMs with SORT").

A *book* is a long text cut into segments ``s_0 .. s_{n-1}`` of ``seg_len`` characters. A SORT item is a pair
``(s_i, s_j)`` with ``i != j`` shown in a random order ``(a, b)``; the label is ``y = 1[a came first]``.
Conditions:

* ``in_context``: an excerpt of the book covering both segments is in the model's context. Rule scorer:
  position of ``a`` and ``b`` in the excerpt (exact search). LM scorer (tinylm, 128-byte context): compare the
  mean NLL of ``excerpt + a + b`` vs ``excerpt + b + a`` restricted to the pair bytes; only pairs whose excerpt
  fits in the context are scored, the rest are counted as "does not fit".
* ``retrieved``: an episodic store of chunks ``(c_k, pos_k)``; each presented segment retrieves its best chunk by
  cosine of hashed character-trigram TF-IDF vectors, and the answer is ``1[pos(a) < pos(b)]``.
* ``none``: no memory, a fair coin (expected accuracy 0.5).

Accuracy is binned by distance ``|i - j|`` (in segments) and by book length.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

__all__ = ["book", "segments", "sort_items", "HashEmbedder", "ChunkStore", "answer_in_context", "answer_retrieved",
           "answer_none", "answer_lm", "accuracy", "run", "main"]


def _pos_int(name: str, v: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def book(n_chars: int = 20000, offset: int = 0) -> str:
    """``n_chars`` characters of CPython's ``pydoc_data.topics`` (sorted keys, whitespace collapsed)."""
    n_chars = _pos_int("n_chars", n_chars)
    import pydoc_data.topics as t

    text = " ".join(" ".join(t.topics[k].split()) for k in sorted(t.topics))
    if offset < 0 or offset + n_chars > len(text):
        raise ValueError(f"offset + n_chars must be <= {len(text)}, got offset={offset}, n_chars={n_chars}")
    return text[offset: offset + n_chars]


def segments(text: str, seg_len: int = 32) -> list[str]:
    """Cut ``text`` into consecutive non-overlapping segments of ``seg_len`` characters (tail dropped)."""
    seg_len = _pos_int("seg_len", seg_len)
    if len(text) < 2 * seg_len:
        raise ValueError(f"text must hold at least 2 segments of {seg_len} chars, got {len(text)} chars")
    return [text[i: i + seg_len] for i in range(0, len(text) - seg_len + 1, seg_len)]


def sort_items(n_segments: int, n_items: int, seed: int = 0, max_dist: int | None = None) -> np.ndarray:
    """SORT items as an int array (n_items, 4): ``[a, b, label, dist]``, a/b presented segment indices,
    ``label = 1 if a < b`` (a came first), ``dist = |a - b|`` in segments. Order shuffled with a seeded coin."""
    n_segments, n_items = _pos_int("n_segments", n_segments), _pos_int("n_items", n_items)
    if n_segments < 2:
        raise ValueError(f"n_segments must be >= 2, got {n_segments}")
    md = n_segments - 1 if max_dist is None else _pos_int("max_dist", max_dist)
    g = np.random.default_rng([seed, 5])
    d = g.integers(1, min(md, n_segments - 1) + 1, size=n_items)
    i = (g.random(n_items) * (n_segments - d)).astype(int)
    j = i + d
    flip = g.random(n_items) < 0.5
    a, b = np.where(flip, j, i), np.where(flip, i, j)
    return np.stack([a, b, (a < b).astype(int), d], axis=1)


class HashEmbedder:
    """Cheap deterministic embedder: hashed character trigrams → (N, dim) L2-normalised float32, with an IDF
    weight fitted on the stored chunks. Same ``encode`` interface as the MiniLM wrapper."""

    def __init__(self, dim: int = 2048) -> None:
        self.dim = _pos_int("dim", dim)
        self.idf = np.ones(self.dim, dtype=np.float32)

    def _counts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, s in enumerate(texts):
            s = s.lower()
            for k in range(len(s) - 2):
                out[r, _fnv(s[k:k + 3]) % self.dim] += 1.0
        return out

    def fit(self, texts: Sequence[str]) -> HashEmbedder:
        df = (self._counts(texts) > 0).sum(0)
        self.idf = np.log((1 + len(texts)) / (1 + df)).astype(np.float32) + 1.0
        return self

    def encode(self, texts: Sequence[str], normalize_embeddings: bool = True) -> np.ndarray:
        x = self._counts(texts) * self.idf
        if normalize_embeddings:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x


def _fnv(s: str) -> int:
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


class ChunkStore:
    """Episodic store of (chunk, position) pairs; ``chunk_len`` characters per chunk, ``stride`` apart."""

    def __init__(self, text: str, chunk_len: int = 64, stride: int = 32, embedder: HashEmbedder | None = None):
        chunk_len, stride = _pos_int("chunk_len", chunk_len), _pos_int("stride", stride)
        self.pos = np.arange(0, max(len(text) - chunk_len, 0) + 1, stride)
        self.chunks = [text[p: p + chunk_len] for p in self.pos]
        self.emb = embedder or HashEmbedder()
        self.emb.fit(self.chunks)
        self.E = self.emb.encode(self.chunks)  # (K, dim)

    def retrieve(self, queries: Sequence[str]) -> np.ndarray:
        """Start position (in characters) of the best-matching chunk for each query, (Q,)."""
        return self.pos[np.argmax(self.emb.encode(queries) @ self.E.T, axis=1)]


def answer_in_context(segs: Sequence[str], items: np.ndarray, text: str) -> np.ndarray:
    """Rule: find both segments in the excerpt ``text`` and compare offsets. (n,) int predictions of ``label``."""
    return np.array([int(text.find(segs[a]) < text.find(segs[b])) for a, b in items[:, :2]])


def answer_retrieved(segs: Sequence[str], items: np.ndarray, store: ChunkStore) -> np.ndarray:
    """Retrieved memory: positions of the best chunks for a and b; ties broken by a coin-free rule (a first)."""
    pa, pb = store.retrieve([segs[a] for a in items[:, 0]]), store.retrieve([segs[b] for b in items[:, 1]])
    return (pa <= pb).astype(int)


def answer_none(items: np.ndarray, seed: int = 0) -> np.ndarray:
    """No memory: a fair coin per item."""
    return (np.random.default_rng([seed, 9]).random(len(items)) < 0.5).astype(int)


def answer_lm(model, segs: Sequence[str], items: np.ndarray,
              context: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tinylm likelihood scorer. For each item, the excerpt = book from the earlier segment's start to the
    later segment's end is prepended when ``excerpt + a + b`` fits in the context; we compare
    mean NLL of the pair bytes in both orders. Returns (pred (n,), fits (n,) bool); non-fitting items use the
    pair alone (no excerpt)."""
    import torch
    import torch.nn.functional as F

    from labkit.models import tokenizer as tk

    ctx = context or model.config.context
    preds, fits = [], []
    model.eval()
    for a, b, _, _ in items:
        lo, hi = min(a, b), max(a, b)
        excerpt = "".join(segs[lo: hi + 1])
        pair_len = len(tk.encode(segs[a] + segs[b]))
        fit = len(tk.encode(excerpt)) + pair_len + 1 <= ctx
        prefix = tk.encode(excerpt + "\n") if fit else tk.encode("\n")
        losses = []
        for x, y in ((a, b), (b, a)):
            ids = (prefix + tk.encode(segs[x] + segs[y]))[-ctx:]
            t = torch.tensor(ids)[None]
            with torch.no_grad():
                nll = F.cross_entropy(model(t[:, :-1]).transpose(1, 2), t[:, 1:], reduction="none")[0]
            losses.append(float(nll[-pair_len:].mean()))
        preds.append(int(losses[0] < losses[1]))
        fits.append(fit)
    return np.array(preds), np.array(fits)


def accuracy(pred: np.ndarray, items: np.ndarray) -> float:
    """Mean of ``pred == label``."""
    pred = np.asarray(pred)
    if pred.shape != (len(items),):
        raise ValueError(f"pred must have shape ({len(items)},), got {pred.shape}")
    return float(np.mean(pred == items[:, 2]))


def run(book_lens: Sequence[int] = (4000, 16000, 64000), seg_len: int = 32, n_items: int = 400,
        seeds: Sequence[int] = (0, 1, 2), dist_bins: Sequence[int] = (1, 2, 4, 16, 64, 10**9),
        lm_items: int = 0, lm_seg_len: int = 16) -> dict:
    """SORT accuracy per (condition, book length, distance bin, seed). Returns a dict of lists (JSON-able)."""
    t0 = time.perf_counter()
    rows = []
    model = None
    if lm_items:
        import torch

        torch.set_num_threads(1)
        from labkit.models import load

        model = load("tinylm")
    for L in book_lens:
        text = book(L)
        segs = segments(text, seg_len)
        store = ChunkStore(text, chunk_len=2 * seg_len, stride=seg_len // 2)
        for s in seeds:
            it = sort_items(len(segs), n_items, seed=s)
            preds = {"in_context": answer_in_context(segs, it, text), "retrieved": answer_retrieved(segs, it, store),
                     "none": answer_none(it, s)}
            if model is not None:
                lsegs = segments(text, lm_seg_len)
                short = sort_items(len(lsegs), lm_items, seed=s, max_dist=2)
                p, f = answer_lm(model, lsegs, short)
                rows.append(dict(book_len=L, seed=s, condition="lm_in_context", dist_lo=1, dist_hi=2,
                                 n=len(short), acc=accuracy(p, short), fits=float(f.mean())))
            for c, p in preds.items():
                for lo, hi in zip(dist_bins[:-1], dist_bins[1:]):
                    m = (it[:, 3] >= lo) & (it[:, 3] < hi)
                    if m.any():
                        rows.append(dict(book_len=L, seed=s, condition=c, dist_lo=lo, dist_hi=hi, n=int(m.sum()),
                                         acc=float(np.mean(p[m] == it[m, 2]))))
    return dict(rows=rows, seg_len=seg_len, wall_s=time.perf_counter() - t0)


def main() -> None:  # pragma: no cover
    import json

    r = run(book_lens=(4000, 16000, 64000, 256000), lm_items=60)
    for row in r["rows"]:
        print(json.dumps(row))
    print("wall_s", r["wall_s"])


if __name__ == "__main__":  # pragma: no cover
    main()
