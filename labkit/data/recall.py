"""Generated recall tasks for chapter 3: multi-query associative recall (MQAR) and a needle in a haystack.

Token layout shared by both tasks (vocabulary ``V``):

- ``0`` is the **filler** token of MQAR (the blank between queries);
- keys come from ``[1, V/2)`` and values from ``[V/2, V)`` (``V/2`` rounded down).

MQAR (Arora et al., *Zoology*, 2023) puts ``n`` key-value pairs at the start and asks for every value
again later, each key re-mentioned once in random order::

    k1 v1 k2 v2 ... kn vn | 0 0 k2 v2 0 k1 v1 0 0 0 kn vn 0 ...
    <----- the pairs -----> <------------- the queries ------------->

Targets are ``-100`` (PyTorch's ``ignore_index``) except at each *query key*, where the target is the
value paired with that key: the model predicts the value as the next token after seeing the key, so
``logits[t]`` is graded against ``targets[t]`` with no shift. The value itself follows the query key in
the input (teacher forcing), so later queries can see which values were already asked for; that opens
the "copy a value not used yet" shortcut whose accuracy ``mqar_baselines`` gives.

Filler choice: zoology fills the gaps with random tokens, which can put a second copy of a key into the
sequence (and make the answer ambiguous). Here every gap holds token 0, which is neither a key nor a
value, so each key occurs exactly once among the pairs (per pass) and once as a query.

Every generator takes ``seed`` (an int or a NumPy generator) and returns torch ``LongTensor``s.
"""

from __future__ import annotations

import numpy as np
import torch

from labkit.data import SeedLike, _check_positive, rng

__all__ = ["FILLER", "IGNORE", "key_range", "mqar", "mqar_baselines", "needle", "value_range"]

FILLER = 0
IGNORE = -100


def key_range(vocab_size: int) -> tuple[int, int]:
    """Keys are the tokens ``[lo, hi)`` = ``[1, V // 2)``."""
    return 1, vocab_size // 2


def value_range(vocab_size: int) -> tuple[int, int]:
    """Values are the tokens ``[lo, hi)`` = ``[V // 2, V)``."""
    return vocab_size // 2, vocab_size


def _distinct(g: np.random.Generator, n_rows: int, lo: int, hi: int, k: int) -> np.ndarray:
    """(n_rows, k) tokens, distinct within each row, uniform from ``[lo, hi)``."""
    return lo + np.argsort(g.random((n_rows, hi - lo)), axis=1)[:, :k]


def _check_vocab(vocab_size: int, n_pairs: int) -> None:
    _check_positive("vocab_size", vocab_size)
    n_keys = key_range(vocab_size)[1] - key_range(vocab_size)[0]
    n_values = value_range(vocab_size)[1] - value_range(vocab_size)[0]
    if min(n_keys, n_values) < n_pairs:
        raise ValueError(f"vocab_size={vocab_size} holds {n_keys} keys and {n_values} values, too few for "
                         f"n_pairs={n_pairs} distinct keys and values: vocab_size must be >= {2 * n_pairs + 2}")


