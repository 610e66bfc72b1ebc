"""Chapter 4 memories: ReLoop2's error memory (FIFO, kNN, causal prequential loop) and CMT's compressed bank."""

from __future__ import annotations

import pytest
import torch

from labkit.continual.data import _raw_digits, drifting_stream
from labkit.continual.errormem import (
    CompressedBank,
    ErrorMemory,
    _stream_source_ids,
    cmt_experiment,
    compensate,
    make_facts,
    prequential,
    reloop_experiment,
)
from labkit.continual.models import MLP

torch.set_num_threads(1)


def _stream(T=6, B=8, d=10, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, d, generator=g), torch.randint(0, C, (T, B), generator=g)


def _model(d=10, C=3, seed=0):
    torch.manual_seed(seed)
    return MLP(d, (16,), C)


# ---- ReLoop2 ---------------------------------------------------------------------------------------------


def test_empty_memory_changes_nothing():
    x, y = _stream()
    model = _model()
    bare = prequential(model, x, y)
    # a memory that is never consulted with anything stored: lam = 0, or look-ups before any write
    mem = prequential(model, x, y, memory=ErrorMemory(32, 16, 3), lam=0.0)
    torch.testing.assert_close(bare["probs"], mem["probs"])
    empty = ErrorMemory(4, 16, 3)
    p = torch.softmax(torch.randn(5, 3), 1)
    torch.testing.assert_close(compensate(p, empty.lookup(torch.randn(5, 16))), p)
    # batch 0 is served before anything is written
    with_mem = prequential(model, x, y, memory=ErrorMemory(32, 16, 3))
    torch.testing.assert_close(with_mem["probs"][0], bare["probs"][0])
    assert not torch.allclose(with_mem["probs"][1:], bare["probs"][1:])


@pytest.mark.parametrize("finetune_every", [None, 2])
def test_causal_label_t_never_affects_prediction_t(finetune_every):
    x, y = _stream(T=7)
    model = _model()
    ref = prequential(model, x, y, memory=ErrorMemory(16, 16, 3, k=3), finetune_every=finetune_every)
    for t in (0, 3, 6):
        y2 = y.clone()
        y2[t:] = (y2[t:] + 1) % 3  # change label t and everything after it
        alt = prequential(model, x, y2, memory=ErrorMemory(16, 16, 3, k=3), finetune_every=finetune_every)
        torch.testing.assert_close(alt["probs"][: t + 1], ref["probs"][: t + 1])
        if t < 6:  # ... but the next batch does see it
            assert not torch.allclose(alt["probs"][t + 1], ref["probs"][t + 1])


def test_prequential_leaves_model_untouched_and_finetune_counts_steps():
    x, y = _stream(T=6)
    model = _model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    r = prequential(model, x, y, finetune_every=2, finetune_steps=3)
    assert r["grad_steps"] == 9
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n])


def test_fifo_capacity_and_eviction():
    mem = ErrorMemory(capacity=5, dim=2, n_outputs=1, k=1)
    keys = torch.stack([torch.tensor([torch.cos(a), torch.sin(a)]) for a in torch.linspace(0, 3.0, 8)])
    for i in range(8):
        mem.write(keys[i: i + 1], torch.tensor([[float(i)]]))
        assert len(mem) == min(i + 1, 5)
    assert mem.n_writes == 8 and len(mem) == 5
    assert sorted(mem.errors[:5, 0].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]  # the three oldest were evicted
    # the nearest key of an evicted item's key now returns the closest surviving one, never the evicted error
    assert mem.lookup(keys[:1]).item() == 3.0
    assert mem.lookup(keys[6:7]).item() == 6.0
    assert mem.n_lookups == 2 and mem.n_compares == 10


def test_knn_mean_and_compensation():
    mem = ErrorMemory(capacity=10, dim=3, n_outputs=2, k=2)
    keys = torch.eye(3)
    mem.write(torch.cat([keys, -keys]), torch.tensor([[1.0, -1], [0.5, -0.5], [0, 0], [9, 9], [9, 9], [9, 9]]))
    q = torch.tensor([[1.0, 0.9, 0.0]])
    torch.testing.assert_close(mem.lookup(q), torch.tensor([[0.75, -0.75]]))
    p = torch.tensor([[0.5, 0.5]])
    out = compensate(p, mem.lookup(q), lam=0.2)
    torch.testing.assert_close(out, torch.tensor([[0.65, 0.35]]))
    assert torch.allclose(compensate(torch.softmax(torch.randn(4, 3), 1), torch.randn(4, 3) * 5).sum(1),
                          torch.ones(4))


