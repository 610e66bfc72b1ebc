"""Chapter 6's kernels against their torch references, a peer where one exists, and the copy bandwidth of the same
machine. Writes benchmarks/results/snn-kernels-vm.json (or --out).

    python benchmarks/snn_kernels.py                            # full: the sizes below (~3 minutes on 1 thread)
    python benchmarks/snn_kernels.py --quick --out /tmp/s.json   # smoke test: tiny sizes, 5 repeats

Cases (float32 state, CPU):

- ``lif_step``: one fused step of N LIF neurons (exact propagator, dt = 1 ms, constant drive so ~1-5 % spike per
  step), N = 10k and 100k; without plasticity, and with a plastic dense STDP group W (1000, N) from a 1000-neuron
  source (2 % of it spiking each step). Backends: ``reference`` (the torch ops, one per line, with temporaries),
  ``numba`` (the public ``lif_step``: checks + one compiled call) and ``numba kernel`` (the compiled ``_lif_step``
  with its arguments prepared once, as ``Network`` runs it). One timed call = one step after the cache flush (the
  state cold, as in a simulation whose synapses and other populations ran in between); 3 × --repeats calls, since
  a step is microseconds. bytes = the minimum a step must move: v, I, refrac, I_in, i_ext read, v, I, refrac, spikes
  written (29 N), plus with STDP the traces (16 (M + N)) and every weight of a spiking row or column read and
  written once (8 N S_pre + 8 M S_post, S = the mean spikes per step of the timed trajectory).
- ``spike_propagate``: N = M = 10k neurons, 1M CSR synapses (100 per row), a ring buffer of D = 16 slots, one
  delay for all synapses; 0.1 %, 1 % and 10 % of the presynaptic neurons spiking. Backends: ``reference`` (gather
  the spiking rows' edges, ``index_add_``), ``numba`` (the public op, validate=False), ``numba packed`` (the
  pre-packed targets d·N + j that ``Network`` uses), and two peers that ignore sparsity of activity: a dense
  ``s @ W`` (torch matmul of the 0/1 spike vector with the dense (M, N) weights, 400 MB) and a torch.sparse CSR
  mat-vec (Wᵀ in CSR, every synapse read every step). A 1 % case with per-synapse delays (no peer) as well.
  bytes = the minimum the event-driven op moves: the spiking ids and their indptr pairs, per active synapse its
  target (8 B) and weight (4 B) read and its buffer cell read and written (8 B).
- ``sdr_match``: n = 2048-bit SDRs with 40 ON bits, M = 10k and 100k stored, B = 1 and 64 queries (noisy copies of
  stored SDRs), θ = 20. Backends: ``reference`` (unpack to float64, matmul), ``numba`` (SWAR popcount over the
  packed words fused with the threshold) and the peer ``float32 matmul`` (the SDRs kept unpacked as float32, one
  ``q @ Sᵀ`` and ``>= θ``). bytes = packed stored + queries read, match (1 B) and overlap (4 B) written. The memory
  footprint of the stored SDRs (packed int64 words, unpacked uint8, float32) is reported with the records, and
  ``gwords_per_s`` = B·M·⌈n/64⌉ word pairs compared per second (the popcount work; with B = 64 it is compute-bound).

Every backend's result is compared with the reference before timing (``equal``: exact equality of every output;
``max_abs_err``); lif_step's states are compared again after the timed steps. Every timing is the median of
>= 5 repeats after a warm-up, the backends taking turns (ratios within one run); the last-level cache is flushed
before each timed call (run.py's Timer). Threads: torch and numba both get ``--threads`` (default 1): the machine
is a shared 2-core VM. The 1-minute load average before and after is recorded: > 1 means other work competed.
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
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import FLUSH_BYTES, kernel_records, machine, memory_bandwidth, take_turns  # noqa: E402

from labkit.kernels import available_backends  # noqa: E402
from labkit.snn.lif import LIFParams, STDPParams  # noqa: E402

# the modules (labkit.kernels exports functions of the same names)
ls = importlib.import_module("labkit.kernels.lif_step")
sp = importlib.import_module("labkit.kernels.spike_propagate")
sm = importlib.import_module("labkit.kernels.sdr_match")

DEVICE = torch.device("cpu")
OPS = ("lif_step", "spike_propagate", "sdr_match")


# ---- lif_step ------------------------------------------------------------------------------------------------


def _lif_state(N: int, M: int, plastic: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = {"v": -65.0 + 15.0 * torch.rand(N, generator=g), "I": 0.5 * torch.rand(N, generator=g),
         "refrac": torch.zeros(N, dtype=torch.int32), "I_in": 0.2 * torch.rand(N, generator=g),
         "i_ext": 10.0 + 10.0 * torch.rand(N, generator=g)}  # about half the neurons above rheobase (15 nA·MΩ)
    if plastic:
        s.update(W=0.5 * torch.rand(M, N, generator=g), x=torch.zeros(M), y=torch.zeros(N),
                 pre_spiked=torch.rand(M, generator=g) < 0.02)
    return s


def _clone(s: dict) -> dict:
    return {k: v.clone() for k, v in s.items()}


def _lif_runner(backend: str, s: dict, coeffs, stdp, steps: int, spikes_out: list | None = None) -> Callable:
    """``steps`` consecutive steps of the state s (in place) with one backend."""
    kw = {k: s[k] for k in ("W", "x", "y", "pre_spiked") if k in s}
    if kw:
        kw["stdp"] = stdp
    if backend == "numba kernel":  # the compiled step with its arguments prepared once (Network._run_numba)
        n = s["v"].numpy()
        npdt = n.dtype
        spiked = np.empty(n.size, np.bool_)
        args = (n, s["I"].numpy(), s["refrac"].numpy(), s["I_in"].numpy(), s["i_ext"].numpy(),
                ls._consts(coeffs, s["v"].dtype, "cpu").numpy(), int(coeffs.n_ref), spiked,
                np.empty((0, 0), npdt), np.empty(0, npdt), np.empty(0, npdt), np.empty(0, np.bool_), True,
                np.zeros(6, npdt))

        def run_kernel():
            for _ in range(steps):
                ls._lif_step(*args)
                if spikes_out is not None:
                    spikes_out.append(torch.from_numpy(spiked.copy()))
        return run_kernel
    b = "torch" if backend == "reference" else backend

    def run():
        for _ in range(steps):
            spk = ls.lif_step(s["v"], s["I"], s["refrac"], s["I_in"], coeffs, s["i_ext"], backend=b, **kw)
            if spikes_out is not None:
                spikes_out.append(spk.clone())
    return run


def _state_diff(a: dict, b: dict) -> tuple[bool, float]:
    equal = all(torch.equal(a[k], b[k]) for k in a)
    err = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a
              if a[k].dtype != torch.bool)
    return equal, err


def bench_lif(N: int, M: int | None, steps: int, repeats: int, copy_gbps: float, fast: list[str],
              flush: torch.Tensor | None, check_steps: int = 20) -> list[dict]:
    plastic = M is not None
    coeffs = LIFParams().coefficients(1.0)
    stdp = STDPParams().coefficients(1.0)
    state = _lif_state(N, M or 0, plastic, seed=N)
    backends = ["reference"] + fast + (["numba kernel"] if "numba" in fast and not plastic else [])
    # equality before timing: check_steps steps from the same state, spikes of every step compared
    ref_s = _clone(state)
    ref_spikes: list = []
    _lif_runner("reference", ref_s, coeffs, stdp, check_steps, ref_spikes)()
    extra = {}
    for b in backends[1:]:
        s, spikes = _clone(state), []
        _lif_runner(b, s, coeffs, stdp, check_steps, spikes)()
        equal, err = _state_diff(ref_s, s)
        extra[b] = {"equal": equal and all(torch.equal(x, y) for x, y in zip(ref_spikes, spikes, strict=True)),
                    "max_abs_err": err}
    extra["reference"] = {"equal": True, "max_abs_err": 0.0}
    # the timed trajectory (warm-up + repeats calls of `steps` steps) is deterministic: count its spikes first
    n_calls = 1 + repeats
    s, spikes = _clone(state), []
    _lif_runner("reference", s, coeffs, stdp, n_calls * steps, spikes)()
    s_post = float(torch.stack(spikes).sum(1).float().mean())
    s_pre = float(state["pre_spiked"].sum()) if plastic else 0.0
    moved = 29 * N
    if plastic:
        moved += 16 * (M + N) + 8 * N * s_pre + 8 * M * s_post
    states = {b: _clone(state) for b in backends}
    runs = {b: _lif_runner(b, states[b], coeffs, stdp, steps) for b in backends}
    timings = {b: ms / steps for b, ms in take_turns(runs, repeats, flush=flush).items()}
    for b in backends[1:]:  # every backend stepped n_calls * steps times from the same state
        extra[b]["equal_after_timing"] = _state_diff(states["reference"], states[b])[0]
    case = f"N={N}" + (f", STDP W ({M}, {N}), 2% pre" if plastic else "")
    for r in extra.values():
        r.update(steps_per_call=steps, spikes_per_step=round(s_post, 1))
    return kernel_records("lif_step", case, timings, "reference", moved, copy_gbps, **extra)


# ---- spike_propagate -----------------------------------------------------------------------------------------


def _random_csr(M: int, N: int, deg: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    indptr = torch.arange(0, M * deg + 1, deg, dtype=torch.int64)
    indices = torch.randint(0, N, (M * deg,), generator=g)
    weights = torch.rand(M * deg, generator=g)
    return indptr, indices, weights


def bench_propagate(N: int, deg: int, D: int, fractions: list[float], repeats: int, copy_gbps: float,
                    fast: list[str], flush: torch.Tensor | None) -> list[dict]:
    M = N
    indptr, indices, weights = _random_csr(M, N, deg, seed=3)
    delay = 3
    rows_of = torch.repeat_interleave(torch.arange(M), indptr[1:] - indptr[:-1])
    dense = torch.zeros(M, N)
    dense.index_put_((rows_of, indices), weights, accumulate=True)  # duplicate targets add, as in the scatter
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        wt_csr = dense.T.to_sparse_csr()  # (N, M): the torch.sparse peer's Wᵀ
    records = []
    g = torch.Generator().manual_seed(4)
    per_delays = torch.randint(0, D, (M * deg,), generator=g)
    codes = sp._csr_codes(D, N, indices.numpy(), np.full(M * deg, delay))
    codes_per = sp._csr_codes(D, N, indices.numpy(), per_delays.numpy())
    cases = [(f, delay) for f in fractions] + [(0.01, per_delays)]
    t = 5  # the current step (any: the slots wrap)
    ip_np, w_np = indptr.numpy(), weights.numpy()
    for frac, delays in cases:
        per = isinstance(delays, torch.Tensor)
        S = max(1, round(frac * M))
        spiking = torch.randperm(M, generator=g)[:S].sort().values
        names = ["reference"] + (["numba", "numba packed"] if "numba" in fast else [])
        if not per:  # the dense peers know one delay for all synapses
            names += ["dense s @ W (peer)", "torch.sparse CSR mv (peer)"]
        bufs = {name: torch.zeros(D, N) for name in names}
        runs = {"reference": lambda b=bufs["reference"], d=delays, s=spiking: sp.reference(
            b, t, s, weights, indptr, indices, d)}
        if "numba" in fast:
            runs["numba"] = lambda b=bufs["numba"], d=delays, s=spiking: sp.spike_propagate(
                b, t, s, weights, indptr, indices, d, backend="numba", validate=False)
            flat, rows_np, c = bufs["numba packed"].view(-1).numpy(), spiking.numpy(), codes_per if per else codes
            runs["numba packed"] = lambda f=flat, c=c, r=rows_np: sp._csr_scatter_packed(
                f, (t % D) * N, r, ip_np, c, w_np)
        peer = None
        if not per:
            spike_vec = torch.zeros(M)
            spike_vec[spiking] = 1.0

            def dense_peer(b=bufs["dense s @ W (peer)"], v=spike_vec):
                b[(t + delay) % D] += v @ dense

            def sparse_peer(b=bufs["torch.sparse CSR mv (peer)"], v=spike_vec):
                b[(t + delay) % D] += wt_csr @ v
            runs["dense s @ W (peer)"] = dense_peer
            runs["torch.sparse CSR mv (peer)"] = sparse_peer
            peer = "dense s @ W (peer)"
        # equality before timing: one call each on a zero buffer
        for name, fn in runs.items():
            bufs[name].zero_()
            fn()
        expected = bufs["reference"].clone()
        extra = {}
        for name in runs:
            err = float((bufs[name] - expected).abs().max())
            extra[name] = {"equal": bool(torch.equal(bufs[name], expected)), "max_abs_err": err,
                           "allclose": bool(torch.allclose(bufs[name], expected, rtol=1e-5, atol=1e-5))}
        active = int((indptr[spiking + 1] - indptr[spiking]).sum())
        moved = 24 * S + 20 * active
        extra.update({name: {**extra[name], "own_bytes": 4 * M * N + 4 * M + 8 * N,
                             "own_roofline": None} for name in runs if name.startswith("dense")})
        extra.update({name: {**extra[name], "own_bytes": 12 * M * deg + 8 * (N + 1) + 4 * M + 8 * N,
                             "own_roofline": None} for name in runs if name.startswith("torch.sparse")})
        timings = take_turns(runs, repeats, flush=flush)
        for name in runs:
            if "own_bytes" in extra[name]:
                extra[name]["own_roofline"] = round(extra[name]["own_bytes"] / timings[name] / 1e6 / copy_gbps, 4)
            extra[name]["active_synapses"] = active
        case = (f"N=M={N}, E={M * deg}, D={D}, {100 * frac:g}% spiking (S={S}), "
                + ("per-synapse delays" if per else f"delay {delay}"))
        records += kernel_records("spike_propagate", case, timings, "reference", moved, copy_gbps, peer, **extra)
    return records


# ---- sdr_match -----------------------------------------------------------------------------------------------


def _random_sdrs(M: int, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """M random SDRs of n bits with exactly k ON bits each: (M, n) bool."""
    bits = torch.zeros(M, n, dtype=torch.bool)
    for i in range(0, M, 8192):
        rows = bits[i:i + 8192]
        rows.scatter_(1, torch.rand(rows.shape[0], n, generator=g).topk(k, dim=1).indices, True)
    return bits


def bench_sdr(n: int, k: int, theta: int, Ms: list[int], Bs: list[int], repeats: int, copy_gbps: float,
              fast: list[str], flush: torch.Tensor | None) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    records = []
    for M in Ms:
        stored_bits = _random_sdrs(M, n, k, g)
        stored = sm.pack_bits(stored_bits)
        stored_f32 = stored_bits.float()
        W = stored.shape[1]
        footprint = {"packed int64": stored.numel() * 8, "uint8 (unpacked)": M * n, "float32 (unpacked)": M * n * 4}
        for B in Bs:
            # queries: stored SDRs with a quarter of their ON bits moved elsewhere (overlap ~30 >= theta = 20)
            qb = stored_bits[torch.randint(0, M, (B,), generator=g)].clone()
            for row in qb:
                on = torch.nonzero(row).flatten()
                row[on[torch.randperm(on.numel(), generator=g)[: k // 4]]] = False
                off = torch.nonzero(~row).flatten()
                row[off[torch.randperm(off.numel(), generator=g)[: k // 4]]] = True
            q, q_f32 = sm.pack_bits(qb), qb.float()
            runs = {"reference": lambda q=q, s=stored: sm.reference(q, s, theta)}
            for b in fast:
                runs[b] = lambda q=q, s=stored, b=b: sm.sdr_match(q, s, theta, backend=b)
            runs["float32 matmul (peer)"] = lambda qf=q_f32, sf=stored_f32: ((o := qf @ sf.T) >= theta, o)
            ref_match, ref_ov = runs["reference"]()
            extra = {}
            for name, fn in runs.items():
                match, ov = fn()
                extra[name] = {"equal": bool(torch.equal(match, ref_match) and torch.equal(ov.to(torch.int32), ref_ov)),
                               "max_abs_err": float((ov.double() - ref_ov.double()).abs().max()),
                               "matches": int(match.sum())}
            extra["float32 matmul (peer)"]["stored_bytes"] = footprint["float32 (unpacked)"]
            for name in ["reference", *fast]:
                extra[name]["stored_bytes"] = footprint["packed int64"]
            moved = (M + B) * W * 8 + 5 * B * M
            timings = take_turns(runs, repeats, flush=flush)
            case = f"n={n}, k={k}, theta={theta}, M={M}, B={B}"
            recs = kernel_records("sdr_match", case, timings, "reference", moved, copy_gbps, "float32 matmul (peer)",
                            **extra)
            packed = footprint["packed int64"]
            for r in recs:
                r["memory_ratio_float32_vs_packed"] = round(footprint["float32 (unpacked)"] / packed, 2)
                r["memory_ratio_uint8_vs_packed"] = round(footprint["uint8 (unpacked)"] / packed, 2)
                r["gwords_per_s"] = round(B * M * W / r["ms"] / 1e6, 3)
            records += recs
        del stored_f32
    return records


# ---- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/snn-kernels-vm.json; --quick: none unless given)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (>= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--no-flush", action="store_true", help="do not flush the last-level cache before each call")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5, got {args.repeats}")
    ops = [o.strip() for o in args.ops.split(",")]
    if unknown := sorted(set(ops) - set(OPS)):
        parser.error(f"--ops must be among {', '.join(OPS)}, got {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    fast = [b for b in available_backends(DEVICE) if b not in ("torch", "triton")]  # the Triton interpreter is a
    if "numba" in fast:                                                             # test tool, not a benchmark
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.quick:
        lif_cases, prop, sdr = [(1000, None, 1), (1000, 100, 1)], (1000, 10, 8, [0.01, 0.1]), ([500], [1, 8])
    else:
        lif_cases = [(10_000, None, 1), (100_000, None, 1), (10_000, 1000, 1), (100_000, 1000, 1)]
        prop, sdr = (10_000, 100, 16, [0.001, 0.01, 0.1]), ([10_000, 100_000], [1, 64])
    flush = None if args.no_flush else torch.zeros((FLUSH_BYTES if not args.quick else 4 * 2**20) // 4)
    load_before = os.getloadavg()[0]
    bandwidth = memory_bandwidth(DEVICE, 4 * 2**20 if args.quick else 256 * 2**20, repeats=args.repeats)
    copy_gbps = max(v for k, v in bandwidth.items() if k.startswith("copy"))
    records: list[dict] = []
    t0 = time.perf_counter()
    if "lif_step" in ops:
        for N, M, steps in lif_cases:
            records += bench_lif(N, M, steps, 3 * args.repeats, copy_gbps, fast, flush)
    if "spike_propagate" in ops:
        N, deg, D, fractions = prop
        records += bench_propagate(N, deg, D, fractions, args.repeats, copy_gbps, fast, flush)
    if "sdr_match" in ops:
        Ms, Bs = sdr
        records += bench_sdr(2048, 40, 20, Ms, Bs, args.repeats, copy_gbps, fast, flush)
    result = {
        "host": socket.gethostname(), "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "machine": machine(DEVICE), "threads": args.threads,
        "threads_note": f"torch.set_num_threads({args.threads}) and numba.set_num_threads({args.threads}): "
                        "a shared 2-core VM; numba's prange runs serially at 1 thread",
        "cache_flushed_before_each_call": flush is not None,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "copy_gbps": round(copy_gbps, 2), "bandwidth_gbps": {k: round(v, 2) for k, v in bandwidth.items()},
        "targets": {"lif_step": "the fused loop beats the reference's ~8 torch ops with temporaries (speed-up > 1)",
                    "spike_propagate": "event-driven beats dense W·s at sparse activity (<= 1 %)",
                    "sdr_match": "32-64x less memory than float (float32 / packed = 32)"},
        "all_equal": all(r.get("equal", True) and r.get("equal_after_timing", True) for r in records
                         if not r["backend"].endswith("(peer)")),
        "peers_close": all(r.get("allclose", r.get("equal", True)) for r in records if r["backend"].endswith("(peer)")),
        "seconds": round(time.perf_counter() - t0, 1),
        "records": records,
    }
    print(f"{result['host']}  threads {args.threads}  copy {copy_gbps:.1f} GB/s  load {load_before:.2f} -> "
          f"{result['load_avg_1min_after']:.2f}  all equal {result['all_equal']}")
    for r in records:
        gb = f"{r['gbps']:7.2f} GB/s {r['roofline']:6.3f} roof" if "gbps" in r else ""
        peer = f"{r['speedup_vs_peer']:7.2f}x peer" if "speedup_vs_peer" in r else ""
        print(f"{r['op']:<15} {r['case']:<62} {r['backend']:<26} {r['ms']:10.4f} ms "
              f"{r['speedup_vs_reference']:7.2f}x ref {peer:>13} {gb}  eq={r.get('equal')}")
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / "snn-kernels-vm.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
