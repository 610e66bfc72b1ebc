"""Checks of Lab 1 (labs/lab01_decoding.ipynb): decoding with a cache, a draft and a tree.

Each ``ex_1_k`` property-tests a student's answer against labkit's reference on random inputs (the
chapter's code in :mod:`labkit.decoding`, the kernels' ``reference`` in :mod:`labkit.kernels`), prints one
line on success and raises ``AssertionError`` with a hint on failure. Every check is deterministic (fixed
seeds, derandomised hypothesis). References written alongside the lab (``labkit.decoding.parallel``,
``labkit.decoding.flash``) are imported inside the checks that need them, so this module imports without
them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st

from labkit.check import allclose_answer as _close
from labkit.check import answer_array as _array
from labkit.check import answer_number as _number
from labkit.check import call_answer as _call
from labkit.check import exercise, expect, expect_close, for_all
from labkit.check import is_njit as _is_njit

_SEEDS = st.integers(0, 2**16)
F64 = torch.float64

# Exercise 1.3: samples per distribution pair, and the p-value under which the output is called biased.
ACCEPT_SAMPLES = 3000
ACCEPT_P_VALUE = 1e-5


# --------------------------------------------------------------------------------------------- helpers


def _gaussian(seed: int, *shape: int) -> torch.Tensor:
    """A float64 tensor of i.i.d. standard normal entries, reproducible from ``seed``."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def _forest(seed: int, n: int, root_prob: float) -> list[int]:
    """A random topologically ordered forest of ``n`` nodes: parents[i] in -1..i-1 (node 0 is a root)."""
    rng = np.random.default_rng(seed)
    return [-1 if i == 0 or rng.random() < root_prob else int(rng.integers(0, i)) for i in range(n)]


# ------------------------------------------------------------------------- 1.1 one cached attention step


def _causal_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale: float | None = None):
    """Full causal single-head attention, recomputed from scratch: Q, K, V (T, D) -> (T, D)."""
    T, D = Q.shape
    scale = D**-0.5 if scale is None else scale
    scores = (Q @ K.T) * scale
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ V


def _attend_hint(out: np.ndarray, t: int, Q, K, V) -> str:
    """The most likely cause of a wrong output at step t."""
    D = Q.shape[1]
    if t == 0 and (not np.isfinite(out).all() or np.allclose(out, 0.0)):
        return ("at step 0 the cache is empty: append k and v *before* attending, so that the new token "
                "attends to itself (and to every earlier token).")
    if t > 0:
        previous = torch.softmax((K[:t] @ Q[t]) * D**-0.5, dim=0) @ V[:t]
        if _close(out, previous):
            return ("you attended over the old cache only: append k and v first, then attend over all t + 1 "
                    "positions (the new token sees itself).")
    if _close(out, _causal_attention(Q, K, V, scale=1.0)[t]):
        return "the scores are missing the scale: softmax(K q / √D), with D the head dimension."
    if t > 0 and _close(out, V[: t + 1].mean(0)):
        return "every position got the same weight: the weights are softmax(K q / √D), not uniform."
    return "out = softmax(K_cache q / √D) @ V_cache, after appending k and v to the caches."


@exercise("1.1", "attend_step appends k, v and attends over the cache: equal to full causal attention")
def ex_1_1(attend_step: Callable) -> None:
    def test(example):
        T, D, seed = example
        Q, K, V = _gaussian(seed, T, D), _gaussian(seed + 1, T, D), _gaussian(seed + 2, T, D)
        full = _causal_attention(Q, K, V)
        K_cache, V_cache = torch.empty(0, D, dtype=F64), torch.empty(0, D, dtype=F64)
        for t in range(T):
            what = f"attend_step at step {t} (cache of {t} positions, D={D})"
            result = _call(what, attend_step, Q[t], K[t], V[t], K_cache, V_cache)
            expect(isinstance(result, tuple) and len(result) == 3,
                   f"{what} returned {type(result).__name__}; return the tuple (out, K_cache, V_cache).")
            out, K_cache, V_cache = result
            for name, cache, full_kv in (("K_cache", K_cache, K), ("V_cache", V_cache, V)):
                got = _array(f"the {name} returned by {what}", cache)
                expect(got.shape == (t + 1, D),
                       f"after step {t} the {name} has shape {got.shape}, expected {(t + 1, D)}: append one "
                       "row per step (torch.cat([cache, k[None]])), never drop or overwrite one.")
                expect_close(f"the {name} after step {t}", got, full_kv[: t + 1], atol=1e-12,
                             hint=f"row s of the {name} is the {name[0].lower()} of token s, in order.")
            got = _array(f"out of {what}", out)
            expect(got.shape == (D,), f"out of {what} has shape {got.shape}, expected ({D},).")
            if not _close(got, full[t], atol=1e-9):
                expect(False, f"out at step {t} differs from recomputing causal attention over the whole "
                              f"prefix: {_attend_hint(got, t, Q, K, V)}")

    for_all(st.tuples(st.integers(1, 12), st.integers(1, 10), _SEEDS), test, max_examples=25)


# ---------------------------------------------------------------------- 1.2 greedy decoding with a cache


