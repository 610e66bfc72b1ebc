"""The Lab 0 checks (labkit.check.prologue) pass a correct answer and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit.check.prologue as checks
from labkit import data

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab00_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab00.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG, WRONG_VALUES = _wrong.WRONG, _wrong.WRONG_VALUES


def tensor(a):
    return torch.as_tensor(a, dtype=torch.float64)


# ------------------------------------------------------------------------- correct answers (as a student)


def write(keys, values):
    return values.T @ keys


def read(W, queries):
    return queries @ W.T


def crosstalk_variance(n, d):
    return (n - 1) / d


def hebbian_weights(patterns):
    W = patterns.T @ patterns / patterns.shape[1]
    W.fill_diagonal_(0.0)
    return W


def hopfield_step(W, state):
    h = state @ W.T
    return torch.where(h >= 0, 1.0, -1.0).to(h.dtype)


def softmax_read(queries, keys, values, beta):
    scores = beta * (queries @ keys.T)
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return (weights / weights.sum(dim=-1, keepdim=True)) @ values


def stable_fraction(d, n, seed):
    patterns = tensor(data.binary_patterns(n, d, seed))
    fixed = (hopfield_step(hebbian_weights(patterns), patterns) == patterns).all(dim=1)
    return fixed.double().mean().item()


ALPHA_C = 0.18


def online_attend(q, chunks, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    m = torch.tensor(float("-inf"), dtype=q.dtype)
    l = torch.zeros((), dtype=q.dtype)
    acc = torch.zeros_like(q)
    for K_chunk, V_chunk in chunks:
        s = scale * (K_chunk @ q)
        m_new = torch.maximum(m, s.max())
        correction = torch.exp(m - m_new)
        p = torch.exp(s - m_new)
        l = l * correction + p.sum()
        acc = acc * correction + p @ V_chunk
        m = m_new
    return acc / l


def online_attend_first_chunk_apart(q, chunks, scale=None):
    """Also correct: initialise from the first chunk (it stays alive through the loop: allowed)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    K0, V0 = next(chunks)
    s = scale * (K0 @ q)
    m = s.max()
    p = torch.exp(s - m)
    l, acc = p.sum(), p @ V0
    for K_chunk, V_chunk in chunks:
        s = scale * (K_chunk @ q)
        m_new = torch.maximum(m, s.max())
        p = torch.exp(s - m_new)
        l = l * torch.exp(m - m_new) + p.sum()
        acc = acc * torch.exp(m - m_new) + p @ V_chunk
        m = m_new
    return acc / l


def gated_write(keys, values, decay):
    W = torch.zeros(values.shape[1], keys.shape[1], dtype=keys.dtype)
    for k, v in zip(keys, values):
        W = decay * W + torch.outer(v, k)
    return W


CORRECT = {
    "0.1": (write, read),
    "0.2": (crosstalk_variance,),
    "0.3": (hebbian_weights, hopfield_step),
    "0.4": (softmax_read,),
    "0.5": (stable_fraction, ALPHA_C),
    "0.6": (online_attend,),
    "0.7": (gated_write,),
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}


# ------------------------------------------------------------- the lab's wrong answers, as functions

# The signature of the function whose body is the exercise's first solution region (see wrong_lab00.py).
SIGNATURES = {
    "0.1": "write(keys, values)",
    "0.2": "crosstalk_variance(n, d)",
    "0.3": "hebbian_weights(patterns)",
    "0.4": "softmax_read(queries, keys, values, beta)",
    "0.5": "stable_fraction(d, n, seed)",
    "0.6": "online_attend(q, chunks, scale=None)",
    "0.7": "gated_write(keys, values, decay)",
}
PREAMBLE = {"0.6": "scale = q.shape[-1] ** -0.5 if scale is None else scale\n"}


def from_body(label: str):
    """The function of exercise ``label`` with WRONG[label] as its body, in a namespace like the lab's."""
    body = PREAMBLE.get(label, "") + textwrap.dedent(WRONG[label]).strip("\n")
    source = f"def {SIGNATURES[label]}:\n" + textwrap.indent(body, "    ")
    namespace = {"torch": torch, "np": np, "data": data, "tensor": tensor,
                 "hebbian_weights": hebbian_weights, "hopfield_step": hopfield_step}
    exec(source, namespace)
    return namespace[SIGNATURES[label].split("(")[0]]


def with_first(label: str, fn):
    """The correct answers of ``label`` with the first one replaced by ``fn``."""
    return (fn, *CORRECT[label][1:])


def stub(label: str):
    def raises(*args, **kwargs):
        raise NotImplementedError(f"Exercise {label}")

    return raises


# -------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("label", list(CORRECT))
def test_correct_answer_passes(label, capsys):
    assert CHECKS[label](*CORRECT[label]) is None
    out = capsys.readouterr().out
    assert f"✓ Exercise {label} passed" in out and out.count("\n") == 1


def test_second_correct_online_softmax_passes():
    assert checks.ex_0_6(online_attend_first_chunk_apart) is None


@pytest.mark.parametrize("label", list(WRONG))
def test_wrong_answer_of_the_lab_fails(label):
    with pytest.raises(AssertionError, match=f"Exercise {label}"):
        CHECKS[label](*with_first(label, from_body(label)))


@pytest.mark.parametrize("label", list(CORRECT))
def test_stub_fails(label):
    answers = tuple(stub(label) if callable(a) else a for a in CORRECT[label])
    with pytest.raises(NotImplementedError):
        CHECKS[label](*answers)


@pytest.mark.parametrize("label", list(CORRECT))
def test_placeholder_fails(label):
    answers = CORRECT[label][:-1] + (...,)
    with pytest.raises(AssertionError, match=r"`\.\.\.`"):
        CHECKS[label](*answers)


