r"""SORT: Sequence Order Recall Tasks (Pink et al., "Assessing Episodic Memory in LLMs with Sequence Order Recall
Tasks"), at the scale of chapter 1's byte-level ``tinylm``.

A *book* is a stretch of CPython's ``pydoc_data.topics`` text, exactly as the tiny LM's corpus holds it
(``labkit.data.corpus``): the *train* split was in tinylm's pretraining data (≈ 4 passes), the *heldout* split
never was. The book is cut into segments ``s_0 .. s_{n-1}`` of ``seg_len`` bytes. A SORT item is a pair
``(s_i, s_j)``, ``i != j``, shown in a random order ``(a, b)``; the label is ``y = 1[a came first]`` and the
distance is ``d = |i - j|`` (in segments). Items are drawn at fixed distances (``sort_items``).

Readers (each returns a prediction of ``y`` per item):

* ``lm_order`` (tinylm likelihood): the joint NLL of the pair bytes in both orders,
  ``ℓ(x, y) = -Σ log p(x y | prefix)``, and ``ŷ = 1[ℓ(a, b) < ℓ(b, a)]``. The prefix is ``"\n"`` (*from memory*:
  only what the weights hold) or ``excerpt + "\n"`` (*in context*: the book from the earlier segment's start to
  the later segment's end, which fits the 128-token context only for ``d ≤ 5`` at ``seg_len = 16``).
* ``answer_in_context``: a perfect reader that finds both segments in the excerpt (exact search).
* ``answer_retrieved``: an episodic store of overlapping chunks *with their positions*; each segment retrieves its
  best chunk (cosine of hashed character-trigram TF-IDF vectors) and the answer is ``1[pos(a) < pos(b)]``.
* ``answer_relevance``: the same retrieval *without positions* (plain RAG): the retrieved chunks are shown in
  relevance order; a perfect reader answers from a chunk that holds both segments, else from the order of the
  chunks in the prompt, which says nothing about the book's order.
* ``answer_none``: a fair coin.

``finetune`` trains a copy of tinylm on one book (the paper's "book only in training" condition).
``sort_experiment`` runs every reader for one seed (the seed picks the books, the items and the fine-tuning
batches); ``python -m labkit.episodic.sort`` writes the full run (3 seeds) to ``labkit/assets/sort.json``
(``load``).
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labkit.runtime import load_results

__all__ = ["DISTANCES", "RESULTS", "book", "segments", "sort_items", "HashEmbedder", "ChunkStore",
           "answer_in_context", "answer_retrieved", "answer_relevance", "answer_none", "lm_order",
           "greedy_continue", "replay_order", "bits_per_byte",
           "finetune", "accuracy", "by_distance", "sort_experiment", "load", "main"]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "sort.json"
DISTANCES = (1, 2, 3, 4, 5, 8, 16, 32, 64)


def _pos_int(name: str, v: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def book(n_chars: int = 1536, offset: int = 0, split: str = "train") -> str:
    """``n_chars`` characters of tinylm's English corpus (``pydoc_data.topics``), split "train" (seen in
    pretraining) or "heldout" (never seen), from ``offset``."""
    n_chars = _pos_int("n_chars", n_chars)
    from labkit.data import corpus

    text = corpus.english_text(split)
    if offset < 0 or offset + n_chars > len(text):
        raise ValueError(f"offset + n_chars must be <= {len(text)}, got offset={offset}, n_chars={n_chars}")
    return text[offset: offset + n_chars]


def segments(text: str, seg_len: int = 16) -> list[str]:
    """Cut ``text`` into consecutive non-overlapping segments of ``seg_len`` characters (tail dropped)."""
    seg_len = _pos_int("seg_len", seg_len)
    if len(text) < 2 * seg_len:
        raise ValueError(f"text must hold at least 2 segments of {seg_len} chars, got {len(text)} chars")
    return [text[i: i + seg_len] for i in range(0, len(text) - seg_len + 1, seg_len)]


def sort_items(n_segments: int, n_items: int, seed: int = 0, max_dist: int | None = None,
               distances: Sequence[int] | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """SORT items as an int array (N, 4): ``[a, b, label, dist]``, a/b presented segment indices,
    ``label = 1 if a < b`` (a came first), ``dist = |a - b|``; the presentation order is a seeded coin.

    Without ``distances``: N = n_items with d uniform in 1..max_dist. With ``distances``: ``n_items`` per distance
    (N = n_items · len(distances)), each d < n_segments, and optionally only pairs whose two segments are
    ``valid`` ((n_segments,) bool; e.g. unique in the book)."""
    n_segments, n_items = _pos_int("n_segments", n_segments), _pos_int("n_items", n_items)
    if n_segments < 2:
        raise ValueError(f"n_segments must be >= 2, got {n_segments}")
    g = np.random.default_rng([seed, 5])
    if distances is None:
        md = n_segments - 1 if max_dist is None else _pos_int("max_dist", max_dist)
        d = g.integers(1, min(md, n_segments - 1) + 1, size=n_items)
    else:
        bad = [x for x in distances if not 1 <= x < n_segments]
        if bad or not len(distances):
            raise ValueError(f"distances must lie in 1..{n_segments - 1}, got {list(distances)}")
        d = np.repeat(np.asarray(distances, dtype=int), n_items)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (n_segments,):
            raise ValueError(f"valid must have shape ({n_segments},), got {valid.shape}")
        i = np.empty(len(d), dtype=int)
        for k in np.unique(d):
            ok = np.flatnonzero(valid[:n_segments - k] & valid[k:])
            if not len(ok):
                raise ValueError(f"valid must allow a pair at distance {k}, got none")
            i[d == k] = g.choice(ok, size=int((d == k).sum()))
    else:
        i = (g.random(len(d)) * (n_segments - d)).astype(int)
    j = i + d
    flip = g.random(len(d)) < 0.5
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
    """Episodic store of (chunk, position) pairs; ``chunk_len`` characters per chunk, ``stride`` apart.
    ``pos``: (K,) start offsets; ``E``: (K, dim) chunk vectors."""

    def __init__(self, text: str, chunk_len: int = 64, stride: int = 32, embedder: HashEmbedder | None = None):
        chunk_len, stride = _pos_int("chunk_len", chunk_len), _pos_int("stride", stride)
        self.pos = np.arange(0, max(len(text) - chunk_len, 0) + 1, stride)
        self.chunks = [text[p: p + chunk_len] for p in self.pos]
        self.emb = embedder or HashEmbedder()
        self.emb.fit(self.chunks)
        self.E = self.emb.encode(self.chunks)  # (K, dim)

    def search(self, queries: Sequence[str], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Index and cosine score of the best chunk for each query, (Q,) each; with ``k``: the top k, (Q, k)
        best first (ties: earlier chunk first)."""
        s = self.emb.encode(queries) @ self.E.T
        if k is None:
            best = np.argmax(s, axis=1)
            return best, s[np.arange(len(best)), best]
        top = np.argsort(-s, axis=1, kind="stable")[:, :_pos_int("k", k)]
        return top, np.take_along_axis(s, top, axis=1)

    def retrieve(self, queries: Sequence[str]) -> np.ndarray:
        """Start position (in characters) of the best-matching chunk for each query, (Q,)."""
        return self.pos[self.search(queries)[0]]


