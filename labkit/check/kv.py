"""Checks of Lab 2 (labs/lab02_kv_compression.ipynb): the KV cache, made smaller.

Each ``ex_2_k`` property-tests a student's answer against labkit's reference on random inputs (the
chapter's code in :mod:`labkit.kv`, the kernels' ``reference`` in :mod:`labkit.kernels`), prints one line
on success and raises ``AssertionError`` with a hint on failure. Every check is deterministic (fixed seeds,
derandomised hypothesis). Two references have no counterpart in labkit and live here, small and exact:
the nested-rank loss (2.4) and the greedy rate search on a cost table (2.8).
"""

from __future__ import annotations

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


# --------------------------------------------------------------------------------------------- helpers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _keys(seed: int, n: int, d: int, offset: float = 3.0) -> np.ndarray:
    """n key-like rows of dimension d: a non-zero mean, a decaying spectrum, a random rotation."""
    rng = _rng(seed)
    spectrum = 2.0 * 0.7 ** np.arange(d) + 0.05 * rng.random(d)  # distinct eigenvalues, well separated
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = rng.standard_normal((n, d)) * np.sqrt(spectrum)
    return x @ rotation.T + offset * rng.standard_normal(d)


# ---------------------------------------------------------------------------- 2.1 bytes of a KV cache


def _config(n_layers: int, n_kv_heads: int, groups: int, head_dim: int):
    from labkit.models.tinylm import TinyLMConfig

    n_heads = n_kv_heads * groups
    return TinyLMConfig(vocab_size=16, d_model=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads,
                        n_kv_heads=n_kv_heads, d_ff=8, context=16)


@exercise("2.1", "kv_cache_bytes = 2 · layers · kv_heads · head_dim · bytes per token, equal to labkit's kv_bytes")
def ex_2_1(kv_cache_bytes: Callable) -> None:
    from labkit.kv.base import kv_bytes

    def test(example):
        n_layers, n_kv_heads, groups, half_dim, n_tokens, bits = example
        cfg = _config(n_layers, n_kv_heads, groups, 2 * half_dim)
        what = (f"kv_cache_bytes(n_layers={n_layers}, n_kv_heads={n_kv_heads}, head_dim={cfg.head_dim}, "
                f"n_tokens={n_tokens}, bits={bits})")
        got = _number(what, _call(what, kv_cache_bytes, n_layers, n_kv_heads, cfg.head_dim, n_tokens, bits))
        expected = kv_bytes(cfg, n_tokens, bits)
        if got == expected:
            return
        per = n_layers * n_kv_heads * cfg.head_dim * n_tokens
        if got == expected // 2:
            hint = "a cache holds keys AND values: the factor 2."
        elif got == per * 2 * bits:
            hint = "bits are not bytes: divide by 8."
        elif got == expected * groups and groups > 1:
            hint = "only the n_kv_heads key/value heads are cached (grouped-query attention shares them)."
        else:
            hint = "bytes = 2 · n_layers · n_kv_heads · head_dim · bits/8 · n_tokens."
        expect(False, f"{what} returned {got:g}, expected {expected}: {hint}")

    for_all(st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 4), st.integers(1, 32),
                      st.integers(0, 4096), st.sampled_from([8, 16, 32])), test, max_examples=30)


# ------------------------------------------------------------------------------------- 2.2 a PCA basis


def _reference_pca(x: np.ndarray):
    from labkit.kv.projection import _pca

    mean, vecs, vals = _pca(torch.from_numpy(x)[None, None])
    return mean[0, 0].numpy(), vecs[0, 0].numpy(), vals[0, 0].numpy()


