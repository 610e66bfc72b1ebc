"""benchmarks/snn_kernels.py runs (--quick), writes its JSON, and every backend equals the reference."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from nbrun import ROOT

SCRIPT = ROOT / "benchmarks" / "snn_kernels.py"


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "snn.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    return json.loads(out.read_text())


def test_quick_run_writes_the_json_layout(quick_result):
    for key in ("host", "date", "quick", "machine", "threads", "threads_note", "load_avg_1min_before",
                "load_avg_1min_after", "copy_gbps", "bandwidth_gbps", "targets", "all_equal", "seconds", "records"):
        assert key in quick_result, key
    assert quick_result["quick"] is True and quick_result["threads"] == 1
    assert quick_result["machine"]["torch_threads"] == 1
    assert quick_result["copy_gbps"] > 0
    records = quick_result["records"]
    assert {r["op"] for r in records} == {"lif_step", "spike_propagate", "sdr_match"}
    for r in records:
        assert {"case", "backend", "ms", "speedup_vs_reference", "gbps", "roofline", "bytes", "equal"} <= set(r)
        assert r["ms"] > 0
    backends = {r["backend"] for r in records}
    assert {"reference", "dense s @ W (peer)", "float32 matmul (peer)"} <= backends
    if quick_result["machine"]["numba"]:
        assert {"numba", "numba kernel", "numba packed"} <= backends


def test_every_backend_equalled_the_reference(quick_result):
    assert quick_result["all_equal"] is True and quick_result["peers_close"] is True
    for r in quick_result["records"]:
        if r["backend"].endswith("(peer)"):
            assert r.get("allclose", r["equal"]), r  # a peer sums in another order (spike_propagate)
        else:
            assert r["equal"] and r["max_abs_err"] == 0.0, r
            if r["op"] == "lif_step" and r["backend"] != "reference":
                assert r["equal_after_timing"], r
        if r["op"] == "sdr_match":  # integer overlaps: the float32 peer is exact too
            assert r["equal"], r


def test_sdr_bytes_and_memory_ratios_by_hand(quick_result):
    for r in (r for r in quick_result["records"] if r["op"] == "sdr_match"):
        case = dict(kv.split("=") for kv in r["case"].split(", "))
        M, B, n = int(case["M"]), int(case["B"]), int(case["n"])
        words = (n + 63) // 64
        assert r["bytes"] == (M + B) * words * 8 + 5 * B * M
        assert r["memory_ratio_float32_vs_packed"] == 32.0 and r["memory_ratio_uint8_vs_packed"] == 8.0
        assert r["matches"] >= B  # every query is a noisy copy of a stored SDR, above threshold


def test_bad_arguments_are_refused(capsys):
    spec = importlib.util.spec_from_file_location("snn_kernels_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        module.main(["--repeats", "3"])
    assert "--repeats must be >= 5, got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--ops", "lif_step,nope"])
    assert "--ops must be among" in capsys.readouterr().err
