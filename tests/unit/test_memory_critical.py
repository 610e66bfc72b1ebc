"""Synaptic Resonance and Contextual Memory Reweaving: zero strength is the baseline, causality, the Hebbian
equation by hand, the reconstructions against loops, the data, determinism and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit.data.corpus import english_tokens
from labkit.data.recall import IGNORE, key_range
from labkit.memory import critical as C
from labkit.memory.critical import (
    MemoryReweaving,
    SynapticResonance,
    build_variant,
    context_relevance,
    hebbian_parallel,
    hebbian_recurrent,
)
from labkit.memory.model import MemoryLM

D64 = torch.float64
V = 24


def _model(seed: int = 0, **kw) -> MemoryLM:
    torch.manual_seed(seed)
    return MemoryLM(V, d_model=8, n_layers=kw.pop("n_layers", 2), mixer="attention",
                    mixer_options={"window": kw.pop("window", 4)}, **kw)


def _tokens(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


REWEAVES = [dict(read="mean"), dict(read="mean", past=False), dict(read="attention"),
            dict(read="attention", past=False)]


# ---------------------------------------------------------------------------------------------------------
# The Hebbian rule


def test_hebbian_by_hand():
    # x1=[1,0], x2=[0,1], x3=[1,1]; y=[2],[3],[4]; r=[1, .5, 1]; η = λ = 0.5.
    # ΔW1 = .5·1·2·[1,0] = [1, 0]; ΔW2 = .5·[1,0] + .5·.5·3·[0,1] = [.5, .75];
    # ΔW3 = .5·[.5,.75] + .5·1·4·[1,1] = [2.25, 2.375]. Reads ΔW_{t-1} x_t: 0, [1,0]·[0,1] = 0, [.5,.75]·[1,1] = 1.25.
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=D64)
    y = torch.tensor([[[2.0], [3.0], [4.0]]], dtype=D64)
    r = torch.tensor([[1.0, 0.5, 1.0]], dtype=D64)
    reads, delta = hebbian_recurrent(x, y, r, eta=0.5, lam=0.5)
    assert torch.equal(reads, torch.tensor([[[0.0], [0.0], [1.25]]], dtype=D64))
    assert torch.equal(delta, torch.tensor([[[2.25, 2.375]]], dtype=D64))
    assert torch.equal(hebbian_parallel(x, y, r, eta=0.5, lam=0.5), reads)


def test_hebbian_parallel_is_the_recurrence():
    g = torch.Generator().manual_seed(3)
    x, y, r = torch.randn(2, 9, 3, generator=g, dtype=D64), torch.randn(2, 9, 5, generator=g, dtype=D64), \
        torch.rand(2, 9, generator=g, dtype=D64)
    for lam in (0.3, 0.9, 1.0):
        reads, _ = hebbian_recurrent(x, y, r, 0.7, lam)
        torch.testing.assert_close(hebbian_parallel(x, y, r, 0.7, lam), reads)
    # a continuation from the state after the first part equals one call
    reads, delta = hebbian_recurrent(x, y, r, 0.7, 0.8)
    first, mid = hebbian_recurrent(x[:, :4], y[:, :4], r[:, :4], 0.7, 0.8)
    rest, end = hebbian_recurrent(x[:, 4:], y[:, 4:], r[:, 4:], 0.7, 0.8, delta0=mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), reads)
    torch.testing.assert_close(end, delta)


def test_context_relevance_is_clipped_cosine_to_the_running_mean():
    x = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(1), dtype=D64)
    r = context_relevance(x)
    assert torch.equal(r[:, 0], torch.zeros(2, dtype=D64))
    for t in range(1, 7):
        cos = F.cosine_similarity(x[:, t], x[:, :t].mean(1), dim=-1)
        torch.testing.assert_close(r[:, t], cos.clamp(min=0))
    assert bool((r >= 0).all()) and bool((r <= 1 + 1e-12).all())


def _resonance_reference(wrapper: SynapticResonance, tokens: torch.Tensor) -> torch.Tensor:
    """The model by hand, block by block, the MLP's input projection read through ``hebbian_recurrent``."""
    m = wrapper.model
    x = m.embed(tokens)
    for i, block in enumerate(m.blocks):
        h, _ = block.conv(block.norm1(x))
        h, _ = block.mixer(h)
        x = x + h
        u = block.norm2(x)
        y = block.mlp[0](u)
        r = torch.stack([torch.zeros(u.shape[0])] + [
            F.cosine_similarity(u[:, t], u[:, :t].mean(1), dim=-1).clamp(min=0) for t in range(1, u.shape[1])], 1)
        fast, _ = hebbian_recurrent(u, y, r, wrapper.eta[i], wrapper.lam[i])
        x = x + block.mlp[2](block.mlp[1](y + fast))
    return m.head(m.norm(x))