def test_wrong_alpha_value_fails_with_a_hint():
    value = float(WRONG_VALUES["0.5"].split("=")[1])
    with pytest.raises(AssertionError, match="0.138 is the d → ∞ limit"):
        checks.ex_0_5(stable_fraction, value)
    with pytest.raises(AssertionError, match="not a number of patterns"):
        checks.ex_0_5(stable_fraction, 18)


def test_reference_capacity_is_finite_size():
    alpha = checks.reference_capacity()
    assert 0.16 < alpha < 0.20  # at d = 100, half of the patterns are exact fixed points near α ≈ 0.18


# -------------------------------------------------------------- more wrong answers, with their hints


def expect_hint(check, *answers, hint: str):
    with pytest.raises(AssertionError, match=hint):
        check(*answers)


def test_0_1_hints():
    expect_hint(checks.ex_0_1, write, lambda W, q: W @ q.T, hint="read")
    expect_hint(checks.ex_0_1, lambda K, V: (V.T @ K) / K.shape[0], read, hint="Do not normalise")
    expect_hint(checks.ex_0_1, from_body("0.1"), read, hint="transpose")


def test_0_2_hints():
    expect_hint(checks.ex_0_2, lambda n, d: n / d, hint="other")
    expect_hint(checks.ex_0_2, lambda n, d: (n - 1) / d**2, hint="1/d, not 1/d²")
    expect_hint(checks.ex_0_2, lambda n, d: ((n - 1) / d) ** 0.5, hint="standard deviation")


def test_0_3_hints():
    expect_hint(checks.ex_0_3, from_body("0.3"), hopfield_step, hint="diagonal")
    expect_hint(checks.ex_0_3, lambda P: hebbian_weights(P) * P.shape[1] / P.shape[0], hopfield_step,
                hint="not by n")
    expect_hint(checks.ex_0_3, hebbian_weights, lambda W, s: torch.sign(s @ W.T), hint="sign")

    def asynchronous(W, state):
        state = state.clone()
        for i in range(state.shape[-1]):
            h = state @ W[i]
            state[..., i] = torch.where(h >= 0, 1.0, -1.0)
        return state

    expect_hint(checks.ex_0_3, hebbian_weights, asynchronous, hint="synchronous")
    expect_hint(checks.ex_0_3, hebbian_weights, lambda W, s: W @ s, hint="hopfield_step")


def test_0_4_hints():
    expect_hint(checks.ex_0_4, from_body("0.4"), hint="overflows")
    expect_hint(checks.ex_0_4, lambda q, k, v, b: torch.softmax(b * q @ k.T, dim=0) @ v, hint="dim=-1")
    expect_hint(checks.ex_0_4, lambda q, k, v, b: torch.softmax(q @ k.T, dim=-1) @ v, hint="softmax")


def test_0_5_hints():
    expect_hint(checks.ex_0_5, from_body("0.5"), ALPHA_C, hint="counting stable bits")

    def with_diagonal(d, n, seed):
        patterns = tensor(data.binary_patterns(n, d, seed))
        W = patterns.T @ patterns / d
        return (hopfield_step(W, patterns) == patterns).all(dim=1).double().mean().item()

    expect_hint(checks.ex_0_5, with_diagonal, ALPHA_C, hint="nonzero diagonal")

    def unseeded(d, n, seed):
        return stable_fraction(d, n, int(np.random.randint(1000)))

    expect_hint(checks.ex_0_5, unseeded, ALPHA_C, hint="changed between two calls")


def test_0_6_hints():
    expect_hint(checks.ex_0_6, from_body("0.6"), hint="rescale")

    def materialised(q, chunks, scale=None):
        pairs = list(chunks)
        K, V = torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs])
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return torch.softmax(scale * (K @ q), dim=0) @ V

    expect_hint(checks.ex_0_6, materialised, hint="O\\(1\\) memory")

    def two_passes(q, chunks, scale=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        m = max(float((scale * (K @ q)).max()) for K, _ in chunks)
        l, acc = 0.0, torch.zeros_like(q)
        for K, V in chunks:  # empty: the iterator was consumed by the first pass
            p = torch.exp(scale * (K @ q) - m)
            l, acc = l + p.sum(), acc + p @ V
        return acc / l

    expect_hint(checks.ex_0_6, two_passes, hint="consumed once|nan")

    def naive(q, chunks, scale=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        l, acc = 0.0, torch.zeros_like(q)
        for K, V in chunks:
            p = torch.exp(scale * (K @ q))
            l, acc = l + p.sum(), acc + p @ V
        return acc / l

    expect_hint(checks.ex_0_6, naive, hint="overflows")

    def max_from_zero(q, chunks, scale=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        m, l, acc = torch.zeros((), dtype=q.dtype), torch.zeros((), dtype=q.dtype), torch.zeros_like(q)
        for K, V in chunks:
            s = scale * (K @ q)
            m_new = torch.maximum(m, s.max())
            p = torch.exp(s - m_new)
            l = l * torch.exp(m - m_new) + p.sum()
            acc = acc * torch.exp(m - m_new) + p @ V
            m = m_new
        return acc / l

    expect_hint(checks.ex_0_6, max_from_zero, hint="nan")


def test_0_7_hints():
    expect_hint(checks.ex_0_7, from_body("0.7"), hint="before")
    expect_hint(checks.ex_0_7, lambda K, V, g: V.T @ K, hint="ignores λ")
    expect_hint(checks.ex_0_7, lambda K, V, g: gated_write(K.flip(0), V.flip(0), g), hint="oldest first")
