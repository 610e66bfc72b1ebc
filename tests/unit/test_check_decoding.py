"""The Lab 1 checks (labkit.check.decoding) pass correct answers and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_answers import answer_factory, body_of, expect_hint
from numba import njit

import labkit.check.decoding as checks

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab01_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab01.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)


def attend_step(q, k, v, K_cache, V_cache):
    K_cache, V_cache = torch.cat([K_cache, k[None]]), torch.cat([V_cache, v[None]])
    weights = torch.softmax(K_cache @ q / q.shape[-1] ** 0.5, dim=0)
    return weights @ V_cache, K_cache, V_cache


def greedy_decode(model, prompt, n_new):
    cache = model.new_cache()
    logits = model(torch.tensor([prompt]), cache=cache)[0, -1]
    new = []
    for _ in range(n_new):
        new.append(int(logits.argmax()))
        if len(new) < n_new:
            logits = model(torch.tensor([[new[-1]]]), cache=cache)[0, -1]
    return new


def greedy_decode_token_by_token(model, prompt, n_new):
    """Also correct (slower): feed the prompt one token at a time, then one token per step."""
    cache = model.new_cache()
    for token in prompt:
        logits = model(torch.tensor([[token]]), cache=cache)[0, -1]
    new = []
    for _ in range(n_new):
        new.append(int(logits.argmax()))
        logits = model(torch.tensor([[new[-1]]]), cache=cache)[0, -1]
    return torch.tensor(new)


def accept_or_resample(p, q, x, u, generator):
    if u < p[x] / q[x]:
        return True, x
    residual = (p - q).clamp(min=0)
    return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def accept_or_resample_inverse_cdf(p, q, x, u, generator):
    """Also correct: min(1, p/q) written out, the residual drawn by inverse CDF with the generator."""
    if u < min(1.0, float(p[x] / q[x])):
        return True, x
    cdf = torch.cumsum((p - q).clamp(min=0), 0)
    threshold = torch.rand((), generator=generator, dtype=cdf.dtype) * cdf[-1]
    return False, min(int(torch.searchsorted(cdf, threshold, right=True)), len(p) - 1)


def expected_tokens(alpha, gamma):
    if alpha == 1:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def ancestor_mask(parents):
    N = len(parents)
    mask = torch.zeros(N, N, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def ppd_loss(student_logits, teacher_logits, decay=0.8):
    log_p = torch.log_softmax(teacher_logits, dim=-1)
    log_q = torch.log_softmax(student_logits, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    weights = decay ** torch.arange(kl.shape[1], dtype=kl.dtype)
    return (kl * weights).sum(-1).mean()


def choose_tree_size(sizes, expected_tokens, latency_s):
    best = max(zip(sizes, expected_tokens, latency_s), key=lambda c: (c[1] / c[2], -c[0]))
    return int(best[0])


def window_hit_rate(active, window):
    hits = needed = 0
    for t in range(active.shape[0]):
        resident = active[max(0, t - window):t].any(dim=0)
        hits += int((active[t] & resident).sum())
        needed += int(active[t].sum())
    return hits / needed if needed else 1.0


@njit
def decode_attend(q, K, V, scale):
    T, D = K.shape
    m, l = -np.inf, 0.0
    acc = np.zeros(D)
    for t in range(T):
        s = 0.0
        for d in range(D):
            s += q[d] * K[t, d]
        s *= scale
        if s > m:
            c = np.exp(m - s)
            l *= c
            for d in range(D):
                acc[d] *= c
            m = s
        p = np.exp(s - m)
        l += p
        for d in range(D):
            acc[d] += p * V[t, d]
    return acc / l


@njit
def tree_attend_rows(q, K_prefix, V_prefix, K_tree, V_tree, bits, scale):
    N, D = q.shape
    P = K_prefix.shape[0]
    out = np.empty((N, D))
    for i in range(N):
        m, l = -np.inf, 0.0
        acc = np.zeros(D)
        for j in range(P + i + 1):
            n = j - P
            if n >= 0 and ((bits[i, n >> 6] >> (n & 63)) & 1) == 0:
                continue
            k = K_prefix[j] if n < 0 else K_tree[n]
            v = V_prefix[j] if n < 0 else V_tree[n]
            s = 0.0
            for d in range(D):
                s += q[i, d] * k[d]
            s *= scale
            if s > m:
                c = np.exp(m - s)
                l *= c
                for d in range(D):
                    acc[d] *= c
                m = s
            p = np.exp(s - m)
            l += p
            for d in range(D):
                acc[d] += p * v[d]
        for d in range(D):
            out[i, d] = acc[d] / l
    return out


CORRECT = {
    "1.1": attend_step,
    "1.2": greedy_decode,
    "1.3": accept_or_resample,
    "1.4": expected_tokens,
    "1.5": ancestor_mask,
    "1.6": ppd_loss,
    "1.7": choose_tree_size,
    "1.8": window_hit_rate,
    "1.9": decode_attend,
    "1.10": tree_attend_rows,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}
NEEDS = {"1.6": "labkit.decoding.parallel", "1.7": "labkit.decoding.parallel", "1.8": "labkit.decoding.flash"}


def needs_reference(label: str) -> None:
    """Skip the checks whose reference module is not written yet."""
    module = NEEDS.get(label)
    if module is not None:
        pytest.importorskip(module)


# ------------------------------------------------------------- the lab's wrong answers, as functions

SIGNATURES = {
    "1.1": "attend_step(q, k, v, K_cache, V_cache)",
    "1.2": "greedy_decode(model, prompt, n_new)",
    "1.3": "accept_or_resample(p, q, x, u, generator)",
    "1.4": "expected_tokens(alpha, gamma)",
    "1.5": "ancestor_mask(parents)",
    "1.6": "ppd_loss(student_logits, teacher_logits, decay=0.8)",
    "1.7": "choose_tree_size(sizes, expected_tokens, latency_s)",
    "1.8": "window_hit_rate(active, window)",
    "1.9": "decode_attend(q, K, V, scale)",
    "1.10": "tree_attend_rows(q, K_prefix, V_prefix, K_tree, V_tree, bits, scale)",
}
COMPILED = {"1.9", "1.10"}


from_body, stub = answer_factory(SIGNATURES, COMPILED, WRONG)


# -------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("label", list(CORRECT))
def test_correct_answer_passes(label, capsys):
    needs_reference(label)
    assert CHECKS[label](CORRECT[label]) is None
    out = capsys.readouterr().out
    assert f"✓ Exercise {label} passed" in out and out.count("\n") == 1


@pytest.mark.parametrize("label, answer", [("1.2", greedy_decode_token_by_token),
                                           ("1.3", accept_or_resample_inverse_cdf)])
def test_other_correct_answers_pass(label, answer):
    assert CHECKS[label](answer) is None


@pytest.mark.parametrize("label", list(WRONG))
def test_wrong_answer_of_the_lab_fails(label):
    needs_reference(label)
    with pytest.raises(AssertionError, match=f"Exercise {label}"):
        CHECKS[label](from_body(label))


@pytest.mark.parametrize("label", list(CORRECT))
def test_stub_fails(label):
    needs_reference(label)
    with pytest.raises(NotImplementedError):
        CHECKS[label](stub(label))


@pytest.mark.parametrize("label", list(CORRECT))
def test_placeholder_fails(label):
    with pytest.raises(AssertionError, match=r"`\.\.\.`"):
        CHECKS[label](...)


def test_chi_square_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    counts, probs = np.array([30.0, 20, 25, 25]), np.array([0.4, 0.2, 0.2, 0.2])
    expected = scipy_stats.chisquare(counts, counts.sum() * probs).pvalue
    assert math.isclose(checks._chi_square_p_value(counts, probs), expected, rel_tol=1e-9)


# -------------------------------------------------------------- more wrong answers, with their hints


def test_1_1_hints():
    expect_hint(checks.ex_1_1, from_body("1.1"), "append k and v \\*before\\* attending")

    def unscaled(q, k, v, K_cache, V_cache):
        K_cache, V_cache = torch.cat([K_cache, k[None]]), torch.cat([V_cache, v[None]])
        return torch.softmax(K_cache @ q, dim=0) @ V_cache, K_cache, V_cache

    expect_hint(checks.ex_1_1, unscaled, "scale")
    expect_hint(checks.ex_1_1, lambda q, k, v, K, V: attend_step(q, k, v, K, V)[0], "tuple")

    def overwrites(q, k, v, K_cache, V_cache):
        out, _, _ = attend_step(q, k, v, K_cache, V_cache)
        return out, k[None], v[None]

    expect_hint(checks.ex_1_1, overwrites, "append one row per step")


def test_1_2_hints():
    expect_hint(checks.ex_1_2, from_body("1.2"), "different cache")

    def recompute(model, prompt, n_new):
        sequence = list(prompt)
        for _ in range(n_new):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
        return sequence[len(prompt):]

    expect_hint(checks.ex_1_2, recompute, "without a cache")

    def refeeds(model, prompt, n_new):
        cache, sequence = model.new_cache(), list(prompt)
        for _ in range(n_new):
            sequence.append(int(model(torch.tensor([sequence]), cache=cache)[0, -1].argmax()))
        return sequence[len(prompt):]

    expect_hint(checks.ex_1_2, refeeds, "fed some tokens twice|context")

    def first_position(model, prompt, n_new):
        cache = model.new_cache()
        logits = model(torch.tensor([prompt]), cache=cache)[0, 0]
        new = []
        for _ in range(n_new):
            new.append(int(logits.argmax()))
            logits = model(torch.tensor([[new[-1]]]), cache=cache)[0, -1]
        return new

    expect_hint(checks.ex_1_2, first_position, "LAST position")
    expect_hint(checks.ex_1_2, lambda model, prompt, n: list(prompt) + greedy_decode(model, prompt, n), "new")


def test_1_3_hints():
    expect_hint(checks.ex_1_3, from_body("1.3"), "resampled from p")
    expect_hint(checks.ex_1_3, lambda p, q, x, u, g: (True, x), "accept x only when")
    inverted = """