def test_resonance_follows_the_equation_inside_the_model():
    wrapper = SynapticResonance(_model(), eta=0.05, lam=0.8)
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(wrapper(tokens)[0], _resonance_reference(wrapper, tokens), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(wrapper(tokens)[0], wrapper.model(tokens)[0])  # the mechanism is on
    torch.testing.assert_close(wrapper.eta, torch.full((2,), 0.05))
    torch.testing.assert_close(wrapper.lam, torch.full((2,), 0.8))


# ---------------------------------------------------------------------------------------------------------
# Zero strength is the baseline; the wrapped model on its own is untouched


def test_zero_strength_is_the_baseline_exactly():
    tokens = _tokens()
    base = _model()(tokens)[0]
    assert torch.equal(SynapticResonance(_model(), eta=0.0)(tokens)[0], base)
    for opts in REWEAVES:
        assert torch.equal(MemoryReweaving(_model(), gate=0.0, **opts)(tokens)[0], base), opts
    # nonzero strength changes the logits
    assert not torch.allclose(SynapticResonance(_model(), eta=0.05)(tokens)[0], base)
    for opts in REWEAVES:
        assert not torch.allclose(MemoryReweaving(_model(), gate=0.5, **opts)(tokens)[0], base), opts


def test_wrapped_model_alone_is_unchanged():
    tokens = _tokens()
    model = _model()
    before = model(tokens)[0]
    wrapper = SynapticResonance(model, eta=0.1)
    assert torch.equal(model(tokens)[0], before)  # hooks are silent outside the wrapper
    assert not torch.allclose(wrapper(tokens)[0], before)
    assert torch.equal(model(tokens)[0], before)


def test_build_variant_shares_the_backbone():
    base = build_variant("baseline", V, 8, window=4, seed=5)
    for name in C.VARIANTS:
        wrapped = build_variant(name, V, 8, window=4, seed=5)
        if name != "baseline":
            for (k, a), (_, b) in zip(base.state_dict().items(), wrapped.model.state_dict().items()):
                assert torch.equal(a, b), (name, k)
    assert C.n_params(build_variant("resonance", V, 8, window=4)) == C.n_params(base) + 4  # η scale, λ per block
    assert C.n_params(build_variant("reweave (mean)", V, 8, window=4)) == C.n_params(base) + 2 * 64 + 2 * 8 + 8


# ---------------------------------------------------------------------------------------------------------
# The reconstructions against loops


def test_reweave_reconstruct_against_loops():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 8, generator=g)
    cache = [torch.randn(2, 6, 8, generator=g) for _ in range(2)]
    for opts in REWEAVES:
        rw = MemoryReweaving(_model(), gate=0.3, **opts)
        with torch.no_grad():
            for p in rw.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            got = rw.reconstruct(x, cache)
            want = torch.zeros_like(x)
            for t in range(6):
                lo = 0 if rw.past else t
                for ell, h in enumerate(cache):
                    if rw.read == "mean":
                        c = rw.norms[ell](h[:, lo:t + 1].mean(1))
                    else:
                        q = rw.q_proj(rw.query_norm(x[:, t]))  # (B, d)
                        hn = rw.norms[ell](h[:, lo:t + 1])
                        k, v = rw.k_proj[ell](hn), rw.v_proj[ell](hn)
                        w = torch.softmax((k @ q[:, :, None]).squeeze(-1) / 8 ** 0.5, dim=-1)
                        c = (w[:, :, None] * v).sum(1)
                    want[:, t] += rw.proj[ell](c)
            torch.testing.assert_close(got, rw.gate * want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Causality with the mechanisms on


@pytest.mark.parametrize("make", [lambda m: SynapticResonance(m, eta=0.1),
                                  lambda m: SynapticResonance(m, eta=0.1, relevance="uniform"),
                                  *[lambda m, o=o: MemoryReweaving(m, gate=0.5, **o) for o in REWEAVES]])
def test_future_tokens_do_not_change_earlier_logits(make):
    model = make(_model())
    tokens = _tokens(T=14)
    changed = tokens.clone()
    changed[:, 9:] = (changed[:, 9:] + 5) % V
    with torch.no_grad():
        a, b = model(tokens)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


# ---------------------------------------------------------------------------------------------------------
# Data


def test_mqar_zipf_keeps_the_task_and_skews_the_keys():
    inputs, targets = C.mqar_zipf(400, 40, 6, vocab_size=32, seed=0, zipf_s=1.5)
    lo, hi = key_range(32)
    for row_in, row_t in zip(inputs[:50], targets[:50]):
        keys, values = row_in[0:12:2], row_in[1:12:2]
        assert len(set(keys.tolist())) == 6 and all(lo <= k < hi for k in keys.tolist())
        for t in (row_t != IGNORE).nonzero().flatten().tolist():
            k = int(row_in[t])
            assert k in keys.tolist() and int(values[keys.tolist().index(k)]) == int(row_t[t])
            assert int(row_in[t + 1]) == int(row_t[t])
    counts = np.bincount(inputs[:, 0:12:2].flatten().numpy(), minlength=32)
    assert counts[1] > 3 * counts[hi - 1]  # frequent keys are frequent
    again = C.mqar_zipf(400, 40, 6, vocab_size=32, seed=0, zipf_s=1.5)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_key_buckets_cover_the_keys():
    buckets = C.key_buckets(64, 3)
    assert buckets[0][0] == 1 and buckets[-1][1] == 32
    assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))


