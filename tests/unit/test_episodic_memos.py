"""MemOS: MemCube lifecycle, activation / parametric round trips, conflict policies, knowledge clashes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit.episodic.memos import (
    POLICIES,
    SWEEP_SOURCES,
    UNRELIABLE,
    Claim,
    FactMemory,
    MemOS,
    activation_benchmark,
    clash_experiment,
    coherence_sweep,
    fact_stream,
    kv_from_tensors,
    kv_to_tensors,
    lora_tensors,
    merge_lora,
    noise_sweep,
    resolve,
    stream_experiment,
)
from labkit.episodic.store import MemoryStore

torch.set_num_threads(1)


@pytest.fixture
def mem(tmp_path):
    store = MemoryStore(tmp_path / "m.db")
    yield MemOS(store)
    store.close()


def test_every_update_writes_a_version(mem):
    cid = mem.create("Ana lives in Rome.", source="chat", now=0.0)
    texts = ["Ana lives in Oslo.", "Ana lives in Lima.", "Ana lives in Kyiv."]
    for i, t in enumerate(texts):
        mem.update(cid, t, source=f"s{i}", now=float(i + 1), reason="conflict")
    mem.archive(cid)
    mem.restore(cid)
    hist = mem.history(cid)
    assert [h.version for h in hist] == list(range(1, 7))
    assert [h.text for h in hist[:4]] == ["Ana lives in Rome.", *texts]  # nothing lost, in order
    assert [h.reason for h in hist[:-1]] == ["conflict"] * 3 + ["archive", "restore"]
    assert [h.source for h in hist[:4]] == ["chat", "s0", "s1", "s2"]
    assert [h.status for h in hist] == ["active"] * 4 + ["archived", "active"]
    cube = mem.get(cid)
    assert cube.version == 6 and cube.content == texts[-1] and cube.memory_type == "plaintext"


def test_soft_delete_and_restore(mem):
    a, b = mem.create("keep me"), mem.create("delete me")
    mem.delete(b)
    assert mem.get(b).status == "deleted" and mem.history(b)[0].text == "delete me"
    assert [c.id for c in mem.cubes()] == [a]
    with pytest.raises(ValueError, match="must be active"):
        mem.read(b)
    mem.restore(b)
    assert mem.read(b).content == "delete me"
    assert sorted(c.id for c in mem.cubes()) == [a, b]


def test_access_count_and_priority_order(mem):
    a = mem.create("low", priority=0.0)
    b = mem.create("high", priority=2.0)
    for _ in range(3):
        mem.read(a)
    mem.get(a)  # a plain get does not count
    assert mem.get(a).access_count == 3 and mem.get(b).access_count == 0
    assert [c.id for c in mem.cubes()] == [b, a]
    assert mem.get(a).version == 1  # accesses are not versions


def test_ttl_expiry(mem):
    a = mem.create("short", ttl=10.0, now=100.0)
    b = mem.create("long", ttl=1000.0, now=100.0)
    c = mem.create("forever", now=100.0)
    assert mem.expire(now=109.9) == []
    assert mem.expire(now=110.0) == [a]
    assert mem.get(a).status == "archived" and mem.history(a)[-2].reason == "ttl"
    with pytest.raises(ValueError, match="must be active"):
        mem.read(b, now=2000.0)  # reading past the TTL expires it first
    assert mem.get(b).status == "archived" and mem.get(c).status == "active"
    mem.restore(a, ttl=5.0, now=3000.0)
    assert mem.read(a, now=3004.0).content == "short"
    assert mem.expire(now=3005.0) == [a]


def test_consolidate_merges_duplicates(mem):
    a = mem.create("Ana lives in Rome.", source="chat", now=1.0)
    mem.read(a)
    b = mem.create("ana lives in   rome", source="web", now=2.0, priority=3.0)
    mem.read(b)
    c = mem.create("Bob lives in Oslo.", now=3.0)
    merged = mem.consolidate()
    assert merged == {b: a}
    assert mem.get(b).status == "deleted" and mem.get(c).status == "active"
    keep = mem.get(a)
    assert keep.access_count == 2 and keep.priority == 3.0 and keep.meta["sources"] == ["chat", "web"]
    assert [(lk.dst, lk.kind) for lk in mem.store.links(b)] == [(a, "duplicate_of")]
    assert mem.consolidate() == {}


def test_activation_round_trip_gives_same_logits(tmp_path):
    from labkit.models import load, tokenizer

    model = load("tinylm")
    prefix, nxt = "The cat sat on the ", "m"
    with MemoryStore(tmp_path / "kv.db") as store:
        cid = MemOS(store).save_kv(model, prefix, source="prefill")
    with MemoryStore(tmp_path / "kv.db") as store:  # reopened: the cache comes from the file
        mem = MemOS(store)
        cache = mem.load_kv(cid, model)
        assert cache.length == len(tokenizer.encode(prefix)) == mem.get(cid).meta["length"]
        ids = torch.tensor([tokenizer.encode(prefix + nxt)])
        with torch.no_grad():
            full = model(ids)[0, -1]
            cached = model(ids[:, -1:], cache=cache)[0, -1]
            other = model(torch.tensor([tokenizer.encode("A dog ran " + nxt)]))[0, -1]
        assert torch.allclose(cached, full, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(other, full, atol=1e-2)  # the check can fail: a different prefix differs
        with pytest.raises(ValueError, match="holds a cache of model"):
            mem.load_kv(cid, load("tinylm-draft"))


def test_kv_tensors_round_trip_exact():
    from labkit.models import load

    model = load("tinylm-draft")
    cache = model.new_cache(2)
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0)), cache=cache)
    back = kv_from_tensors(model, kv_to_tensors(cache))
    for x, y in zip([*cache.keys, *cache.values, cache.tokens], [*back.keys, *back.values, back.tokens]):
        assert torch.equal(x, y)
    bad = kv_to_tensors(cache)
    bad["k0"] = bad["k0"][:, :, :3]
    with pytest.raises(ValueError, match="layer 0"):
        kv_from_tensors(model, bad)
    with pytest.raises(ValueError, match="lack"):
        kv_from_tensors(model, {"tokens": cache.tokens})


def test_parametric_round_trip_and_versions(mem):
    from labkit.continual.lora import LoRALinear

    layer = LoRALinear(nn.Linear(8, 6), rank=2)
    layer.add_adapter(torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.B[0].copy_(torch.randn(6, 2, generator=torch.Generator().manual_seed(1)))
    sd = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    extra = {"bf16": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "idx": torch.arange(5)}
    cid = mem.create("LoRA r=2 on an 8->6 layer", "parametric", tensors={**sd, **extra}, source="chapter 4")
    back = mem.read(cid).tensors
    assert set(back) == set(sd) | set(extra)
    for k, v in {**sd, **extra}.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    fresh = LoRALinear(nn.Linear(8, 6), rank=2)
    fresh.add_adapter()
    fresh.load_state_dict({k: back[k] for k in sd})
    x = torch.randn(4, 8)
    assert torch.equal(fresh(x), layer(x))
    new = {k: v + 1 for k, v in sd.items()}
    mem.update(cid, tensors=new, reason="retrain")
    assert mem.get(cid).version == 2
    assert torch.equal(mem.tensors(cid)["A.0"], sd["A.0"] + 1)
    assert torch.equal(mem.tensors(cid, version=1)["A.0"], sd["A.0"])  # the old adapter is kept
    mem.update(cid, "renamed")  # a text-only update keeps the newest tensors
    assert torch.equal(mem.tensors(cid)["A.0"], sd["A.0"] + 1)


def _c(v: str, t: float, src: str = "news", r: float = 0.85, s: float = 1.0) -> Claim:
    return Claim(v, t, src, r, s)


def test_policies_on_hand_made_conflicts():
    claims = [_c("A", 0, "registry", 0.95), _c("B", 100, "forum", 0.55), _c("B", 101, "forum", 0.55)]
    assert resolve(claims, "lww") == "B"
    assert resolve(claims, "fww") == "A"
    assert resolve(claims, "credibility") == "A"  # one credible source outweighs two weak ones
    assert resolve(claims, "recency_vote", half_life=10.0) == "B"  # ... unless it is old
    assert resolve(claims, "recency_vote", half_life=1e6) == "A"
    assert all(resolve(claims, p, t=50) == "A" for p in POLICIES)
    assert all(resolve(claims, p, t=-1) is None for p in POLICIES)
    assert resolve(list(reversed(claims)), "lww") == "B"  # time order, not list order
    # support: three equal sources beat two
    votes = [_c("X", 0), _c("Y", 1), _c("X", 2), _c("Y", 3), _c("X", 4)]
    assert resolve(votes, "credibility") == "X" and resolve(votes, "recency_vote") == "X"
    # partial support weighs half; a tie goes to the newest
    assert resolve([_c("P", 0), _c("Q", 1, s=0.5)], "credibility") == "P"
    assert resolve([_c("P", 0), _c("Q", 1)], "credibility") == "Q"
    # majority ignores sources: two forum posts outvote one registry entry
    assert resolve(claims, "majority") == "B"
    assert resolve([_c("A", 0, "registry", 0.95), _c("B", 1, "forum", 0.55)], "majority") == "B"  # tie: newest
    assert math.isclose(_c("P", 0, r=0.5).weight, 0.05)


def test_fact_memory_history_matches_policy():
    from labkit.data.worlds import make_world

    world = make_world(3, n_people=12, n_places=8, n_orgs=6, n_events=0, change_rate=0.8)
    stream = fact_stream(world, seed=3, claims_per_fact=3)
    g = np.random.default_rng(0)
    for policy in ("lww", "majority", "credibility", "recency_vote"):
        with MemoryStore(":memory:") as store:
            fm = FactMemory(MemOS(store), policy, half_life=200.0)
            changes = sum(fm.ingest(s, r, c) for s, r, c in stream)
            assert changes == fm.n_versions
            assert store.count(None) == len(stream) + len(fm.cube_of)  # every claim kept + one cube per fact
            assert sum(len(fm.mem.history(c)) for c in fm.cube_of.values()) == fm.n_versions
            for (s, r), claims in fm.claims.items():
                assert fm.current(s, r) == resolve(claims, policy, half_life=200.0)
                for t in g.uniform(claims[0].t - 10, claims[-1].t + 10, 4):
                    assert fm.value_at(s, r, t) == resolve(claims, policy, t=t, half_life=200.0), (policy, s, r, t)


def test_stream_experiment_ranks_policies():
    res = stream_experiment(seed=0, n_people=20)
    acc = {p: res["policies"][p]["current"] for p in POLICIES}
    assert acc["recency_vote"] > acc["fww"] and acc["lww"] > acc["fww"]
    assert res["policies"]["fww"]["versions"] == res["n_facts"]  # first write wins never changes its mind


def test_clash_behaviour():
    res = clash_experiment(seed=0, n_people=30)
    tab = res["table"]
    assert all(tab[c]["fww"]["memorization"] == 1.0 for c in tab)  # stubborn
    assert all(tab[c]["lww"]["memorization"] == 0.0 for c in tab if "supporting" not in c)  # receptive
    assert tab["1 counter + 1 supporting"]["majority"]["memorization"] == 1.0  # 2 votes to 1
    assert tab["3 coherent counters"]["majority"]["memorization"] == 0.0
    cred = {c: tab[c]["credibility"]["memorization"] for c in tab}
    assert cred["1 coherent counter"] < cred["1 partial counter"]  # coherence convinces
    assert cred["3 coherent counters"] < cred["1 coherent counter"]  # more evidence convinces more
    assert cred["1 counter + 1 supporting"] > cred["1 coherent counter"]  # confirmation bias
    assert 0.0 < res["stale_share"] < 1.0


def test_bad_arguments(mem):
    with pytest.raises(ValueError, match="memory_type"):
        mem.create("x", "episodic")
    with pytest.raises(ValueError, match="ttl"):
        mem.create("x", ttl=0)
    with pytest.raises(ValueError, match="priority"):
        mem.create("x", priority=float("nan"))
    with pytest.raises(ValueError, match="takes no tensors"):
        mem.create("x", tensors={"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="needs tensors"):
        mem.create("x", "parametric")
    with pytest.raises(ValueError, match="torch.Tensor"):
        mem.create("x", "parametric", tensors={"a": [1.0]})
    with pytest.raises(ValueError, match="dtype"):
        mem.create("x", "parametric", tensors={"a": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="must be non-empty"):
        mem.create("   ")
    cid = mem.create("x")
    with pytest.raises(ValueError, match="update needs"):
        mem.update(cid)
    with pytest.raises(KeyError):
        mem.read(10_000)
    with pytest.raises(ValueError, match="policy"):
        resolve([], "plurality")
    with pytest.raises(ValueError, match="half_life"):
        resolve([], "lww", half_life=0)
    with pytest.raises(ValueError, match="reliability"):
        Claim("a", 0, "s", 1.0)
    with pytest.raises(ValueError, match="strength"):
        Claim("a", 0, "s", 0.9, 0.0)
    with pytest.raises(ValueError, match="store"):
        MemOS("file.db")
    fm = FactMemory(mem, "lww")
    fm.ingest("ana", "lives_in", _c("Rome", 5))
    with pytest.raises(ValueError, match="time order"):
        fm.ingest("ana", "lives_in", _c("Oslo", 4))
    with pytest.raises(ValueError, match="policy"):
        FactMemory(mem, "nope")
    with pytest.raises(ValueError, match="claims_per_fact"):
        fact_stream(None, claims_per_fact=0)
    assert mem.store.integrity_check() == "ok"


def test_size_promote_and_schedule(tmp_path):
    from labkit.models import load, tokenizer

    model = load("tinylm-draft")
    with MemoryStore(tmp_path / "s.db") as store:
        mem = MemOS(store)
        hot, cold = mem.create("Ana lives in Rome.", now=0.0), mem.create("Bob works at Corvane.", now=0.0)
        assert mem.size(hot) == {"text": 18, "tensors": 0, "all_versions": 0}
        for _ in range(3):
            mem.read(hot)
        mem.read(cold)
        promoted = mem.schedule(model, min_access=3)
        assert list(promoted) == [hot]
        act = mem.get(promoted[hot])
        assert act.memory_type == "activation" and act.content == "Ana lives in Rome."
        assert act.meta["derived_from"] == hot and act.meta["length"] == len(tokenizer.encode(act.content))
        cfg = model.config
        per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 + 2 * 8  # K, V float32 + token, position
        assert mem.size(act.id)["tensors"] == per_token * act.meta["length"]
        assert [(lk.src, lk.kind) for lk in store.links(hot, direction="in")] == [(act.id, "derived_from")]
        assert mem.schedule(model, min_access=3) == {}  # already promoted
        mem.update(hot, "Ana lives in Oslo.", now=5.0)  # the source changed: the cache is stale
        again = mem.schedule(model, min_access=3)
        assert mem.get(act.id).status == "archived" and list(again) == [hot]
        assert mem.get(again[hot]).content == "Ana lives in Oslo."
        with pytest.raises(ValueError, match="must be a plaintext"):
            mem.promote(again[hot], model)
        with pytest.raises(ValueError, match="min_access"):
            mem.schedule(model, min_access=0)


def test_lora_cube_changes_the_model(mem):
    from labkit.models import load

    model = load("tinylm-draft")
    ad = lora_tensors(model, rank=2, seed=0)
    assert len(ad) == 4 * model.config.n_layers and all(v.shape[0] == 2 or v.shape[1] == 2 for v in ad.values())
    cid = mem.create("rank-2 adapter", "parametric", tensors=ad)
    back = mem.read(cid).tensors
    assert mem.size(cid)["tensors"] == sum(v.numel() * 4 for v in ad.values())
    x = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base, merged = model(x), merge_lora(model, back)(x)
        zero = merge_lora(model, back, alpha=0.0)(x)
    assert torch.equal(zero, base) and not torch.allclose(merged, base, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(x), base)  # the original model is untouched
    with pytest.raises(ValueError, match="match no"):
        lora_tensors(model, targets=("nope",))


def test_noise_sweep_degrades_and_ranks():
    res = noise_sweep(seed=0, n_people=20, shares=(0.0, 0.5, 1.0))
    wrong = res["wrong_share"]
    assert wrong[0] < wrong[1] < wrong[2]  # more unreliable claims, more contradictions
    pol = res["policies"]
    for p in ("lww", "majority", "recency_vote"):
        assert pol[p]["current"][0] > pol[p]["current"][2], p
    assert pol["recency_vote"]["current"][1] > pol["lww"]["current"][1]
    assert pol["recency_vote"]["current"][1] > pol["fww"]["current"][1]
    assert set(UNRELIABLE) < set(SWEEP_SOURCES)
    with pytest.raises(ValueError, match="shares"):
        noise_sweep(shares=(1.5,))
    with pytest.raises(ValueError, match="unknown sources"):
        fact_stream(None, source_probs={"oracle": 1.0})


def test_coherence_sweep_shapes_the_credibility_policy():
    res = coherence_sweep(seed=0, n_people=30, strengths=(0.1, 0.5, 1.0))
    cred0, cred1 = res["curves"]["0 supporting"]["credibility"], res["curves"]["1 supporting"]["credibility"]
    assert cred0[0] > cred0[1] > cred0[2]  # the more coherent the evidence, the less the memory is kept
    assert all(b >= a for a, b in zip(cred0, cred1))  # a memory-consistent passage keeps it more
    assert res["curves"]["0 supporting"]["fww"] == [1.0] * 3 and res["curves"]["0 supporting"]["lww"] == [0.0] * 3
    with pytest.raises(ValueError, match="strengths"):
        coherence_sweep(strengths=(1.5,))


def test_activation_benchmark_small():
    res = activation_benchmark("tinylm-draft", lengths=(4, 20), repeats=1)
    assert [r["tokens"] for r in res["rows"]] == [4, 20]
    for r in res["rows"]:
        assert r["max_abs_diff"] < 1e-4 and r["same_argmax"]
        assert r["recompute"] > 0 and r["load"] >= r["in_ram"] > 0
    assert res["rows"][1]["kv_bytes"] == 5 * res["rows"][0]["kv_bytes"]
    with pytest.raises(ValueError, match="lengths"):
        activation_benchmark("tinylm-draft", lengths=(500,))
