"""Permutation learning by NTK ensembles: batched training, closed-form kernels, mean levels, rounding, complexity."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.memory.permutation import (
    all_inputs,
    empirical_ntk,
    ensemble_complexity,
    ensemble_forward,
    fit_growth,
    gd_step,
    init_ensemble,
    mean_levels,
    nngp_kernel,
    ntk_kernel,
    ntk_mean_prediction,
    ntk_posterior_cov,
    permutation_targets,
    posterior_variance,
    round_prediction,
    thresholds,
    train_ensemble,
    width_agreement,
)

torch.set_num_threads(1)
D64 = torch.float64


def _perm(k: int, seed: int = 0) -> torch.Tensor:
    return torch.randperm(k, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# Inputs and targets


def test_all_inputs_are_the_nonzero_binary_vectors_and_targets_are_P_x():
    x = all_inputs(4)
    assert x.shape == (15, 4) and x.dtype == D64
    assert len({tuple(r) for r in x.tolist()}) == 15 and bool((x.sum(1) >= 1).all())
    perm = _perm(4, 3)
    P = torch.zeros(4, 4, dtype=D64)
    P[perm, torch.arange(4)] = 1.0  # column i has its one in row π(i)
    torch.testing.assert_close(permutation_targets(x, perm), x @ P.T, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The batched ensemble


def _single_member_step(W, b, A, x, y, lr):
    """Reference: one member as plain tensors, gradients by autograd."""
    params = [t.clone().requires_grad_(True) for t in (W, b, A) if t is not None]
    Wp, Ap = params[0], params[-1]
    bp = params[1] if b is not None else 0.0
    out = torch.relu(x @ Wp + bp) @ Ap / math.sqrt(W.shape[1])
    loss = 0.5 * ((out - y) ** 2).sum()
    grads = torch.autograd.grad(loss, params)
    return [p.detach() - lr * g for p, g in zip(params, grads)], loss.detach()


@pytest.mark.parametrize("bias", [False, True])
def test_batched_step_equals_each_member_trained_separately(bias):
    k, perm = 4, _perm(4, 1)
    ens = init_ensemble(k, width=16, n_members=3, bias=bias, seed=5)
    before = [ens.member(i) for i in range(3)]
    before = [(m.W[0].clone(), None if m.b is None else m.b[0].clone(), m.A[0].clone()) for m in before]
    X = all_inputs(k)[[0, 2, 5, 7, 9]]  # any inputs: the step is not specific to the basis vectors
    Y = permutation_targets(X, perm)
    out0 = ensemble_forward(ens, X)
    loss = gd_step(ens, X, Y, lr=0.3)
    for i, (W, b, A) in enumerate(before):
        torch.testing.assert_close(out0[i], torch.relu(X @ W + (0 if b is None else b)) @ A / 4.0, rtol=0, atol=1e-14)
        new, ref_loss = _single_member_step(W, b, A, X, Y, 0.3)
        torch.testing.assert_close(loss[i], ref_loss, rtol=0, atol=1e-13)
        torch.testing.assert_close(ens.W[i], new[0], rtol=0, atol=1e-13)
        torch.testing.assert_close(ens.A[i], new[-1], rtol=0, atol=1e-13)
        if bias:
            torch.testing.assert_close(ens.b[i], new[1], rtol=0, atol=1e-13)


@pytest.mark.parametrize("bias", [False, True])
def test_trained_members_fit_the_k_training_points(bias):
    k, perm = 5, _perm(5, 2)
    ens, loss = train_ensemble(perm, width=32, n_members=6, bias=bias, seed=1)
    X = torch.eye(k, dtype=D64)
    assert float(loss.max()) < 1e-12
    torch.testing.assert_close(ensemble_forward(ens, X), permutation_targets(X, perm).expand(6, k, k),
                               rtol=0, atol=1e-6)
    # chunked training is the same computation as one batch
    ens2, _ = train_ensemble(perm, width=32, n_members=6, bias=bias, seed=1, chunk=4)
    torch.testing.assert_close(ens2.W, ens.W, rtol=0, atol=1e-14)


def test_training_is_deterministic_under_a_seed():
    a, _ = train_ensemble([1, 0, 2], width=16, n_members=4, seed=3)
    b, _ = train_ensemble([1, 0, 2], width=16, n_members=4, seed=3)
    c, _ = train_ensemble([1, 0, 2], width=16, n_members=4, seed=4)
    assert torch.equal(a.W, b.W) and torch.equal(a.A, b.A)
    assert not torch.equal(a.W, c.W)


# ---------------------------------------------------------------------------------------------------------
# Closed-form kernels


def test_ntk_closed_form_values_on_basis_vectors():
    E = torch.eye(3, dtype=D64)
    # no bias: Θ(e, e) = k1 + k0 = 1/2 + 1/2; Θ(e_i, e_j) = k1 at 90° = 1/(2π)
    torch.testing.assert_close(ntk_kernel(E, E), (1 - 1 / (2 * math.pi)) * torch.eye(3, dtype=D64) + 1 / (2 * math.pi))
    # bias: x̃ = (e, 1), |x̃|² = 2; Θ(e, e) = 1 + 2·1/2 = 2; Θ(e_i, e_j): angle 60°, x̃·x̃' = 1
    off = 2 * (math.sqrt(3) / 2 + (2 * math.pi / 3) / 2) / (2 * math.pi) + 1 / 3
    torch.testing.assert_close(ntk_kernel(E, E, bias=True), (2 - off) * torch.eye(3, dtype=D64) + off)
    torch.testing.assert_close(nngp_kernel(E, E).diagonal(), torch.full((3,), 0.5, dtype=D64))


@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_ntk_matches_the_empirical_ntk_at_moderate_width(bias):
    k = 4
    x = all_inputs(k)[[0, 2, 6, 14]]  # 1, 2, 3 and 4 ones
    ens = init_ensemble(k, width=2048, n_members=2, bias=bias, seed=0)
    emp = (empirical_ntk(ens, x, x, member=0) + empirical_ntk(ens, x, x, member=1)) / 2
    ref = ntk_kernel(x, x, bias)
    assert float(((emp - ref).abs() / ref).max()) < 0.08
    cross = empirical_ntk(ens, x, x, member=0, outputs=(0, 1))  # different outputs share only W: → 0
    assert float(cross.abs().max()) < 0.08 * float(ref.abs().max())


# ---------------------------------------------------------------------------------------------------------
# The infinite-width mean, its levels and the rounding


@pytest.mark.parametrize("bias", [False, True])
def test_infinite_width_mean_on_basis_vectors_equals_the_targets(bias):
    perm = _perm(6, 4)
    E = torch.eye(6, dtype=D64)
    torch.testing.assert_close(ntk_mean_prediction(E, perm, bias), permutation_targets(E, perm), rtol=0, atol=1e-12)
    assert float(ntk_posterior_cov(E, bias=bias).abs().max()) < 1e-12  # every member interpolates: no variance


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_mean_is_two_valued_with_sign_based_levels(k, bias):
    perm = _perm(k, k)
    x = all_inputs(k)
    mu, y = ntk_mean_prediction(x, perm, bias), permutation_targets(x, perm)
    m = x.sum(1).long()
    levels = torch.tensor([mean_levels(j, k, bias) for j in range(1, k + 1)], dtype=D64)
    expected = torch.where(y > 0, levels[m - 1, 0, None], levels[m - 1, 1, None])
    torch.testing.assert_close(mu, expected, rtol=0, atol=1e-12)
    assert levels[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    assert bool((levels[1:, 0] > 0).all()) and bool((levels[1:, 1] < 0).all())  # the sign carries P x (m ≥ 2)
    var = torch.tensor([posterior_variance(j, k, bias) for j in range(1, k + 1)], dtype=D64)
    torch.testing.assert_close(ntk_posterior_cov(x, bias=bias).diagonal(), var[m - 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rule", ["midpoint", "sign", "topm"])
def test_rounding_the_closed_form_mean_recovers_P_x_on_every_input(rule, bias):
    for k in range(2, 10):
        perm = _perm(k, 10 + k)
        x = all_inputs(k)
        pred = round_prediction(ntk_mean_prediction(x, perm, bias), x, rule, bias)
        assert torch.equal(pred, permutation_targets(x, perm)), (rule, k)


def test_naive_half_rounding_fails_where_alpha_drops_below_one_half():
    k = 8
    alpha, _ = mean_levels(8, k)
    assert alpha < 0.5  # all-ones input: the mean on every (correct) one is below 1/2
    x, perm = all_inputs(k), _perm(k)
    pred = round_prediction(ntk_mean_prediction(x, perm), x, "half")
    wrong = ~(pred == permutation_targets(x, perm)).all(1)
    assert bool(wrong.any()) and bool(wrong[-1])
    assert thresholds(k, "half").tolist() == [0.5] * k


# ---------------------------------------------------------------------------------------------------------
# Ensemble complexity and fits


def test_gp_single_input_probability_matches_sampling_the_gp():
    k, rule = 4, "midpoint"
    rec = ensemble_complexity([k], "gp", rule, n_samples=500, seed=0)["records"][0]
    M = rec["M_single"]
    x = all_inputs(k)
    x = x[x.sum(1) >= 2]
    mu = ntk_mean_prediction(x, torch.arange(k))
    L = torch.linalg.cholesky(ntk_posterior_cov(x) + 1e-12 * torch.eye(len(x), dtype=D64))
    g = torch.Generator().manual_seed(1)
    draws = 4000
    means = mu + torch.einsum("ab,rjb->raj", L, torch.randn(draws, k, len(x), generator=g, dtype=D64)) / math.sqrt(M)
    p_hat = float((round_prediction(means, x, rule) == x).all(-1).to(D64).mean())
    assert 0.9 - 0.02 <= p_hat <= 0.97  # M_single is the smallest M with P ≥ 0.9
    assert rec["M_single"] <= rec["M_single_worst"] <= rec["M_all_union"]
    assert rec["M_all"] <= 1.1 * rec["M_all_union"]  # the union bound over-estimates M_all (up to MC noise)


def test_gp_complexity_grows_with_k_and_the_sign_rule_needs_more_members():
    mid = ensemble_complexity([3, 5, 7], "gp", "midpoint", n_samples=300, seed=0)
    sign = ensemble_complexity([3, 5, 7], "gp", "sign", n_samples=300, seed=0)
    for col in ("M_single_worst", "M_all_union"):
        ms = [r[col] for r in mid["records"]]
        assert ms == sorted(ms) and ms[0] < ms[-1]
        assert all(s[col] > m[col] for s, m in zip(sign["records"], mid["records"]))
    again = ensemble_complexity([3, 5, 7], "gp", "midpoint", n_samples=300, seed=0)
    assert again["records"] == mid["records"]  # deterministic under a seed


def test_gp_complexity_is_none_when_no_ensemble_size_suffices():
    rec = ensemble_complexity([8], "gp", "half", n_samples=50)["records"][0]
    assert rec["M_all"] is None and rec["M_all_union"] is None and rec["M_single_worst"] is None


def test_network_complexity_runs_on_trained_nets():
    res = ensemble_complexity([3], "network", "midpoint", width=32, pool=96, repeats=12, seed=0)
    rec = res["records"][0]
    assert rec["max_train_loss"] < 1e-10
    assert all(0 <= p <= 1 for p in rec["p_single"] + rec["p_all"])
    assert all(s >= a for s, a in zip(rec["p_single"], rec["p_all"]))  # all inputs at once is harder
    assert rec["M_single"] is not None and (rec["M_all"] is None or rec["M_all"] >= rec["M_single"])


def test_finite_width_ensemble_mean_agrees_with_the_closed_form():
    rows = width_agreement(3, widths=(512,), n_members=256, seed=0)
    assert rows[0]["max_z"] < 4.5  # within Monte Carlo error of the infinite-width mean
    assert rows[0]["var_rel_err"] < 0.35
    assert rows[0]["exact_frac"] == 1.0


def test_fit_growth_recovers_exact_laws():
    k = [3, 4, 6, 8, 12]
    quad = fit_growth(k, [3 * j**2 for j in k])
    assert quad["k2"]["c"] == pytest.approx(3) and quad["k2"]["rms_log"] < 1e-12
    assert quad["power"]["p"] == pytest.approx(2) and quad["klogk"]["rms_log"] > 0.01
    assert quad["local"]["p"] == pytest.approx(2) and quad["local"]["k"] == [8, 12]
    lin = fit_growth(k, [2 * j * math.log(j) for j in k])
    assert lin["klogk"]["c"] == pytest.approx(2) and lin["klogk"]["rms_log"] < 1e-12
    assert lin["local"]["p"] == pytest.approx(lin["local"]["p_klogk"]) and 1 < lin["local"]["p"] < 2


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="k must be"):
        init_ensemble(1, 4, 2)
    with pytest.raises(ValueError, match="k must be"):
        all_inputs(1)
    with pytest.raises(ValueError, match="k must be"):
        train_ensemble([0], width=4, n_members=2)
    with pytest.raises(ValueError, match="perm must be a permutation"):
        train_ensemble([0, 0, 1], width=4, n_members=2)
    with pytest.raises(ValueError, match="perm must be a permutation"):
        ntk_mean_prediction(all_inputs(3), [1, 2, 3])
    with pytest.raises(ValueError, match="perm must be a 1-D integer"):
        permutation_targets(all_inputs(2), [0.0, 1.0])
    with pytest.raises(ValueError, match="width must be"):
        train_ensemble([1, 0], width=0, n_members=2)
    with pytest.raises(ValueError, match="n_members must be"):
        init_ensemble(3, 4, 0)
    with pytest.raises(ValueError, match="rule must be"):
        round_prediction(torch.zeros(7, 3, dtype=D64), all_inputs(3), "round")
    with pytest.raises(ValueError, match="nonzero"):
        round_prediction(torch.zeros(2, 3, dtype=D64), torch.tensor([[1.0, 0, 0], [0, 0, 0]]), "sign")
    with pytest.raises(ValueError, match="method must be"):
        ensemble_complexity([3], method="bootstrap")
    with pytest.raises(ValueError, match="m must be"):
        mean_levels(0, 3)
