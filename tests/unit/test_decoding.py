"""labkit.decoding: KV-cache generation, speculative sampling, prompt lookup and the cost model.

Tiny random-weight TinyLMs only (the trained ones are for the chapter). The weights are re-drawn with
std 1/sqrt(fan_in) so the logits have spread ~1: distributions are peaked enough that greedy ties do not
happen and a draft differs visibly from its target.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from labkit import decoding
from labkit.decoding import (
    DecodeStats,
    expected_tokens_per_call,
    find_candidates,
    generate,
    greedy_verify,
    measure_latency,
    next_token_probs,
    predicted_speedup,
    prompt_lookup_generate,
    sample_next,
    speculative_generate,
)
from labkit.kernels import available_backends
from labkit.models.tinylm import TinyLM, TinyLMConfig

torch.set_num_threads(1)  # two cores shared with other jobs (conftest sets OMP_WAIT_POLICY=PASSIVE)


def tiny_lm(seed: int, vocab: int = 32, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
            n_kv_heads: int = 2, context: int = 96, token_shift: bool = True) -> TinyLM:
    torch.manual_seed(seed)
    cfg = TinyLMConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, d_ff=2 * d_model, context=context, token_shift=token_shift)
    model = TinyLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model


def perturbed(model: TinyLM, seed: int, noise: float) -> TinyLM:
    """A draft that agrees with ``model`` often but not always: its weights plus relative noise."""
    draft = tiny_lm(seed, **_shape(model))
    with torch.no_grad():
        for p_draft, p in zip(draft.parameters(), model.parameters()):
            p_draft.copy_(p + noise * p.std() * torch.randn_like(p))
    return draft


def _shape(model: TinyLM) -> dict:
    c = model.config
    return dict(vocab=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
                n_kv_heads=c.n_kv_heads, context=c.context, token_shift=c.token_shift)


@pytest.fixture(scope="module")
def target() -> TinyLM:
    return tiny_lm(0)


# --------------------------------------------------------------------------------------------------------
# sampling one token
# --------------------------------------------------------------------------------------------------------


def test_next_token_probs_top_k_top_p_support():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    p = torch.softmax(logits, 0)
    assert torch.allclose(next_token_probs(logits), p)
    assert torch.equal(next_token_probs(logits, 0.0), torch.eye(6)[0])
    top2 = next_token_probs(logits, top_k=2)
    assert torch.allclose(top2[:2], p[:2] / p[:2].sum()) and torch.all(top2[2:] == 0)
    # nucleus: the smallest most-likely set with mass >= top_p
    for top_p in (0.3, float(p[0]) + 1e-3, 0.8, 0.99, 1.0):
        kept = int((next_token_probs(logits, top_p=top_p) > 0).sum())
        assert kept == int((p.cumsum(0) - p < top_p).sum())
    both = next_token_probs(logits, temperature=2.0, top_k=3, top_p=0.5)
    assert math.isclose(float(both.sum()), 1.0, rel_tol=1e-6) and torch.all(both[3:] == 0)
    assert next_token_probs(logits[None].repeat(4, 1), top_k=2).shape == (4, 6)


def test_sample_next_draws_only_inside_the_support():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g)
    order = logits.argsort(descending=True).tolist()
    p = torch.softmax(logits, 0)
    top_k_draws = {sample_next(logits, 1.0, top_k=5, generator=g) for _ in range(400)}
    assert top_k_draws <= set(order[:5]) and len(top_k_draws) > 1
    nucleus = set(order[: int((p[order].cumsum(0) - p[order] < 0.5).sum())])
    top_p_draws = {sample_next(logits, 1.0, top_p=0.5, generator=g) for _ in range(400)}
    assert top_p_draws <= nucleus
    assert sample_next(logits, 0.0) == order[0]
    assert {sample_next(logits, 1.0, top_k=1, generator=g) for _ in range(20)} == {order[0]}


# --------------------------------------------------------------------------------------------------------
# generate: the KV cache changes the cost, not the tokens
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_shift", [True, False])
def test_cached_greedy_equals_recompute(token_shift):
    model = tiny_lm(1, token_shift=token_shift)
    prompt = [3, 1, 4, 1, 5]
    cached = generate(model, prompt, 24)
    assert cached == generate(model, prompt, 24, cache=False)
    assert len(cached) == 24 and cached == model.generate(prompt, 24)
    assert generate(model, [7], 5) == generate(model, torch.tensor([7]), 5, cache=False)


def test_sampled_generate_is_seeded_and_cache_independent(target):
    a = generate(target, [1, 2, 3], 16, temperature=0.9, top_k=10, top_p=0.9, seed=5)
    assert a == generate(target, [1, 2, 3], 16, temperature=0.9, top_k=10, top_p=0.9, seed=5, cache=False)
    assert a != generate(target, [1, 2, 3], 16, temperature=0.9, top_k=10, top_p=0.9, seed=6)
    assert generate(target, [1, 2, 3], 0) == []


# --------------------------------------------------------------------------------------------------------
# speculative sampling
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_speculative_greedy_equals_plain_greedy(target, gamma):
    plain = generate(target, [2, 7, 1, 8], 30)
    drafts = {
        "perturbed copy": perturbed(target, 10 + gamma, noise=0.1),
        "independent smaller": tiny_lm(20 + gamma, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                       token_shift=gamma % 2 == 0),
    }
    accepted = rejected = 0
    for draft in drafts.values():
        for seed in (0, 1):
            tokens, stats = speculative_generate(target, draft, [2, 7, 1, 8], 30, gamma=gamma, seed=seed)
            assert tokens == plain
            assert stats.target_calls == 1 + stats.rounds and stats.draft_calls == 1 + sum(stats.proposed)
            accepted += sum(stats.accepted)
            rejected += sum(a < p for a, p in zip(stats.accepted, stats.proposed))
    assert accepted > 0 and rejected > 0  # both paths of the verifier were exercised


def test_speculative_with_itself_as_draft_accepts_everything(target):
    tokens, stats = speculative_generate(target, target, [5], 21, gamma=4)
    assert tokens == generate(target, [5], 21)
    assert stats.alpha == 1.0 and stats.accepted[:4] == [4, 4, 4, 4]
    assert stats.tokens_per_call == pytest.approx(sum(a + 1 for a in stats.accepted) / stats.rounds)
    sampled, stats = speculative_generate(target, target, [5], 12, gamma=3, temperature=1.0, seed=0)
    assert len(sampled) == 12 and stats.alpha == 1.0  # p == q: every draft token passes


def test_speculative_sampling_is_seeded_and_backend_independent(target):
    draft = perturbed(target, 7, noise=0.1)
    runs = [speculative_generate(target, draft, [1, 2], 20, gamma=3, temperature=1.0, seed=4, backend=backend)
            for backend in ["torch", *(["numba"] if "numba" in available_backends("cpu") else [])]]
    assert all(run == runs[0] for run in runs) and 0 < runs[0][1].alpha < 1
    assert runs[0][0] == speculative_generate(target, draft, [1, 2], 20, gamma=3, temperature=1.0, seed=4)[0]


def _exact_first_two(model: TinyLM, prompt: list[int], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The target's own sampling distribution of the 1st and (marginally) the 2nd generated token."""
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt]))[0, -1].double() / temperature, 0)
        after = torch.tensor([prompt + [x] for x in range(len(p1))])
        p2_given = torch.softmax(model(after)[:, -1].double() / temperature, -1)  # (V, V): row x1
    return p1.numpy(), (p1 @ p2_given).numpy()


