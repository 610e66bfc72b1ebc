"""Chapter 4 rehearsal: the view-batch sampler, digit views, the (H)PCR losses, the runs and the experiments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.continual.data import digits_split, permuted_digits, split_digits
from labkit.continual.models import MLP
from labkit.continual.rehearsal import (
    ONLINE_METHODS,
    DigitAugment,
    ProxyClassifier,
    ViewBatchSampler,
    aggregate,
    load,
    online_run,
    proxy_contrastive_loss,
    proxy_distillation_loss,
    recall_intervals,
    rehearsal_experiment,
    train_views,
    view_batch_run,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------
# The sampler


@pytest.mark.parametrize("views", [1, 2, 4])
def test_sampler_counts_views_and_steps(views):
    n, B, E = 96, 16, 8  # V·n a multiple of B: no batch straddles two cycles
    s = ViewBatchSampler(n, B, views, E, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == math.ceil(E * n / B)
    flat = torch.cat(batches)
    assert len(flat) == E * n  # the same number of items whatever V is
    assert torch.bincount(flat, minlength=n).tolist() == [E] * n  # every example E times (V divides E)
    for b in batches:  # the V copies of an example share one batch
        _, counts = torch.unique(b, return_counts=True)
        assert (counts % views == 0).all()
    visits = sum(np.bincount(torch.unique(b).numpy(), minlength=n) for b in batches)
    assert (visits == E // views).all()


def test_sampler_recall_interval_grows_with_views():
    n, B, E = 240, 24, 16
    means = {}
    for v in (1, 2, 4, 8):
        s = ViewBatchSampler(n, B, v, E, seed=0)
        gaps = recall_intervals(list(s), n)
        assert len(gaps) == n * (E // v - 1)
        means[v] = gaps.mean()
        assert means[v] == pytest.approx(s.recall_interval, rel=0.1)  # V·n/B steps
    assert means[1] < means[2] < means[4] < means[8]
    assert means[8] / means[1] == pytest.approx(8, rel=0.15)


def test_sampler_deterministic_and_truncates():
    a = [b.tolist() for b in ViewBatchSampler(50, 10, 2, 3, seed=1)]
    assert a == [b.tolist() for b in ViewBatchSampler(50, 10, 2, 3, seed=1)]
    assert a != [b.tolist() for b in ViewBatchSampler(50, 10, 2, 3, seed=2)]
    assert sum(len(b) for b in a) == 150  # E = 3 is not a multiple of V = 2: the second cycle is cut in half
    odd = torch.cat(list(ViewBatchSampler(101, 16, 1, 8, seed=3)))  # n not a multiple of B: same item count
    assert len(odd) == 808 and torch.bincount(odd).tolist() == [8] * 101


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0, "batch_size": 4}, "n"), ({"n": 10, "batch_size": 0}, "batch_size"),
    ({"n": 10, "batch_size": 6, "views": 4}, "batch_size"), ({"n": 10, "batch_size": 4, "views": 0}, "views"),
    ({"n": 10, "batch_size": 4, "epochs": 1.5}, "epochs"), ({"n": 10, "batch_size": 4, "seed": -1}, "seed"),
])
def test_sampler_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ViewBatchSampler(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Digit views


def _raw(task_x, info, perm=None):
    z = task_x
    if perm is not None:
        z = torch.empty_like(task_x)
        z[:, torch.as_tensor(perm)] = task_x
    return (z * torch.tensor(info["std"], dtype=torch.float32) + torch.tensor(info["mean"], dtype=torch.float32))


def test_augment_identity_and_shifts_on_permuted_digits():
    task = permuted_digits(2, seed=0)[1]
    info = digits_split(0).info
    x = task.x_train[:40]
    same = DigitAugment.for_task(task, 0, max_shift=0, noise=0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-4, rtol=0)
    aug = DigitAugment.for_task(task, 0, max_shift=1, noise=0.0)
    out = aug(x, torch.Generator().manual_seed(0))
    raw_in = _raw(x, info, task.info["permutation"]).reshape(-1, 8, 8)
    raw_out = _raw(out, info, task.info["permutation"]).reshape(-1, 8, 8)
    padded = F.pad(raw_in, (1, 1, 1, 1))
    n_shifted = 0
    for i in range(len(x)):  # each view is one of the 9 one-pixel shifts of its image (blank fill)
        shifts = [padded[i, 1 - dy: 9 - dy, 1 - dx: 9 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        errs = [float((raw_out[i] - s).abs().max()) for s in shifts]
        assert min(errs) < 1e-3
        n_shifted += errs[4] > 1e-3
    assert n_shifted > 20  # most views moved (8 of 9 shifts do)


def test_augment_deterministic_noise_and_bad_input():
    task = split_digits(5, seed=0)[0]
    aug = DigitAugment.for_task(task, 0, noise=1.0)
    x = task.x_train[:16]
    a, b = aug(x, torch.Generator().manual_seed(5)), aug(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, aug(x, torch.Generator().manual_seed(6)))
    info = digits_split(0).info
    with pytest.raises(ValueError, match="mean"):
        DigitAugment(info["mean"][:10], info["std"])
    with pytest.raises(ValueError, match="max_shift"):
        DigitAugment(info["mean"], info["std"], max_shift=5)
    with pytest.raises(ValueError, match="noise"):
        DigitAugment(info["mean"], info["std"], noise=-1.0)
    with pytest.raises(ValueError, match="permutation"):
        DigitAugment(info["mean"], info["std"], permutation=np.zeros(64, dtype=int))
    with pytest.raises(ValueError, match="x must be"):
        aug(x[:, :10], torch.Generator())


# ---------------------------------------------------------------------------------------------------------
# Losses


def test_pcr_hand_computed_ignores_absent_classes():
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # class 2 not in the batch
    loss = proxy_contrastive_loss(z, y, proxies, tau=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # with class 2 present, its proxy joins the denominator of every anchor
    z3, y3 = torch.cat([z, torch.tensor([[-1.0, 0.0]])]), torch.tensor([0, 1, 2])
    l0 = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    l1 = -math.log(math.e / (math.e + 2))
    assert proxy_contrastive_loss(z3, y3, proxies, tau=1.0).item() == pytest.approx((l0 + l1 + l0) / 3, abs=1e-6)


def test_hpcr_holistic_hand_computed():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = math.e
    want = (2 * (math.log(2 * e + 2) - 1) + (math.log(e + 3) - 1)) / 3
    got = proxy_contrastive_loss(z, y, proxies, tau=1.0, sample_pairs=True)
    assert got.item() == pytest.approx(want, abs=1e-6)
    # below min_batch the sample pairs are left out: plain PCR
    torch.testing.assert_close(proxy_contrastive_loss(z, y, proxies, 0.5, sample_pairs=True, min_batch=4),
                               proxy_contrastive_loss(z, y, proxies, 0.5))


def test_pcr_matches_cross_entropy_over_present_classes():
    g = torch.Generator().manual_seed(0)
    z, proxies = torch.randn(12, 5, generator=g), torch.randn(7, 5, generator=g)
    y = torch.tensor([1, 3, 3, 6, 1, 1, 6, 3, 3, 1, 6, 6])
    present = torch.tensor([1, 3, 6])
    cos = F.normalize(z, dim=1) @ F.normalize(proxies[present], dim=1).T
    remap = torch.searchsorted(present, y)
    want = F.cross_entropy(cos / 0.2, remap)
    torch.testing.assert_close(proxy_contrastive_loss(z, y, proxies, tau=0.2), want)


def test_decoupled_temperature_scales_the_gradient():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 6, generator=g, requires_grad=True)
    proxies = torch.randn(4, 6, generator=g)
    y = torch.randint(0, 4, (10,), generator=g)
    base = proxy_contrastive_loss(z, y, proxies, tau=0.2, sample_pairs=True)
    (gb,) = torch.autograd.grad(base, z)
    dec = proxy_contrastive_loss(z, y, proxies, tau=0.2, tau_grad=0.05, sample_pairs=True)
    (gd,) = torch.autograd.grad(dec, z)
    assert dec.item() == pytest.approx(4 * base.item(), rel=1e-6)
    torch.testing.assert_close(gd, 4 * gb)
    assert torch.isfinite(gd).all() and gd.abs().sum() > 0


def test_loss_gradients_finite_with_a_zero_feature():
    z = torch.zeros(4, 3)
    z[1:] = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    z.requires_grad_(True)
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = proxy_contrastive_loss(z, torch.tensor([0, 1, 1, 2]), w, 0.1, 0.05, sample_pairs=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"y": torch.tensor([0, 5])}, "y"), ({"tau": 0.0}, "tau"), ({"tau_grad": -1.0}, "tau_grad"),
    ({"proxies": torch.randn(3, 4)}, "proxies"), ({"z": torch.randn(2)}, "z"), ({"min_batch": -2}, "min_batch"),
    ({"y": torch.tensor([0.0, 1.0])}, "y"),
])
def test_loss_bad_input(kwargs, name):
    args = {"z": torch.randn(2, 3), "y": torch.tensor([0, 1]), "proxies": torch.randn(3, 3)} | kwargs
    with pytest.raises(ValueError, match=name):
        proxy_contrastive_loss(**args)


def test_distillation_zero_when_unchanged_and_bad_input():
    g = torch.Generator().manual_seed(4)
    z, w = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    assert proxy_distillation_loss(z, w, z, w, [0, 1, 2]).item() == pytest.approx(0.0, abs=1e-6)
    z_new = z.clone().requires_grad_(True)
    z_old = z + torch.randn(6, 5, generator=g)
    loss = proxy_distillation_loss(z_new, w, z_old, w, [0, 1, 2], tau=0.5)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(z_new.grad).all() and z_new.grad.abs().sum() > 0
    # KL over the old classes only: class 3's proxy does not matter
    w2 = w.clone()
    w2[3] = torch.randn(5, generator=g)
    assert proxy_distillation_loss(z, w2, z_old, w, [0, 1, 2], 0.5).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="old_classes"):
        proxy_distillation_loss(z, w, z, w, [])
    with pytest.raises(ValueError, match="old_classes"):
        proxy_distillation_loss(z, w, z, w, [7])
    with pytest.raises(ValueError, match="z_new and z_old"):
        proxy_distillation_loss(z, w, z[:3], w, [0])


def test_proxy_classifier_is_cosine():
    torch.manual_seed(0)
    mlp = MLP(64, (16,), 10)
    clf = ProxyClassifier(mlp)
    x = torch.randn(5, 64)
    out = clf(x)
    assert out.shape == (5, 10) and out.abs().max() <= 1 + 1e-6
    want = F.cosine_similarity(mlp.features(x)[:, None], mlp.head.weight[None], dim=-1)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Runs and experiments


def test_train_views_checks_and_runs():
    task = split_digits(5, seed=0)[0]
    torch.manual_seed(0)
    model = MLP(64, (32,), 10)
    with pytest.raises(ValueError, match="sampler.n"):
        train_views(model, task, ViewBatchSampler(10, 4, 2, 1))
    s = ViewBatchSampler(len(task.y_train), 16, 4, 4, seed=0)
    losses = train_views(model, task, s, DigitAugment.for_task(task, 0))
    assert losses.shape == (len(s),) and np.isfinite(losses).all() and losses[-5:].mean() < losses[:5].mean()


def test_view_batch_run_deterministic():
    kw = {"n_tasks": 2, "epochs": 2, "views": 2, "batch_size": 32, "hidden": (32,)}
    a = view_batch_run("split", replay=True, seed=1, **kw)
    b = view_batch_run("split", replay=True, seed=1, **kw)
    np.testing.assert_array_equal(a.R, b.R)
    with pytest.raises(ValueError, match="stream"):
        view_batch_run("rotated", **kw)


def test_online_run_deterministic_and_bad_input():
    a = online_run("hpcr", seed=0, n_tasks=2, hidden=(32,))
    b = online_run("hpcr", seed=0, n_tasks=2, hidden=(32,))
    np.testing.assert_array_equal(a.R, b.R)
    assert a.R[0, 0] > 0.8  # the first two classes are learned in one pass
    with pytest.raises(ValueError, match="method"):
        online_run("icarl")
    with pytest.raises(ValueError, match="tau_g"):
        online_run("hpcr", tau_g=0.0)
    assert set(ONLINE_METHODS) >= {"er", "pcr", "hpcr"}


def test_rehearsal_experiment_fast():
    vb = rehearsal_experiment("view_batch", fast=True, seed=0)
    assert set(vb["runs"]) == {f"permuted/{s}/{r}" for s in ("standard", "view4") for r in ("none", "replay")}
    for sched in ("standard", "view4"):  # replay keeps the old permutations better than no replay
        assert vb["runs"][f"permuted/{sched}/replay"]["BWT"] > vb["runs"][f"permuted/{sched}/none"]["BWT"] + 0.1
    on = rehearsal_experiment("online", fast=True, seed=0)
    assert set(on["runs"]) == {"er", "pcr", "hpcr"}
    assert all(0.1 < r["ACC"] <= 1 for r in on["runs"].values())
    stats = aggregate([on, on])
    assert stats["er"]["ACC"][1] == 0.0
    with pytest.raises(ValueError, match="experiment"):
        rehearsal_experiment("joint")


def test_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="labkit.continual.rehearsal"):
        load(tmp_path / "missing.json")
    try:
        full = load()
    except FileNotFoundError:
        pytest.skip("full run not committed")
    assert set(full) == {"view_batch", "online"} and len(full["online"]) >= 3
