"""Chapter 4 merging: batch merges, continual mergers, OPCM's projection and norm rule, bad input, the experiment."""

from __future__ import annotations

import copy

import pytest
import torch

from labkit.continual.merging import (
    OPCM,
    ContinualAverage,
    ContinualTaskArithmetic,
    average,
    merge_stream,
    merging_experiment,
    opcm_project,
    split_rank,
    task_arithmetic,
    ties,
)
from labkit.continual.models import MLP, get_params

torch.set_num_threads(1)


def _params(seed: int, shapes=(("w", (6, 5)), ("v", (4, 6)), ("b", (6,)))) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g, dtype=torch.float64) for n, s in shapes}


def _models(base, k: int, seed: int = 1, scale: float = 0.5):
    return [{n: base[n] + scale * v for n, v in _params(seed + i).items()} for i in range(k)]


def _close(a, b, atol=1e-10):
    assert set(a) == set(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Batch merges on hand-computed cases


def test_task_arithmetic_and_average_hand_computed():
    base = {"w": torch.tensor([1.0, 2.0, 3.0])}
    tv = [{"w": torch.tensor([1.0, -2.0, 0.0])}, {"w": torch.tensor([3.0, 4.0, -1.0])}]
    _close(task_arithmetic(base, tv, scale=0.5), {"w": torch.tensor([3.0, 3.0, 2.5])})
    models = [{"w": base["w"] + t["w"]} for t in tv]
    _close(average(models), {"w": torch.tensor([3.0, 3.0, 2.5])})


def test_ties_hand_computed():
    base = {"a": torch.zeros(2), "b": torch.zeros(3)}
    # P = 5 entries per task vector, density 0.6 keeps the 3 largest magnitudes of each.
    t1 = {"a": torch.tensor([4.0, -0.1]), "b": torch.tensor([2.0, -3.0, 0.2])}   # keeps 4, 2, -3
    t2 = {"a": torch.tensor([-1.0, 0.3]), "b": torch.tensor([5.0, 1.0, 0.0])}    # keeps -1, 5, 1
    t3 = {"a": torch.tensor([-2.0, 0.0]), "b": torch.tensor([-1.0, -0.5, 0.0])}  # keeps -2, -1, -0.5
    # entry a0: 4, -1, -2 -> sum 1 > 0, agreeing {4} -> 4
    # entry a1: nothing kept -> 0
    # entry b0: 2, 5, -1 -> +, agreeing {2, 5} -> 3.5
    # entry b1: -3, 1, -0.5 -> sum -2.5, agreeing {-3, -0.5} -> -1.75
    # entry b2: nothing kept -> 0
    out = ties(base, [t1, t2, t3], density=0.6, scale=2.0)
    _close(out, {"a": torch.tensor([8.0, 0.0]), "b": torch.tensor([7.0, -3.5, 0.0])}, atol=1e-6)


def test_ties_full_density_no_conflict_is_mean():
    base = _params(0)
    tv = [{n: v.abs() for n, v in _params(s).items()} for s in (1, 2, 3)]  # all positive: no sign conflict
    expected = {n: base[n] + torch.stack([t[n] for t in tv]).mean(0) for n in base}
    _close(ties(base, tv, density=1.0, scale=1.0), expected)


# ---------------------------------------------------------------------------------------------------------
# Continual = batch


def test_continual_average_and_task_arithmetic_equal_batch():
    base = _params(0)
    models = _models(base, 5)
    tvs = [{n: m[n] - base[n] for n in base} for m in models]
    _close(merge_stream(ContinualAverage(base), models), average(models))
    _close(merge_stream(ContinualTaskArithmetic(base, 0.3), models), task_arithmetic(base, tvs, 0.3))
    # and after every prefix of the stream
    ta = ContinualTaskArithmetic(base, 0.7)
    for t, m in enumerate(models, start=1):
        ta.update(m)
        _close(ta.merged(), task_arithmetic(base, tvs[:t], 0.7))


# ---------------------------------------------------------------------------------------------------------
# OPCM


def test_split_rank():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative mass 0.4, 0.7, 0.9, 1.0
    assert split_rank(s, 0.3) == 1
    assert split_rank(s, 0.4) == 1
    assert split_rank(s, 0.5) == 2
    assert split_rank(s, 0.95) == 4


@pytest.mark.parametrize("shape", [(7, 5), (4, 9)])
def test_opcm_projection_is_orthogonal_to_the_principal_subspace(shape):
    g = torch.Generator().manual_seed(3)
    delta, tau = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g,
                                                                                    dtype=torch.float64)
    proj, r = opcm_project(delta, tau, alpha=0.5, projection="two_sided")
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    assert r == split_rank(S, 0.5) and 1 <= r < min(shape)
    Ur, Vr = U[:, :r], Vh[:r].T
    assert (Ur.T @ proj).abs().max() < 1e-12
    assert (proj @ Vr).abs().max() < 1e-12
    # the explicit formula τ − P_U τ − τ P_V + P_U τ P_V, and the projection is idempotent
    PU, PV = Ur @ Ur.T, Vr @ Vr.T
    torch.testing.assert_close(proj, tau - PU @ tau - tau @ PV + PU @ tau @ PV, atol=1e-12, rtol=0)
    torch.testing.assert_close(opcm_project(delta, proj, 0.5, "two_sided")[0], proj, atol=1e-12, rtol=0)
    # what it keeps is not nothing: the complement has rank > 0
    assert proj.norm() > 0


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_opcm_masked_projection_matches_the_full_basis_mask(shape):
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(*shape, generator=g, dtype=torch.float64)
    tau = torch.randn(*shape, generator=g, dtype=torch.float64)
    proj, r = opcm_project(delta, tau, alpha=0.5)  # the default is the paper's masked projection
    U, S, Vh = torch.linalg.svd(delta, full_matrices=True)
    assert r == split_rank(S, 0.5)
    P = U.T @ tau @ Vh.T  # tau in delta's full singular bases
    k = min(shape)
    P[torch.arange(k), torch.arange(k)] = 0
    P[:r, :r] = 0
    torch.testing.assert_close(proj, U @ P @ Vh, atol=1e-12, rtol=0)
    assert abs(float((proj * delta).sum())) < 1e-10                       # Frobenius-orthogonal to delta
    assert (U[:, :r].T @ proj @ Vh[:r].T).abs().max() < 1e-12            # nothing in the dominant block
    torch.testing.assert_close(opcm_project(delta, proj, 0.5)[0], proj, atol=1e-12, rtol=0)  # idempotent
    # the cross blocks survive (unlike the two-sided projection), so it keeps strictly more than two-sided here
    assert (U[:, :r].T @ proj).abs().max() > 1e-3
    with pytest.raises(ValueError, match="projection must be one of"):
        opcm_project(delta, tau, 0.5, projection="both")


