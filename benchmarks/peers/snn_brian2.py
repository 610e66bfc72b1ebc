"""The brian2 side of benchmarks/snn_peers.py: the shared network (an .npz written by snn_peers.py) in brian2, timed
with brian2's own main-loop clock. Runs in the peers' venv (benchmarks/peers/setup_snn_peers.sh: brian2 needs
numpy < 2.4), as a subprocess of snn_peers.py; writes a JSON of timings and an .npz of the spikes.

    .venv-snnpeers/bin/python benchmarks/peers/snn_brian2.py SPEC.npz OUT.json --target cython --repeats 5
    .venv-snnpeers/bin/python benchmarks/peers/snn_brian2.py SPEC.npz OUT.json --expect LABKIT.npz --serve
    .venv-snnpeers/bin/python benchmarks/peers/snn_brian2.py SPEC.npz OUT.json --target cpp_standalone

The model (labkit.snn's conventions mapped to brian2's; see labkit/snn/network.py):

    dv/dt = (-(v - v_rest) + R I) / tau_m  (unless refractory),     dI/dt = -I / tau_s,     method="exact"
    threshold v >= v_th, reset v = v_reset, refractory = t_ref + dt,     on_pre: I_post += w, delay = d·dt

- brian2 stamps a spike at the start of its step (t_n), labkit at the end (t_{n+1}); a delay of d steps is d·dt in
  both, so the input source's spike at labkit step k is given to brian2's SpikeGeneratorGroup at (k − 1)·dt.
- brian2 is refractory while timestep(t − lastspike) < timestep(refractory): the spike's own step plus the next
  n_ref = t_ref/dt steps, hence refractory = t_ref + dt.

Timings per run: ``loop_s`` brian2's ``device._last_run_time`` (the main simulation loop only) and ``wall_s`` the
whole ``run()`` call; ``codegen_s`` = wall − loop is code generation (+ compilation in the first run, the check run:
a fresh Cython cache directory, cold). cpp_standalone: ``build_s`` code generation + compilation (make) once, then
each run is a run of the binary, with its own main-loop time from ``last_run_info.txt``. One thread (no OpenMP).
``drive`` (shared with snn_snntorch.py): an untimed check run compared with labkit's spikes, then timed runs
(``--serve``: one per "run" line on stdin, so that the simulators take turns).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def build(spec, b2):
    """The network in brian2 (the caller has chosen the device and target). Returns (net, group, monitor)."""
    ms, mV = b2.ms, b2.mV
    dt = float(spec["dt"])
    b2.defaultclock.dt = dt * ms
    p = {k[2:]: float(spec[k]) for k in spec.files if k.startswith("p_")}
    ns = dict(tau_m=p["tau_m"] * ms, tau_s=p["tau_s"] * ms, R=p["R"], v_rest=p["v_rest"] * mV,
              v_reset=p["v_reset"] * mV, v_th=p["v_th"] * mV)
    eqs = """dv/dt = (-(v - v_rest) + R * I) / tau_m : volt (unless refractory)
             dI/dt = -I / tau_s : volt"""
    n, n_in = int(spec["n"]), int(spec["n_in"])
    G = b2.NeuronGroup(n, eqs, threshold="v >= v_th", reset="v = v_reset", refractory=(p["t_ref"] + dt) * ms,
                       method="exact", namespace=ns, name="neurons")
    G.v = spec["v0"] * mV
    G.I = 0 * mV
    P = b2.SpikeGeneratorGroup(n_in, spec["in_neurons"], (spec["in_steps"] - 1) * dt * ms, name="source")
    groups = []
    for name, pre, (ip, ix, w, d) in (("syn_in", P, ("in_indptr", "in_indices", "in_weights", "in_delays")),
                                      ("syn_rec", G, ("indptr", "indices", "weights", "delays"))):
        S = b2.Synapses(pre, G, "w : volt", on_pre="I_post += w", name=name)
        indptr = spec[ip]
        S.connect(i=np.repeat(np.arange(indptr.size - 1), np.diff(indptr)), j=spec[ix])
        S.w = spec[w] * mV
        S.delay = spec[d] * dt * ms
        groups.append(S)
    M = b2.SpikeMonitor(G, name="spikes")
    net = b2.Network(G, P, *groups, M)
    return net, G, M


def spikes_of(M, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps in labkit's stamp: brian2's t/dt + 1, neurons) in time order."""
    steps = np.rint(np.asarray(M.t_) / (dt * 1e-3)).astype(np.int64) + 1
    ids = np.asarray(M.i).astype(np.int64)
    order = np.lexsort((ids, steps))
    return steps[order], ids[order]


