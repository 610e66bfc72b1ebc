"""Argument checks shared by the chapter-4 modules: each names the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np


def positive_int(name: str, v) -> int:
    """v as an int if it is an integer >= 1 (bools refused), else ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {v!r}")
    return int(v)


def nonneg_int(name: str, v) -> int:
    """v as an int if it is an integer >= 0 (bools refused), else ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)