@exercise("2.2", "pca_basis returns the mean and the top-r principal directions; its error is the discarded variance")
def ex_2_2(pca_basis: Callable) -> None:
    def test(example):
        n, d, seed, r_frac = example
        r = max(1, min(d, round(r_frac * d)))
        x = _keys(seed, n, d)
        what = f"pca_basis(X of shape {x.shape}, r={r})"
        result = _call(what, pca_basis, torch.from_numpy(x.copy()), r)
        expect(isinstance(result, tuple) and len(result) == 2, f"{what} should return the tuple (mean, U).")
        mean, U = _array(f"the mean of {what}", result[0]), _array(f"U of {what}", result[1])
        ref_mean, vecs, vals = _reference_pca(x)
        expect_close(f"the mean of {what}", mean, ref_mean, atol=1e-8, hint="the mean of the rows, X.mean(0).")
        expect(U.shape == (d, r), f"U of {what} has shape {U.shape}, expected {(d, r)}: one column per direction.")
        expect(np.allclose(U.T @ U, np.eye(r), atol=1e-6),
               "the columns of U are not orthonormal (UᵀU should be I): use the eigenvectors of the covariance.")
        projector, ref_projector = U @ U.T, vecs[:, :r] @ vecs[:, :r].T
        if not np.allclose(projector, ref_projector, atol=1e-5):
            low = vecs[:, d - r:] @ vecs[:, d - r:].T
            raw_cov = x.T @ x
            raw_vecs = np.linalg.eigh(raw_cov)[1][:, ::-1][:, :r]
            if r < d and np.allclose(projector, low, atol=1e-5):
                hint = ("you kept the r SMALLEST-variance directions: eigh sorts eigenvalues ascending, "
                        "so take the last r columns (or flip).")
            elif np.allclose(projector, raw_vecs @ raw_vecs.T, atol=1e-4):
                hint = "centre the rows first: the covariance is of X − mean, not of X."
            else:
                hint = "U's columns should span the top-r eigenvectors of the covariance of X − mean."
            expect(False, f"U spans the wrong subspace. {hint}")
        # the error of the round trip is the variance it discards (mean over rows of the squared norm)
        centred = x - ref_mean
        err = ((centred - centred @ U @ U.T) ** 2).sum(1).mean()
        expect(math.isclose(err, vals[r:].sum() * (n - 1) / n, rel_tol=1e-6, abs_tol=1e-9),
               "the round-trip error should equal the sum of the discarded eigenvalues.")

    for_all(st.tuples(st.integers(40, 200), st.integers(2, 16), _SEEDS, st.floats(0.1, 1.0)), test,
            max_examples=20)


# -------------------------------------------------------------------------------- 2.3 the Cayley map


@exercise("2.3", "cayley_map(A) = (I − A)(I + A)⁻¹: orthogonal, det +1, equal to labkit's cayley")
def ex_2_3(cayley_map: Callable) -> None:
    from labkit.kv.projection import cayley

    def test(example):
        d, seed, size = example
        w = _rng(seed).standard_normal((d, d)) * size
        a = torch.from_numpy(w - w.T)
        what = f"cayley_map(A) for a {d}×{d} skew-symmetric A"
        U = _array(what, _call(what, cayley_map, a.clone()))
        expect(U.shape == (d, d), f"{what} has shape {U.shape}, expected {(d, d)}.")
        expect(np.allclose(U.T @ U, np.eye(d), atol=1e-8),
               f"{what} is not orthogonal (UᵀU ≠ I): U = (I − A)(I + A)⁻¹, e.g. torch.linalg.solve(I + A, I − A).")
        expect(np.linalg.det(U) > 0, f"{what} has det −1: the Cayley map of a skew A always has det +1.")
        ref = cayley(a).numpy()
        if not _close(U, ref, atol=1e-8):
            hint = ("you computed (I + A)(I − A)⁻¹ = Uᵀ, the inverse rotation: swap I − A and I + A."
                    if _close(U, ref.T, atol=1e-8) else "U = (I − A)(I + A)⁻¹.")
            expect(False, f"{what} differs from labkit's cayley: {hint}")

    for_all(st.tuples(st.integers(1, 12), _SEEDS, st.floats(0.01, 3.0)), test, max_examples=25)


# ---------------------------------------------------------------------------- 2.4 the nested-rank loss


