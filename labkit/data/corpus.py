"""The tiny LM's training corpus, built offline: English bytes plus packed structured episodes.

**English** is CPython's own documentation, ``pydoc_data.topics`` (≈465k characters, bundled with every
Python; the exact text follows the Python version). The topics are joined in sorted order; the last 10%
of that text is held out for measuring bits per character, the first 90% is for training. Loss on every
byte.

**Episodes** use the tokenizer's single tokens (``labkit.models.tokenizer``); the loss is on the answers
only, so the model is graded only where the context determines the next token:

- lookup, 1–8 pairs:  ``<doc> k1 v1 … kn vn <sep> kq vq``   (loss on ``vq``; values distinct in an episode)
- trace (variables):  ``<doc> a v3  b a  c b <sep> c v3``   ("b a" means b = a; loss on the answer)
- copy:               ``<doc> <copy> v5 v1 v9 <sep> v5 v1 v9`` (loss on the copy)

Episodes are packed into rows of ``context + 1`` tokens; a row never reuses a key (so an earlier episode
cannot be confused with the current one) and the space left at its end is filled with English.

Every function takes ``seed`` (an int or a NumPy generator) and is deterministic given it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from labkit.data import SeedLike, rng
from labkit.models import tokenizer as tk

__all__ = [
    "Batch", "Episode", "copy_episode", "english_text", "english_tokens", "lookup_episode", "lookup_prompts",
    "packed_row", "trace_episode", "training_batch",
]

HELDOUT_FRACTION = 0.1
MAX_PAIRS = 8
TASK_MIX = {"lookup": 0.7, "trace": 0.15, "copy": 0.15}  # of the episode rows


# ------------------------------------------------------------------------------------------------------
# English
# ------------------------------------------------------------------------------------------------------


@functools.cache
def _full_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


def english_text(split: str = "train") -> str:
    """The English text: "train" (first 90%), "heldout" (last 10%) or "all"."""
    text = _full_text()
    cut = int(round(len(text) * (1 - HELDOUT_FRACTION)))
    if split == "train":
        return text[:cut]
    if split == "heldout":
        return text[cut:]
    if split == "all":
        return text
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


@functools.cache
def english_tokens(split: str = "train") -> np.ndarray:
    """The English split as byte tokens, (N,) uint8 (read-only)."""
    arr = np.frombuffer(english_text(split).encode("utf-8"), dtype=np.uint8).copy()
    arr.setflags(write=False)
    return arr


# ------------------------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """One episode: ``tokens`` (list of ids) and ``loss`` (same length; True where the token is a target)."""

    tokens: list[int]
    loss: list[bool]

    def __len__(self) -> int:
        return len(self.tokens)


def _keys(g: np.random.Generator, n: int, allowed: list[int] | None) -> list[int]:
    pool = list(tk.KEY_TOKENS) if allowed is None else allowed
    if n > len(pool):
        raise ValueError(f"need {n} unused keys, only {len(pool)} left")
    return [pool[i] for i in g.choice(len(pool), size=n, replace=False)]


def lookup_episode(seed: SeedLike, n_pairs: int, allowed_keys: list[int] | None = None) -> Episode:
    """``<doc> k1 v1 … kn vn <sep> kq vq``: n distinct keys, n distinct values, one query; loss on vq."""
    if not 1 <= n_pairs <= min(tk.N_KEYS, tk.N_VALUES):
        raise ValueError(f"n_pairs must be in 1..{min(tk.N_KEYS, tk.N_VALUES)}, got {n_pairs}")
    g = rng(seed)
    keys = _keys(g, n_pairs, allowed_keys)
    values = [tk.VALUE_TOKENS[i] for i in g.choice(tk.N_VALUES, size=n_pairs, replace=False)]
    q = int(g.integers(n_pairs))
    tokens = [tk.DOC] + [t for kv in zip(keys, values) for t in kv] + [tk.SEP, keys[q], values[q]]
    return Episode(tokens, [False] * (len(tokens) - 1) + [True])


def trace_episode(seed: SeedLike, n_vars: int | None = None, allowed_keys: list[int] | None = None) -> Episode:
    """Variable tracing: ``<doc> a v3  b a  c v7  d b <sep> d v3``; loss on the answer (a value).

    Each variable (a key token) is assigned once, either a value or an earlier variable; chains are at
    most 3 assignments deep. The query prefers a variable assigned from another variable.
    """
    g = rng(seed)
    n_vars = int(g.integers(2, 7)) if n_vars is None else n_vars
    if not 2 <= n_vars <= 16:
        raise ValueError(f"n_vars must be in 2..16, got {n_vars}")
    names = _keys(g, n_vars, allowed_keys)
    value_of: dict[int, int] = {}
    depth: dict[int, int] = {}
    tokens = [tk.DOC]
    for i, name in enumerate(names):
        earlier = [v for v in names[:i] if depth[v] < 3]
        if earlier and g.random() < 0.6:
            src = earlier[int(g.integers(len(earlier)))]
            value_of[name], depth[name] = value_of[src], depth[src] + 1
        else:
            src = tk.VALUE_TOKENS[int(g.integers(tk.N_VALUES))]
            value_of[name], depth[name] = src, 1
        tokens += [name, src]
    deep = [v for v in names if depth[v] > 1]
    q = deep[int(g.integers(len(deep)))] if deep else names[int(g.integers(n_vars))]
    tokens += [tk.SEP, q, value_of[q]]
    return Episode(tokens, [False] * (len(tokens) - 1) + [True])


def copy_episode(seed: SeedLike, length: int | None = None) -> Episode:
    """``<doc> <copy> v5 v1 v9 <sep> v5 v1 v9``: loss on the copy (3–10 values by default)."""
    g = rng(seed)
    length = int(g.integers(3, 11)) if length is None else length
    if not 1 <= length <= 32:
        raise ValueError(f"length must be in 1..32, got {length}")
    seq = [tk.VALUE_TOKENS[i] for i in g.integers(tk.N_VALUES, size=length)]
    tokens = [tk.DOC, tk.COPY, *seq, tk.SEP, *seq]
    return Episode(tokens, [False] * (length + 3) + [True] * length)


def _random_episode(g: np.random.Generator, unused: list[int]) -> tuple[Episode, list[int]]:
    task = g.choice(list(TASK_MIX), p=list(TASK_MIX.values()))
    if task == "lookup":
        ep = lookup_episode(g, int(g.integers(1, MAX_PAIRS + 1)), allowed_keys=unused)
    elif task == "trace":
        ep = trace_episode(g, allowed_keys=unused)
    else:
        ep = copy_episode(g)
    return ep, [t for t in ep.tokens if tk.is_key(t)]


def packed_row(seed: SeedLike, length: int) -> Episode:
    """Episodes packed into ``length`` tokens (no key reused in the row), the tail filled with English."""
    g = rng(seed)
    tokens: list[int] = []
    loss: list[bool] = []
    unused = list(tk.KEY_TOKENS)
    while True:
        if len(unused) < 16:
            break
        ep, used = _random_episode(g, unused)
        if len(tokens) + len(ep) > length:
            break
        tokens += ep.tokens
        loss += ep.loss
        used_set = set(used)
        unused = [k for k in unused if k not in used_set]
    rest = length - len(tokens)
    if rest:
        text = english_tokens("train")
        start = int(g.integers(len(text) - rest))
        tokens += text[start:start + rest].tolist()
        loss += [True] * rest
    return Episode(tokens, loss)


def english_row(seed: SeedLike, length: int, split: str = "train") -> Episode:
    """A random window of ``length`` bytes of the English split; loss on every byte."""
    g = rng(seed)
    text = english_tokens(split)
    start = int(g.integers(len(text) - length))
    return Episode(text[start:start + length].tolist(), [True] * length)


# ------------------------------------------------------------------------------------------------------
# Batches and evaluation sets
# ------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """inputs, targets: (B, T) int64; mask: (B, T) bool, True where ``targets`` counts in the loss."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


