"""TinyLM, its KV cache, its tokenizer and the shipped weights (labkit.models)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit.models as models
from labkit.models import KVCache, TinyLM, TinyLMConfig
from labkit.models import tokenizer as tk

torch.set_num_threads(2)


def small(token_shift: bool = True, n_kv_heads: int = 4, **kw) -> TinyLM:
    cfg = dict(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48,
               context=32, token_shift=token_shift)
    cfg.update(kw)
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(**cfg)).eval()


VARIANTS = [(True, 4), (False, 4), (True, 2), (False, 1)]  # (token_shift, n_kv_heads); 2, 1: GQA / MQA


# ---------------------------------------------------------------------------------------------- tokenizer


@given(st.text(max_size=60))
@settings(max_examples=60, deadline=None)
def test_tokenizer_round_trip(text):
    assert tk.decode(tk.encode(text)) == text


def test_tokenizer_specials_are_single_tokens():
    ids = tk.encode("ab<k0><v63><sep><doc><copy><k64>")
    assert ids[:2] == [97, 98]
    assert ids[2:7] == [tk.KEY_TOKENS[0], tk.VALUE_TOKENS[63], tk.SEP, tk.DOC, tk.COPY]
    assert tk.decode(ids[7:]) == "<k64>"  # not a token: stays bytes
    assert tk.VOCAB_SIZE == 3 + 256 + tk.N_KEYS + tk.N_VALUES
    assert len(set(tk.KEY_TOKENS) | set(tk.VALUE_TOKENS) | {tk.SEP, tk.DOC, tk.COPY}) == tk.VOCAB_SIZE - 256
    with pytest.raises(ValueError, match="ids"):
        tk.decode([tk.VOCAB_SIZE])


# ---------------------------------------------------------------------------------------------- model


def test_shapes_and_parameters():
    model = small()
    x = torch.randint(0, tk.VOCAB_SIZE, (3, 7))
    logits = model(x)
    assert logits.shape == (3, 7, tk.VOCAB_SIZE) and logits.dtype == torch.float32
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight
    # token shift is the only difference in size: one more embedding
    assert small(True).num_parameters() - small(False).num_parameters() == tk.VOCAB_SIZE * 32


def test_token_shift_sees_the_previous_token():
    """With token shift, position 1's logits depend on token 0 even without attention to it."""
    model = small(True)
    a, b = torch.tensor([[5, 9]]), torch.tensor([[6, 9]])
    assert not torch.allclose(model(a)[0, 1], model(b)[0, 1])


