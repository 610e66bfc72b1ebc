"""PERK: the fact task, the functional LoRA forward, the inner loop, the (truncated) meta-gradient, costs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from labkit.memory.model import MemoryLM
from labkit.memory.perk import (
    PERK,
    QUERY,
    fact_vocab,
    facts,
    in_context_batch,
    inference_cost,
    lm_forward,
    meta_train,
    peak_bytes,
    switched_reduce,
)

D64 = torch.float64


def _base(V=16, d=8, n_layers=1, seed=0, dtype=torch.float32) -> MemoryLM:
    torch.manual_seed(seed)
    return MemoryLM(V, d_model=d, n_layers=n_layers, mixer="attention").to(dtype)


def _perk(V=16, d=8, n_layers=1, seed=0, dtype=torch.float32, **kw) -> PERK:
    base = _base(V, d, n_layers, seed, dtype)
    torch.manual_seed(seed + 1)
    kw.setdefault("segment_len", 4)
    return PERK(base, **kw).to(dtype)


def _randomise_b(perk: PERK, seed=3, scale=0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in perk.lora_B.values():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ----------------------------------------------------------------------------------------------------------
# the task


def test_facts_layout_and_answer():
    V, n_pairs, n_filler = 31, 5, 7
    ranges = fact_vocab(V)
    b = facts(64, n_pairs, n_filler, V, seed=1)
    assert b.context.shape == (64, 2 * (n_pairs + n_filler)) and b.query.shape == (64, 2)
    assert (b.query[:, 0] == QUERY).all()
    items = b.context.reshape(64, -1, 2)
    is_key = (items[..., 0] >= ranges["keys"][0]) & (items[..., 0] < ranges["keys"][1])
    assert (is_key.sum(1) == n_pairs).all()  # exactly the facts start with a key
    assert ((items[..., 1] >= ranges["values"][0]) & (items[..., 1] < ranges["values"][1]) == is_key).all()
    filler = items[~is_key]
    assert ((filler >= ranges["filler"][0]) & (filler < ranges["filler"][1])).all()
    for i in range(64):
        keys = items[i, is_key[i], 0]
        assert len(set(keys.tolist())) == n_pairs  # distinct keys
        asked = items[i, b.where[i]]
        assert asked[0] == b.query[i, 1] and asked[1] == b.answer[i]


@pytest.mark.parametrize("position, index", [("start", 0), ("middle", 5), ("end", 11), (3, 3)])
def test_facts_position(position, index):
    b = facts(32, 4, 8, 31, position=position, seed=2)
    assert (b.where == index).all()
    items = b.context.reshape(32, -1, 2)
    assert (items[:, index, 0] == b.query[:, 1]).all() and (items[:, index, 1] == b.answer).all()


def test_facts_seeded_and_in_context_batch():
    a, b = facts(8, 3, 2, 16, seed=4), facts(8, 3, 2, 16, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.context, facts(8, 3, 2, 16, seed=5).context)
    inputs, targets = in_context_batch(a)
    assert torch.equal(inputs, torch.cat([a.context, a.query], 1))
    assert (targets[:, :-1] == -100).all() and torch.equal(targets[:, -1], a.answer)


# ----------------------------------------------------------------------------------------------------------
# the functional forward and the adapter


def test_lm_forward_matches_memory_lm():
    model = _base(V=16, d=8, n_layers=2)
    tokens = torch.randint(0, 16, (3, 9), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lm_forward(model, tokens), model(tokens)[0], rtol=1e-5, atol=1e-5)
    segs = tokens[:, :8].reshape(3, 2, 4)  # two independent segments per example
    out = lm_forward(model, segs)
    assert torch.allclose(out[:, 1], lm_forward(model, segs[:, 1]), rtol=1e-6, atol=1e-6)


def test_zero_b_adapter_is_the_base_model_exactly():
    perk = _perk(V=16, d=8, n_layers=2, rank=3)
    tokens = torch.randint(0, 16, (4, 2, 4), generator=torch.Generator().manual_seed(1))
    adapter = perk.init_adapter(4)  # random A, B = 0
    assert all((Bm == 0).all() and (A != 0).any() for A, Bm in adapter.values())
    assert torch.equal(lm_forward(perk.base, tokens, adapter), lm_forward(perk.base, tokens))
    _randomise_b(perk)
    assert not torch.allclose(lm_forward(perk.base, tokens, perk.init_adapter(4)), lm_forward(perk.base, tokens))


def test_adapter_is_per_example():
    perk = _perk(rank=2)
    _randomise_b(perk)
    tokens = torch.randint(0, 16, (3, 5), generator=torch.Generator().manual_seed(2))
    adapter = perk.init_adapter(3)
    changed = {n: (A, Bm.clone()) for n, (A, Bm) in adapter.items()}
    for _, Bm in changed.values():
        Bm[1] += 1.0  # change example 1's adapter only
    a, b = lm_forward(perk.base, tokens, adapter), lm_forward(perk.base, tokens, changed)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.allclose(a[1], b[1])


def test_adapter_equals_merged_weights():
    perk = _perk(V=16, d=8, rank=2, dtype=D64)
    _randomise_b(perk)
    tokens = torch.randint(0, 16, (1, 6), generator=torch.Generator().manual_seed(3))
    adapter = perk.init_adapter(1)
    merged = dict(perk.base.named_parameters())
    for name, (A, Bm) in adapter.items():
        merged[name] = merged[name] + Bm[0] @ A[0]  # W + B A
    assert torch.allclose(lm_forward(perk.base, tokens, adapter), lm_forward(perk.base, tokens, params=merged),
                          rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# the inner loop


def test_inner_loop_reduces_context_loss():
    perk = _perk(V=31, d=16, rank=4, inner_steps=3, inner_lr=0.3, segment_len=4)
    b = facts(16, 4, 4, 31, seed=5)
    _, losses = perk.inner_loop(b.context, final_loss=True)
    assert len(losses) == 4
    for before, after in zip(losses[:-1], losses[1:]):
        assert (after < before).all()


def test_inner_loop_changes_only_the_adapter():
    perk = _perk(V=31, d=8, rank=2, inner_steps=2, segment_len=4)
    before = {n: p.detach().clone() for n, p in perk.named_parameters()}
    b = facts(4, 2, 2, 31, seed=6)
    for meta in (False, True):
        adapter, _ = perk.inner_loop(b.context, meta=meta)
        init = perk.init_adapter(4)
        assert all(not torch.equal(adapter[n][1], init[n][1]) for n in adapter)  # B moved from 0
    for n, p in perk.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n  # the inner loop takes gradients w.r.t. the adapter only


def test_zero_inner_steps_is_the_initial_adapter():
    perk = _perk(rank=2, inner_steps=0)
    _randomise_b(perk)
    b = facts(3, 2, 0, 16, seed=7)
    got = perk(b.context, b.query)
    want = lm_forward(perk.base, b.query, perk.init_adapter(3))[:, -1]
    assert torch.equal(got, want)


def test_switched_reduce_matches_at_its_length_and_scales_elsewhere():
    perk = _perk(V=31, d=8, rank=2, inner_steps=1, inner_lr=0.5, segment_len=4, dtype=D64, reduce="sum")
    _randomise_b(perk)
    saved = perk.log_lr.detach().clone()
    short, long = facts(3, 2, 0, 31, seed=11), facts(3, 2, 2, 31, seed=12)  # 1 and 2 segments of 4 tokens
    init = perk.init_adapter(3)
    sum_short, _ = perk.inner_loop(short.context)
    sum_long, _ = perk.inner_loop(long.context)
    with switched_reduce(perk, "mean", 2) as mean_reader:  # matched at 2 segments
        assert mean_reader.reduce == "mean"
        mean_short, _ = perk.inner_loop(short.context)
        mean_long, _ = perk.inner_loop(long.context)
    assert perk.reduce == "sum" and torch.equal(perk.log_lr, saved)
    for n in init:
        for j in (0, 1):
            assert torch.allclose(mean_long[n][j], sum_long[n][j], rtol=1e-10, atol=1e-12)
            # one segment: mean = sum, but the matched step is twice as large
            assert torch.allclose(mean_short[n][j] - init[n][j], 2 * (sum_short[n][j] - init[n][j]),
                                  rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="reduce"), switched_reduce(perk, "max", 2):
        pass


# ----------------------------------------------------------------------------------------------------------
# the meta-gradient


def _meta_grads(perk: PERK, b, truncate) -> list[torch.Tensor]:
    perk.zero_grad(set_to_none=True)
    loss, _ = perk.meta_loss(b, truncate=truncate)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in perk.parameters()]


def test_truncated_equals_full_when_truncate_covers_all_steps():
    perk = _perk(V=31, d=8, rank=2, inner_steps=3, segment_len=4, dtype=D64)
    _randomise_b(perk)
    b = facts(4, 2, 2, 31, seed=8)
    full = _meta_grads(perk, b, None)
    for t in (3, 5):
        assert all(torch.equal(x, y) for x, y in zip(_meta_grads(perk, b, t), full))
    fewer = _meta_grads(perk, b, 1)
    assert not all(torch.allclose(x, y) for x, y in zip(fewer, full))


def test_meta_gradient_matches_finite_differences():
    """The full meta-gradient (second-order, through 2 inner steps) against central differences in float64."""
    perk = _perk(V=10, d=4, rank=1, inner_steps=2, inner_lr=0.5, segment_len=4, dtype=D64)
    _randomise_b(perk)
    b = facts(2, 2, 0, 10, seed=9)
    names = ["lora_A.blocks__0__mlp__0__weight", "lora_B.blocks__0__mlp__2__weight", "log_lr",
             "base.blocks.0.mixer.v_proj.weight"]
    params = dict(perk.named_parameters())

    def outer(*values):
        override = dict(zip(names, values))
        logits = functional_call(perk, override, (b.context, b.query), {"meta": True})
        return F.cross_entropy(logits, b.answer)

    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(outer, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    # first-order (truncate=0) drops the second-order terms: its gradient is not the true one
    perk.truncate = 0
    first_order = torch.autograd.grad(outer(*inputs), inputs)
    perk.truncate = None
    exact = torch.autograd.grad(outer(*inputs), inputs)
    assert not torch.allclose(first_order[3], exact[3], atol=1e-6)


def test_meta_train_is_deterministic_and_learns_something():
    def run():
        perk = _perk(V=31, d=8, rank=2, inner_steps=1, segment_len=4)

        def stream(step, bs):
            return facts(bs, 2, 0, 31, seed=100 + step)

        out = meta_train(perk, stream, steps=3, batch_size=8, seed=0)
        return perk, out

    (p1, o1), (p2, o2) = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(p1.parameters(), p2.parameters()))
    assert o1["curve"] == o2["curve"]
    fresh = _perk(V=31, d=8, rank=2, inner_steps=1, segment_len=4)
    assert not torch.equal(fresh.lora_B["blocks__0__mlp__0__weight"], p1.lora_B["blocks__0__mlp__0__weight"])


# ----------------------------------------------------------------------------------------------------------
# cost measurements


def test_in_context_flops_match_the_formula():
    V, d, L = 31, 8, 2
    base = _base(V=V, d=d, n_layers=L)
    perk = PERK(_base(V=V, d=d, n_layers=L), rank=2, inner_steps=2, segment_len=4)
    for n_pairs, n_filler in ((2, 2), (4, 12)):
        b = facts(1, n_pairs, n_filler, V, seed=10)
        T = b.context.shape[1] + 2
        per_layer = 4 * 2 * T * d * d + 2 * (2 * T * T * d) + 2 * (2 * T * d * 4 * d) + 2 * T * d * 3  # + conv
        cost = inference_cost(perk, base, b, memory=False)
        assert cost["in_context_flops"] == L * per_layer + 2 * T * d * V
        assert cost["context_tokens"] == T - 2 and cost["perk_flops"] > 0 and cost["perk_bytes"] is None
        assert cost["kv_cache_bytes"] == 2 * L * T * d * 4
        assert cost["adapter_bytes"] == L * (4 * (d + d) + 2 * (d + 4 * d)) * 2 * 4  # (d_in + d_out)·rank each


def test_peak_bytes_sees_live_tensors():
    n = 100_000

    def two_alive():
        a = torch.ones(n)
        b = torch.ones(n)
        return a, b

    def one_at_a_time():
        for _ in range(2):
            a = torch.ones(n)
            del a

    assert 8 * n <= peak_bytes(two_alive) < 8 * n + 4096
    assert 4 * n <= peak_bytes(one_at_a_time) < 4 * n + 4096


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kw, match", [
    (dict(rank=0), "rank"), (dict(inner_steps=-1), "inner_steps"), (dict(truncate=-1), "truncate"),
    (dict(segment_len=0), "segment_len"), (dict(inner_lr=0.0), "inner_lr"), (dict(reduce="max"), "reduce"),
    (dict(targets=("lm_head",)), "targets"), (dict(rank=1.5), "rank"),
])
def test_perk_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        PERK(_base(), **kw)


def test_perk_rejects_bad_base_and_inputs():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="attention"):
        PERK(MemoryLM(16, d_model=8, n_layers=1, mixer="linear"))
    perk = _perk(segment_len=4)
    with pytest.raises(ValueError, match="segment_len"):
        perk.inner_loop(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="truncate"):
        perk.inner_loop(torch.zeros(2, 8, dtype=torch.long), meta=True, truncate=-2)
    with pytest.raises(ValueError, match="tokens"):
        lm_forward(perk.base, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("args, kw, match", [
    ((4, 0), {}, "n_pairs"), ((4, 2, -1), {}, "n_filler"), ((4, 11, 0, 31), {}, "n_pairs"),
    ((4, 2, 2), dict(position="top"), "position"), ((4, 2, 2), dict(position=4), "position"),
    ((0, 2), {}, "n_examples"), ((4, 1, 0, 3), {}, "vocab_size"),
])
def test_facts_rejects_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        facts(*args, **kw)
