r"""Checks of Lab 4 (labs/lab04_continual_merging.ipynb): continual learning and model merging.

Each ``ex_4_k`` property-tests a student's answer against labkit's reference on random inputs (the chapter's
code in :mod:`labkit.continual`: ``task_vector`` / ``task_arithmetic``, ``AccuracyMatrix``, ``fisher_diagonal``,
``powerlaw_probs``, ``split_rank`` / ``opcm_project`` / ``OPCM``, TIES's ``_ties_vector``, and the federated
orthogonal-subspace code ``update_basis`` / ``project_out``), prints one line on success and raises
``AssertionError`` with a hint on failure. Every check is deterministic (fixed seeds, derandomised hypothesis).
Where the check recognises a common slip, the hint names it: each slip is computed here, small and exact, as a
*variant* of the reference.

The orthogonal-subspace reference of 4.8 (GPM, Saha et al. 2021; the projection of Federated Orthogonal Training)
is ``labkit.continual.federated.update_basis`` with an empty basis: the top eigenvectors of C = A Aᵀ are the left
singular vectors of A, its eigenvalues the squared singular values, so the fewest r with
Σ_{i<r} λ_i ≥ ε tr(C) is GPM's energy rule Σ_{i<r} s_i² ≥ ε Σ_i s_i² (tests/unit/test_check_continual.py checks the
two agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from hypothesis import strategies as st

from labkit.check import allclose_answer as _close
from labkit.check import answer_array as _array
from labkit.check import answer_number as _number
from labkit.check import answer_tuple as _tuple
from labkit.check import call_answer as _call
from labkit.check import exercise, expect, expect_close, for_all, to_numpy
from labkit.check import is_njit as _is_njit

_SEEDS = st.integers(0, 2**16)
SEED_CHOICE = 2024  # the generator seed of 4.4's determinism check


# --------------------------------------------------------------------------------------------- helpers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def _int_array(name: str, value) -> np.ndarray:
    a = _array(name, value)
    expect(np.all(np.isfinite(a)) and np.all(a == np.round(a)), f"{name} should hold whole numbers (task indices).")
    return a.astype(np.int64)


# ------------------------------------------------------------------- 4.1 task vectors and task arithmetic

_NAMES = ("layers.0.weight", "layers.0.bias", "head.weight", "head.bias", "emb", "norm.scale")


def _random_params(rng: np.random.Generator, names: list[str], shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {n: _t(rng.standard_normal(shapes[n])) for n in names}


def _ta_variants(base, finetuned, lam) -> dict[str, dict[str, torch.Tensor]]:
    T = len(finetuned)
    taus = [{n: f[n] - base[n] for n in base} for f in finetuned]
    total = {n: sum(t[n] for t in taus) for n in base}
    return {
        "mean": {n: base[n] + lam * total[n] / T for n in base},
        "no base": {n: lam * total[n] for n in base},
        "thetas": {n: base[n] + lam * sum(f[n] for f in finetuned) for n in base},
        "unscaled": {n: base[n] + total[n] for n in base},
    }


_TA_HINTS = {
    "mean": "task arithmetic SUMS the task vectors, θ₀ + λ Σ_k τ_k (averaging is the special case λ = 1/T).",
    "no base": "you returned λ Σ τ_k: add it to the base model, θ = θ₀ + λ Σ_k τ_k.",
    "thetas": "add the task VECTORS τ_k = θ_k − θ₀, not the fine-tuned weights θ_k themselves.",
    "unscaled": "scale the summed task vectors by λ: θ₀ + λ Σ_k τ_k.",
}


@exercise("4.1", "merge_task_arithmetic returns θ₀ + λ Σ_k (θ_k − θ₀) for every parameter, equal to labkit's "
                 "task_vector + task_arithmetic")
def ex_4_1(merge_task_arithmetic: Callable) -> None:
    from labkit.continual.merging import task_arithmetic
    from labkit.continual.models import task_vector

    def test(example):
        n_names, T, lam, seed = example
        rng = _rng(seed)
        names = [str(n) for n in rng.permutation(_NAMES)[:n_names]]
        shapes = {n: tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 3)))) for n in names}
        base = _random_params(rng, names, shapes)
        finetuned = [{n: base[n] + _t(rng.standard_normal(shapes[n])) for n in names} for _ in range(T)]
        keep = ({n: v.clone() for n, v in base.items()}, [{n: v.clone() for n, v in f.items()} for f in finetuned])
        what = f"merge_task_arithmetic(base ({n_names} tensors), finetuned ({T} dicts), lam={lam:.3g})"
        got = _call(what, merge_task_arithmetic, base, finetuned, lam)
        expect(all(torch.equal(base[n], keep[0][n]) for n in names)
               and all(torch.equal(f[n], g[n]) for f, g in zip(finetuned, keep[1]) for n in names),
               f"{what} changed its inputs in place: build new tensors (base[n] + ..., not base[n] += ...).")
        expect(isinstance(got, Mapping), f"{what} should return a dict name -> tensor, got {type(got).__name__}.")
        expect(sorted(got) == sorted(names), f"{what} returned the names {sorted(got)}, expected {sorted(names)}: "
                                             "one merged tensor per parameter of the base.")
        expected = task_arithmetic(base, [task_vector(f, base) for f in finetuned], scale=lam)
        arrays = {n: _array(f"{what}[{n!r}]", got[n]) for n in names}
        if all(_close(arrays[n], expected[n]) for n in names):
            return
        hint = "θ = θ₀ + λ Σ_k τ_k with τ_k = θ_k − θ₀, parameter by parameter."
        for slip, variant in _ta_variants(base, finetuned, lam).items():
            if all(_close(arrays[n], variant[n]) for n in names):
                hint = _TA_HINTS[slip]
                break
        for n in names:
            expect_close(f"{what}[{n!r}]", arrays[n], expected[n], atol=1e-8, hint=hint)

    for_all(st.tuples(st.integers(1, len(_NAMES)), st.integers(1, 5), st.sampled_from([0.3, 0.5, 1.0, 1.7]), _SEEDS),
            test, max_examples=25)


# ------------------------------------------------------------------- 4.2 ACC, BWT, forgetting


def _metric_variants(R: np.ndarray) -> dict[str, dict[str, float]]:
    T = len(R)
    last, diag = R[-1], np.diag(R)
    best_before = R[:-1].max(0)
    return {
        "acc": {"diagonal": float(diag.mean()), "whole matrix": float(R.mean()),
                "lower triangle": float(R[np.tril_indices(T)].mean())},
        "bwt": {"over T": float((last - diag).mean()), "flipped": float((diag - last)[:-1].mean())},
        "forgetting": {"last row too": float((R.max(0) - last)[:-1].mean()),
                       "from the diagonal": float((diag - last)[:-1].mean()),
                       "last task too": float((best_before - last).mean()),
                       "every task": float((R.max(0) - last).mean())},
    }


_METRIC_HINTS = {
    "diagonal": "ACC is the mean of the LAST row, R[T−1, :] (the accuracy on every task at the end), not the diagonal.",
    "whole matrix": "ACC is the mean of the LAST row, R[T−1, :], not of the whole matrix.",
    "lower triangle": "ACC is the mean of the LAST row, R[T−1, :], not of the lower triangle.",
    "over T": ("BWT averages over the T−1 OLD tasks j < T−1: the last task has no later training to be hurt by "
               "(divide by T−1, not T)."),
    "flipped": "BWT = mean_j (R[T−1, j] − R[j, j]): negative when the model forgot.",
    "last row too": ("forgetting compares with the best accuracy BEFORE the end, max over rows i < T−1 (exclude the "
                     "last row, or forgetting can never be negative)."),
    "from the diagonal": ("forgetting compares with the BEST accuracy task j ever had, max_{i<T−1} R[i, j], not with "
                          "R[j, j] (that is −BWT)."),
    "last task too": "forgetting averages over the old tasks j < T−1 only (leave out the last column).",
    "every task": "forgetting: max over rows i < T−1, averaged over old tasks j < T−1.",
}


@exercise("4.2", "continual_metrics(R) returns ACC, BWT and forgetting, equal to labkit's AccuracyMatrix")
def ex_4_2(continual_metrics: Callable) -> None:
    from labkit.continual.metrics import AccuracyMatrix

    def test(example):
        T, seed, kind = example
        rng = _rng(seed)
        if kind == "uniform":
            R = rng.uniform(0, 1, (T, T))
        else:  # learned, then decaying: what a fine-tuned stream looks like
            R = np.clip(0.9 - 0.15 * np.maximum(0, np.arange(T)[:, None] - np.arange(T)[None])
                        + 0.05 * rng.standard_normal((T, T)), 0, 1)
        R = np.round(R, 4)
        what = f"continual_metrics(R ({T}, {T}))"
        acc, bwt, fgt = _tuple(what, _call(what, continual_metrics, R.copy()), ("acc", "bwt", "forgetting"))
        got = {"acc": _number(f"acc of {what}", acc), "bwt": _number(f"bwt of {what}", bwt),
               "forgetting": _number(f"forgetting of {what}", fgt)}
        m = AccuracyMatrix(R)
        expected = {"acc": m.acc, "bwt": m.bwt, "forgetting": m.forgetting}
        variants = _metric_variants(R)
        for key in ("acc", "bwt", "forgetting"):
            if math.isclose(got[key], expected[key], abs_tol=1e-9):
                continue
            hint = {"acc": "ACC = mean_j R[T−1, j].", "bwt": "BWT = 1/(T−1) Σ_{j<T−1} (R[T−1, j] − R[j, j]).",
                    "forgetting": "forgetting = 1/(T−1) Σ_{j<T−1} (max_{i<T−1} R[i, j] − R[T−1, j])."}[key]
            for slip, value in variants[key].items():
                if math.isclose(got[key], value, abs_tol=1e-9):
                    hint = _METRIC_HINTS[slip]
                    break
            expect(False, f"{key} of {what} is {got[key]:.6g}, expected {expected[key]:.6g}: {hint}\nR =\n{R}")

    for_all(st.tuples(st.integers(2, 7), _SEEDS, st.sampled_from(["uniform", "decaying"])), test, max_examples=30)


# ------------------------------------------------------------------- 4.3 the EWC Fisher diagonal


def _mlp_grads(W1, b1, W2, b2, x, relu_mask: bool = True):
    """Per-example, per-class gradients of log p(c|x) of h = relu(x W1ᵀ + b1), logits = h W2ᵀ + b2 (numpy).

    Returns (p (N, C), [g_W1 (N, C, H, d), g_b1 (N, C, H), g_W2 (N, C, C, H), g_b2 (N, C, C)]).
    """
    z = x @ W1.T + b1
    h = np.maximum(z, 0)
    logits = h @ W2.T + b2
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    C = W2.shape[0]
    d2 = np.eye(C)[None] - p[:, None, :]  # (N, C, C): d log p_c / d logits
    d1 = d2 @ W2  # (N, C, H)
    if relu_mask:
        d1 = d1 * (z > 0)[:, None, :]
    grads = [d1[..., None] * x[:, None, None, :], d1, d2[..., None] * h[:, None, None, :], d2]
    return p, grads


def _fisher_variants(W1, b1, W2, b2, x) -> dict[str, list[np.ndarray]]:
    N = len(x)
    p, g = _mlp_grads(W1, b1, W2, b2, x)
    _, g_nomask = _mlp_grads(W1, b1, W2, b2, x, relu_mask=False)

    def weighted(gs, w):
        return [np.einsum("nc,nc...->...", w, gi ** 2) / N for gi in gs]

    top = np.eye(p.shape[1])[p.argmax(1)]
    return {
        "squared mean": [np.einsum("nc,nc...->n...", p, gi) ** 2 for gi in g],  # summed below
        "unweighted": weighted(g, np.ones_like(p)),
        "sum over N": [f * N for f in weighted(g, p)],
        "argmax label": weighted(g, top),
        "no relu mask": weighted(g_nomask, p),
    }


_FISHER_HINTS = {
    "squared mean": ("the Fisher is E[g²], the expectation of SQUARED gradients; you squared the expected gradient "
                     "Σ_c p_c ∇log p_c, which is exactly 0."),
    "unweighted": "weight class c's squared gradient by the model's probability p_θ(c|x): F = E_x Σ_c p_c g_c².",
    "sum over N": "average over the N examples: divide the sum by N.",
    "argmax label": ("the TRUE Fisher averages over the model's own classes y ~ p_θ(·|x) with weights p_c; you used "
                     "only the most likely class."),
    "no relu mask": "back-propagate through the ReLU: δ_h = (δ W2) ⊙ 1[z > 0], zero where the unit was off.",
}


@exercise("4.3", "ewc_fisher computes the true diagonal Fisher of a one-hidden-layer MLP with (δ²)ᵀ a², equal to "
                 "labkit's fisher_diagonal")
def ex_4_3(ewc_fisher: Callable) -> None:
    from labkit.continual.models import MLP, set_params
    from labkit.continual.train import fisher_diagonal

    names = ("F_W1", "F_b1", "F_W2", "F_b2")

    def test(example):
        N, d, H, C, seed, scale = example
        rng = _rng(seed)
        W1, b1 = scale * rng.standard_normal((H, d)), 0.5 * rng.standard_normal(H)
        W2, b2 = scale * rng.standard_normal((C, H)), 0.5 * rng.standard_normal(C)
        x = rng.standard_normal((N, d))
        args = [_t(a) for a in (W1, b1, W2, b2, x)]
        what = f"ewc_fisher(W1 ({H}, {d}), b1 ({H},), W2 ({C}, {H}), b2 ({C},), x ({N}, {d}))"
        got = _tuple(what, _call(what, ewc_fisher, *[a.clone() for a in args]), names)
        got = [_array(f"{n} of {what}", g) for n, g in zip(names, got)]
        model = MLP(d, hidden=(H,), n_classes=C).double()
        set_params(model, {"layers.0.weight": args[0], "layers.0.bias": args[1], "head.weight": args[2],
                           "head.bias": args[3]})
        ref = fisher_diagonal(model, args[4])
        expected = [ref[k].numpy() for k in ("layers.0.weight", "layers.0.bias", "head.weight", "head.bias")]
        for n, g, e in zip(names, got, expected):
            expect(g.shape == e.shape, f"{n} of {what} has shape {g.shape}, expected {e.shape} (like the parameter).")
        if all(_close(g, e, atol=1e-10) for g, e in zip(got, expected)):
            return
        hint = ("for every class c: δ_out = e_c − p, δ_h = (δ_out W2) ⊙ 1[z > 0]; "
                "F_W += (p_c δ²)ᵀ a² / N, F_b += Σ_n p_c δ² / N.")
        variants = _fisher_variants(W1, b1, W2, b2, x)
        variants["squared mean"] = [v.sum(0) / N for v in variants["squared mean"]]
        for slip, parts in variants.items():
            if slip == "sum over N" and N == 1:
                continue
            if all(_close(g, v, atol=1e-10) for g, v in zip(got, parts)):
                hint = _FISHER_HINTS[slip]
                break
        for n, g, e in zip(names, got, expected):
            expect_close(f"{n} of {what}", g, e, atol=1e-10, hint=hint)

    for_all(st.tuples(st.integers(1, 12), st.integers(1, 6), st.integers(1, 6), st.integers(2, 5), _SEEDS,
                      st.sampled_from([0.5, 1.0, 2.0])), test, max_examples=25)


# ------------------------------------------------------------------- 4.4 the power-law rehearsal schedule


def _picks(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF picks: the smallest k with u < p_0 + … + p_k (numpy's Generator.choice rule)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, u, side="right")


@exercise("4.4", "rehearsal_schedule gives p_k ∝ age_k^(−a) (labkit's powerlaw_probs) and draws task k for exactly "
                 "a fraction p_k of the unit interval, the picks of rng.choice")
def ex_4_4(rehearsal_schedule: Callable) -> None:
    from labkit.continual.train import powerlaw_probs

    def run(ages, a, u, what):
        result = _call(what, rehearsal_schedule, ages.copy(), a, u.copy())
        p, picks = _tuple(what, result, ("p", "picks"))
        return _array(f"p of {what}", p), _int_array(f"picks of {what}", picks)

    def test(example):
        K, n, a, seed, integer = example
        rng = _rng(seed)
        ages = rng.integers(1, 12, K).astype(float) if integer else rng.uniform(1, 20, K)
        u = rng.random(n)
        what = f"rehearsal_schedule(ages {np.round(ages, 3).tolist()}, exponent={a}, u ({n},))"
        p, picks = run(ages, a, u, what)
        expected = powerlaw_probs(ages, a)
        expect(p.shape == (K,), f"p of {what} has shape {p.shape}, expected ({K},): one probability per age.")
        if not _close(p, expected, atol=1e-12):
            w = ages ** -a
            if a > 0 and _close(p, ages ** a / (ages ** a).sum()):
                hint = "recent tasks (small age) must be rehearsed MORE: p_k ∝ age_k^(−a), a negative power."
            elif a > 0 and _close(p, w):
                hint = "normalise: p_k = age_k^(−a) / Σ_k' age_k'^(−a), so that Σ p = 1."
            else:
                hint = "p_k = age_k^(−a) / Σ_k' age_k'^(−a)."
            expect_close(f"p of {what}", p, expected, atol=1e-12, hint=hint)
        expect(picks.shape == (n,), f"picks of {what} has shape {picks.shape}, expected ({n},): one task per u.")
        ref = _picks(expected, u)
        if (picks == ref).all():
            return
        if K > 1 and (picks == np.minimum((u * K).astype(int), K - 1)).all():
            hint = "draw task k with probability p_k (inverse CDF on the cumulative sums), not uniformly."
        elif (picks == ref + 1).all() or (picks == ref - 1).all():
            hint = "picks[i] is the smallest 0-based k with u_i < p_0 + … + p_k (np.searchsorted(cdf, u, 'right'))."
        else:
            hint = "picks[i] = the smallest k with u_i < p_0 + … + p_k."
        bad = int(np.argmax(picks != ref))
        expect(False, f"picks[{bad}] of {what} is {picks[bad]} for u = {u[bad]:.4f}, expected {ref[bad]} "
                      f"(cumulative p = {np.round(np.cumsum(expected), 4).tolist()}): {hint}")

    for_all(st.tuples(st.integers(1, 8), st.integers(0, 40), st.sampled_from([0.0, 0.5, 1.0, 2.5]), _SEEDS,
                      st.booleans()), test, max_examples=25)

    # exact probabilities: on a fine grid of u, task k owns a fraction p_k of the unit interval
    ages, a, M = np.array([1.0, 2.0, 3.0, 5.0, 8.0]), 1.5, 4000
    u = (np.arange(M) + 0.5) / M
    p, picks = run(ages, a, u, f"rehearsal_schedule(ages {ages.tolist()}, exponent={a}, u = a grid of {M})")
    share = np.bincount(np.clip(picks, 0, len(ages) - 1), minlength=len(ages)) / M
    expect(np.abs(share - powerlaw_probs(ages, a)).max() <= 1.0 / M + 1e-12,
           f"on a grid of u, task k should be picked for a fraction p_k of the interval; got shares "
           f"{np.round(share, 4).tolist()} for p = {np.round(powerlaw_probs(ages, a), 4).tolist()}.")
    # determinism: the same u gives the same picks, and they are rng.choice's from the same seed
    u = np.random.default_rng(SEED_CHOICE).random(200)
    p, first = run(ages, a, u, "rehearsal_schedule(...) on 200 uniforms")
    _, second = run(ages, a, u, "rehearsal_schedule(...) again")
    expect((first == second).all(), "the same u must give the same picks: the sampler must be deterministic in u.")
    choice = np.random.default_rng(SEED_CHOICE).choice(len(ages), size=200, p=powerlaw_probs(ages, a))
    expect((first == choice).all(), "with u = rng.random(n), your picks should equal rng.choice(K, n, p=p) from a "
                                    "generator with the same seed (inverse CDF, side='right').")


# ------------------------------------------------------------------- 4.5 OPCM's split rank and masked projection


def _low_rank(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """A random (m, n) matrix of full rank k = min(m, n) with a decaying, well-separated spectrum (successive
    singular values shrink by a factor 0.35–0.85, so the split rank varies with α and every singular pair
    u_i, v_i is well defined: the masked projection depends on each of them, not only on the subspaces)."""
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = rng.uniform(0.5, 3) * np.cumprod(np.r_[1.0, rng.uniform(0.35, 0.85, k - 1)])
    return (U * s) @ V.T


def _svd_parts(D: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    U, _, Vh = np.linalg.svd(D, full_matrices=False)
    return U[:, :r], Vh[:r].T


def _projection_variants(D: np.ndarray, tau: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """The likely slips of 4.5, each as τ̃ (thin SVD of D = U S Vᵀ, P = Uᵀ τ V, k = min(m, n))."""
    U, _, Vh = np.linalg.svd(D, full_matrices=False)
    V, Ur, Vr = Vh.T, U[:, :r], Vh[:r].T
    diag = np.einsum("ik,ij,jk->k", U, tau, V)          # P_ii = u_iᵀ τ v_i, (k,)
    all_diag = (U * diag) @ Vh                           # Σ_i P_ii u_i v_iᵀ
    block = Ur @ (Ur.T @ tau @ Vr) @ Vr.T                # U_r (U_rᵀ τ V_r) V_rᵀ
    masked_raw = tau.copy()                              # the mask applied to τ's own entries, not to P
    masked_raw[:r, :r] = 0.0
    np.fill_diagonal(masked_raw, 0.0)
    left = tau - Ur @ (Ur.T @ tau)
    return {
        "two_sided": left - (left @ Vr) @ Vr.T,
        "left": left,
        "right": tau - (tau @ Vr) @ Vr.T,
        "diagonal_only": tau - all_diag,
        "block_only": tau - block,
        "raw": masked_raw,
        "principal": block + ((U[:, r:] * diag[r:]) @ Vh[r:]),   # what the mask removes, kept instead
    }


_PROJECTION_HINTS = {
    "two_sided": "this is the TWO-SIDED projection (I − U_r U_rᵀ) τ (I − V_r V_rᵀ). OPCM's own projection is the "
                 "mask: zero P = Uᵀ τ V's diagonal P_ii (every i) and its top-left r × r block, τ̃ = U P Vᵀ. The "
                 "two-sided one also removes the cross blocks U_rᵀ τ V_⊥ and U_⊥ᵀ τ V_r, most of a random τ.",
    "left": "a one-sided projection (I − U_r U_rᵀ) τ: OPCM masks P = Uᵀ τ V (its diagonal and top-left r × r block).",
    "right": "a one-sided projection τ (I − V_r V_rᵀ): OPCM masks P = Uᵀ τ V (its diagonal and top-left r × r block).",
    "diagonal_only": "you zeroed P's diagonal but not its top-left r × r block: also remove U_r (U_rᵀ τ V_r) V_rᵀ.",
    "block_only": "you zeroed P's top-left r × r block but not the rest of its diagonal: P_ii = u_iᵀ τ v_i must be "
                  "0 for EVERY i < min(m, n), that is what makes ⟨τ̃, D⟩_F = Σ_i σ_i P_ii vanish.",
    "raw": "the mask applies to P = Uᵀ τ V, τ in D's singular bases, not to τ's own entries: "
           "τ̃ = U (mask ⊙ P) Vᵀ.",
    "principal": "you kept the part the mask removes (P's diagonal and top-left block) instead of removing it.",
}


@exercise("4.5", "opcm_projection finds the split rank r and masks τ in D's singular bases (P = Uᵀ τ V: zero diagonal "
                 "and top-left r × r block), equal to labkit's split_rank and opcm_project")
def ex_4_5(opcm_projection: Callable) -> None:
    from labkit.continual.merging import opcm_project, split_rank

    def run(D, tau, alpha, what):
        result = _call(what, opcm_projection, _t(D), _t(tau), alpha)
        tt, r = _tuple(what, result, ("tau_tilde", "r"))
        r = _number(f"r of {what}", r)
        expect(r == int(r), f"r of {what} should be a whole number, got {r}.")
        return _array(f"tau_tilde of {what}", tt), int(r)

    def one(m, n, alpha, seed):
        rng = _rng(seed)
        D, tau = _low_rank(rng, m, n), rng.standard_normal((m, n))
        what = f"opcm_projection(D ({m}, {n}), tau ({m}, {n}), alpha={alpha})"
        tt, r = run(D, tau, alpha, what)
        s = np.linalg.svd(D, compute_uv=False)
        r_ref = split_rank(torch.from_numpy(s), alpha)
        if r != r_ref:
            energy = np.cumsum(s ** 2) / (s ** 2).sum()
            mass = np.round(np.cumsum(s) / s.sum(), 4).tolist()
            if r == min(int((energy < alpha).sum()) + 1, len(s)):
                hint = "the split rank uses the singular values' MASS Σ_{i<r} s_i ≥ α Σ s_i, not the energy Σ s_i²."
            elif abs(r - r_ref) == 1:
                hint = ("r is the smallest r ≥ 1 whose first r singular values hold at least α of Σ s_i (count the "
                        "cumulative masses still below α, then add one).")
            else:
                hint = "r = the smallest r with Σ_{i<r} s_i ≥ α Σ_i s_i (s = singular values of D, descending)."
            expect(False, f"r of {what} is {r}, expected {r_ref} (cumulative mass of s: {mass}): {hint}")
        expected = opcm_project(_t(D), _t(tau), alpha)[0].numpy()
        expect(tt.shape == (m, n), f"tau_tilde of {what} has shape {tt.shape}, expected {(m, n)}.")
        if not _close(tt, expected):
            variants = _projection_variants(D, tau, r_ref)
            hint = next((h for name, h in _PROJECTION_HINTS.items()
                         if _close(tt, variants[name]) and not _close(variants[name], expected)),
                        "τ̃ = U P̃ Vᵀ with P = Uᵀ τ V (D = U S Vᵀ) and P̃ = P with P_ii = 0 for every i and "
                        "P_ij = 0 for i, j < r.")
            expect_close(f"tau_tilde of {what}", tt, expected, atol=1e-8, hint=hint)
        # the properties, on the student's own τ̃
        U, _, Vh = np.linalg.svd(D, full_matrices=False)
        Ur, Vr = U[:, :r_ref], Vh[:r_ref].T
        P = U.T @ tt @ Vh.T
        expect(abs(float((tt * D).sum())) < 1e-8 * max(1.0, np.linalg.norm(D) * np.linalg.norm(tau)),
               f"tau_tilde of {what} must be Frobenius-orthogonal to D: ⟨τ̃, D⟩ = Σ_i σ_i P_ii = 0.")
        expect(np.abs(np.diag(P)).max() < 1e-8 and np.abs(Ur.T @ tt @ Vr).max() < 1e-8,
               f"tau_tilde of {what} must have u_iᵀ τ̃ v_i = 0 for every i and U_rᵀ τ̃ V_r = 0.")
        Pr, Qr = np.eye(m) - Ur @ Ur.T, np.eye(n) - Vr @ Vr.T
        expect(_close(Ur.T @ tt @ Qr, Ur.T @ tau @ Qr) and _close(Pr @ tt @ Vr, Pr @ tau @ Vr),
               f"tau_tilde of {what} must keep the cross blocks U_rᵀ τ (I − V_r V_rᵀ) and (I − U_r U_rᵀ) τ V_r.")
        again, _ = run(D, tt, alpha, f"opcm_projection(D, tau_tilde, alpha={alpha})")
        expect(_close(again, tt), "projecting τ̃ again must give τ̃ back (the mask is idempotent).")

    # wide, tall, square, vectors and a larger matrix, then random shapes
    for m, n, alpha, seed in ((3, 7, 0.5, 0), (7, 3, 0.5, 1), (5, 5, 0.7, 2), (1, 6, 0.5, 3), (6, 1, 0.5, 4),
                              (1, 1, 0.5, 5), (12, 20, 0.5, 6), (20, 12, 0.9, 7), (8, 8, 0.99, 8)):
        one(m, n, alpha, seed)
    for_all(st.tuples(st.integers(1, 8), st.integers(1, 8), st.sampled_from([0.2, 0.5, 0.7, 0.9]), _SEEDS),
            lambda example: one(*example), max_examples=25)

    # an all-zero D (the first model of the stream) has no principal subspace and no singular bases: r = 0, τ̃ = τ
    tau = _rng(3).standard_normal((3, 4))
    tt, r = run(np.zeros((3, 4)), tau, 0.5, "opcm_projection(D = 0 (3, 4), tau, alpha=0.5)")
    expect(r == 0 and _close(tt, tau), f"with D = 0 expect r = 0 and τ̃ = τ (nothing to protect), got r = {r}"
                                       + ("" if np.isfinite(tt).all() else " and NaN: do not divide by Σ s = 0") + ".")


# ------------------------------------------------------------------- 4.6 one OPCM merge step


@exercise("4.6", "opcm_step projects, accumulates D and rescales it so that ‖D/λ‖ is the running mean norm, equal to "
                 "labkit's OPCM merger over a stream")
def ex_4_6(opcm_step: Callable) -> None:
    from labkit.continual.merging import OPCM, opcm_project

    def test(example):
        T, m, n, alpha, seed = example
        rng = _rng(seed)
        taus = [rng.standard_normal((m, n)) * rng.uniform(0.5, 2) for _ in range(T)]
        merger = OPCM({"W": torch.zeros(m, n, dtype=torch.float64)}, alpha)
        D, mean = torch.zeros(m, n, dtype=torch.float64), 0.0
        for t, tau in enumerate(taus, start=1):
            what = f"opcm_step(D ({m}, {n}), tau, mean_norm={mean:.4g}, t={t}, alpha={alpha}) (model {t} of {T})"
            result = _call(what, opcm_step, D.clone(), _t(tau), mean, t, alpha)
            D_new, lam, mean_new = _tuple(what, result, ("D_new", "lam", "mean_new"))
            D_arr = _array(f"D_new of {what}", D_new)
            lam, mean_new = _number(f"lam of {what}", lam), _number(f"mean_new of {what}", mean_new)
            D_prev = D.numpy()
            merger.update({"W": _t(tau)})
            D_ref, lam_ref, mean_ref = merger.D["W"].numpy(), merger.lam, merger.mean_norm
            norm_tau = float(np.linalg.norm(tau))
            if not math.isclose(mean_new, mean_ref, rel_tol=1e-9, abs_tol=1e-12):
                hint = "the running mean of the norms: m_t = m_{t−1} + (‖τ_t‖ − m_{t−1}) / t."
                if math.isclose(mean_new, norm_tau, rel_tol=1e-9) and t > 1:
                    hint = "m_t is the mean of ALL norms so far, (1/t) Σ_{i≤t} ‖τ_i‖, not the latest ‖τ_t‖."
                expect(False, f"mean_new of {what} is {mean_new:.6g}, expected {mean_ref:.6g}: {hint}")
            if not _close(D_arr, D_ref):
                two_sided = (opcm_project(_t(D_prev), _t(tau), alpha, "two_sided")[0].numpy()
                             if t > 1 and np.abs(D_prev).max() > 0 else None)
                if t > 1 and _close(D_arr, D_prev + tau):
                    hint = "project τ out of D's principal subspace before adding it (exercise 4.5): D_t = D + τ̃."
                elif two_sided is not None and _close(D_arr, D_prev + two_sided):
                    hint = ("you added the TWO-SIDED projection (I − U_r U_rᵀ) τ (I − V_r V_rᵀ); OPCM adds the masked "
                            "one of exercise 4.5 (zero diagonal and top-left r × r block of Uᵀ τ V): pass 4.5 first.")
                else:
                    hint = "D_t = D_{t−1} + τ̃ with τ̃ the OPCM projection of τ_t against D_{t−1} (D_1 = τ_1)."
                expect_close(f"D_new of {what}", D_arr, D_ref, atol=1e-8, hint=hint)
            if not math.isclose(lam, lam_ref, rel_tol=1e-8, abs_tol=1e-12):
                d_norm = float(np.linalg.norm(D_ref))
                if t > 1 and math.isclose(lam, d_norm / norm_tau, rel_tol=1e-8):
                    hint = ("λ_t rescales D to the RUNNING MEAN norm m_t = (1/t) Σ ‖τ_i‖, not to the latest ‖τ_t‖: "
                            "λ_t = ‖D_t‖ / m_t.")
                elif math.isclose(lam, mean_ref / d_norm, rel_tol=1e-8):
                    hint = "λ_t = ‖D_t‖ / m_t (you inverted it): the merged vector is D_t / λ_t, of norm m_t."
                else:
                    hint = "λ_t = ‖D_t‖ / m_t, so that ‖D_t / λ_t‖ = m_t."
                expect(False, f"lam of {what} is {lam:.6g}, expected {lam_ref:.6g}: {hint}")
            expect(math.isclose(float(np.linalg.norm(D_arr / lam)), mean_new, rel_tol=1e-8),
                   f"after {what}, ‖D/λ‖ should equal the running mean norm {mean_new:.6g}.")
            D, mean = _t(D_arr), mean_new
        # labkit's merged task vector is D / λ
        assert np.allclose(merger.merged_task_vector()["W"].numpy(), D.numpy() / merger.lam)

    for_all(st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.sampled_from([0.3, 0.5, 0.8]),
                      _SEEDS), test, max_examples=20)


# ------------------------------------------------------------------- 4.7 TIES


def ties_reference(tvs: torch.Tensor, thresholds: torch.Tensor, elect: str = "mass", mean: str = "disjoint",
                   strict: bool = False) -> torch.Tensor:
    """TIES from per-task magnitude thresholds; the keyword switches build the slips 4.7 and 4.9 name.

    tvs: (T, P), thresholds: (T,) -> merged (P,). Entry (k, p) survives the trim when |τ_kp| ≥ thresholds[k]
    (``strict``: >). elect "mass": s = sign(Σ_k τ̂_k), "count": sign(Σ_k sign τ̂_k). mean "disjoint": over the
    survivors that agree with s; "all": Σ_k τ̂_k / T; "nonzero": over every survivor; "sum": their sum.
    """
    keep = tvs.abs() > thresholds[:, None] if strict else tvs.abs() >= thresholds[:, None]
    trimmed = torch.where(keep, tvs, torch.zeros(()))
    sign = torch.sign(trimmed.sum(0) if elect == "mass" else torch.sign(trimmed).sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    if mean == "all":
        return trimmed.sum(0) / tvs.shape[0]
    if mean == "nonzero":
        agree = trimmed != 0
    total, count = (trimmed * agree).sum(0), agree.sum(0)
    if mean == "sum":
        return total
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros(()))


_TIES_HINTS = {
    "all": ("disjoint mean: average only the trimmed entries that agree with the elected sign, not all T task vectors "
            "(a zero or a disagreeing entry is not a vote for 0)."),
    "nonzero": "drop the entries whose sign disagrees with the elected sign before averaging (disjoint mean).",
    "count": "elect the sign by total MASS, sign(Σ_k τ̂_k), not by counting signs: one large entry outweighs two small.",
    "sum": "divide by the number of agreeing entries (a mean, not a sum).",
    "strict": "keep |τ| ≥ threshold: the threshold IS the k-th largest magnitude, so '>' drops one entry per task.",
    "no trim": "trim first: keep only the k = round(density·P) largest magnitudes of EACH task vector.",
    "global trim": "trim each task vector separately (its own top-k), not the top T·k entries of the whole stack.",
}


def _ties_inputs(rng: np.random.Generator, T: int, P: int, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(tvs (T, P) with distinct magnitudes, thresholds (T,) = each row's k-th largest |τ|, density giving k)."""
    mags = rng.permutation(T * P).reshape(T, P) + rng.uniform(0.1, 0.9, (T, P))
    tvs = torch.from_numpy(mags * rng.choice([-1.0, 1.0], (T, P)) / (T * P))
    thresholds = tvs.abs().sort(1, descending=True).values[:, k - 1]
    return tvs, thresholds, (k - 0.3) / P  # round(density · P) = k, far from a half


