"""Turn a lab exercise's body (a correct answer, a wrong one from tests/labs/wrong_labNN.py, or the student
stub) into the function the lab defines, so the checks can be tested directly, without running notebooks."""

from __future__ import annotations

import inspect
import math
import textwrap

import numpy as np
import torch
from numba import njit


def answer_factory(signatures: dict[str, str], compiled: set[str], wrong: dict[str, str]):
    """(from_body, stub) for one lab: ``from_body(label, body=None)`` defines the exercise's function with
    ``body`` (default ``wrong[label]``), ``@njit`` for the kernel exercises in ``compiled``; ``stub(label)``
    is the student version's function (it raises NotImplementedError)."""

    def from_body(label: str, body: str | None = None):
        body = textwrap.dedent(wrong[label] if body is None else body).strip("\n")
        signature = signatures[label]
        source = ("@njit\n" if label in compiled else "") + f"def {signature}:\n" + textwrap.indent(body, "    ")
        namespace = {"torch": torch, "np": np, "math": math, "njit": njit}
        exec(source, namespace)
        return namespace[signature.split("(")[0]]

    def stub(label: str):
        return from_body(label, f'raise NotImplementedError("Exercise {label}")')

    return from_body, stub


def body_of(fn) -> str:
    """The body of a correct answer written as a function, as the text a wrong-answer entry would hold."""
    lines = inspect.getsource(getattr(fn, "py_func", fn)).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def ")) + 1
    return textwrap.dedent("\n".join(lines[start:]))


def contract_tests(correct: dict, checks: dict, wrong: dict[str, str], from_body, stub) -> dict:
    """The tests every lab's checks must pass, for ``globals().update(...)`` in a test module: the master
    answer passes with one ✓ line (also when defined from its body, as the lab does), the lab's wrong answer,
    the student stub and a `...` placeholder each fail, and every exercise has a wrong answer."""
    import pytest

    def test_every_label_has_a_wrong_answer():
        assert set(wrong) == set(correct)

    @pytest.mark.parametrize("label", list(correct))
    def test_correct_answer_passes(label, capsys):
        assert checks[label](correct[label]) is None
        out = capsys.readouterr().out
        assert f"✓ Exercise {label} passed" in out and out.count("\n") == 1

    @pytest.mark.parametrize("label", list(correct))
    def test_correct_body_passes_when_defined_like_the_lab(label):
        assert checks[label](from_body(label, body_of(correct[label]))) is None

    @pytest.mark.parametrize("label", list(wrong))
    def test_wrong_answer_of_the_lab_fails(label):
        with pytest.raises(AssertionError, match=f"Exercise {label}"):
            checks[label](from_body(label))

    @pytest.mark.parametrize("label", list(correct))
    def test_stub_fails(label):
        with pytest.raises(NotImplementedError):
            checks[label](stub(label))

    @pytest.mark.parametrize("label", list(correct))
    def test_placeholder_fails(label):
        with pytest.raises(AssertionError, match=r"`\.\.\.`"):
            checks[label](...)

    return {f.__name__: f for f in (test_every_label_has_a_wrong_answer, test_correct_answer_passes,
                                    test_correct_body_passes_when_defined_like_the_lab,
                                    test_wrong_answer_of_the_lab_fails, test_stub_fails, test_placeholder_fails)}


def expect_hint(check, answer, hint: str) -> None:
    """``check(answer)`` fails with a message that contains ``hint`` (a regex): the hint names the mistake."""
    import pytest

    with pytest.raises(AssertionError, match=hint):
        check(answer)
