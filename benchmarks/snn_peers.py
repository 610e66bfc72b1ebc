"""Chapter 6's simulator against its peers: the same spiking network in labkit.snn (Numba), brian2 (Cython runtime
and C++ standalone), snnTorch and a plain torch event-driven loop, with the spike trains checked before timing.
Writes benchmarks/results/snn-peers-vm.json (or --out).

    bash benchmarks/peers/setup_snn_peers.sh                  # once: .venv-snnpeers with brian2, snnTorch
    python benchmarks/snn_peers.py                            # full: 10k neurons, 1M synapses, dt = 1 and 0.1 ms
    python benchmarks/snn_peers.py --quick --out /tmp/s.json  # smoke test: 1k neurons, 100 ms, 2 repeats

The network (``make_network``): n = 10,000 current-based LIF neurons with exponential synaptic currents (labkit.snn's
exact propagator; τ_m = 20 ms, τ_s = 5 ms, v_th − v_rest = 15 mV, reset to rest, refractory 1 ms), 80 % excitatory
and 20 % inhibitory; recurrent CSR synapses with a fixed out-degree of 100 (p = 0.01, 1,000,000 synapses, no
self-connections; excitatory w ~ 0.5·U(0.5, 1.5) mV, inhibitory −5×), per-synapse integer delays uniform in
1..3 steps (1-3 ms at dt = 1 ms, 0.1-0.3 ms at dt = 0.1 ms); driven by 2,000 Poisson sources at 20 Hz
(out-degree 100, 200,000 synapses, w ~ 7·U(0.5, 1.5) mV, delay one step) whose spike times are drawn once and given
to every simulator; initial potentials uniform in [v_reset, v_th); 1 s of biological time. About 12 Hz, steady
(``rate_per_tenth_hz`` in the record).

The simulators (one thread each, not pinned: NUMBA_NUM_THREADS=1, torch.set_num_threads(1), brian2 without OpenMP;
OMP_WAIT_POLICY=PASSIVE; float64 everywhere):

- labkit: ``labkit.snn.Network(backend="numba")``, timed around ``net.run(T)`` (the network built before; spike
  recording on). Its first run (the check run) compiles the Numba kernels (a fresh NUMBA_CACHE_DIR unless
  --warm-numba-cache): reported as ``compile_s`` = check run − median run (≈ 0 in the second case: compiled).
- brian2 cython / cpp_standalone: benchmarks/peers/snn_brian2.py in .venv-snnpeers (brian2 needs numpy < 2.4). The
  main loop is brian2's own ``_last_run_time``; code generation and compilation (cold Cython cache; standalone:
  ``make``) are reported separately; the first run is the (untimed) check run.
- snntorch / torch: benchmarks/peers/snn_snntorch.py: ``snntorch.Synaptic`` (whose delayed reset to zero is a
  refractory period of one step) or labkit's step in plain torch ops, both with an event-driven torch propagation.

Before any peer is timed its check run's spikes are compared with labkit's (``--expect``): the totals must agree
within 0.1 % (float64 rounding differs between simulators; in practice the trains are identical), else it is not
timed. Then ``--repeats`` rounds in which every simulator runs once, in turn (the peers wait in their own processes,
``--serve``), so a shared machine's changing load hits all alike; each figure is the median of its runs and the
ratios (peer main loop / labkit's) come from this one invocation. Targets (issue 8): labkit >= 2x brian2 cython,
>= 5x snnTorch and the torch loop. The 1-minute load average before and after is recorded (on the 2-core VM,
> 1 means other work competed for the cores).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one thread, like every peer
if "--warm-numba-cache" not in sys.argv:  # a cold cache: the first run's compile time is real
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="snnpeers_numba_")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import machine  # noqa: E402

from labkit.snn import LIFParams, Network  # noqa: E402

PARAMS = dict(tau_m=20.0, tau_s=5.0, R=1.0, v_rest=-65.0, v_reset=-65.0, v_th=-50.0, t_ref=1.0)
PEERS = ("brian2-cython", "brian2-standalone", "snntorch", "torch")
TARGETS = {"brian2-cython": 2.0, "snntorch": 5.0, "torch": 5.0}
LABELS = {"labkit": "labkit (numba)", "brian2-cython": "brian2 cython", "brian2-standalone": "brian2 cpp_standalone",
          "snntorch": "snnTorch", "torch": "torch loop"}


def _fixed_out_degree(rng: np.random.Generator, m: int, n: int, k: int, no_self: bool) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """CSR (indptr (m+1,), indices (m·k,)) of k random targets in 0..n-1 per row (with repeats; sorted within a
    row; without i itself when no_self)."""
    j = rng.integers(0, n - 1 if no_self else n, size=(m, k))
    if no_self:
        j = j + (j >= np.arange(m)[:, None])  # skip i itself
    j.sort(axis=1)
    return np.arange(0, m * k + 1, k, dtype=np.int64), j.reshape(-1).astype(np.int64)


def make_network(seed: int = 0, n: int = 10_000, exc_frac: float = 0.8, k_rec: int = 100, n_in: int = 2_000,
                 k_in: int = 100, rate_in: float = 20.0, w_exc: float = 0.5, g_inh: float = 5.0, w_in: float = 7.0,
                 dt: float = 1.0, T: float = 1000.0, max_delay: int = 3) -> dict:
    """The shared network as plain arrays (saved to .npz for the peers). Recurrent CSR (indptr, indices, weights,
    delays uniform in 1..max_delay steps), input CSR (in_*), the input's spikes (in_steps >= 1 in labkit's stamp,
    in_neurons; sorted by step, then neuron), v0 (n,), the neuron parameters p_* (labkit.snn.LIFParams names)."""
    if n < 2 or k_rec < 1 or n_in < 1 or k_in < 1 or not 0 < exc_frac <= 1:
        raise ValueError(f"need n >= 2, k_rec >= 1, n_in >= 1, k_in >= 1, 0 < exc_frac <= 1, got n={n}, "
                         f"k_rec={k_rec}, n_in={n_in}, k_in={k_in}, exc_frac={exc_frac}")
    rng = np.random.default_rng(seed)
    n_exc = int(round(exc_frac * n))
    indptr, indices = _fixed_out_degree(rng, n, n, k_rec, True)
    sign = np.where(np.arange(n) < n_exc, w_exc, -g_inh * w_exc)
    weights = np.repeat(sign, k_rec) * rng.uniform(0.5, 1.5, n * k_rec)
    delays = rng.integers(1, max_delay + 1, n * k_rec).astype(np.int64)
    in_indptr, in_indices = _fixed_out_degree(rng, n_in, n, k_in, False)
    in_weights = w_in * rng.uniform(0.5, 1.5, n_in * k_in)
    in_delays = np.ones(n_in * k_in, np.int64)
    n_steps = int(round(T / dt))
    in_steps, in_neurons = np.nonzero(rng.random((n_steps + 1, n_in)) < rate_in * dt / 1000.0)
    keep = in_steps >= 1  # a source spike must come at or after the end of the first step
    v0 = rng.uniform(PARAMS["v_reset"], PARAMS["v_th"], n)
    return dict(dt=dt, T=T, n_steps=n_steps, n=n, n_exc=n_exc, n_in=n_in, v0=v0, indptr=indptr, indices=indices,
                weights=weights, delays=delays, in_indptr=in_indptr, in_indices=in_indices, in_weights=in_weights,
                in_delays=in_delays, in_steps=in_steps[keep].astype(np.int64),
                in_neurons=in_neurons[keep].astype(np.int64), **{f"p_{k}": v for k, v in PARAMS.items()})


def build_ours(spec: dict, backend: str = "numba") -> tuple[Network, object]:
    """The network in labkit.snn: a spike source "input" and one LIF population "neurons" with both CSR groups."""
    p = LIFParams(**{k: float(spec[f"p_{k}"]) for k in PARAMS})
    dt_ = float(spec["dt"])
    net = Network(dt=dt_, backend=backend)
    src = net.add_spike_source("input", int(spec["n_in"]), (spec["in_steps"] * dt_, spec["in_neurons"]))
    pop = net.add_lif("neurons", int(spec["n"]), p, v0=spec["v0"])
    net.connect(src, pop, (spec["in_indptr"], spec["in_indices"], spec["in_weights"]),
                delay=torch.from_numpy(spec["in_delays"]))
    net.connect(pop, pop, (spec["indptr"], spec["indices"], spec["weights"]), delay=torch.from_numpy(spec["delays"]))
    return net, pop


def run_ours(spec: dict, backend: str = "numba") -> tuple[dict, np.ndarray, np.ndarray]:
    """One run of a freshly built network: ({build_s, loop_s}, spike steps in labkit's stamp, neurons)."""
    t0 = time.perf_counter()
    net, pop = build_ours(spec, backend)
    t1 = time.perf_counter()
    net.run(float(spec["T"]), show_progress=False)
    t2 = time.perf_counter()
    times, ids = net.spikes(pop)
    return dict(build_s=t1 - t0, loop_s=t2 - t1), np.rint(times / float(spec["dt"])).astype(np.int64), ids


class Peer:
    """A peer simulator in its own venv, driven over stdin/stdout (``drive`` in benchmarks/peers/snn_brian2.py):
    started, it builds, compiles and makes its check run; then each ``run()`` times one run."""

    def __init__(self, name: str, python: str, spec_path: Path, expect: Path, work: Path):
        self.name, self.out = name, work / f"{name}.json"
        if name.startswith("brian2"):
            script, extra = "snn_brian2.py", ["--target", "cython" if name == "brian2-cython" else "cpp_standalone"]
        else:
            script, extra = "snn_snntorch.py", ["--mode", name]
        cmd = [python, str(ROOT / "benchmarks" / "peers" / script), str(spec_path), str(self.out), *extra, "--expect",
               str(expect), "--serve"]
        self.log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed in finish()
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, env=env)
        tag, self.info = self._read()
        self.start_s = time.perf_counter() - t0
        self.ok = tag == "@@ready"
        if not self.ok:
            self.info = dict(self.info or {}, error=f"{name}: {tag or 'exited'}; see its log ({self.log.name})")
        print(f"{name}: {'ready' if self.ok else 'FAILED'} after {self.start_s:.1f} s; check run "
              f"{(self.info.get('check_run') or {})}; vs labkit {self.info.get('match')}", flush=True)

    def _read(self) -> tuple[str | None, dict | None]:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                tag, _, payload = line.strip().partition(" ")
                return tag, json.loads(payload) if payload else None
            self.log.write(line)
        return None, None

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        tag, res = self._read()
        if tag != "@@result":
            raise RuntimeError(f"{self.name} stopped (see {self.log.name})")
        return res

    def finish(self) -> dict:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self._read()
        self.proc.wait()
        self.log.close()
        if self.ok and self.out.exists():
            self.info = json.loads(self.out.read_text())
        self.info["start_s"] = self.start_s
        return self.info