def nested_loss_reference(x: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, ranks) -> torch.Tensor:
    """The mean over ``ranks`` of the mean over rows of ``‖x − project(x, mean, basis, r)‖²``.
    x: (N, D), mean: (D,), basis: (D, D), ranks: ints in 1..D -> a scalar."""
    from labkit.kv.projection import project

    losses = []
    for r in ranks:
        back = project(x[None, None], mean[None], basis[None], torch.tensor([int(r)]))[0, 0]
        losses.append(((x - back) ** 2).sum(-1).mean())
    return torch.stack(losses).mean()


@exercise("2.4", "nested_loss averages the rank-r reconstruction error over the sampled ranks")
def ex_2_4(nested_loss: Callable) -> None:
    def test(example):
        n, d, seed, n_ranks = example
        rng = _rng(seed)
        x = torch.from_numpy(_keys(seed, n, d))
        mean = x.mean(0) + torch.from_numpy(0.1 * rng.standard_normal(d))
        basis = torch.from_numpy(np.linalg.qr(rng.standard_normal((d, d)))[0])
        ranks = [int(r) for r in rng.integers(1, d + 1, n_ranks)]
        what = f"nested_loss(X {tuple(x.shape)}, mean, basis, ranks={ranks})"
        got = _number(what, _call(what, nested_loss, x.clone(), mean.clone(), basis.clone(), list(ranks)))
        expected = float(nested_loss_reference(x, mean, basis, ranks))
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            return
        zero = torch.zeros(d, dtype=x.dtype)
        if math.isclose(got, float(nested_loss_reference(x, zero, basis, ranks)), rel_tol=1e-6, abs_tol=1e-9):
            hint = "subtract the mean before projecting and add it back after: x̂ = μ + (x − μ) U_r U_rᵀ."
        elif math.isclose(got, float(nested_loss_reference(x, mean, basis, [max(ranks)])), rel_tol=1e-6, abs_tol=1e-9):
            hint = "average over every sampled rank, not only the largest."
        else:
            hint = "loss = mean over r in ranks of mean over rows of ‖x − μ − (x − μ) U[:, :r] U[:, :r]ᵀ‖²."
        expect(False, f"{what} returned {got:.6g}, expected {expected:.6g}: {hint}")

    for_all(st.tuples(st.integers(5, 60), st.integers(2, 16), _SEEDS, st.integers(1, 5)), test,
            max_examples=25)


# ------------------------------------------------------------------------ 2.5 KIVI's per-channel keys


@exercise("2.5", "kivi_keys quantizes keys per channel in token groups; the error stays within scale/2")
def ex_2_5(kivi_keys: Callable) -> None:
    from labkit.kv.quant import dequantize, quantize, quantize_error_bound

    def test(example):
        n_groups, group, d, bits, seed = example
        rng = _rng(seed)
        T = n_groups * group
        channel_scale = np.exp(rng.uniform(-2, 2, d))  # outlier channels, as in real keys
        K = torch.from_numpy(rng.standard_normal((T, d)) * channel_scale).float()
        what = f"kivi_keys(K of shape {(T, d)}, bits={bits}, group={group})"
        got = _array(what, _call(what, kivi_keys, K.clone(), bits, group))
        expect(got.shape == (T, d), f"{what} has shape {got.shape}, expected {(T, d)}: return the dequantized K.")
        x = K.double().numpy()
        bound = quantize_error_bound(K, bits, dim=0, group=group).double().numpy()
        err = np.abs(got - x)
        if not (err <= bound * (1 + 1e-4) + 1e-5).all():
            per_token = dequantize(*quantize(K, bits, dim=1, group=d), dim=1).double().numpy()
            if _close(got, per_token, atol=1e-4, rtol=1e-4):
                hint = ("you quantized per TOKEN (each row its own scale); KIVI quantizes keys per CHANNEL: "
                        f"each column, in groups of {group} consecutive tokens (dim=0).")
            else:
                hint = ("per channel d and token group g: lo, hi = min, max of K[g·group:(g+1)·group, d]; "
                        "scale = (hi − lo)/(2^bits − 1); code = round((x − lo)/scale).")
            t, c = np.unravel_index(int(np.argmax(err - bound)), err.shape)
            expect(False, f"{what}: |K̂ − K| = {err[t, c]:.3g} at (token {t}, channel {c}) exceeds the bound "
                          f"scale/2 = {bound[t, c]:.3g}. {hint}")
        ref = dequantize(*quantize(K, bits, dim=0, group=group), dim=0).double().numpy()
        agree = np.isclose(got, ref, atol=1e-4, rtol=1e-4).mean()
        expect(agree >= 0.99, f"{what} agrees with labkit's round trip on only {agree:.1%} of the entries: "
                              "use 2^bits − 1 levels between each group's min and max, rounding to the nearest.")

    for_all(st.tuples(st.integers(1, 4), st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 12),
                      st.integers(1, 4), _SEEDS), test, max_examples=25)


