"""Chapter 4 foundation: task streams, parameter dicts, the accuracy matrix, replay, EWC and the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.continual.data import digits_split, drifting_stream, permuted_digits, split_digits
from labkit.continual.metrics import AccuracyMatrix, plot_acc_so_far, plot_accuracy_matrix
from labkit.continual.models import MLP, get_params, set_params, task_vector
from labkit.continual.train import (
    EWCPenalty,
    ReplayBuffer,
    accuracy,
    fisher_diagonal,
    powerlaw_probs,
    run_sequence,
    train_task,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------
# Metrics on a hand-computed matrix

R_HAND = [[0.90, 0.10, 0.20],
          [0.95, 0.80, 0.10],
          [0.50, 0.70, 0.95]]


def test_metrics_match_hand_computed_values():
    am = AccuracyMatrix(R_HAND)
    assert am.acc == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert am.bwt == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)  # -0.25
    # Chaudhry: the best *earlier* accuracy, not the diagonal: task 0 peaked at 0.95 after task 1.
    np.testing.assert_allclose(am.forgetting_per_task, [0.95 - 0.50, 0.80 - 0.70])
    assert am.forgetting == pytest.approx(0.275)
    np.testing.assert_allclose(am.acc_so_far, [0.90, (0.95 + 0.80) / 2, (0.50 + 0.70 + 0.95) / 3])
    assert am.learning_accuracy == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    assert AccuracyMatrix.from_dict(am.to_dict()).summary() == pytest.approx(am.summary())


def test_matrix_filled_row_by_row_and_validation():
    am = AccuracyMatrix.empty(3)
    with pytest.raises(ValueError, match="row 0 is not recorded"):
        _ = am.acc
    for i, row in enumerate(R_HAND):
        am.record(i, row)
    assert am.complete and am.bwt == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="square"):
        AccuracyMatrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AccuracyMatrix([[1.2, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="row 1"):
        AccuracyMatrix([[0.5, 0.5], [0.5, np.nan]])
    with pytest.raises(ValueError, match="shape"):
        am.record(0, [0.5, 0.5])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        _ = AccuracyMatrix([[0.9]]).bwt


def test_plots_carry_the_matrix():
    am = AccuracyMatrix(R_HAND, names=["a", "b", "c"])
    fig = plot_accuracy_matrix(am)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), R_HAND)
    fig = plot_acc_so_far({"x": [am, am]})
    np.testing.assert_allclose(fig.data[-1].y, am.acc_so_far)
    with pytest.raises(ValueError, match="3 tasks"):
        plot_acc_so_far({"x": am, "y": AccuracyMatrix([[0.5, 0.5], [0.5, 0.5]])})


# ---------------------------------------------------------------------------------------------------------
# Data


def test_permuted_tasks_are_permutations_of_the_same_images():
    tasks = permuted_digits(4, seed=0)
    base = digits_split(0)
    perms = [t.info["permutation"] for t in tasks]
    np.testing.assert_array_equal(perms[0], np.arange(64))  # identity_first
    for t, p in zip(tasks, perms):
        assert sorted(p.tolist()) == list(range(64))
        assert torch.equal(t.x_train, base.x_train[:, torch.from_numpy(p)])
        assert torch.equal(t.y_test, base.y_test) and t.x_train.dtype == torch.float32
    assert all(not np.array_equal(perms[a], perms[b]) for a in range(4) for b in range(a + 1, 4))
    other = permuted_digits(2, seed=0, identity_first=False)
    assert not np.array_equal(other[0].info["permutation"], np.arange(64))
    again, reseeded = permuted_digits(4, seed=0), permuted_digits(4, seed=1)
    assert torch.equal(again[3].x_train, tasks[3].x_train)
    assert not np.array_equal(reseeded[1].info["permutation"], perms[1])


def test_split_is_stratified_standardised_and_disjoint():
    base = digits_split(0)
    assert len(base.y_train) + len(base.y_test) == 1797
    assert set(base.info["train_idx"]).isdisjoint(base.info["test_idx"])
    assert base.x_train.mean(0).abs().max() < 1e-4  # standardised with the training statistics
    for c in range(10):  # stratified: each class ~20 % in test
        n_te, n_tr = int((base.y_test == c).sum()), int((base.y_train == c).sum())
        assert abs(n_te / (n_te + n_tr) - 0.2) < 0.01


@pytest.mark.parametrize("n_tasks,shuffle", [(5, False), (5, True), (3, False)])
def test_split_digits_have_disjoint_classes(n_tasks, shuffle):
    tasks = split_digits(n_tasks, seed=0, shuffle_classes=shuffle)
    classes = [set(t.classes) for t in tasks]
    assert set().union(*classes) == set(range(10)) and sum(map(len, classes)) == 10
    for t in tasks:
        assert set(t.y_train.tolist()) == set(t.classes) == set(t.y_test.tolist())
    if n_tasks == 5 and not shuffle:
        assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sum(len(t.y_train) for t in tasks) == len(digits_split(0).y_train)
    with pytest.raises(ValueError, match="class_order"):
        split_digits(5, class_order=[0, 1, 2])


def test_drifting_stream_drifts_gradually():
    s = drifting_stream(n_batches=11, batch_size=8, kind="rotation", max_drift=60.0, seed=0)
    assert s.x.shape == (11, 8, 64) and s.y.shape == (11, 8) and len(s) == 11
    np.testing.assert_allclose(s.drift, np.linspace(0, 60, 11))
    raw = digits_split(0)  # batch 0 is undrifted: its rows are standardised test images of the base split
    assert all((s.x[0][i] - raw.x_test).abs().sum(1).min() < 1e-5 for i in range(8))
    p = drifting_stream(n_batches=5, batch_size=4, kind="permutation", start=0.5, seed=1)
    np.testing.assert_allclose(p.drift, [0, 0, 0, 0.5, 1.0])
    with pytest.raises(ValueError, match="kind"):
        drifting_stream(kind="shear")


# ---------------------------------------------------------------------------------------------------------
# Parameters as dicts


def test_task_vector_and_parameter_dicts():
    torch.manual_seed(0)
    base, tuned = MLP(8, (4,), 3), MLP(8, (4,), 3)
    tv = task_vector(tuned, base)
    assert set(tv) == {n for n, _ in base.named_parameters()}
    for name, p in tuned.named_parameters():
        assert torch.equal(tv[name], p.detach() - dict(base.named_parameters())[name].detach())
    snapshot = get_params(base)
    set_params(base, {k: v + tv[k] for k, v in snapshot.items()})
    assert all(torch.allclose(a, b) for a, b in zip(get_params(base).values(), get_params(tuned).values()))
    with pytest.raises(ValueError, match="head.weight"):
        task_vector(MLP(8, (4,), 5), MLP(8, (4,), 3))  # same names, head shape differs
    with pytest.raises(ValueError, match="layers.1.weight"):
        task_vector(MLP(8, (4, 4), 3), MLP(8, (4,), 3))  # a layer only in finetuned
    bad = dict(snapshot, **{"head.bias": torch.zeros(7)})
    before = get_params(base)
    with pytest.raises(ValueError, match="head.bias"):
        set_params(base, bad)
    assert all(torch.equal(before[k], v) for k, v in get_params(base).items())  # untouched


# ---------------------------------------------------------------------------------------------------------
# Replay


def test_reservoir_never_exceeds_budget_and_keeps_small_streams():
    buf = ReplayBuffer(5, seed=0)
    buf.add(torch.arange(3.0)[:, None], torch.arange(3), task=0)
    assert len(buf) == 3 and sorted(buf.x[:3, 0].tolist()) == [0.0, 1.0, 2.0]
    for k in range(1, 6):
        buf.add(torch.full((7, 1), float(k)), torch.zeros(7, dtype=torch.long), task=k)
        assert len(buf) == 5 and buf.n_seen == 3 + 7 * k


def test_reservoir_inclusion_is_uniform_over_the_stream():
    capacity, n, trials = 10, 100, 1000
    counts = np.zeros(n)
    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    for trial in range(trials):
        buf = ReplayBuffer(capacity, seed=trial)
        buf.add(x[:50], y[:50], task=0)
        buf.add(x[50:], y[50:], task=1)
        counts[buf.stream_index[: len(buf)]] += 1
    freq = counts / trials
    # each example in memory with probability capacity/n = 0.1; binomial sd = 0.0095, bound = 5 sd
    assert np.abs(freq - capacity / n).max() < 0.05
    assert abs(freq[:50].mean() - freq[50:].mean()) < 0.02  # no favour for early or late items


def test_powerlaw_schedule_follows_its_formula():
    ages = np.array([1.0, 2.0, 3.0, 5.0])
    for a in (0.0, 0.5, 1.0, 2.0):
        p = powerlaw_probs(ages, a)
        w = np.array([1.0, 2.0 ** -a, 3.0 ** -a, 5.0 ** -a])
        np.testing.assert_allclose(p, w / w.sum())
        assert math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    np.testing.assert_allclose(powerlaw_probs(ages, 0.0), 0.25)
    assert np.all(np.diff(powerlaw_probs(ages, 1.0)) < 0)
    with pytest.raises(ValueError, match="ages"):
        powerlaw_probs([0.5, 1.0], 1.0)
    with pytest.raises(ValueError, match="exponent"):
        powerlaw_probs([1.0], -1.0)


def test_buffer_samples_tasks_with_the_schedule():
    buf = ReplayBuffer(300, seed=0)
    for k in range(3):
        buf.add(torch.full((100, 1), float(k)), torch.full((100,), k), task=k)
    probs = dict(zip(range(3), powerlaw_probs(3 - np.arange(3), 1.0)))  # ages 3, 2, 1
    _, y = buf.sample(20000, np.random.default_rng(0), probs)
    freq = np.bincount(y.numpy(), minlength=3) / 20000
    np.testing.assert_allclose(freq, [probs[0], probs[1], probs[2]], atol=0.015)
    with pytest.raises(ValueError, match="not in memory"):
        buf.sample(4, np.random.default_rng(0), {0: 0.5, 7: 0.5})


# ---------------------------------------------------------------------------------------------------------
# EWC


def _brute_force_fisher(model, x):
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xi in x:
        log_p = F.log_softmax(model(xi[None]), -1)[0]
        for c in range(len(log_p)):
            grads = torch.autograd.grad(log_p[c], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads):
                out[n] += log_p[c].exp().detach() * g.pow(2)
    return {n: v / len(x) for n, v in out.items()}


def test_fisher_paths_agree_with_a_brute_force_loop():
    torch.manual_seed(0)
    model, x, y = MLP(6, (5, 4), 3), torch.randn(7, 6), torch.randint(0, 3, (7,))
    ref = _brute_force_fisher(model, x)
    for method in ("linear", "vmap"):
        got = fisher_diagonal(model, x, method=method, chunk=3)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)
    emp_l, emp_v = fisher_diagonal(model, x, y, method="linear"), fisher_diagonal(model, x, y, method="vmap")
    for n in emp_l:
        torch.testing.assert_close(emp_l[n], emp_v[n], rtol=1e-5, atol=1e-7)


def test_ewc_penalty_is_zero_at_anchor_and_has_the_stated_gradient():
    torch.manual_seed(0)
    model, lam = MLP(6, (5,), 3), 3.5
    anchor = get_params(model)
    fisher = {n: torch.rand_like(p) for n, p in anchor.items()}
    fisher["layers.0.bias"].zero_()  # parameters the task does not care about are free
    ewc = EWCPenalty(lam)
    assert ewc(model).item() == 0.0  # no task yet
    ewc.add_task(fisher, model)
    assert abs(ewc(model).item()) < 1e-9
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    value = ewc(model)
    want = 0.5 * lam * sum((fisher[n] * (p.detach() - anchor[n]).pow(2)).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(value, want)
    grads = torch.autograd.grad(value, list(model.parameters()))
    for (n, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(g, lam * fisher[n] * (p.detach() - anchor[n]))
    # a second task adds its own quadratic: the gradient is λ Σ_k F_k (θ − θ*_k)
    fisher2, anchor2 = {n: torch.rand_like(p) for n, p in anchor.items()}, get_params(model)
    ewc.add_task(fisher2, anchor2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    value = ewc(model)
    torch.testing.assert_close(value, 0.5 * lam * sum(
        (f[n] * (p.detach() - a[n]).pow(2)).sum() for f, a in ((fisher, anchor), (fisher2, anchor2))
        for n, p in model.named_parameters()))
    grads = torch.autograd.grad(value, list(model.parameters()))
    for (n, p), g in zip(model.named_parameters(), grads):
        want = lam * (fisher[n] * (p.detach() - anchor[n]) + fisher2[n] * (p.detach() - anchor2[n]))
        torch.testing.assert_close(g, want)
    with pytest.raises(ValueError, match="head.weight"):
        ewc.add_task({**fisher, "head.weight": torch.zeros(2, 2)}, anchor)


# ---------------------------------------------------------------------------------------------------------
# Training on a stream


def test_one_task_trains_past_ninety_percent():
    task = permuted_digits(2, seed=0)[1]
    torch.manual_seed(0)
    model = MLP()
    losses = train_task(model, task, seed=0)
    assert losses[-5:].mean() < losses[:5].mean()
    assert accuracy(model, task.x_test, task.y_test) >= 0.9


def test_finetune_forgets_and_joint_does_not():
    tasks = permuted_digits(3, seed=0)
    ft = run_sequence(MLP, tasks, "finetune", seed=0)
    joint = run_sequence(MLP, tasks, "joint", seed=0)
    assert ft.learning_accuracy > 0.85  # each task was learned ...
    assert ft.bwt < -0.08  # ... and then overwritten (measured: -0.14 at seed 0)
    assert joint.bwt > ft.bwt + 0.08 and joint.acc > ft.acc + 0.05  # (measured: -0.01 and +0.09)


def test_run_sequence_is_deterministic():
    tasks = permuted_digits(3, seed=0)
    a = run_sequence(MLP, tasks, "replay_powerlaw", seed=0, epochs=1, memory=50)
    b = run_sequence(MLP, tasks, "replay_powerlaw", seed=0, epochs=1, memory=50)
    np.testing.assert_array_equal(a.R, b.R)
    c = run_sequence(MLP, tasks, "replay_powerlaw", seed=1, epochs=1, memory=50)
    assert not np.array_equal(a.R, c.R)
    e1 = run_sequence(MLP, tasks[:2], "ewc", seed=0, epochs=1)
    e2 = run_sequence(MLP, tasks[:2], "ewc", seed=0, epochs=1)
    np.testing.assert_array_equal(e1.R, e2.R)
    with pytest.raises(ValueError, match="strategy"):
        run_sequence(MLP, tasks, "dropout")
