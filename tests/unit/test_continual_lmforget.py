"""Chapter 4, few-shot memories in tinylm: the 2AFC's symmetry, recall after many exposures, determinism, no in-place
training of the pretrained weights, bad input, the FAST experiment and its plots."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from labkit.continual.lmforget import (
    FAST,
    METRICS,
    candidate_sentences,
    curves,
    lmforget_experiment,
    plot_exposures,
    plot_retention,
    recall,
    recognition,
    recognition_score,
    retention_run,
    sentence_losses,
    shuffle_characters,
    study_pairs,
    summary_rows,
)
from labkit.data import corpus
from labkit.models import TinyLM, TinyLMConfig, load
from labkit.models import tokenizer as tk

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tinylm() -> TinyLM:
    return load("tinylm")


def _small_lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    cfg = TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64,
                       context=128)
    return TinyLM(cfg)


# ---------------------------------------------------------------------------------------------------------
# Stimuli


def test_study_sentences_are_novel_matched_and_seeded():
    train = corpus.english_text("train")
    pool = candidate_sentences()
    assert len(pool) >= 40 and len(set(pool)) == len(pool)
    assert all(40 <= len(s) <= 80 and s not in train for s in pool)
    s0, f0 = study_pairs(8, seed=0)
    assert study_pairs(8, seed=0) == (s0, f0)
    assert study_pairs(8, seed=1) != (s0, f0)
    assert not set(s0) & set(f0) and len(set(s0 + f0)) == 16
    # matched in length: neighbours in the length-sorted pool
    assert max(abs(len(a) - len(b)) for a, b in zip(s0, f0)) <= 6
    # which member is studied is a coin flip: over seeds, each member of a pair is studied about half the time
    studied_first = []
    pool_sorted = sorted(pool, key=lambda s: (len(s), s))
    first = set(pool_sorted[0::2])
    for seed in range(40):
        s, _ = study_pairs(10, seed)
        studied_first += [x in first for x in s]
    assert 0.4 < np.mean(studied_first) < 0.6


def test_shuffle_characters_keeps_letters():
    s = ["Return a shallow copy of the dictionary."]
    out = shuffle_characters(s, seed=3)
    assert sorted(out[0]) == sorted(s[0]) and out[0] != s[0]
    assert shuffle_characters(s, seed=3) == out


# ---------------------------------------------------------------------------------------------------------
# Recognition


def test_recognition_score_hand_computed_and_swap():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 1.0, 3.0, 5.0])
    assert recognition_score(a, b) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert recognition_score(a, b) + recognition_score(b, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="loss_studied"):
        recognition_score(a, b[:3])


def test_recognition_swap_flips_exactly_and_is_chance_for_unseen_sentences(tinylm):
    # tinylm never saw the held-out sentences: which member of a pair is "studied" is a coin flip, so the 2AFC
    # score is 0.5 in expectation; swapping studied and foil turns r into exactly 1 - r.
    s, f = study_pairs(10, seed=4)
    r = recognition(tinylm, s, f)
    assert r + recognition(tinylm, f, s) == pytest.approx(1.0, abs=1e-12)
    pool = list(candidate_sentences())
    loss = dict(zip(pool, sentence_losses(tinylm, pool)))
    assert recognition_score([loss[x] for x in s], [loss[x] for x in f]) == pytest.approx(r)
    n_pairs = len(pool) // 2
    scores = []
    for seed in range(300):
        s, f = study_pairs(n_pairs, seed)
        scores.append(recognition_score([loss[x] for x in s], [loss[x] for x in f]))
    assert abs(np.mean(scores) - 0.5) < 0.03, np.mean(scores)


def test_sentence_losses_are_the_mean_nll_per_byte(tinylm):
    s = "Return a shallow copy of the dictionary."
    ids = [tk.encode("\n")[0], *tk.encode(s)]
    with torch.no_grad():
        logp = torch.log_softmax(tinylm(torch.tensor([ids[:-1]])), -1)[0]
    expected = -float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
    # batched with a longer sentence (padding must not change it)
    got = sentence_losses(tinylm, [s, s + " And a much longer second part of it."])[0]
    assert got == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Recall and the stream


def test_recall_reaches_high_accuracy_after_many_exposures():
    model = _small_lm()
    s, f = ["The quick brown fox jumps over the lazy dog today."], ["Keys and values are iterated in insertion order."]
    r = retention_run(model, s, f, exposures=150, eval_steps=(0,), lr=1e-2, study_batch=1, warmup_steps=0,
                      cue_chars=10)
    assert r["before"]["recall_char"] < 0.3  # an untrained model cannot continue it
    assert r["recall_char"][0] > 0.95 and r["recall_exact"][0] == 1.0
    assert r["recognition"][0] == 1.0 and r["loss_studied"][0] < r["loss_foil"][0]


def test_recall_per_char_counts_positions():
    model = _small_lm(1)
    s = ["Return a shallow copy of the dictionary.", "Return the number of entries in the dictionary."]
    out = recall(model, s, cue_chars=12)
    assert out["n_target"] == [len(x) - 12 for x in s]
    pooled = sum(p * n for p, n in zip(out["per_sentence"], out["n_target"])) / sum(out["n_target"])
    assert out["char"] == pytest.approx(pooled)
    assert out["exact"] == np.mean([p == 1.0 for p in out["per_sentence"]])


def test_retention_run_is_deterministic_and_copies_the_model():
    model = _small_lm(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s, f = study_pairs(3, seed=0)
    kw = dict(exposures=2, eval_steps=(0, 2), lr=3e-3, filler_batch=2, filler_length=32, warmup_steps=1)
    a = retention_run(model, s, f, seed=5, **kw)
    b = retention_run(model, s, f, seed=5, **kw)
    c = retention_run(model, s, f, seed=6, **kw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified in place"
    for m in METRICS:
        assert a[m] == b[m], m
        assert len(a[m]) == 2
    assert a["loss_studied"] != c["loss_studied"]  # another filler stream


def test_bad_inputs_name_the_argument():
    model = _small_lm()
    s, f = study_pairs(2, seed=0)
    with pytest.raises(ValueError, match="exposures"):
        retention_run(model, s, f, exposures=0)
    with pytest.raises(ValueError, match="studied"):
        retention_run(model, [], [])
    with pytest.raises(ValueError, match="foils"):
        retention_run(model, s, f[:1])
    with pytest.raises(ValueError, match="eval_steps"):
        retention_run(model, s, f, eval_steps=(4, 2))
    with pytest.raises(ValueError, match="lr"):
        retention_run(model, s, f, lr=0.0)
    with pytest.raises(ValueError, match="studied"):
        retention_run(model, ["short"], ["tiny"], cue_chars=20)
    with pytest.raises(ValueError, match="sentences"):
        recall(model, [])
    with pytest.raises(ValueError, match="n_pairs"):
        study_pairs(10_000)
    with pytest.raises(ValueError, match="exposures"):
        lmforget_experiment(model=model, exposures=(0,))
    with pytest.raises(ValueError, match="eval_steps"):
        lmforget_experiment(model=model, eval_steps=(1, 2))


# ---------------------------------------------------------------------------------------------------------
# The experiment


def test_fast_experiment_runs_in_budget_and_plots(tinylm):
    t0 = time.perf_counter()
    res = lmforget_experiment(model=tinylm, **FAST)
    elapsed = time.perf_counter() - t0
    assert elapsed < 16, f"FAST took {elapsed:.1f} s (budget 8 s on an idle core)"
    runs = res["runs"]
    assert len(runs) == len(FAST["exposures"]) + len(FAST["shuffled_exposures"])
    at0 = curves(res, "recognition", step=0)
    assert sorted(at0) == sorted(FAST["exposures"])
    ret = curves(res, "recall_char")
    assert list(ret) == list(FAST["retention_exposures"]) and ret[4].shape == (1, len(FAST["eval_steps"]))
    for m in METRICS:
        for r in runs:
            assert all(np.isfinite(r[m]))
    # studying lowers the studied sentences' loss below the foils'
    r4 = next(r for r in runs if r["exposures"] == 4 and r["stimuli"] == "sentences")
    assert r4["loss_studied"][0] < r4["loss_foil"][0]
    fig = plot_retention(res)
    assert len(fig.data) >= 1
    fig = plot_exposures(res)
    assert len(fig.data) >= 4
    rows = summary_rows(res)
    assert {(r["stimuli"], r["exposures"]) for r in rows} == \
        {("sentences", e) for e in FAST["exposures"]} | {("shuffled", e) for e in FAST["shuffled_exposures"]}


def test_batched_recall_matches_one_sentence_greedy_generation(tinylm):
    pool = list(candidate_sentences())[:6]
    batched = recall(tinylm, pool, cue_chars=15)["per_sentence"]
    for s, got in zip(pool, batched):
        ids = tk.encode(s)
        out = tinylm.generate([tk.encode("\n")[0], *ids[:15]], max_new_tokens=len(ids) - 15)
        assert got == pytest.approx(np.mean(np.array(out) == np.array(ids[15:])))
