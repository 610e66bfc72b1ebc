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