@pytest.mark.parametrize("kwargs,name", [
    ({"capacity": 0, "dim": 2, "n_outputs": 1}, "capacity"),
    ({"capacity": 2, "dim": -1, "n_outputs": 1}, "dim"),
    ({"capacity": 2, "dim": 2, "n_outputs": 1, "k": 0}, "k"),
    ({"capacity": 2.5, "dim": 2, "n_outputs": 1}, "capacity"),
])
def test_memory_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ErrorMemory(**kwargs)


def test_bad_arguments_name_the_argument():
    mem = ErrorMemory(4, 16, 3)
    with pytest.raises(ValueError, match="keys"):
        mem.write(torch.randn(2, 5), torch.randn(2, 3))
    with pytest.raises(ValueError, match="errors"):
        mem.write(torch.randn(2, 16), torch.randn(3, 3))
    with pytest.raises(ValueError, match="keys"):
        mem.lookup(torch.randn(2, 4))
    with pytest.raises(ValueError, match="lam"):
        compensate(torch.ones(2, 3) / 3, torch.zeros(2, 3), lam=-1.0)
    with pytest.raises(ValueError, match="err_hat"):
        compensate(torch.ones(2, 3) / 3, torch.zeros(2, 2))
    x, y = _stream()
    with pytest.raises(ValueError, match="memory"):
        prequential(_model(), x, y, memory=ErrorMemory(4, 8, 3))
    with pytest.raises(ValueError, match="finetune_every"):
        prequential(_model(), x, y, finetune_every=0)
    with pytest.raises(ValueError, match="x must be"):
        prequential(_model(), x[0], y)


def test_reloop_experiment_memory_helps_the_frozen_model():
    r = reloop_experiment(seed=0, n_batches=30)
    pol = r["policies"]
    assert set(pol) == {"frozen", "frozen+mem", "frozen+global", "finetune", "finetune+mem",
                        "frozen+mem (no same image)"}
    assert pol["frozen+mem (no same image)"]["excluded"] > 0 and pol["frozen+mem"]["excluded"] == 0
    assert pol["frozen"]["window_accuracy"][0] > pol["frozen"]["window_accuracy"][-1]  # the drift hurts
    assert pol["frozen+mem"]["mean_accuracy"] > pol["frozen"]["mean_accuracy"] + 0.05
    assert pol["frozen"]["grad_steps"] == 0 and pol["finetune"]["grad_steps"] > 0
    assert pol["frozen+mem"]["lookups"] == 30 * 32
    assert r == reloop_experiment(seed=0, n_batches=30)  # deterministic


def test_exclude_equals_lookup_in_a_memory_without_those_slots():
    g = torch.Generator().manual_seed(3)
    for _trial in range(10):
        n, d, c, b, k = 20, 4, 2, 6, int(torch.randint(1, 8, (1,), generator=g))
        keys, errs = torch.randn(n, d, generator=g), torch.randn(n, c, generator=g)
        src = torch.randint(0, 5, (n,), generator=g)
        q, ex = torch.randn(b, d, generator=g), torch.randint(0, 5, (b,), generator=g)
        mem = ErrorMemory(n, d, c, k)
        mem.write(keys, errs, source=src)
        got = mem.lookup(q, exclude=ex)
        for i in range(b):  # reference: a memory that never held the query's own source
            keep = src != ex[i]
            ref = ErrorMemory(n, d, c, k)
            if keep.any():
                ref.write(keys[keep], errs[keep])
            torch.testing.assert_close(got[i], ref.lookup(q[i: i + 1])[0])
        assert mem.n_excluded == int((src.unsqueeze(0) == ex.unsqueeze(1)).sum())
    # a stored exact copy of the query (same source) is used without exclusion, ignored with it
    mem = ErrorMemory(4, 2, 1, k=1)
    mem.write(torch.tensor([[1.0, 0.0], [0.8, 0.6]]), torch.tensor([[5.0], [-1.0]]), source=torch.tensor([7, 8]))
    assert mem.lookup(torch.tensor([[1.0, 0.0]])).item() == 5.0
    assert mem.lookup(torch.tensor([[1.0, 0.0]]), exclude=torch.tensor([7])).item() == -1.0
    with pytest.raises(ValueError, match="exclude"):
        mem.lookup(torch.tensor([[1.0, 0.0]]), exclude=torch.tensor([7, 8]))
    with pytest.raises(ValueError, match="source"):
        mem.write(torch.randn(2, 2), torch.randn(2, 1), source=torch.tensor([-1, 0]))


