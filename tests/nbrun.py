"""Execute notebooks the way CI does (papermill, FAST parameters) and record how long each took."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "tests" / "_executed"
TIMINGS = EXECUTED / "timings"
FAST_PARAMS = yaml.safe_load((ROOT / "tests" / "fast_params.yml").read_text())
FAST_BUDGET_S = 90.0  # DESIGN.md §2: FAST <= 90 s per notebook on 2 cores; the tests fail past 2x.


def executed_path(source: Path) -> Path:
    """Where the FAST-executed copy of ``source`` lives (mirrors the repo layout under tests/_executed)."""
    return EXECUTED / Path(source).resolve().relative_to(ROOT)


def execute(source: Path, out: Path | None = None, parameters: dict | None = None,
            timeout: int = 600) -> tuple[Path, float]:
    """Run ``source`` with the FAST parameters in its own folder; returns (executed path, seconds)."""
    import papermill

    source = Path(source).resolve()
    out = Path(out) if out else executed_path(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LABKIT_PROGRESS", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    papermill.execute_notebook(
        str(source), str(out), parameters={**FAST_PARAMS, **(parameters or {})},
        cwd=str(source.parent), kernel_name="python3", progress_bar=False, execution_timeout=timeout,
    )
    seconds = time.perf_counter() - start
    if out == executed_path(source):
        record(source, seconds)
    return out, seconds


def record(source: Path, seconds: float) -> None:
    """One JSON file per notebook (xdist workers never write the same file)."""
    TIMINGS.mkdir(parents=True, exist_ok=True)
    rel = str(Path(source).resolve().relative_to(ROOT))
    (TIMINGS / (rel.replace("/", "__") + ".json")).write_text(
        json.dumps({"notebook": rel, "seconds": round(seconds, 2), "mode": "FAST"}))


def fresh(source: Path) -> bool:
    """True if the executed copy exists and is newer than its source."""
    out = executed_path(source)
    return out.exists() and out.stat().st_mtime >= Path(source).stat().st_mtime
