"""Time every notebook at FAST and at full size; write benchmarks/results/notebooks-<host>.json.

    python benchmarks/notebook_times.py            # FAST and full
    python benchmarks/notebook_times.py --fast-only

Budgets (DESIGN.md §2): FAST <= 90 s, full <= 10 min per notebook on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parents[1]
BUDGETS_S = {"FAST": 90.0, "full": 600.0}


def time_notebook(path: Path, fast: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        papermill.execute_notebook(str(path), str(Path(tmp) / path.name), parameters={"FAST": fast},
                                   cwd=str(path.parent), kernel_name="python3", progress_bar=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast-only", action="store_true")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("LABKIT_PROGRESS", "0")
    notebooks = args.notebooks or sorted([*ROOT.glob("book/*.ipynb"), *ROOT.glob("labs/*.ipynb")])
    modes = ["FAST"] if args.fast_only else ["FAST", "full"]
    rows = []
    for path in notebooks:
        row = {"notebook": str(path.resolve().relative_to(ROOT))}
        for mode in modes:
            seconds = time_notebook(path.resolve(), fast=mode == "FAST")
            row[f"{mode}_s"] = round(seconds, 1)
            row[f"{mode}_within_budget"] = seconds <= BUDGETS_S[mode]
        rows.append(row)
        print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    out = ROOT / "benchmarks" / "results" / f"notebooks-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # timing some notebooks keeps the other notebooks' earlier rows (each row carries its own date)
    now = dt.datetime.now().isoformat(timespec="seconds")
    kept = json.loads(out.read_text())["notebooks"] if out.exists() else []
    by_name = {r["notebook"]: r for r in kept}
    for row in rows:
        by_name[row["notebook"]] = {**by_name.get(row["notebook"], {}), **row, "date": now}
    out.write_text(json.dumps({"host": socket.gethostname(), "date": now, "cpu_count": os.cpu_count(),
                               "budgets_s": BUDGETS_S, "notebooks": sorted(by_name.values(),
                                                                           key=lambda r: r["notebook"])},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