def mqar(n_examples: int, seq_len: int, n_pairs: int, vocab_size: int = 256, seed: SeedLike = 0,
         power_a: float = 0.01, n_passes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall. Returns ``inputs, targets``, each (n_examples, seq_len) int64.

    Each example draws ``n_pairs`` distinct keys and ``n_pairs`` distinct values (distinct so the
    shortcut baseline has a closed form), writes the pairs ``k1 v1 … kn vn`` ``n_passes`` times (the
    same block again for ``n_passes = 2``: JRT-Prompt, "just read twice"), then places the ``n`` queries
    ``k v`` in the remaining ``R = seq_len - 2·n·n_passes`` positions. The queries sit in ``R // 2``
    two-token slots; slot ``i = 1, 2, …`` is chosen with probability ∝ ``a·i^(a-1)`` (``a = power_a``,
    sampled without replacement), so small ``a`` puts most queries soon after the pairs and leaves a
    long tail. Queries appear in slot order; which key goes to which slot is a random permutation.

    ``targets[b, t]`` is the value of the key at a query position ``t``, ``-100`` everywhere else.
    """
    for name, value in (("n_examples", n_examples), ("seq_len", seq_len), ("n_pairs", n_pairs),
                        ("n_passes", n_passes)):
        _check_positive(name, value)
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a!r}")
    context = 2 * n_pairs * n_passes
    if context + 2 * n_pairs > seq_len:
        raise ValueError(f"seq_len must be >= 2·n_pairs·n_passes + 2·n_pairs = {context + 2 * n_pairs} "
                         f"(n_pairs={n_pairs}, n_passes={n_passes}), got {seq_len}")
    _check_vocab(vocab_size, n_pairs)
    g = rng(seed)
    N, n = n_examples, n_pairs

    keys = _distinct(g, N, *key_range(vocab_size), n)  # (N, n)
    values = _distinct(g, N, *value_range(vocab_size), n)  # (N, n)
    block = np.empty((N, 2 * n), dtype=np.int64)
    block[:, 0::2], block[:, 1::2] = keys, values

    # Query slots: sample n of the R // 2 slots without replacement with weights p(i) ∝ a·i^(a-1).
    # Gumbel-top-k: the k largest log p(i) + Gumbel noise are such a sample (successive draws).
    n_slots = (seq_len - context) // 2
    log_p = np.log(power_a) + (power_a - 1.0) * np.log(np.arange(1, n_slots + 1))
    slots = np.sort(np.argsort(-(log_p + g.gumbel(size=(N, n_slots))), axis=1)[:, :n], axis=1)  # (N, n)
    order = np.argsort(g.random((N, n)), axis=1)  # which pair is asked in each slot

    inputs = np.full((N, seq_len), FILLER, dtype=np.int64)
    targets = np.full((N, seq_len), IGNORE, dtype=np.int64)
    inputs[:, :context] = np.tile(block, (1, n_passes))
    rows = np.arange(N)[:, None]
    at = context + 2 * slots  # query-key positions
    asked_keys = np.take_along_axis(keys, order, axis=1)
    asked_values = np.take_along_axis(values, order, axis=1)
    inputs[rows, at], inputs[rows, at + 1] = asked_keys, asked_values
    targets[rows, at] = asked_values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def mqar_baselines(n_pairs: int, vocab_size: int) -> dict:
    """Accuracies a model reaches on ``mqar`` without recalling anything. Returns a dict of floats.

    - ``chance``: a uniform guess among the values, ``1 / (V - V // 2)``.
    - ``shortcut``: guess uniformly among this example's values that have *not* been asked for yet
      (they all appear among the pairs; the ones asked so far appear after their query keys). The
      queries come in a uniformly random order, so at the ``j``-th query (``j = 0 … n-1``) exactly
      ``n - j`` values remain and the guess is right with probability ``1 / (n - j)``. Averaged over the
      ``n`` queries::

          shortcut = (1/n) Σ_{j=0}^{n-1} 1/(n - j) = (1/n) Σ_{m=1}^{n} 1/m = H_n / n

      (``H_n`` the n-th harmonic number): 1 for one pair, 0.75 for two, ≈ 0.34 for 8, ≈ 0.21 for 16.
      A model above this line must be using the keys.
    """
    _check_positive("n_pairs", n_pairs)
    _check_vocab(vocab_size, n_pairs)
    lo, hi = value_range(vocab_size)
    harmonic = float(np.sum(1.0 / np.arange(1, n_pairs + 1)))
    return {"chance": 1.0 / (hi - lo), "shortcut": harmonic / n_pairs}


def needle(n_examples: int, seq_len: int, vocab_size: int = 256,
           seed: SeedLike = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One key-value needle in a haystack, asked for at the end. Returns ``inputs, targets`` (N, seq_len).

    The haystack is random tokens from ``[1, V)`` except the needle's key (so values and other keys act
    as distractors and the key occurs exactly twice). The needle ``k v`` starts at a uniform depth
    ``d ∈ [0, seq_len - 3]``; the last token is ``k`` again and ``targets[:, -1]`` is ``v`` (``-100``
    elsewhere).
    """
    _check_positive("n_examples", n_examples)
    _check_positive("seq_len", seq_len)
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 (needle key, value and the query), got {seq_len}")
    _check_vocab(vocab_size, 1)
    g = rng(seed)
    N = n_examples
    key = g.integers(*key_range(vocab_size), size=N)
    value = g.integers(*value_range(vocab_size), size=N)
    # Filler from [1, V) without the key: draw from [1, V - 1) and step over the key.
    hay = g.integers(1, vocab_size - 1, size=(N, seq_len))
    hay = hay + (hay >= key[:, None])
    depth = g.integers(0, seq_len - 2, size=N)
    rows = np.arange(N)
    hay[rows, depth], hay[rows, depth + 1], hay[:, -1] = key, value, key
    targets = np.full((N, seq_len), IGNORE, dtype=np.int64)
    targets[:, -1] = value
    return torch.from_numpy(hay.astype(np.int64)), torch.from_numpy(targets)