def test_rare_key_accuracy_matches_evaluate():
    model = _model()
    inputs, targets = C.mqar_zipf(20, 24, 4, vocab_size=V, seed=1)
    rows = C.rare_key_accuracy(model, inputs, targets, V, n_buckets=2)
    assert sum(r["queries"] for r in rows) == int((targets != IGNORE).sum())
    from labkit.memory.train import evaluate
    overall = sum(r["accuracy"] * r["queries"] for r in rows if r["queries"]) / sum(r["queries"] for r in rows)
    assert overall == pytest.approx(evaluate(model, inputs, targets))


def test_replace_tokens():
    tokens = _tokens(4, 50)
    assert torch.equal(C.replace_tokens(tokens, 0.0, V), tokens)
    protect = torch.zeros_like(tokens, dtype=torch.bool)
    protect[:, :10] = True
    noisy = C.replace_tokens(tokens, 1.0, V, seed=3, protect=protect)
    assert torch.equal(noisy[:, :10], tokens[:, :10])
    assert (noisy[:, 10:] != tokens[:, 10:]).float().mean() > 0.8
    assert torch.equal(C.replace_tokens(tokens, 0.3, V, seed=3), C.replace_tokens(tokens, 0.3, V, seed=3))


def test_rare_bytes_are_the_least_frequent():
    rare = C.rare_bytes(0.05).numpy()
    counts = np.bincount(english_tokens("train"), minlength=256)
    assert rare.any() and counts[rare].sum() <= 0.05 * counts.sum()
    assert counts[rare].max() <= counts[~rare].min()