class _Recorder:
    """Stands in for a model: forwards every call and records the tokens fed and the cache used."""

    def __init__(self, model) -> None:
        self._model = model
        self.calls: list[tuple[int, object]] = []  # (number of new tokens, the cache object or None)

    def __call__(self, tokens, cache=None, **kwargs):
        n = int(tokens.shape[-1]) if isinstance(tokens, torch.Tensor) and tokens.dim() else -1
        self.calls.append((n, cache))
        return self._model(tokens, cache=cache, **kwargs)

    forward = __call__

    def __getattr__(self, name):
        return getattr(self._model, name)


@functools.cache
def _model(name: str):
    from labkit import models

    return models.load(name)


def _prompts() -> list[list[int]]:
    from labkit.data import corpus
    from labkit.models import tokenizer as tk

    text = corpus.english_text("heldout")
    english = [tk.encode(text[2000 + 700 * i: 2000 + 700 * i + 60])[:24] for i in range(2)]
    return [*english, corpus.lookup_episode(123, 6).tokens[:-1], [tk.DOC]]


@exercise("1.2", "greedy_decode feeds each token once through one KV cache and matches generate(temperature=0)")
def ex_1_2(greedy_decode: Callable) -> None:
    from labkit import decoding

    cases = [(name, prompt, n_new) for name in ("tinylm", "tinylm-draft")
             for prompt, n_new in zip(_prompts(), (16, 12, 5, 20))]
    cases.append(("tinylm", _prompts()[0], 1))
    for name, prompt, n_new in cases:
        model = _model(name)
        recorder = _Recorder(model)
        what = f"greedy_decode({name}, a prompt of {len(prompt)} tokens, {n_new})"
        with torch.inference_mode():
            result = _call(what, greedy_decode, recorder, list(prompt), n_new)
            expected = decoding.generate(model, prompt, n_new, temperature=0)
            recomputed = decoding.generate(model, prompt, n_new, temperature=0, cache=False)
        assert expected == recomputed  # the cache never changes greedy tokens (labkit's own invariant)
        expect(result is not None, f"{what} returned None: did you forget `return`?")
        try:
            got = [int(t) for t in (result.tolist() if isinstance(result, torch.Tensor) else result)]
        except (TypeError, ValueError):
            expect(False, f"{what} returned {type(result).__name__}; return the new token ids as a list of ints.")
        expect(len(got) == n_new, f"{what} returned {len(got)} tokens, expected the {n_new} *new* ones "
                                  "(without the prompt).")
        calls = recorder.calls
        expect(calls, f"{what} never called model(...): run the model on the prompt, then on each new token.")
        if got != expected:
            first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            caches = {id(c) for _, c in calls}
            if len(caches) > 1:
                hint = ("each call got a different cache: make ONE cache with model.new_cache() before the "
                        "loop; a fresh cache forgets the prefix.")
            elif calls[0][0] != len(prompt) and first == 0:
                hint = "the first call must feed the whole prompt: model(torch.tensor([prompt]), cache=cache)."
            elif sum(n for n, _ in calls) > len(prompt) + n_new:
                hint = ("you fed some tokens twice: the cache already holds the prefix, so after the prompt "
                        "feed only the newest token, tensor [[token]] of shape (1, 1).")
            else:
                hint = ("the next token is the argmax of the logits at the LAST position, logits[0, -1], "
                        "and the token you feed next is the one you just chose.")
            expect(False, f"{what}: token {first} is {got[first]}, greedy decoding gives {expected[first]} "
                          f"(expected {expected}, got {got}). {hint}")
        expect(all(c is not None for _, c in calls),
               f"{what} gives the right tokens but calls the model without a cache: pass cache=cache "
               "(one model.new_cache()) and feed only the new token each step.")
        expect(len({id(c) for _, c in calls}) == 1,
               f"{what} gives the right tokens but with several caches: one cache for the whole generation.")
        fed = sum(n for n, _ in calls)
        expect(fed <= len(prompt) + n_new and all(n == 1 for n, _ in calls[1:]),
               f"{what} fed {fed} tokens in {len(calls)} calls ({[n for n, _ in calls][:6]}...) for a prompt of "
               f"{len(prompt)} and {n_new} new tokens: after the prompt, feed one token per step.")


# ----------------------------------------------------------------------- 1.3 the speculative acceptance rule


def _chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's chi-square test of ``counts`` against ``probs`` (all > 0): the p-value (scipy-free)."""
    n = counts.sum()
    expected = n * probs
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(probs) - 1
    if dof == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=F64), torch.tensor(stat / 2, dtype=F64)))


def _accept_result(what: str, result) -> tuple[bool, int]:
    ok = isinstance(result, (tuple, list)) and len(result) == 2
    expect(ok, f"{what} returned {type(result).__name__}; return the pair (accepted, token).")
    accepted, token = result
    try:
        accepted = bool(accepted.item() if isinstance(accepted, torch.Tensor) else accepted)
        token = int(token.item() if isinstance(token, torch.Tensor) else token)
    except (TypeError, ValueError, RuntimeError):
        expect(False, f"{what} returned ({accepted!r}, {token!r}); expected (a bool, an int token id).")
    return accepted, token


