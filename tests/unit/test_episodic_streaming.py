"""Tests for labkit.episodic.streaming: streaming memories (budget, pyramid strides, coverage) and persona NLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.episodic.streaming import (
    MEMORIES,
    RECENT,
    CompressiveMemory,
    FIFOMemory,
    LearnedNLI,
    PyramidMemory,
    RuleNLI,
    UniformMemory,
    answer_queries,
    consistency_label,
    make_memory,
    make_persona,
    make_queries,
    make_stream,
    nli_pairs,
    pyramid_capacities,
    select_response,
    streaming_experiment,
)

torch.set_num_threads(1)


def _run(memory, frames):
    for f in frames:
        memory.observe(f)
    return memory


def test_stream_deterministic_and_well_formed():
    a, b = make_stream(n_frames=400, seed=3), make_stream(n_frames=400, seed=3)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.frames, make_stream(n_frames=400, seed=4).frames)
    assert a.frames.shape == (400, 64) and a.frames.dtype == np.float32
    # segments tile [0, T) and the labels follow them; needles appear once and are short
    assert a.segments[0, 1] == 0 and a.segments[-1, 2] == 400
    np.testing.assert_array_equal(a.segments[1:, 1], a.segments[:-1, 2])
    for n in a.needles:
        rows = a.segments[a.segments[:, 0] == n]
        assert len(rows) == 1 and rows[0, 2] - rows[0, 1] <= 3
    assert np.allclose(np.linalg.norm(a.prototypes, axis=1), 1.0, atol=1e-5)
    assert a.labels.max() < a.n_shown < len(a.prototypes)


def test_experiment_deterministic():
    kw = dict(seed=1, n_frames=300, budgets=(16,), n_queries=20)
    r1, r2 = streaming_experiment(**kw), streaming_experiment(**kw)
    assert r1["acc"] == r2["acc"]


@pytest.mark.parametrize("name", MEMORIES)
@pytest.mark.parametrize("budget", [8, 13, 40])
def test_budget_respected(name, budget):
    stream = make_stream(n_frames=600, seed=0)
    mem = make_memory(name, budget, 64)
    for i, f in enumerate(stream.frames):
        mem.observe(f)
        assert len(mem) <= budget
        if i % 97 == 0:
            means, t0, t1, counts = mem.slots()
            assert len(means) == len(t0) <= budget
            assert np.all(t0 <= t1) and np.all(t1 <= i) and np.all(np.diff(t0) > 0)
    if name == "fifo":
        assert len(mem) == budget
    elif name == "uniform":
        assert budget // 2 < len(mem) <= budget


def test_pyramid_strides_and_spans():
    stream = make_stream(n_frames=1000, seed=2)
    mem = _run(PyramidMemory(budget=32, d=64, n_levels=3, ratio=4), stream.frames)
    assert mem.strides() == [1, 4, 16]
    assert sum(mem.capacities) + 2 == 32
    for level, (slots, stride) in enumerate(zip(mem.levels[:-1], mem.strides())):
        t0, t1, c = slots.t0[: slots.n], slots.t1[: slots.n], slots.counts[: slots.n]
        assert slots.n == mem.capacities[level]
        np.testing.assert_array_equal(t1 - t0 + 1, stride)
        np.testing.assert_array_equal(c, stride)
        np.testing.assert_array_equal(t0 % stride, 0)
    top = mem.levels[-1]
    # the top level holds merged slots, each at least one level-(L-1) block long and aligned to it
    assert np.all((top.t0[: top.n] % 16) == 0) and np.all(top.counts[: top.n] >= 16)
    # level-1 slot content is the mean of its 4 frames
    s = mem.levels[1]
    np.testing.assert_allclose(s.sums[0] / 4, stream.frames[s.t0[0]: s.t1[0] + 1].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="budget"):
        pyramid_capacities(5, 3)


@pytest.mark.parametrize("memory", [CompressiveMemory(24, 64), PyramidMemory(24, 64)])
def test_compression_preserves_time_coverage(memory):
    stream = make_stream(n_frames=700, seed=5)
    for t, f in enumerate(stream.frames, start=1):
        memory.observe(f)
        if t in (5, 50, 333, 700):
            _, t0, t1, counts = memory.slots()
            assert t0[0] == 0 and t1[-1] == t - 1
            np.testing.assert_array_equal(t0[1:], t1[:-1] + 1)   # contiguous, disjoint
            assert counts.sum() == t                               # every frame counted exactly once
            np.testing.assert_array_equal(counts, t1 - t0 + 1)


def test_fifo_and_uniform_contents():
    stream = make_stream(n_frames=500, seed=0)
    fifo = _run(FIFOMemory(10, 64), stream.frames)
    means, t0, _, _ = fifo.slots()
    np.testing.assert_array_equal(t0, np.arange(490, 500))
    np.testing.assert_allclose(means, stream.frames[490:], atol=1e-6)
    uni = _run(UniformMemory(10, 64), stream.frames)
    _, t0, _, _ = uni.slots()
    assert np.all(t0 % uni.k == 0) and len(set(np.diff(t0))) == 1 and t0[-1] + uni.k >= 500 - uni.k


def test_queries_with_full_memory_are_answered():
    stream = make_stream(n_frames=400, seed=7)
    mem = _run(FIFOMemory(400, 64), stream.frames)
    q = make_queries(stream, 400, 50, np.random.default_rng(0))
    res = answer_queries(mem, stream.prototypes, q, 400)
    assert res["event_at"] >= 0.95 and res["seen_before"] >= 0.95 and res["last_seen"] >= 0.95
    assert res["count"] >= 0.95
    small = _run(FIFOMemory(8, 64), stream.frames)
    assert answer_queries(small, stream.prototypes, q, 400)["event_at"] < 0.5
    # "present" asks about the last RECENT frames: a short FIFO answers it, however long the stream
    assert all(now - RECENT <= t < now for now in (400,) for t, _ in q["present"])
    assert answer_queries(_run(FIFOMemory(RECENT, 64), stream.frames), stream.prototypes, q, 400)["present"] >= 0.95


def test_batched_nli_matches_single_calls():
    model = LearnedNLI(seed=0).fit(nli_pairs(200, np.random.default_rng(0)), epochs=5)
    pairs = [("i have a dog .", "i have a cat ."), ("i live in oslo .", "i never drink tea .")]
    for checker in (model, RuleNLI()):
        batch = checker.pair_probs(pairs)
        single = np.concatenate([checker.probs([f], r) for f, r in pairs])
        assert np.allclose(batch, single, atol=1e-6)


def test_consistency_label_and_rule_nli():
    facts = [("pet", "dog")]
    assert consistency_label(facts, "pet", "dog", True) == 1
    assert consistency_label(facts, "pet", "cat", True) == -1
    assert consistency_label(facts, "pet", "dog", False) == -1
    assert consistency_label(facts, "pet", "cat", False) == 0
    assert consistency_label(facts, "city", "oslo", True) == 0
    nli = RuleNLI()
    fact = ["i have a dog ."]
    assert np.argmax(nli.probs(fact, "i have a cat .")[0]) == 2            # contradiction
    assert np.argmax(nli.probs(fact, "i never owned a dog .")[0]) == 2     # negated: contradiction
    assert np.argmax(nli.probs(fact, "i just fed my dog .")[0]) == 0       # paraphrase: entailment
    assert np.argmax(nli.probs(fact, "i live in paris .")[0]) == 1         # other attribute: neutral
    assert np.argmax(nli.probs(fact, "how was your day ?")[0]) == 1
    cands = ["i have a cat .", "that sounds fun !", "my dog is sleeping next to me ."]
    assert select_response(cands, fact, nli, np.array([5.0, 1.0, 0.0])) == 2
    assert select_response(cands, [], nli, np.array([5.0, 1.0, 0.0])) == 0


def test_learned_nli_learns_seen_templates():
    model = LearnedNLI(seed=0).fit(nli_pairs(800, np.random.default_rng(0)), epochs=60)
    test = nli_pairs(200, np.random.default_rng(1))
    acc = np.mean([np.argmax(model.probs([f], r)[0]) == 1 - lab for f, r, lab in test])
    assert acc >= 0.8
    p = model.probs(["i have a dog .", "i live in oslo ."], "i have a cat .")
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1.0)


def test_persona_is_functional_and_deterministic():
    a, b = make_persona(5, np.random.default_rng(3)), make_persona(5, np.random.default_rng(3))
    assert a == b and len({attr for attr, _ in a.facts}) == 5


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_frames"):
        make_stream(n_frames=0)
    with pytest.raises(ValueError, match="p_recur"):
        make_stream(p_recur=1.5)
    with pytest.raises(ValueError, match="duration"):
        make_stream(duration=(5, 2))
    with pytest.raises(ValueError, match="name"):
        make_memory("lru", 8, 4)
    with pytest.raises(ValueError, match="budget"):
        FIFOMemory(0, 4)
    with pytest.raises(ValueError, match="short"):
        CompressiveMemory(8, 4, short=8)
    with pytest.raises(ValueError, match="ratio"):
        PyramidMemory(32, 4, ratio=1)
    with pytest.raises(ValueError, match="n_facts"):
        make_persona(99, np.random.default_rng(0))
    with pytest.raises(ValueError, match="base_scores"):
        select_response(["a", "b"], ["i have a dog ."], RuleNLI(), np.zeros(3))
    with pytest.raises(ValueError, match="checkpoints"):
        streaming_experiment(n_frames=100, checkpoints=[200])
    with pytest.raises(ValueError, match="memories"):
        streaming_experiment(n_frames=100, memories=("lru",))