def _ties_hint(got: np.ndarray, tvs: torch.Tensor, thresholds: torch.Tensor, k: int, names: tuple[str, ...]) -> str:
    variants = {"all": ties_reference(tvs, thresholds, mean="all"),
                "nonzero": ties_reference(tvs, thresholds, mean="nonzero"),
                "count": ties_reference(tvs, thresholds, elect="count"),
                "sum": ties_reference(tvs, thresholds, mean="sum"),
                "strict": ties_reference(tvs, thresholds, strict=True)}
    if "no trim" in names:
        variants["no trim"] = ties_reference(tvs, torch.zeros(len(tvs), dtype=tvs.dtype))
        flat = tvs.abs().reshape(-1).sort(descending=True).values
        cut = flat[min(len(flat), k * len(tvs)) - 1]
        variants["global trim"] = ties_reference(tvs, torch.full((len(tvs),), float(cut), dtype=tvs.dtype))
    expected = ties_reference(tvs, thresholds).numpy()
    for slip, variant in variants.items():
        v = variant.numpy()
        if _close(got, v) and not _close(v, expected):
            return _TIES_HINTS[slip]
    return ("trim each τ_k to its top-k magnitudes; s = sign(Σ_k τ̂_k); merged = mean of the τ̂_k that are non-zero "
            "and have sign s (0 where none).")