def compare_spikes(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict:
    """Two spike trains (steps, neurons), each sorted by (step, neuron): the totals, whether they are identical, the
    first step at which they differ (None if identical) and the relative difference of the totals."""
    (s0, i0), (s1, i1) = ref, got
    identical = s0.size == s1.size and bool(np.array_equal(s0, s1) and np.array_equal(i0, i1))
    first = None
    if not identical:
        k = min(s0.size, s1.size)
        diff = np.flatnonzero((s0[:k] != s1[:k]) | (i0[:k] != i1[:k]))
        first = int(min(s0[diff[0]], s1[diff[0]])) if diff.size else int((s0 if s0.size > k else s1)[k])
    return dict(reference=int(s0.size), spikes=int(s1.size), identical=identical, first_divergence_step=first,
                rel_diff=abs(int(s1.size) - int(s0.size)) / max(int(s0.size), 1))


def check_expected(path: str | None, steps: np.ndarray, ids: np.ndarray, tolerance: float) -> dict | None:
    """Before timing: the check run's spikes against labkit's (``--expect``). Returns the comparison; a relative
    difference of the totals above ``tolerance`` is marked ``fail``."""
    if path is None:
        return None
    ref = np.load(path)
    match = compare_spikes((ref["steps"], ref["neurons"]), (steps, ids))
    match["fail"] = match["rel_diff"] > tolerance
    return match


def drive(run_once, info: dict, args) -> None:
    """The protocol shared by the peer scripts. ``run_once()`` -> (timings dict with ``loop_s``, steps, neurons).
    First an untimed check run, compared with ``--expect`` (a mismatch above ``--tolerance`` stops: nothing is
    timed). Then either ``--repeats`` timed runs, or with ``--serve`` one timed run per "run" line on stdin (so
    benchmarks/snn_peers.py can take turns between the simulators), until "quit". Protocol lines on stdout start
    with "@@". Writes ``out`` (JSON: info, check run, runs) and the check run's spikes (``out`` with .npz)."""
    check, steps, ids = run_once()
    first = (steps, ids)
    info.update(check_run=dict(check, spikes=int(steps.size)), match=check_expected(args.expect, steps, ids,
                                                                                    args.tolerance))
    np.savez_compressed(os.path.splitext(args.out)[0] + ".npz", steps=steps, neurons=ids)
    if info["match"] is not None and info["match"]["fail"]:
        print("@@fail " + json.dumps(info), flush=True)
        sys.exit(f"spike totals differ from labkit's by more than {args.tolerance:g} (relative): not timed "
                 f"({info['match']})")
    print("@@ready " + json.dumps(info), flush=True)
    runs = info["runs"] = []

    def timed():
        timing, s, i = run_once()
        runs.append(dict(timing, spikes=int(s.size), identical_to_check_run=compare_spikes(first, (s, i))["identical"]))
        return runs[-1]

    if args.serve:
        for line in sys.stdin:
            if line.strip() == "run":
                print("@@result " + json.dumps(timed()), flush=True)
            elif line.strip() == "quit":
                break
    else:
        for r in range(args.repeats):
            print(f"repeat {r}: {timed()}", flush=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)
    print("@@done", flush=True)


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("spec", help="the network (.npz from benchmarks/snn_peers.py)")
    ap.add_argument("out", help="JSON of timings; the check run's spikes go to OUT with .npz")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after the check run")
    ap.add_argument("--serve", action="store_true", help="time one run per 'run' line on stdin (until 'quit')")
    ap.add_argument("--expect", default=None, help="labkit's spikes (.npz: steps, neurons), checked before timing")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest relative difference of the spike totals")


def cython_runner(spec, target: str) -> tuple:
    """brian2's runtime mode (``target`` "cython" or "numpy"): build once, ``store``; each run ``restore``s and
    runs. The first run generates and compiles the code (a fresh Cython cache directory: cold)."""
    import brian2 as b2

    cache = tempfile.mkdtemp(prefix="b2cython_")
    b2.prefs.codegen.target = target
    b2.prefs.codegen.runtime.cython.cache_dir = cache
    b2.prefs.codegen.runtime.cython.multiprocess_safe = False
    T, dt = float(spec["T"]), float(spec["dt"])
    t0 = time.perf_counter()
    net, G, M = build(spec, b2)
    setup_s = time.perf_counter() - t0
    net.store("init")
    count = [0]

    def run_once():
        if count[0]:
            net.restore("init")
        count[0] += 1
        t0 = time.perf_counter()
        net.run(T * b2.ms)
        wall = time.perf_counter() - t0
        loop = float(b2.device._last_run_time)
        steps, ids = spikes_of(M, dt)
        return dict(loop_s=loop, wall_s=wall, codegen_s=wall - loop), steps, ids

    return run_once, dict(target=target, setup_s=setup_s, cache_dir=cache)


def standalone_runner(spec) -> tuple:
    """brian2's cpp_standalone device: code generation and ``make`` once (``build_s``), then each run is one run of
    the compiled binary, its main loop timed by the binary itself (``last_run_info.txt``)."""
    import brian2 as b2

    directory = tempfile.mkdtemp(prefix="b2standalone_")
    b2.set_device("cpp_standalone", directory=directory, build_on_run=False)
    b2.prefs.devices.cpp_standalone.openmp_threads = 0  # one thread
    T, dt = float(spec["T"]), float(spec["dt"])
    t0 = time.perf_counter()
    net, G, M = build(spec, b2)
    net.run(T * b2.ms)  # only records the run in standalone mode
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    b2.device.build(directory=directory, compile=True, run=False, with_output=False)
    build_s = time.perf_counter() - t0

    def run_once():
        t0 = time.perf_counter()
        b2.device.run(directory=directory, with_output=False)
        wall = time.perf_counter() - t0
        loop = float(b2.device._last_run_time)
        steps, ids = spikes_of(M, dt)
        return dict(loop_s=loop, wall_s=wall), steps, ids

    return run_once, dict(target="cpp_standalone", setup_s=setup_s, build_s=build_s, directory=directory)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--target", default="cython", choices=["cython", "numpy", "cpp_standalone"])
    args = ap.parse_args(argv)
    import brian2 as b2

    spec = np.load(args.spec)
    run_once, info = standalone_runner(spec) if args.target == "cpp_standalone" else cython_runner(spec, args.target)
    info.update(brian2=b2.__version__, numpy=np.__version__, python=sys.version.split()[0])
    try:
        drive(run_once, info, args)
    finally:
        shutil.rmtree(info.get("cache_dir") or info.get("directory"), ignore_errors=True)


if __name__ == "__main__":
    main()
