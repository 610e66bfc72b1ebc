"""labkit.decoding.flash: the FFN file, coalesced reads, the neuron cache, windowing and the flash decoder.

The decoder tests use the trained tinylm (greedy tokens must equal ``generate``'s) on a short prompt and a
few tokens; the file lives in pytest's tmp_path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import labkit.models
from labkit.data.corpus import english_tokens
from labkit.decoding import generate
from labkit.decoding.flash import (
    FfnFileLayout,
    FlashFFN,
    LowRankPredictor,
    NeuronCache,
    _MaskedMLP,
    _replace_mlps,
    activation_sparsity,
    active_neurons,
    fit_read_cost,
    flash_generate,
    measure_read_curve,
    read_cost_model,
    train_predictor,
    window_hit_rate,
    write_ffn_file,
)
from labkit.models.tinylm import TinyLM, TinyLMConfig

torch.set_num_threads(1)  # two cores shared with other jobs (conftest sets OMP_WAIT_POLICY=PASSIVE)

N_NEW = 6


@pytest.fixture(scope="module")
def model() -> TinyLM:
    return labkit.models.load("tinylm")


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return english_tokens("heldout")[200:216].astype(int).tolist()


@pytest.fixture(scope="module")
def reference(model, prompt) -> list[int]:
    return generate(model, prompt, N_NEW)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict[str, FfnFileLayout]:
    folder = tmp_path_factory.mktemp("flash")
    return {layout: write_ffn_file(model, folder / f"{layout}.bin", layout) for layout in ("bundled", "separate")}


# --------------------------------------------------------------------------------------------------------
# window_hit_rate: the exact definition, against a brute-force loop
# --------------------------------------------------------------------------------------------------------


def brute_hit_rate(active: np.ndarray, window: int) -> float:
    hits = needed = 0
    for t in range(active.shape[0]):
        resident = set()
        for s in range(max(0, t - window), t):
            resident |= set(np.flatnonzero(active[s]).tolist())
        now = set(np.flatnonzero(active[t]).tolist())
        hits += len(now & resident)
        needed += len(now)
    return 1.0 if needed == 0 else hits / needed


@settings(max_examples=60, deadline=None)
@given(active=arrays(bool, st.tuples(st.integers(0, 12), st.integers(0, 9))), window=st.integers(1, 15))
def test_window_hit_rate_matches_brute_force(active, window):
    expected = brute_hit_rate(active, window)
    assert window_hit_rate(active, window) == pytest.approx(expected, abs=1e-12)
    assert window_hit_rate(torch.from_numpy(active), window) == pytest.approx(expected, abs=1e-12)


def test_window_hit_rate_small_cases():
    active = np.array([[1, 0], [0, 1], [1, 0]], dtype=bool)
    # t=0 needs {0}, nothing resident; t=1 needs {1}, {0} resident; t=2 needs {0}: {1} (window 1), {0, 1} (2)
    assert window_hit_rate(active, 1) == 0.0
    assert window_hit_rate(active, 2) == pytest.approx(1 / 3)
    assert window_hit_rate(np.zeros((5, 3), bool), 3) == 1.0  # nothing ever needed
    assert window_hit_rate(np.zeros((0, 3), bool), 1) == 1.0
    assert window_hit_rate(np.ones((4, 3), bool), 1) == pytest.approx(9 / 12)  # all but the first step hit
    assert window_hit_rate(np.ones((4, 3), bool), np.int64(2)) == pytest.approx(9 / 12)


@pytest.mark.parametrize("window", [0, -1, True, 1.5, "2", None])
def test_window_hit_rate_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        window_hit_rate(np.ones((3, 2), bool), window)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_window_hit_rate_rejects_non_2d(shape):
    with pytest.raises(ValueError, match="active"):
        window_hit_rate(np.ones(shape, bool), 2)


# --------------------------------------------------------------------------------------------------------
# The file, its layout and the read plan
# --------------------------------------------------------------------------------------------------------


def test_file_holds_every_neuron(model, files):
    for layout in files.values():
        assert os.path.getsize(layout.path) == layout.file_bytes == 4 * 512 * 3 * 192 * 2
        raw = np.fromfile(layout.path, dtype=np.float16)
        for layer, neuron in [(0, 0), (2, 17), (3, 511)]:
            mlp = model.layers[layer].mlp
            want = [mlp.gate_proj.weight[neuron], mlp.up_proj.weight[neuron], mlp.down_proj.weight[:, neuron]]
            reads = layout.plan_reads(layer, np.array([neuron]))  # one bundle, or a row of each matrix
            assert len(reads) == (1 if layout.layout == "bundled" else 3)
            got = np.concatenate([raw[r.offset // 2:(r.offset + r.nbytes) // 2] for r in reads]).reshape(3, 192)
            np.testing.assert_array_equal(got, torch.stack(want).detach().half().numpy())


def test_plan_reads_coalesces_contiguous_neurons(files):
    bundled, separate = files["bundled"], files["separate"]
    neurons = np.array([0, 1, 2, 5, 9, 10])
    assert len(bundled.plan_reads(1, neurons)) == 3  # runs 0-2, 5, 9-10
    assert len(separate.plan_reads(1, neurons)) == 9  # the same runs in each of the three matrices
    assert sum(r.nbytes for r in bundled.plan_reads(1, neurons)) == 6 * bundled.neuron_bytes
    assert sum(r.nbytes for r in separate.plan_reads(1, neurons)) == 6 * separate.neuron_bytes
    everything = np.arange(512)
    for layout in (bundled, separate):  # a whole layer is one contiguous range in both layouts
        (read,) = layout.plan_reads(2, everything)
        assert (read.offset, read.nbytes) == (2 * layout.layer_bytes, layout.layer_bytes)
    bridged = bundled.plan_reads(1, neurons, max_gap=3)  # gaps of 2 and 3 neurons are read through
    assert len(bridged) == 1 and bridged[0].nbytes == 11 * bundled.neuron_bytes
    assert bundled.plan_reads(0, np.array([], dtype=np.int64)) == []


def test_write_ffn_file_rejects_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_ffn_file(model, tmp_path / "f.bin", "interleaved")
    with pytest.raises(ValueError, match="dtype"):
        write_ffn_file(model, tmp_path / "f.bin", dtype=torch.bfloat16)
    layout = write_ffn_file(model, tmp_path / "f32.bin", "separate", dtype=torch.float32)
    assert layout.itemsize == 4 and os.path.getsize(layout.path) == layout.file_bytes


# --------------------------------------------------------------------------------------------------------
# The neuron cache
# --------------------------------------------------------------------------------------------------------


def test_neuron_cache_stays_consistent():
    rng = np.random.default_rng(0)
    d_ff, d = 40, 3
    truth = rng.standard_normal((d_ff, 3, d)).astype(np.float16)
    cache = NeuronCache(d_ff, d, np.dtype(np.float16))
    for _ in range(50):
        want = rng.random(d_ff) < 0.3
        new = np.flatnonzero(want & (cache.slot_of < 0))
        slots = cache.add(new)  # (add may grow cache.rows: index it afterwards)
        cache.rows[slots] = truth[new]
        keep = want | (rng.random(d_ff) < 0.2)
        cache.keep_only(keep)
        resident = np.flatnonzero(cache.slot_of >= 0)
        assert set(resident) == set(cache.neuron_of[:cache.count]) and cache.count == len(resident)
        assert not (~keep[resident]).any() and (cache.slot_of[np.flatnonzero(want)] >= 0).all()
        np.testing.assert_array_equal(cache.rows[cache.slot_of[resident]], truth[resident])
        assert cache.nbytes == cache.count * 3 * d * 2


# --------------------------------------------------------------------------------------------------------
# The flash decoder
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,window", [("naive", 1), ("sparse", 1), ("windowing", 2), ("windowing", 8)])
def test_oracle_flash_generate_equals_greedy(model, prompt, reference, files, policy, window):
    tokens, stats = flash_generate(model, prompt, N_NEW, files["bundled"], policy=policy, window=window)
    assert tokens == reference
    assert stats.tokens == N_NEW and len(stats.step_bytes) == N_NEW
    assert stats.bytes_read > 0 and stats.n_reads > 0  # the file is really read
    assert stats.read_seconds_per_token > 0 and stats.compute_seconds_per_token > 0


def test_bundled_and_separate_agree_and_bundling_reads_less_often(model, prompt, reference, files, tmp_path):
    runs = {}
    for layout in ("bundled", "separate"):
        runs[layout] = flash_generate(model, prompt, N_NEW, files[layout], policy="sparse")
    (b_tokens, bundled), (s_tokens, separate) = runs["bundled"], runs["separate"]
    assert b_tokens == s_tokens == reference
    assert bundled.bytes_read == separate.bytes_read
    assert bundled.n_reads < separate.n_reads
    assert bundled.mean_read_bytes > separate.mean_read_bytes
    # a path instead of a layout: the file is written there first, in the layout `bundled` picks
    tokens, stats = flash_generate(model, prompt, 2, tmp_path / "ffn.bin", policy="sparse", bundled=False)
    assert tokens == reference[:2] and stats.layout == "separate" and (tmp_path / "ffn.bin").exists()


def test_sparsity_and_windowing_read_fewer_bytes_than_naive(model, prompt, files):
    layout = files["bundled"]
    _, naive = flash_generate(model, prompt, N_NEW, layout, policy="naive")
    _, sparse = flash_generate(model, prompt, N_NEW, layout, policy="sparse")
    _, windowing = flash_generate(model, prompt, N_NEW, layout, policy="windowing", window=4)
    assert naive.bytes_per_token == layout.file_bytes and naive.reads_per_token == 4
    assert windowing.bytes_per_token < sparse.bytes_per_token < naive.bytes_per_token
    assert naive.decode_peak_dram_bytes == layout.layer_bytes  # one layer at a time, nothing kept
    assert sparse.decode_peak_dram_bytes < windowing.decode_peak_dram_bytes  # the window costs DRAM
    _, bridged = flash_generate(model, prompt, N_NEW, layout, policy="sparse", max_gap=8)
    assert bridged.n_reads < sparse.n_reads and bridged.bytes_read > sparse.bytes_read


def test_windowing_bytes_follow_the_hit_rate(model, prompt, files):
    """With the oracle, windowing reads exactly the needed neurons that are not in the window."""
    layout, window = files["bundled"], 3
    tokens, stats = flash_generate(model, prompt, N_NEW, layout, policy="windowing", window=window)
    sequence = prompt + tokens
    active = active_neurons(model, np.array(sequence[:-1]))  # every position the decoder ran
    needed = sum(int(a[len(prompt):].sum()) for a in active)
    # the decode steps read every needed neuron that none of the previous `window` positions used
    missed = 0
    for a in active:
        a = a.numpy()
        for t in range(len(prompt), a.shape[0]):
            resident = a[max(0, t - window):t].any(0)
            missed += int((a[t] & ~resident).sum())
    assert 0 < missed < needed
    # (the full forward here and the incremental decode may round a borderline gate differently)
    assert sum(stats.step_bytes[1:]) == pytest.approx(missed * layout.neuron_bytes, rel=0.02)


def test_flash_generate_rejects_bad_arguments(model, prompt, files):
    layout = files["bundled"]
    with pytest.raises(ValueError, match="policy"):
        flash_generate(model, prompt, 2, layout, policy="lazy")
    with pytest.raises(ValueError, match="window"):
        flash_generate(model, prompt, 2, layout, policy="windowing", window=0)
    with pytest.raises(ValueError, match="predictor"):
        flash_generate(model, prompt, 2, layout, policy="sparse", predictor="psychic")
    with pytest.raises(ValueError, match="predictor"):
        FlashFFN(model, layout, policy="naive", predictor="oracle")
    with pytest.raises(ValueError, match="bundled"):
        flash_generate(model, prompt, 2, layout, bundled=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        flash_generate(model, prompt, 200, layout)
    with pytest.raises(ValueError, match="max_gap"):
        flash_generate(model, prompt, 2, layout, policy="sparse", max_gap=-1)
    with pytest.raises(TypeError, match="layout"):
        FlashFFN(model, layout.path)
    torch.manual_seed(0)
    other = TinyLM(TinyLMConfig(vocab_size=387, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                context=64))
    with pytest.raises(ValueError, match="path holds an FFN file"):
        flash_generate(other, prompt, 2, layout)
    assert all(hasattr(layer.mlp, "gate_proj") for layer in model.layers)  # the model is left as it was


# --------------------------------------------------------------------------------------------------------
# Sparsity and the predictor
# --------------------------------------------------------------------------------------------------------


def test_activation_sparsity_and_active_neurons(model):
    tokens = english_tokens("heldout")[:300]  # longer than the context: cut into pieces
    active = active_neurons(model, tokens)
    sparsity = activation_sparsity(model, tokens)
    assert len(active) == len(sparsity) == 4
    for a, s in zip(active, sparsity):
        assert a.shape == (300, 512) and a.dtype == torch.bool
        assert s == pytest.approx(1 - a.float().mean().item()) and 0.5 < s < 1  # ReLU: most units are 0
    with pytest.raises(ValueError, match="tokens"):
        active_neurons(model, np.zeros((2, 3), dtype=np.int64))


def test_predictor_trains_fast_and_flash_uses_it(model, prompt, files):
    predictor, metrics = train_predictor(model, rank=16, steps=10, n_rows=6, n_prompts=2, new_tokens=4)
    assert isinstance(predictor, LowRankPredictor) and predictor.nbytes() > 0
    assert min(metrics["recall"]) > 0.8 and min(metrics["precision"]) > 0.1
    assert 0 <= metrics["greedy_match"] <= 1 and 0 <= metrics["token_agreement"] <= 1
    # flash decoding with the predictor computes the FFN with only the predicted neurons
    tokens, stats = flash_generate(model, prompt, N_NEW, files["bundled"], policy="sparse", predictor=predictor)
    with _replace_mlps(model, lambda l, mlp: _MaskedMLP(mlp, predictor, l)):
        masked = generate(model, prompt, N_NEW)
    assert tokens == masked and stats.predictor == "low-rank 16"
    with pytest.raises(ValueError, match="rank"):
        LowRankPredictor(4, 192, 512, rank=500)
    with pytest.raises(ValueError, match="target_recall"):
        train_predictor(model, target_recall=1.5)


# --------------------------------------------------------------------------------------------------------
# The cost model and the read curve
# --------------------------------------------------------------------------------------------------------


def test_read_cost_model():
    assert read_cost_model(1e6, 10, bandwidth=1e9, latency_per_read=1e-4) == pytest.approx(1e-3 + 1e-3)
    many = read_cost_model(np.array([0, 1e6]), np.array([1, 2]), 1e6, 0.5)
    np.testing.assert_allclose(many, [0.5, 2.0])
    for kwargs, name in [({"bandwidth": 0}, "bandwidth"), ({"latency_per_read": -1}, "latency_per_read"),
                         ({"bytes": -5}, "bytes")]:
        args = {"bytes": 10, "n_reads": 1, "bandwidth": 1.0, "latency_per_read": 0.0, **kwargs}
        with pytest.raises(ValueError, match=name):
            read_cost_model(**args)


def test_measure_read_curve_and_fit(files):
    path = files["bundled"].path
    curve = measure_read_curve(path, (4096, 65536), total_bytes=1 << 18)
    assert set(curve) == {4096, 65536} and all(v > 0 for v in curve.values())
    with pytest.raises(ValueError, match="chunk_sizes"):
        measure_read_curve(path, (1 << 30,))
    synthetic = {c: c / (1e-4 + c / 1e9) for c in (1024, 8192, 65536)}  # latency 100 µs, 1 GB/s
    bandwidth, latency = fit_read_cost(synthetic)
    assert bandwidth == pytest.approx(1e9, rel=1e-6) and latency == pytest.approx(1e-4, rel=1e-6)
    with pytest.raises(ValueError, match="curve"):
        fit_read_cost({4096: 1e8})