@exercise("4.7", "ties_merge trims, elects the sign by mass and takes the disjoint mean, equal to labkit's TIES")
def ex_4_7(ties_merge: Callable) -> None:
    from labkit.continual.merging import _ties_vector

    def test(example):
        T, P, k_frac, seed = example
        rng = _rng(seed)
        k = max(1, min(P, int(round(k_frac * P))))
        tvs, thresholds, density = _ties_inputs(rng, T, P, k)
        what = f"ties_merge(tvs ({T}, {P}), density={density:.4g}) (k = {k} kept per task)"
        got = _array(what, _call(what, ties_merge, tvs.clone(), density))
        expected = _ties_vector([{"w": row} for row in tvs], density)["w"].numpy()
        assert np.allclose(expected, ties_reference(tvs, thresholds).numpy(), atol=1e-12)
        expect(got.shape == (P,), f"{what} has shape {got.shape}, expected ({P},): one merged entry per parameter.")
        if _close(got, expected, atol=1e-12):
            return
        hint = _ties_hint(got, tvs, thresholds, k, ("no trim", "global trim"))
        if k >= 2 and _close(got, ties_reference(tvs, tvs.abs().sort(1, descending=True).values[:, k - 2]).numpy()):
            hint = f"keep k = max(1, round(density · P)) = {k} entries per task vector (round, not int)."
        expect_close(what, got, expected, atol=1e-12, hint=hint)

    for_all(st.tuples(st.integers(1, 5), st.integers(1, 24), st.sampled_from([0.1, 0.3, 0.6, 1.0]), _SEEDS), test,
            max_examples=30)


