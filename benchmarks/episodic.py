"""Chapter 5's kernels: batched Personalized PageRank against networkx and a batched scipy power iteration, and the
blocked similarity top-k. Writes benchmarks/results/episodic-vm.json (or --out).

    python benchmarks/episodic.py                            # full: 20k nodes / 100k edges, 32 queries; sim N = 20k
    python benchmarks/episodic.py --quick --out /tmp/e.json  # smoke test: tiny sizes, 5 repeats

PPR cases (one undirected Barabási–Albert graph, seeded: hubs, ~5 edges per new node; both directions stored;
32 queries, each 3 seed nodes with random weights; α = 0.15 restart = networkx alpha 0.85; every method runs to an
L1 residual < --tol per query, networkx with tol = --tol / N because it stops at N·tol):

- ``networkx``: ``networkx.pagerank(G, personalization=...)`` once per query (the whole call). Most of it is
  rebuilding the sparse matrix from the graph on every call; ``networkx matrix build`` times that step alone
  (``to_scipy_sparse_array`` + the row normalisation networkx does), per query × 32.
- ``scipy batched``: the fair bar. The transition built once (not timed); each iteration one CSR × dense (N, B)
  product, the teleport, the dangling mass and the residual as numpy ops; all queries iterate until the slowest
  converges (the usual way to write it).
- ``torch reference``, ``numba`` (fp64 and fp32): ``labkit.kernels.ppr`` on a ``Transition`` built once; also
  ``numba end to end`` with the transition built inside the call.

Every backend must give the same top-10 set per query as networkx (the count is recorded). Timings: median of >= 5
repeats after a warm-up, backends taking turns (ratios within one run). Threads: torch and numba get --threads.

sim_topk: X (N, d) random unit rows, k = 10, self excluded: the blocked torch path against the numba selection
(same GEMM); the full-matrix reference only where N·N floats fit in --max-full-gb. float32 runs of PPR use
tol = max(--tol, 1e-6) (float32 cannot resolve a smaller L1 residual), against scipy in float32 at the same tol.
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

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import machine, take_turns  # noqa: E402

from labkit.kernels import available_backends  # noqa: E402

pk = importlib.import_module("labkit.kernels.ppr")
st = importlib.import_module("labkit.kernels.sim_topk")


# ---- PPR -----------------------------------------------------------------------------------------------


def make_graph(N: int, m: int, seed: int) -> nx.Graph:
    G = nx.barabasi_albert_graph(N, m, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in G.edges:
        G[u][v]["weight"] = float(rng.uniform(0.5, 2.0))
    return G


def make_queries(N: int, B: int, seeds_per_query: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    s = np.zeros((B, N))
    for b in range(B):
        s[b, rng.choice(N, seeds_per_query, replace=False)] = rng.uniform(0.5, 1.5, seeds_per_query)
    return s


def networkx_ppr(G: nx.Graph, s: np.ndarray, alpha: float, tol: float) -> np.ndarray:
    N = s.shape[1]
    out = np.empty_like(s)
    for b in range(s.shape[0]):
        pers = {int(i): float(s[b, i]) for i in np.flatnonzero(s[b])}
        r = nx.pagerank(G, alpha=1 - alpha, personalization=pers, tol=tol / N, max_iter=10_000, weight="weight")
        out[b] = [r[i] for i in range(N)]
    return out


def networkx_build(G: nx.Graph, B: int) -> None:
    """What networkx.pagerank redoes on every call before iterating: the matrix from the graph, normalised."""
    for _ in range(B):
        A = nx.to_scipy_sparse_array(G, nodelist=list(G), weight="weight", dtype=float)
        S = A.sum(axis=1)
        S[S != 0] = 1.0 / S[S != 0]
        A = sp.csr_array(sp.diags_array(S.T, format="csr") @ A)


def scipy_transition(G: nx.Graph) -> tuple[sp.csr_array, np.ndarray]:
    A = nx.to_scipy_sparse_array(G, nodelist=range(G.number_of_nodes()), weight="weight", dtype=float, format="csr")
    out_w = np.asarray(A.sum(axis=1)).ravel()
    dangling = out_w == 0
    inv = np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, out_w))
    P = sp.csr_array((sp.diags_array(inv) @ A).T)  # column-stochastic, CSR of Pᵀ-rows = in-edges
    return P, dangling


def scipy_ppr(P: sp.csr_array, dangling: np.ndarray, s: np.ndarray, alpha: float, tol: float,
              max_iter: int = 1000) -> tuple[np.ndarray, int]:
    S = np.ascontiguousarray((s / s.sum(1, keepdims=True)).T.astype(P.dtype))  # (N, B)
    R = S.copy()
    for t in range(1, max_iter + 1):  # noqa: B007 (t is returned)
        m = R[dangling].sum(0)
        R_new = (1 - alpha) * (P @ R) + ((1 - alpha) * m + alpha) * S
        res = np.abs(R_new - R).sum(0)
        R = R_new
        if res.max() < tol:
            break
    return R.T, t


def top10(r: np.ndarray) -> list[set[int]]:
    return [set(np.argpartition(-row, 10)[:10].tolist()) for row in r]


def bench_ppr(N: int, m: int, B: int, alpha: float, tol: float, repeats: int, nx_repeats: int, seed: int,
              fast: list[str]) -> tuple[list[dict], dict]:
    G = make_graph(N, m, seed)
    s = make_queries(N, B, 3, seed)
    A = nx.to_scipy_sparse_array(G, nodelist=range(N), weight="weight", format="csr")
    indptr, indices, w = (torch.from_numpy(np.asarray(a)).to(t) for a, t in
                          ((A.indptr, torch.int64), (A.indices, torch.int64), (A.data, torch.float64)))
    graph = pk.ppr_transition(indptr, indices, w)
    P, dangling = scipy_transition(G)
    P32 = P.astype(np.float32)
    tol32 = max(tol, 1e-6)  # float32 cannot resolve a smaller L1 residual over N entries
    s_t = torch.from_numpy(s)
    runs: dict[str, Callable[[], object]] = {
        "scipy batched": lambda: scipy_ppr(P, dangling, s, alpha, tol),
        "torch reference": lambda: pk.reference(graph, s_t / s_t.sum(1, keepdim=True), alpha, tol, 1000),
        f"scipy batched fp32 tol={tol32:g}": lambda: scipy_ppr(P32, dangling, s, alpha, tol32),
    }
    for b in fast:
        runs[f"{b} fp64"] = lambda b=b: pk.ppr(graph, s_t, alpha, tol, 1000, backend=b)
        runs[f"{b} end to end"] = lambda b=b: pk.ppr((indptr, indices, w), s_t, alpha, tol, 1000, backend=b)
        runs[f"{b} fp32 tol={tol32:g}"] = lambda b=b: pk.ppr(graph, s_t.float(), alpha, tol32, 1000, backend=b)
    timings = take_turns(runs, repeats)
    nx_t = take_turns({"networkx": lambda: networkx_ppr(G, s, alpha, tol),
                    "networkx matrix build": lambda: networkx_build(G, B)}, nx_repeats, warmup=0)
    want = networkx_ppr(G, s, alpha, tol)
    want_top = top10(want)
    results = {"scipy batched": scipy_ppr(P, dangling, s, alpha, tol)[0],
               f"scipy batched fp32 tol={tol32:g}": scipy_ppr(P32, dangling, s, alpha, tol32)[0].astype(np.float64),
               "torch reference": pk.reference(graph, s_t / s_t.sum(1, keepdim=True), alpha, tol, 1000)[0].numpy()}
    iters = {}
    for b in fast:
        for name, x, t in ((f"{b} fp64", s_t, tol), (f"{b} fp32 tol={tol32:g}", s_t.float(), tol32)):
            r, it = pk.ppr(graph, x, alpha, t, 1000, backend=b)
            results[name] = r.double().numpy()
            iters[name] = it.tolist()
        results[f"{b} end to end"] = results[f"{b} fp64"]
    all_t = {**nx_t, **timings}
    records = []
    for name, ms in all_t.items():
        rec = {"op": "ppr", "case": f"N={N},E={G.number_of_edges()},B={B},alpha={alpha},tol={tol}", "backend": name,
               "ms": round(ms, 2), "speedup_vs_networkx": round(nx_t["networkx"] / ms, 2),
               "speedup_vs_scipy_batched": round(timings["scipy batched"] / ms, 2)}
        if name in results:
            rec["top10_equal_networkx"] = sum(a == b for a, b in zip(top10(results[name]), want_top, strict=True))
            rec["max_abs_err_vs_networkx"] = float(np.abs(results[name] - want).max())
        if name in iters:
            rec["iterations_min_max"] = [min(iters[name]), max(iters[name])]
        records.append(rec)
    info = {"N": N, "edges_undirected": G.number_of_edges(), "nnz_directed": int(A.nnz), "B": B,
            "max_degree": max(d for _, d in G.degree()), "scipy_iterations": scipy_ppr(P, dangling, s, alpha, tol)[1]}
    return records, info


# ---- sim_topk ------------------------------------------------------------------------------------------


def bench_sim(N: int, d: int, k: int, repeats: int, fast: list[str], max_full_gb: float) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    X = torch.randn(N, d, generator=g)
    X = X / X.norm(dim=1, keepdim=True)
    runs = {"torch blocked": lambda: st.sim_topk(X, k, backend="torch")}
    if "numba" in fast:
        runs["numba"] = lambda: st.sim_topk(X, k, backend="numba")
    runs["GEMM alone (blocked, no selection)"] = lambda: [X[lo:lo + 838] @ X.T for lo in range(0, N, 838)]
    full = 4 * N * N / 1e9 <= max_full_gb
    if full:
        runs["reference (full matrix + sort)"] = lambda: st.reference(X, k)
    timings = take_turns(runs, repeats)
    ti, tv = st.sim_topk(X, k, backend="torch")
    records = []
    for name, ms in timings.items():
        rec = {"op": "sim_topk", "case": f"N={N},d={d},k={k}", "backend": name, "ms": round(ms, 2),
               "speedup_vs_torch_blocked": round(timings["torch blocked"] / ms, 2)}
        if name == "numba":
            ni, nv = st.sim_topk(X, k, backend="numba")
            rec["sets_equal_torch"] = float(np.mean([set(a) == set(b) for a, b in zip(ni.tolist(), ti.tolist(),
                                                                                      strict=True)]))
            rec["max_abs_err"] = float((nv - tv).abs().max())
        records.append(rec)
    return records


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default with 1 thread: benchmarks/results/episodic-vm.json; else none)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (>= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--tol", type=float, default=1e-8, help="L1 residual per query")
    parser.add_argument("--ops", default="ppr,sim_topk")
    parser.add_argument("--max-full-gb", type=float, default=0.5, help="largest full N x N matrix for the reference")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5, got {args.repeats}")
    torch.set_num_threads(args.threads)
    fast = [b for b in available_backends("cpu") if b not in ("torch", "triton")]
    if "numba" in fast:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    (N, m, B), (sN, sd) = ((2000, 5, 8), (2000, 64)) if args.quick else ((20_000, 5, 32), (20_000, 384))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ops = [o.strip() for o in args.ops.split(",")]
    records: list[dict] = []
    graph_info = None
    if "ppr" in ops:
        recs, graph_info = bench_ppr(N, m, B, 0.15, args.tol, args.repeats, 5, seed=0, fast=fast)
        records += recs
    if "sim_topk" in ops:
        records += bench_sim(sN, sd, 10, 5, fast, args.max_full_gb)
    result = {
        "host": socket.gethostname(), "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "machine": machine(torch.device("cpu")), "threads": args.threads,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "graph": graph_info, "targets": {"ppr_vs_networkx": 10.0, "ppr_vs_scipy_batched": 3.0},
        "seconds": round(time.perf_counter() - t0, 1), "records": records,
    }
    print(f"{result['host']}  threads {args.threads}  load {load_before:.2f} -> {result['load_avg_1min_after']:.2f}"
          f"  graph {graph_info}")
    for r in records:
        sp_ = (f"{r['speedup_vs_networkx']:7.2f}x nx {r['speedup_vs_scipy_batched']:6.2f}x scipy"
               if r["op"] == "ppr" else f"{r['speedup_vs_torch_blocked']:6.2f}x torch")
        extra = f"top10 {r['top10_equal_networkx']}/{B}" if "top10_equal_networkx" in r else \
            (f"sets {r['sets_equal_torch']:.4f}" if "sets_equal_torch" in r else "")
        print(f"{r['op']:<9} {r['case']:<44} {r['backend']:<34} {r['ms']:10.2f} ms {sp_:>28} {extra}")
    out = args.out
    if out is None and not args.quick and args.threads == 1:  # other thread counts: printed, or --out
        out = ROOT / "benchmarks" / "results" / "episodic-vm.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
