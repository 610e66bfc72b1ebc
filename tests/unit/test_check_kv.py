"""The Lab 2 checks (labkit.check.kv) pass correct answers and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from lab_answers import answer_factory, contract_tests, expect_hint
from numba import njit

import labkit.check.kv as checks

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab02_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab02.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, n_tokens, bits):
    return 2 * n_layers * n_kv_heads * head_dim * bits // 8 * n_tokens


def pca_basis(X, r):
    mean = X.mean(0)
    Xc = X - mean
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc / (X.shape[0] - 1))
    return mean, evecs.flip(-1)[:, :r]


def cayley_map(A):
    I = torch.eye(A.shape[-1], dtype=A.dtype)  # noqa: E741
    return torch.linalg.solve(I + A, I - A)


def nested_loss(X, mean, basis, ranks):
    losses = []
    for r in ranks:
        Ur = basis[:, :r]
        Xc = X - mean
        losses.append(((Xc - Xc @ Ur @ Ur.T) ** 2).sum(-1).mean())
    return torch.stack(losses).mean()


def kivi_keys(K, bits, group):
    T, D = K.shape
    g = K.reshape(T // group, group, D)
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    scale = (hi - lo) / (2**bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round((g - lo) / scale), 0, 2**bits - 1)
    return (codes * scale + lo).reshape(T, D)


def streaming_keep(n_tokens, n_keep, n_sink):
    if n_keep >= n_tokens:
        return torch.arange(n_tokens)
    sinks = min(n_sink, n_keep - 1)
    return torch.cat([torch.arange(sinks), torch.arange(n_tokens - (n_keep - sinks), n_tokens)])


def h2o_accumulate(Q, K):
    T = Q.shape[0]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = torch.softmax((Q @ K.T / Q.shape[-1] ** 0.5).masked_fill(future, float("-inf")), dim=-1)
    return probs.sum(0)


def greedy_rates(costs, budget):
    H, _, D = costs.shape
    ranks = np.full((H, 2), D)
    while ranks.sum() > budget * 2 * H * D + 1e-9:
        best, where = np.inf, None
        for h in range(H):
            for j in range(2):
                r = ranks[h, j]
                if r > 1 and costs[h, j, r - 2] - costs[h, j, r - 1] < best:
                    best, where = costs[h, j, r - 2] - costs[h, j, r - 1], (h, j)
        if where is None:
            break
        ranks[where] -= 1
    return ranks


@njit
def project_attend_row(q, Kc, Vc, U_k, U_v, scale):
    T, rk = Kc.shape
    rv = Vc.shape[1]
    D = q.shape[0]
    qr = np.zeros(rk)
    for j in range(rk):
        for d in range(D):
            qr[j] += U_k[d, j] * q[d]
    m, l = -np.inf, 0.0
    acc = np.zeros(rv)
    for t in range(T):
        s = 0.0
        for j in range(rk):
            s += qr[j] * Kc[t, j]
        s *= scale
        if s > m:
            c = np.exp(m - s)
            l *= c
            for j in range(rv):
                acc[j] *= c
            m = s
        p = np.exp(s - m)
        l += p
        for j in range(rv):
            acc[j] += p * Vc[t, j]
    out = np.zeros(D)
    for d in range(D):
        for j in range(rv):
            out[d] += U_v[d, j] * acc[j]
        out[d] /= l
    return out


@njit
def quant_scores(q, codes, scale, zero, group):
    T, D = codes.shape
    out = np.zeros(T)
    for t in range(T):
        g = t // group
        s = 0.0
        for d in range(D):
            s += q[d] * (codes[t, d] * scale[g, d] + zero[g, d])
        out[t] = s
    return out


CORRECT = {
    "2.1": kv_cache_bytes,
    "2.2": pca_basis,
    "2.3": cayley_map,
    "2.4": nested_loss,
    "2.5": kivi_keys,
    "2.6": streaming_keep,
    "2.7": h2o_accumulate,
    "2.8": greedy_rates,
    "2.9": project_attend_row,
    "2.10": quant_scores,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}

SIGNATURES = {
    "2.1": "kv_cache_bytes(n_layers, n_kv_heads, head_dim, n_tokens, bits)",
    "2.2": "pca_basis(X, r)",
    "2.3": "cayley_map(A)",
    "2.4": "nested_loss(X, mean, basis, ranks)",
    "2.5": "kivi_keys(K, bits, group)",
    "2.6": "streaming_keep(n_tokens, n_keep, n_sink)",
    "2.7": "h2o_accumulate(Q, K)",
    "2.8": "greedy_rates(costs, budget)",
    "2.9": "project_attend_row(q, Kc, Vc, U_k, U_v, scale)",
    "2.10": "quant_scores(q, codes, scale, zero, group)",
}
COMPILED = {"2.9", "2.10"}


from_body, stub = answer_factory(SIGNATURES, COMPILED, WRONG)


# -------------------------------------------------------------------------------------------- the tests


assert set(SIGNATURES) == set(CORRECT)
globals().update(contract_tests(CORRECT, CHECKS, WRONG, from_body, stub))


# -------------------------------------------------------------- the hints name the likely cause


def test_hints_of_the_wrong_answers():
    expect_hint(checks.ex_2_1, from_body("2.1"), "factor 2")
    expect_hint(checks.ex_2_2, from_body("2.2"), "centre the rows")
    expect_hint(checks.ex_2_3, from_body("2.3"), "swap")
    expect_hint(checks.ex_2_4, from_body("2.4"), "subtract the mean")
    expect_hint(checks.ex_2_5, from_body("2.5"), "per TOKEN")
    expect_hint(checks.ex_2_6, from_body("2.6"), "sinks count towards the budget")
    expect_hint(checks.ex_2_7, from_body("2.7"), "mask the future")
    expect_hint(checks.ex_2_8, from_body("2.8"), "rise the least")
    expect_hint(checks.ex_2_10, from_body("2.10"), "zero point")


def test_more_wrong_answers():
    expect_hint(checks.ex_2_1, lambda n_layers, n_kv_heads, head_dim, n_tokens, bits:
                2 * n_layers * n_kv_heads * head_dim * bits * n_tokens, "bits are not bytes")
    expect_hint(checks.ex_2_2, lambda X, r: (X.mean(0), torch.linalg.eigh(torch.cov(X.T))[1][:, :r]),
                "SMALLEST")
    expect_hint(checks.ex_2_3, lambda A: torch.eye(A.shape[0], dtype=A.dtype) - A, "orthogonal")
    expect_hint(checks.ex_2_4, lambda X, mean, basis, ranks: nested_loss(X, mean, basis, [max(ranks)]),
                "every sampled rank")
    expect_hint(checks.ex_2_6, lambda n, k, s: streaming_keep(n, k + (k < n and s >= k), s)
                if s >= k else streaming_keep(n, k, s), "newest token|n_keep")
    expect_hint(checks.ex_2_9, project_attend_row.py_func, "@njit")


def test_the_nested_loss_reference_is_the_mean_over_ranks():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((10, 4)))
    basis = torch.eye(4, dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    # rank r keeps the first r coordinates: the loss is the energy of the rest
    per_rank = [float((x[:, r:] ** 2).sum(1).mean()) for r in (1, 3)]
    assert math.isclose(float(checks.nested_loss_reference(x, zero, basis, [1, 3])), sum(per_rank) / 2)
    assert float(checks.nested_loss_reference(x, zero, basis, [4])) < 1e-20


def test_the_greedy_reference_meets_the_budget_by_cheapest_cuts():
    costs = checks._cost_table(0, 3, 8)
    ranks = checks.greedy_rates_reference(costs, 0.5)
    assert ranks.sum() <= 0.5 * 2 * 3 * 8 and ranks.min() >= 1
    assert ranks.sum() == 24
    assert (checks.greedy_rates_reference(costs, 1.0) == 8).all()
