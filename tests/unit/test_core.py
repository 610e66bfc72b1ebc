"""labkit core: setup, seeding, backend choice, progress, data generators, viz helpers, check base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import labkit
from labkit import data, viz
from labkit.check import GRADE_TOKEN_ENV, exercise, expect, expect_close, for_all, receipt
from labkit.runtime import choose_backend, progress


def test_setup_prints_one_line_and_seeds(capsys):
    env = labkit.setup(seed=3, backend="torch")
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "seed 3" in line and "backend torch" in line and "torch " in line
    a = torch.rand(3)
    labkit.setup(seed=3, quiet=True)
    assert torch.equal(a, torch.rand(3))
    assert env.device.type in ("cpu", "cuda")


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_setup_rejects_bad_seed(bad):
    with pytest.raises(ValueError, match="seed must be"):
        labkit.setup(seed=bad, quiet=True)


def test_backend_auto_is_numba_on_cpu_and_bad_names_fail():
    assert choose_backend("auto", torch.device("cpu")) == "numba"
    assert choose_backend("triton", torch.device("cpu")) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("cuda")


def test_progress_is_silenced_by_env(monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    assert progress(range(3)).disable is True
    monkeypatch.setenv("LABKIT_PROGRESS", "1")
    assert progress(range(3)).disable is False
    assert list(progress(range(3))) == [0, 1, 2]


def test_generators_are_seeded_and_shaped():
    assert np.array_equal(data.gaussian_keys(5, 8, seed=1), data.gaussian_keys(5, 8, seed=1))
    assert not np.array_equal(data.gaussian_keys(5, 8, seed=1), data.gaussian_keys(5, 8, seed=2))
    q = data.orthogonal_keys(6, 10, seed=0)
    assert np.allclose(q @ q.T, np.eye(6), atol=1e-12)
    p = data.binary_patterns(4, 50, seed=0)
    assert set(np.unique(p)) <= {-1.0, 1.0}
    noisy = data.flip_bits(p, 0.1, seed=0)
    assert np.all((noisy != p).sum(1) == 5)


def test_correlated_keys_hit_the_requested_cosine():
    keys = data.correlated_keys(200, 2000, correlation=0.3, seed=0)
    cos = keys @ keys.T
    off = cos[~np.eye(200, dtype=bool)]
    assert abs(off.mean() - 0.3) < 0.03


@pytest.mark.parametrize("call, match", [
    (lambda: data.gaussian_keys(0, 4), "n must be a positive int"),
    (lambda: data.orthogonal_keys(5, 4), "n must be <= d=4"),
    (lambda: data.correlated_keys(3, 4, correlation=1.0), r"correlation must be in \[0, 1\)"),
    (lambda: data.binary_patterns(3, 4, p=0.0), r"p must be in \(0, 1\)"),
    (lambda: data.rng(-2), "seed must be"),
])
def test_generators_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_viz_figures_have_the_theme_and_validate():
    viz.use_theme()
    fig = viz.line_band([1, 2, 3], {"a": np.ones((4, 3)), "b": [1, 2, 3]}, title="t")
    assert len(fig.data) == 3  # band + line for "a", line for "b"
    assert fig.layout.template.layout.colorway[0] == viz.PALETTE[0]
    with pytest.raises(ValueError, match="must have 3 points"):
        viz.line_band([1, 2, 3], {"a": np.ones(4)})
    own_x = viz.line_band(None, {"a": ([10, 100], np.ones((2, 2))), "b": ([5, 50, 500], [1, 2, 3])})
    assert list(own_x.data[1].x) == [10, 100] and list(own_x.data[2].x) == [5, 50, 500]
    with pytest.raises(ValueError, match="x is None"):
        viz.line_band(None, {"a": [1, 2]})
    assert viz.heatmap(np.eye(3)).data[0].type == "heatmap"
    assert len(viz.raster(np.eye(4, dtype=bool)).data[0].x) == 4
    bars = viz.bench_bar([{"case": "x", "backend": "a", "ms": 1.0}, {"case": "x", "backend": "b", "ms": 2.0}])
    assert len(bars.data) == 2
    slider = viz.slider_lines([0, 1], {"0.1": {"a": [1, 2]}, "0.5": {"a": [3, 4]}})
    assert len(slider.layout.sliders[0].steps) == 2
    with pytest.raises(ValueError, match="must name the curves"):
        viz.slider_lines([0, 1], {"0.1": {"a": [1, 2]}, "0.5": {"b": [3, 4]}})


@exercise("9.1", "adds two numbers")
def _check_add(add):
    for_all(__import__("hypothesis.strategies").strategies.integers(-100, 100),
            lambda x: expect(add(x, 1) == x + 1, "add(x, 1) should be x + 1"))


def test_check_passes_prints_and_emits_receipt_only_under_grader(capsys, monkeypatch):
    monkeypatch.delenv(GRADE_TOKEN_ENV, raising=False)
    assert _check_add(lambda a, b: a + b) is None
    out = capsys.readouterr().out
    assert "✓ Exercise 9.1 passed" in out and "receipt" not in out
    monkeypatch.setenv(GRADE_TOKEN_ENV, "secret")
    _check_add(lambda a, b: a + b)
    assert receipt("9.1", "secret") in capsys.readouterr().out


def test_check_fails_on_wrong_answer_stub_and_placeholder(capsys):
    with pytest.raises(AssertionError, match="Exercise 9.1: add"):
        _check_add(lambda a, b: a - b)
    with pytest.raises(NotImplementedError):
        _check_add(lambda a, b: (_ for _ in ()).throw(NotImplementedError("Exercise 9.1")))
    with pytest.raises(AssertionError, match="placeholder"):
        _check_add(...)
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        _check_add(lambda a, b: 1 / 0)
    assert "passed" not in capsys.readouterr().out


def test_expect_close_reports_shape_and_worst_entry():
    @exercise("9.2", "close")
    def check(x):
        expect_close("x", x, np.arange(4.0))

    check(torch.arange(4.0))
    with pytest.raises(AssertionError, match="shape"):
        check(np.zeros(3))
    with pytest.raises(AssertionError, match="index \\(2,\\)"):
        check(np.array([0.0, 1.0, 5.0, 3.0]))


def test_expect_close_names_a_nan_answer_instead_of_crashing():
    @exercise("9.3", "nan")
    def check(x):
        expect_close("x", x, np.arange(4.0))

    with pytest.raises(AssertionError, match="4 non-finite"):
        check(np.full(4, np.nan))
    with pytest.raises(AssertionError, match="non-finite.*index \\(1,\\)"):
        check(np.array([0.0, np.inf, 2.0, 3.0]))


def test_benchmark_results_reads_committed_files_and_names_a_missing_one():
    from labkit.runtime import benchmark_results

    assert benchmark_results("snn-peers-vm.json")["benchmark"] == "snn_peers"
    with pytest.raises(FileNotFoundError, match="git clone"):
        benchmark_results("no-such-results.json")