# ------------------------------------------------------------------- 4.8 orthogonal-subspace projection (GPM / FOT)


def gpm_reference(A: torch.Tensor, G: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GPM's basis and projected gradient: U (d, r), the fewest top left singular vectors of A (d, N) with
    Σ_{i<r} s_i² ≥ ε Σ_i s_i², and G̃ = G − G U Uᵀ for G (out, d). Built on labkit's federated code."""
    from labkit.continual.federated import project_out, update_basis

    U, _ = update_basis(None, A @ A.T, eps)
    return U, project_out(G, U)


def _activations(rng: np.random.Generator, d: int, N: int) -> np.ndarray:
    """(d, N) inputs with a decaying spectrum in a random orientation of R^d."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.exp(-rng.uniform(0.2, 1.5) * np.arange(d))
    return Q @ (scales[:, None] * rng.standard_normal((d, N)))


@exercise("4.8", "gpm_project keeps the fewest left singular vectors of the old inputs holding ε of their energy and "
                 "removes them from the gradient, equal to labkit's orthogonal-subspace projection")
def ex_4_8(gpm_project: Callable) -> None:
    def test(example):
        d, N, out, eps, seed = example
        rng = _rng(seed)
        A, G = _activations(rng, d, N), rng.standard_normal((out, d))
        what = f"gpm_project(A ({d}, {N}), G ({out}, {d}), eps={eps})"
        U, Gp = _tuple(what, _call(what, gpm_project, _t(A), _t(G), eps), ("U", "G_proj"))
        U, Gp = _array(f"U of {what}", U), _array(f"G_proj of {what}", Gp)
        U_ref, G_ref = (x.numpy() for x in gpm_reference(_t(A), _t(G), eps))
        r_ref = U_ref.shape[1]
        s = np.linalg.svd(A, compute_uv=False)
        energy = np.round(np.cumsum(s ** 2) / (s ** 2).sum(), 4).tolist()
        expect(U.ndim == 2 and U.shape[0] == d,
               f"U of {what} has shape {U.shape}, expected ({d}, r): basis vectors of the INPUT space R^{d} as "
               "columns (left singular vectors of A).")
        r = U.shape[1]
        if r != r_ref:
            if r == min(int((np.cumsum(s) / s.sum() < eps).sum()) + 1, len(s)):
                hint = "the energy rule uses SQUARED singular values: Σ_{i<r} s_i² ≥ ε Σ s_i²."
            elif abs(r - r_ref) == 1:
                hint = "r is the SMALLEST count whose energy reaches ε: Σ_{i<r} s_i² ≥ ε Σ s_i² (not one more or less)."
            else:
                hint = "keep the fewest top singular vectors with Σ_{i<r} s_i² ≥ ε Σ s_i²."
            expect(False, f"U of {what} has r = {r} columns, expected {r_ref} (cumulative energy of A: {energy}): "
                          f"{hint}")
        expect(_close(U.T @ U, np.eye(r), atol=1e-8), f"the columns of U of {what} must be orthonormal (Uᵀ U = I).")
        if not _close(U @ U.T, U_ref @ U_ref.T, atol=1e-7):
            hint = "U spans the TOP-r left singular vectors of A (U from A = U S Vᵀ; columns sorted by s descending)."
            if N == d:
                Vt = np.linalg.svd(A)[2]
                if _close(U @ U.T, Vt[:r].T @ Vt[:r], atol=1e-7):
                    hint = "use the LEFT singular vectors of A (d, N) (the input space), not the right ones."
            expect_close(f"U Uᵀ of {what}", U @ U.T, U_ref @ U_ref.T, atol=1e-7, hint=hint)
        expect(Gp.shape == (out, d), f"G_proj of {what} has shape {Gp.shape}, expected {(out, d)} (like G).")
        if not _close(Gp, G_ref, atol=1e-8):
            if _close(Gp, G @ U_ref @ U_ref.T):
                hint = "REMOVE the old-input directions, G − G U Uᵀ; G U Uᵀ is the part that would disturb old tasks."
            elif out == d and _close(Gp, G - U_ref @ (U_ref.T @ G)):
                hint = "G (out, d) acts on inputs a ∈ R^d: project on the right, G − G U Uᵀ (not U Uᵀ G)."
            else:
                hint = "G̃ = G − (G U) Uᵀ."
            expect_close(f"G_proj of {what}", Gp, G_ref, atol=1e-8, hint=hint)
        a = U_ref @ rng.standard_normal(r)
        expect(np.abs(Gp @ a).max() < 1e-8, f"G_proj of {what} must give G̃ a = 0 for old inputs a ∈ span(U).")

    for_all(st.tuples(st.integers(1, 8), st.integers(1, 10), st.integers(1, 5), st.sampled_from([0.5, 0.8, 0.95]),
                      _SEEDS), test, max_examples=30)


# ------------------------------------------------------------------- 4.9 kernel: fused TIES


@exercise("4.9", "ties_fused (Numba) merges a (T, P) stack from per-task thresholds in one pass over P, equal to "
                 "labkit's TIES")
def ex_4_9(ties_fused: Callable) -> None:
    from labkit.continual.merging import _ties_vector

    expect(_is_njit(ties_fused), "compile ties_fused with @njit (from numba import njit).")

    def one(T, P, k, seed):
        rng = _rng(seed)
        tvs, thresholds, density = _ties_inputs(rng, T, P, k)
        tv_np, th_np = np.ascontiguousarray(tvs.numpy().copy()), np.ascontiguousarray(thresholds.numpy().copy())
        what = f"ties_fused(thresholds ({T},), tvs ({T}, {P})) (k = {k} kept per task)"
        got = _array(what, _call(what, ties_fused, th_np, tv_np))
        expect(np.array_equal(tv_np, tvs.numpy()) and np.array_equal(th_np, thresholds.numpy()),
               f"{what} changed its inputs: write the result into a new array (np.zeros(P)).")
        expected = _ties_vector([{"w": row} for row in tvs], density)["w"].numpy()
        expect(got.shape == (P,), f"{what} has shape {got.shape}, expected ({P},).")
        if not _close(got, expected, atol=1e-12):
            hint = _ties_hint(got, tvs, thresholds, k, ())
            bad = int(np.argmax(~np.isclose(got, expected, atol=1e-12)))
            expect_close(f"{what} (first wrong entry p = {bad}, column {np.round(tvs[:, bad].numpy(), 4).tolist()})",
                         got, expected, atol=1e-12, hint=hint)

    def test(example):
        T, P, k_frac, seed = example
        one(T, P, max(1, min(P, int(round(k_frac * P)))), seed)

    for_all(st.tuples(st.integers(1, 6), st.integers(1, 40), st.sampled_from([0.1, 0.3, 0.6, 1.0]), _SEEDS), test,
            max_examples=25)
    for T, P, k in ((1, 7, 3), (1, 1, 1), (3, 1, 1), (4, 33, 9), (2, 101, 50)):  # T = 1 and odd P, explicitly
        one(T, P, k, 11 * T + P)


# ------------------------------------------------------------------- 4.10 kernel: fused merge update


@exercise("4.10", "merge_update (Numba) writes w0 + λ(δ + μτ) and δ + μτ and the float64 ‖δ + μτ‖² in one pass, "
                  "equal to the torch reference")
def ex_4_10(merge_update: Callable) -> None:
    expect(_is_njit(merge_update), "compile merge_update with @njit (from numba import njit).")

    def one(P, dtype, lam, mu, seed, size=1.0):
        rng = _rng(seed)
        w0, delta, tau = (np.ascontiguousarray((size * rng.standard_normal(P)).astype(dtype)) for _ in range(3))
        keep = [x.copy() for x in (w0, delta, tau)]
        what = f"merge_update(w0, delta, tau ({P},) {np.dtype(dtype).name}, lam={lam}, mu={mu})"
        merged, new_delta, sq = _tuple(what, _call(what, merge_update, w0, delta, tau, lam, mu),
                                       ("merged", "new_delta", "sq_norm"))
        expect(all(np.array_equal(a, b) for a, b in zip((w0, delta, tau), keep)),
               f"{what} changed its inputs: write into new arrays (np.empty_like(w0)).")
        for name, arr in (("merged", merged), ("new_delta", new_delta)):
            expect(isinstance(arr, np.ndarray) and arr.dtype == dtype,
                   f"{name} of {what} should be a {np.dtype(dtype).name} array like the inputs "
                   f"(np.empty_like(w0)), got {getattr(arr, 'dtype', type(arr).__name__)}.")
        sq = _number(f"sq_norm of {what}", sq)
        t = [torch.from_numpy(x).double() for x in keep]
        nd_ref = t[1] + mu * t[2]
        m_ref = t[0] + lam * nd_ref
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == np.float32 else dict(atol=1e-12, rtol=1e-12)
        if not _close(to_numpy("merged", merged), m_ref.numpy(), **tol):
            wrong = (t[0] + lam * t[1] + mu * t[2]).numpy()
            hint = ("merged = w0 + λ (δ + μ τ): λ scales the whole new delta." if lam != 1 and
                    _close(to_numpy("merged", merged), wrong, **tol) else "merged = w0 + λ (δ + μ τ).")
            expect_close(f"merged of {what}", merged, m_ref.numpy(), hint=hint, **tol)
        expect_close(f"new_delta of {what}", new_delta, nd_ref.numpy(), hint="new_delta = δ + μ τ.", **tol)
        sq_ref = float((nd_ref ** 2).sum())
        rel = abs(sq - sq_ref) / max(sq_ref, 1e-300)
        limit = 1e-6 if dtype == np.float32 else 1e-11
        if P and rel > limit:
            if math.isclose(sq, float((t[1] ** 2).sum()), rel_tol=limit):
                hint = "return the squared norm of the NEW delta δ + μ τ (you summed the old δ²)."
            elif math.isclose(sq, math.sqrt(sq_ref), rel_tol=limit):
                hint = "return the SQUARED norm Σ (δ + μτ)², without the square root."
            elif rel < 1e-2:
                hint = ("accumulate the squares in float64 (acc = 0.0; acc += np.float64(x) * x): a float32 sum of "
                        f"{P} terms loses digits (relative error {rel:.1e}).")
            else:
                hint = "sq_norm = Σ_p (δ_p + μ τ_p)², accumulated in float64."
            expect(False, f"sq_norm of {what} is {sq!r}, expected {sq_ref!r}: {hint}")
        expect(P or sq == 0.0, f"sq_norm of {what} should be 0 for empty arrays, got {sq}.")

    def test(example):
        P, lam, mu, seed, f32 = example
        one(P, np.float32 if f32 else np.float64, lam, mu, seed)

    for_all(st.tuples(st.integers(0, 300), st.sampled_from([0.3, 1.0, 1.5]), st.sampled_from([0.5, 1.0, 2.0]),
                      _SEEDS, st.booleans()), test, max_examples=25)
    one(200_001, np.float32, 0.7, 1.3, 5, size=3.0)  # long enough that a float32 accumulator loses digits
