"""Chapter 3's recall tasks, MemoryLM and training loop (labkit.data.recall, labkit.memory.model/train/sweep)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labkit.data.recall import FILLER, IGNORE, key_range, mqar, mqar_baselines, needle, value_range
from labkit.memory import MIXERS, make_mixer
from labkit.memory.base import MemoryState, Mixer
from labkit.memory.model import MemoryLM
from labkit.memory.train import evaluate, mqar_run, mqar_stream, train_recall

torch.set_num_threads(1)


class CumulativeMean(Mixer):
    """Stand-in mixer: y_t = W · mean(x_1..x_t); state = running sum. Sets ``aux_loss`` like MoM does."""

    name = "cumulative_mean"

    def __init__(self, d_model: int, n_heads: int = 1, scale: float = 1.0) -> None:
        super().__init__(d_model, n_heads)
        self.proj = torch.nn.Linear(d_model, d_model)
        self.scale = scale

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def forward(self, x, state=None):
        self.check_input(x)
        self.check_state(state, x.shape[0])
        total = x.new_zeros(x.shape[0], 1, self.d_model) if state is None else state["sum"]
        seen = 0 if state is None else state.seen
        sums = total + x.cumsum(1)
        counts = torch.arange(seen + 1, seen + x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        self.aux_loss = self.scale * x.pow(2).mean()
        return self.proj(sums / counts), MemoryState(self.fingerprint, {"sum": sums[:, -1:]}, seen + x.shape[1])


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(MIXERS, "cumulative_mean", CumulativeMean)
    return "cumulative_mean"


# ------------------------------------------------------------------------------------------------------
# MQAR and the needle
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_passes", [1, 2])
def test_mqar_every_query_asks_for_its_pair(n_passes):
    N, T, n, V = 200, 80, 8, 64
    inputs, targets = mqar(N, T, n, V, seed=3, n_passes=n_passes)
    assert inputs.shape == targets.shape == (N, T) and inputs.dtype == targets.dtype == torch.int64
    x, y = inputs.numpy(), targets.numpy()
    context = 2 * n * n_passes
    for b in range(N):
        keys, values = x[b, 0:2 * n:2], x[b, 1:2 * n:2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert np.all((keys >= key_range(V)[0]) & (keys < key_range(V)[1]))
        assert np.all((values >= value_range(V)[0]) & (values < value_range(V)[1]))
        for p in range(1, n_passes):  # JRT: the same block again
            np.testing.assert_array_equal(x[b, 2 * n * p:2 * n * (p + 1)], x[b, :2 * n])
        pairs = dict(zip(keys, values))
        asked = np.flatnonzero(y[b] != IGNORE)
        assert len(asked) == n and asked.min() >= context
        assert sorted(x[b, asked]) == sorted(keys)  # every key asked exactly once
        for t in asked:
            assert y[b, t] == pairs[x[b, t]] == x[b, t + 1]  # target = its value, which follows in the input
        rest = np.ones(T, bool)
        rest[:context] = False
        rest[asked] = rest[asked + 1] = False
        assert np.all(x[b, rest] == FILLER)  # filler never repeats a key
    assert np.all(y[:, :context] == IGNORE)


def test_mqar_is_seeded_and_queries_follow_the_power_law():
    a = mqar(50, 128, 8, 64, seed=7)
    b = mqar(50, 128, 8, 64, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], mqar(50, 128, 8, 64, seed=8)[0])

    def mean_query_position(power_a):
        _, y = mqar(400, 128, 8, 64, seed=0, power_a=power_a)
        return (y != IGNORE).nonzero()[:, 1].float().mean().item()

    assert mean_query_position(0.01) < mean_query_position(1.0) - 10  # small a: queries soon after the pairs


def test_mqar_rejects_impossible_sizes():
    with pytest.raises(ValueError, match=r"seq_len must be >= .* = 32 .*got 31"):
        mqar(2, 31, 8, 256)
    with pytest.raises(ValueError, match=r"seq_len must be >= .* = 48 "):
        mqar(2, 40, 8, 256, n_passes=2)
    with pytest.raises(ValueError, match="vocab_size=16 .* must be >= 18"):
        mqar(2, 64, 8, 16)
    with pytest.raises(ValueError, match="n_pairs must be a positive int"):
        mqar(2, 64, 0, 64)
    with pytest.raises(ValueError, match="power_a"):
        mqar(2, 64, 8, 64, power_a=0.0)
    mqar(2, 32, 8, 18)  # the smallest that fits


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_shortcut_baseline_matches_monte_carlo(n):
    """Guessing a not-yet-asked value, simulated on generated examples, scores H_n / n."""
    V = 64
    base = mqar_baselines(n, V)
    assert base["chance"] == pytest.approx(1 / 32)
    assert base["shortcut"] == pytest.approx(sum(1 / m for m in range(1, n + 1)) / n)
    g = np.random.default_rng(0)
    x, y = (t.numpy() for t in mqar(3000, 4 * n + 8, n, V, seed=1))
    hits = total = 0
    for b in range(len(x)):
        left = set(x[b, 1:2 * n:2])
        for t in np.flatnonzero(y[b] != IGNORE):
            hits += g.choice(sorted(left)) == y[b, t]
            total += 1
            left.discard(x[b, t + 1])  # the answer follows the query: now it is used
    assert hits / total == pytest.approx(base["shortcut"], abs=0.02)


def test_needle_hides_one_pair_and_asks_at_the_end():
    V = 32
    inputs, targets = needle(300, 40, V, seed=2)
    x, y = inputs.numpy(), targets.numpy()
    assert x.shape == y.shape == (300, 40)
    assert np.all(y[:, :-1] == IGNORE)
    assert np.all((x >= 1) & (x < V))
    for b in range(len(x)):
        at = np.flatnonzero(x[b] == x[b, -1])
        assert len(at) == 2  # the needle and the query
        assert key_range(V)[0] <= x[b, -1] < key_range(V)[1]
        assert y[b, -1] == x[b, at[0] + 1]
    with pytest.raises(ValueError, match="seq_len must be >= 3"):
        needle(1, 2)


# ------------------------------------------------------------------------------------------------------
# The registry and the model
# ------------------------------------------------------------------------------------------------------


def test_make_mixer_rejects_unknown_names_listing_the_known_ones():
    with pytest.raises(ValueError, match="mixer must be one of .*'attention'.*'deltanet'.*got 'hopfield'"):
        make_mixer("hopfield", 16)
    with pytest.raises(ValueError, match="mixer must be one of"):
        MemoryLM(32, 16, mixer="hopfield")


@pytest.mark.parametrize("mixer", ["attention", "cumulative_mean"])
def test_decoding_token_by_token_equals_the_full_forward(mixer, stand_in):
    torch.manual_seed(0)
    model = MemoryLM(48, d_model=16, n_layers=2, mixer=mixer, n_heads=2 if mixer == "attention" else 1).eval()
    tokens = torch.randint(0, 48, (3, 11))
    with torch.no_grad():
        full, _ = model(tokens)
        assert full.shape == (3, 11, 48)
        state, steps = None, []
        for t in range(11):
            logits, state = model(tokens[:, t:t + 1], state)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        head, state = model(tokens[:, :4])  # chunks too
        tail, _ = model(tokens[:, 4:], state)
        torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-5, rtol=1e-5)
    buffer, memory = state[0]
    assert buffer.shape == (3, 16, 2) and isinstance(memory, MemoryState)


def test_state_size_aux_loss_and_options(stand_in):
    model = MemoryLM(32, d_model=16, n_layers=3, mixer=stand_in, mixer_options={"scale": 2.0}, short_conv=0,
                     mlp=False, norm="layer", tie_head=True)
    assert model.state_size(100) == 3 * 16
    assert model.head.weight is model.embed.weight
    x = torch.randint(0, 32, (2, 5))
    _, state = model(x)
    assert state[0][0] is None  # no convolution, no buffer
    expected = sum(m.aux_loss for m in model.mixers)
    assert model.aux_loss.item() == pytest.approx(expected.item()) and expected.item() > 0
    attention = MemoryLM(32, d_model=16, n_layers=2)
    assert attention.state_size(10) == 2 * (2 * 16 * 10)  # keys and values of 10 tokens, two layers
    assert attention.aux_loss.item() == 0.0
    with pytest.raises(ValueError, match="norm must be one of"):
        MemoryLM(32, norm="batch")
    with pytest.raises(ValueError, match="short_conv must be a non-negative int"):
        MemoryLM(32, short_conv=-1)
    with pytest.raises(ValueError, match=r"tokens must be \(B, T\)"):
        attention(torch.zeros(5, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------


def test_training_solves_easy_mqar():
    """Attention + short conv on 4 pairs: well above the 'unused value' shortcut (0.52) in a few seconds.

    A broken loss, mask, optimizer or model stays at the shortcut or below.
    """
    n_pairs, T, V = 4, 24, 32
    base = mqar_baselines(n_pairs, V)
    eval_data = mqar(256, T, n_pairs, V, seed=123)
    torch.manual_seed(0)
    model = MemoryLM(V, d_model=32, n_layers=1, mixer="attention", mlp=False)
    before = evaluate(model, *eval_data)
    out = train_recall(model, mqar_stream(n_pairs, T, V, seed=0), steps=150, seconds=20, lr=1e-2, batch_size=32,
                       eval_data=eval_data, progress=False)
    assert before < 0.2
    assert out["accuracy"] > max(0.9, base["shortcut"] + 0.3), out["curve"][-5:]
    assert out["steps"] <= 150 and out["curve"][-1][0] == out["steps"]


def test_mqar_run_is_deterministic_and_reports_baselines():
    kwargs = dict(d_model=16, n_pairs=2, seq_len=12, vocab_size=16, steps=3, batch_size=8, n_eval=16, seed=5)
    a, b = mqar_run("attention", **kwargs), mqar_run("attention", **kwargs)
    assert a["curve"] == b["curve"] and a["accuracy"] == b["accuracy"]
    assert a["state_size"] == 2 * 2 * 16 * 12 and a["shortcut"] == 0.75 and a["chance"] == 1 / 8
    json.dumps(a)  # a record is plain JSON
    with pytest.raises(ValueError, match="give steps or seconds"):
        train_recall(MemoryLM(16, 16), mqar_stream(2, 12, 16), progress=False)


def test_sweep_cli_writes_records(tmp_path, stand_in):
    from labkit.memory import sweep

    settings = sweep.SweepSettings(seq_len=12, n_pairs=2, vocab_size=16, d_models=(8, 16), steps=2, n_eval=8,
                                   batch_size=4, seeds=2)
    result = sweep.run_sweep(settings, ["attention", stand_in], out=tmp_path / "s.json", verbose=False)
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert len(records) == 2 * 2 * 2 == len(result["records"])
    assert {r["mixer"] for r in records} == {"attention", stand_in}
    assert {"mixer", "d_model", "state_size", "seed", "accuracy", "steps", "seconds", "n_pairs", "seq_len",
            "n_passes"} <= set(records[0])
    again = sweep.run_sweep(settings, ["attention", stand_in], out=tmp_path / "s.json", resume=True, verbose=False)
    assert len(again["records"]) == 8  # nothing rerun
    assert [p["n_passes"] for p in sweep.points(settings, ["linear"])] == [1, 1, 2, 2] * 2


def test_sweep_curves_merge_and_load(tmp_path):
    from labkit.memory import sweep

    def rec(mixer, d, seed, acc, passes=1):
        return {"mixer": mixer, "d_model": d, "state_size": d * d, "seed": seed, "accuracy": acc, "n_passes": passes}

    meta = {"settings": {"steps": 1}, "mixers": ["a"], "seconds": 1.0}
    part1 = {"meta": meta, "records": [rec("a", 4, 0, 0.1), rec("a", 8, 0, 0.5), rec("a", 4, 1, 0.3),
                                       rec("a", 8, 1, 0.7), rec("a", 4, 2, 0.9), rec("a", 4, 0, 0.2, passes=2)]}
    part2 = {"meta": {**meta, "mixers": ["b"]}, "records": [rec("b", 4, 0, 0.4)]}
    for name, part in (("p1", part1), ("p2", part2)):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    merged = sweep.merge([tmp_path / "p1.json", tmp_path / "p2.json"], tmp_path / "all.json")
    assert len(merged["records"]) == 7 and merged["meta"]["mixers"] == ["a", "b"]
    curves = sweep.curves(sweep.load(tmp_path / "all.json"))
    assert curves["a"] == ([16, 64], [[0.1, 0.5], [0.3, 0.7]])  # seed 2 lacks size 64: left out
    assert sweep.curves(merged, n_passes=2) == {"a": ([16], [[0.2]])}
    with pytest.raises(ValueError, match="share points"):
        sweep.merge([tmp_path / "p1.json", tmp_path / "p1.json"], tmp_path / "dup.json")
    with pytest.raises(FileNotFoundError, match="no sweep results"):
        sweep.load(tmp_path / "missing.json")