# ------------------------------------------------------------------------------- 2.6 StreamingLLM


@exercise("2.6", "streaming_keep keeps the sinks and the most recent window, equal to labkit's streaming_indices")
def ex_2_6(streaming_keep: Callable) -> None:
    from labkit.kv.eviction import streaming_indices

    def test(example):
        n_tokens, n_keep, n_sink = example
        what = f"streaming_keep(n_tokens={n_tokens}, n_keep={n_keep}, n_sink={n_sink})"
        got = _array(what, _call(what, streaming_keep, n_tokens, n_keep, n_sink))
        expected = streaming_indices(n_tokens, n_keep, n_sink).numpy()
        if got.shape == expected.shape and (got == expected).all():
            return
        if n_keep >= n_tokens:
            hint = "when n_keep ≥ n_tokens nothing is evicted: keep every position."
        elif got.size > expected.size:
            hint = f"keep n_keep = {n_keep} positions in all: the sinks count towards the budget."
        elif n_sink >= n_keep:
            hint = "never drop the newest token: at most n_keep − 1 sinks, the rest the most recent."
        else:
            hint = "the first n_sink positions, then the last n_keep − n_sink, sorted increasing."
        expect(False, f"{what} returned {got.astype(int).tolist()}, expected {expected.tolist()}: {hint}")

    for_all(st.tuples(st.integers(1, 64), st.integers(1, 64), st.integers(0, 8)), test, max_examples=60)


# ------------------------------------------------------------------------------------ 2.7 H2O scores


def _causal_probs(Q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    T, D = Q.shape
    scores = (Q @ K.T) / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


@exercise("2.7", "h2o_accumulate sums each key's causal attention over all queries, equal to labkit's h2o_scores")
def ex_2_7(h2o_accumulate: Callable) -> None:
    from labkit.kv.eviction import h2o_scores

    def test(example):
        T, D, seed = example
        rng = _rng(seed)
        Q, K = (torch.from_numpy(rng.standard_normal((T, D)) * 2) for _ in range(2))
        what = f"h2o_accumulate(Q, K) with T={T}, D={D}"
        got = _array(what, _call(what, h2o_accumulate, Q.clone(), K.clone()))
        expected = h2o_scores(_causal_probs(Q, K)).numpy()
        if _close(got, expected, atol=1e-8):
            return
        full = torch.softmax(Q @ K.T / math.sqrt(D), dim=-1).sum(0).numpy()
        unscaled = h2o_scores(torch.softmax((Q @ K.T).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), dim=-1)).numpy()
        if _close(got, full, atol=1e-8):
            hint = "mask the future: query t attends to keys s ≤ t only (so key 0 gets the most queries)."
        elif _close(got, unscaled, atol=1e-8):
            hint = "the scores are Q Kᵀ / √D."
        elif got.shape == expected.shape and np.isclose(got.sum(), T):
            hint = "sum the attention over the queries (axis 0 of the T×T matrix), not over the keys."
        else:
            hint = "score_s = Σ_t softmax_causal(q_t Kᵀ / √D)_s, the column sums of the causal attention."
        expect(False, f"{what} differs from the accumulated attention: {hint}")

    for_all(st.tuples(st.integers(1, 24), st.integers(1, 8), _SEEDS), test, max_examples=25)


