"""Chapter 4 sculpting subspaces: the projection, the energy rank rule, the constraint during training, bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.continual.data import permuted_digits
from labkit.continual.models import MLP, get_params
from labkit.continual.sculpt import (
    FAST,
    SubspaceConstraint,
    energy_rank,
    extend_basis,
    project_update,
    sculpt_experiment,
    train_task_constrained,
)

torch.set_num_threads(1)


def _orth(d: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]


@pytest.mark.parametrize("seed", range(5))
def test_projected_update_has_no_protected_component(seed):
    g = torch.Generator().manual_seed(seed)
    U, V = _orth(7, 3, seed), _orth(5, 2, seed + 100)
    delta = torch.randn(7, 5, generator=g, dtype=torch.float64)
    p = project_update(delta, U, V)
    assert (U.T @ p).abs().max() < 1e-12  # left: U_rᵀ ΔW = 0
    assert (p @ V).abs().max() < 1e-12  # right: ΔW V_r = 0
    torch.testing.assert_close(project_update(p, U, V), p)  # a projection
    # what is removed lies in the protected subspace: delta - p = UUᵀΔ + ΔVVᵀ - UUᵀΔVVᵀ
    left = project_update(delta, U, None)
    assert (U.T @ left).abs().max() < 1e-12 and (left @ V).abs().max() > 1e-3  # one side only


def test_energy_rank_threshold():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1, 0 of 14
    assert energy_rank(s, 0.5) == 1  # 9/14 = 0.64
    assert energy_rank(s, 0.65) == 2  # 13/14 = 0.93
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 0.5, captured=10.0, total=24.0) == 1  # 10 < 12, 10 + 9 >= 12
    assert energy_rank(s, 0.4, captured=10.0, total=24.0) == 0  # already met
    # brute force on random spectra: smallest r with energy >= threshold
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.rand(9, generator=g, dtype=torch.float64).sort(descending=True).values
        t = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        e = s.pow(2)
        r = energy_rank(s, t)
        assert e[:r].sum() >= t * e.sum() - 1e-12
        assert r == 0 or e[: r - 1].sum() < t * e.sum()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match="threshold"):
        energy_rank(torch.tensor([1.0]), bad)
    with pytest.raises(ValueError, match="threshold"):
        SubspaceConstraint(MLP(hidden=(8,)), threshold=bad)


def test_other_bad_input():
    with pytest.raises(ValueError, match="side"):
        SubspaceConstraint(MLP(hidden=(8,)), side="top")
    with pytest.raises(ValueError, match="names"):
        SubspaceConstraint(MLP(hidden=(8,)), names=["head.bias"])
    with pytest.raises(ValueError, match="descending"):
        energy_rank(torch.tensor([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="U must have"):
        project_update(torch.zeros(3, 2), torch.zeros(4, 1), None)


def test_extend_basis_is_orthonormal_and_drops_dependent():
    B = _orth(6, 2, 0)
    new = torch.cat([B[:, :1] * 2.0, _orth(6, 2, 1)], 1)  # first column is already in span(B)
    E = extend_basis(B, new)
    assert E.shape == (6, 4)
    torch.testing.assert_close(E.T @ E, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_update_grows_ranks_and_training_keeps_protected_part():
    torch.manual_seed(0)
    tasks = permuted_digits(2, seed=0)
    model = MLP(hidden=(32,))
    con = SubspaceConstraint(model, threshold=0.8)
    train_task_constrained(model, tasks[0], con, epochs=1)
    r1 = con.update(model)
    assert all(0 < ru <= 32 and rv > 0 for ru, rv in r1.values())
    before = get_params(model)
    train_task_constrained(model, tasks[1], con, epochs=1, seed=1)
    after = get_params(model)
    for n in con.names:
        d = (after[n] - before[n]).double()
        assert d.abs().max() > 1e-4  # it did learn
        assert (con.U[n].T @ d).abs().max() < 1e-5
        assert (d @ con.V[n]).abs().max() < 1e-5
    r2 = con.update(model)
    assert all(r2[n][0] >= r1[n][0] and r2[n][1] >= r1[n][1] for n in r1)  # protected subspace only grows
    assert len(con.history) == 2


def test_fast_experiment_runs_and_trades_plasticity():
    res = sculpt_experiment(**FAST)
    m = res["methods"]
    assert set(m) == {"finetune", "ewc", "replay_uniform", "sculpt@0.5", "sculpt@0.9"}
    # a larger protected subspace forgets less (BWT closer to 0) than plain fine-tuning
    assert m["sculpt@0.9"]["BWT"][0] > m["finetune"]["BWT"][0]
    ranks = res["ranks"]["sculpt@0.9"]["ranks"][0]
    assert len(ranks) == FAST["n_tasks"]