def test_prequential_source_filters_only_same_source():
    x, y = _stream(T=6)
    model = _model()
    plain = prequential(model, x, y, memory=ErrorMemory(16, 16, 3, k=3))
    unique = prequential(model, x, y, memory=ErrorMemory(16, 16, 3, k=3), source=torch.arange(48).view(6, 8))
    torch.testing.assert_close(unique["probs"], plain["probs"])  # distinct ids: nothing excluded
    assert unique["excluded"] == 0
    same = prequential(model, x, y, memory=ErrorMemory(16, 16, 3, k=3), source=torch.zeros(6, 8, dtype=torch.int64))
    torch.testing.assert_close(same["probs"], prequential(model, x, y)["probs"])  # one id: the memory is never used
    with pytest.raises(ValueError, match="source"):
        prequential(model, x, y, source=torch.zeros(6, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="source"):
        prequential(model, x, y, memory=ErrorMemory(16, 16, 3), source=torch.zeros(5, 8, dtype=torch.int64))


def test_stream_source_ids_agree_with_the_stream():
    raw, labels = _raw_digits()
    s = drifting_stream(12, 32, "rotation", max_drift=60.0, seed=2)
    ids = _stream_source_ids(12, 32, seed=2)
    assert ids.shape == (12, 32)
    torch.testing.assert_close(torch.from_numpy(labels)[ids], s.y)
    assert set(ids.flatten().tolist()) <= set(s.base.info["test_idx"].tolist())
    # batch 0 is unrotated: its inputs are the standardised source images
    x0 = (raw[ids[0].numpy()] - s.base.info["mean"]) / s.base.info["std"]
    torch.testing.assert_close(s.x[0], torch.from_numpy(x0).float())
    # within a batch (one rotation angle), equal ids give equal inputs; the stream does repeat images
    repeats = 0
    for t in range(12):
        for i in range(32):
            for j in range(i + 1, 32):
                if ids[t, i] == ids[t, j]:
                    repeats += 1
                    torch.testing.assert_close(s.x[t, i], s.x[t, j])
    assert ids.flatten().unique().numel() < ids.numel()  # 384 draws from 360 images repeat some


# ---- CMT ------------------------------------------------------------------------------------------------


def test_uncompressed_bank_retrieves_exact_documents():
    keys, values = make_facts(20, 8, 4, seed=1)
    docs = torch.cat([keys, 0.1 * torch.nn.functional.one_hot(values, 4).float()], 1)  # small value part
    bank = CompressedBank(12)
    assert len(bank) == 0 and bank.nbytes == 0
    torch.testing.assert_close(bank.read(torch.randn(3, 12)), torch.zeros(3, 12))
    bank.add(docs)
    q = torch.cat([keys, torch.zeros(20, 4)], 1)
    out = bank.read(q, top_k=1)
    torch.testing.assert_close(out, docs)
    assert bank.nbytes == 4 * 20 * 12


def test_compressed_bank_bytes_and_top_aggregation():
    D, r = 12, 3
    W_c, W_d = torch.randn(r, D), torch.randn(D, r)
    bank = CompressedBank(D, W_c, W_d)
    docs = torch.randn(10, D)
    bank.add(docs[:4])
    bank.add(docs[4:])
    assert len(bank) == 10 and bank.nbytes == 4 * 10 * r
    q = torch.randn(5, D)
    # top_k = all with a huge tau is the plain mean of every slot, decoded
    out = bank.read(q, top_k=10, tau=1e6)
    torch.testing.assert_close(out, (docs @ W_c.T).mean(0, keepdim=True).expand(5, r) @ W_d.T, rtol=1e-4, atol=1e-4)


def test_bank_bad_arguments():
    with pytest.raises(ValueError, match="W_c"):
        CompressedBank(8, torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="W_c"):
        CompressedBank(8, torch.randn(2, 7), torch.randn(8, 2))
    bank = CompressedBank(8)
    with pytest.raises(ValueError, match="docs"):
        bank.add(torch.randn(3, 5))
    with pytest.raises(ValueError, match="top_k"):
        bank.read(torch.randn(1, 8), top_k=0)
    with pytest.raises(ValueError, match="tau"):
        bank.read(torch.randn(1, 8), tau=0.0)
    with pytest.raises(ValueError, match="ratios"):
        cmt_experiment(ratios=(0,))
    with pytest.raises(ValueError, match="objectives"):
        cmt_experiment(objectives=("magic",))


def test_cmt_experiment_memory_retains_and_finetuning_forgets():
    r = cmt_experiment(seed=0, n_steps=3, ratios=(2,), reader_steps=600, compressor_steps=150, finetune_steps=100,
                       objectives=("memory",))
    pol = r["policies"]
    assert pol["bank-full"]["seen"][-1] > 0.95  # the frozen reader answers new facts from the bank
    assert r["reader_no_memory"] < 0.3  # ... which it cannot do without it
    assert pol["finetune"]["new"][-1] > 0.9 and pol["finetune"]["first"][-1] < pol["finetune"]["first"][0] - 0.3
    assert pol["cmt-memory-x2"]["first"][-1] > pol["finetune"]["first"][-1]
    assert pol["cmt-memory-x2"]["bytes"][-1] * 2 == pol["bank-full"]["bytes"][-1]