# -------------------------------------------------------------------- 2.8 greedy rate search on a table


def greedy_rates_reference(costs: np.ndarray, budget: float) -> np.ndarray:
    """Ranks (H, 2) from full rank D: while sum(ranks) > budget · 2·H·D, cut by one the (head, K|V) whose
    cut raises its loss the least, ``costs[h, j, r-2] - costs[h, j, r-1]`` (ties: the first in (h, j) order);
    never below rank 1. costs: (H, 2, D), ``costs[h, j, r-1]`` the loss at rank r."""
    H, _, D = costs.shape
    ranks = np.full((H, 2), D, dtype=np.int64)
    target = budget * 2 * H * D
    while ranks.sum() > target + 1e-9:
        best, where = np.inf, None
        for h in range(H):
            for j in range(2):
                r = ranks[h, j]
                if r > 1:
                    increase = costs[h, j, r - 2] - costs[h, j, r - 1]
                    if increase < best:
                        best, where = increase, (h, j)
        if where is None:
            break
        ranks[where] -= 1
    return ranks


def _cost_table(seed: int, H: int, D: int) -> np.ndarray:
    """Loss at rank r = the variance discarded beyond r, for random decaying spectra: (H, 2, D)."""
    rng = _rng(seed)
    spectra = np.sort(rng.exponential(1.0, (H, 2, D)) * rng.uniform(0.2, 5, (H, 2, 1)), axis=-1)[..., ::-1]
    tail = np.cumsum(spectra[..., ::-1], axis=-1)[..., ::-1]  # tail[i] = sum_{i' >= i} spectrum
    return np.concatenate([tail[..., 1:], np.zeros((H, 2, 1))], axis=-1)  # costs[r-1] = sum_{i >= r}


@exercise("2.8", "greedy_rates cuts the cheapest (head, K|V) rank until the budget is met")
def ex_2_8(greedy_rates: Callable) -> None:
    def test(example):
        H, D, seed, budget = example
        costs = _cost_table(seed, H, D)
        what = f"greedy_rates(costs of shape {costs.shape}, budget={budget:.3f})"
        got = _array(what, _call(what, greedy_rates, costs.copy(), budget))
        expected = greedy_rates_reference(costs, budget)
        expect(got.shape == expected.shape, f"{what} has shape {got.shape}, expected {expected.shape}: "
                                            "one (r_k, r_v) row per head.")
        if (got == expected).all():
            return
        if got.sum() > budget * 2 * H * D + 1e-9:
            hint = (f"the ranks sum to {int(got.sum())}, over the budget {budget:.3f} · 2·H·D = "
                    f"{budget * 2 * H * D:.1f}.")
        elif got.min() < 1:
            hint = "never cut a rank below 1."
        elif got.sum() < expected.sum():
            hint = "stop as soon as the budget is met: every cut costs quality."
        else:
            hint = ("each step cuts the (head, K|V) whose loss would rise the least, costs[h, j, r−2] − "
                    "costs[h, j, r−1], not the one whose loss is smallest now.")
        expect(False, f"{what} returned ranks {got.astype(int).tolist()}, expected {expected.tolist()}: {hint}")

    for_all(st.tuples(st.integers(1, 4), st.integers(2, 8), _SEEDS, st.floats(0.1, 1.0)), test, max_examples=25)


# ------------------------------------------------------------------ 2.9 kernel: rank-r decode attention


