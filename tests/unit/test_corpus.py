"""The tiny LM's corpus (labkit.data.corpus): determinism, splits, and where the loss falls."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data import corpus
from labkit.models import tokenizer as tk


def test_english_split_is_the_last_tenth():
    train, held, full = corpus.english_text("train"), corpus.english_text("heldout"), corpus.english_text("all")
    assert train + held == full
    assert abs(len(held) / len(full) - 0.1) < 1e-3
    assert len(full) > 300_000
    assert corpus.english_tokens("heldout").tobytes() == held.encode("utf-8")
    with pytest.raises(ValueError, match="split"):
        corpus.english_text("test")


def test_batches_are_deterministic():
    a, b = corpus.training_batch(3, 8, 64), corpus.training_batch(3, 8, 64)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.mask, b.mask)
    c = corpus.training_batch(4, 8, 64)
    assert not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.shape == a.targets.shape == a.mask.shape == (8, 64) and a.inputs.dtype == np.int64
    assert np.array_equal(a.inputs[:, 1:], a.targets[:, :-1])  # targets are the inputs shifted by one


def test_lookup_loss_is_on_the_answer_only():
    for seed in range(50):
        n = 1 + seed % 8
        ep = corpus.lookup_episode(seed, n)
        toks = ep.tokens
        assert len(toks) == 2 * n + 4 and toks[0] == tk.DOC and toks[-3] == tk.SEP
        assert [i for i, m in enumerate(ep.loss) if m] == [len(toks) - 1]
        pairs = dict(zip(toks[1:-3:2], toks[2:-3:2]))
        assert len(pairs) == n and len(set(pairs.values())) == n  # distinct keys, distinct values
        assert all(tk.is_key(k) and tk.is_value(v) for k, v in pairs.items())
        assert toks[-1] == pairs[toks[-2]]


def test_trace_answer_follows_the_chain():
    for seed in range(50):
        ep = corpus.trace_episode(seed)
        toks = ep.tokens
        assert [i for i, m in enumerate(ep.loss) if m] == [len(toks) - 1]
        env = {}
        for name, src in zip(toks[1:-3:2], toks[2:-3:2]):
            assert tk.is_key(name) and name not in env  # assigned once
            env[name] = src if tk.is_value(src) else env[src]  # sources are values or earlier variables
        assert toks[-1] == env[toks[-2]]


def test_copy_loss_is_on_the_copy():
    ep = corpus.copy_episode(0, length=5)
    toks, loss = ep.tokens, ep.loss
    assert toks[:2] == [tk.DOC, tk.COPY] and toks[7] == tk.SEP and toks[2:7] == toks[8:]
    assert loss == [False] * 8 + [True] * 5


def test_packed_rows_never_reuse_a_key_and_score_only_answers():
    for seed in range(30):
        row = corpus.packed_row(seed, 129)
        toks, loss = row.tokens, row.loss
        assert len(toks) == len(loss) == 129
        # split into episodes at <doc>; the English filler (if any) follows the last one
        starts = [i for i, t in enumerate(toks) if t == tk.DOC]
        assert starts and starts[0] == 0
        seen: set[int] = set()
        for a, b in zip(starts, starts[1:] + [len(toks)]):
            keys = {t for t in toks[a:b] if tk.is_key(t)}
            assert not keys & seen, "a key was reused within a row"
            seen |= keys
        for t, m in zip(toks, loss):
            if t >= 256:  # structured tokens: only values can be targets, never keys, <doc>, <sep>, <copy>
                assert not m or tk.is_value(t)
        # every scored value is an answer: right after <sep> kq, or in a copy after <sep>
        for i, (t, m) in enumerate(zip(toks, loss)):
            if m and tk.is_value(t):
                sep = max(j for j in range(i) if toks[j] == tk.SEP)
                assert all(toks[j] != tk.DOC for j in range(sep, i))


def test_english_rows_score_every_byte():
    b = corpus.training_batch(0, 16, 32, english_fraction=1.0)
    assert b.mask.all() and (b.inputs < 256).all()


def test_lookup_prompts():
    prompts, answers = corpus.lookup_prompts(1, 10, 8)
    assert prompts.shape == (10, 19) and answers.shape == (10,)
    for p, a in zip(prompts, answers):
        pairs = dict(zip(p[1:-2:2], p[2:-2:2]))
        assert p[-2] == tk.SEP and pairs[p[-1]] == a
    p2, _ = corpus.lookup_prompts(2, 10, 8)
    assert not np.array_equal(prompts, p2)
