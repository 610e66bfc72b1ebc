"""Fast & slow learning in a neural memory network: the slot memory, the synthetic gradient, the fast path, tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.memory.fastslow import (
    QUICK,
    CompareSettings,
    DigitsTask,
    FastSlowNMN,
    SinusoidTask,
    SyntheticGradient,
    content_weights,
    controller_forward,
    empty_memory,
    evaluate,
    fast_step,
    fastslow_compare,
    make_task,
    read,
    train_learner,
    true_grads,
    write,
)

torch.set_num_threads(1)
TINY = dict(key_dim=8, hidden=16, sg_hidden=16)


def _filled_memory(B=3, M=5, d=4, C=3, n_filled=(5, 3, 1), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mem = empty_memory(B, M, d, C, dtype=torch.float64)
    mem.keys = torch.randn(B, M, d, generator=g, dtype=torch.float64)
    mem.values = torch.randn(B, M, C, generator=g, dtype=torch.float64)
    mem.strength = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.5
    for b, n in enumerate(n_filled):
        mem.keys[b, n:], mem.values[b, n:], mem.strength[b, n:] = 0, 0, 0
    return mem


# ---------------------------------------------------------------------------------------------------------
# The memory


def test_read_is_a_convex_combination_of_the_filled_slots():
    mem = _filled_memory()
    q = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r, w = read(mem, q, beta=3.0)
    assert w.shape == (3, 7, 5) and r.shape == (3, 7, 3)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 7, dtype=torch.float64))
    assert (w[1, :, 3:] == 0).all() and (w[2, :, 1:] == 0).all()  # empty slots get nothing
    torch.testing.assert_close(r, w @ mem.values)
    # the reference: softmax of β cos + log strength over the filled slots
    b = 1
    cos = F.cosine_similarity(q[b][:, None], mem.keys[b, :3][None], dim=-1)
    ref = torch.softmax(3.0 * cos + mem.strength[b, :3].log(), dim=-1)
    torch.testing.assert_close(w[b, :, :3], ref)
    # a 2-D query is the same read
    r1, w1 = read(mem, q[:, 0], beta=3.0)
    torch.testing.assert_close(r1, r[:, 0])
    torch.testing.assert_close(w1, w[:, 0])


def test_an_exact_key_at_high_sharpness_reads_exactly_its_slot():
    mem = _filled_memory(n_filled=(5, 5, 5))
    for j in range(5):
        r, w = read(mem, mem.keys[:, j] * 2.5, beta=1e3)  # scale does not matter: cosine addressing
        assert (w.argmax(-1) == j).all() and (w[:, j] > 1 - 1e-6).all()
        torch.testing.assert_close(r, mem.values[:, j])


def test_an_empty_memory_reads_nothing():
    mem = empty_memory(2, 3, 4, 2)
    r, w = read(mem, torch.randn(2, 4), beta=10.0)
    assert torch.equal(w, torch.zeros(2, 3)) and torch.equal(r, torch.zeros(2, 2))
    assert not torch.isnan(content_weights(mem, torch.randn(2, 5, 4), 10.0)).any()


@pytest.mark.parametrize("gate", [0.0, 0.3, 1.0])
def test_write_then_read_returns_the_value(gate):
    g = torch.Generator().manual_seed(2)
    keys, values = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 4, generator=g)
    mem = empty_memory(2, 3, 6, 4)
    mem = write(mem, keys[:, 0], values[:, 0], torch.full((2,), gate), beta=10.0)
    torch.testing.assert_close(read(mem, keys[:, 0], beta=10.0)[0], values[:, 0])  # one slot: exact
    # distinct keys written to fresh slots (gate 0) are read back at high sharpness
    for i in (1, 2):
        mem = write(mem, keys[:, i], values[:, i], torch.zeros(2), beta=10.0)
    for i in range(3):
        torch.testing.assert_close(read(mem, keys[:, i], beta=1e4)[0], values[:, i], atol=1e-4, rtol=0)
    assert mem.filled.all()


def test_write_erases_the_least_used_slot_and_merges_by_the_gate():
    k = torch.eye(4)[None]  # (1, 4, 4) orthogonal keys
    v = torch.eye(3)[None]
    mem = empty_memory(1, 2, 4, 3)
    mem = write(mem, k[:, 0], v[:, 0], torch.zeros(1), beta=10.0)
    mem = write(mem, k[:, 1], v[:, 1], torch.zeros(1), beta=10.0)
    old = mem
    mem = write(mem, k[:, 2], v[:, 2], torch.zeros(1), beta=10.0)  # full: slot 0 (older, less used) goes
    torch.testing.assert_close(mem.keys[0, 0], k[0, 2])
    torch.testing.assert_close(mem.values[0, 0], v[0, 2])
    torch.testing.assert_close(mem.keys[0, 1], old.keys[0, 1])  # the other slot is kept
    # gate 1 into a half-full memory: all the mass merges into the slot the key reads (no fresh slot)
    mem = empty_memory(1, 3, 4, 3)
    mem = write(mem, k[:, 0], v[:, 0], torch.zeros(1), beta=10.0)
    mem = write(mem, k[:, 0], v[:, 1], torch.ones(1), beta=10.0)
    torch.testing.assert_close(mem.strength[0], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(mem.values[0, 0], (v[0, 0] + v[0, 1]) / 2)  # the strength-weighted mean
    # gate g splits the mass: g to the read slot, 1 - g to a fresh one
    mem = empty_memory(1, 3, 4, 3)
    mem = write(mem, k[:, 0], v[:, 0], torch.zeros(1), beta=10.0)
    mem = write(mem, k[:, 0], v[:, 1], torch.tensor([0.25]), beta=10.0)
    torch.testing.assert_close(mem.strength[0], torch.tensor([1.25, 0.75, 0.0]))


def test_memory_errors_name_the_argument():
    mem = empty_memory(2, 3, 4, 5)
    with pytest.raises(ValueError, match="query"):
        read(mem, torch.randn(2, 3), 1.0)
    with pytest.raises(ValueError, match="key"):
        write(mem, torch.randn(2, 3), torch.randn(2, 5), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="value"):
        write(mem, torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="gate"):
        write(mem, torch.randn(2, 4), torch.randn(2, 5), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="n_slots"):
        empty_memory(2, 0, 4, 5)


# ---------------------------------------------------------------------------------------------------------
# The fast step and the synthetic gradient


def test_fast_step_is_each_episodes_own_gradient_step():
    torch.manual_seed(0)
    model = FastSlowNMN(5, 3, **TINY)
    B = 3
    params = model.controller.batched(B)
    x = torch.randn(B, 5)
    h = controller_forward(params, x)
    g = torch.randn(B, 9)
    new = fast_step(params, h, g, lr=0.5)
    for b in range(B):  # the reference: one episode at a time, plain autograd
        single = [p.detach().clone().requires_grad_(True) for p in model.controller.batched(1)]
        (controller_forward(single, x[b:b + 1]) * g[b:b + 1]).sum().backward()
        for p_new, p in zip(new, single):
            torch.testing.assert_close(p_new[b], (p - 0.5 * p.grad)[0])
    # a zero synthetic gradient leaves the weights exactly as they were
    for p_new, p in zip(fast_step(params, h, torch.zeros_like(g), lr=0.5), params):
        assert torch.equal(p_new, p)
    with pytest.raises(ValueError, match="grad_h"):
        fast_step(params, h, torch.zeros(B, 4), lr=0.5)


def test_the_synthetic_gradient_module_learns_a_linear_problems_gradient():
    """L = ½‖A h − v‖²: ∂L/∂h = Aᵀ(A h − v). Keys on the unit sphere (the module reads the unit key)."""
    g = torch.Generator().manual_seed(3)
    d, C = 4, 3
    A = torch.randn(C, d + 1, generator=g)

    def batch(n):
        key = F.normalize(torch.randn(n, d, generator=g), dim=-1)
        h = torch.cat([key, torch.randn(n, 1, generator=g)], -1)
        m, r, v = torch.randn(n, d, generator=g), torch.randn(n, C, generator=g), torch.randn(n, C, generator=g)
        return (h, m, r, v), (h @ A.T - v) @ A

    torch.manual_seed(0)
    sg = SyntheticGradient(d, C, hidden=32)
    inputs, target = batch(256)
    assert torch.equal(sg(*inputs), torch.zeros_like(target))  # zero-initialised output layer
    opt = torch.optim.Adam(sg.parameters(), lr=1e-2)
    for _ in range(200):
        inputs, target = batch(64)
        loss = ((sg(*inputs) - target) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    inputs, target = batch(512)
    with torch.no_grad():
        cos = F.cosine_similarity(sg(*inputs), target, dim=-1).mean().item()
    assert cos > 0.9


def test_a_zero_synthetic_gradient_changes_nothing():
    task = make_task("digits", n_way=3, k_shot=2, n_query=2)
    xs, vs, xq, _ = task.sample(np.random.default_rng(0), 4)
    torch.manual_seed(0)
    model = FastSlowNMN(64, 3, **TINY)
    slow, zero = model(xs, vs, xq, mode="slow"), model(xs, vs, xq, mode="zero")
    assert torch.equal(slow["pred"], zero["pred"])
    for p_slow, p_zero in zip(slow["params"], zero["params"]):
        assert torch.equal(p_slow, p_zero)
    # and in training: the same losses, curves and weights
    a = train_learner(task, "slow", steps=4, meta_batch=4, seed=1, log_every=2, **TINY)
    b = train_learner(task, "zero", steps=4, meta_batch=4, seed=1, log_every=2, **TINY)
    assert a["loss"] == b["loss"] and a["cos"] == b["cos"]
    for (n, p), (_, q) in zip(a["model"].named_parameters(), b["model"].named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)


def test_a_nonzero_synthetic_gradient_moves_the_controller_and_the_reads():
    task = make_task("digits", n_way=3, k_shot=2, n_query=2)
    xs, vs, xq, yq = task.sample(np.random.default_rng(0), 4)
    torch.manual_seed(0)
    model = FastSlowNMN(64, 3, fast_lr=0.5, **TINY)
    og = true_grads(model, task, xs, vs, xq, yq)
    assert og.shape == (4, 6, 9) and og.abs().sum() > 0
    slow, fast = model(xs, vs, xq, mode="slow"), model(xs, vs, xq, mode="oracle", oracle_grads=og)
    assert not torch.equal(slow["pred"], fast["pred"])
    # the first support is written before any fast step: its key is the slow one
    torch.testing.assert_close(fast["h"][0], slow["h"][0])
    with torch.no_grad():  # fast steps still run (with a graph of their own) under no_grad
        fast_ng = model(xs, vs, xq, mode="oracle", oracle_grads=og, create_graph=False)
    torch.testing.assert_close(fast_ng["pred"], fast["pred"])


def test_true_grads_are_the_gradient_of_the_query_loss():
    task = make_task("sinusoid", k_shot=4, n_query=3)
    xs, vs, xq, yq = task.sample(np.random.default_rng(0), 2)
    torch.manual_seed(0)
    model = FastSlowNMN(1, 1, **TINY)
    og = true_grads(model, task, xs, vs, xq, yq)
    out = model(xs, vs, xq, mode="slow")
    loss = ((out["pred"] - yq) ** 2).mean((-1, -2)).sum()  # Σ over episodes of the mean query MSE
    grads = torch.autograd.grad(loss, out["h"])
    torch.testing.assert_close(og, torch.stack(grads, 1))
    assert (og[..., :-1].norm(dim=-1) > 0).all()  # every support key is read by some query


# ---------------------------------------------------------------------------------------------------------
# Tasks


def test_digit_episodes_are_consistent_and_splits_disjoint():
    task = DigitsTask(n_way=4, k_shot=2, n_query=3)
    xs, vs, xq, yq = task.sample(np.random.default_rng(0), 5, "test")
    assert xs.shape == (5, 8, 64) and vs.shape == (5, 8, 4) and xq.shape == (5, 12, 64) and yq.shape == (5, 12)
    assert torch.equal(vs.sum(-1), torch.ones(5, 8))
    pools = task.pools["test"]
    lookup = {img.tobytes(): c for c, imgs in pools.items() for img in imgs}
    for b in range(5):
        ys = vs[b].argmax(-1)
        cls = {}
        for x, y in list(zip(xs[b], ys)) + list(zip(xq[b], yq[b])):
            cls.setdefault(int(y), set()).add(lookup[x.numpy().tobytes()])
        assert all(len(c) == 1 for c in cls.values()) and len(set().union(*cls.values())) == 4
        assert len({x.numpy().tobytes() for x in torch.cat([xs[b], xq[b]])}) == 20  # no image twice
    assert not set(task.pools["test"]) & set(task.pools["train"])
    assert set(task.pools["train"]) == set(task.pools["val"])
    for c in task.pools["train"]:  # train and val hold different images of a class
        a = {x.tobytes() for x in task.pools["train"][c]}
        assert not a & {x.tobytes() for x in task.pools["val"][c]}


def test_rare_classes_are_rare_and_include_exclude_work():
    task = DigitsTask(n_way=5, k_shot=1, n_query=1, rare_digit=0, rare_weight=0.05)
    assert task.rare_classes == (0, 1, 2, 3)
    rng = np.random.default_rng(0)
    lookup = {img.tobytes(): c for split in ("train", "val") for c, imgs in task.pools[split].items() for img in imgs}

    def classes(split, n=200, **kw):
        xs, *_ = task.sample(rng, n, split, **kw)
        return np.array([[lookup[x.numpy().tobytes()] for x in ep] for ep in xs])

    common = DigitsTask(n_way=5, k_shot=1, n_query=1)
    rare_rate = np.isin(classes("train"), task.rare_classes).mean()
    lookup.update({img.tobytes(): c for c, imgs in common.pools["train"].items() for img in imgs})
    xs, *_ = common.sample(np.random.default_rng(0), 200, "train")
    base_rate = np.isin(np.array([[lookup[x.numpy().tobytes()] for x in ep] for ep in xs]), (0, 1, 2, 3)).mean()
    assert rare_rate < base_rate / 3
    inc = classes("val", 50, include=task.rare_classes)
    assert (np.isin(inc, task.rare_classes).sum(1) == 1).all()
    assert not np.isin(classes("val", 50, exclude=task.rare_classes), task.rare_classes).any()


def test_sine_episodes_lie_on_one_sine():
    task = SinusoidTask(k_shot=6, n_query=4)
    xs, vs, xq, yq = task.sample(np.random.default_rng(0), 3)
    x, y = torch.cat([xs, xq], 1)[..., 0].double() * 5, torch.cat([vs, yq], 1)[..., 0].double()
    for b in range(3):  # y = a sin x + c cos x exactly: a least-squares fit leaves nothing
        basis = torch.stack([torch.sin(x[b]), torch.cos(x[b])], -1)
        coef = torch.linalg.lstsq(basis, y[b, :, None]).solution
        torch.testing.assert_close(basis @ coef, y[b, :, None], atol=1e-5, rtol=0)
        assert 0.1 - 1e-4 <= coef.norm() <= 5 + 1e-4
    assert xs.abs().max() <= 1


def test_task_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_way"):
        DigitsTask(n_way=13)
    with pytest.raises(ValueError, match="k_shot"):
        DigitsTask(k_shot=0)
    with pytest.raises(ValueError, match="rare_digit"):
        DigitsTask(rare_digit=8)
    with pytest.raises(ValueError, match="split"):
        DigitsTask().sample(np.random.default_rng(0), 2, "dev")
    with pytest.raises(ValueError, match="task"):
        make_task("omniglot")


# ---------------------------------------------------------------------------------------------------------
# Learners, determinism, the comparison


def test_training_and_evaluation_are_deterministic():
    task = make_task("digits", n_way=3, k_shot=1, n_query=2)
    runs = [train_learner(task, "fastslow", steps=5, meta_batch=4, seed=s, log_every=1, **TINY) for s in (0, 0, 1)]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["cos"] == runs[1]["cos"]
    assert runs[0]["loss"] != runs[2]["loss"]
    accs = [evaluate(r["model"], task, "fastslow", episodes=20, seed=7) for r in runs[:2]]
    assert accs[0] == accs[1] and 0 <= accs[0] <= 1
    x0 = task.sample(np.random.default_rng(4), 2)
    x1 = task.sample(np.random.default_rng(4), 2)
    assert all(torch.equal(a, b) for a, b in zip(x0, x1))


def test_compare_returns_every_learner_and_zero_matches_slow():
    s = CompareSettings(**{**QUICK.__dict__, "steps": 4, "meta_batch": 4, "eval_episodes": 10, "log_every": 2,
                           "key_dim": 8, "hidden": 16})
    r = fastslow_compare("digits", modes=("slow", "zero", "fastslow"), seeds=(0, 1), settings=s, n_way=3,
                         n_query=2)
    assert r["metric"] == "accuracy" and set(r["test"]) == {"slow", "zero", "fastslow"}
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in r["test"].values())
    assert r["test"]["zero"] == r["test"]["slow"] == r["test_off"]["zero"]
    assert r["cos"]["fastslow"].shape == (2, 2) and r["steps"] == [2, 4]
    reg = fastslow_compare("sinusoid", modes=("slow",), seeds=(0,), settings=s, k_shot=3, n_query=2)
    assert reg["metric"] == "mse" and reg["test"]["slow"][0] > 0


def test_learner_errors_name_the_argument():
    task = make_task("digits", n_way=3, k_shot=1, n_query=1)
    xs, vs, xq, _ = task.sample(np.random.default_rng(0), 2)
    model = FastSlowNMN(64, 3, **TINY)
    with pytest.raises(ValueError, match="mode"):
        model(xs, vs, xq, mode="fast")
    with pytest.raises(ValueError, match="xs"):
        model(xs[..., :10], vs, xq)
    with pytest.raises(ValueError, match="vs"):
        model(xs, vs[..., :2], xq)
    with pytest.raises(ValueError, match="oracle_grads"):
        model(xs, vs, xq, mode="oracle")
    with pytest.raises(ValueError, match="generator"):
        model(xs, vs, xq, mode="random")
    with pytest.raises(ValueError, match="steps"):
        train_learner(task, "slow", steps=0)
    with pytest.raises(ValueError, match="modes"):
        fastslow_compare(modes=("slow", "medium"))
    with pytest.raises(ValueError, match="fast_lr"):
        FastSlowNMN(64, 3, fast_lr=-1.0)


def test_an_untied_reader_is_untouched_by_the_fast_path():
    """Untied, the queries are encoded by a reader with slow weights only: the fast path changes the writes, not
    the query keys. Tied, the adapted controller encodes the queries too."""
    task = make_task("digits", n_way=3, k_shot=1, n_query=2)
    xs, vs, xq, yq = task.sample(np.random.default_rng(0), 3, "test")
    for tied in (False, True):
        torch.manual_seed(0)
        model = FastSlowNMN(64, 3, fast_lr=1.0, tied=tied, **TINY)
        assert (model.reader is None) == tied
        og = true_grads(model, task, xs, vs, xq, yq)
        slow, fast = model(xs, vs, xq, mode="slow"), model(xs, vs, xq, mode="oracle", oracle_grads=og)
        assert not torch.equal(fast["params"][0], slow["params"][0])  # the writer moved
        assert not torch.equal(fast["h"][2], slow["h"][2])  # and so did a later write
        assert torch.equal(fast["query_keys"], slow["query_keys"]) is (not tied)
