"""labkit.assoc.sparsey: familiarity, single-trial learning, noise-free reactivation of a stored code, random codes
for novel inputs, similarity preservation against its closed form (one stored item) and monotone with many, recall
after one presentation, and the error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.assoc import sparsey as sp
from labkit.assoc.sdr import add_noise, random_sdrs


def test_learning_and_familiarity():
    field = sp.SparseyField(100, Q=6, K=4, seed=0)
    x = random_sdrs(1, 100, 10, seed=1)[0]
    V, G = field.familiarity(x)
    assert V.shape == (1, 6, 4) and float(G) == 0.0  # nothing learned: everything is novel
    code = field.learn(x)
    assert code.shape == (6,) and int(field.W.sum()) == 10 * 6  # one presentation: w × Q weights set
    assert torch.equal(field.W[x].any(0).nonzero().flatten(), field.cells(code))
    _, G = field.familiarity(x)
    assert float(G) == 1.0
    assert torch.equal(field.retrieve(x), code)
    assert torch.equal(field.choose_code(x, learning=True), code)  # G = 1: no noise, the same code
    y = sp.similar_input(x, 6, seed=2)
    assert float(field.familiarity(y)[1]) == pytest.approx(0.6)  # G = the shared fraction
    V1, G1 = field.familiarity(y)  # one input takes the row-sum path, a batch the matrix product: the same numbers
    Vb, Gb = field.familiarity(torch.stack([y, x]))
    assert torch.equal(V1[0], Vb[0]) and float(G1) == float(Gb[0])


def test_novel_inputs_get_random_codes():
    field = sp.SparseyField(64, Q=20, K=5, seed=3)
    codes = field.choose_code(random_sdrs(500, 64, 8, seed=4))
    counts = torch.stack([torch.bincount(codes[:, q], minlength=5) for q in range(20)]).double()
    # uniform: each cell wins 100 ± 9 times per CM; allow 5 standard deviations
    assert float((counts - 100).abs().max()) < 5 * np.sqrt(500 * 0.2 * 0.8)
    ov = sp.code_overlap(codes[:250], codes[250:])
    assert float(ov.mean()) == pytest.approx(0.2, abs=0.02)


def test_similarity_preservation_matches_closed_form():
    r = sp.similarity_experiment(n_in=256, w=32, Q=16, K=8, n_items=1, n_trials=300, noise=3.0, seed=0)
    assert r["similarity"][0] == 0 and r["similarity"][-1] == 1
    tol = 4.5 * np.maximum(r["se"], 1e-3)
    assert np.all(np.abs(r["code_overlap"] - r["predicted"]) <= tol), (r["code_overlap"], r["predicted"])
    assert r["predicted"][0] == pytest.approx(1 / 8) and r["code_overlap"][-1] == 1.0
    np.testing.assert_allclose(sp.predicted_code_overlap([0.0, 0.75, 0.9, 1.0], 8, 3.0), [1 / 8, 1, 1, 1])


def test_similarity_preservation_monotone_with_many_items():
    r = sp.similarity_experiment(n_in=256, w=32, Q=16, K=8, n_items=20, n_trials=150, seed=1)
    assert np.all(np.diff(r["code_overlap"]) >= -3 * r["se"][1:] - 3 * r["se"][:-1])
    assert r["code_overlap"][-1] == 1.0 and r["code_overlap"][0] < 0.35
    assert np.corrcoef(r["similarity"], r["code_overlap"])[0, 1] > 0.95


def test_single_trial_recall():
    r = sp.recall_experiment([30], n_in=512, w=32, Q=16, K=8, moved=6, n_probe=30, n_seeds=2, seed=0)
    assert r["accuracy"].min() == 1.0 and r["code_overlap"].min() > 0.9 and r["distinct"].min() == 1.0
    field = sp.SparseyField(200, Q=8, K=6, seed=5)
    items = random_sdrs(10, 200, 16, seed=6)
    codes = field.store(items)
    assert codes.shape == (10, 8) and torch.equal(field.codes, codes)
    assert torch.equal(sp.identify(field, field.retrieve(add_noise(items, 3, seed=7))), torch.arange(10))


def test_weight_fill_matches_closed_form():
    # huge novelty noise: every code is uniformly random, so each weight is set by an item with prob (w/n_in)(1/K)
    field = sp.SparseyField(256, Q=8, K=4, noise=1e6, seed=0)
    field.store(random_sdrs(50, 256, 16, seed=1))
    want = sp.predicted_fill(50, 256, 16, 4)
    assert want == pytest.approx(1 - (1 - 1 / 64) ** 50)
    assert float(field.W.double().mean()) == pytest.approx(want, abs=0.03)
    np.testing.assert_allclose(sp.predicted_fill([0, 1], 256, 16, 4), [0.0, 1 / 64])


def test_recall_against_load_and_noise():
    r = sp.recall_experiment([10, 300], n_in=256, w=16, Q=8, K=4, moved=[0, 4, 8], n_probe=40, n_seeds=1, seed=2)
    assert r["accuracy"].shape == (1, 2, 3) and r["moved"].tolist() == [0, 4, 8]
    assert r["accuracy"][0, 0, 0] == 1.0  # few items, clean cue
    assert r["accuracy"][0, 1].max() < 0.5  # 300 items saturate this small field
    assert np.all(np.diff(r["accuracy"][0, 0]) <= 0)  # more noise never helps here
    assert r["fill"][0, 1] > r["fill"][0, 0] and r["novel_G"][0, 1] > r["novel_G"][0, 0] + 0.3
    assert r["distinct"][0, 0] == 1.0 and r["distinct"][0, 1] < 0.9
    one = sp.recall_experiment([10], n_in=256, w=16, Q=8, K=4, moved=4, n_probe=10, n_seeds=1)
    assert one["accuracy"].shape == (1, 1) and one["moved"] == 4


def test_superposition_episodic_and_semantic():
    r = sp.superposition_experiment([0.2, 3.0], n_classes=4, per_class=6, keep=20, n_in=1024, w=32, Q=12, K=8,
                                    n_new=3, seed=0)
    low, mid = 0, 1
    # noise 3: every exemplar has its own code (episodic) and same-class codes overlap far above chance (semantic)
    assert r["distinct"][mid] == 1.0 and r["episodic"][mid] == 1.0
    assert r["within"][mid] > r["between"][mid] + 0.15 and r["between"][mid] < 2 * r["chance"]
    assert r["G_proto"][mid] > 0.9 and r["G_novel"][mid] < 0.5  # the unseen prototype looks familiar
    assert r["semantic"][mid] >= 0.9
    # almost no noise: a class's exemplars share one code, so episodes are lost but the class survives
    assert r["distinct"][low] < 0.5 and r["within"][low] > 0.9
    assert 0.3 < r["input_within"] < 0.5 and r["input_between"] < 0.1


def test_zero_noise_is_deterministic():
    x = random_sdrs(3, 50, 5, seed=8)
    a = sp.SparseyField(50, 4, 3, noise=0.0, seed=0).choose_code(x)
    assert bool((a == 0).all())  # all V = 0: ties go to the first cell


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: sp.SparseyField(10, 4, 1), ValueError, r"K must be an integer >= 2, got 1"),
        (lambda: sp.SparseyField(10, 4, 3, noise=-1.0), ValueError, r"noise must be a finite number >= 0"),
        (lambda: sp.SparseyField(10, 4, 3).learn(torch.ones(11, dtype=torch.bool)), ValueError,
         r"x must have shape \(n_in,\) or \(B, n_in\) with n_in = 10, got \(11,\)"),
        (lambda: sp.SparseyField(10, 4, 3).learn(torch.zeros(10, dtype=torch.bool)), ValueError,
         r"x must have at least one ON bit"),
        (lambda: sp.SparseyField(10, 4, 3).learn(torch.ones(10)), TypeError, r"x must be a bool tensor"),
        (lambda: sp.identify(sp.SparseyField(10, 4, 3), torch.zeros(4, dtype=torch.long)), ValueError,
         r"field must hold at least one stored item"),
        (lambda: sp.predicted_code_overlap([1.5], 4, 1.0), ValueError, r"s must lie in \[0, 1\]"),
        (lambda: sp.similar_input(random_sdrs(1, 20, 4)[0], 5), ValueError, r"keep must be in 0..w = 0..4, got 5"),
        (lambda: sp.predicted_fill(10, 8, 16, 4), ValueError, r"w must be <= n_in = 8, got 16"),
        (lambda: sp.recall_experiment([5], n_in=64, w=8, Q=4, K=4, moved=[-1]), ValueError,
         r"moved must be an integer >= 0, got -1"),
        (lambda: sp.superposition_experiment([1.0], n_classes=1), ValueError, r"n_classes must be an integer >= 2"),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