def _random_pair(rng: np.random.Generator, V: int) -> tuple[np.ndarray, np.ndarray]:
    """A target p and a draft q on V tokens; p is often zero somewhere (top-k), q sometimes."""
    p, q = rng.dirichlet(np.full(V, 0.7)), rng.dirichlet(np.full(V, 0.7))
    if V > 2 and rng.random() < 0.5:
        p[rng.choice(V, size=rng.integers(1, V - 1), replace=False)] = 0.0
    if V > 2 and rng.random() < 0.3:
        q[rng.choice(V, size=rng.integers(1, V - 1), replace=False)] = 0.0
    if q.sum() == 0 or p.sum() == 0:
        return _random_pair(rng, V)
    return p / p.sum(), q / q.sum()


def _decision_hint(accept_or_resample: Callable) -> str:
    """Why the decisions are wrong: probe with p(x)/q(x) = 4 (always accept) and 1/4 (accept iff u < 1/4)."""
    p, q = torch.tensor([0.8, 0.2], dtype=F64), torch.tensor([0.2, 0.8], dtype=F64)
    generator = torch.Generator().manual_seed(0)
    what = "accept_or_resample(p=[0.8, 0.2], q=[0.2, 0.8], x, u=0.5, generator)"
    high, _ = _accept_result(what, _call(what, accept_or_resample, p, q, 0, 0.5, generator))
    low, _ = _accept_result(what, _call(what, accept_or_resample, p, q, 1, 0.5, generator))
    if not high:
        return ("the ratio is upside down: accept when u < p(x)/q(x) (target over draft), not q(x)/p(x); a "
                "token the target likes more than the draft is always accepted.")
    if low:
        return "you accepted a draft token that u says to reject: accept x only when u < p(x)/q(x)."
    return ("accept draft token x exactly when u < p(x)/q(x), i.e. with probability min(1, p(x)/q(x)); use the u "
            "you are given for this decision.")


def _check_decisions(accept_or_resample: Callable) -> None:
    """Deterministic part: the decision is u < p(x)/q(x); a rejection emits a token of the residual."""
    rng = np.random.default_rng(2024)
    generator = torch.Generator().manual_seed(7)
    for _ in range(300):
        V = int(rng.integers(2, 9))
        p, q = _random_pair(rng, V)
        x = int(rng.choice(V, p=q))
        u = float(rng.random())
        what = f"accept_or_resample(p, q, x={x}, u={u:.3f}, generator) with p(x)={p[x]:.3f}, q(x)={q[x]:.3f}"
        accepted, token = _accept_result(what, _call(what, accept_or_resample, torch.from_numpy(p),
                                                     torch.from_numpy(q), x, u, generator))
        expect(0 <= token < V, f"{what} returned token {token}, outside the vocabulary 0..{V - 1}.")
        ratio = p[x] / q[x]
        if abs(u - ratio) > 1e-9 and accepted != (u < ratio):
            expect(False, f"{what}: accepted = {accepted}, but u {'<' if u < ratio else '>='} p(x)/q(x) = "
                          f"{ratio:.3f}. {_decision_hint(accept_or_resample)}")
        if accepted:
            expect(token == x, f"{what} accepted the draft token but emitted {token}: an accepted draft token "
                               "is emitted as is.")
        elif p[token] <= q[token]:
            if p[token] > 0:
                hint = ("it looks like you resampled from p: after a rejection draw from the residual "
                        "norm(max(0, p − q)), which is zero where the draft already gives enough mass.")
            else:
                hint = "the target gives it probability 0; draw from norm(max(0, p − q))."
            expect(False, f"{what} rejected x and emitted token {token}, where p = {p[token]:.3f} <= "
                          f"q = {q[token]:.3f}, so the residual max(0, p − q) is 0 there: {hint}")


# The distribution pairs of the statistical test (p = target, q = draft).
_ACCEPT_PAIRS = (
    ("p and q mirrored", [0.3, 0.25, 0.2, 0.1, 0.1, 0.05], [0.05, 0.1, 0.1, 0.2, 0.25, 0.3]),
    ("p zero on two tokens (top-k)", [0.5, 0.3, 0.2, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]),
    ("q zero where p is not", [0.25, 0.25, 0.25, 0.25], [0.6, 0.4, 0.0, 0.0]),
    ("p close to q", [0.4, 0.3, 0.2, 0.1], [0.3, 0.3, 0.25, 0.15]),
)