def test_opcm_norm_rule_and_orthogonal_updates():
    base = _params(0)
    models = _models(base, 6, seed=10)
    m = OPCM(base, alpha=0.5)
    norms = []
    for t, theta in enumerate(models, start=1):
        tau = {n: theta[n] - base[n] for n in base}
        norms.append(torch.sqrt(sum(tau[n].pow(2).sum() for n in m.matrices)).item())
        before = copy.deepcopy(m.D) if t > 1 else None
        m.update(theta)
        mtv = m.merged_task_vector()
        merged_norm = torch.sqrt(sum(mtv[n].pow(2).sum() for n in m.matrices)).item()
        assert merged_norm == pytest.approx(sum(norms) / t, rel=1e-10)
        if t == 1:
            _close(m.merged(), theta)  # the first model is taken as is
        else:
            for n in m.matrices:  # the accumulated update grew by a vector orthogonal to the old merged update
                step = m.D[n] - before[n]
                U, S, Vh = torch.linalg.svd(before[n], full_matrices=False)
                r = m.last_ranks[n]
                assert abs(float((step * before[n]).sum())) < 1e-10 * float(before[n].norm() * step.norm())
                assert (U[:, :r].T @ step @ Vh[:r].T).abs().max() < 1e-10
        # biases: the plain running mean of their task vectors
        torch.testing.assert_close(mtv["b"], torch.stack([x["b"] - base["b"] for x in models[:t]]).mean(0),
                                   atol=1e-12, rtol=0)


