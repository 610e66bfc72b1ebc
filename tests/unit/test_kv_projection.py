"""labkit.kv.projection: PCA / DCT / MatryoshkaKV feature-axis projections of the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.kv import projection as P
from labkit.models import TinyLM, TinyLMConfig
from labkit.models import tokenizer as tk


@pytest.fixture(scope="module")
def model() -> TinyLM:
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                       context=32)
    return TinyLM(cfg).eval()


@pytest.fixture(scope="module")
def pca(model: TinyLM) -> P.Projection:
    return P.pca_projection(model, n_rows=8)


def _tokens(model: TinyLM, b: int = 3, t: int = 20) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["pca", "dct", "dct-energy", "matryoshka"])
def test_full_rank_reproduces_the_model(model: TinyLM, pca: P.Projection, method: str) -> None:
    x = _tokens(model)
    with torch.no_grad():
        ref = model(x)
    if method == "pca":
        proj = pca
    elif method == "dct":
        proj = P.dct_projection(model, n_rows=4)
    elif method == "dct-energy":
        proj = P.dct_projection(model, select="energy", n_rows=4)
    else:
        proj, history = P.train_matryoshka(model, steps=3, minutes=None, batch_size=2, lr=1e-2, start=pca,
                                           log_every=1)
        assert len(history) == 3 and proj.info["steps"] == 3
        assert not torch.allclose(proj.key_basis, pca.key_basis)  # training moved the bases
        assert all(p.requires_grad for p in model.parameters())  # the model's flags are restored
    assert proj.kept_fraction() == 1.0
    with torch.no_grad(), proj.applied(model):
        got = model(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert model.layers[0].self_attn.kv_transform is None  # restored on exit
    # and a truncated projection changes the output
    with torch.no_grad(), proj.with_rank(2).applied(model):
        assert (model(x) - ref).abs().max() > 1e-4


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 24), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 10.0))
def test_cayley_is_orthogonal(d: int, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, d, d, generator=g, dtype=torch.float64) * scale
    u = P.cayley(x - x.transpose(-1, -2))
    eye = torch.eye(d, dtype=torch.float64).expand(3, d, d)
    torch.testing.assert_close(u.transpose(-1, -2) @ u, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.linalg.det(u), torch.ones(3, dtype=torch.float64))


def test_cayley_of_zero_is_identity_and_bad_shape_raises() -> None:
    torch.testing.assert_close(P.cayley(torch.zeros(5, 5)), torch.eye(5))
    with pytest.raises(ValueError, match="square"):
        P.cayley(torch.zeros(3, 4))


def test_dct_basis_is_orthonormal_and_lowest_frequency_first() -> None:
    c = P.dct_basis(16)
    torch.testing.assert_close(c.T @ c, torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(c[:, 0], torch.full((16,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="d must be"):
        P.dct_basis(0)


def test_nested_truncation_keeps_the_first_r_columns() -> None:
    g = torch.Generator().manual_seed(3)
    H, D = 2, 8
    basis = torch.linalg.qr(torch.randn(H, D, D, generator=g, dtype=torch.float64))[0]
    mean = torch.randn(H, D, generator=g, dtype=torch.float64)
    x = torch.randn(2, H, 5, D, generator=g, dtype=torch.float64)
    rank = torch.tensor([3, 6])
    got = P.project(x, mean, basis, rank)
    for h in range(H):
        u = basis[h, :, : int(rank[h])]
        want = mean[h] + (x[:, h] - mean[h]) @ u @ u.T
        torch.testing.assert_close(got[:, h], want)
    torch.testing.assert_close(P.project(x, mean, basis, torch.tensor([D, D])), x)  # full rank: identity


def test_ranks_bytes_and_rate_map(pca: P.Projection) -> None:
    L, H, D = pca.n_layers, pca.n_heads, pca.head_dim
    assert pca.nbytes_per_token(2) == 2 * L * H * D * 2
    half = pca.with_rank((D // 2, D // 4))
    assert half.nbytes_per_token(2) == L * H * (D // 2 + D // 4) * 2
    assert math.isclose(half.kept_fraction(), (D // 2 + D // 4) / (2 * D))
    assert pca.kept_fraction() == 1.0  # copies, the original is unchanged
    mixed = half.with_rate_map({(1, 0): (1, D)})
    assert mixed.rate_map[(1, 0)] == (1, D) and mixed.rate_map[(0, 0)] == (D // 2, D // 4)
    assert P.uniform_ranks(0.4, 32) == (13, 12) and P.uniform_ranks(1.0, 32) == (32, 32)
    assert pca.with_fraction(0.4).kept_fraction() <= 0.4
    assert pca.basis_nbytes() > 0


def test_rate_search_meets_budget_and_never_cuts_below_one(model: TinyLM, pca: P.Projection) -> None:
    D = pca.head_dim
    history: list = []
    rates = P.rate_search(model, pca, 0.5, rank_step=4, cuts_per_round=2, n_rows=2, length=12, history=history)
    searched = pca.with_rate_map(rates)
    assert searched.kept_fraction() <= 0.5 and set(rates) == set(pca.rate_map)
    assert all(1 <= r <= D for pair in rates.values() for r in pair) and history
    # the tightest budget drives every rank to exactly 1, never below
    tight = P.rate_search(model, pca, 1 / D, rank_step=D // 2, cuts_per_round=100, n_rows=1, length=8)
    assert all(pair == (1, 1) for pair in tight.values())


def test_save_and_load_round_trip(tmp_path, pca: P.Projection) -> None:
    proj = pca.with_rate_map({(0, 1): (3, 5)})
    P.save_matryoshka(proj, {"recipe": {"steps": 0}, "minutes": 0.0, "metrics": {}}, tmp_path, name="x")
    back, card = P.load_matryoshka(tmp_path, name="x")
    torch.testing.assert_close(back.key_basis, proj.key_basis)
    assert back.rate_map == proj.rate_map and card["model_id"] == proj.model_id
    with pytest.raises(FileNotFoundError, match="python -m labkit.kv.projection"):
        P.load_matryoshka(tmp_path, name="missing")


def test_bad_inputs_raise(model: TinyLM, pca: P.Projection) -> None:
    D = pca.head_dim
    with pytest.raises(ValueError, match=rf"rank must be in 1..{D}, got {D + 1}"):
        pca.with_rank(D + 1)
    with pytest.raises(ValueError, match="rank must be in"):
        pca.with_rank(0)
    with pytest.raises(ValueError, match="layer must be in 0..1, got 7"):
        pca.with_rate_map({(7, 0): (4, 4)})
    with pytest.raises(ValueError, match="head must be in 0..1, got 2"):
        pca.with_rate_map({(0, 2): (4, 4)})
    with pytest.raises(ValueError, match="r_v must be in"):
        pca.with_rate_map({(0, 0): (4, D + 3)})
    with pytest.raises(ValueError, match=r"must be \(r_k, r_v\)"):
        pca.with_rate_map({(0, 0): 4})
    for budget in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="budget must be in"):
            P.rate_search(model, pca, budget)
    with pytest.raises(ValueError, match="fraction must be in"):
        pca.with_fraction(0.0)
    with pytest.raises(ValueError, match="select must be"):
        P.dct_projection(model, select="svd")
    with pytest.raises(ValueError, match="steps must be"):
        P.train_matryoshka(model, steps=-1)
    other = TinyLM(TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
                                d_ff=48, context=32))
    with pytest.raises(ValueError, match="projection has"):
        with pca.applied(other):
            pass
    with pytest.raises(ValueError, match="key_rank must have shape"):
        P.Projection(pca.key_basis, pca.value_basis, pca.key_mean, pca.value_mean, torch.ones(3, 3),
                     pca.value_rank, method="pca")


def test_shipped_matryoshka_bases() -> None:
    from labkit.models import ASSETS, load

    if not (ASSETS / f"{P.MATRYOSHKA_NAME}.pt").exists():
        pytest.skip("no shipped MatryoshkaKV bases")
    proj, card = P.load_matryoshka()
    assert card["model_id"] == load("tinylm").model_id
    assert proj.kept_fraction() <= card["recipe"]["budget"] + 1e-9
    eye = torch.eye(proj.head_dim).expand_as(proj.key_basis)
    for u in (proj.key_basis, proj.value_basis):
        torch.testing.assert_close(u.transpose(-1, -2) @ u, eye, atol=1e-4, rtol=0)