def _check_distribution(accept_or_resample: Callable) -> None:
    """Statistical part: draft x ~ q, then the rule, many times; the emitted tokens must follow p."""
    for k, (name, p_list, q_list) in enumerate(_ACCEPT_PAIRS):
        p, q = np.array(p_list), np.array(q_list)
        p_t, q_t = torch.from_numpy(p), torch.from_numpy(q)
        rng = np.random.default_rng(100 + k)
        generator = torch.Generator().manual_seed(200 + k)
        xs, us = rng.choice(len(q), size=ACCEPT_SAMPLES, p=q), rng.random(ACCEPT_SAMPLES)
        counts = np.zeros(len(p))
        for x, u in zip(xs, us):
            what = f"accept_or_resample on '{name}' (p={p_list}, q={q_list})"
            _, token = _accept_result(what, _call(what, accept_or_resample, p_t, q_t, int(x), float(u), generator))
            expect(0 <= token < len(p), f"{what} returned token {token}, outside 0..{len(p) - 1}.")
            counts[token] += 1
        impossible = counts[p == 0].sum()
        expect(impossible == 0, f"on '{name}' (p = {p_list}, q = {q_list}) you emitted {int(impossible)} tokens "
                                "that the target gives probability 0: draw rejections from norm(max(0, p − q)).")
        support = p > 0
        p_value = _chi_square_p_value(counts[support], p[support])
        if p_value < ACCEPT_P_VALUE:
            freq = counts / counts.sum()
            overlap = np.minimum(p, q).sum()
            suspects = {"q (the draft's distribution: every draft accepted?)": q,
                        "min(p, q) + (1 − Σ min(p, q))·p (rejections resampled from p?)": np.minimum(p, q)
                        + (1 - overlap) * p}
            closest = min(suspects, key=lambda s: np.abs(suspects[s] - freq).sum())
            expect(False, f"on '{name}' the emitted tokens do not follow the target: frequencies "
                          f"{np.round(freq, 3).tolist()} over {ACCEPT_SAMPLES} draws vs p = {p_list} (chi-square "
                          f"p-value {p_value:.1e}). They are closest to {closest}. Speculative sampling must emit "
                          "exactly p: accept x with probability min(1, p(x)/q(x)), else draw from "
                          "norm(max(0, p − q)) with the generator.")


@exercise("1.3", "accept_or_resample decides u < p(x)/q(x), resamples the residual, and its output follows p")
def ex_1_3(accept_or_resample: Callable) -> None:
    _check_decisions(accept_or_resample)
    _check_distribution(accept_or_resample)


# ------------------------------------------------------------------------- 1.4 expected tokens per call