def run_case(spec: dict, peers: list[str], python: str, repeats: int, work: Path) -> dict:
    """Every simulator on one network. labkit's first run (which compiles) gives the reference spikes; each peer
    starts, compiles and makes its check run against them; then ``repeats`` rounds in which every simulator runs
    once, in turn (so that a shared machine's changing load affects them alike)."""
    spec_path = work / "spec.npz"
    np.savez(spec_path, **spec)
    check, steps, ids = run_ours(spec)
    print(f"labkit check run: {check}, {steps.size} spikes", flush=True)
    expect = work / "labkit_spikes.npz"
    np.savez(expect, steps=steps, neurons=ids)
    n_steps, n = int(spec["n_steps"]), int(spec["n"])
    tenth = np.bincount(((steps - 1) * 10) // n_steps, minlength=10)[:10]  # spikes per tenth of T
    case = dict(case=f"dt={spec['dt']:g} ms", dt=float(spec["dt"]), T=float(spec["T"]), steps=n_steps, neurons=n,
                synapses_recurrent=int(spec["indices"].size), synapses_input=int(spec["in_indices"].size),
                sources=int(spec["n_in"]), source_spikes=int(spec["in_steps"].size), spikes=int(steps.size),
                rate_hz=steps.size / n / (float(spec["T"]) / 1000.0),
                rate_per_tenth_hz=[round(float(b) / n / (float(spec["T"]) / 10000.0), 2) for b in tenth],
                simulators={}, ratios={}, verdicts={})
    running = {}
    for name in peers:
        if name == "snntorch" and round(float(spec["p_t_ref"]) / float(spec["dt"])) != 1:
            case["simulators"][name] = dict(skipped="snnTorch's delayed reset is a refractory period of one step "
                                                    f"only; here t_ref / dt = {spec['p_t_ref'] / spec['dt']:g}")
            continue
        peer = Peer(name, python, spec_path, expect, work)
        if peer.ok:
            running[name] = peer
        else:
            case["simulators"][name] = peer.finish()
    ours = []
    for r in range(repeats):
        timing, s, i = run_ours(spec)
        ours.append(dict(timing, spikes=int(s.size), identical_to_check_run=bool(np.array_equal(s, steps)
                                                                                and np.array_equal(i, ids))))
        line = [f"round {r}: labkit {timing['loop_s']:.3f} s"]
        for name, peer in running.items():
            line.append(f"{name} {peer.run()['loop_s']:.3f} s")
        print(", ".join(line), flush=True)
    loop = statistics.median(x["loop_s"] for x in ours)
    case["simulators"]["labkit"] = dict(backend="numba", check_run=check, runs=ours, loop_s=loop,
                                        compile_s=check["loop_s"] - loop)
    for name, peer in running.items():
        res = peer.finish()
        res["loop_s"] = statistics.median(x["loop_s"] for x in res["runs"])
        case["simulators"][name] = res
    return summarize(case)


def summarize(case: dict) -> dict:
    """The ratios (peer median / labkit median), the verdicts against TARGETS and the range of the per-round
    ratios (round r of a peer against round r of labkit: how much the shared machine's load moved them)."""
    ours = case["simulators"]["labkit"]
    case["ratios"], case["verdicts"], case["ratio_range_per_round"] = {}, {}, {}
    for name, res in case["simulators"].items():
        if name == "labkit" or "loop_s" not in res:
            continue
        case["ratios"][name] = res["loop_s"] / ours["loop_s"]
        per_round = [a["loop_s"] / b["loop_s"] for a, b in zip(res["runs"], ours["runs"])]
        case["ratio_range_per_round"][name] = [round(min(per_round), 2), round(max(per_round), 2)]
        if name in TARGETS:
            case["verdicts"][name] = "met" if case["ratios"][name] >= TARGETS[name] else "not met"
    return case


def records(cases: list[dict]) -> list[dict]:
    """Flat rows for labkit.viz.bench_bar: case, backend (the simulator), ms (the main loop), and the rest."""
    rows = []
    for c in cases:
        for key, res in c["simulators"].items():
            if "loop_s" not in res:
                continue
            match = res.get("match") or {}
            compile_s = res.get("compile_s", res.get("build_s", (res.get("check_run") or {}).get("codegen_s")))
            if key == "labkit":  # check run − median: ≈ 0 once the kernels are compiled (the second case)
                compile_s = max(compile_s, 0.0)
            rows.append(dict(case=c["case"], backend=LABELS[key], ms=round(1e3 * res["loop_s"], 2),
                             compile_s=None if compile_s is None else round(compile_s, 2),
                             spikes=match.get("spikes", c["spikes"]), spikes_labkit=c["spikes"],
                             identical_spikes=match.get("identical", True),
                             first_divergence_step=match.get("first_divergence_step"),
                             speedup_of_labkit=round(c["ratios"].get(key, 1.0), 2),
                             per_round_range=c.get("ratio_range_per_round", {}).get(key),
                             target=TARGETS.get(key), verdict=c["verdicts"].get(key)))
    return rows


def print_table(cases: list[dict]) -> None:
    print(f"{'case':<12} {'simulator':<24} {'loop ms':>9} {'compile s':>10} {'spikes':>8} {'same':>5} "
          f"{'labkit x':>9} {'target':>7}")
    for r in records(cases):
        target = f"{r['target']:.0f}x {r['verdict']}" if r["target"] else ""
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
        print(f"{r['case']:<12} {r['backend']:<24} {r['ms']:>9.1f} {comp:>10} {r['spikes']:>8} "
              f"{'yes' if r['identical_spikes'] else 'no':>5} {r['speedup_of_labkit']:>8.2f}x {target}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k neurons, 100 ms, 2 repeats (a smoke test)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/snn-peers-vm.json; --quick: no file unless given)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per simulator (default 9; quick 2)")
    ap.add_argument("--dts", default="1.0,0.1", help="comma-separated steps (ms); default 1.0,0.1")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--peer-python", default=str(ROOT / ".venv-snnpeers" / "bin" / "python"),
                    help="the peers' venv (benchmarks/peers/setup_snn_peers.sh)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm-numba-cache", action="store_true", help="keep Numba's cache (compile_s is then a load)")
    args = ap.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(peers) - set(PEERS):
        ap.error(f"--peers must name peers from {','.join(PEERS)}, got {','.join(sorted(set(peers) - set(PEERS)))}")
    if peers and not Path(args.peer_python).exists():
        ap.error(f"no peer venv at {args.peer_python}: run `bash benchmarks/peers/setup_snn_peers.sh` first")
    repeats = args.repeats or (2 if args.quick else 9)
    torch.set_num_threads(1)
    sizes = dict(n=1000, k_rec=100, n_in=200, k_in=100, T=100.0) if args.quick else {}
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="snnpeers_") as tmp:
        for k, dt_ in enumerate(float(x) for x in args.dts.split(",") if x.strip()):
            work = Path(tmp) / f"case{k}"
            work.mkdir()
            spec = make_network(seed=args.seed, dt=dt_, **sizes)
            cases.append(run_case(spec, peers, args.peer_python, repeats, work))
    result = dict(benchmark="snn_peers", host="vm" if not args.quick else socket.gethostname(),
                  date=dt.datetime.now().isoformat(timespec="seconds"), quick=args.quick,
                  command="python " + " ".join(["benchmarks/snn_peers.py", *(argv if argv is not None
                                                                             else sys.argv[1:])]),
                  machine=machine(torch.device("cpu")),
                  threads="1 per simulator, not pinned (NUMBA_NUM_THREADS=1, torch 1 thread, brian2 no OpenMP); "
                          "OMP_WAIT_POLICY=PASSIVE",
                  load_avg_1min_before=round(load_before, 2), load_avg_1min_after=round(os.getloadavg()[0], 2),
                  seconds=round(time.perf_counter() - t_start, 1), repeats=repeats, targets=TARGETS,
                  params=PARAMS, cases=cases, records=records(cases))
    print_table(cases)
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / "snn-peers-vm.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