def _speculative_p_values(target, draft, trials: int, temperature: float) -> tuple[float, float]:
    prompt = [3]
    counts = np.zeros((2, target.config.vocab_size))
    for seed in range(trials):
        tokens, _ = speculative_generate(target, draft, prompt, 2, gamma=2, temperature=temperature, seed=seed)
        counts[0, tokens[0]] += 1
        counts[1, tokens[1]] += 1
    p1, p2 = _exact_first_two(target, prompt, temperature)
    return chisquare(counts[0], trials * p1).pvalue, chisquare(counts[1], trials * p2).pvalue


@pytest.fixture(scope="module")
def six_token_pair() -> tuple[TinyLM, TinyLM]:
    shape = dict(vocab=6, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, context=16)
    return tiny_lm(30, **shape), tiny_lm(31, **shape)


def test_speculative_sampling_is_lossless(six_token_pair):
    """Chi-square: the 1st and 2nd tokens of speculative sampling follow the target's own distribution."""
    target, draft = six_token_pair
    p_first, p_second = _speculative_p_values(target, draft, trials=2000, temperature=0.8)
    assert p_first > 1e-3 and p_second > 1e-3, (p_first, p_second)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> int:
    return min(int(torch.searchsorted(probs.cumsum(0), u.double().reshape(1))), len(probs) - 1)