def _monte_carlo_tokens(alpha: float, gamma: int, rounds: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of tokens per round: accept each draft with prob. alpha until a rejection, +1."""
    rng = np.random.default_rng(seed)
    passed = np.cumprod(rng.random((rounds, gamma)) < alpha, axis=1).sum(axis=1) if gamma else np.zeros(rounds)
    tokens = passed + 1
    return float(tokens.mean()), float(tokens.std() / math.sqrt(rounds))


def _tokens_hint(got: float, alpha: float, gamma: int) -> str:
    def geometric(n):  # 1 + a + ... + a^(n-1)
        return float(sum(alpha**i for i in range(n)))

    if not math.isfinite(got):
        return ("at α = 1 the formula is 0/0: every draft token is accepted, so a round yields γ + 1 tokens; "
                "treat α = 1 (the limit) separately.")
    if math.isclose(got, geometric(gamma), rel_tol=1e-6) and gamma > 0:
        return ("that is 1 + α + … + α^(γ-1): you forgot that a round where all γ drafts pass still adds the "
                "target's own (bonus) token, so the sum runs to α^γ.")
    if math.isclose(got, geometric(gamma + 1) - 1, rel_tol=1e-6, abs_tol=1e-12):
        return "you counted only the accepted drafts: every round also emits one token of the target's own (+1)."
    if math.isclose(got, 1 + gamma * alpha, rel_tol=1e-6):
        return ("1 + γα would be right if the drafts were accepted independently of each other; a round stops "
                "at the first rejection, so draft i counts only if drafts 1..i all pass (probability α^i).")
    if alpha < 1 and math.isclose(got, 1 / (1 - alpha), rel_tol=1e-6):
        return "1/(1 − α) is the limit γ → ∞: a round has only γ drafts."
    return "E = Σ_{i=0}^{γ} α^i = (1 − α^(γ+1))/(1 − α), and γ + 1 at α = 1."


@exercise("1.4", "expected_tokens(α, γ) = (1 − α^(γ+1))/(1 − α) (γ + 1 at α = 1), as a simulation measures")
def ex_1_4(expected_tokens: Callable) -> None:
    from labkit.decoding import expected_tokens_per_call

    alphas = (0.0, 0.1, 0.5, 0.8, 0.95, 0.999, 1 - 1e-9, 1.0)
    grid = [(a, g) for g in (1, 2, 4, 7, 16) for a in alphas] + [(a, 0) for a in alphas]  # γ = 0 tells least
    for alpha, gamma in grid:
        what = f"expected_tokens({alpha!r}, {gamma})"
        got = _number(what, _call(what, expected_tokens, alpha, gamma))
        want = expected_tokens_per_call(alpha, gamma)
        if not math.isclose(got, want, rel_tol=1e-6):
            expect(False, f"{what} = {got:.6g}, expected {want:.6g}: {_tokens_hint(got, alpha, gamma)}")
    for alpha, gamma in ((0.6, 3), (0.9, 5), (0.3, 1)):
        mean, error = _monte_carlo_tokens(alpha, gamma, seed=gamma)
        got = _number(f"expected_tokens({alpha}, {gamma})", expected_tokens(alpha, gamma))
        expect(abs(got - mean) <= 4 * error,
               f"a simulation of 20000 rounds (α = {alpha}, γ = {gamma}) commits {mean:.3f} ± {error:.3f} tokens "
               f"per round, expected_tokens says {got:.3f}.")


# ------------------------------------------------------------------------ 1.5 the tree mask from parents


def _mask_hint(got: np.ndarray, parents: list[int]) -> str:
    from labkit.kernels.tree_attend import tree_mask

    want = tree_mask(parents).numpy()
    N = len(parents)
    if np.array_equal(got, want.T):
        return ("you built the transpose: row i must list what node i may see (its ancestors, which come "
                "before it), so the mask is lower triangular.")
    parent_only = np.eye(N, dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            parent_only[i, p] = True
    if np.array_equal(got, parent_only):
        return ("you marked the parent only: follow the parent pointers up to the root (row i = row "
                "parents[i] plus node i itself, since a parent precedes its child).")
    if np.array_equal(got, want & ~np.eye(N, dtype=bool)):
        return "the diagonal is False: every node attends to itself (ancestor-OR-self)."
    if np.array_equal(got, np.tril(np.ones((N, N), dtype=bool))):
        return "that is the causal mask: in a tree, node i sees only its own ancestors, not every earlier node."
    return "[i, j] is True iff j == i or j is an ancestor of i (parent, grandparent, …, root)."


def _mask_case(ancestor_mask: Callable, parents: list[int]) -> None:
    from labkit.kernels.tree_attend import tree_mask

    what = f"ancestor_mask({parents if len(parents) <= 12 else f'<{len(parents)} nodes>'})"
    result = _call(what, ancestor_mask, list(parents))
    expect(result is not None, f"{what} returned None: did you forget `return`?")
    dtype = getattr(result, "dtype", None)
    expect(dtype in (torch.bool, np.bool_), f"{what} has dtype {dtype}; return a bool mask "
                                            "(torch.bool): the model's tree_mask must be bool.")
    got = _array(what, result).astype(bool)
    N = len(parents)
    expect(got.shape == (N, N), f"{what} has shape {got.shape}, expected (N, N) = {(N, N)}.")
    want = tree_mask(parents).numpy()
    if not np.array_equal(got, want):
        i, j = (int(k[0]) for k in np.nonzero(got != want))
        expect(False, f"{what}: entry [{i}, {j}] is {bool(got[i, j])}, expected {bool(want[i, j])}. "
                      f"{_mask_hint(got, list(parents))}")


@exercise("1.5", "ancestor_mask(parents) is the (N, N) ancestor-or-self mask of every random token tree")
def ex_1_5(ancestor_mask: Callable) -> None:
    for parents in ([-1], [-1, 0, 1, 2, 3], [-1, 0, 0, 0, 0], [-1, -1, -1], [-1, 0, 0, 1, 1, 2, 2],
                    [-1, 0, 1, 0, 3, 4, 0]):
        _mask_case(ancestor_mask, parents)
    for_all(st.tuples(st.integers(1, 40), st.sampled_from([0.0, 0.1, 0.4]), _SEEDS),
            lambda ex: _mask_case(ancestor_mask, _forest(ex[2], ex[0], ex[1])), max_examples=30)
    _mask_case(ancestor_mask, _forest(5, 70, 0.05))


# ------------------------------------------------------------------------- 1.6 the PPD distillation loss


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) ‖ softmax(q)) over the last axis."""
    log_p, log_q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _ppd_variants(student: torch.Tensor, teacher: torch.Tensor, decay: float) -> dict[str, float]:
    """Realistic wrong values of the loss, keyed by their hint."""
    m = student.shape[1]
    w = decay ** torch.arange(m, dtype=F64)
    forward = _kl_rows(teacher, student)  # (N, m), the right direction
    reverse = _kl_rows(student, teacher)
    return {
        "the KL is the wrong way round: KL(teacher ‖ student) = Σ p_teacher (log p_teacher − log p_student)":
            float((reverse * w).sum(-1).mean()),
        "the weights are decay^i for i = 0..m−1 (the first prompt token has weight 1), not decay^(i+1)":
            float((forward * w * decay).sum(-1).mean()),
        "average over the N examples (mean over dim 0), do not sum them": float((forward * w).sum()),
        "sum the m prompt tokens' weighted KLs (Σ_i), do not average them": float((forward * w).mean()),
        "the loss ignores decay: weight prompt token i by decay^i": float(forward.sum(-1).mean()),
    }


@exercise("1.6", "ppd_loss = mean over N of Σ_i decay^i KL(teacher_i ‖ student_i), with the same gradients")
def ex_1_6(ppd_loss: Callable) -> None:
    from labkit.decoding.parallel import ppd_distillation_loss

    def test(example):
        N, m, V, decay, use_default, seed = example
        decay = 0.8 if use_default else decay
        student = (3 * _gaussian(seed, N, m, V)).requires_grad_(True)
        teacher = 3 * _gaussian(seed + 1, N, m, V)
        what = f"ppd_loss(student_logits {(N, m, V)}, teacher_logits {(N, m, V)}" + (
            ")" if use_default else f", decay={decay})")
        args = (student, teacher) if use_default else (student, teacher, decay)
        loss = _call(what, ppd_loss, *args)
        expect(isinstance(loss, torch.Tensor) and loss.numel() == 1,
               f"{what} returned {type(loss).__name__}; return the loss as a torch scalar (a 0-d tensor) so "
               "that it can be back-propagated.")
        ref_student = student.detach().clone().requires_grad_(True)
        want = ppd_distillation_loss(ref_student, teacher, decay=decay)
        got, want_value = float(loss.detach()), float(want.detach())
        if not math.isclose(got, want_value, rel_tol=1e-6, abs_tol=1e-9):
            hints = [h for h, v in _ppd_variants(student.detach(), teacher, decay).items()
                     if math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-9)]
            expect(False, f"{what} = {got:.6g}, expected {want_value:.6g}: "
                          + (hints[0] if hints else "loss = (1/N) Σ_n Σ_i decay^i KL(softmax(teacher[n, i]) ‖ "
                                                    "softmax(student[n, i]))."))
        expect(loss.requires_grad, f"{what} is detached from student_logits: compute it with torch ops only "
                                   "(no .item(), .numpy() or .detach()) so that it trains the prompt tokens.")
        (grad,) = torch.autograd.grad(loss, student)
        want.backward()
        expect_close(f"the gradient of {what} with respect to student_logits", grad, ref_student.grad,
                     atol=1e-9, hint="the value is right but not its gradient: build the loss from "
                                     "log_softmax(student_logits) with differentiable torch ops.")

    examples = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(2, 12),
                         st.sampled_from([0.5, 0.8, 0.9, 1.0]), st.booleans(), _SEEDS)
    for_all(examples, test, max_examples=30)


