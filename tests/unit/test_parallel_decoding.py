"""labkit.decoding.parallel: Medusa heads, PPD prompt tokens, the sparse tree and exact tree decoding.

Tree decoding must reproduce greedy decoding token for token, whatever the guesser proposes: trained
(the shipped weights), untrained, or on a tiny random model. The pure functions (the distillation loss,
the tree, the size choice) are checked against hand computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.decoding import generate
from labkit.decoding.parallel import (
    MedusaHeads,
    PromptTokens,
    acceptance_by_depth,
    attach_prompts,
    build_sparse_tree,
    choose_tree_size,
    expected_accepted,
    load_medusa,
    load_prompt_tokens,
    path_probabilities,
    plan_tree,
    ppd_distillation_loss,
    ppd_expected_tokens,
    prompt_carriers,
    train_medusa,
    train_prompt_tokens,
    tree_depths,
    tree_generate,
    tree_ranks,
)
from labkit.models import load
from labkit.models import tokenizer as tk
from labkit.models.tinylm import TinyLM, TinyLMConfig

torch.set_num_threads(1)  # two cores shared with other jobs (conftest sets OMP_WAIT_POLICY=PASSIVE)


def tiny_lm(seed: int = 0, vocab: int = 32, d_model: int = 32, context: int = 64) -> TinyLM:
    """A random TinyLM with logits of spread ~1 (no greedy ties), as in test_decoding."""
    torch.manual_seed(seed)
    cfg = TinyLMConfig(vocab_size=vocab, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=2 * d_model,
                       context=context)
    model = TinyLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model


@pytest.fixture(scope="module")
def tinylm() -> TinyLM:
    return load("tinylm")


@pytest.fixture(scope="module")
def medusa() -> MedusaHeads:
    return load_medusa("tinylm")


@pytest.fixture(scope="module")
def ppd() -> PromptTokens:
    return load_prompt_tokens("tinylm")


ENGLISH = tk.encode("The for statement is used to iterate over the elements of a sequence ")
COPY = tk.encode("<doc><copy><v1><v5><v9><v3><v7><v2><v8><sep>")


# ------------------------------------------------------------------------------------------------------
# TinyLM: embed, embeds=, return_hidden=
# ------------------------------------------------------------------------------------------------------


def test_embed_and_embeds_reproduce_the_plain_forward():
    model = tiny_lm(1)
    tokens = torch.randint(32, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(tokens)
        assert torch.allclose(model(tokens, embeds=model.embed(tokens)), plain, atol=1e-5)
        logits, hidden = model(tokens, return_hidden=True)
        assert hidden.shape == (2, 10, 32)
        assert torch.equal(logits, plain)
        assert torch.allclose(model.lm_head(hidden), plain, atol=1e-5)
        # with a cache: the previous token of the first new token comes from the cache
        cache = model.new_cache(2)
        model(tokens[:, :6], cache=cache)
        prev = torch.cat([tokens[:, 5:6], tokens[:, 6:9]], dim=1)
        cached = model(tokens[:, 6:], cache=cache, embeds=model.embed(tokens[:, 6:], prev))
        assert torch.allclose(cached, plain[:, 6:], atol=1e-4)


def test_embeds_shape_is_checked():
    model = tiny_lm(1)
    with pytest.raises(ValueError, match="embeds must have shape"):
        model(torch.zeros(1, 3, dtype=torch.long), embeds=torch.zeros(1, 2, 32))


# ------------------------------------------------------------------------------------------------------
# Tree decoding equals greedy decoding
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [ENGLISH, COPY, [tk.DOC]], ids=["english", "copy", "one-token"])
def test_trained_guessers_decode_exactly_greedy(tinylm, medusa, ppd, prompt):
    reference = generate(tinylm, prompt, 24, temperature=0)
    for guesser in (medusa, ppd):
        out, stats = tree_generate(tinylm, prompt, 24, guesser)
        assert out == reference
        assert stats.target_calls == stats.rounds + (len(prompt) > 1)
        assert sum(a + 1 for a in stats.accepted) >= 24


def test_trained_guessers_accept_guesses_on_familiar_text(tinylm, medusa, ppd):
    for guesser in (medusa, ppd):
        _, stats = tree_generate(tinylm, ENGLISH, 16, guesser, tree=8)
        assert sum(stats.accepted) > 0, type(guesser).__name__
        assert stats.target_calls < 1 + 16


@pytest.mark.parametrize("tree", [1, 3, 10, [-1, 0, 0, 1, 3]], ids=["root", "3", "10", "parents"])
def test_untrained_guessers_decode_exactly_greedy(tree):
    model = tiny_lm(2)
    prompt = [3, 17, 5, 9, 28, 1]
    reference = generate(model, prompt, 30)
    for guesser in (MedusaHeads(model, 3), PromptTokens(model, 3, seed=4), PromptTokens(model, 4, 2, seed=5)):
        out, stats = tree_generate(model, prompt, 30, guesser, tree=tree)
        assert out == reference, (type(guesser).__name__, tree)
        assert len(stats.accepted) == stats.rounds


def test_tree_decoding_up_to_the_end_of_the_context():
    model = tiny_lm(3, context=40)
    prompt = list(range(1, 31))
    for guesser in (MedusaHeads(model), PromptTokens(model, 3, seed=1)):
        for n in (1, 9, 10):
            out, _ = tree_generate(model, prompt, n, guesser, tree=8)
            assert out == generate(model, prompt, n)


def test_ppd_with_few_prompt_carriers_stays_exact(tinylm, ppd):
    reference = generate(tinylm, COPY, 16)
    for k in (1, 2):
        out, _ = tree_generate(tinylm, COPY, 16, ppd, tree=8, prompt_nodes=k)
        assert out == reference


def test_tree_generate_rejects_bad_input():
    model = tiny_lm(4)
    heads = MedusaHeads(model)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tree_generate(model, [1, 2], 0, heads)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tree_generate(model, [1] * 60, 10, heads)
    with pytest.raises(ValueError, match="prompt"):
        tree_generate(model, [], 3, heads)
    with pytest.raises(TypeError, match="guesser"):
        tree_generate(model, [1, 2], 3, object())
    with pytest.raises(ValueError, match="tree"):
        tree_generate(model, [1, 2], 3, heads, tree=0)
    with pytest.raises(ValueError, match="parents"):
        tree_generate(model, [1, 2], 3, heads, tree=[-1, 2])
    with pytest.raises(ValueError, match="tree must be at most"):
        tree_generate(model, [1, 2], 3, heads, tree=[-1, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="model_id"):
        tree_generate(model, [1, 2], 3, MedusaHeads(tiny_lm(5, d_model=16)))
    with pytest.raises(ValueError, match="backend"):
        tree_generate(model, [1, 2], 3, heads, backend="bogus")
    with pytest.raises(ValueError, match="prompt_nodes"):
        tree_generate(model, [1, 2], 3, PromptTokens(model), prompt_nodes=0)


# ------------------------------------------------------------------------------------------------------
# The guessers and their training
# ------------------------------------------------------------------------------------------------------


def test_medusa_heads_start_as_the_lm_head():
    model = tiny_lm(6)
    heads = MedusaHeads(model, 2)
    hidden = torch.randn(2, 5, 32)
    logits = heads(hidden)
    assert logits.shape == (2, 2, 5, 32)
    assert torch.allclose(logits[1], model.lm_head(hidden), atol=1e-6)


def test_attach_prompts_matches_a_forward_of_the_prefix_plus_the_prompts():
    model = tiny_lm(7)
    prompts = PromptTokens(model, m=3, n_ensemble=2, seed=0)
    row = torch.randint(32, (1, 20), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    mask, positions = attach_prompts(causal, torch.arange(20), [4, 11], 3, 2)
    assert mask.shape == (32, 32) and positions[20:23].tolist() == [5, 6, 7]
    embeds = torch.cat([model.embed(row), prompts().repeat(2, 1, 1).reshape(1, 12, -1)], dim=1)
    tokens = torch.cat([row, torch.zeros(1, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(tokens, positions=positions[None], tree_mask=mask, embeds=embeds)
        assert torch.allclose(logits[:, :20], model(row), atol=1e-5)  # the text never sees the prompts
        for g, t in enumerate([4, 11]):
            for e in range(2):
                direct = model(torch.cat([row[:, :t + 1], row[:, :3]], dim=1),
                               embeds=torch.cat([model.embed(row[:, :t + 1]), prompts()[e:e + 1]], dim=1))
                start = 20 + (g * 2 + e) * 3
                assert torch.allclose(logits[0, start:start + 3], direct[0, t + 1:], atol=1e-4)


def _corpus_lm() -> TinyLM:
    return tiny_lm(8, vocab=tk.VOCAB_SIZE, d_model=32, context=32)


def test_training_runs_and_acceptance_is_a_distribution_per_depth():
    model = _corpus_lm()
    heads, history = train_medusa(model, n_heads=2, steps=2, batch_size=2, progress=False)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert all(not p.requires_grad for p in model.parameters())
    prompts, history = train_prompt_tokens(model, m=2, n_ensemble=2, steps=2, batch_size=2, anchors_per_row=4,
                                           progress=False)
    assert prompts.num_parameters() == 2 * 2 * 32
    for guesser, depth in ((heads, 2), (prompts, 2)):
        acc = acceptance_by_depth(model, guesser, n_positions=40, top_k=3, anchors_per_row=8, seed=1)
        assert acc.shape == (depth, 3)
        assert np.all(acc >= 0) and np.all(acc.sum(1) <= 1 + 1e-9)


def test_shipped_guessers_have_cards_and_beat_chance(medusa, ppd):
    assert ppd.num_parameters() < 0.01 * medusa.num_parameters()
    for guesser in (medusa, ppd):
        assert guesser.acceptance.shape == (guesser.depth, 4)
        assert guesser.acceptance[:, 0].min() > 0.1  # chance is ~1/387
        assert guesser.plan["size"] >= 1


# ------------------------------------------------------------------------------------------------------
# The distillation loss
# ------------------------------------------------------------------------------------------------------


def test_ppd_distillation_loss_by_hand():
    student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], [[2.0, 2.0, 0.0], [0.5, -1.0, 3.0]]])
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [[0.0, 1.0, 0.0], [3.0, 0.0, 1.0]]])
    decay = 0.5
    total = 0.0
    for n in range(2):
        for i in range(2):
            ps = np.exp(student[n, i].numpy()) / np.exp(student[n, i].numpy()).sum()
            pt = np.exp(teacher[n, i].numpy()) / np.exp(teacher[n, i].numpy()).sum()
            total += decay**i * float((pt * (np.log(pt) - np.log(ps))).sum())
    loss = ppd_distillation_loss(student, teacher, decay)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(total / 2, rel=1e-5)


def test_ppd_distillation_loss_is_zero_for_the_teacher_and_trains_only_the_student():
    teacher = torch.randn(4, 3, 10, requires_grad=True)
    assert ppd_distillation_loss(teacher.detach().clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 3, 10, requires_grad=True)
    ppd_distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    assert ppd_distillation_loss(student, teacher, decay=1.0) >= ppd_distillation_loss(student, teacher, 0.5)


def test_ppd_distillation_loss_rejects_bad_input():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="teacher_logits"):
        ppd_distillation_loss(x, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="student_logits"):
        ppd_distillation_loss(torch.randn(3, 5), torch.randn(3, 5))
    for decay in (0, -0.5, 1.5, True):
        with pytest.raises(ValueError, match="decay"):
            ppd_distillation_loss(x, x, decay)


# ------------------------------------------------------------------------------------------------------
# The sparse tree and the hardware-aware size
# ------------------------------------------------------------------------------------------------------

ACCEPTANCE = np.array([[0.6, 0.2, 0.1], [0.5, 0.2, 0.05], [0.4, 0.1, 0.05]])


def test_build_sparse_tree_is_topological_and_greedy():
    assert build_sparse_tree(ACCEPTANCE, 1) == [-1]
    previous = 1.0
    for n in (2, 5, 12, 30):
        parents = build_sparse_tree(ACCEPTANCE, n)
        assert len(parents) == n and parents[0] == -1
        assert all(0 <= p < j for j, p in enumerate(parents) if j)
        prob = path_probabilities(ACCEPTANCE, parents)
        assert np.all(np.diff(prob) <= 1e-12)  # added in order of path probability
        assert expected_accepted(ACCEPTANCE, parents) > previous
        previous = expected_accepted(ACCEPTANCE, parents)
    # the first nodes: rank 0 at depth 1 (0.6), then its rank-0 child (0.3), then rank 1 at depth 1 (0.2)
    assert build_sparse_tree(ACCEPTANCE, 4) == [-1, 0, 1, 0]
    assert tree_depths([-1, 0, 1, 0]) == [0, 1, 2, 1] and tree_ranks([-1, 0, 1, 0]) == [-1, 0, 0, 1]
    # never more nodes than the full depth x top_k tree
    assert len(build_sparse_tree([[0.5, 0.2]], 10)) == 3


def test_expected_accepted_of_a_chain():
    assert expected_accepted([[0.5], [0.4]], [-1, 0, 1]) == pytest.approx(1 + 0.5 + 0.2)
    assert expected_accepted(ACCEPTANCE, [-1]) == 1.0
    with pytest.raises(ValueError, match="parents"):
        expected_accepted([[0.5]], [-1, 0, 1])


def test_ppd_carriers_and_expected_tokens():
    parents = build_sparse_tree(ACCEPTANCE, 6)
    assert prompt_carriers(ACCEPTANCE, parents, 1) == [0]  # acceptance stops at the root most often
    all_nodes = list(range(len(parents)))
    e = expected_accepted(ACCEPTANCE, parents)
    assert ppd_expected_tokens(ACCEPTANCE, parents, all_nodes) == pytest.approx(e)
    assert 1 < ppd_expected_tokens(ACCEPTANCE, parents, [0]) < e


def test_choose_tree_size():
    assert choose_tree_size([1, 2, 4], [1.0, 1.8, 2.5], [1.0, 1.0, 1.5]) == 2
    assert choose_tree_size([8, 4, 2], [4.0, 2.0, 1.0], [2.0, 1.0, 0.5]) == 2  # all tie: the smallest size
    assert choose_tree_size((16,), (1.0,), (0.003,)) == 16
    assert choose_tree_size(np.array([1, 32]), np.array([1.0, 3.0]), np.array([1.0, 2.0])) == 32
    assert isinstance(choose_tree_size(np.array([1, 32]), [1.0, 3.0], [1.0, 2.0]), int)


@pytest.mark.parametrize("args, name", [
    (([], [], []), "sizes"),
    (([1, 2], [1.0], [1.0, 1.0]), "expected_tokens"),
    (([1, 2], [1.0, 1.0], [1.0]), "latency_s"),
    (([1, 2], [1.0, 1.0], [1.0, 0.0]), "latency_s"),
    (([1, 2], [1.0, 1.0], [1.0, -2.0]), "latency_s"),
    (([0, 2], [1.0, 1.0], [1.0, 1.0]), "sizes"),
    (([-1, 2], [1.0, 1.0], [1.0, 1.0]), "sizes"),
])
def test_choose_tree_size_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        choose_tree_size(*args)


def test_plan_tree_picks_the_best_rate():
    model = tiny_lm(9)
    heads = MedusaHeads(model)
    latency = {1: 1.0, 4: 1.1, 8: 1.5, 16: 3.0, 64: 12.0}
    plan = plan_tree(model, heads, ACCEPTANCE, sizes=(1, 4, 8, 16), latency_ms=latency)
    rates = {r["size"]: r["expected_tokens"] / r["latency_ms"] for r in plan["table"]}
    assert plan["size"] == max(rates, key=rates.get)
    ppd_plan = plan_tree(model, PromptTokens(model), ACCEPTANCE, sizes=(1, 4, 8), latency_ms=latency)
    assert 1 <= ppd_plan["prompt_nodes"] <= ppd_plan["size"]


def test_tree_functions_reject_bad_input():
    with pytest.raises(ValueError, match="n_nodes"):
        build_sparse_tree(ACCEPTANCE, 0)
    with pytest.raises(ValueError, match="acceptance"):
        build_sparse_tree(np.ones(3), 2)
    with pytest.raises(ValueError, match="acceptance"):
        build_sparse_tree([[1.5]], 2)
    with pytest.raises(ValueError, match="parents"):
        tree_depths([0, 0])