def training_batch(seed: SeedLike, batch_size: int, context: int, english_fraction: float = 0.5) -> Batch:
    """``batch_size`` rows of ``context`` inputs: English rows with probability ``english_fraction``,
    else packed episodes. targets = inputs shifted by one; mask marks the loss targets."""
    if not 0.0 <= english_fraction <= 1.0:
        raise ValueError(f"english_fraction must be in [0, 1], got {english_fraction!r}")
    g = rng(seed)
    rows = []
    for _ in range(batch_size):
        if g.random() < english_fraction:
            rows.append(english_row(g, context + 1))
        else:
            rows.append(packed_row(g, context + 1))
    tokens = np.array([r.tokens for r in rows], dtype=np.int64)
    loss = np.array([r.loss for r in rows], dtype=bool)
    return Batch(tokens[:, :-1], tokens[:, 1:], loss[:, 1:])


def lookup_prompts(seed: SeedLike, n_episodes: int, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh lookup episodes as prompts ``<doc> k1 v1 … <sep> kq`` (N, 2 n_pairs + 3) and answers (N,)."""
    g = rng(seed)
    eps = [lookup_episode(g, n_pairs) for _ in range(n_episodes)]
    tokens = np.array([e.tokens for e in eps], dtype=np.int64)
    return tokens[:, :-1], tokens[:, -1]