def answer_in_context(segs: Sequence[str], items: np.ndarray, text: str) -> np.ndarray:
    """Perfect reader: find both segments in the excerpt ``text`` and compare offsets. (n,) predictions."""
    return np.array([int(text.find(segs[a]) < text.find(segs[b])) for a, b in items[:, :2]])


def answer_retrieved(segs: Sequence[str], items: np.ndarray, store: ChunkStore) -> np.ndarray:
    """Retrieval with positions: each segment's position is the stored start of the first of its top-3 chunks
    that holds it, plus its offset inside that chunk (the reader reads the chunks);
    ``ŷ = 1[pos(a) <= pos(b)]``, (n,)."""
    def where(queries: list[str]) -> np.ndarray:
        top = store.search(queries, k=3)[0]
        out = []
        for row, q in zip(top, queries):
            c = next((c for c in row if q in store.chunks[c]), row[0])
            out.append(store.pos[c] + max(store.chunks[c].find(q), 0))
        return np.array(out)

    pa, pb = where([segs[a] for a in items[:, 0]]), where([segs[b] for b in items[:, 1]])
    return (pa <= pb).astype(int)


def answer_relevance(segs: Sequence[str], items: np.ndarray, store: ChunkStore) -> np.ndarray:
    """Retrieval without positions (RAG): the best chunks of a and b are shown in relevance order (higher cosine
    first; a's chunk first on ties). A perfect reader answers from a shown chunk that holds both segments, else
    by which segment's chunk is shown first. (n,) predictions."""
    ka, sa = store.search([segs[a] for a in items[:, 0]])
    kb, sb = store.search([segs[b] for b in items[:, 1]])
    out = []
    for (a, b), i, j, x, y in zip(items[:, :2], ka, kb, sa, sb):
        both = [c for c in ((i, j) if x >= y else (j, i)) if segs[a] in store.chunks[c] and segs[b] in store.chunks[c]]
        if both:
            c = store.chunks[both[0]]
            out.append(int(c.find(segs[a]) < c.find(segs[b])))
        else:
            out.append(int(x >= y))
    return np.array(out)