# -------------------------------------------------------------- 1.7 the tree size from the latency curve


def _size_case(choose_tree_size: Callable, sizes: list[int], tokens: list[float], latency: list[float]) -> None:
    from labkit.decoding.parallel import choose_tree_size as reference

    what = f"choose_tree_size({sizes}, {np.round(tokens, 3).tolist()}, {np.round(latency, 5).tolist()})"
    result = _call(what, choose_tree_size, list(sizes), list(tokens), list(latency))
    expect(isinstance(result, (int, np.integer)) and not isinstance(result, bool)
           or (isinstance(result, torch.Tensor) and result.numel() == 1 and not result.is_floating_point()),
           f"{what} returned {result!r}; return one of the sizes, an int.")
    got = int(result)
    want = int(reference(list(sizes), list(tokens), list(latency)))
    if got == want:
        return
    rate = np.array(tokens) / np.array(latency)
    if got not in sizes:
        hint = (f"{got} is not one of the sizes {sizes}: return sizes[i], not the position i."
                if 0 <= got < len(sizes) and sizes[got] == want else f"return one of the sizes {sizes}.")
    elif rate[sizes.index(got)] == rate.max():
        hint = "several sizes reach the best rate: on a tie take the smallest size (cheaper, same speed)."
    elif got == sizes[int(np.argmax(tokens))]:
        hint = "you maximised the tokens per call alone; a bigger tree also costs more time per call."
    elif got == sizes[int(np.argmin(latency))]:
        hint = "you minimised the latency alone; a smaller tree also yields fewer tokens per call."
    else:
        hint = "maximise the throughput expected_tokens / latency (tokens per second), not their difference."
    expect(False, f"{what} = {got}, expected {want}. {hint}")


@exercise("1.7", "choose_tree_size picks the size with the most tokens per second (ties: the smallest)")
def ex_1_7(choose_tree_size: Callable) -> None:
    # Hand-made cases: a flat latency curve, a steep one, exact ties (in any order), one size.
    _size_case(choose_tree_size, [1, 2, 4, 8], [1.0, 1.8, 2.6, 3.2], [1.0, 1.0, 1.0, 1.0])
    _size_case(choose_tree_size, [1, 2, 4, 8], [1.0, 1.8, 2.6, 3.2], [1.0, 2.0, 4.0, 8.0])
    _size_case(choose_tree_size, [1, 2, 4, 8], [1.0, 2.0, 4.0, 4.5], [0.5, 1.0, 2.0, 3.0])
    _size_case(choose_tree_size, [8, 4, 2, 1], [4.0, 3.0, 2.0, 1.0], [2.0, 1.5, 1.0, 0.5])
    _size_case(choose_tree_size, [16, 3, 5], [6.0, 2.5, 3.5], [0.02, 0.01, 0.014])
    _size_case(choose_tree_size, [7], [2.5], [0.004])

    def test(example):
        k, seed = example
        rng = np.random.default_rng(seed)
        sizes = sorted(rng.choice(np.arange(1, 65), size=k, replace=False).tolist())
        alpha = rng.uniform(0.3, 0.95)
        tokens = [float((1 - alpha ** (s + 1)) / (1 - alpha)) for s in sizes]  # grows and saturates
        base, slope, bend = rng.uniform(1, 5), rng.uniform(0, 0.3), rng.uniform(0, 0.02)
        latency = [1e-3 * (base + slope * s + bend * s * s) for s in sizes]  # flat, then rising
        if k > 1:
            order = rng.permutation(k)
            sizes, tokens, latency = ([v[i] for i in order] for v in (sizes, tokens, latency))
        _size_case(choose_tree_size, sizes, tokens, latency)

    for_all(st.tuples(st.integers(1, 10), _SEEDS), test, max_examples=40)


# ---------------------------------------------------------------- 1.8 the windowing hit rate (LLM in a flash)


