"""Chapter 4 orthogonality: the polar LMO, the online Frank-Wolfe dictionary, the orthogonal-conv regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.continual.orthogonal import (
    FAST,
    OnlineOrthogonalDL,
    alternating_procrustes,
    circular_conv2d,
    conv_matrix,
    conv_singular_values,
    lmo_spectral_ball,
    msp_batch,
    orth_reg,
    orth_reg_lower_bound,
    planted_dictionary,
    polar,
    random_orthogonal,
    recovery,
    regulariser_floor,
    stability_vs_size,
)

torch.set_num_threads(1)
I = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731


# ---------------------------------------------------------------- dictionary learning

@pytest.mark.parametrize("seed", range(3))
def test_lmo_is_negative_polar_and_minimises_over_orthogonal(seed):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(6, 6, generator=g, dtype=torch.float64)
    S = lmo_spectral_ball(G)
    torch.testing.assert_close(S, -polar(G))
    torch.testing.assert_close(S.T @ S, I(6), atol=1e-12, rtol=0)
    best = float((G * S).sum())
    assert best == pytest.approx(-float(torch.linalg.svdvals(G).sum()), abs=1e-10)  # −‖G‖_*
    for k in range(200):  # no random orthogonal matrix (or point of the ball) does better
        Q = random_orthogonal(6, 1000 * seed + k)
        assert float((G * Q).sum()) >= best - 1e-10
        assert float((G * (0.5 * Q + 0.5 * random_orthogonal(6, k + 7))).sum()) >= best - 1e-10


def test_online_update_stays_feasible_and_dictionary_orthogonal():
    Y, _, _ = planted_dictionary(8, 2000, 0.2, seed=0)
    dl = OnlineOrthogonalDL(8, seed=1)
    for b in range(0, 2000, 50):
        dl.partial_fit(Y[:, b: b + 50])
        assert float(torch.linalg.matrix_norm(dl.D, 2)) <= 1 + 1e-12  # D_t in conv(O(n))
        D = dl.dictionary
        assert float((D.T @ D - I(8)).abs().max()) < 1e-10
    assert dl.n_seen == 2000 and dl.t == 40


def test_recovery_on_easy_planted_case_and_random_fails():
    Y, D0, _ = planted_dictionary(8, 4000, 0.2, seed=3)
    dl = OnlineOrthogonalDL(8, seed=0)
    for b in range(0, 4000, 20):
        dl.partial_fit(Y[:, b: b + 20])
    assert recovery(dl.dictionary, D0) == 1.0
    assert recovery(msp_batch(Y, 30), D0) == 1.0
    assert recovery(random_orthogonal(8, 5), D0) < 0.5
    # recovery is invariant to signs and permutations of the atoms
    P = D0[:, torch.randperm(8)] * torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
    assert recovery(P, D0) == 1.0
    assert alternating_procrustes(Y, iters=5).shape == (8, 8)


def test_dictionary_bad_input():
    with pytest.raises(ValueError, match="theta"):
        planted_dictionary(4, 10, theta=1.5)
    with pytest.raises(ValueError, match="Y must be"):
        OnlineOrthogonalDL(4).partial_fit(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="p must be"):
        OnlineOrthogonalDL(4, p=2.0)
    with pytest.raises(ValueError, match="G must be"):
        polar(torch.zeros(2, 3))


# ---------------------------------------------------------------- orthogonal convolutions

def _delta_kernel(c_out, c_in, k, M):
    K = torch.zeros(c_out, c_in, k, k, dtype=torch.float64)
    K[:, :, k // 2, k // 2] = M
    return K


def test_regulariser_zero_for_orthogonal_kernels_positive_otherwise():
    k = 3
    assert float(orth_reg(_delta_kernel(4, 4, k, I(4)))) < 1e-24
    Q = random_orthogonal(4, 0)
    assert float(orth_reg(_delta_kernel(4, 4, k, Q))) < 1e-24
    Q6 = random_orthogonal(6, 1)
    assert float(orth_reg(_delta_kernel(6, 3, k, Q6[:, :3]), "column")) < 1e-24  # isometry C_in=3 → C_out=6
    assert float(orth_reg(_delta_kernel(3, 6, k, Q6[:3]), "row")) < 1e-24
    # a non-trivial orthogonal kernel: the 1-D Haar-like pair spread over two taps, K = [a b; b -a]/√2 ⊗ shifts
    K = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    K[0, 0, 1, 1], K[0, 1, 1, 2], K[1, 0, 1, 1], K[1, 1, 1, 2] = 1, 1, 1, -1
    K = K / math.sqrt(2)
    W = conv_matrix(K, 5)
    assert float((W.T @ W - I(50)).abs().max()) < 1e-12 and float(orth_reg(K)) < 1e-24
    g = torch.Generator().manual_seed(0)
    assert float(orth_reg(torch.randn(4, 4, k, k, generator=g, dtype=torch.float64))) > 1e-3
    assert float(orth_reg(1.01 * _delta_kernel(4, 4, k, I(4)))) > 0


@pytest.mark.parametrize("c_out,c_in,k", [(3, 2, 3), (2, 3, 3), (2, 2, 5), (1, 1, 3)])
def test_regulariser_equals_frobenius_error_over_n2(c_out, c_in, k):
    g = torch.Generator().manual_seed(c_out * 10 + c_in + k)
    K = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) / k
    for n in (2 * k - 1, 2 * k + 2):
        W = conv_matrix(K, n)
        row = float((W @ W.T - I(W.shape[0])).pow(2).sum()) / n**2
        col = float((W.T @ W - I(W.shape[1])).pow(2).sum()) / n**2
        assert row == pytest.approx(float(orth_reg(K, "row")), rel=1e-10)
        assert col == pytest.approx(float(orth_reg(K, "column")), rel=1e-10)
        assert col - row == pytest.approx(c_in - c_out, abs=1e-9)
        torch.testing.assert_close(torch.linalg.svdvals(W)[: min(c_out, c_in) * n * n], conv_singular_values(K, n))
    if k == 3:  # n < 2k − 1: the wrap-around breaks the identity
        W = conv_matrix(K, 3)
        col = float((W.T @ W - I(W.shape[1])).pow(2).sum()) / 9
        assert abs(col - float(orth_reg(K, "column"))) > 1e-6


def test_conv_matrix_matches_layer():
    g = torch.Generator().manual_seed(1)
    K = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64)
    W = conv_matrix(K, 6)
    torch.testing.assert_close((x.reshape(4, -1) @ W.T).reshape(4, 3, 6, 6), circular_conv2d(x, K))


def test_gradients_finite_and_floor():
    K = torch.randn(3, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("row", "column", "auto"):
        (grad,) = torch.autograd.grad(orth_reg(K, mode), K)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert orth_reg_lower_bound(2, 4, "column") == 2 and orth_reg_lower_bound(4, 2, "column") == 0
    r = regulariser_floor(2, 4, mode="column", **FAST["floor"])
    assert r["final"] >= r["floor"] - 1e-9 and r["final"] < r["floor"] + 0.2  # stuck at the floor, not at 0
    assert regulariser_floor(4, 2, mode="column", **FAST["floor"])["final"] < 0.05


def test_stability_spectral_error_bounded_in_n():
    K = _delta_kernel(3, 3, 3, I(3))
    K[0, 0, 0, 0] = 0.02
    s = stability_vs_size(K, (8, 16, 32))
    assert s["frob"][2] == pytest.approx(4 * s["frob"][0])  # Frobenius error grows like n
    assert max(s["spectral"]) < 0.1 and s["spectral"][2] <= s["spectral"][0] + 0.01


def test_conv_bad_input():
    with pytest.raises(ValueError, match="odd k"):
        orth_reg(torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        orth_reg(torch.zeros(2, 2, 3, 3), "diag")
    with pytest.raises(ValueError, match="x must be"):
        circular_conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 2, 3, 3))


def test_experiments_smoke():
    from labkit.continual.orthogonal import conv_experiment, dictionary_experiment

    d = dictionary_experiment(seeds=(0,), n=8, checkpoints=(100, 2000))
    assert d["recovery"]["online_fw"][0][-1] == 1.0 and d["recovery"]["random"][0][-1] < 0.5
    c = conv_experiment(lams=(0.0, 1.0), seeds=(0,), channels=4, epochs=1)
    free, reg = c["runs"]
    assert reg["frob"][0] < free["frob"][0]  # the penalty pulls the layer towards orthogonal
    assert all(0.1 < r["acc"][0] <= 1.0 for r in c["runs"])
