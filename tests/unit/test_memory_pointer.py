"""Pointer networks: the variable-size output distribution, the repeat mask, causality under teacher forcing,
the data, the metrics, determinism and the input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.memory.pointer import (
    PointerNet,
    Seq2SeqAttention,
    decode,
    evaluate,
    pointer_compare,
    pointer_data,
    train_pointer,
)

torch.set_num_threads(1)


def _pointer(hidden: int = 16, seed: int = 0) -> PointerNet:
    torch.manual_seed(seed)
    return PointerNet(hidden).eval()


def _seq2seq(max_len: int = 6, hidden: int = 16, seed: int = 0) -> Seq2SeqAttention:
    torch.manual_seed(seed)
    return Seq2SeqAttention(max_len, hidden).eval()


# ---------------------------------------------------------------------------------------------------------
# Data


@pytest.mark.parametrize("n", [1, 2, 9])
def test_sort_targets_are_the_argsort(n):
    x, y = pointer_data("sort", n, 7, seed=3)
    assert x.shape == y.shape == (7, n) and x.dtype == torch.float32 and y.dtype == torch.long
    assert ((x >= 0) & (x < 1)).all()
    for b in range(7):
        row = x[b].tolist()
        assert y[b].tolist() == sorted(range(n), key=row.__getitem__)
    assert (torch.diff(torch.gather(x, 1, y), dim=1) >= 0).all()


def test_copy_and_reverse_targets():
    x, y = pointer_data("copy", 5, 3, seed=1)
    assert y.tolist() == [[0, 1, 2, 3, 4]] * 3
    x2, y2 = pointer_data("reverse", 5, 3, seed=1)
    assert y2.tolist() == [[4, 3, 2, 1, 0]] * 3
    assert torch.equal(x, x2)  # same seed, same numbers: only the target rule differs


def test_data_is_seeded():
    a, b = pointer_data("sort", 6, 4, seed=5), pointer_data("sort", 6, 4, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], pointer_data("sort", 6, 4, seed=6)[0])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    from_generator = pointer_data("sort", 6, 4, seed=123, generator=g2)[0]  # the generator wins over the seed
    assert torch.equal(pointer_data("sort", 6, 4, generator=g1)[0], from_generator)


# ---------------------------------------------------------------------------------------------------------
# The pointer distribution


@pytest.mark.parametrize("n", [1, 3, 8, 25])
def test_pointer_distribution_is_over_exactly_n_positions(n):
    model = _pointer()
    x = torch.rand(3, n)
    for logits in (model(x), model(x, targets=torch.randint(n, (3, n + 2)))):
        assert logits.shape[0] == 3 and logits.shape[-1] == n
        assert torch.isfinite(logits).all()
        p = torch.softmax(logits, -1)
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-6)
    assert model(x).shape == (3, n, n)  # greedy: n steps by default
    assert model(x, steps=2).shape == (3, 2, n)


def test_seq2seq_dictionary_is_fixed_and_cannot_point_past_max_len():
    model = _seq2seq(max_len=5)
    x = torch.rand(4, 9)
    assert model(x).shape == (4, 9, 5)  # 9 steps, 5 tokens, whatever n is
    pred = decode(model, x)
    assert pred.max() < 5
    masked = decode(model, x, mask_repeats=True)
    assert (masked[:, 5:] == -1).all()  # every token used after 5 steps: nothing valid left
    for row in masked[:, :5].tolist():
        assert sorted(row) == list(range(5))
    with pytest.raises(ValueError, match="targets"):
        model(x, targets=torch.full((4, 9), 5))
    short = decode(model, torch.rand(4, 3), mask_repeats=True)  # n < max_len: tokens ≥ n are masked
    for row in short.tolist():
        assert sorted(row) == [0, 1, 2]


def test_mask_forbids_repeats():
    model = _pointer(seed=1)
    x = torch.rand(64, 7)
    free = decode(model, x)
    assert any(len(set(r)) < 7 for r in free.tolist())  # an untrained net repeats itself...
    for row in decode(model, x, mask_repeats=True).tolist():  # ...the mask makes every output a permutation
        assert sorted(row) == list(range(7))
    targets = torch.stack([torch.randperm(7) for _ in range(64)])
    logits = model(x, targets=targets, mask_repeats=True)
    for b in range(4):
        for i in range(7):
            forbidden = set(targets[b, :i].tolist())
            assert {j for j in range(7) if torch.isinf(logits[b, i, j])} == forbidden
    with pytest.raises(ValueError, match="mask_repeats"):
        model(x, steps=8, mask_repeats=True)


@pytest.mark.parametrize("make", [_pointer, _seq2seq])
@pytest.mark.parametrize("mask", [False, True])
def test_teacher_forcing_is_causal(make, mask):
    model = make()
    n = 6
    x = torch.rand(5, n)
    targets = torch.stack([torch.randperm(n) for _ in range(5)])
    base = model(x, targets=targets, mask_repeats=mask)
    for i in range(n - 1):
        changed = targets.clone()
        changed[:, i] = (targets[:, i] + 1) % n  # step i's target changes (step i+1 reads a different input)
        out = model(x, targets=changed, mask_repeats=mask)
        assert torch.equal(out[:, : i + 1], base[:, : i + 1])
        assert not torch.equal(out[:, i + 1], base[:, i + 1])


@pytest.mark.parametrize("make", [_pointer, _seq2seq])
@pytest.mark.parametrize("mask", [False, True])
def test_greedy_decoding_matches_teacher_forcing_on_its_own_outputs(make, mask):
    model = make(seed=2)
    x = torch.rand(6, 6)
    greedy = model(x, mask_repeats=mask)
    own = decode(model, x, mask_repeats=mask)
    forced = model(x, targets=own, mask_repeats=mask)
    assert torch.allclose(greedy, forced, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Metrics, training, the comparison


class _Oracle(nn.Module):
    """Points at the k-th smallest element at step k (a perfect sorter), or at position k (``identity``)."""

    def __init__(self, identity: bool = False):
        super().__init__()
        self.identity = identity

    def forward(self, x, mask_repeats=False):
        B, n = x.shape
        order = torch.arange(n).expand(B, n) if self.identity else torch.argsort(x, 1)
        return torch.nn.functional.one_hot(order, n).float()


def test_evaluate_scores_against_hand_computed_metrics():
    perfect = evaluate(_Oracle(), "sort", 6, batch=50, seed=4)
    assert perfect == {"exact": 1.0, "per_position": 1.0, "permutation": 1.0}
    x, y = pointer_data("sort", 6, 50, seed=4)
    fixed = (y == torch.arange(6)).float()
    got = evaluate(_Oracle(identity=True), "sort", 6, batch=50, seed=4)
    assert got["per_position"] == pytest.approx(fixed.mean().item())
    assert got["exact"] == pytest.approx(fixed.all(1).float().mean().item())
    assert got["permutation"] == 1.0


def test_training_is_deterministic():
    runs = []
    for _ in range(2):
        model = _pointer(hidden=8, seed=3).train()
        losses = train_pointer(model, "sort", lengths=range(3, 7), steps=5, batch=8, seed=7)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    other = train_pointer(_pointer(hidden=8, seed=3).train(), "sort", lengths=range(3, 7), steps=5, batch=8, seed=8)
    assert other != runs[0][0]


def test_training_learns_reverse():
    model = _pointer(hidden=16, seed=3).train()
    losses = train_pointer(model, "reverse", lengths=range(3, 7), steps=150, batch=16, lr=1e-2, seed=7)
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])
    assert evaluate(model, "reverse", 6, batch=128)["per_position"] > 0.9


def test_compare_baseline_cannot_reach_positions_past_its_dictionary():
    kw = dict(task="sort", train_lengths=(3, 4), test_lengths=(3, 4, 7), hidden=8, steps=4, batch=8, eval_batch=32)
    a, b = pointer_compare(**kw), pointer_compare(**kw)
    assert a["acc"] == b["acc"] and a["losses"] == b["losses"]
    assert a["max_len"] == 4 and a["lengths"] == [3, 4, 7]
    for mode in ("greedy", "masked"):
        acc = a["acc"]["seq2seq"][mode]
        assert acc["exact"][2] == 0.0 and acc["permutation"][2] == 0.0
        assert acc["per_position"][2] <= 4 / 7
        assert a["acc"]["pointer"]["masked"]["permutation"] == [1.0, 1.0, 1.0]
    ex = a["example"]
    assert ex["n"] == 9 and len(ex["probs"]) == 9 and all(len(r) == 9 for r in ex["probs"])
    assert sorted(ex["target"]) == list(range(9))
    assert all(abs(sum(r) - 1) < 1e-5 for r in ex["probs_by_rank"])


# ---------------------------------------------------------------------------------------------------------
# Input checks


def test_bad_inputs_raise():
    model, base = _pointer(), _seq2seq(max_len=4)
    with pytest.raises(ValueError, match="x must"):
        model(torch.rand(2, 0))  # empty sequence
    with pytest.raises(ValueError, match="x must"):
        model(torch.rand(0, 3))  # empty batch
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(5))  # 1-D
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(2, 3, 2))  # in_dim is 1
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.rand(2, 3, 1, 1))
    with pytest.raises(TypeError, match="x must be a tensor"):
        model([[0.1, 0.2]])
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="targets must have shape"):
        model(x, targets=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be positions"):
        model(x, targets=torch.tensor([[0, 1, 3], [0, 1, 2]]))
    with pytest.raises(ValueError, match="targets must be positions"):
        model(x, targets=torch.tensor([[0, 1, -1], [0, 1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        model(x, targets=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask_repeats"):
        model(x, targets=torch.zeros(2, 4, dtype=torch.long), mask_repeats=True)
    with pytest.raises(ValueError, match="task must be one of"):
        pointer_data("shuffle", 3, 2)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        pointer_data("sort", 0, 2)
    with pytest.raises(ValueError, match="batch must be"):
        pointer_data("sort", 3, 0)
    with pytest.raises(ValueError, match="max_len"):
        train_pointer(base, lengths=(3, 5), steps=1)
    with pytest.raises(ValueError, match="max_len must be"):
        Seq2SeqAttention(0)
    with pytest.raises(ValueError, match="hidden must be"):
        PointerNet(0)
    with pytest.raises(ValueError, match="task must be one of"):
        pointer_compare(task="shuffle")


def test_committed_results_are_consistent():
    from labkit.memory.pointer import load

    res = load()
    L, K = res["lengths"], res["max_len"]
    assert res["train_lengths"] == list(range(5, K + 1))
    for model in ("pointer", "seq2seq"):
        for mode in ("greedy", "masked"):
            for metric, values in res["acc"][model][mode].items():
                assert len(values) == len(L) and all(0.0 <= v <= 1.0 for v in values), (model, mode, metric)
            acc = res["acc"][model][mode]
            assert all(e <= p + 1e-9 for e, p in zip(acc["exact"], acc["per_position"]))
    for n, e, p in zip(L, res["acc"]["seq2seq"]["masked"]["exact"], res["acc"]["seq2seq"]["masked"]["per_position"]):
        if n > K:  # the fixed dictionary has no token for positions ≥ max_len
            assert e == 0.0 and p <= K / n
    assert res["acc"]["pointer"]["masked"]["permutation"] == [1.0] * len(L)
    ex = res["example"]
    assert sorted(ex["target"]) == list(range(ex["n"])) and len(ex["probs_by_rank"]) == ex["n"]
    with pytest.raises(FileNotFoundError):
        load("/nonexistent/pointer.json")
