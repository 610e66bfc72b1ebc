"""labkit.assoc.tensor_brain: the generated world, the representation of a scene, the index layer's softmax read
(= one attention / modern-Hopfield step), exact serial decoding of clean scenes, partial scenes, sampling,
semantic memory as the mean of episodes (a RESCAL-like tensor), episodic recall by time and by cue, the
experiments' qualitative claims, and errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.assoc import tensor_brain as tb
from labkit.assoc.hopfield import modern_retrieve


@pytest.fixture(scope="module")
def world():
    return tb.make_world(12, 240, habit=0.7, seed=0)


def test_world(world):
    assert len(world.entities) == 12 and world.facts.shape == (240, 5) and world.subjects.shape == (240,)
    for p, rng in enumerate(world.ranges):
        assert np.isin(world.facts[:, p], rng).all()  # every object is in its predicate's range
    np.testing.assert_array_equal(world.facts[:, :2], world.semantic[world.subjects])  # stable facts are stable
    assert np.bincount(world.subjects, minlength=12).tolist() == [20] * 12
    at_home = (world.facts[:, 2] == world.habit[world.subjects]).mean()
    assert at_home == pytest.approx(0.7 + 0.3 / 8, abs=0.08)
    s, p, o = world.triples(3)[2]
    assert s == world.entities[world.subjects[3]] and p == "located_in" and o == world.concepts[world.facts[3, 2]]


def test_represent_is_the_sum_of_bound_facts(world):
    brain = tb.TensorBrain(world, n=64, seed=1)
    q = brain.represent(world.subjects[:1], world.facts[:1])[0]
    ref = brain.identity[world.subjects[0]].clone()
    for p in range(5):
        ref += brain.predicate[p] + brain.R[p] @ brain.concept[world.facts[0, p]]
    torch.testing.assert_close(q, ref)
    torch.testing.assert_close(brain.R[2].T @ brain.R[2], torch.eye(64, dtype=torch.float64))  # orthogonal roles
    partial = world.facts[:1].copy()
    partial[0, 3:] = -1
    q2 = brain.represent(world.subjects[:1], partial)[0]
    torch.testing.assert_close(q - q2, sum(brain.predicate[p] + brain.R[p] @ brain.concept[world.facts[0, p]]
                                           for p in (3, 4)))
    torch.testing.assert_close(brain.perceive(world.subjects[:1], world.facts[:1], 0.0), q[None])
    noisy = brain.perceive(world.subjects[:400 // 2], world.facts[:200], 3.0, seed=2) - brain.represent(
        world.subjects[:200], world.facts[:200])
    assert float(noisy.norm(dim=1).mean()) == pytest.approx(3.0, rel=0.05)  # noise of norm σ


def test_index_posterior_is_one_attention_step():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 16, generator=g, dtype=torch.float64)
    q = torch.randn(3, 16, generator=g, dtype=torch.float64)
    p = tb.index_posterior(q, A, 0.7)
    torch.testing.assert_close(p, torch.softmax(0.7 * q @ A.T, dim=1))
    torch.testing.assert_close(p.sum(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(p @ A, modern_retrieve(A, q, 0.7))  # the read = one modern Hopfield step
    hard = tb.index_posterior(q, A, math.inf)
    assert torch.equal(hard.argmax(1), (q @ A.T).argmax(1)) and torch.equal(hard.sum(1), torch.ones(3).double())


def test_serial_decoding_of_clean_and_partial_scenes(world):
    brain = tb.TensorBrain(world, n=512, seed=3)
    out = brain.decode(brain.represent(world.subjects, world.facts))
    np.testing.assert_array_equal(out["subject"].numpy(), world.subjects)
    np.testing.assert_array_equal(out["objects"].numpy(), world.facts)
    assert sorted(out["order"][0].tolist()) == [0, 1, 2, 3, 4]  # every predicate, one at a time
    partial = world.facts[:20].copy()
    partial[:, [1, 3]] = -1
    out = brain.decode(brain.represent(world.subjects[:20], partial))
    np.testing.assert_array_equal(out["objects"].numpy(), partial)  # absent predicates are not decoded
    assert (out["order"][:, 3:] == -1).all()
    single = brain.decode(brain.represent(world.subjects[:1], world.facts[:1])[0])
    assert single["objects"].shape == (1, 5) and 0.0 < float(single["p_subject"][0]) <= 1.0


def test_sampling_mode(world):
    brain = tb.TensorBrain(world, n=128, seed=4)
    q = brain.perceive(world.subjects[:100], world.facts[:100], 2.0, seed=5)
    hot = brain.decode(q, beta=1.0, mode="sample", seed=6)
    again = brain.decode(q, beta=1.0, mode="sample", seed=6)
    assert torch.equal(hot["objects"], again["objects"])  # deterministic under a seed
    arg = brain.decode(q)
    assert (hot["objects"] != arg["objects"]).float().mean() > 0.2  # β = 1 is a hot softmax over ~30 symbols
    cold = brain.decode(q, beta=1e4, mode="sample", seed=6)
    assert torch.equal(cold["objects"], arg["objects"])


def test_semantic_memory(world):
    brain = tb.TensorBrain(world, n=256, seed=7)
    q = brain.represent(world.subjects, world.facts)
    brain.consolidate(q, world.subjects)
    s0 = world.subjects == 0
    torch.testing.assert_close(brain.entity[0], q[torch.from_numpy(s0)].mean(0))
    X = brain.semantic_tensor()
    torch.testing.assert_close(X[2, 1, 5], brain.entity[2] @ brain.R[1] @ brain.concept[5])
    for p in (0, 1):  # the stable facts are the largest entries of their slices
        best = X[:, p, torch.from_numpy(world.ranges[p])].argmax(1).numpy()
        np.testing.assert_array_equal(world.ranges[p][best], world.semantic[:, p])
    out = brain.decode(brain.entity, subjects=np.arange(12))
    np.testing.assert_array_equal(out["objects"][:, :2].numpy(), world.semantic)
    assert (out["objects"][:, 2].numpy() == world.habit).mean() >= 0.9  # the habit is the prior's place


def test_episodic_memory(world):
    brain = tb.TensorBrain(world, n=256, seed=8)
    q = brain.represent(world.subjects, world.facts)
    brain.store_episodes(q)
    torch.testing.assert_close(brain.recall_time([4, 9]), q[[4, 9]])
    cue_facts = world.facts[:30].copy()
    cue_facts[:, [0, 1, 4]] = -1
    cue = brain.represent(world.subjects[:30], cue_facts)
    torch.testing.assert_close(brain.recall_by_cue(cue, 0.5), torch.softmax(0.5 * cue @ q.T, 1) @ q)
    torch.testing.assert_close(brain.recall_by_cue(cue, 0.5), modern_retrieve(q, cue, 0.5))
    hard = brain.recall_by_cue(cue, math.inf)
    assert torch.equal(hard, q[(cue @ q.T).argmax(1)])
    out = brain.decode(hard, subjects=world.subjects[:30])
    key = world.subjects * 10_000 + world.facts[:, 2] * 100 + world.facts[:, 3]  # the cue's content
    unique = np.array([(key == key[t]).sum() == 1 for t in range(30)])
    assert unique.sum() >= 10  # habits make some cues ambiguous: they match several episodes
    ok = out["objects"][:, 4].numpy() == world.facts[:30, 4]
    assert ok[unique].all()


def test_experiments_show_the_claimed_effects():
    per = tb.perception_experiment([0.0, 8.0], n=256, alphas=(0.0, 1.0), n_test=200, n_seeds=1, seed=1)
    assert per["scene"][0, 0, 0] >= 0.95 and per["scene"][0, 0, 1] < 0.2  # noise destroys whole-scene decoding
    assert per["semantic"][0, 1, 1] > per["semantic"][0, 0, 1] + 0.2  # the semantic prior rescues stable facts
    assert per["unusual_place"][0, 1, 0] < per["unusual_place"][0, 0, 0] - 0.05  # and biases unusual ones
    sem = tb.semantic_experiment([1, 20], n_seeds=1, seed=2)
    assert sem["stable"].min() >= 0.95 and sem["habit"][0, 1] > sem["habit"][0, 0] and sem["habit"][0, 1] >= 0.9
    assert sem["tensor_corr"].min() > 0.5
    epi = tb.episodic_experiment([20, 400], [0.25, math.inf], n_probe=100, n_seeds=1, seed=3)
    assert epi["by_time"].min() >= 0.95 and epi["recall"][0, 1, 0] == 1.0
    assert epi["recall"][0, 0, 1] < epi["recall"][0, 1, 1] - 0.3  # a hot softmax blends many episodes
    assert epi["unique"][0, 1] < epi["unique"][0, 0] == 1.0


def test_bad_input(world):
    brain = tb.TensorBrain(world, n=32)
    with pytest.raises(ValueError, match="world must be a TensorBrainWorld"):
        tb.TensorBrain({"entities": []})
    with pytest.raises(ValueError, match="n must be an integer >= 8"):
        tb.TensorBrain(world, n=4)
    with pytest.raises(ValueError, match="habit must be a number in"):
        tb.make_world(habit=1.5)
    with pytest.raises(ValueError, match="n_entities must be"):
        tb.make_world(n_entities=0)
    with pytest.raises(ValueError, match="facts must have shape"):
        brain.represent([0], [[1, 2, 3]])
    with pytest.raises(ValueError, match="subjects must be entity indices"):
        brain.represent([12], world.facts[:1])
    with pytest.raises(ValueError, match="facts must be concept indices"):
        brain.represent([0], [[0, 0, 0, 0, 999]])
    with pytest.raises(ValueError, match="noise must be"):
        brain.perceive([0], world.facts[:1], -1.0)
    with pytest.raises(ValueError, match="q must have shape"):
        brain.decode(torch.zeros(31))
    with pytest.raises(ValueError, match="beta must be a number > 0"):
        brain.decode(torch.zeros(32), beta=0.0)
    with pytest.raises(ValueError, match="mode must be"):
        brain.decode(torch.zeros(32), mode="greedy")
    with pytest.raises(ValueError, match="one entity per row"):
        brain.decode(torch.zeros(2, 32), subjects=[0])
    with pytest.raises(ValueError, match="no episodes stored"):
        brain.recall_time(0)
    with pytest.raises(ValueError, match="no episodes stored"):
        brain.recall_by_cue(torch.zeros(32), 1.0)
    brain.store_episodes(torch.zeros(3, 32))
    with pytest.raises(ValueError, match="t must be time indices in 0..2"):
        brain.recall_time(3)
    with pytest.raises(ValueError, match="q must have shape \\(T, 32\\)"):
        brain.store_episodes(torch.zeros(3, 31))
    with pytest.raises(ValueError, match="A must be an \\(I, n\\)"):
        tb.index_posterior(torch.zeros(4), torch.zeros(0, 4), 1.0)
    with pytest.raises(ValueError, match="t must be an episode index"):
        world.triples(240)
    with pytest.raises(ValueError, match="noises must be"):
        tb.perception_experiment([-1.0])