if u < q[x] / p[x]:
    return True, x
residual = (p - q).clamp(min=0)
return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
"""
    expect_hint(checks.ex_1_3, from_body("1.3", inverted), "upside down")
    swapped = """
if u < p[x] / q[x]:
    return True, x
residual = (q - p).clamp(min=0)
return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
"""
    expect_hint(checks.ex_1_3, from_body("1.3", swapped), "residual")
    # Passes every single decision but emits the residual's most likely token: only statistics catch it.
    argmax = """
if u < p[x] / q[x]:
    return True, x
return False, int((p - q).clamp(min=0).argmax())
"""
    expect_hint(checks.ex_1_3, from_body("1.3", argmax), "chi-square")


def test_1_4_hints():
    expect_hint(checks.ex_1_4, from_body("1.4"), "bonus")
    expect_hint(checks.ex_1_4, lambda a, g: (1 - a ** (g + 1)) / (1 - a) if a < 1 else math.nan, "0/0")
    expect_hint(checks.ex_1_4, lambda a, g: 1 + g * a, "first rejection")
    expect_hint(checks.ex_1_4, lambda a, g: expected_tokens(a, g) - 1, "only the accepted drafts")


def test_1_5_hints():
    expect_hint(checks.ex_1_5, from_body("1.5"), "parent only")
    expect_hint(checks.ex_1_5, lambda parents: ancestor_mask(parents).T.contiguous(), "transpose")
    expect_hint(checks.ex_1_5, lambda parents: ancestor_mask(parents) & ~torch.eye(len(parents), dtype=torch.bool),
                "diagonal")
    expect_hint(checks.ex_1_5, lambda parents: torch.ones(len(parents), len(parents), dtype=torch.bool).tril(),
                "causal")
    expect_hint(checks.ex_1_5, lambda parents: ancestor_mask(parents).int(), "bool")


def test_1_6_hints():
    pytest.importorskip("labkit.decoding.parallel")
    expect_hint(checks.ex_1_6, from_body("1.6"), "wrong way round")

    def shifted(student_logits, teacher_logits, decay=0.8):
        return ppd_loss(student_logits, teacher_logits, decay) * decay

    expect_hint(checks.ex_1_6, shifted, "decay\\^\\(i\\+1\\)|not decay")
    expect_hint(checks.ex_1_6, lambda s, t, decay=0.8: ppd_loss(s, t, decay) * s.shape[0], "mean over dim 0")
    expect_hint(checks.ex_1_6, lambda s, t, decay=0.8: ppd_loss(s, t, decay).detach(), "detached")
    expect_hint(checks.ex_1_6, lambda s, t, decay=0.8: ppd_loss(s, t, decay).item(), "torch scalar")


def test_1_7_hints():
    pytest.importorskip("labkit.decoding.parallel")
    expect_hint(checks.ex_1_7, from_body("1.7"), "tie")
    expect_hint(checks.ex_1_7, lambda s, e, t: int(np.argmax(np.array(e) / np.array(t))), "position")
    expect_hint(checks.ex_1_7, lambda s, e, t: s[int(np.argmax(e))], "tokens per call alone")
    expect_hint(checks.ex_1_7, lambda s, e, t: s[int(np.argmax(np.array(e) - np.array(t)))], "tie|difference|alone")


def test_1_8_hints():
    pytest.importorskip("labkit.decoding.flash")
    expect_hint(checks.ex_1_8, from_body("1.8"), "previous")
    per_step = """
