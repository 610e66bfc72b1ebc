"""labkit.snn.hlop: the projection leaves old inputs' outputs unchanged (layer property test and a whole network
trained on a new task), the Hebbian rules find a known principal subspace (rate, Sanger, spiking, deflation over
tasks), the fast second-moment update equals the batch rule, principal angles in closed form, HLOP forgets less
than naive SGD on split digits, determinism, and every validation error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.continual.data import Task, split_digits
from labkit.continual.federated import project_out
from labkit.continual.models import MLP
from labkit.snn.hlop import (
    HebbianSubspace,
    augmented_inputs,
    hlop_experiment,
    mean_matrix,
    principal_angles,
    project_gradients,
    rank_sweep,
    run_method,
    subspace_convergence,
    summary_rows,
    svd_subspace,
    task_accuracy,
    task_logits,
    train_task,
)


def synthetic(d: int = 16, k: int = 4, n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, d) with covariance Q diag(λ) Qᵀ, a gap after the k-th eigenvalue; returns x and Q[:, :k]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    lam = torch.cat([torch.linspace(10.0, 5.0, k), torch.linspace(1.0, 0.1, d - k)]).double()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * lam.sqrt() @ q.T
    return x, q[:, :k]


# ---------------------------------------------------------------------------------------------------------
# The projection


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 24), out=st.integers(1, 8), frac=st.floats(0.1, 0.9), seed=st.integers(0, 10_000))
def test_projected_update_leaves_old_inputs_outputs_unchanged(d, out, frac, seed):
    """(W + ΔW(I − UUᵀ)) x = W x for every x in span(U), U the exact span of the old inputs; and the projection
    removes only the span(U) part (it is the identity on updates whose rows are ⟂ U)."""
    g = torch.Generator().manual_seed(seed)
    n_old = max(1, int(frac * d))
    x_old = torch.randn(n_old, d, generator=g, dtype=torch.float64)
    u = svd_subspace(x_old, n_old)
    w, dw = (torch.randn(out, d, generator=g, dtype=torch.float64) for _ in range(2))
    w_new = w + project_out(dw, u)
    assert torch.allclose(x_old @ w_new.T, x_old @ w.T, atol=1e-9 * (1 + dw.abs().max()))
    perp = dw - (dw @ u) @ u.T
    assert torch.allclose(project_out(perp, u), perp, atol=1e-10)


def _old_and_new(seed: int = 0) -> tuple[torch.Tensor, Task]:
    g = torch.Generator().manual_seed(seed)
    x_old = torch.randn(5, 8, generator=g)
    xn, yn = torch.randn(40, 8, generator=g), torch.randint(2, 4, (40,), generator=g)
    return x_old, Task("new", xn, yn, xn[:8], yn[:8], (2, 3))


@pytest.mark.parametrize("protect", [True, False])
def test_network_projection_keeps_old_task_outputs(protect):
    """Train an MLP on a new task with every hidden layer's gradient projected out of the exact span of the old
    inputs' activities: the old task's logits stay put (float32 rounding); without the projection they move."""
    torch.manual_seed(0)
    model = MLP(d_in=8, hidden=(16, 16), n_classes=4)
    x_old, new = _old_and_new()
    bases = [svd_subspace(a, int(torch.linalg.matrix_rank(a))) for a in augmented_inputs(model, x_old)]
    before = task_logits(model, x_old, (0, 1)).detach()
    train_task(model, new, bases=bases if protect else None, epochs=20, lr=0.1, batch_size=8, seed=1)
    after = task_logits(model, x_old, (0, 1)).detach()
    assert torch.isinf(after[:, 2:]).all()
    change = (after[:, :2] - before[:, :2]).abs().max().item()
    if protect:
        assert change < 1e-4
    else:
        assert change > 1e-2


def test_project_gradients_matches_project_out():
    torch.manual_seed(0)
    model = MLP(d_in=6, hidden=(5,), n_classes=3)
    model(torch.randn(4, 6)).sum().backward()
    g = torch.cat([model.layers[0].weight.grad, model.layers[0].bias.grad[:, None]], 1).clone()
    u = torch.linalg.qr(torch.randn(7, 3, dtype=torch.float64)).Q
    project_gradients(model, [u])
    got = torch.cat([model.layers[0].weight.grad, model.layers[0].bias.grad[:, None]], 1)
    assert torch.allclose(got, project_out(g, u), atol=1e-6)
    assert torch.allclose(got.double() @ u, torch.zeros(5, 3, dtype=torch.float64), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Hebbian subspace learning


@pytest.mark.parametrize("kw", [{}, {"rule": "sanger"}, {"spiking_timesteps": 40, "spiking_scale": 12.0}])
def test_hebbian_rule_finds_the_known_top_k_subspace(kw):
    x, top = synthetic()
    hs = HebbianSubspace(16, lr=0.5, seed=1, **kw)
    hs.add_neurons(4)
    start = np.degrees(principal_angles(hs.H.T, top)).max()
    hs.fit(x, epochs=4, batch_size=128, iterations=2, seed=2)
    assert start > 30.0
    assert np.degrees(principal_angles(hs.H.T, top)).max() < 3.0  # the true eigenvectors
    assert np.degrees(principal_angles(hs.H.T, svd_subspace(x, 4))).max() < 2.0  # the sample's exact top-4
    assert hs.orthonormality_error() < 0.1
    if kw.get("rule") == "sanger":  # GHA: the rows are the eigenvectors themselves, in order
        cos = (hs.H / hs.H.norm(dim=1, keepdim=True)) @ top
        assert (cos.diag().abs() > 0.98).all()


def test_frozen_neurons_do_not_move_and_new_ones_deflate():
    """Two neurons learn the top-2, freeze; two new neurons learn the next two: together the top-4 subspace."""
    x, top = synthetic()
    hs = HebbianSubspace(16, lr=0.5, seed=3)
    hs.add_neurons(2)
    hs.fit(x, epochs=4, batch_size=128, iterations=2, seed=4)
    hs.freeze()
    frozen = hs.H.clone()
    hs.add_neurons(2)
    assert hs.k == 4 and hs.n_fixed == 2
    assert float((hs.H[2:] @ frozen.T).abs().max()) < 1e-10  # new neurons start orthogonal to the frozen ones
    hs.fit(x, epochs=4, batch_size=128, iterations=2, seed=5)
    assert torch.equal(hs.H[:2], frozen)
    assert np.degrees(principal_angles(hs.H.T, top)).max() < 3.0


@pytest.mark.parametrize("rule", ["oja", "sanger"])
def test_second_moment_update_equals_batch_rule(rule):
    x, _ = synthetic(n=50)
    hs = HebbianSubspace(16, rule=rule, seed=0)
    hs.add_neurons(3)
    hs.freeze()
    hs.add_neurons(2)
    direct = hs.delta(x)
    assert torch.equal(direct[:3], torch.zeros(3, 16, dtype=torch.float64))
    assert torch.allclose(hs._delta_free(x.T @ x / len(x)), direct[3:], atol=1e-10)


def test_principal_angles_closed_form():
    for theta in (0.0, 0.3, 1.0, math.pi / 2):
        a = torch.tensor([[1.0], [0.0], [0.0]])
        b = torch.tensor([[math.cos(theta)], [math.sin(theta)], [0.0]])
        assert principal_angles(a, b)[0] == pytest.approx(theta, abs=1e-7)
    e = torch.eye(4, dtype=torch.float64)
    assert np.allclose(principal_angles(e[:, :2], e[:, [1, 0]] * 3.0), 0.0, atol=1e-7)
    assert np.allclose(principal_angles(e[:, :2], e[:, 2:]), math.pi / 2)


def test_svd_subspace_extends_an_orthonormal_basis():
    x, top = synthetic()
    u = svd_subspace(x, 2)
    u2 = svd_subspace(x, 2, u)
    assert u2.shape == (16, 4)
    assert torch.allclose(u2.T @ u2, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert torch.equal(u2[:, :2], u)
    assert np.degrees(principal_angles(u2, top)).max() < 5.0


def test_subspace_convergence_curve_decreases():
    x, _ = synthetic()
    c = subspace_convergence(x, 4, epochs=2, batch_size=64, every=5, seed=0)
    assert c["step"][0] == 0 and len(c["step"]) == len(c["max_angle"]) == len(c["energy"])
    assert c["max_angle"][-1] < 5.0 < c["max_angle"][0]
    assert 0.99 < c["energy"][-1] <= 1.0 + 1e-9


# ---------------------------------------------------------------------------------------------------------
# The continual experiment


TINY = dict(epochs=10, lr=0.1, hidden=(32, 32), k_first=(10, 10), k_inc=(5, 5))


def test_hlop_forgets_less_than_naive_on_split_digits():
    tasks = split_digits(5, seed=0, shuffle_classes=True)
    naive = run_method(tasks, "naive", seed=0, **TINY)["matrix"]
    hlop = run_method(tasks, "hlop", seed=0, **TINY)
    assert naive.bwt < -0.1  # the setting really forgets ...
    assert hlop["matrix"].bwt > naive.bwt + 0.1  # ... and HLOP keeps most of it
    assert hlop["matrix"].forgetting < 0.06
    assert hlop["matrix"].learning_accuracy > 0.95
    assert hlop["ranks"][-1] == [30, 30]
    assert all(0.0 <= r < 0.5 for row in hlop["residual"] for r in row)


def test_run_method_is_deterministic():
    tasks = split_digits(3, seed=1, shuffle_classes=True)
    kw = dict(TINY, epochs=2, k_inc=(3, 3))
    a, b = (run_method(tasks, "hlop_spiking", seed=4, **kw) for _ in range(2))
    assert np.array_equal(a["matrix"].R, b["matrix"].R)
    assert a["residual"] == b["residual"]
    x, _ = synthetic(n=200)
    h1, h2 = HebbianSubspace(16, seed=9), HebbianSubspace(16, seed=9)
    for h in (h1, h2):
        h.add_neurons(3)
        h.fit(x, epochs=1, seed=1)
    assert torch.equal(h1.H, h2.H)


def test_joint_and_svd_run_and_task_accuracy_uses_the_task_head():
    tasks = split_digits(2, seed=0)
    for m in ("joint", "svd"):
        r = run_method(tasks, m, seed=0, **dict(TINY, epochs=2, k_inc=(5, 5)))
        assert r["matrix"].complete
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[tasks[0].classes[0]] = 100.0  # always predicts the first class of task 0
    acc = task_accuracy(model, tasks[0])
    assert acc == pytest.approx(float((tasks[0].y_test == tasks[0].classes[0]).double().mean()))


def test_hlop_experiment_is_json_and_summarised():
    res = hlop_experiment(seeds=(0,), methods=("naive",), n_tasks=2, conv_k=3, conv_epochs=1, epochs=1,
                          hidden=(16,), k_first=(4,), k_inc=(2,))
    json.dumps(res)
    rows = summary_rows(res)
    assert rows[0]["method"] == "naive" and rows[0]["seeds"] == 1
    assert set(res["convergence"]) == {"oja", "sanger", "oja, spiking T=40"}
    m = mean_matrix(res, "naive")
    assert np.allclose(m.R, res["methods"]["naive"]["R"][0]) and m.names == ["task 1", "task 2"]
    with pytest.raises(ValueError, match="method must be one of"):
        mean_matrix(res, "hlop")


def test_rank_sweep_reports_protected_fraction():
    res = rank_sweep(scales=(1.0, 2.0), seeds=(0,), hidden=(16,), k_first=(4,), k_inc=(2,), n_tasks=2, epochs=1)
    assert res["fraction"] == [[6 / 65], [12 / 65]]
    assert len(res["ACC"]) == 2 and len(res["ACC"][0]) == 1
    with pytest.raises(ValueError, match="scales and seeds must be non-empty"):
        rank_sweep(scales=())
    with pytest.raises(ValueError, match="scale must be in"):
        rank_sweep(scales=(-1.0,))


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_errors():
    hs = HebbianSubspace(5)
    with pytest.raises(ValueError, match="k must be at most"):
        hs.add_neurons(6)
    with pytest.raises(ValueError, match="k must be a positive int"):
        hs.add_neurons(0)
    hs.add_neurons(2)
    with pytest.raises(ValueError, match=r"x must be a non-empty \(B, 5\)"):
        hs.step(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must be a non-empty \(B, 5\)"):
        hs.response(torch.zeros(5))
    with pytest.raises(ValueError, match="rule must be one of"):
        HebbianSubspace(5, rule="hebb")
    with pytest.raises(ValueError, match="lr must be in"):
        HebbianSubspace(5, lr=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        HebbianSubspace(5, momentum=1.0)
    with pytest.raises(ValueError, match="spiking_timesteps must be a positive int"):
        HebbianSubspace(5, spiking_timesteps=0)
    with pytest.raises(ValueError, match="d must be a positive int"):
        HebbianSubspace(0)
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(torch.eye(3)[:, :1], torch.eye(4)[:, :1])
    with pytest.raises(ValueError, match=r"a must be a \(d, k\) tensor"):
        principal_angles(torch.eye(3)[:, :0], torch.eye(3)[:, :1])
    with pytest.raises(ValueError, match="k must be at most d - r = 1"):
        svd_subspace(torch.randn(10, 3), 2, torch.eye(3, dtype=torch.float64)[:, :2])
    with pytest.raises(ValueError, match=r"basis must be \(d, r\) with d = 3"):
        svd_subspace(torch.randn(10, 3), 1, torch.eye(4, dtype=torch.float64)[:, :1])


def test_network_bad_input_errors():
    tasks = split_digits(5, seed=0)
    model = MLP(hidden=(8,))
    with pytest.raises(ValueError, match="method must be one of"):
        run_method(tasks, "ewc")
    with pytest.raises(ValueError, match=r"layer 0: k_first \+ k_inc·\(T−1\) = 85 neurons must be at most"):
        run_method(tasks, "hlop", hidden=(8,), k_first=(65,), k_inc=(5,))
    with pytest.raises(ValueError, match="k_first must be an int or have one entry per hidden layer"):
        run_method(tasks, "hlop", hidden=(8, 8), k_first=(5,))
    with pytest.raises(ValueError, match="bases must have one entry per hidden layer"):
        project_gradients(model, [None, None])
    model(torch.randn(2, 64)).sum().backward()
    with pytest.raises(ValueError, match=r"bases\[0\] must be \(65, r\)"):
        project_gradients(model, [torch.zeros(64, 2)])
    with pytest.raises(ValueError, match=r"x must be \(N, 64\)"):
        augmented_inputs(model, torch.zeros(3, 10))
    with pytest.raises(ValueError, match="classes must be non-empty labels in 0..9"):
        task_logits(model, torch.zeros(2, 64), (3, 12))
    with pytest.raises(ValueError, match="a class mask must be"):
        task_logits(model, torch.zeros(2, 64), torch.ones(3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="lateral must have one entry per hidden layer"):
        train_task(model, tasks[0], lateral=[])
    with pytest.raises(ValueError, match="model must be a labkit.continual.MLP"):
        augmented_inputs(torch.nn.Linear(64, 2), torch.zeros(1, 64))