def _window_variants(active: np.ndarray, window: int) -> dict[str, float]:
    T = active.shape[0]

    def rate(start, stop, per_step=False):
        hits, needed, rates = 0, 0, []
        for t in range(T):
            lo, hi = max(0, start(t)), max(0, stop(t))
            resident = active[lo:hi].any(axis=0) if hi > lo else np.zeros(active.shape[1], bool)
            h, n = int((active[t] & resident).sum()), int(active[t].sum())
            hits, needed = hits + h, needed + n
            if n:
                rates.append(h / n)
        if per_step:
            return float(np.mean(rates)) if rates else 1.0
        return hits / needed if needed else 1.0

    return {
        "resident holds the *previous* `window` tokens' neurons, active[t - window:t], not token t's own: the "
        "current token's rows are exactly what must be loaded": rate(lambda t: t - window, lambda t: t + 1),
        "the window is one token short: resident = union of active[max(0, t − window):t], `window` rows":
            rate(lambda t: t - window + 1, lambda t: t),
        "the window is one token too long: resident = union of active[max(0, t − window):t]":
            rate(lambda t: t - window - 1, lambda t: t),
        "pool the counts: Σ_t |needed ∧ resident| / Σ_t |needed|, not the mean of per-token rates":
            rate(lambda t: t - window, lambda t: t, per_step=True),
    }


def _window_case(window_hit_rate: Callable, active: np.ndarray, window: int) -> None:
    from labkit.decoding.flash import window_hit_rate as reference

    T, N = active.shape
    what = f"window_hit_rate(active of shape {(T, N)} with {int(active.sum())} active, window={window})"
    got = _number(what, _call(what, window_hit_rate, torch.from_numpy(active.copy()), window))
    want = float(reference(torch.from_numpy(active.copy()), window))
    if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
        return
    if not active.any():
        expect(False, f"{what} = {got}: nothing is ever needed, so nothing can be missed: the rate is 1.0.")
    hints = [h for h, v in _window_variants(active, window).items() if math.isclose(got, v, abs_tol=1e-12)]
    expect(False, f"{what} = {got:.6g}, expected {want:.6g}: " + (hints[0] if hints else
           "rate = Σ_t |active[t] ∧ resident_t| / Σ_t |active[t]| with resident_t the union of "
           "active[max(0, t − window):t] (empty at t = 0)."))


@exercise("1.8", "window_hit_rate is the fraction of needed neurons already loaded by the last `window` tokens")
def ex_1_8(window_hit_rate: Callable) -> None:
    _window_case(window_hit_rate, np.zeros((4, 5), bool), 2)
    _window_case(window_hit_rate, np.ones((1, 3), bool), 1)
    _window_case(window_hit_rate, np.eye(4, dtype=bool)[[0, 1, 0, 2, 3, 0]], 2)

    def test(example):
        T, N, density, window, seed = example
        active = np.random.default_rng(seed).random((T, N)) < density
        _window_case(window_hit_rate, active, 1 + window % (T + 2))

    for_all(st.tuples(st.integers(1, 25), st.integers(1, 30), st.sampled_from([0.05, 0.2, 0.5, 0.9]),
                      st.integers(0, 30), _SEEDS), test, max_examples=40)


# ------------------------------------------------------------------ 1.9 (kernel) online-softmax decode in Numba


def _decode_reference(q: np.ndarray, K: np.ndarray, V: np.ndarray, scale: float) -> np.ndarray:
    from labkit.kernels.attend import reference

    t = torch.from_numpy
    return reference(t(q)[None, None], t(K)[None, None], t(V)[None, None], scale=scale)[0, 0].numpy()


def _decode_case(decode_attend: Callable, q, K, V, scale: float, what: str) -> None:
    q, K, V = (np.ascontiguousarray(a, dtype=np.float64) for a in (q, K, V))
    call = f"decode_attend on {what}"
    got = _array(call, _call(call, decode_attend, q, K, V, float(scale)))
    expect(got.shape == q.shape, f"{call} returned shape {got.shape}, expected (D,) = {q.shape}.")
    expect(np.isfinite(got).all(),
           f"{call} returned nan/inf: exp of a score overflows or every exp underflows to 0. Start the running "
           "max at -inf (or -1e300) and exponentiate only s − m.")
    want = _decode_reference(q, K, V, scale)
    expect_close(f"decode_attend on {what}", got, want, atol=1e-9,
                 hint="When a key raises the running max from m to s, multiply both l and the accumulator by "
                      "exp(m − s) before adding the new key (weight exp(s − s) = 1).")


@exercise("1.9", "decode_attend (Numba, one pass, online softmax) equals attention, stable for scores ~ ±1e3")
def ex_1_9(decode_attend: Callable) -> None:
    expect(_is_njit(decode_attend), "decode_attend is not compiled: decorate it with @njit (from numba import "
                                    "njit) so the loop over the keys runs at machine speed.")

    def test(example):
        T, D, scale, seed = example
        scale = D**-0.5 if scale is None else scale
        q, K, V = (_gaussian(seed + i, *shape).numpy() for i, shape in enumerate([(D,), (T, D), (T, D)]))
        _decode_case(decode_attend, q, K, V, scale, f"T={T}, D={D}, scale={scale:.3g}")

    for_all(st.tuples(st.integers(1, 48), st.integers(1, 16), st.sampled_from([None, 0.1, 1.0, 3.0]), _SEEDS),
            test, max_examples=30)
    # Rising scores: the max moves at every key, so every key forces a rescale.
    T, D = 24, 4
    K = np.repeat(np.linspace(-3, 3, T)[:, None], D, axis=1)
    _decode_case(decode_attend, np.ones(D), K, _gaussian(5, T, D).numpy(), 1.0, "rising scores")
    # Scores of order ±1e3: exp overflows unless every exponent is s − running max.
    q = _gaussian(31, 8).numpy()
    K = _gaussian(32, 32, 8).numpy()
    _decode_case(decode_attend, 1e3 * q / np.linalg.norm(q), K / np.linalg.norm(K, axis=1, keepdims=True),
                 _gaussian(33, 32, 8).numpy(), 1.0, "scores ~ ±1e3")
    # Every score near -1e3: a running max started at 0 underflows l to 0 (0/0 = nan).
    K = -(np.ones((16, 8)) / 8**0.5 + 0.01 * _gaussian(34, 16, 8).numpy())
    _decode_case(decode_attend, 1e3 * np.ones(8) / 8**0.5, K, _gaussian(35, 16, 8).numpy(), 1.0,
                 "all scores ≈ -1e3")