def test_opcm_on_an_mlp_is_deterministic():
    torch.manual_seed(0)
    base = MLP(d_in=8, hidden=(6,), n_classes=3)
    models = []
    for s in range(3):
        torch.manual_seed(100 + s)
        models.append({n: p.detach() + 0.1 * torch.randn_like(p) for n, p in base.named_parameters()})
    a = merge_stream(OPCM(base, 0.4), models)
    b = merge_stream(OPCM(get_params(base), 0.4), models)
    for n in a:
        assert torch.equal(a[n], b[n])


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_errors():
    base = _params(0)
    good = _models(base, 2)
    wrong_name = {("u" if n == "w" else n): v for n, v in good[0].items()}
    wrong_shape = dict(good[0], b=torch.zeros(7, dtype=torch.float64))
    for bad, word in ((wrong_name, "'u'"), (wrong_shape, "'b'")):
        for make in (ContinualAverage, ContinualTaskArithmetic, OPCM):
            with pytest.raises(ValueError, match=word):
                make(base).update(bad)
        with pytest.raises(ValueError, match=word):
            average([good[0], bad])
        with pytest.raises(ValueError, match=word):
            task_arithmetic(base, [{n: good[1][n] - base[n] for n in base}, bad])
        with pytest.raises(ValueError, match=word):
            ties(base, [bad])
    for alpha in (0.0, 1.0, -0.2, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            OPCM(base, alpha)
        with pytest.raises(ValueError, match="alpha"):
            opcm_project(base["w"], base["w"], alpha)
    for merger in (ContinualAverage(base), ContinualTaskArithmetic(base), OPCM(base)):
        with pytest.raises(ValueError, match="empty"):
            merger.merged()
        with pytest.raises(ValueError, match="empty"):
            merge_stream(merger, [])
    with pytest.raises(ValueError, match="empty"):
        average([])
    with pytest.raises(ValueError, match="empty"):
        task_arithmetic(base, [])
    with pytest.raises(ValueError, match="density"):
        ties(base, good, density=0.0)
    with pytest.raises(ValueError, match="regime"):
        merging_experiment("medium")


@pytest.mark.parametrize("make", [ContinualAverage, ContinualTaskArithmetic, OPCM])
def test_failed_update_leaves_the_state_unchanged(make):
    base = _params(0)
    models = _models(base, 3)
    merger = make(base)
    for m in models[:2]:
        merger.update(m)
    state = copy.deepcopy(merger.__dict__)
    merged = merger.merged()
    bad_shape = dict(models[2], b=torch.zeros(7, dtype=torch.float64))
    bad_value = dict(models[2], b=torch.full((6,), float("nan"), dtype=torch.float64))  # fails after compat check
    for bad in (bad_shape, bad_value):
        with pytest.raises(ValueError):
            merger.update(bad)
        assert merger.n_models == 2
        for k, v in state.items():
            if isinstance(v, dict):
                for n in v:
                    w = getattr(merger, k)[n]
                    assert torch.equal(v[n], w) if isinstance(w, torch.Tensor) else v[n] == w
            else:
                assert getattr(merger, k) == v
        _close(merger.merged(), merged, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The experiment (tiny)


def test_merging_experiment_tiny_is_deterministic_and_sane():
    kw = dict(n_orders=2, n_tasks=3, hidden=(16,), pretrain_steps=10, finetune_epochs=1, oracle_grid=(0.1, 0.5))
    a = merging_experiment("strong", seed=0, **kw)
    b = merging_experiment("strong", seed=0, **kw)
    for m in a["acc"]:
        assert a["acc"][m] == b["acc"][m]
    # order-invariant merges give the same final ACC in every order; after one task, average = OPCM = the model
    for m in ("average", "task_arithmetic", "ties", "oracle_ta"):
        per = a["final"][m]["per_order"]
        assert max(per) - min(per) < 1e-9
    for o in range(2):
        assert a["acc"]["average"][o][0] == a["acc"]["opcm"][o][0]
    assert all(0.0 <= x <= 1.0 for row in a["opcm_removed"] for x in row)