def accept_always(target_logits, draft_probs, draft_tokens, uniforms, temperature=1.0, greedy=False,
                  backend="auto"):
    """Wrong: keeps every draft token, so the output follows the draft."""
    p = torch.softmax(target_logits.double() / temperature, -1)
    return len(draft_tokens), _inverse_cdf(p[-1], uniforms[-1])


def resample_from_p(target_logits, draft_probs, draft_tokens, uniforms, temperature=1.0, greedy=False,
                    backend="auto"):
    """Wrong in the classic way: after a rejection it draws from p, not from norm(max(0, p - q))."""
    p = torch.softmax(target_logits.double() / temperature, -1)
    for i, x in enumerate(draft_tokens.tolist()):
        if uniforms[i] > min(1.0, float(p[i, x] / draft_probs[i, x])):
            return i, _inverse_cdf(p[i], uniforms[-1])
    return len(draft_tokens), _inverse_cdf(p[-1], uniforms[-1])


@pytest.mark.parametrize("wrong_rule, trials", [(accept_always, 400), (resample_from_p, 800)])
def test_the_lossless_test_rejects_a_biased_acceptance_rule(six_token_pair, monkeypatch, wrong_rule, trials):
    """Power: the same chi-square test fails a verifier that is biased (fewer trials suffice)."""
    monkeypatch.setattr(decoding, "verify_sample", wrong_rule)
    target, draft = six_token_pair
    p_first, p_second = _speculative_p_values(target, draft, trials=trials, temperature=0.8)
    assert min(p_first, p_second) < 1e-6, (p_first, p_second)


# --------------------------------------------------------------------------------------------------------
# prompt lookup
# --------------------------------------------------------------------------------------------------------


def test_find_candidates():
    assert find_candidates([1, 2, 3, 9, 9, 1, 2, 3], ngram=3, num_draft=2) == [9, 9]
    assert find_candidates([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3], ngram=3, num_draft=4) == [5, 1, 2, 3]  # latest
    # the latest match's continuation runs into the end: the run continues periodically
    assert find_candidates([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3], ngram=3, num_draft=6) == [5, 1, 2, 3, 5, 1]
    assert find_candidates([0, 9, 9, 9, 9], ngram=2, num_draft=5) == [9, 9, 9, 9, 9]
    assert find_candidates([7, 8, 5, 6, 8], ngram=3, num_draft=3) == [5, 6, 8]  # falls back to the last 1-gram
    assert find_candidates([1, 2, 3], ngram=2) == [] and find_candidates([4], ngram=2) == []
    assert greedy_verify(torch.eye(5)[[1, 2, 0, 4]], [1, 2, 3]) == (2, 0)
    assert greedy_verify(torch.eye(5)[[1]], []) == (0, 1)


@pytest.mark.parametrize("token_shift", [True, False])
def test_prompt_lookup_equals_plain_greedy(token_shift):
    model = tiny_lm(2, token_shift=token_shift)
    prompt = [4, 9, 2, 6, 4, 9, 2, 6, 4, 9, 11, 3]
    tokens, stats = prompt_lookup_generate(model, prompt, 40, ngram=2, num_draft=5)
    assert tokens == generate(model, prompt, 40)
    assert sum(stats.proposed) > 0 and stats.target_calls == 1 + stats.rounds
    assert sum(a + 1 for a in stats.accepted) >= 40  # the last round may overshoot, then is cut


# --------------------------------------------------------------------------------------------------------
# the cost model
# --------------------------------------------------------------------------------------------------------


def test_expected_tokens_per_call_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for alpha, gamma in [(0.0, 3), (0.3, 1), (0.6, 4), (0.8, 6), (0.95, 2), (1.0, 5)]:
        passed = rng.random((200_000, gamma)) < alpha
        tokens = 1 + np.cumprod(passed, axis=1).sum(axis=1)  # accepted until the first rejection, + 1
        assert expected_tokens_per_call(alpha, gamma) == pytest.approx(tokens.mean(), abs=0.02)
    assert [round(expected_tokens_per_call(0.8, g), 2) for g in range(1, 7)] == [1.8, 2.44, 2.95, 3.36, 3.69, 3.95]
    assert expected_tokens_per_call(1 - 1e-12, 4) == pytest.approx(5.0)
    curve = expected_tokens_per_call(np.array([0.5, 1.0]), np.array([[1], [3]]))
    assert curve.shape == (2, 2) and curve[1, 1] == 4.0


