"""Chapter 4's merging kernels against their torch references on a 10M-parameter model, with the copy bandwidth
of the same machine. Writes benchmarks/results/merging-vm.json (or --out).

    python benchmarks/merging.py                        # full: P = 10M, T = 8, 10 layers of 1000 x 1000
    python benchmarks/merging.py --quick --out /tmp/m.json   # smoke test: tiny sizes, 5 repeats

Cases (flat float32 parameters):

- ``merge_update``: w0, D, τ (P,) -> merged, D_new, ‖D_new‖² (the continual task-arithmetic / OPCM state update).
  bytes = 3 reads + 2 writes of P floats. Reference: the torch ops of ``merge_update.reference`` (one per step).
- ``ties_merge``: T task vectors (T, P), density 0.2. Timed end to end (thresholds included; reference: torch
  ``kthvalue`` + torch ops) and merge only (thresholds given). Also chapter 4's ``_ties_vector`` (``topk``).
- ``opcm_project``: 10 layers (1000, 1000), D = a random task vector (so r ≈ a quarter of 1000 at α = 0.5),
  the paper's "masked" projection (``--opcm-projection``): the per-layer reference against the batched paths; also
  one batched SVD alone (the floor of every backend) and the final correction τ − L Rt alone (factors given: what
  the Numba / Triton kernels replace; inner dimension K = 1000 for "masked", 2r for "two_sided").

Every timing is the median of >= 5 repeats after a warm-up, the backends taking turns (ratios within one run).
Threads: torch and numba both get ``--threads`` (default 1): the machine is a shared 2-core VM. The 1-minute load
average before and after is recorded: > 1 means other work competed for the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import kernel_records, machine, memory_bandwidth, take_turns  # noqa: E402

from labkit.continual.merging import _ties_vector  # noqa: E402
from labkit.kernels import available_backends  # noqa: E402

# the modules (labkit.kernels exports functions of the same names)
mu = importlib.import_module("labkit.kernels.merge_update")
op = importlib.import_module("labkit.kernels.opcm_project")
tm = importlib.import_module("labkit.kernels.ties_merge")


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    return take_turns(fns, repeats, warmup, sync=_sync)


def bench_merge_update(P: int, repeats: int, copy_gbps: float, fast: list[str]) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    w0, D, tau = (torch.randn(P, generator=g).to(DEVICE) for _ in range(3))
    D_inplace = D.clone()
    runs = {"reference": lambda: mu.reference(w0, D, tau, 1.0, 0.3)}
    for b in fast:
        runs[b] = lambda b=b: mu.merge_update(w0, D, tau, 1.0, 0.3, backend=b)
        runs[f"{b} inplace"] = lambda b=b: mu.merge_update(w0, D_inplace, tau, 1e-6, 0.3, inplace=True, backend=b)
    timings = measure(runs, repeats)
    expected = mu.reference(w0, D, tau, 1.0, 0.3)
    extra = {}
    for b in fast:
        m, d, sq = mu.merge_update(w0, D, tau, 1.0, 0.3, backend=b)
        extra[b] = {"max_abs_err": float((m - expected[0]).abs().max()), "sq_rel_err": abs(sq / expected[2] - 1)}
    return kernel_records("merge_update", f"P={P}", timings, "reference", 20 * P, copy_gbps, **extra)


def bench_ties(T: int, P: int, density: float, repeats: int, copy_gbps: float, fast: list[str],
               chapter_repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    tv = torch.randn(T, P, generator=g).to(DEVICE)
    thr = tm.ties_thresholds(tv, density)
    runs = {"reference": lambda: tm.reference(tv, density)}
    merge_only = {"reference": lambda: tm.reference(tv, density, thresholds=thr)}
    thresholds = {"torch kthvalue": lambda: tm.ties_thresholds(tv, density)}
    for b in fast:
        runs[b] = lambda b=b: tm.ties_merge(tv, density, backend=b)
        merge_only[b] = lambda b=b: tm.ties_merge(tv, thresholds=thr, backend=b)
    if "numba" in fast:
        thresholds["numba radix select"] = lambda: tm.numba_ties_thresholds(tv, density)
    expected = tm.reference(tv, density)
    extra = {b: {"max_abs_err": float((tm.ties_merge(tv, density, backend=b) - expected).abs().max())} for b in fast}
    moved = 4 * (T * P + P)  # every τ_i read once, m written once (the thresholds' passes not counted)
    out = kernel_records("ties_merge", f"end to end T={T},P={P},d={density}", measure(runs, repeats), "reference",
                   moved, copy_gbps, **extra)
    out += kernel_records("ties_merge", f"merge only T={T},P={P}", measure(merge_only, repeats), "reference", moved,
                    copy_gbps)
    out += kernel_records("ties_thresholds", f"T={T},P={P},d={density}", measure(thresholds, repeats), "torch kthvalue",
                    4 * T * P, copy_gbps)
    # chapter 4's _ties_vector (topk + dict plumbing) -- slow, so fewer repeats (still >= 5)
    tvs = [{"w": tv[i]} for i in range(T)]
    chapter = measure({"_ties_vector": lambda: _ties_vector(tvs, density)}, chapter_repeats)["_ties_vector"]
    out.append({"op": "ties_merge", "case": f"chapter _ties_vector T={T},P={P},d={density}",
                "backend": "_ties_vector (topk)", "ms": round(chapter, 3),
                "max_abs_err": float((_ties_vector(tvs, density)["w"] - expected).abs().max())})
    ref_ms = next(r["ms"] for r in out if r["case"].startswith("end") and r["backend"] == "reference")
    for r in out:
        if r["case"].startswith("end"):
            r["speedup_vs_chapter_ties_vector"] = round(chapter / r["ms"], 2)
    out[-1]["speedup_vs_reference"] = round(ref_ms / chapter, 2)
    return out


def bench_opcm(n_layers: int, m: int, n: int, alpha: float, repeats: int, fast: list[str],
               projection: str = "masked") -> list[dict]:
    g = torch.Generator().manual_seed(2)
    deltas = [torch.randn(m, n, generator=g).to(DEVICE) for _ in range(n_layers)]
    taus = [torch.randn(m, n, generator=g).to(DEVICE) for _ in range(n_layers)]
    runs = {"reference (per layer)": lambda: op.reference(deltas, taus, alpha, projection),
            "torch batched": lambda: op.opcm_project(deltas, taus, alpha, backend="torch", projection=projection)}
    for b in fast:
        runs[b] = lambda b=b: op.opcm_project(deltas, taus, alpha, backend=b, projection=projection)
    D = torch.stack(deltas).double()  # noqa: N806
    runs["batched SVD alone"] = lambda: torch.linalg.svd(D, full_matrices=False)
    # the part the kernels own: the final correction τ − L Rt, factors given (float64, one shape group)
    t64 = torch.stack(taus).double()
    L, Rt, _ = op._factors(torch.stack(deltas), t64, alpha, projection)
    runs["correction only: torch baddbmm"] = lambda: torch.baddbmm(t64, L, Rt, alpha=-1.0)
    if "numba" in fast:
        runs["correction only: numba"] = lambda: op._numba_apply(t64, L, Rt)
    if "triton" in fast:
        runs["correction only: triton"] = lambda: op._triton_apply(t64, L, Rt)
    timings = measure(runs, repeats)
    ref_p, ref_r = op.reference(deltas, taus, alpha, projection)
    extra = {}
    for b in ["torch"] + fast:
        p, r = op.opcm_project(deltas, taus, alpha, backend=b, projection=projection)
        extra["torch batched" if b == "torch" else b] = {
            "max_abs_err": max(float((x - y).abs().max()) for x, y in zip(p, ref_p, strict=True)),
            "ranks_equal": r == ref_r}
    extra["reference (per layer)"] = {"mean_rank": sum(ref_r) / len(ref_r)}
    extra.update({k: {"inner_dim_K": int(L.shape[2])} for k in runs if k.startswith("correction only")})
    out = kernel_records("opcm_project", f"{n_layers} x ({m}, {n}), alpha={alpha}, {projection}", timings,
                   "reference (per layer)", None, 0.0, **extra)
    base = timings["correction only: torch baddbmm"]
    for r in out:
        r["projection"] = projection
        if r["backend"].startswith("correction only"):  # a part of the op: compare it with baddbmm, not the whole
            r["speedup_vs_torch_baddbmm"] = round(base / r["ms"], 2)
            del r["speedup_vs_reference"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/merging-vm.json; --quick: none unless given)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (>= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--ops", default="merge_update,ties_merge,opcm_project")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, then triton) | cpu | cuda")
    parser.add_argument("--opcm-projection", default="masked", choices=op.PROJECTIONS,
                        help="opcm_project's projection (default: the paper's masked one)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5, got {args.repeats}")
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    fast = [b for b in available_backends(DEVICE) if b != "torch"]
    if DEVICE.type == "cpu":
        fast = [b for b in fast if b != "triton"]  # the Triton interpreter is a test tool, not a benchmark
    if "numba" in fast:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    P, T, layers, (m, n) = (100_000, 4, 2, (100, 80)) if args.quick else (10_000_000, 8, 10, (1000, 1000))
    load_before = os.getloadavg()[0]
    bandwidth = memory_bandwidth(DEVICE, 4 * P if args.quick else 256 * 2**20, repeats=args.repeats)
    copy_gbps = max(v for k, v in bandwidth.items() if k.startswith("copy"))
    ops = [o.strip() for o in args.ops.split(",")]
    records: list[dict] = []
    t0 = time.perf_counter()
    if "merge_update" in ops:
        records += bench_merge_update(P, args.repeats, copy_gbps, fast)
    if "ties_merge" in ops:
        records += bench_ties(T, P, 0.2, args.repeats, copy_gbps, fast, chapter_repeats=5)
    if "opcm_project" in ops:
        records += bench_opcm(layers, m, n, 0.5, 5, fast, args.opcm_projection)
    result = {
        "host": socket.gethostname(), "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "machine": machine(DEVICE), "threads": args.threads,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "copy_gbps": round(copy_gbps, 2), "bandwidth_gbps": {k: round(v, 2) for k, v in bandwidth.items()},
        "targets": {"merge_update": 3.0, "ties_merge": 3.0}, "seconds": round(time.perf_counter() - t0, 1),
        "records": records,
    }
    print(f"{result['host']}  threads {args.threads}  copy {copy_gbps:.1f} GB/s  load {load_before:.2f} -> "
          f"{result['load_avg_1min_after']:.2f}")
    for r in records:
        gb = f"{r['gbps']:7.2f} GB/s {r['roofline']:5.2f} roof" if "gbps" in r else ""
        sp = f"{r['speedup_vs_reference']:6.2f}x" if "speedup_vs_reference" in r else ""
        print(f"{r['op']:<16} {r['case']:<40} {r['backend']:<22} {r['ms']:10.2f} ms {sp:>8} {gb}")
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / ("merging-vm.json" if DEVICE.type == "cpu" else "merging-gpu.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
