"""The Lab 4 checks (labkit.check.continual) pass correct answers and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_answers import contract_tests, expect_hint
from numba import njit

import labkit.check.continual as checks

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab04_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab04.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG
MORE_WRONG_4_5 = _wrong.MORE_WRONG_4_5

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)


def merge_task_arithmetic(base, finetuned, lam):
    merged = {}
    for name, theta0 in base.items():
        tau_sum = sum(theta[name] - theta0 for theta in finetuned)
        merged[name] = theta0 + lam * tau_sum
    return merged


def continual_metrics(R):
    acc = R[-1].mean()
    bwt = (R[-1, :-1] - np.diag(R)[:-1]).mean()
    forgetting = (R[:-1, :-1].max(0) - R[-1, :-1]).mean()
    return acc, bwt, forgetting


def ewc_fisher(W1, b1, W2, b2, x):
    N = x.shape[0]
    z = x @ W1.T + b1
    h = z.clamp(min=0)
    p = (h @ W2.T + b2).softmax(-1)
    F = [torch.zeros_like(w) for w in (W1, b1, W2, b2)]
    for c in range(W2.shape[0]):
        d_out = -p.clone()
        d_out[:, c] += 1.0
        d_hid = (d_out @ W2) * (z > 0)
        w = p[:, c:c + 1]
        F[0] += (w * d_hid ** 2).T @ x ** 2
        F[1] += (w * d_hid ** 2).sum(0)
        F[2] += (w * d_out ** 2).T @ h ** 2
        F[3] += (w * d_out ** 2).sum(0)
    return tuple(f / N for f in F)


def rehearsal_schedule(ages, exponent, u):
    w = ages ** (-exponent)
    p = w / w.sum()
    cdf = np.cumsum(p)
    picks = np.searchsorted(cdf / cdf[-1], u, side="right")
    return p, picks


def opcm_projection(D, tau, alpha):
    U, s, Vh = torch.linalg.svd(D, full_matrices=True)
    if s.sum() <= 0:
        return tau.clone(), 0
    mass = torch.cumsum(s, 0) / s.sum()
    r = min(int((mass < alpha).sum()) + 1, len(s))
    P = U.T @ tau @ Vh.T
    P[:r, :r] = 0.0
    P.diagonal().zero_()
    return U @ P @ Vh, r


def opcm_projection_thin(D, tau, alpha):
    """The same masked projection with the thin SVD (the part of τ outside the k × k corner has no diagonal)."""
    U, s, Vh = torch.linalg.svd(D, full_matrices=False)
    if s.sum() <= 0:
        return tau.clone(), 0
    mass = torch.cumsum(s, 0) / s.sum()
    r = min(int((mass < alpha).sum()) + 1, len(s))
    P = U.T @ tau @ Vh.T
    mask = torch.ones_like(P)
    mask[:r, :r] = 0.0
    mask.diagonal().zero_()
    return tau - U @ ((1 - mask) * P) @ Vh, r


def opcm_step(D, tau, mean_norm, t, alpha):
    tau_tilde, _ = opcm_projection(D, tau, alpha)
    D_new = D + tau_tilde
    mean_new = mean_norm + (float(tau.norm()) - mean_norm) / t
    lam = float(D_new.norm()) / mean_new
    return D_new, lam, mean_new


def ties_merge(tvs, density):
    T, P = tvs.shape
    k = max(1, round(density * P))
    idx = tvs.abs().topk(k, dim=1).indices
    trimmed = torch.zeros_like(tvs).scatter(1, idx, tvs.gather(1, idx))
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    return torch.where(count > 0, (trimmed * agree).sum(0) / count.clamp(min=1), 0.0)


def gpm_project(A, G, eps):
    U, s, _ = torch.linalg.svd(A, full_matrices=False)
    energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    r = min(int((energy < eps).sum()) + 1, len(s))
    U = U[:, :r]
    return U, G - (G @ U) @ U.T


@njit(cache=True)
def ties_fused(thresholds, tvs):
    T, P = tvs.shape
    out = np.zeros(P)
    for p in range(P):
        s = 0.0
        for k in range(T):
            v = tvs[k, p]
            if abs(v) >= thresholds[k]:
                s += v
        if s == 0.0:
            continue
        total = 0.0
        count = 0
        for k in range(T):
            v = tvs[k, p]
            if abs(v) >= thresholds[k] and v != 0.0 and (v > 0) == (s > 0):
                total += v
                count += 1
        if count > 0:
            out[p] = total / count
    return out


@njit(cache=True)
def merge_update(w0, delta, tau, lam, mu):
    merged = np.empty_like(w0)
    new_delta = np.empty_like(delta)
    sq = 0.0
    for i in range(w0.size):
        d = delta[i] + mu * tau[i]
        new_delta[i] = d
        merged[i] = w0[i] + lam * d
        sq += np.float64(d) * np.float64(d)
    return merged, new_delta, sq


CORRECT = {
    "4.1": merge_task_arithmetic,
    "4.2": continual_metrics,
    "4.3": ewc_fisher,
    "4.4": rehearsal_schedule,
    "4.5": opcm_projection,
    "4.6": opcm_step,
    "4.7": ties_merge,
    "4.8": gpm_project,
    "4.9": ties_fused,
    "4.10": merge_update,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}

SIGNATURES = {
    "4.1": "merge_task_arithmetic(base, finetuned, lam)",
    "4.2": "continual_metrics(R)",
    "4.3": "ewc_fisher(W1, b1, W2, b2, x)",
    "4.4": "rehearsal_schedule(ages, exponent, u)",
    "4.5": "opcm_projection(D, tau, alpha)",
    "4.6": "opcm_step(D, tau, mean_norm, t, alpha)",
    "4.7": "ties_merge(tvs, density)",
    "4.8": "gpm_project(A, G, eps)",
    "4.9": "ties_fused(thresholds, tvs)",
    "4.10": "merge_update(w0, delta, tau, lam, mu)",
}
COMPILED = {"4.9", "4.10"}


def from_body(label: str, body: str | None = None):
    """The lab's function for ``label`` with ``body`` (default WRONG[label]); like lab_answers.answer_factory, but
    the namespace also holds the correct ``opcm_projection``, which the lab's 4.6 calls (the student's 4.5)."""
    body = textwrap.dedent(WRONG[label] if body is None else body).strip("\n")
    signature = SIGNATURES[label]
    source = ("@njit\n" if label in COMPILED else "") + f"def {signature}:\n" + textwrap.indent(body, "    ")
    namespace = {"torch": torch, "np": np, "math": math, "njit": njit, "opcm_projection": opcm_projection}
    exec(source, namespace)
    return namespace[signature.split("(")[0]]


def stub(label: str):
    return from_body(label, f'raise NotImplementedError("Exercise {label}")')


# -------------------------------------------------------------------------------------------- the tests


assert set(SIGNATURES) == set(CORRECT)
globals().update(contract_tests(CORRECT, CHECKS, WRONG, from_body, stub))


# -------------------------------------------------------------- the hints name the likely cause


def test_hints_of_the_wrong_answers():
    expect_hint(checks.ex_4_1, from_body("4.1"), "SUMS the task vectors")
    expect_hint(checks.ex_4_2, from_body("4.2"), "BEFORE the end")
    expect_hint(checks.ex_4_3, from_body("4.3"), r"probability p_θ\(c\|x\)")
    expect_hint(checks.ex_4_4, from_body("4.4"), "rehearsed MORE")
    expect_hint(checks.ex_4_5, from_body("4.5"), "TWO-SIDED")
    expect_hint(checks.ex_4_6, from_body("4.6"), "RUNNING MEAN norm")
    expect_hint(checks.ex_4_7, from_body("4.7"), "disjoint mean")
    expect_hint(checks.ex_4_8, from_body("4.8"), "SQUARED singular values")
    expect_hint(checks.ex_4_9, from_body("4.9"), "total MASS")
    expect_hint(checks.ex_4_10, from_body("4.10"), "NEW delta")


def test_more_wrong_answers():
    def no_base(base, finetuned, lam):
        return {n: v - base[n] for n, v in merge_task_arithmetic(base, finetuned, lam).items()}

    expect_hint(checks.ex_4_1, no_base, "add it to the base")
    expect_hint(checks.ex_4_1, lambda base, finetuned, lam: {
        n: base[n] + lam * sum(f[n] for f in finetuned) for n in base}, "task VECTORS")

    def in_place(base, finetuned, lam):
        for n in base:
            base[n] += lam * sum(f[n] - base[n] for f in finetuned)
        return base

    expect_hint(checks.ex_4_1, in_place, "in place")

    def bwt_over_T(R):
        acc, _, fgt = continual_metrics(R)
        return acc, (R[-1] - np.diag(R)).mean(), fgt

    expect_hint(checks.ex_4_2, bwt_over_T, "T−1 OLD tasks")
    expect_hint(checks.ex_4_2, lambda R: (np.diag(R).mean(), *continual_metrics(R)[1:]), "LAST row")
    expect_hint(checks.ex_4_2, lambda R: (*continual_metrics(R)[:2], (np.diag(R) - R[-1])[:-1].mean()),
                "BEST accuracy")

    def squared_mean(W1, b1, W2, b2, x):
        return tuple(torch.zeros_like(w) for w in (W1, b1, W2, b2))

    expect_hint(checks.ex_4_3, squared_mean, "SQUARED gradients")
    expect_hint(checks.ex_4_3, lambda *a: tuple(f * a[-1].shape[0] for f in ewc_fisher(*a)), "divide the sum by N")

    def no_mask(W1, b1, W2, b2, x):
        N = x.shape[0]
        z = x @ W1.T + b1
        h = z.clamp(min=0)
        p = (h @ W2.T + b2).softmax(-1)
        F = [torch.zeros_like(w) for w in (W1, b1, W2, b2)]
        for c in range(W2.shape[0]):
            d_out = -p.clone()
            d_out[:, c] += 1.0
            d_hid = d_out @ W2
            w = p[:, c:c + 1]
            F[0] += (w * d_hid ** 2).T @ x ** 2
            F[1] += (w * d_hid ** 2).sum(0)
            F[2] += (w * d_out ** 2).T @ h ** 2
            F[3] += (w * d_out ** 2).sum(0)
        return tuple(f / N for f in F)

    expect_hint(checks.ex_4_3, no_mask, "through the ReLU")

    def unnormalised(ages, exponent, u):
        p, picks = rehearsal_schedule(ages, exponent, u)
        return ages ** -exponent, picks

    expect_hint(checks.ex_4_4, unnormalised, "normalise")
    expect_hint(checks.ex_4_4, lambda ages, a, u: (rehearsal_schedule(ages, a, u)[0],
                                                   np.minimum((u * len(ages)).astype(int), len(ages) - 1)),
                "not uniformly")
    expect_hint(checks.ex_4_4, lambda ages, a, u: (rehearsal_schedule(ages, a, u)[0],
                                                   rehearsal_schedule(ages, a, u)[1] + 1), "0-based")

    def energy_rank(D, tau, alpha):
        s = torch.linalg.svdvals(D)
        r = min(int((torch.cumsum(s ** 2, 0) / (s ** 2).sum() < alpha).sum()) + 1, len(s))
        return opcm_projection(D, tau, alpha)[0], r

    expect_hint(checks.ex_4_5, energy_rank, "MASS")

    def keep_principal(D, tau, alpha):
        t, r = opcm_projection(D, tau, alpha)
        return tau - t, r

    expect_hint(checks.ex_4_5, keep_principal, "kept the part the mask removes")

    def no_projection(D, tau, mean_norm, t, alpha):
        D_new = D + tau
        mean_new = mean_norm + (float(tau.norm()) - mean_norm) / t
        return D_new, float(D_new.norm()) / mean_new, mean_new

    expect_hint(checks.ex_4_6, no_projection, "before adding it")
    def inverted(D, tau, mean_norm, t, alpha):
        D_new, lam, mean_new = opcm_step(D, tau, mean_norm, t, alpha)
        return D_new, 1 / lam, mean_new

    expect_hint(checks.ex_4_6, inverted, "inverted")

    def latest_norm(D, tau, mean_norm, t, alpha):
        D_new, _, _ = opcm_step(D, tau, mean_norm, t, alpha)
        return D_new, float(D_new.norm()) / float(tau.norm()), float(tau.norm())

    expect_hint(checks.ex_4_6, latest_norm, "ALL norms")

    def count_sign(tvs, density):
        k = max(1, round(density * tvs.shape[1]))
        idx = tvs.abs().topk(k, dim=1).indices
        trimmed = torch.zeros_like(tvs).scatter(1, idx, tvs.gather(1, idx))
        sign = torch.sign(torch.sign(trimmed).sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        count = agree.sum(0)
        return torch.where(count > 0, (trimmed * agree).sum(0) / count.clamp(min=1), 0.0)

    expect_hint(checks.ex_4_7, count_sign, "total MASS")
    expect_hint(checks.ex_4_7, lambda tvs, density: ties_merge(tvs, 1.0), "trim first")

    def int_k(tvs, density):
        k = max(1, int(density * tvs.shape[1]))
        return ties_merge(tvs, (k - 0.3) / tvs.shape[1] if k > 1 else 1e-9)

    expect_hint(checks.ex_4_7, int_k, "round, not int")
    expect_hint(checks.ex_4_8, lambda A, G, eps: (gpm_project(A, G, eps)[0],
                                                  G @ gpm_project(A, G, eps)[0] @ gpm_project(A, G, eps)[0].T),
                "REMOVE")
    expect_hint(checks.ex_4_8, lambda A, G, eps: (gpm_project(A, G, eps)[0].T, gpm_project(A, G, eps)[1]),
                "INPUT space|columns")
    expect_hint(checks.ex_4_9, ties_fused.py_func, "@njit")
    expect_hint(checks.ex_4_10, merge_update.py_func, "@njit")

    @njit
    def strict_threshold(thresholds, tvs):
        return ties_fused(thresholds * (1 + 1e-12), tvs)

    expect_hint(checks.ex_4_9, strict_threshold, "≥ threshold")

    @njit
    def float32_sum(w0, delta, tau, lam, mu):
        merged = np.empty_like(w0)
        new_delta = np.empty_like(delta)
        sq = np.zeros(1, dtype=w0.dtype)
        for i in range(w0.size):
            d = delta[i] + mu * tau[i]
            new_delta[i] = d
            merged[i] = w0[i] + lam * d
            sq[0] += new_delta[i] * new_delta[i]
        return merged, new_delta, sq[0]

    expect_hint(checks.ex_4_10, float32_sum, "float64")

    @njit
    def misplaced(w0, delta, tau, lam, mu):
        merged, new_delta, sq = merge_update(w0, delta, tau, lam, mu)
        return w0 + lam * delta + mu * tau, new_delta, sq

    expect_hint(checks.ex_4_10, misplaced, "λ scales the whole")


def test_the_gpm_reference_is_the_energy_rule_on_the_svd():
    rng = np.random.default_rng(0)
    for d, N, eps in ((6, 9, 0.8), (8, 3, 0.5), (5, 5, 0.95)):
        A = checks._activations(rng, d, N)
        G = rng.standard_normal((4, d))
        U, Gp = (x.numpy() for x in checks.gpm_reference(torch.from_numpy(A), torch.from_numpy(G), eps))
        Us, s, _ = np.linalg.svd(A, full_matrices=False)
        r = int(np.searchsorted(np.cumsum(s ** 2) / (s ** 2).sum(), eps)) + 1
        assert U.shape == (d, r)
        assert np.allclose(U @ U.T, Us[:, :r] @ Us[:, :r].T, atol=1e-10)
        assert np.allclose(Gp, G - G @ Us[:, :r] @ Us[:, :r].T, atol=1e-10)


def test_the_ties_reference_is_labkits_ties():
    from labkit.continual.merging import _ties_vector

    rng = np.random.default_rng(1)
    for T, P, k in ((1, 5, 2), (3, 17, 4), (5, 40, 40)):
        tvs, thresholds, density = checks._ties_inputs(rng, T, P, k)
        expected = _ties_vector([{"w": row} for row in tvs], density)["w"]
        assert torch.allclose(checks.ties_reference(tvs, thresholds), expected, atol=1e-14)


@pytest.mark.parametrize("label", ["4.9", "4.10"])
def test_kernel_checks_reject_plain_python(label):
    with pytest.raises(AssertionError, match="@njit"):
        CHECKS[label](CORRECT[label].py_func)


# -------------------------------------------------------------- 4.5: the masked projection, not the two-sided one


def test_the_thin_svd_mask_passes_too():
    assert checks.ex_4_5(opcm_projection_thin) is None


@pytest.mark.parametrize("name", list(MORE_WRONG_4_5))
def test_more_wrong_projections_fail_with_their_hint(name):
    body, hint = MORE_WRONG_4_5[name]
    expect_hint(checks.ex_4_5, from_body("4.5", body), hint)


def test_two_sided_projection_fails_4_5_and_4_6():
    from labkit.continual.merging import opcm_project

    def two_sided(D, tau, alpha):
        return opcm_project(D, tau, alpha, projection="two_sided")

    expect_hint(checks.ex_4_5, two_sided, "TWO-SIDED")

    def step_two_sided(D, tau, mean_norm, t, alpha):
        tt = tau if t == 1 else two_sided(D, tau, alpha)[0]
        D_new = D + tt
        mean_new = mean_norm + (float(tau.norm()) - mean_norm) / t
        return D_new, float(D_new.norm()) / mean_new, mean_new

    expect_hint(checks.ex_4_6, step_two_sided, "TWO-SIDED")


def test_zero_D_gives_tau_and_no_nan():
    def nan_at_zero(D, tau, alpha):
        if float(D.abs().max()) == 0:
            return tau * float("nan"), 0
        return opcm_projection(D, tau, alpha)

    expect_hint(checks.ex_4_5, nan_at_zero, "NaN")


@pytest.mark.parametrize("m, n", [(3, 7), (7, 3), (5, 5), (1, 4), (4, 1)])
def test_projection_variants_are_what_they_say(m, n):
    """The slips the 4.5 hints compare with: two_sided is labkit's two-sided projection, the reference (masked)
    is orthogonal to D while two-sided is not, and each variant differs from the masked reference."""
    from labkit.continual.merging import opcm_project, split_rank

    rng = np.random.default_rng(m * 10 + n)
    D, tau = checks._low_rank(rng, m, n), rng.standard_normal((m, n))
    r = split_rank(torch.linalg.svdvals(torch.from_numpy(D)), 0.5)
    variants = checks._projection_variants(D, tau, r)
    masked = opcm_project(torch.from_numpy(D), torch.from_numpy(tau), 0.5)[0].numpy()
    two = opcm_project(torch.from_numpy(D), torch.from_numpy(tau), 0.5, projection="two_sided")[0].numpy()
    assert np.allclose(variants["two_sided"], two)
    assert abs((masked * D).sum()) < 1e-10
    assert not np.allclose(masked, two)
    assert np.allclose(opcm_projection(torch.from_numpy(D), torch.from_numpy(tau), 0.5)[0].numpy(), masked)
    if min(m, n) > 1:  # with a single singular pair the diagonal is the block: masked and two-sided energy differ
        assert abs((two * D).sum()) > 1e-6
