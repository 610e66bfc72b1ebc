"""Chapter 4 LoRA: the layer (B = 0 start, merge/unmerge), orthogonality loss and its gradient, O3's gate, the EMA
of I-LoRA, bad inputs, and tiny runs of the three experiments."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from labkit.continual.lora import (
    LoRALinear,
    LoRAMLP,
    MahalanobisGate,
    O3Unlearner,
    ema_update,
    ilora_experiment,
    o3_experiment,
    olora_experiment,
    orthogonality_loss,
    push_away_loss,
)
from labkit.continual.models import MLP

torch.set_num_threads(1)


def _mlp(seed: int = 0, hidden=(16, 12), d_in: int = 8, n_classes: int = 5) -> MLP:
    torch.manual_seed(seed)
    return MLP(d_in=d_in, hidden=hidden, n_classes=n_classes)


def _randomise_B(model: LoRAMLP, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers():
            for b in layer.B:
                b.copy_(torch.randn(b.shape, generator=g))


def test_lora_forward_equals_base_at_init_and_base_is_frozen():
    base = _mlp()
    model = LoRAMLP(base, rank=3)
    model.add_adapter(seed=0)
    x = torch.randn(7, 8)
    assert torch.equal(model(x), base(x))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".A." in n or ".B." in n for n in trainable)
    # A is random (not zero), B is zero: the update is exactly zero
    assert all(layer.A[0].abs().sum() > 0 and layer.B[0].abs().sum() == 0 for layer in model.lora_layers())
    # the wrapped base is a copy: training the LoRA never touches the caller's MLP
    assert all(p.requires_grad for p in base.parameters())


def test_lora_forward_is_w0x_plus_scaled_BAx():
    lin = nn.Linear(6, 4)
    layer = LoRALinear(copy.deepcopy(lin), rank=2, alpha=6.0)
    layer.add_adapter(torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.B[0].copy_(torch.randn(4, 2))
    x = torch.randn(5, 6)
    want = lin(x) + 3.0 * x @ (layer.B[0] @ layer.A[0]).T
    torch.testing.assert_close(layer(x), want)


def test_merge_unmerge_exact():
    base = _mlp()
    model = LoRAMLP(base, rank=2)
    model.add_adapter(seed=0)
    _randomise_B(model)
    model.add_adapter(seed=1)
    _randomise_B(model, seed=2)
    x = torch.randn(9, 8)
    before = model(x)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.merge()
    assert not torch.allclose(model.head.base.weight, w0["head.base.weight"])  # the update went into W
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="gate"):
        model(x, gate=torch.ones(9))
    with pytest.raises(ValueError, match="already merged"):
        model.merge()
    model.unmerge()
    for n, p in model.named_parameters():
        assert torch.equal(p, w0[n]), n
    assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="not merged"):
        model.unmerge()


def test_orthogonality_loss_zero_iff_orthogonal():
    Q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    A_old = [Q[:3].clone(), Q[3:5].clone()]
    assert orthogonality_loss(Q[5:8], A_old).item() < 1e-24
    assert orthogonality_loss(Q[5:8], []).item() == 0.0
    A_new = Q[5:8] + 0.1 * Q[1]  # leaks into A_old[0]'s row space
    loss = orthogonality_loss(A_new, A_old)
    assert loss.item() == pytest.approx(3 * 0.01, rel=1e-10)  # ‖A_0 A_newᵀ‖² = 3 rows × 0.1²
    A = torch.randn(3, 10, dtype=torch.float64)
    B = torch.randn(2, 10, dtype=torch.float64)
    assert orthogonality_loss(A, [B]).item() == pytest.approx(float(((B @ A.T) ** 2).sum()))


def test_orthogonality_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    A_new = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    A_old = [torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True),
             torch.randn(1, 5, generator=g, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda a, b, c: orthogonality_loss(a, [b, c]), (A_new, *A_old))
    # the closed form 2 Σ_k A_new A_kᵀ A_k
    (grad,) = torch.autograd.grad(orthogonality_loss(A_new, A_old), A_new)
    want = 2 * sum(A_new @ a.T @ a for a in A_old)
    torch.testing.assert_close(grad, want.detach())


def test_model_orthogonality_loss_only_newest_vs_older():
    model = LoRAMLP(_mlp(), rank=2)
    model.add_adapter(seed=0)
    assert model.orthogonality_loss().item() == 0.0
    model.add_adapter(seed=1)
    want = sum(((layer.A[0] @ layer.A[1].T) ** 2).sum() for layer in model.lora_layers())
    torch.testing.assert_close(model.orthogonality_loss(), want)
    # only the newest adapter is trainable
    assert all(not layer.A[0].requires_grad and layer.A[1].requires_grad for layer in model.lora_layers())


def test_gate_zero_gives_the_base_model_exactly():
    base = _mlp()
    model = LoRAMLP(base, rank=3)
    for k in range(3):
        model.add_adapter(seed=k)
        _randomise_B(model, seed=10 + k)
    x = torch.randn(11, 8)
    assert not torch.allclose(model(x), base(x))
    assert torch.equal(model(x, gate=torch.zeros(11)), base(x))
    gate = (torch.arange(11) % 2).float()
    out = model(x, gate=gate)
    assert torch.equal(out[gate == 0], base(x)[gate == 0])
    torch.testing.assert_close(out[gate == 1], model(x)[gate == 1])


def test_o3_gate_off_output_exactly_base_and_on_forgets():
    from labkit.continual.data import digits_split
    from labkit.continual.lora import pretrain_base

    base = pretrain_base(0, epochs=3)
    data = digits_split(0)
    o3 = O3Unlearner(base, rank=4)
    x = data.x_test
    assert torch.equal(o3(x), base(x))  # no request yet: gate never fires
    tr = data.y_train == 3
    o3.unlearn(data.x_train[tr], data.y_train[tr], steps=40, seed=0)
    g = o3.gate_values(x)
    off = g == 0
    assert off.any() and (~off).any()
    assert torch.equal(o3(x)[off], base(x)[off])  # gated off ⇒ the base model bit for bit
    f = data.y_test == 3
    assert (o3(x[f]).argmax(1) == 3).float().mean() < 0.3
    assert g[f].mean() > 0.7 and g[~f].mean() < 0.1


def test_mahalanobis_gate_detects_its_cluster():
    g = torch.Generator().manual_seed(0)
    gate = MahalanobisGate(shrinkage=0.1, quantile=0.99)
    assert gate(torch.randn(4, 6)).sum() == 0
    gate.add_request(torch.randn(300, 6, generator=g) + 5.0)
    near = torch.randn(200, 6, generator=g) + 5.0
    far = torch.randn(200, 6, generator=g) - 5.0
    assert gate(near).mean() > 0.9 and gate(far).sum() == 0
    assert gate.scores(near).shape == (200, 1)


def test_push_away_loss():
    logits = torch.zeros(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    assert push_away_loss(logits, y).item() == pytest.approx(np.log(5))
    big = torch.full((4, 5), 0.0)
    big[torch.arange(4), y] = -50.0  # p(y|x) ≈ 0, the rest uniform: the minimum log(C − 1)
    assert push_away_loss(big, y).item() == pytest.approx(np.log(4), abs=1e-6)


def test_ema_update_formula():
    slow = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    fast = {"a": torch.tensor([3.0, -2.0]), "b": torch.tensor([[10.0]])}
    ema_update(slow, fast, 0.75)
    torch.testing.assert_close(slow["a"], torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(slow["b"], torch.tensor([[2.5]]))
    ema_update(slow, fast, 0.0)  # decay 0: copy
    torch.testing.assert_close(slow["a"], fast["a"])
    # on models: only adapter matrices move
    fast_m = LoRAMLP(_mlp(), rank=2)
    fast_m.add_adapter(seed=0)
    slow_m = copy.deepcopy(fast_m)
    _randomise_B(fast_m)
    s0 = {n: p.detach().clone() for n, p in slow_m.named_parameters()}
    ema_update(slow_m, fast_m, 0.9)
    fp = dict(fast_m.named_parameters())
    for n, p in slow_m.named_parameters():
        torch.testing.assert_close(p.detach(), 0.9 * s0[n] + 0.1 * fp[n].detach())


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan")])
def test_ema_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        ema_update({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, decay)


def test_bad_inputs():
    lin = nn.Linear(6, 4)
    for rank in (0, -1, 5, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            LoRALinear(lin, rank)
    with pytest.raises(ValueError, match="head"):
        LoRAMLP(_mlp(n_classes=5), rank=6)  # head is 12 → 5
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(lin, 2, alpha=0.0)
    with pytest.raises(ValueError, match="base"):
        LoRAMLP(nn.Linear(3, 3), 1)
    layer = LoRALinear(lin, 2)
    layer.add_adapter()
    with pytest.raises(ValueError, match="gate"):
        layer(torch.randn(3, 6), gate=torch.ones(4))
    with pytest.raises(ValueError, match="A_old"):
        orthogonality_loss(torch.randn(2, 5), [torch.randn(2, 4)])
    with pytest.raises(ValueError, match="slow and fast"):
        ema_update({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="quantile"):
        MahalanobisGate(quantile=0.0)
    with pytest.raises(ValueError, match="lam_orth"):
        O3Unlearner(_mlp(), rank=2, lam_orth=-1.0)
    with pytest.raises(ValueError, match="n_tasks"):
        olora_experiment(n_tasks=1)
    with pytest.raises(ValueError, match="methods"):
        olora_experiment(methods=("nope",))
    with pytest.raises(ValueError, match="n_requests"):
        o3_experiment(n_requests=10)
    with pytest.raises(ValueError, match="decay"):
        ilora_experiment(decay=1.0)


def test_olora_and_ilora_tiny_runs_are_deterministic_and_sane():
    kw = dict(seeds=(0,), n_tasks=2, epochs=2, base_epochs=2)
    a = olora_experiment(**kw)
    b = olora_experiment(**kw)
    assert a["matrices"] == b["matrices"]
    for m in ("single_lora", "per_task_lora", "o_lora"):
        R = np.array(a["matrices"][m][0]["R"])
        assert R.shape == (2, 2) and R[1, 1] > 0.4  # each task is learned well above chance (0.1)
    assert a["o_lora_max_cross_cosine"] < 0.5
    r = ilora_experiment(seeds=(0,), n_tasks=2, epochs=1, base_epochs=2, memory=50)
    assert set(r["summary"]) == {"er_lora", "ilora_slow", "ilora_fast"}
    assert np.array(r["matrices"]["er_lora"][0]["R"])[1, 1] > 0.5


def test_o3_tiny_run():
    r = o3_experiment(seeds=(0,), n_requests=2, steps=30, base_epochs=3)
    row = r["runs"][0]["rows"][-1]
    assert row["o3"]["forget"] < 0.3 and row["base_forget"] > 0.8
    assert row["o3"]["retain"] >= row["base_retain"] - 0.03  # the gate keeps retained data (almost) untouched
    assert row["o3"]["retain"] >= row["no_gate"]["retain"]
