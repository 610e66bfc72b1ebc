"""The compressor interface (after kvpress's presses, smaller): one object per method, applied to a cache.

    comp = H2O(budget=0.5)
    cache = model.new_cache(); model(context, cache=cache)     # prefill
    cache = comp(model, cache)                                 # compress (checks, then ``compress``)
    comp.nbytes(cache)                                         # the bytes actually held

A compressor may also act at write time (``install(model)`` / ``remove(model)``, e.g. a projection of new
keys and values through ``TinyLM.set_kv_transform``). ``Compose([a, b])`` applies ``a`` then ``b``.

``budget`` is the fraction of the cache's *tokens* a token-axis compressor keeps, in (0, 1]; compressors
that keep every token (quantization, projection) report their size through ``nbytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from labkit.models.tinylm import KVCache, TinyLM, TinyLMConfig

__all__ = ["Compose", "Compressor", "NoCompression", "check_budget", "check_cache", "kv_bytes"]


def kv_bytes(config: TinyLMConfig, n_tokens: int, bits: int = 32) -> int:
    """Bytes of a full K/V cache of ``n_tokens``: ``2 · n_layers · n_kv_heads · head_dim · bits/8`` per token."""
    if not isinstance(config, TinyLMConfig):
        raise TypeError(f"config must be a TinyLMConfig, got {type(config).__name__}")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
    if bits not in (8, 16, 32):
        raise ValueError(f"bits must be 8, 16 or 32, got {bits!r}")
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * bits // 8 * n_tokens


def check_budget(budget: float) -> float:
    """``budget`` as a float in (0, 1], else ValueError."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    return float(budget)


def check_cache(model: TinyLM, cache: KVCache) -> None:
    """ValueError unless ``cache`` is a non-empty KVCache made by ``model``."""
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
    if cache.model_id != model.model_id:
        raise ValueError(f"cache belongs to another model (model_id {cache.model_id!r}), expected "
                         f"{model.model_id!r}")
    if cache.length == 0:
        raise ValueError("cache must hold at least one entry (prefill first), got an empty cache")


class Compressor:
    """Base class. Subclasses override ``compress`` (token/bit axis, after prefill) and/or ``install``/``remove``
    (write-time transforms) and ``nbytes`` when they store something other than plain K/V tensors."""

    name = "compressor"

    def __init__(self, budget: float = 1.0) -> None:
        self.budget = check_budget(budget)

    def n_keep(self, n_tokens: int) -> int:
        """Tokens kept of ``n_tokens``: ``floor(budget · n)``, at least 1 (never more than the budget allows
        unless the budget allows less than one token)."""
        return max(1, math.floor(self.budget * n_tokens + 1e-9))

    def compress(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> KVCache:
        """Return the compressed cache (may be ``cache`` itself, changed in place). tokens: (B, T) the prefill
        tokens (default ``cache.tokens``)."""
        return cache

    def __call__(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> KVCache:
        check_cache(model, cache)
        if tokens is not None and (not isinstance(tokens, torch.Tensor) or tokens.shape != cache.tokens.shape):
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be the cached tokens, shape {tuple(cache.tokens.shape)}, got {got}")
        with torch.no_grad():
            return self.compress(model, cache, tokens)

    def nbytes(self, cache: KVCache) -> int:
        """Bytes of K/V actually held by ``cache`` (default: its tensors' bytes)."""
        return cache.bytes()

    def install(self, model: TinyLM) -> None:
        """Attach a write-time transform to ``model`` (default: nothing)."""

    def remove(self, model: TinyLM) -> None:
        """Detach what ``install`` attached (default: nothing)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget})"


class NoCompression(Compressor):
    """The full cache: ``compress`` returns it unchanged."""

    name = "full"


class Compose(Compressor):
    """Apply ``compressors`` in order (e.g. ``Compose([SnapKV(0.5), KIVI(4)])``). budget: the product of
    theirs; ``nbytes``: the last one's (it sees the final cache); install/remove: all of them."""

    name = "compose"

    def __init__(self, compressors: Sequence[Compressor]) -> None:
        compressors = list(compressors)
        if not compressors or not all(isinstance(c, Compressor) for c in compressors):
            raise ValueError(f"compressors must be a non-empty list of Compressor, got {compressors!r}")
        self.compressors = compressors
        super().__init__(math.prod(c.budget for c in compressors))
        self.name = "+".join(c.name for c in compressors)

    def compress(self, model: TinyLM, cache: KVCache, tokens: torch.Tensor | None = None) -> KVCache:
        for c in self.compressors:
            cache = c.compress(model, cache, None)  # tokens of the original prefill no longer match
        return cache

    def nbytes(self, cache: KVCache) -> int:
        return self.compressors[-1].nbytes(cache)

    def install(self, model: TinyLM) -> None:
        for c in self.compressors:
            c.install(model)

    def remove(self, model: TinyLM) -> None:
        for c in reversed(self.compressors):
            c.remove(model)

    def __repr__(self) -> str:
        return f"Compose({self.compressors!r})"
