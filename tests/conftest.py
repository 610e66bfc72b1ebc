"""Shared test set-up. Runs before any test module imports labkit.kernels."""

from __future__ import annotations

import os

# Triton kernels only run on the CPU through the interpreter, and the flag must be set before the
# @triton.jit decorators execute (i.e. before labkit.kernels is imported).
try:
    import torch

    _cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two pytest-xdist workers on two cores: spinning OpenMP threads make torch several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LABKIT_PROGRESS", "0")


def pytest_terminal_summary(terminalreporter):
    """Print the FAST time of every notebook this run executed (written by tests/nbrun.py)."""
    import json
    from pathlib import Path

    timings = Path(__file__).parent / "_executed" / "timings"
    rows = sorted((json.loads(p.read_text()) for p in timings.glob("*.json")), key=lambda r: r["notebook"]) \
        if timings.is_dir() else []
    if rows:
        terminalreporter.section("notebook FAST times (budget 90 s)")
        for row in rows:
            terminalreporter.write_line(f"{row['seconds']:7.1f} s  {row['notebook']}")
