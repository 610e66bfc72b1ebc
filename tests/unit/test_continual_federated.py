"""Chapter 4 FOT: client split, subspace extraction, projection, the simulation, real gloo processes, bad input."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time

import numpy as np
import pytest
import torch

from labkit.continual.federated import (
    GlobalSubspace,
    federated_experiment,
    layer_grams,
    partition,
    project_out,
    projector,
    run_federated,
    spawn_gloo,
    update_basis,
)
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP

torch.set_num_threads(1)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY = {"n_clients": 4, "n_tasks": 2, "rounds": 2, "hidden": (16,), "stat_samples": 50}


def _orthonormal(d: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------------------------------------
# Splitting


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_partition_covers_every_example_once(split):
    y = np.repeat(np.arange(10), 40)
    shards = partition(y, 4, split, alpha=0.3, seed=3)
    assert len(shards) == 4 and min(len(s) for s in shards) >= 8
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(len(y)))
    again = partition(y, 4, split, alpha=0.3, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_dirichlet_split_is_more_skewed_than_iid():
    y = np.repeat(np.arange(10), 60)

    def skew(shards):  # mean total-variation distance of a client's label histogram from uniform
        return np.mean([0.5 * np.abs(np.bincount(y[s], minlength=10) / len(s) - 0.1).sum() for s in shards])

    iid = skew(partition(y, 4, "iid", seed=0))
    non = skew(partition(y, 4, "dirichlet", alpha=0.1, seed=0))
    assert iid < 0.1 < non


# ---------------------------------------------------------------------------------------------------------
# Subspace and projection


def test_projector_removes_old_subspace_and_keeps_its_complement():
    u = _orthonormal(12, 4, 0)
    p = projector(u)
    g = torch.Generator().manual_seed(1)
    inside = u @ torch.randn(4, generator=g, dtype=torch.float64)
    outside = torch.randn(12, generator=g, dtype=torch.float64)
    outside = outside - u @ (u.T @ outside)
    assert (p @ inside).abs().max() < 1e-12
    torch.testing.assert_close(p @ outside, outside, atol=1e-12, rtol=0)
    torch.testing.assert_close(p @ p, p, atol=1e-12, rtol=0)  # a projector
    m = torch.randn(5, 12, generator=g, dtype=torch.float64)
    assert (project_out(m, u) @ u).abs().max() < 1e-12  # ΔW̃ U = 0
    torch.testing.assert_close(project_out(m, u), m @ p, atol=1e-12, rtol=0)


def test_update_basis_reaches_threshold_with_fewest_directions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 10, dtype=torch.float64)
    c = x.T @ x
    for eps in (0.5, 0.9, 0.99):
        u, r = update_basis(None, c, eps)
        assert u.shape == (10, r)
        torch.testing.assert_close(u.T @ u, torch.eye(r, dtype=torch.float64), atol=1e-10, rtol=0)
        energy = lambda b: float(torch.trace(b.T @ c @ b) / torch.trace(c))  # noqa: E731
        assert energy(u) >= eps - 1e-12
        lam = torch.linalg.eigvalsh(c).flip(0)
        assert float(lam[: r - 1].sum() / lam.sum()) < eps  # one direction fewer would not do


def test_update_basis_grows_only_with_the_residual():
    g = torch.Generator().manual_seed(2)
    old = torch.randn(100, 3, generator=g, dtype=torch.float64) @ _orthonormal(8, 3, 3).T  # rank 3 data
    u, r = update_basis(None, old.T @ old, 0.99)
    assert r == 3
    u2, r2 = update_basis(u, old.T @ old, 0.99)  # the same task again adds nothing
    assert r2 == 0 and torch.equal(u2, u)
    new = torch.randn(100, 2, generator=g, dtype=torch.float64) @ _orthonormal(8, 2, 4).T
    both = torch.cat([old, new])
    u3, r3 = update_basis(u, both.T @ both, 0.999)
    assert r3 == 2 and torch.equal(u3[:, :3], u)
    torch.testing.assert_close(u3.T @ u3, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)


def test_layer_grams_match_the_augmented_inputs():
    torch.manual_seed(0)
    model = MLP(d_in=6, hidden=(5,), n_classes=3)
    x = torch.randn(7, 6)
    grams = layer_grams(model, x)
    assert set(grams) == {"layers.0", "head"}
    a0 = torch.cat([x, torch.ones(7, 1)], 1).double()
    torch.testing.assert_close(grams["layers.0"], a0.T @ a0)
    a1 = torch.cat([model.features(x), torch.ones(7, 1)], 1).double()
    torch.testing.assert_close(grams["head"], a1.T @ a1, atol=1e-6, rtol=1e-6)


def test_projected_update_leaves_old_layer_outputs_unchanged():
    """The whole point: with the old inputs in span(U), W + ΔW̃ (I − UUᵀ) gives the old outputs exactly."""
    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(8,), n_classes=4)
    old = torch.randn(50, 3) @ torch.randn(3, 10)  # old task's inputs span 3 (+1 for the bias) dimensions
    sub = GlobalSubspace(threshold=0.999999)
    sub.update({"layers.0": layer_grams(model, old)["layers.0"]})
    assert sub.ranks["layers.0"] == 4
    delta = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    proj = sub.project(model, delta)
    torch.testing.assert_close(proj["head.weight"], delta["head.weight"])  # no basis for head: untouched
    before = model.layers[0](old)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(proj[n])
    torch.testing.assert_close(model.layers[0](old), before, atol=1e-4, rtol=0)
    raw = torch.nn.functional.linear(old, model.layers[0].weight - proj["layers.0.weight"] + delta["layers.0.weight"],
                                     model.layers[0].bias - proj["layers.0.bias"] + delta["layers.0.bias"])
    assert (raw - before).abs().max() > 0.1  # the unprojected update would have moved them


# ---------------------------------------------------------------------------------------------------------
# The simulation


def test_simulation_is_deterministic_and_fot_forgets_less():
    kw = {"n_tasks": 4, "rounds": 3, "threshold": 0.7}
    res = federated_experiment(["fedavg", "fot"], [0], **kw)
    again = federated_experiment(["fot"], [0], **kw)
    fedavg, fot = res["runs"]
    np.testing.assert_array_equal(np.array(fot["matrix"]["R"]), np.array(again["runs"][0]["matrix"]["R"]))
    R = AccuracyMatrix.from_dict(fot["matrix"])
    assert R.complete and R.n_tasks == 4
    assert fot["update_kept"][0] == 1.0 and all(k < 1.0 for k in fot["update_kept"][1:])
    assert fedavg["update_kept"] == [1.0] * 4 and fedavg["subspace_ranks"] == []
    assert [len(r) for r in fot["subspace_ranks"]] == [3, 3, 3]
    assert fot["subspace_ranks"][1]["layers.0"] >= fot["subspace_ranks"][0]["layers.0"]
    assert fedavg["BWT"] < -0.1  # FedAvg forgets
    assert fot["BWT"] > fedavg["BWT"] + 0.05  # FOT forgets less
    # the first task is learned identically: same seed, no projection yet
    assert fot["matrix"]["R"][0] == fedavg["matrix"]["R"][0]


@pytest.mark.parametrize("kw, match", [
    ({"n_clients": 0}, "n_clients must be a positive int"),
    ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
    ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
    ({"threshold": 1.5}, r"threshold must be in \(0, 1\)"),
    ({"split": "skewed"}, "split must be one of"),
    ({"alpha": 0.0}, "alpha must be > 0"),
    ({"rounds": 0}, "rounds must be a positive int"),
    ({"backend": "nccl"}, "backend must be one of"),
    ({"method": "fedprox"}, "methods must be a non-empty subset"),
    ({"colour": 1}, "unknown settings"),
])
def test_bad_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        run_federated(**kw)


def test_bad_arguments_of_the_parts():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        GlobalSubspace(-0.1)
    with pytest.raises(ValueError, match="gram must be a square"):
        update_basis(None, torch.zeros(3, 4), 0.5)
    with pytest.raises(ValueError, match="n_clients \\* min_size"):
        partition(np.zeros(10, dtype=int), 4, "iid", min_size=3)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        spawn_gloo(_ok_worker, 0)
    with pytest.raises(ValueError, match="ranks must be distinct"):
        spawn_gloo(_ok_worker, 2, ranks=[0, 2])


# ---------------------------------------------------------------------------------------------------------
# Real processes (gloo)


def _ok_worker(rank: int, world_size: int) -> int:
    return rank


def _raising_worker(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on purpose")
    import torch.distributed as dist

    dist.barrier()  # rank 0 waits for rank 1, which never comes: the parent must stop it


@pytest.mark.slow
def test_gloo_processes_match_the_simulation():
    sim = federated_experiment(["fot"], [0], threshold=0.9, keep_theta=True, **TINY)
    gloo = federated_experiment(["fot"], [0], threshold=0.9, keep_theta=True, backend="gloo", timeout=240, **TINY)
    a, b = sim["runs"][0], gloo["runs"][0]
    np.testing.assert_allclose(np.array(b["theta"]), np.array(a["theta"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(b["matrix"]["R"]), np.array(a["matrix"]["R"]), atol=1e-6)
    assert a["subspace_ranks"] == b["subspace_ranks"]
    t = gloo["timing"]
    assert len(t["ranks"]) == 4 and 0 < t["start_overhead"] < t["wall"]
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_gloo_worker_error_is_a_runtime_error_and_nothing_hangs():
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"gloo worker failed: rank 1 raised ValueError: boom on purpose"):
        spawn_gloo(_raising_worker, 2, timeout=120, init_timeout=60)
    assert time.perf_counter() - t0 < 110  # not the collective timeout: the parent stopped rank 0
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_gloo_group_that_cannot_form_is_a_runtime_error():
    # world_size 2 but only rank 0 is started: the rendezvous times out
    with pytest.raises(RuntimeError, match="process group did not start"):
        spawn_gloo(_ok_worker, 2, ranks=[0], timeout=120, init_timeout=3)
    assert not multiprocessing.active_children()


def test_port_in_use_is_a_runtime_error_after_retries():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        sk.bind(("127.0.0.1", 0))
        sk.listen(1)
        port = sk.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"after 2 tries: port {port} .* in use"):
            spawn_gloo(_ok_worker, 2, port=port, retries=2)
    assert not multiprocessing.active_children()
