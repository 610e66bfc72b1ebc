"""labkit.kv.memo: saved-activation bytes per training mode (plain, checkpoint, offload)."""

from __future__ import annotations

import pytest
import torch

from labkit.kv.memo import MODES, SavedTensorCounter, activation_memory, forward_logits, training_step
from labkit.models import TinyLM, TinyLMConfig
from labkit.models import tokenizer as tk

torch.set_num_threads(1)

CFG = TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                   context=128)


def data(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.randint(0, tk.VOCAB_SIZE, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    return d[:, :-1], d[:, 1:]


def grads(mode: str) -> tuple[float, dict, SavedTensorCounter]:
    torch.manual_seed(0)
    model = TinyLM(CFG).train()
    x, y = data(2, 40)
    loss, counter = training_step(model, x, y, mode)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}, counter


def test_forward_logits_equals_the_model():
    torch.manual_seed(0)
    model = TinyLM(CFG).eval()
    x, _ = data(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, x), model(x))
        torch.testing.assert_close(forward_logits(model, x, use_checkpoint=True), model(x))


def test_checkpoint_and_offload_give_the_same_gradients_checkpoint_saves_less():
    loss, ref, plain = grads("plain")
    for mode in ("checkpoint", "offload"):
        loss_m, g, counter = grads(mode)
        assert loss_m == pytest.approx(loss, rel=1e-6)
        for name in ref:
            torch.testing.assert_close(g[name], ref[name], atol=1e-6, rtol=1e-5, msg=f"{mode}: {name}")
        if mode == "checkpoint":
            assert counter.bytes < plain.bytes / 2
        else:
            assert counter.bytes == plain.bytes  # on CPU the offload moves nothing; it saves the same tensors
    assert plain.offloaded_bytes == 0 and plain.raw_bytes >= plain.bytes > 0


def test_plain_memory_grows_linearly_in_sequence_length():
    rows = activation_memory(CFG, [32, 64, 128], modes=["plain", "checkpoint"], repeats=1)
    assert [(r["seq_len"], r["mode"]) for r in rows] == [(n, m) for n in (32, 64, 128) for m in ("plain", "checkpoint")]
    plain = {r["seq_len"]: r["saved_bytes"] for r in rows if r["mode"] == "plain"}
    assert 1.8 < plain[64] / plain[32] < 2.2 and 1.8 < plain[128] / plain[64] < 2.2
    for r in rows:
        assert r["step_s"] > 0 and r["peak_cuda_bytes"] is None and r["offloaded_bytes"] == 0
        if r["mode"] == "checkpoint":
            assert r["saved_bytes"] < plain[r["seq_len"]]


def test_counter_skips_parameters_and_counts_each_storage_once():
    w = torch.nn.Parameter(torch.randn(4, 4))
    counter = SavedTensorCounter(exclude=[w])
    x = torch.randn(3, 4, requires_grad=True)
    with counter.hooks():
        y = (x @ w).sum() + (x * 2).sum()
    y.backward()
    assert counter.bytes == x.numel() * 4  # x saved by the matmul; w excluded; x * 2 saves nothing
    assert counter.count >= 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        training_step(TinyLM(CFG), *data(1, 4), mode="swap")
    with pytest.raises(TypeError, match="config"):
        activation_memory({"d_model": 32}, [8])
    with pytest.raises(ValueError, match="seq_lens"):
        activation_memory(CFG, [])
    with pytest.raises(ValueError, match="seq_lens"):
        activation_memory(CFG, [CFG.context + 1])
    with pytest.raises(ValueError, match="modes"):
        activation_memory(CFG, [8], modes=["plain", "zero"])
    with pytest.raises(ValueError, match="modes"):
        activation_memory(CFG, [8], modes="plain")
    with pytest.raises(ValueError, match="repeats"):
        activation_memory(CFG, [8], repeats=0)
    assert set(MODES) == {"plain", "checkpoint", "offload"}