def test_lm_data_and_perplexity():
    x, y = C.lm_batch_stream(16, seed=0)(3, 4)
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    ex, ey = C.lm_eval_set(16, 5)
    assert ex.shape == (5, 16) and torch.equal(ex[:, 1:], ey[:, :-1])
    model = build_variant("baseline", 256, 8, window=4)
    ppl = C.lm_perplexity(model, ex, ey)
    with torch.no_grad():
        logits = model(ex)[0]
    assert ppl == pytest.approx(float(torch.exp(F.cross_entropy(logits.reshape(-1, 256), ey.reshape(-1)))), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Experiments: determinism, the summary's paired differences, merging


TINY = C.replace(C.QUICK, seq_lens=(24,), n_pairs=4, vocab_size=V, d_model=8, mqar_steps=3, lm_steps=2, n_eval=16,
                 lm_context=16, lm_d_model=8, lm_eval_windows=4, window=4, mqar_batch=4, lm_batch=2)


def _drop_time(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_points_are_deterministic():
    a = [C.mqar_point(v, TINY, seed=1) for v in ("baseline", "resonance")] + [C.lm_point("reweave (mean)", TINY)]
    b = [C.mqar_point(v, TINY, seed=1) for v in ("baseline", "resonance")] + [C.lm_point("reweave (mean)", TINY)]
    assert _drop_time(a) == _drop_time(b)
    assert set(a[2]["perplexity"]) == {str(p) for p in TINY.noise}


def test_summary_differences_are_paired_by_seed():
    settings = C.asdict(C.replace(TINY, variants=("baseline", "resonance"), seeds=(0, 1)))
    records = [{"task": "mqar", "variant": v, "seq_len": 24, "seed": s, "accuracy": acc,
                "buckets": [{"accuracy": acc}, {"accuracy": acc / 2}]}
               for (v, s, acc) in [("baseline", 0, 0.5), ("baseline", 1, 0.7), ("resonance", 0, 0.4),
                                   ("resonance", 1, 0.9)]]
    rows = C.summarize({"settings": settings, "records": records, "timing": {}})
    res = next(r for r in rows if r["variant"] == "resonance")
    assert res["mqar_T24"]["values"] == [0.4, 0.9]
    assert res["Δmqar_T24"]["values"] == pytest.approx([-0.1, 0.2])
    assert res["Δmqar_T24"]["mean"] == pytest.approx(0.05)
    assert res["rare_keys_T24"]["values"] == [0.2, 0.45]
    cells = C.table_rows({"rows": rows}, measures=["Δmqar_T24"])
    assert cells[1] == {"variant": "resonance", "Δmqar_T24": "+0.050 ± 0.150"}


def test_strength_curve_collects_the_resonance_sweep():
    settings = C.asdict(C.replace(TINY, seeds=(0, 1)))
    acc = {"baseline": 0.5, "resonance": 0.4, "resonance (η=0.01)": 0.2, "resonance (η=0.001)": 0.45,
           "resonance (uniform r)": 0.9}
    records = [{"task": "mqar", "variant": v, "seq_len": 24, "seed": s, "accuracy": a + s / 10}
               for v, a in acc.items() for s in (0, 1)]
    etas, curve, base = C.strength_curve({"settings": settings, "records": records})
    assert etas == [0.001, 0.003, 0.01]  # the default η of SynapticResonance is 0.003; uniform r left out
    np.testing.assert_allclose(curve, [[0.45, 0.4, 0.2], [0.55, 0.5, 0.3]])
    np.testing.assert_allclose(base, [0.5, 0.6])
    with pytest.raises(ValueError, match="no resonance sweep"):
        C.strength_curve({"settings": settings, "records": records[:2]})


def test_compare_parts_merge(tmp_path):
    settings = C.replace(TINY, variants=("baseline", "reweave (mean)"), sweep_variants=(), timing_repeats=1)
    whole = C.critical_compare(settings, parts=("mqar", "lm"))
    paths = []
    for part in ("mqar", "lm"):
        r = C.critical_compare(settings, parts=(part,))
        paths.append(tmp_path / f"{part}.json")
        paths[-1].write_text(json.dumps(r))
    merged = C.merge(paths, tmp_path / "all.json")
    assert _drop_time(merged["records"]) == _drop_time(whole["records"])
    assert C.load(tmp_path / "all.json")["rows"] == json.loads(json.dumps(merged["rows"]))
    with pytest.raises(ValueError, match="share runs"):
        C.merge([paths[0], paths[0]])
    # a later run may add a seed: the merged settings hold the union
    extra = C.critical_compare(C.replace(settings, seeds=(1,)), parts=("mqar",))
    (tmp_path / "seed1.json").write_text(json.dumps(extra))
    grown = C.merge([tmp_path / "all.json", tmp_path / "seed1.json"])
    assert grown["settings"]["seeds"] == [0, 1] and len(grown["records"]) == len(whole["records"]) + 2
    assert "Δmqar_T24" in next(r for r in grown["rows"] if r["variant"] != "baseline")
    with pytest.raises(ValueError, match="different settings"):
        (tmp_path / "other.json").write_text(json.dumps(C.critical_compare(C.replace(settings, window=3),
                                                                           parts=("mqar",))))
        C.merge([tmp_path / "all.json", tmp_path / "other.json"])


def test_step_time_leaves_the_models_alone():
    models = {"a": build_variant("baseline", V, 8, window=4), "b": build_variant("resonance", V, 8, window=4)}
    before = {k: [p.clone() for p in m.parameters()] for k, m in models.items()}
    x, y = C.mqar_zipf(2, 24, 4, vocab_size=V, seed=0)
    ms = C.step_time(models, x, y, repeats=2)
    assert set(ms) == {"a", "b"} and all(v["cpu_ms"] > 0 and v["wall_ms"] > 0 for v in ms.values())
    for k, m in models.items():
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before[k]))
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        C.step_time(models, x, y, repeats=0)


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input():
    m = _model()
    with pytest.raises(TypeError, match="model must be a MemoryLM"):
        SynapticResonance(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="eta must be a number"):
        SynapticResonance(m, eta=float("nan"))
    for lam in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"lam must lie in \(0.0, 1.0\)"):
            SynapticResonance(m, lam=lam)
    with pytest.raises(ValueError, match="relevance must be one of"):
        SynapticResonance(m, relevance="attention")
    with pytest.raises(ValueError, match="mlp=True"):
        SynapticResonance(_model(mlp=False))
    with pytest.raises(ValueError, match="read must be one of"):
        MemoryReweaving(m, read="max")
    with pytest.raises(ValueError, match="past must be a bool"):
        MemoryReweaving(m, past=1)
    with pytest.raises(ValueError, match="gate must be a number"):
        MemoryReweaving(m, gate="0.1")
    with pytest.raises(ValueError, match="state must be None"):
        SynapticResonance(m)(_tokens(), state=[])
    with pytest.raises(ValueError, match="state must be None"):
        MemoryReweaving(m)(_tokens(), state=[])
    with pytest.raises(ValueError, match=r"tokens must be \(B, T\)"):
        MemoryReweaving(m)(torch.zeros(5, dtype=torch.long))
    x = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match=r"y must be \(B=1, T=3, d_out\)"):
        hebbian_parallel(x, torch.zeros(1, 4, 2), torch.zeros(1, 3), 0.1, 0.5)
    with pytest.raises(ValueError, match=r"r must be \(B=1, T=3\)"):
        hebbian_recurrent(x, torch.zeros(1, 3, 2), torch.zeros(3), 0.1, 0.5)
    with pytest.raises(ValueError, match="delta0 must be"):
        hebbian_recurrent(x, torch.zeros(1, 3, 2), torch.zeros(1, 3), 0.1, 0.5, delta0=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="variant must be one of"):
        build_variant("resonant", V, 8)
    with pytest.raises(ValueError, match="the baseline takes no options"):
        build_variant("baseline", V, 8, eta=0.1)
    with pytest.raises(ValueError, match="n_buckets must be an int"):
        C.key_buckets(V, 0)
    with pytest.raises(ValueError, match=r"p must lie in \[0.0, 1.0\]"):
        C.replace_tokens(_tokens(), 1.5, V)
    with pytest.raises(ValueError, match="parts must be a list"):
        C.critical_compare(TINY, parts="mqar")
    with pytest.raises(ValueError, match="parts must be a list"):
        C.critical_compare(TINY, parts=("mqar64",))
    with pytest.raises(ValueError, match="settings variants must be names"):
        C.critical_compare(C.replace(TINY, variants=("nope",)))
    with pytest.raises(ValueError, match="select keeps no position"):
        ex, ey = C.lm_eval_set(8, 2)
        C.lm_perplexity(build_variant("baseline", 256, 8, window=4), ex, ey, select=torch.zeros_like(ey, dtype=bool))
    with pytest.raises(FileNotFoundError, match="no results"):
        C.load("/nonexistent/critical.json")
