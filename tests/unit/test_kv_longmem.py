"""labkit.kv.longmem: the offloaded memory bank retrieved by key similarity."""

from __future__ import annotations

import pytest
import torch

import labkit.models as models
from labkit.kv.longmem import (
    MemoryBank,
    far_lookup_episodes,
    full_cache_answer,
    longmem_answer,
    longmem_generate,
    longmem_prefill,
    longmem_query,
    retrieval_head_hits,
)
from labkit.models import TinyLM, TinyLMConfig
from labkit.models import tokenizer as tk

torch.set_num_threads(1)


def small(n_kv_heads: int = 4, seed: int = 0) -> TinyLM:
    cfg = TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                       d_ff=48, context=64)
    torch.manual_seed(seed)
    return TinyLM(cfg).eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, tk.VOCAB_SIZE, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_window_covering_everything_equals_full_cache(n_kv_heads):
    model = small(n_kv_heads)
    ctx, q = tokens(2, 37), tokens(2, 3, seed=1)
    full, _ = full_cache_answer(model, ctx, q)
    bank = MemoryBank(chunk_size=8, top_k=100)
    got, stats = longmem_answer(model, ctx, q, window=40, bank=bank)
    assert bank.n_chunks == 0 and stats.bank_bytes == 0
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_all_chunks_loaded_back_equals_full_cache(n_kv_heads):
    """Full prefill, a small window and top_k = every chunk: the loaded cache is the full cache."""
    model = small(n_kv_heads)
    ctx, q = tokens(3, 45), tokens(3, 2, seed=1)
    full, full_bytes = full_cache_answer(model, ctx, q)
    bank = MemoryBank(chunk_size=8, top_k=100)
    got, stats = longmem_answer(model, ctx, q, window=12, bank=bank, prefill="full")
    assert bank.n_chunks == 5 and stats.retrieved.shape == (3, 5)
    assert stats.fast_bytes == full_bytes
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    # an fp16 bank is close, not exact
    half, _ = longmem_answer(model, ctx, q, window=12, bank=MemoryBank(8, 100, dtype=torch.float16), prefill="full")
    torch.testing.assert_close(half, full, atol=5e-2, rtol=0)


def test_streaming_prefill_with_a_wide_window_equals_full():
    model = small()
    ctx, q = tokens(1, 30), tokens(1, 2, seed=3)
    full, _ = full_cache_answer(model, ctx, q)
    got, _ = longmem_answer(model, ctx, q, window=32, bank=MemoryBank(4, 0), prefill="streaming")
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_bytes_and_query_leave_cache_and_bank_untouched():
    model = small()
    ctx = tokens(1, 40)
    bank = MemoryBank(chunk_size=8, top_k=1, dtype=torch.float16)
    cache = longmem_prefill(model, ctx, window=16, bank=bank)
    assert cache.length == 16 and bank.n_chunks == 3
    per_token = 2 * model.config.n_layers * model.config.n_kv_heads * model.config.head_dim
    assert bank.bytes() == 24 * per_token * 2 and cache.bytes() == 16 * per_token * 4
    assert torch.equal(cache.positions[0], torch.arange(24, 40)) and torch.equal(bank.positions[0].flatten(),
                                                                                  torch.arange(24))
    before = [k.clone() for k in cache.keys]
    _, gen, st = longmem_query(model, tokens(1, 2, seed=5), cache, bank, max_new_tokens=3)
    assert gen.shape == (1, 3) and st.fast_bytes == (16 + 8) * per_token * 4
    assert cache.length == 16 and all(torch.equal(a, b) for a, b in zip(before, cache.keys))
    out, _ = longmem_generate(model, ctx, tokens(1, 2, seed=5), 16, bank, max_new_tokens=3)
    assert torch.equal(out, gen)