rates = []
for t in range(active.shape[0]):
    resident = active[max(0, t - window):t].any(dim=0)
    if active[t].any():
        rates.append(float((active[t] & resident).sum() / active[t].sum()))
return sum(rates) / len(rates) if rates else 1.0
"""
    expect_hint(checks.ex_1_8, from_body("1.8", per_step), "pool the counts")
    short = """
hits = needed = 0
for t in range(active.shape[0]):
    resident = active[max(0, t - window + 1):t].any(dim=0)
    hits += int((active[t] & resident).sum())
    needed += int(active[t].sum())
return hits / needed if needed else 1.0
"""
    expect_hint(checks.ex_1_8, from_body("1.8", short), "one token short")
    nothing = """
hits = needed = 0
for t in range(active.shape[0]):
    resident = active[max(0, t - window):t].any(dim=0)
    hits += int((active[t] & resident).sum())
    needed += int(active[t].sum())
return hits / max(needed, 1)
"""
    expect_hint(checks.ex_1_8, from_body("1.8", nothing), "rate is 1.0")


def test_1_9_hints():
    expect_hint(checks.ex_1_9, from_body("1.9"), "nan/inf")
    expect_hint(checks.ex_1_9, decode_attend.py_func, "@njit")
    no_rescale = WRONG["1.9"].replace("m, l = 0.0, 0.0", "m, l = -np.inf, 0.0").replace(
        "        l *= c\n        for d in range(D):\n            acc[d] *= c\n", "        l *= c\n")
    assert no_rescale != WRONG["1.9"]
    expect_hint(checks.ex_1_9, from_body("1.9", no_rescale), "multiply both l and the accumulator")


def test_1_10_hints():
    expect_hint(checks.ex_1_10, from_body("1.10"), "causal mask")
    expect_hint(checks.ex_1_10, tree_attend_rows.py_func, "@njit")
    correct = body_of(tree_attend_rows)
    word_bug = correct.replace("bits[i, n >> 6]", "bits[i, 0]")
    assert word_bug != correct
    expect_hint(checks.ex_1_10, from_body("1.10", word_bug), "64")