# ------------------------------------------------------- 1.10 (kernel) tree verification attention in Numba


def _tree_reference(q, Kp, Vp, Kt, Vt, parents, scale) -> np.ndarray:
    from labkit.kernels.tree_attend import reference

    t = torch.from_numpy
    return reference(t(q)[None, None], t(Kp)[None, None], t(Vp)[None, None], t(Kt)[None, None],
                     t(Vt)[None, None], parents, scale=scale)[0, 0].numpy()


def _tree_hint(got: np.ndarray, q, Kp, Vp, Kt, Vt, parents: list[int], scale: float) -> str:
    N = len(parents)
    chain = list(range(-1, N - 1))
    if parents != chain and _close(got, _tree_reference(q, Kp, Vp, Kt, Vt, chain, scale), atol=1e-9):
        return ("you used the causal mask (every earlier node): node i sees only its ancestors; test bit j of "
                "bits[i]: (bits[i, j >> 6] >> (j & 63)) & 1.")
    if Kp.shape[0] and _close(got, _tree_reference(q, Kp, Vp, Kt, Vt, [-1] * N, scale), atol=1e-9):
        return "every node saw only the prefix and itself: also attend to its ancestors in the tree."
    if N > 64:
        return ("wrong only beyond 64 nodes? Node j's bit is bit j & 63 of word j >> 6 (64 nodes per int64 word).")
    return ("out[i] = softmax over the prefix keys and the tree keys j with bit j of bits[i] set (ancestors and "
            "i itself), one online softmax across both.")


def _tree_case(tree_attend_rows: Callable, N: int, P: int, D: int, parents: list[int], scale: float,
               seed: int, logit_scale: float = 1.0) -> None:
    from labkit.kernels.tree_attend import ancestor_bitsets

    q = logit_scale * _gaussian(seed, N, D).numpy()
    Kp, Vp = _gaussian(seed + 1, P, D).numpy(), _gaussian(seed + 2, P, D).numpy()
    Kt, Vt = _gaussian(seed + 3, N, D).numpy(), _gaussian(seed + 4, N, D).numpy()
    bits = np.ascontiguousarray(ancestor_bitsets(parents).numpy())
    what = (f"tree_attend_rows on a tree of {N} nodes (parents {parents if N <= 10 else '...'}), prefix P={P}, "
            f"D={D}" + (f", scores ~ {logit_scale:g}" if logit_scale != 1 else ""))
    got = _array(what, _call(what, tree_attend_rows, q, Kp, Vp, Kt, Vt, bits, float(scale)))
    expect(got.shape == (N, D), f"{what} returned shape {got.shape}, expected (N, D) = {(N, D)}.")
    expect(np.isfinite(got).all(), f"{what} returned nan/inf: keep a running max per query, start it at -inf "
                                   "(or -1e300), exponentiate only s − m.")
    want = _tree_reference(q, Kp, Vp, Kt, Vt, parents, scale)
    if not _close(got, want, atol=1e-9):
        bad = int(np.abs(got - want).max(axis=1).argmax())
        expect(False, f"{what}: row {bad} (node {bad}, parent {parents[bad]}) is off by "
                      f"{np.abs(got - want).max():.3g}. {_tree_hint(got, q, Kp, Vp, Kt, Vt, parents, scale)}")


@exercise("1.10", "tree_attend_rows (Numba, bitset mask, online softmax) equals tree attention on random trees")
def ex_1_10(tree_attend_rows: Callable) -> None:
    expect(_is_njit(tree_attend_rows), "tree_attend_rows is not compiled: decorate it with @njit.")
    _tree_case(tree_attend_rows, 5, 3, 4, [-1, 0, 0, 1, 2], 0.5, 1)
    _tree_case(tree_attend_rows, 4, 0, 3, [-1, 0, -1, 2], 0.5, 2)  # no prefix: a node sees only its path

    def test(example):
        N, P, D, root_prob, seed = example
        _tree_case(tree_attend_rows, N, P, D, _forest(seed, N, root_prob), D**-0.5, seed)

    for_all(st.tuples(st.integers(1, 24), st.integers(0, 16), st.integers(1, 8),
                      st.sampled_from([0.0, 0.1, 0.3]), _SEEDS), test, max_examples=30)
    _tree_case(tree_attend_rows, 70, 5, 4, _forest(9, 70, 0.02), 0.5, 3)  # two 64-bit words per row
    _tree_case(tree_attend_rows, 12, 6, 8, _forest(4, 12, 0.1), 1.0, 4, logit_scale=300.0)