def test_retrieval_finds_the_chunk_of_the_matching_key():
    """A constructed bank: chunk 5 holds the key the query points at; mean-key and token scoring find it."""
    g = torch.Generator().manual_seed(0)
    B, H, D, c, n = 2, 2, 16, 4, 8
    keys = torch.randn(B, H, n * c, D, generator=g) * 0.1
    target = torch.randn(B, H, D, generator=g)
    keys[:, :, 5 * c + 2] = 3 * target  # one strong matching key, in chunk 5
    cache = small().new_cache(B)
    cache.keys = [keys.clone()]
    cache.values = [torch.randn_like(keys)]
    cache.tokens = torch.zeros(B, n * c, dtype=torch.long)
    cache.positions = torch.arange(n * c).expand(B, -1).clone()
    cache.n_layers = 1
    for score in ("mean", "max"):
        bank = MemoryBank(chunk_size=c, top_k=1, score=score)
        while cache.length:
            bank.offload(cache)
        assert bank.n_chunks == n
        assert bank.retrieve([target]).tolist() == [[5], [5]]
        k, v, toks, pos = bank.load(torch.tensor([[5], [5]]), torch.float32, "cpu")
        torch.testing.assert_close(k[0], keys[:, :, 5 * c:6 * c])
        assert pos[0].tolist() == list(range(5 * c, 6 * c))
        cache.keys, cache.positions = [keys.clone()], torch.arange(n * c).expand(B, -1).clone()
        cache.values, cache.tokens = [torch.randn_like(keys)], torch.zeros(B, n * c, dtype=torch.long)


def test_tinylm_retrieves_the_chunk_holding_the_queried_pair():
    if "tinylm" not in models.available():
        pytest.skip("tinylm weights are not shipped in this checkout")
    model = models.load("tinylm")
    ctx, q, ans, where = far_lookup_episodes(7, 40)
    hits = retrieval_head_hits(model, ctx, q, where, window=32, chunk_size=8, top_k=2)
    assert hits.shape == (model.config.n_layers, model.config.n_heads)
    assert float(hits.max()) >= 0.8  # a key-matching head exists (layer 0 on the shipped weights)
    layer, head = divmod(int(hits.argmax()), model.config.n_heads)
    bank = MemoryBank(8, 2, layer=layer, head=head, score="max")
    logits, st = longmem_answer(model, ctx, q, 32, bank)
    window_only, _ = longmem_answer(model, ctx, q, 32, MemoryBank(8, 0))
    acc = (logits.argmax(-1) == ans).float().mean()
    assert acc >= 0.5 and acc > (window_only.argmax(-1) == ans).float().mean() + 0.3


def test_bad_inputs_raise():
    model = small()
    with pytest.raises(ValueError, match="chunk_size"):
        MemoryBank(0, 1)
    with pytest.raises(ValueError, match="top_k"):
        MemoryBank(4, -1)
    with pytest.raises(ValueError, match="score"):
        MemoryBank(4, 1, score="median")
    with pytest.raises(ValueError, match="dtype"):
        MemoryBank(4, 1, dtype=torch.int8)
    bank = MemoryBank(8, 1)
    with pytest.raises(ValueError, match="window"):
        longmem_prefill(model, tokens(1, 20), window=4, bank=bank)
    with pytest.raises(ValueError, match="prefill"):
        longmem_prefill(model, tokens(1, 20), window=8, bank=bank, prefill="lazy")
    with pytest.raises(ValueError, match="context"):
        longmem_prefill(model, tokens(1, 65), window=8, bank=bank)
    with pytest.raises(ValueError, match="context"):
        longmem_prefill(model, torch.rand(1, 20), window=8, bank=bank)
    with pytest.raises(ValueError, match="layer"):
        longmem_prefill(model, tokens(1, 20), window=8, bank=MemoryBank(8, 1, layer=5))
    cache = longmem_prefill(model, tokens(2, 30), window=8, bank=bank)
    with pytest.raises(ValueError, match="query"):
        longmem_query(model, tokens(1, 2), cache, bank)  # batch mismatch
    with pytest.raises(ValueError, match="beyond the model's context"):
        longmem_query(model, tokens(2, 2), cache, bank, max_new_tokens=40)
    with pytest.raises(ValueError, match="another model"):
        longmem_query(TinyLM(TinyLMConfig(**{**model.config.to_dict(), "d_ff": 64})), tokens(2, 2), cache, bank)
    with pytest.raises(ValueError, match="indices"):
        bank.load(torch.tensor([[0], [99]]), torch.float32, "cpu")
    with pytest.raises(ValueError, match="queries"):
        bank.scores([torch.zeros(2, 4, 8)])
    with pytest.raises(ValueError, match="head"):
        b = MemoryBank(8, 1, head=9)  # constructing is fine; scoring checks the range
        longmem_answer(model, tokens(2, 30), tokens(2, 2), 8, b)
    with pytest.raises(ValueError, match="n_pairs"):
        far_lookup_episodes(0, 4, n_pairs=0)
    other = MemoryBank(8, 1)
    longmem_prefill(model, tokens(1, 30), window=8, bank=other)
    with pytest.raises(ValueError, match="does not match"):
        other.offload(longmem_prefill(model, tokens(2, 30), window=30, bank=MemoryBank(8, 1)))
