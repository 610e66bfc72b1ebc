"""The maintainer commands work on the repository itself, and the benchmark script runs."""

from __future__ import annotations

import json
import subprocess
import sys

from nbrun import ROOT

from labkit.__main__ import main


def test_every_repo_notebook_passes_lint_and_is_already_stamped_and_stripped(capsys):
    assert main(["lint-notebooks"]) == 0
    before = {p: p.read_bytes() for p in [*ROOT.glob("book/*.ipynb"), *ROOT.glob("labs/*.ipynb")]}
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["stamp"]) == 0
        assert main(["strip"]) == 0
    finally:
        os.chdir(cwd)
    assert "stamp:" not in capsys.readouterr().out
    assert all(p.read_bytes() == b for p, b in before.items()), "stamp/strip changed a committed notebook"


def test_cli_reports_missing_notebook_with_nonzero_exit(tmp_path, capsys):
    assert main(["lint-notebooks", str(tmp_path / "missing.ipynb")]) == 2
    assert "not found" in capsys.readouterr().err


def test_benchmark_quick_run_writes_results(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    backends = {r["backend"] for r in result["records"]}
    assert {"reference", "numba"} <= backends
    assert result["copy_gbps"] > 0
