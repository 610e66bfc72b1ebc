"""Every book chapter runs end to end with FAST parameters, inside its time budget.

Labs are executed by tests/labs/test_labs.py (which also checks their exercises). The executed copies land
in tests/_executed/, where the book build test picks them up instead of executing a second time.
"""

from __future__ import annotations

import pytest
from nbrun import FAST_BUDGET_S, ROOT, execute

BOOK_NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("source", BOOK_NOTEBOOKS, ids=[p.name for p in BOOK_NOTEBOOKS])
def test_book_notebook_runs_fast(source):
    _, seconds = execute(source)
    assert seconds <= 2 * FAST_BUDGET_S, (
        f"{source.name} took {seconds:.0f} s with FAST=True; the budget is {FAST_BUDGET_S:.0f} s (fails past 2x)"
    )