@pytest.mark.parametrize("token_shift,n_kv_heads", VARIANTS)
def test_cached_decode_equals_full_recompute(token_shift, n_kv_heads):
    model = small(token_shift, n_kv_heads)
    x = torch.randint(0, tk.VOCAB_SIZE, (2, 20))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(batch_size=2)
        steps = [model(x[:, :5], cache=cache)]  # prefill, then one token at a time
        for t in range(5, 20):
            steps.append(model(x[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20 and torch.equal(cache.tokens, x) and torch.equal(cache.last_tokens, x[:, -1])
    cfg = model.config
    assert cache.bytes() == 2 * cfg.n_layers * 2 * n_kv_heads * 20 * cfg.head_dim * 4


@pytest.mark.parametrize("token_shift,n_kv_heads", VARIANTS[:3])
def test_crop_rejects_a_tail(token_shift, n_kv_heads):
    model = small(token_shift, n_kv_heads)
    x = torch.randint(0, tk.VOCAB_SIZE, (1, 12))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        model(x[:, :6], cache=cache)
        model(torch.randint(0, tk.VOCAB_SIZE, (1, 4)), cache=cache)  # a rejected draft
        cache.crop(6)
        assert cache.length == 6 and int(cache.last_tokens) == int(x[0, 5])
        rest = model(x[:, 6:], cache=cache)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=1e-5)
    assert cache.crop(0).length == 0 and cache.last_tokens is None and cache.bytes() == 0
    with pytest.raises(ValueError, match="n must be"):
        cache.crop(1)


def _tree():
    """A token tree under a prefix: parents[i] = index of node i's parent (-1: child of the prefix)."""
    parents = [-1, 0, 0, 1, 1, 2, -1, 6]
    tokens = [11, 40, 41, 300, 301, 42, 12, 99]
    T = len(parents)
    mask = torch.zeros(T, T, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        mask[i, i] = True
        j = p
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
        depth.append(0 if p < 0 else depth[p] + 1)
    return parents, tokens, mask, depth


def _path(parents, i):
    path = []
    while i >= 0:
        path.append(i)
        i = parents[i]
    return path[::-1]


@pytest.mark.parametrize("token_shift,n_kv_heads", VARIANTS)
def test_tree_forward_equals_each_path(token_shift, n_kv_heads):
    model = small(token_shift, n_kv_heads)
    prefix = torch.tensor([[7, 8, 9, 10, 3]])
    parents, tokens, mask, depth = _tree()
    P = prefix.shape[1]
    with torch.no_grad():
        cache = model.new_cache()
        model(prefix, cache=cache)
        base = cache.clone()
        positions = torch.tensor([[P + d for d in depth]])
        prev = torch.tensor([[int(prefix[0, -1]) if p < 0 else tokens[p] for p in parents]])
        tree_logits = model(torch.tensor([tokens]), cache=cache, positions=positions, tree_mask=mask, prev_tokens=prev)
        assert cache.length == P + len(tokens)
        for leaf in (3, 4, 5, 7):
            path = _path(parents, leaf)
            expect = model(torch.tensor([[tokens[i] for i in path]]), cache=base.clone())
            torch.testing.assert_close(tree_logits[:, path], expect, atol=1e-5, rtol=1e-5)

        # commit the path to node 4 with select, then keep decoding: equals recomputing from scratch
        path = _path(parents, 4)
        cache.select(torch.cat([torch.arange(P), P + torch.tensor(path)]))
        assert cache.length == P + len(path) and int(cache.last_tokens) == tokens[4]
        nxt = model(torch.tensor([[5, 6]]), cache=cache)
        seq = torch.cat([prefix, torch.tensor([[tokens[i] for i in path] + [5, 6]])], dim=1)
        torch.testing.assert_close(nxt, model(seq)[:, -2:], atol=1e-5, rtol=1e-5)


def test_select_and_reorder_semantics():
    model = small()
    x = torch.randint(0, tk.VOCAB_SIZE, (2, 6))
    with torch.no_grad():
        cache = model.new_cache(2)
        model(x, cache=cache)
    k0 = cache.keys[0].clone()
    c = cache.clone().select(torch.tensor([0, 2, 5]))
    assert c.length == 3 and torch.equal(c.tokens, x[:, [0, 2, 5]]) and torch.equal(c.keys[0], k0[:, :, [0, 2, 5]])
    assert cache.length == 6  # clone is independent
    c = cache.clone().select(torch.tensor([[0, 1], [3, 4]]))  # per-row indices
    assert torch.equal(c.tokens, torch.stack([x[0, [0, 1]], x[1, [3, 4]]]))
    with pytest.raises(ValueError, match="indices"):
        cache.select(torch.tensor([6]))
    r = cache.clone().reorder([1, 1, 0])
    assert r.batch_size == 3 and torch.equal(r.tokens, x[[1, 1, 0]])


def test_errors_name_the_argument():
    model = small()
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(1, 33, dtype=torch.long))  # longer than context 32
    cache = model.new_cache()
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)  # 30 cached + 3 > 32
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.tensor([[tk.VOCAB_SIZE]]))
    other = small(n_kv_heads=2)
    with pytest.raises(ValueError, match="cache"):
        other(torch.zeros(1, 1, dtype=torch.long), cache=model.new_cache())
    with pytest.raises(ValueError, match="cache"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=model.new_cache(1))
    with pytest.raises(ValueError, match="tree_mask"):
        model(torch.zeros(1, 2, dtype=torch.long), tree_mask=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_kv_heads"):
        TinyLMConfig(tk.VOCAB_SIZE, 32, 1, 4, 3, 32, 16)
    assert isinstance(model.new_cache(), KVCache)


def test_decode_kernel_backend_matches_torch():
    pytest.importorskip("numba")
    model = small(True, 2)
    x = torch.randint(0, tk.VOCAB_SIZE, (2, 10))
    with torch.no_grad():
        full = model(x)
        model.backend = "numba"
        cache = model.new_cache(2)
        model(x[:, :6], cache=cache)
        steps = [model(x[:, t:t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 6:], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", models.MODELS)
def test_load_shipped_models(name):
    assert name in models.available()
    model = models.load(name)
    assert not model.training and model.config.vocab_size == tk.VOCAB_SIZE
    card = models.card(name)
    assert card["parameters"] == model.num_parameters()
    assert model.config.token_shift == (not name.endswith("-plain"))
    curve = models.curve(name)
    assert curve[0]["step"] == 0 and {"step", "minutes", "lookup_accuracy", "english_bpc"} <= set(curve[-1])
    with pytest.raises(ValueError, match="name"):
        models.load("gpt-5")


def test_draft_is_about_ten_times_smaller():
    ratio = models.card("tinylm")["parameters"] / models.card("tinylm-draft")["parameters"]
    assert 6 <= ratio <= 14


def test_shipped_tinylm_uses_its_context():
    from labkit.train import lookup_accuracy

    model = models.load("tinylm")
    acc = lookup_accuracy(model, n_pairs=8, n_episodes=100, seed=424242)  # fresh: not the eval seed
    assert acc >= 0.9, f"8-pair lookup exact match {acc:.2f} < 0.9 (chance 0.125)"


def test_train_cli_fast(tmp_path):
    import json

    from labkit.train import main

    card = main(["tinylm-draft", "--fast", "--out", str(tmp_path)])
    assert card["training"]["steps"] == 4 and card["provenance"]["fast"]
    saved = json.loads((tmp_path / "tinylm-draft.json").read_text())
    assert saved["config"] == card["config"] and (tmp_path / "tinylm-draft.pt").exists()
    curve = json.loads((tmp_path / "tinylm-draft.curve.json").read_text())
    assert [p["step"] for p in curve] == [0, 2, 4]
    state = torch.load(tmp_path / "tinylm-draft.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values()) and "lm_head.weight" not in state


def test_kv_transform_hook_identity_and_effect():
    import torch

    from labkit.models import load

    model = load("tinylm")
    tokens = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    base = model(tokens)
    seen = []

    def identity(layer, k, v):
        seen.append((layer, tuple(k.shape)))
        return k, v

    model.set_kv_transform(identity)
    assert torch.equal(model(tokens), base)
    assert [s[0] for s in seen] == list(range(model.config.n_layers))
    model.set_kv_transform(lambda layer, k, v: (k, torch.zeros_like(v)))  # values erased: logits change
    assert not torch.allclose(model(tokens), base)
    model.set_kv_transform(None)
    assert torch.equal(model(tokens), base)
    with pytest.raises(TypeError, match="transform"):
        model.set_kv_transform(3)
