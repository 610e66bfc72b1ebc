"""labkit.assoc.mbat: orthogonal binding preserves norms and cosines exactly at any depth while Gaussian binding
drifts; bind/unbind round trips; binding does not commute; JSON encoding is linear, deterministic and ordered;
record search, field decoding and nearest-neighbour lookup work, and improve with the dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.assoc import mbat


def test_orthogonal_matrix_preserves_norms_at_any_depth():
    d = 48
    Ms = [mbat.binding_matrix(d, "orthogonal", seed=s) for s in range(20)]
    torch.testing.assert_close(Ms[0].T @ Ms[0], torch.eye(d, dtype=torch.float64))
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x
    for M in Ms:
        y = mbat.bind(M, y)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(mbat.cosine(y[0], y[1]), mbat.cosine(x[0], x[1]), rtol=0, atol=1e-12)
    for M in reversed(Ms):
        y = mbat.unbind(M, y)  # auto: the transpose
    torch.testing.assert_close(y, x, rtol=0, atol=1e-11)


def test_gaussian_binding():
    d = 200
    M = mbat.binding_matrix(d, "gaussian", seed=1)
    assert float(M.std()) == pytest.approx(1 / np.sqrt(d), rel=0.02)
    x = torch.randn(400, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    ratio = mbat.bind(M, x).norm(dim=1) ** 2
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.15)  # E|Mx|² = |x|² (over random M; one M here)
    torch.testing.assert_close(mbat.unbind(M, mbat.bind(M, x)), x, rtol=0, atol=1e-9)  # auto: the inverse
    approx = mbat.unbind(M, mbat.bind(M, x), method="transpose")
    assert 0.5 < float(mbat.cosine(approx, x).mean()) < 0.9  # the transpose is only a noisy inverse


def test_binding_does_not_commute_and_bundle():
    A, B = mbat.binding_matrix(32, seed=3), mbat.binding_matrix(32, seed=4)
    x = torch.randn(32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(mbat.cosine(A @ (B @ x), B @ (A @ x))) < 0.6
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert mbat.bundle(v).tolist() == [4.0, 1.0]
    assert mbat.bundle(v, [2.0, 1.0]).tolist() == [5.0, 3.0]


def test_depth_stability():
    orth = mbat.depth_stability(32, 6, "orthogonal", n_seeds=3, similarity=0.5)
    np.testing.assert_allclose(orth["norm"], 1.0, atol=1e-12)
    np.testing.assert_allclose(orth["cosine"], 0.5, atol=1e-12)
    np.testing.assert_allclose(orth["transpose"], 1.0, atol=1e-12)
    gauss = mbat.depth_stability(32, 6, "gaussian", n_seeds=8, similarity=0.5)
    log_norm = np.log(gauss["norm"])
    assert log_norm[:, 0].std() < 1e-12 and log_norm[:, 6].std() > 1.5 * log_norm[:, 1].std()  # a random walk
    assert np.abs(gauss["cosine"][:, 1:] - 0.5).max() > 0.05  # similarity is not preserved
    assert gauss["transpose"][:, 3].mean() < 0.8  # and transposes no longer undo the binding


def test_encoder_is_linear_deterministic_and_ordered():
    enc, enc2 = mbat.MBATEncoder(64, seed=7), mbat.MBATEncoder(64, seed=7)
    rec = {"name": "ada", "city": "paris", "age": 36}
    v = enc.encode(rec)
    torch.testing.assert_close(v, enc2.encode(rec))  # same seed, same vectors (no process-salted hashing)
    want = sum(enc.role(k) @ enc.atom(val) for k, val in rec.items())
    torch.testing.assert_close(v, want)
    assert float(mbat.cosine(enc.atom(1), enc.atom("1"))) < 0.5  # types differ
    assert float(mbat.cosine(enc.encode(["a", "b"]), enc.encode(["b", "a"]))) < 0.5  # lists are ordered
    S = enc.role("[]")
    torch.testing.assert_close(enc.encode(["a", "b"]), S @ enc.atom("a") + S @ S @ enc.atom("b"))
    nested = enc.encode({"person": {"name": "ada"}})
    torch.testing.assert_close(nested, enc.role("person") @ enc.role("name") @ enc.atom("ada"))
    assert float(enc.encode({}).abs().sum()) == 0.0
    assert float(mbat.MBATEncoder(64, seed=8).atom("x") @ enc.atom("x")) < 0.5


def test_record_queries():
    records = mbat.make_records(40, n_cities=5, seed=0)
    enc = mbat.MBATEncoder(512, seed=1)
    E = enc.encode_records(records)
    assert E.shape == (40, 512)
    for i in (0, 17, 39):
        assert int(enc.where(E, "name", f"person{i}", k=1)[0]) == i
        assert enc.decode(E[i], "city", [f"city{j}" for j in range(5)]) == records[i]["city"]
        assert int(enc.nearest(E, {"name": f"person{i}", "age": records[i]["age"]})[0]) == i
    truth = {i for i, r in enumerate(records) if r["city"] == "city2"}
    assert set(enc.where(E, "city", "city2").tolist()) == truth  # threshold 0.5: exactly the records in city2
    assert enc.where(E, "city", "nowhere").numel() == 0  # non-matches score N(0, fields/d): 5.7 sigma below 0.5


def test_accuracy_grows_with_dimension():
    r = mbat.record_search_experiment([16, 256], [60], kind="orthogonal", n_queries=20, n_seeds=1, seed=0)
    for key in ("find", "decode", "where"):
        assert r[key][1, 0] >= 0.95 and r[key][0, 0] < r[key][1, 0], (key, r[key])


def test_predicted_find_accuracy():
    assert mbat.predicted_find_accuracy(64, 1, 4) == pytest.approx(1.0)
    assert mbat.predicted_find_accuracy(100_000, 1000, 4) == pytest.approx(1.0)
    # the quadrature equals a Monte Carlo of the same Gaussian model
    g = np.random.default_rng(0)
    d, R, F = 48, 50, 4
    t = 1 + np.sqrt((F - 1) / d) * g.standard_normal(20_000)
    others = np.sqrt(F / d) * g.standard_normal((20_000, R - 1))
    assert mbat.predicted_find_accuracy(d, R, F) == pytest.approx((t > others.max(1)).mean(), abs=0.015)
    # and it predicts the measured lookup when every record's values are its own (shared values only help)
    r = mbat.record_search_experiment([48], [50], n_cities=10**6, n_jobs=10**6, n_queries=100, n_seeds=2, seed=1)
    assert abs(r["find"][0, 0] - mbat.predicted_find_accuracy(48, 50, 4)) < 0.12


def test_sequences_orthogonal_vs_gaussian():
    orth = mbat.sequence_experiment(128, 8, "orthogonal", steps=60, n_seeds=2, vocab=50)
    np.testing.assert_allclose(orth["norm"], 1.0, atol=1e-10)
    assert np.ptp(orth["align"], axis=1).max() < 1e-10  # cosines are preserved at every power
    assert orth["accuracy"].min() == 1.0 and np.array_equal(orth["accuracy"], orth["accuracy_inverse"])
    gauss = mbat.sequence_experiment(128, 8, "gaussian", steps=60, n_seeds=4, vocab=50)
    assert np.abs(np.log(gauss["norm"][:, -1])).mean() > 0.3  # the norm of S^60 a has drifted
    assert gauss["accuracy"][:, 4:].mean() < 0.8 and gauss["accuracy_inverse"][:, 1:].mean() < 0.3
    assert gauss["align"][:, -1].mean() > orth["align"][:, -1].mean() + 0.1


def test_bundle_capacity_matches_gaussian_theory():
    r = mbat.bundle_experiment([128], [1, 4, 32], n_trials=3000, seed=0)
    assert r["miss"][0, 0] == 0.0 and r["miss_theory"][0, 0] == 0.0  # a bundle of one is its member
    for key, theory in (("miss", "miss_theory"), ("false_positive", "fp_theory")):
        p = r[theory][0]
        assert np.all(np.abs(r[key][0] - p) <= 4.5 * np.sqrt(p * (1 - p) / 3000) + 0.01), (key, r[key], p)
    assert r["fp_theory"][0, 2] == pytest.approx(0.5 * math.erfc(0.5 * np.sqrt(128 / 32) / np.sqrt(2)))


def test_soft_similarity():
    r = mbat.soft_similarity(1024, n_fields=4, n_pairs=20, seed=0)
    np.testing.assert_allclose(r["predicted"], [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(r["cosine"][:, 0], 1.0, atol=1e-12)  # no field changed: the same vector
    assert np.all(np.abs(r["cosine"].mean(0) - r["predicted"]) < 0.05)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: mbat.binding_matrix(8, "random"), ValueError, r"kind must be one of \('gaussian', 'orthogonal'\)"),
        (lambda: mbat.binding_matrix(0), ValueError, r"d must be an integer >= 1, got 0"),
        (lambda: mbat.bind(torch.eye(3), torch.ones(4)), ValueError,
         r"x must have shape \(d,\) or \(m, d\) with d = 3"),
        (lambda: mbat.bind(torch.ones(3, 4), torch.ones(4)), ValueError, r"M must be a square"),
        (lambda: mbat.unbind(torch.eye(3), torch.ones(3), method="pinv"), ValueError, r"method must be 'auto'"),
        (lambda: mbat.MBATEncoder(8).encode({"a": object()}), TypeError, r"value must be a JSON value"),
        (lambda: mbat.MBATEncoder(8).role(3), TypeError, r"key must be a str"),
        (lambda: mbat.MBATEncoder(8).decode(torch.ones(8), "a", []), ValueError, r"candidates must hold"),
        (lambda: mbat.depth_stability(8, 2, "orthogonal", similarity=1.0), ValueError, r"similarity must be in"),
        (lambda: mbat.sequence_experiment(8, 0, "orthogonal"), ValueError, r"length must be an integer >= 1, got 0"),
        (lambda: mbat.bundle_experiment([8], [0]), ValueError, r"ms\[i\] must be an integer >= 1, got 0"),
        (lambda: mbat.soft_similarity(8, kind="sparse"), ValueError, r"kind must be one of"),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