@exercise("2.9", "project_attend_row (Numba) attends in rank r and back-projects once, equal to the kernel reference")
def ex_2_9(project_attend_row: Callable) -> None:
    from labkit.kernels.project_attend import reference

    expect(_is_njit(project_attend_row), "compile project_attend_row with @njit (from numba import njit).")

    def test(example):
        T, D, rk, rv, seed, size = example
        rk, rv = min(rk, D), min(rv, D)
        rng = _rng(seed)
        q = rng.standard_normal(D) * size
        Kc, Vc = rng.standard_normal((T, rk)), rng.standard_normal((T, rv))
        if seed % 3 == 0:
            Kc = Kc + np.linspace(-3, 3, T)[:, None] * np.sign(q[:1])  # scores rising or falling along T
        U_k = np.linalg.qr(rng.standard_normal((D, D)))[0][:, :rk].copy()
        U_v = np.linalg.qr(rng.standard_normal((D, D)))[0][:, :rv].copy()
        scale = D**-0.5
        what = f"project_attend_row(q ({D},), Kc ({T}, {rk}), Vc ({T}, {rv}), U_k, U_v, scale)"
        got = _array(what, _call(what, project_attend_row, q, Kc, Vc, U_k, U_v, scale))
        as_t = [torch.from_numpy(a) for a in (q[None, None], Kc[None, None], Vc[None, None], U_k[None], U_v[None])]
        expected = reference(*as_t, scale=scale)[0, 0].numpy()
        expect(got.shape == (D,), f"{what} has shape {got.shape}, expected ({D},): back-project with U_v.")
        if not np.isfinite(got).all():
            expect(False, f"{what} returned nan or inf: start the running max at -inf and rescale l and acc "
                          "by exp(m_old − m_new) whenever it grows.")
        if not _close(got, expected, atol=1e-9):
            expect(False, f"{what} differs from labkit.kernels.project_attend.reference by up to "
                          f"{np.abs(got - expected).max():.3g}: q_r = U_kᵀ q, s_t = scale · Kc[t]·q_r, an online "
                          "softmax over t accumulating Vc[t] (rank r_v), then out = U_v acc / l.")

    for_all(st.tuples(st.integers(1, 40), st.integers(2, 24), st.integers(1, 24), st.integers(1, 24), _SEEDS,
                      st.sampled_from([1.0, 5.0, 300.0])), test, max_examples=25)


# -------------------------------------------------------------- 2.10 kernel: scores of quantized keys


@exercise("2.10", "quant_scores (Numba) dequantizes inside the dot product, equal to dequantize-then-dot")
def ex_2_10(quant_scores: Callable) -> None:
    from labkit.kv.quant import dequantize, quantize

    expect(_is_njit(quant_scores), "compile quant_scores with @njit (from numba import njit).")

    def test(example):
        n_groups, group, D, bits, seed = example
        rng = _rng(seed)
        T = n_groups * group
        K = torch.from_numpy(rng.standard_normal((T, D)) * np.exp(rng.uniform(-1, 1, D)) + 2.0).float()
        codes, scale, zero = quantize(K, bits, dim=0, group=group)
        q = rng.standard_normal(D)
        expected = dequantize(codes, scale, zero, dim=0).double().numpy() @ q
        args = (q, codes.numpy().copy(), scale.double().numpy().copy(), zero.double().numpy().copy(), group)
        what = f"quant_scores(q ({D},), codes ({T}, {D}) uint8, scale/zero ({n_groups}, {D}), group={group})"
        got = _array(what, _call(what, quant_scores, *args))
        expect(got.shape == (T,), f"{what} has shape {got.shape}, expected ({T},): one score per key.")
        if _close(got, expected, atol=1e-5, rtol=1e-5):
            return
        no_zero = (codes.double().numpy() * scale.double().numpy().repeat(group, 0)) @ q
        if _close(got, no_zero, atol=1e-5, rtol=1e-5):
            hint = "add the zero point: K̂[t, d] = codes[t, d] · scale[g, d] + zero[g, d], g = t // group."
        else:
            hint = "s_t = Σ_d q[d] · (codes[t, d] · scale[t // group, d] + zero[t // group, d])."
        expect(False, f"{what} differs from dequantize-then-dot by up to {np.abs(got - expected).max():.3g}: {hint}")

    for_all(st.tuples(st.integers(1, 4), st.sampled_from([1, 4, 16]), st.integers(1, 16), st.integers(1, 8),
                      _SEEDS), test, max_examples=25)