def test_measure_latency_and_predicted_speedup(target):
    curve = measure_latency(target, [1, 4, 8], prefix_len=16, repeats=2)
    assert list(curve) == [1, 4, 8] and all(ms > 0 for ms in curve.values())
    flat = {1: 2.0, 8: 2.0}
    assert predicted_speedup(0.8, 4, flat, draft_latency=0.0) == pytest.approx(expected_tokens_per_call(0.8, 4))
    linear = {1: 1.0, 9: 9.0}  # a compute-bound verify: its cost grows with the tokens it checks
    assert predicted_speedup(0.8, 3, linear, 0.25) == pytest.approx(2.952 / (0.75 + 4.0), rel=1e-3)
    assert predicted_speedup(0.5, 2, lambda n: 1.0, 0.5) == pytest.approx(1.75 / 2.0)


def test_decode_stats_alpha():
    stats = DecodeStats(accepted=[4, 1, 0], proposed=[4, 4, 4])
    assert stats.alpha == pytest.approx(5 / (4 + 2 + 1)) and stats.tokens_per_call == pytest.approx(8 / 3)
    assert math.isnan(DecodeStats().alpha)


# --------------------------------------------------------------------------------------------------------
# validation: every error names its argument
# --------------------------------------------------------------------------------------------------------


def test_validation_errors(target):
    other_vocab = tiny_lm(3, vocab=40, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1)
    cases = [
        ("temperature", lambda: generate(target, [1], 2, temperature=-0.1)),
        ("top_p", lambda: generate(target, [1], 2, temperature=1.0, top_p=0.0)),
        ("top_p", lambda: generate(target, [1], 2, temperature=1.0, top_p=1.5)),
        ("top_k", lambda: generate(target, [1], 2, temperature=1.0, top_k=0)),
        ("prompt", lambda: generate(target, [], 2)),
        ("prompt", lambda: generate(target, [1] * 97, 0)),  # context is 96
        ("prompt", lambda: generate(target, [1, 32], 2)),  # id outside the vocabulary
        ("max_new_tokens", lambda: generate(target, [1] * 90, 7)),
        ("max_new_tokens", lambda: generate(target, [1], -1)),
        ("temperature", lambda: next_token_probs(torch.zeros(4), temperature=-1)),
        ("logits", lambda: sample_next(torch.zeros(2, 4))),
        ("draft", lambda: speculative_generate(target, other_vocab, [1], 4)),
        ("gamma", lambda: speculative_generate(target, target, [1], 4, gamma=0)),
        ("temperature", lambda: speculative_generate(target, target, [1], 4, temperature=-1.0)),
        ("prompt", lambda: speculative_generate(target, target, [], 4)),
        ("ngram", lambda: prompt_lookup_generate(target, [1, 2], 4, ngram=0)),
        ("num_draft", lambda: prompt_lookup_generate(target, [1, 2], 4, num_draft=0)),
        ("prompt", lambda: prompt_lookup_generate(target, [1] * 97, 0)),
        ("alpha", lambda: expected_tokens_per_call(1.2, 3)),
        ("gamma", lambda: expected_tokens_per_call(0.5, -1)),
        ("gamma", lambda: expected_tokens_per_call(0.5, 1.5)),
        ("prefix_len", lambda: measure_latency(target, [8], prefix_len=90)),
        ("n_tokens_list", lambda: measure_latency(target, [])),
        ("latency_curve", lambda: predicted_speedup(0.5, 4, {1: 1.0, 2: 1.0}, 0.1)),
        ("draft_latency", lambda: predicted_speedup(0.5, 1, {1: 1.0, 2: 1.0}, -0.1)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_predicted_speedup_one_model():
    from labkit.decoding import predicted_speedup_one_model

    curve = {1: 2.0, 8: 4.0, 16: 6.0}
    assert predicted_speedup_one_model(3.0, 8, curve) == pytest.approx(3.0 * 2.0 / 4.0)
    assert predicted_speedup_one_model(2.0, 12, curve) == pytest.approx(2.0 * 2.0 / 5.0)  # interpolated
    assert predicted_speedup_one_model(1.0, 1, lambda n: 1.0 + n) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="inputs_per_call"):
        predicted_speedup_one_model(2.0, 32, curve)
    with pytest.raises(ValueError, match="tokens_per_call"):
        predicted_speedup_one_model(0.5, 4, curve)
    # per-round overheads: a method whose rounds cost 2 ms extra loses against a plain step without any
    assert predicted_speedup_one_model(3.0, 8, curve, overhead_ms=2.0) == pytest.approx(3.0 * 2.0 / 6.0)
    assert predicted_speedup_one_model(3.0, 8, curve, 2.0, 2.0) == pytest.approx(3.0 * 4.0 / 6.0)
