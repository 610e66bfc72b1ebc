"""How a lab exercise is checked.

A check is a function ``ex_N_k(answer)`` declared with :func:`exercise`. It property-tests the student's
answer against labkit's reference on random inputs, prints one line on success and raises
``AssertionError`` with a hint on failure::

    @exercise("0.1", "write() stores every pair")
    def ex_0_1(write):
        for_all(st.integers(1, 8), lambda n: expect(..., "hint"))

The grader (``python -m labkit grade``) runs submissions with ``LABKIT_GRADE_TOKEN`` set; a passing check
then also prints a receipt derived from that secret, so a hand-written "passed" line earns nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable

import numpy as np

GRADE_TOKEN_ENV = "LABKIT_GRADE_TOKEN"
PASS_MARK = "✓"
REGISTRY: dict[str, Callable] = {}


class _Context:
    label: str = "?"


_context = _Context()


def receipt(label: str, token: str) -> str:
    """The line a passing check prints under the grader; only someone who knows ``token`` can forge it."""
    digest = hashlib.sha256(f"{token}:{label}".encode()).hexdigest()[:16]
    return f"[labkit-receipt {label} {digest}]"


def exercise(label: str, summary: str) -> Callable[[Callable], Callable]:
    """Declare ``fn`` as the check of exercise ``label`` ("N.k"); ``summary`` is what passing proves."""
    if not isinstance(label, str) or label.count(".") != 1:
        raise ValueError(f"label must look like 'N.k', got {label!r}")

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def check(*answers):
            for answer in answers:
                if answer is Ellipsis:
                    raise AssertionError(f"Exercise {label}: replace the `...` placeholder with your answer.")
            previous, _context.label = _context.label, label
            try:
                fn(*answers)
            finally:
                _context.label = previous
            print(f"{PASS_MARK} Exercise {label} passed: {summary}")
            token = os.environ.get(GRADE_TOKEN_ENV)
            if token:
                print(receipt(label, token))

        check.label = label
        check.summary = summary
        REGISTRY[label] = check
        return check

    return decorate


def expect(condition: bool, hint: str) -> None:
    """Fail the running check with ``hint`` unless ``condition`` holds."""
    if not bool(condition):
        raise AssertionError(f"Exercise {_context.label}: {hint}")


def to_numpy(name: str, value) -> np.ndarray:
    """Turn a student's answer (array, tensor, list, number) into a float64 array, or fail clearly."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().numpy()
    except ImportError:  # torch is a labkit dependency; keep the check usable without it
        pass
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise AssertionError(
            f"Exercise {_context.label}: {name} should be an array or a number, got {type(value).__name__}"
        ) from err



def call_answer(what: str, fn: Callable, *args, **kwargs):
    """Call the student's ``fn``; turn a crash into an AssertionError that says which call crashed.

    NotImplementedError (an unsolved stub) and AssertionError pass through unchanged.
    """
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(
            f"Exercise {_context.label}: {what} raised {type(err).__name__}: {err}") from err


def answer_array(name: str, value) -> np.ndarray:
    """``value`` (what the student's code returned) as a float64 array; None fails with a hint."""
    if value is None:
        raise AssertionError(f"Exercise {_context.label}: {name} returned None: did you forget `return`?")
    return to_numpy(name, value)


def answer_number(name: str, value) -> float:
    """``value`` as one float; an array of several numbers fails with a hint."""
    array = answer_array(name, value)
    expect(array.size == 1, f"{name} should be a single number, got an array of shape {array.shape}")
    return float(array.reshape(()))

def expect_close(name: str, actual, expected, atol: float = 1e-6, rtol: float = 1e-5, hint: str = "") -> None:
    """Fail unless ``actual`` matches ``expected`` in shape and value (numpy ``allclose``)."""
    actual, expected = to_numpy(name, actual), to_numpy("expected", expected)
    expect(actual.shape == expected.shape,
           f"{name} has shape {actual.shape}, expected {expected.shape}. {hint}".strip())
    if not np.allclose(actual, expected, atol=atol, rtol=rtol, equal_nan=False):
        err = np.abs(actual - expected)
        bad = ~np.isfinite(actual) & np.isfinite(expected)
        if bad.any():  # a nan/inf answer: name its first position (nanargmax fails on an all-nan slice)
            worst = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise AssertionError(
                f"Exercise {_context.label}: {name} has {int(bad.sum())} non-finite value(s) (first at index "
                f"{tuple(int(i) for i in worst)}: got {actual[worst]}, expected {expected[worst]:.6g}). {hint}".strip()
            )
        worst = np.unravel_index(int(np.nanargmax(err)), err.shape) if err.size else ()
        raise AssertionError(
            f"Exercise {_context.label}: {name} is off by up to {np.nanmax(err):.3g} "
            f"(at index {tuple(int(i) for i in worst)}: got {actual[worst]:.6g}, expected {expected[worst]:.6g}). "
            f"{hint}".strip()
        )



def is_njit(fn) -> bool:
    """True for a function compiled by Numba (``@njit`` / ``@jit``): a dispatcher with a ``py_func``."""
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # numba is a labkit dependency; without it no answer can be compiled
        return False
    return isinstance(fn, Dispatcher)


def allclose_answer(a: np.ndarray, b, atol: float = 1e-8, rtol: float = 1e-6) -> bool:
    """True when ``a`` has ``b``'s shape and values (numpy ``allclose``); for checks that build their own message."""
    b = to_numpy("expected", b)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))


def answer_tuple(what: str, result, names: tuple[str, ...]) -> tuple:
    """``result`` as a tuple of ``len(names)`` values, or a failure naming the tuple the answer should return."""
    expect(isinstance(result, (tuple, list)) and len(result) == len(names),
           f"{what} should return the tuple ({', '.join(names)}), got {type(result).__name__}"
           + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "") + ".")
    return tuple(result)


def for_all(strategy, test: Callable, max_examples: int = 25) -> None:
    """Run ``test(example)`` on examples drawn from a hypothesis ``strategy`` (derandomised, no database).

    Tuned for a check that must stay fast and speak clearly: hypothesis stops at the first failure and
    shrinks it (no ExceptionGroup of distinct failures) and skips its *explain* phase (which re-runs a
    failing test for seconds). A failure is reported as the check's AssertionError; a crash of the
    student's code becomes an AssertionError naming the exception; NotImplementedError (an unsolved stub)
    passes through.
    """
    from hypothesis import HealthCheck, Phase, given, settings

    _keep_hypothesis_files_out_of_cwd()

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False,
              phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink))
    @given(strategy)
    def run(example):
        test(example)

    try:
        run()
    except AssertionError:
        raise
    except NotImplementedError:
        raise
    except Exception as err:  # an exception inside the student's code: say which input triggered it
        raise AssertionError(f"Exercise {_context.label}: your code raised {type(err).__name__}: {err}") from err


def _keep_hypothesis_files_out_of_cwd() -> None:
    """Hypothesis writes a ``.hypothesis/`` folder into the working directory (the student's lab folder)."""
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        import tempfile

        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "labkit-hypothesis"))
