"""HMT: segment-limited backbone, RMT-style recurrence and the hierarchical memory (search over a cache)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.data.recall import FILLER, IGNORE, key_range, value_range
from labkit.memory.base import MemoryState
from labkit.memory.hmt import (
    FAST,
    FULL,
    HMT,
    VARIANTS,
    extra_parameter_count,
    hmt_compare,
    load,
    make_variant,
    merge,
    search_accuracy,
    segment_recall,
    segment_recall_baselines,
)
from labkit.memory.model import MemoryLM

torch.set_num_threads(1)

V, L = 16, 8


def build(name: str, seed: int = 0, **options) -> HMT:
    torch.manual_seed(seed)
    options = {"d_model": 16, "n_layers": 2, "n_cached": 3, "query_len": 3, **options}
    return make_variant(name, V, L, **options).eval()


def tokens(B: int = 2, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (B, n * L), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_and_state(name):
    model = build(name, sensory=2 if name == "hmt" else 0)
    x = tokens(3, 5)
    logits, state = model(x)
    assert logits.shape == (3, 5 * L, V)
    if name == "backbone":
        assert state is None
        return
    assert isinstance(state, MemoryState) and state.seen == 5 * L
    assert state["cache"].shape == (3, 3, 16)  # M_0 and 5 memories written, the 3 latest kept
    if name == "hmt":
        assert state["sensory"].shape == (3, 2, 16)
        assert torch.equal(state["sensory"], model.backbone.embed(x[:, -2:]))  # the last 2 token embeddings


def test_a_short_sequence_keeps_m0_in_the_cache():
    model = build("rmt", n_cached=4)
    _, state = model(tokens(2, 2))
    assert state["cache"].shape == (2, 3, 16)
    assert torch.equal(state["cache"][:, 0], model.memory_init.expand(2, 16))


def test_the_segment_limited_backbone_cannot_see_earlier_segments_but_memory_can():
    x = tokens(2, 4)
    y = x.clone()
    y[:, 3] = (y[:, 3] % (V - 1)) + 1  # change one token of segment 0
    y[:, L + 5] = (y[:, L + 5] % (V - 1)) + 1  # and one of segment 1
    for name in VARIANTS:
        model = build(name)
        with torch.no_grad():
            a, b = model(x)[0], model(y)[0]
        later = slice(2 * L, 4 * L)  # segments 2 and 3
        if name == "backbone":
            assert torch.equal(a[:, later], b[:, later]), "the backbone must see one segment only"
            assert torch.equal(a[:, L:L + 5], b[:, L:L + 5])  # and nothing before the change in segment 1
        else:
            assert (a[:, later] - b[:, later]).abs().max() > 1e-3, f"{name}: memory must carry segment 0 forward"


@pytest.mark.parametrize("name,sensory", [("backbone", 0), ("rmt", 0), ("hmt", 0), ("hmt", 2)])
def test_every_logit_is_causal(name, sensory):
    """Changing token t changes no logit before t, also inside a segment (the recalled memory is read only
    after the query_len tokens that chose it)."""
    model = build(name, sensory=sensory)
    x = tokens(1, 3, seed=1)
    with torch.no_grad():
        base = model(x)[0]
        for t in range(3 * L):
            y = x.clone()
            y[0, t] = (y[0, t] % (V - 1)) + 1
            out = model(y)[0]
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6, rtol=0), f"token {t} leaks backwards"
            assert (out[:, t] - base[:, t]).abs().max() > 0, f"token {t} does not reach its own logit"


def test_hmt_logits_depend_on_the_searched_memory_after_the_query():
    """The search reads the first query_len tokens; tokens from query_len on see the recalled memory."""
    model = build("hmt")
    x = tokens(1, 3, seed=2)
    with torch.no_grad():
        model.w_q.weight.mul_(10.0)  # sharpen the search so the recalled memory differs clearly
        base = model(x)[0]
        y = x.clone()
        y[0, 2 * L + 1] = (y[0, 2 * L + 1] % (V - 1)) + 1  # inside the query part of segment 2
        _, state_a = model(x, return_weights=True)
        _, state_b = model(y, return_weights=True)
    assert not torch.allclose(state_a["weights"][:, 2], state_b["weights"][:, 2])  # a different search
    assert torch.allclose(state_a["weights"][:, :2], state_b["weights"][:, :2])  # earlier searches unchanged
    assert torch.allclose(state_a["weights"].sum(-1), torch.ones(1, 3))
    assert torch.equal(state_a["weights"][:, 0, :2], torch.zeros(1, 2))  # segment 0 searched M_0 only
    assert base.shape == (1, 3 * L, V)


def test_search_is_softmax_attention_over_the_cache():
    model = build("hmt")
    g = torch.Generator().manual_seed(3)
    summary, cache = torch.randn(2, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    recalled, weights = model.search(summary, cache)
    q, k = summary @ model.w_q.weight.T, cache @ model.w_k.weight.T
    want = torch.softmax((k @ q[:, :, None])[..., 0] / math.sqrt(16), dim=-1)
    assert torch.allclose(weights, want, atol=1e-6)
    assert torch.allclose(recalled, (want[:, :, None] * cache).sum(1), atol=1e-6)
    with torch.no_grad():  # identity projections, scaled: the cache entry equal to the summary wins
        model.w_q.weight.copy_(8 * torch.eye(16))
        model.w_k.weight.copy_(torch.eye(16))
    cache = torch.nn.functional.normalize(cache, dim=-1) * 4
    _, weights = model.search(cache[:, 2], cache)
    assert weights.argmax(-1).tolist() == [2, 2] and bool((weights[:, 2] > 0.99).all())


def test_a_cache_of_one_makes_hmt_the_rmt():
    """With one cached memory the softmax returns it: HMT and RMT are the same function (same weights)."""
    x = tokens(2, 4, seed=4)
    rmt = build("rmt", n_cached=1)
    hmt = build("hmt", n_cached=1, seed=9)
    missing, unexpected = hmt.load_state_dict(rmt.state_dict(), strict=False)
    assert sorted(missing) == ["summary_token", "w_k.weight", "w_q.weight"] and not unexpected
    with torch.no_grad():
        assert torch.allclose(hmt(x)[0], rmt(x)[0], atol=1e-6)
        hmt3 = build("hmt", n_cached=3)
        hmt3.load_state_dict(rmt.state_dict(), strict=False)
        assert not torch.allclose(hmt3(x)[0], rmt(x)[0], atol=1e-3)  # a real search changes the output
        hmt3.recall_enabled = False  # the staged-training switch: the search off is the RMT again
        assert torch.allclose(hmt3(x)[0], rmt(x)[0], atol=1e-6)


@pytest.mark.parametrize("name,sensory", [("rmt", 0), ("hmt", 2)])
def test_state_continues_the_sequence_exactly(name, sensory):
    model = build(name, sensory=sensory)
    x = tokens(2, 5, seed=5)
    with torch.no_grad():
        whole, end = model(x)
        first, state = model(x[:, :2 * L])
        second, end2 = model(x[:, 2 * L:], state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)
    assert torch.allclose(end["cache"], end2["cache"], atol=1e-6) and end2.seen == 5 * L


def test_deterministic_under_a_seed():
    x = tokens(2, 3)
    a, b = build("hmt", seed=7, sensory=1), build("hmt", seed=7, sensory=1)
    c = build("hmt", seed=8, sensory=1)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
        assert not torch.equal(a(x)[0], c(x)[0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    r1 = hmt_compare(distances=[1, 3], seeds=[0], fast=True, steps=2, warmup_steps=2, n_eval=16)
    r2 = hmt_compare(distances=[1, 3], seeds=[0], fast=True, steps=2, warmup_steps=2, n_eval=16)
    assert r1["accuracy"] == r2["accuracy"]
    assert r1["curves"] == r2["curves"]


# ---------------------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("name,recall,memory", [("backbone", False, False), ("rmt", False, True), ("hmt", True, True)])
@pytest.mark.parametrize("d_key", [None, 4])
def test_parameter_overhead_is_counted_exactly(name, recall, memory, d_key):
    model = build(name, d_key=d_key)
    torch.manual_seed(0)
    reference = MemoryLM(V, d_model=16, n_layers=2, mixer="attention")
    assert model.backbone_parameters() == sum(p.numel() for p in reference.parameters())
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    want = extra_parameter_count(16, memory=memory, recall=recall, d_key=d_key)
    assert model.extra_parameters() == outside == want
    assert want == (0 if not memory else 16 + (16 + 2 * 16 * (d_key or 16) if recall else 0))
    assert model.overhead() == pytest.approx(want / model.backbone_parameters())


def test_overhead_on_a_7b_backbone_is_in_the_papers_range():
    # d = 4096 and 6.7e9 parameters (a Llama-2-7B-sized backbone): 2·d² + 2·d extra parameters
    assert 0.004 < extra_parameter_count(4096) / 6.7e9 < 0.02


# ---------------------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_are_rejected_with_clear_errors():
    model = build("hmt")
    with pytest.raises(ValueError, match="multiple of segment_len=8.*got T=12"):
        model(torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of segment_len=8.*got T=0"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must be a \(B, T\) tensor, got \(16,\)"):
        model(torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="segment_len must be an int >= 1, got 0"):
        HMT(V, 0)
    with pytest.raises(ValueError, match="segment_len must be an int >= 1, got -4"):
        HMT(V, -4)
    with pytest.raises(ValueError, match="n_cached must be an int >= 1, got 0"):
        HMT(V, L, n_cached=0)
    with pytest.raises(ValueError, match="sensory must be <= segment_len=8, got 9"):
        HMT(V, L, sensory=9)
    with pytest.raises(ValueError, match="query_len must be <= segment_len=8, got 9"):
        HMT(V, L, query_len=9)
    with pytest.raises(ValueError, match="memory=False .* needs recall=False and sensory=0"):
        HMT(V, L, memory=False, recall=True)
    with pytest.raises(TypeError, match="recall must be a bool"):
        HMT(V, L, recall=1)
    with pytest.raises(ValueError, match="variant must be one of"):
        make_variant("transformer-xl", V, L)
    other = build("hmt", n_cached=2)
    _, state = other(tokens(2, 1))
    with pytest.raises(ValueError, match="state was made by HMT.*n_cached=2.*not by this model"):
        model(tokens(2, 1), state)
    _, state = model(tokens(3, 1))
    with pytest.raises(ValueError, match="state holds batch size 3, tokens have 2"):
        model(tokens(2, 1), state)
    with pytest.raises(ValueError, match="a model without memory takes no state"):
        build("backbone")(tokens(2, 1), state)


# ---------------------------------------------------------------------------------------------------------
# The task


def test_segment_recall_asks_for_the_fact_distance_segments_back():
    n, j, gap = 5, 2, 2
    for distance in (None, 1, 3):
        x, y = segment_recall(64, n, L, V, distance=distance, query_len=j, gap=gap, seed=11)
        assert x.shape == y.shape == (64, n * L)
        xs, ys = x.view(64, n, L).numpy(), y.view(64, n, L).numpy()
        for b in range(64):
            facts = {}
            for i in range(n):
                seg = xs[b, i]
                keys = [t for t in seg[j + 1:] if key_range(V)[0] <= t < key_range(V)[1]]
                assert len(keys) == 1, "one fact per segment, after the question"
                at = j + 1 + list(seg[j + 1:]).index(keys[0])
                assert value_range(V)[0] <= seg[at + 1] < value_range(V)[1]
                assert at + 1 <= L - 1 - gap and (seg[L - gap:] == FILLER).all()  # the last gap tokens: filler
                facts[i] = (keys[0], seg[at + 1])
                assert (ys[b, i, np.arange(L) != j] == IGNORE).all()
                if i == 0:
                    assert seg[j] == FILLER and ys[b, i, j] == IGNORE
                    continue
                q = seg[j]
                assert q in seg[:j] and (seg[:j] != FILLER).sum() == 1  # the query key, once, in the first j
                source = [s for s in range(i) if facts[s][0] == q]
                assert len(source) == 1, "the key asked was stated in exactly one earlier segment"
                value = facts[source[0]][1]
                assert value not in seg, "nothing in the question's segment tells the answer"
                if distance is None or i >= distance:
                    assert ys[b, i, j] == value
                    if distance is not None:
                        assert source[0] == i - distance
                else:
                    assert ys[b, i, j] == IGNORE
            assert len({k for k, _ in facts.values()}) == n and len({v for _, v in facts.values()}) == n


def test_segment_recall_is_seeded_and_mixes_distances():
    a = segment_recall(200, 5, L, V, query_len=2, seed=3)
    b = segment_recall(200, 5, L, V, query_len=2, seed=3)
    c = segment_recall(200, 5, L, V, query_len=2, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not torch.equal(a[0], c[0])
    x, _ = segment_recall(200, 5, L, V, query_len=2, max_distance=1, seed=3)
    xs = x.view(200, 5, L)
    # max_distance=1: every question asks for the previous segment's key
    for i in range(1, 5):
        prev_keys = xs[:, i - 1, 3:][(xs[:, i - 1, 3:] > 0) & (xs[:, i - 1, 3:] < V // 2)]
        assert torch.equal(xs[:, i, 2], prev_keys)


def test_segment_recall_errors():
    with pytest.raises(ValueError, match="distance must be in 1..n_segments-1 = 1..3, got 4"):
        segment_recall(2, 4, L, V, distance=4)
    with pytest.raises(ValueError, match="query_len must be <= segment_len - 3 - gap = 3"):
        segment_recall(2, 4, L, V, query_len=4)
    with pytest.raises(ValueError, match="vocab_size=8 .* too few for 5 distinct facts"):
        segment_recall(2, 5, L, 8, query_len=2)
    with pytest.raises(ValueError, match="n_segments must be an int >= 2, got 1"):
        segment_recall(2, 1, L, V)


def test_baselines():
    b = segment_recall_baselines(5, V)
    assert b["chance"] == 1 / 8
    assert b["shortcut"] == pytest.approx([(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, (1 / 2 + 1 / 3 + 1 / 4) / 3,
                                           (1 / 3 + 1 / 4) / 2, 1 / 4])


# ---------------------------------------------------------------------------------------------------------
# The experiment


def test_hmt_compare_structure_and_errors():
    r = hmt_compare(distances=[1, 2], seeds=[0, 1], variants=("backbone", "hmt"), fast=True, steps=1,
                    warmup_steps=1, n_eval=8)
    assert list(r["accuracy"]) == ["backbone", "hmt"] and r["distances"] == [1, 2]
    assert np.asarray(r["accuracy"]["hmt"]).shape == (2, 2)
    assert all(0 <= a <= 1 for accs in r["accuracy"].values() for seed in accs for a in seed)
    assert r["params"]["hmt"]["extra"] == extra_parameter_count(FAST["d_model"])
    assert r["params"]["backbone"]["extra"] == 0
    with pytest.raises(ValueError, match="distances must lie in 1..n_segments-1 = 1..3, got 4"):
        hmt_compare(distances=[4], fast=True)
    with pytest.raises(ValueError, match="unknown setting"):
        hmt_compare(fast=True, widht=3)
    with pytest.raises(ValueError, match="variants must be among"):
        hmt_compare(fast=True, variants=("lstm",))


def test_search_accuracy_reads_the_weights_at_the_graded_questions():
    model = build("hmt", query_len=2)
    x, y = segment_recall(8, 5, L, V, distance=2, query_len=2, seed=1)
    with torch.no_grad():  # make the search ignore the summary and always pick the newest entry
        model.w_q.weight.zero_()
    hit = search_accuracy(model, x, y, 2)
    assert hit is not None and 0.0 <= hit <= 1.0
    assert search_accuracy(model, x, y, 4) is None  # beyond a cache of 3
    _, state = model(x, return_weights=True)
    graded = (y.view(8, 5, L) != IGNORE).any(-1)
    want = (state["weights"].argmax(-1)[graded] == 3 - 2).float().mean().item()
    assert hit == pytest.approx(want)
    model.recall_enabled = False
    with pytest.raises(ValueError, match="needs a model with the search on"):
        search_accuracy(model, x, y, 1)


def test_merge_joins_seeds_and_refuses_mismatches():
    kw = dict(distances=[1], variants=("rmt", "hmt"), fast=True, steps=1, warmup_steps=1, n_eval=8)
    a, b = hmt_compare(seeds=[0], **kw), hmt_compare(seeds=[1], **kw)
    both = merge([a, b])
    assert both["seeds"] == [0, 1]
    assert both["accuracy"]["hmt"] == a["accuracy"]["hmt"] + b["accuracy"]["hmt"]
    assert both["search"] == a["search"] + b["search"]
    with pytest.raises(ValueError, match="share seeds"):
        merge([a, a])
    with pytest.raises(ValueError, match="differ in 'settings'"):
        merge([a, hmt_compare(seeds=[2], **{**kw, "steps": 2})])


def test_committed_results_match_the_code():
    r = load()
    assert r["settings"] == FULL, "labkit/assets/hmt.json was run with other settings: rerun the script"
    n = FULL["n_segments"]
    assert r["distances"] == list(range(1, n)) and set(r["accuracy"]) == set(VARIANTS)
    for accs in r["accuracy"].values():
        assert np.asarray(accs).shape == (len(r["seeds"]), n - 1)
    assert r["chance"] == segment_recall_baselines(n, FULL["vocab_size"])["chance"]
    assert r["params"]["hmt"]["extra"] == extra_parameter_count(FULL["d_model"])
    assert np.asarray(r["search"], dtype=float).shape == (len(r["seeds"]), n - 1)