def answer_none(items: np.ndarray, seed: int = 0) -> np.ndarray:
    """No memory: a fair coin per item."""
    return (np.random.default_rng([seed, 9]).random(len(items)) < 0.5).astype(int)


def _nll_rows(model, rows: list[list[int]], n_scored: Sequence[int], batch: int = 64) -> np.ndarray:
    """Summed NLL of the last ``n_scored[r]`` tokens of each row; rows are grouped by length and batched."""
    import torch
    import torch.nn.functional as F

    out = np.zeros(len(rows))
    by_len: dict[int, list[int]] = {}
    for r, ids in enumerate(rows):
        by_len.setdefault(len(ids), []).append(r)
    with torch.no_grad():
        for idx in by_len.values():
            for s in range(0, len(idx), batch):
                part = idx[s: s + batch]
                t = torch.tensor([rows[r] for r in part])
                nll = F.cross_entropy(model(t[:, :-1]).transpose(1, 2), t[:, 1:], reduction="none")
                for k, r in enumerate(part):
                    out[r] = float(nll[k, -n_scored[r]:].sum())
    return out


def lm_order(model, segs: Sequence[str], items: np.ndarray, in_context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """tinylm likelihood reader: ``ŷ = 1[ℓ(a, b) < ℓ(b, a)]`` with ``ℓ`` the summed NLL of the pair bytes after the
    prefix ("\\n", or the excerpt + "\\n" when ``in_context``). Returns (pred (n,), fits (n,) bool); an item whose
    sequence does not fit the context (``in_context`` only) is answered by a coin (seeded by its indices)."""
    from labkit.models import tokenizer as tk

    ctx = model.config.context
    rows, scored, fits = [], [], []
    for a, b, _, _ in items:
        lo, hi = min(a, b), max(a, b)
        prefix = tk.encode("".join(segs[lo: hi + 1]) + "\n") if in_context else tk.encode("\n")
        pair_ab, pair_ba = tk.encode(segs[a] + segs[b]), tk.encode(segs[b] + segs[a])
        fit = len(prefix) + len(pair_ab) - 1 <= ctx
        fits.append(fit)
        if not fit:
            prefix = tk.encode("\n")
        rows += [prefix + pair_ab, prefix + pair_ba]
        scored += [len(pair_ab), len(pair_ba)]
    nll = _nll_rows(model, rows, scored).reshape(-1, 2)
    pred = (nll[:, 0] < nll[:, 1]).astype(int)
    fits = np.array(fits, dtype=bool)
    if not fits.all():
        coin = np.array([(int(a) * 7919 + int(b)) % 2 for a, b in items[:, :2]])
        pred = np.where(fits, pred, coin)
    return pred, fits


def greedy_continue(model, prompts: Sequence[str], n_new: int = 96, batch: int = 256) -> list[str]:
    """Greedy continuation of ``n_new`` tokens after ``"\n" + prompt`` for each prompt (batched, KV cache);
    the continuations decoded as text (bytes that are not valid UTF-8 are replaced)."""
    import torch

    from labkit.models import tokenizer as tk

    n_new = _pos_int("n_new", n_new)
    rows = [tk.encode("\n" + p) for p in prompts]
    if max(len(r) for r in rows) + n_new - 1 > model.config.context:
        raise ValueError(f"n_new must be <= {model.config.context + 1 - max(len(r) for r in rows)}, got {n_new}")
    out = [""] * len(rows)
    by_len: dict[int, list[int]] = {}
    for r, ids in enumerate(rows):
        by_len.setdefault(len(ids), []).append(r)
    with torch.no_grad():
        for idx in by_len.values():
            for s in range(0, len(idx), batch):
                part = idx[s: s + batch]
                cache = model.new_cache(len(part))
                logits = model(torch.tensor([rows[r] for r in part]), cache=cache)[:, -1]
                new = []
                for k in range(n_new):
                    tok = logits.argmax(-1, keepdim=True).clamp(max=255)  # bytes only
                    new.append(tok)
                    if k < n_new - 1:
                        logits = model(tok, cache=cache)[:, -1]
                gen = torch.cat(new, 1).tolist()
                for k, r in enumerate(part):
                    out[r] = bytes(gen[k]).decode("utf-8", errors="replace")
    return out


def replay_order(model, segs: Sequence[str], items: np.ndarray, n_new: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Recall by replay, from memory only: continue greedily from a (and from b) for ``n_new`` bytes;
    ``ŷ = 1`` if b appears in a's continuation, 0 if a appears in b's, else a coin (seeded by the indices).
    Returns (pred (n,), found (n,) bool: whether either continuation contained the other segment)."""
    starts = sorted({int(x) for x in items[:, :2].ravel()})
    cont = dict(zip(starts, greedy_continue(model, [segs[i] for i in starts], n_new)))
    pred, found = [], []
    for a, b, _, _ in items:
        if segs[b] in cont[int(a)]:
            pred.append(1)
            found.append(True)
        elif segs[a] in cont[int(b)]:
            pred.append(0)
            found.append(True)
        else:
            pred.append((int(a) * 7919 + int(b)) % 2)
            found.append(False)
    return np.array(pred), np.array(found)


def bits_per_byte(model, text: str) -> float:
    """Mean bits per token of ``text`` under ``model`` (consecutive windows of the context length)."""
    from labkit.models import tokenizer as tk

    ids = tk.encode(text)
    ctx = model.config.context
    rows = [ids[s: s + ctx + 1] for s in range(0, len(ids) - 1, ctx)]
    rows = [r for r in rows if len(r) > 1]
    nll = _nll_rows(model, rows, [len(r) - 1 for r in rows])
    return float(nll.sum() / sum(len(r) - 1 for r in rows) / np.log(2))


def finetune(model, text: str, steps: int = 40, batch_size: int = 16, lr: float = 1e-3, seed: int = 0):
    """A copy of ``model`` trained ``steps`` Adam steps on random ``context + 1``-byte windows of ``text``
    (gradient norm clipped to 1). The original is unchanged."""
    import torch
    import torch.nn.functional as F

    from labkit.models import tokenizer as tk

    steps, batch_size = _pos_int("steps", steps), _pos_int("batch_size", batch_size)
    ids = torch.tensor(tk.encode(text))
    n = model.config.context + 1
    if len(ids) <= n:
        raise ValueError(f"text must be longer than {n} tokens, got {len(ids)}")
    m = copy.deepcopy(model).train()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = np.random.default_rng([seed, 17])
    for _ in range(steps):
        x = torch.stack([ids[s: s + n] for s in g.integers(0, len(ids) - n + 1, batch_size)])
        loss = F.cross_entropy(m(x[:, :-1]).transpose(1, 2), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    return m.eval()


def accuracy(pred: np.ndarray, items: np.ndarray) -> float:
    """Mean of ``pred == label``."""
    pred = np.asarray(pred)
    if pred.shape != (len(items),):
        raise ValueError(f"pred must have shape ({len(items)},), got {pred.shape}")
    return float(np.mean(pred == items[:, 2]))


def by_distance(pred: np.ndarray, items: np.ndarray, distances: Sequence[int]) -> list[float]:
    """Accuracy at each distance in ``distances`` (NaN where no item has it)."""
    ok = np.asarray(pred) == items[:, 2]
    return [float(ok[items[:, 3] == d].mean()) if (items[:, 3] == d).any() else float("nan") for d in distances]


def sort_experiment(seed: int = 0, n_per_dist: int = 40, distances: Sequence[int] = DISTANCES, seg_len: int = 16,
                    book_len: int = 1536, finetune_steps: int = 0, replay: bool = True, model=None) -> dict:
    """Every reader on one seed. The seed picks a *train* book and a *heldout* book (``book_len`` chars each) and
    the items (``n_per_dist`` per distance, the same indices in both books). Readers:

    in context (tinylm, heldout book, d ≤ 5 fits), from memory (tinylm, no excerpt: train book = seen in
    pretraining; heldout book = never seen; with ``replay`` also recall by replay), fine-tuned (tinylm trained
    ``finetune_steps`` steps on the heldout book, no excerpt, pair likelihood and replay; skipped when 0),
    retrieval with / without positions (heldout book), perfect reader in context, coin.
    Returns {"acc": {reader: [accuracy per distance]}, "bpb": {model: bits per byte of its book}, "fits",
    "distances", "seed", "seconds"}."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    seg_len, book_len = _pos_int("seg_len", seg_len), _pos_int("book_len", book_len)
    from labkit.data import corpus
    from labkit.models import load

    lm = load("tinylm") if model is None else model
    g = np.random.default_rng([seed, 3])
    books = {}
    for split in ("train", "heldout"):
        off = int(g.integers(0, len(corpus.english_text(split)) - book_len))
        books[split] = book(book_len, off, split)
    segs = {k: segments(v, seg_len) for k, v in books.items()}
    n_seg = min(len(s) for s in segs.values())
    # only segments that occur once in their book and are not mostly blank (order is defined for them)
    valid = np.array([all(books[k].count(segs[k][i]) == 1 and len(segs[k][i].strip()) >= seg_len // 2
                          for k in books) for i in range(n_seg)])
    items = sort_items(n_seg, n_per_dist, seed=seed, distances=distances, valid=valid)
    near = items[items[:, 3] <= 5]
    acc: dict = {}
    p, fits = lm_order(lm, segs["heldout"], near, in_context=True)
    acc["tinylm, in context"] = by_distance(p, near, distances)
    acc["tinylm, from memory (seen in pretraining)"] = by_distance(lm_order(lm, segs["train"], items)[0], items,
                                                                    distances)
    if replay:
        acc["tinylm, seen in pretraining, recall by replay"] = by_distance(
            replay_order(lm, segs["train"], items)[0], items, distances)
    acc["tinylm, no memory (unseen text)"] = by_distance(lm_order(lm, segs["heldout"], items)[0], items, distances)
    bpb = {"pretrained, train book": bits_per_byte(lm, books["train"]),
           "pretrained, heldout book": bits_per_byte(lm, books["heldout"])}
    if finetune_steps:
        ft = finetune(lm, books["heldout"], steps=finetune_steps, seed=seed)
        acc["tinylm, fine-tuned on the book"] = by_distance(lm_order(ft, segs["heldout"], items)[0], items, distances)
        if replay:
            acc["tinylm, fine-tuned, recall by replay"] = by_distance(
                replay_order(ft, segs["heldout"], items)[0], items, distances)
        bpb["fine-tuned, heldout book"] = bits_per_byte(ft, books["heldout"])
    store = ChunkStore(books["heldout"], chunk_len=4 * seg_len, stride=2 * seg_len)
    acc["retrieval with positions"] = by_distance(answer_retrieved(segs["heldout"], items, store), items, distances)
    acc["retrieval without positions (RAG)"] = by_distance(answer_relevance(segs["heldout"], items, store), items,
                                                           distances)
    excerpts = [answer_in_context(segs["heldout"], it[None], "".join(segs["heldout"][min(it[:2]): max(it[:2]) + 1]))[0]
                for it in items]
    acc["perfect reader, in context"] = by_distance(np.array(excerpts), items, distances)
    acc["coin"] = by_distance(answer_none(items, seed), items, distances)
    return {"seed": seed, "distances": list(distances), "n_per_dist": n_per_dist, "seg_len": seg_len,
            "book_len": book_len, "finetune_steps": finetune_steps, "acc": acc, "bpb": bpb,
            "fits": float(fits.mean()), "seconds": time.perf_counter() - start}


FULL = {"n_per_dist": 40, "finetune_steps": 40}
SEEDS = (0, 1, 2)


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/sort.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.episodic.sort", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 5 SORT with tinylm, full run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from labkit.models import load as load_model

    lm = load_model("tinylm")
    runs = []
    for s in args.seeds:
        runs.append(sort_experiment(seed=s, model=lm, **FULL))
        print("seed", s, f"{runs[-1]['seconds']:.1f}s", {k: round(float(np.nanmean(v)), 3)
                                                          for k, v in runs[-1]["acc"].items()}, runs[-1]["bpb"])
    args.out.write_text(json.dumps({"settings": FULL, "runs": runs}))


if __name__ == "__main__":  # pragma: no cover
    main()
