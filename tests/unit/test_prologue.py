"""Unit tests for labkit.prologue (chapter 0: outer-product memory, Hopfield, softmax attention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit import data
from labkit import prologue as P


def test_orthonormal_keys_recall_exactly():
    keys = data.orthogonal_keys(16, 32, seed=1)
    values = np.random.default_rng(2).standard_normal((16, 8))
    W = P.outer_product_write(keys, values)
    assert W.shape == (8, 32) and W.dtype == torch.float64
    torch.testing.assert_close(P.outer_product_read(W, keys), torch.as_tensor(values), atol=1e-12, rtol=0)
    assert P.crosstalk(keys, values).abs().max() < 1e-12
    assert P.outer_product_read(W, keys[0]).shape == (8,)


def test_write_accumulates_and_decays():
    g = np.random.default_rng(0)
    k1, v1 = g.standard_normal((3, 5)), g.standard_normal((3, 4))
    k2, v2 = g.standard_normal((2, 5)), g.standard_normal((2, 4))
    W1 = P.outer_product_write(k1, v1)
    torch.testing.assert_close(W1, torch.as_tensor(v1.T @ k1))
    both = P.outer_product_write(k2, v2, W=W1)
    torch.testing.assert_close(both, P.outer_product_write(np.vstack([k1, k2]), np.vstack([v1, v2])))
    half = P.outer_product_write(k2, v2, W=W1, decay=0.5)
    torch.testing.assert_close(half, 0.5 * W1 + torch.as_tensor(v2.T @ k2))
    forget = P.outer_product_write(k2, v2, W=W1, decay=0.0)
    torch.testing.assert_close(forget, P.outer_product_write(k2, v2))


def test_float32_tensor_keeps_dtype():
    keys = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    W = P.outer_product_write(keys, keys)
    assert W.dtype == torch.float32
    assert P.outer_product_read(W, keys).dtype == torch.float32


def test_crosstalk_variance_matches_prediction():
    n, d = 64, 128
    g = np.random.default_rng(3)
    measured = []
    for _ in range(20):
        keys = data.gaussian_keys(n, d, g)
        values = g.standard_normal((n, d))
        measured.append(float(P.crosstalk(keys, values).pow(2).mean()))
    predicted = P.predicted_crosstalk_variance(n, d)
    assert predicted == pytest.approx((n - 1) / d)
    assert np.mean(measured) == pytest.approx(predicted, rel=0.05)


def test_correlated_and_sparse_predictions():
    n, d, c = 32, 128, 0.5
    g = np.random.default_rng(4)
    corr = [float(P.crosstalk(data.correlated_keys(n, d, c, g), g.standard_normal((n, 64))).pow(2).mean())
            for _ in range(60)]
    assert np.mean(corr) == pytest.approx(P.predicted_crosstalk_variance(n, d, c), rel=0.1)
    sparse = [float(P.crosstalk(data.sparse_keys(n, d, 16, g), g.standard_normal((n, 64))).pow(2).mean())
              for _ in range(60)]
    assert np.mean(sparse) == pytest.approx(P.predicted_sparse_crosstalk_variance(n, d, 16), rel=0.1)
    assert P.predicted_sparse_crosstalk_variance(n, d, 1) == pytest.approx((n - 1) / d)
    assert P.predicted_welch_crosstalk_variance(64, 128) == 0.0
    assert P.predicted_welch_crosstalk_variance(256, 128) == pytest.approx(1.0)


def test_frame_keys_meet_the_welch_bound():
    keys = data.frame_keys(96, 32, seed=0)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-12)
    energy = (keys @ keys.T) ** 2
    per_key = (energy.sum() - 96) / 96
    assert per_key == pytest.approx(96 / 32 - 1, rel=1e-6)


def test_projection_and_delta_rule_remove_crosstalk_of_correlated_keys():
    keys = data.correlated_keys(10, 40, 0.5, seed=5)
    values = np.random.default_rng(6).standard_normal((10, 10))
    plain = P.outer_product_read(P.outer_product_write(keys, values), keys)
    assert (plain - torch.as_tensor(values)).abs().max() > 1.0  # correlated keys: heavy crosstalk
    torch.testing.assert_close(P.outer_product_read(P.projection_write(keys, values), keys),
                               torch.as_tensor(values), atol=1e-8, rtol=0)
    W = P.delta_rule_write(keys, values)
    torch.testing.assert_close(P.outer_product_read(W, keys[-1]), torch.as_tensor(values[-1]))
    for _ in range(100):  # repeated sweeps (Kaczmarz) converge to the projection
        W = P.delta_rule_write(keys, values, W=W)
    torch.testing.assert_close(P.outer_product_read(W, keys), torch.as_tensor(values), atol=1e-6, rtol=0)


def test_hebbian_weights_and_fixed_points_at_low_load():
    patterns = data.binary_patterns(5, 200, seed=7)
    W = P.hebbian_weights(patterns)
    assert W.shape == (200, 200)
    torch.testing.assert_close(W, W.T)
    assert torch.all(torch.diagonal(W) == 0)
    torch.testing.assert_close(P.hopfield_step(W, patterns), torch.as_tensor(patterns))
    cues = torch.as_tensor(data.flip_bits(patterns, 0.15, seed=8))
    torch.testing.assert_close(P.hopfield_recall(W, cues), torch.as_tensor(patterns))
    torch.testing.assert_close(P.hopfield_recall(W, cues[0]), torch.as_tensor(patterns[0]))


def test_hopfield_sign_of_zero_is_plus_one():
    W = torch.zeros(3, 3)
    out = P.hopfield_step(W, torch.tensor([-1.0, 1.0, -1.0]))
    assert out.tolist() == [1.0, 1.0, 1.0]


def test_softmax_read_tends_to_nearest_pattern():
    g = np.random.default_rng(9)
    keys, values = g.standard_normal((50, 16)), g.standard_normal((50, 3))
    queries = keys[:7] + 0.1 * g.standard_normal((7, 16))
    nearest = np.argmax(queries @ keys.T, axis=1)
    sharp = P.softmax_read(queries, keys, values, beta=1e4)
    torch.testing.assert_close(sharp, torch.as_tensor(values[nearest]), atol=1e-8, rtol=0)
    hard = P.softmax_read(queries, keys, values, math.inf)
    torch.testing.assert_close(hard, torch.as_tensor(values[nearest]))
    blurred = P.softmax_read(queries, keys, values, beta=1e-9)  # β → 0: the mean of all values
    torch.testing.assert_close(blurred, torch.as_tensor(values.mean(0)).expand(7, 3), atol=1e-6, rtol=0)
    assert torch.isfinite(P.softmax_read(1e3 * queries, keys, values, beta=1e3)).all()
    assert P.softmax_read(queries[0], keys, values, 1.0).shape == (3,)


def test_predictions_are_sane():
    assert P.predicted_bit_error(1, 100) == 0.0
    assert P.predicted_bit_error(14, 100) == pytest.approx(0.5 * math.erfc(math.sqrt(99 / 13) / math.sqrt(2)))
    assert P.perfect_recall_load(100) == pytest.approx(1 / (2 * math.log(100)))
    assert P.predicted_nearest_capacity(32, 4) > 100 * P.predicted_nearest_capacity(16, 2)
    cos = P.predicted_decay_cosine(50, 16, 0.9)
    assert cos.shape == (50,) and np.all(np.diff(cos) < 0)
    assert P.crossing([0, 1, 2], [1.0, 0.8, 0.2], 0.5) == pytest.approx(1.5)
    assert math.isnan(P.crossing([0, 1], [1.0, 0.9], 0.5))


def test_experiments_have_the_documented_shapes():
    r = P.linear_recall_vs_load([4, 8], d=8, n_seeds=2, keys="orthogonal")
    assert r["cosine"].shape == (2, 2) and r["crosstalk_variance"][:, 0].max() < 1e-20
    r = P.recall_vs_load([0.05, 1.0], d=40, correlations=(0.0, 0.3), n_seeds=2, n_probe=10)
    assert set(r) == set(P.MEMORIES) and r["softmax"].shape == (2, 2, 2)
    assert r["Hopfield"][0, :, 0].min() == 1.0
    h = P.hopfield_capacity([0.05, 0.5], d=60, n_seeds=1, n_probe=10)
    assert h["overlap"][0, 0] == 1.0 and h["overlap"][0, 1] < 1.0
    f = P.forgetting_curve(20, 16, [1.0, 0.5], n_seeds=1)
    assert f[0.5].shape == (1, 20) and f[0.5][0, 0] > f[1.0][0, 0]
    c = P.capacity_vs_dimension([8], [2, 4, 8, 16], n_seeds=1, n_probe=20)
    assert c["softmax"][0, 0] >= c["Hopfield"][0, 0]


def test_correlated_cues_flip_exactly_and_cycle_over_patterns():
    patterns, cues = P.correlated_cues(3, 40, 0.0, 0.1, np.random.default_rng(0), n_cues=7)
    assert patterns.shape == (3, 40) and cues.shape == (7, 40)
    wrong = (cues != patterns[torch.arange(7) % 3]).sum(1)
    assert wrong.tolist() == [4] * 7


def test_capacity_interpolates_between_grid_values():
    c = P.capacity_vs_dimension([16], [1, 4, 16, 64, 256, 1024], n_seeds=1, n_probe=100)
    rates = c["recall softmax"][0, 0]
    first_fail = int(np.nanargmin(np.where(rates >= 0.9, np.inf, rates)))
    grid = [1, 4, 16, 64, 256, 1024]
    assert grid[first_fail - 1] <= c["softmax"][0, 0] <= grid[first_fail]


@pytest.mark.parametrize("call, match", [
    (lambda: P.outer_product_write(np.ones((3, 4)), np.ones((2, 4))), "same number of pairs"),
    (lambda: P.outer_product_write(np.ones((3, 4)), np.ones((3, 2)), decay=1.5), "decay must be in"),
    (lambda: P.outer_product_write(np.ones((3, 4)), np.ones((3, 2)), W=np.ones((4, 2))), "W must have shape"),
    (lambda: P.outer_product_write(np.ones((2, 3, 4)), np.ones((2, 2))), "keys must be 1-D or 2-D"),
    (lambda: P.outer_product_read(np.ones((2, 4)), np.ones((3, 5))), "queries must have dk = 4"),
    (lambda: P.hebbian_weights(np.full((2, 4), 0.5)), r"\+1 and -1"),
    (lambda: P.hopfield_step(np.ones((3, 4)), np.ones(4)), "square"),
    (lambda: P.hopfield_step(np.ones((4, 4)), np.ones(3)), "d = 4"),
    (lambda: P.hopfield_recall(np.ones((4, 4)), np.ones(4), max_steps=0), "max_steps"),
    (lambda: P.softmax_read(np.ones((1, 4)), np.ones((3, 4)), np.ones((3, 2)), beta=0.0), "beta must be > 0"),
    (lambda: P.softmax_read(np.ones((1, 5)), np.ones((3, 4)), np.ones((3, 2)), beta=1.0), "dk = 4"),
    (lambda: P.predicted_crosstalk_variance(0, 4), "n must be an int >= 1"),
    (lambda: P.predicted_crosstalk_variance(4, 4, correlation=1.0), "correlation must be in"),
    (lambda: P.predicted_sparse_crosstalk_variance(4, 4, 5), "active must be in 1..4"),
    (lambda: P.linear_recall_vs_load([4], d=8, keys="fancy"), "keys must be"),
])
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: P.outer_product_write("keys", np.ones((1, 2))), "keys must be a torch tensor or a numpy array"),
    (lambda: P.outer_product_read(np.ones((2, 2)), None), "queries must be a torch tensor"),
    (lambda: P.outer_product_write(np.ones((1, 2)), np.ones((1, 2)), decay="0.5"), "decay must be a real"),
    (lambda: P.softmax_read(np.ones(2), np.ones((1, 2)), np.ones((1, 2)), beta=None), "beta must be a real"),
])
def test_bad_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
