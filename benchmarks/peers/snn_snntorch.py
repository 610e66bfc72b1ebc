"""The snnTorch and plain-torch side of benchmarks/snn_peers.py: the shared network (an .npz written by snn_peers.py)
stepped in torch on the CPU, float64, one thread. Runs in the peers' venv (benchmarks/peers/setup_snn_peers.sh) as a
subprocess of snn_peers.py; writes a JSON of timings and an .npz of the spikes.

    .venv-snnpeers/bin/python benchmarks/peers/snn_snntorch.py SPEC.npz OUT.json --mode snntorch --repeats 5
    .venv-snnpeers/bin/python benchmarks/peers/snn_snntorch.py SPEC.npz OUT.json --mode torch --repeats 5

Both modes step the same equations as labkit.snn (see labkit/snn/lif.py) with an event-driven propagation in torch:
the outgoing synapses of the neurons that spiked are gathered from the CSR arrays and ``index_add_``-ed into a delay
ring buffer (D, N) (slot (t + d) mod D; targets packed as d·N + j, the same trick as labkit's Numba loop). Per step
the neurons read the ring buffer's slot, then the spikes are propagated.

- ``snntorch``: the neuron is ``snntorch.Synaptic`` (alpha = e^{−dt/τ_s}, beta = e^{−dt/τ_m}, reset to zero) on
  u = v − v_rest, with syn = gain_syn·I (the input scaled by gain_syn): syn ← alpha·syn + gain_syn·I_in,
  u ← beta·u + syn is labkit's exact propagator. snnTorch's default delayed reset (the reset of a spike at step k
  zeroes u at step k+1) is labkit's refractory period of exactly one step, so this mode needs t_ref = dt and
  v_reset = v_rest; its threshold test is u > θ (labkit: v >= v_th; equal except on exact ties).
- ``torch``: the neuron in plain torch ops, labkit's step verbatim (any refractory period).

Timing per run: ``loop_s`` the simulation loop only (the tensors are built before the clock starts); the runs are
driven as in snn_brian2.py (``drive``: a check run against labkit's spikes first, then timed runs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from snn_brian2 import add_common_args, drive  # noqa: E402  (numpy only; brian2 is imported lazily)


def coefficients(p: dict, dt: float) -> dict:
    """labkit.snn.lif's exact propagator (LIFParams.coefficients), rewritten here: the peers' venv has no labkit."""
    decay_v = math.exp(-dt / p["tau_m"])
    delta = dt * (1.0 / p["tau_m"] - 1.0 / p["tau_s"])
    phi = 1.0 if delta == 0.0 else math.expm1(delta) / delta
    return dict(decay_v=decay_v, gain_syn=p["R"] * (dt / p["tau_m"]) * decay_v * phi,
                decay_syn=math.exp(-dt / p["tau_s"]), n_ref=int(round(p["t_ref"] / dt)))


class Propagator:
    """Event-driven CSR propagation into a ring buffer (D, N): ``add(t, rows)`` adds the synapses of ``rows`` (the
    presynaptic neurons that spiked at step t) into slots (t + d) mod D."""

    def __init__(self, indptr, indices, weights, delays, D: int, N: int):
        self.indptr = torch.from_numpy(np.asarray(indptr, np.int64))
        self.code = torch.from_numpy(np.asarray(delays, np.int64) * N + np.asarray(indices, np.int64))
        self.w = torch.from_numpy(np.asarray(weights, np.float64))
        self.D, self.N = D, N

    def add(self, flat: torch.Tensor, t: int, rows: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        total = int(counts.sum())
        if total == 0:
            return
        offsets = torch.cumsum(counts, 0) - counts
        row_of = torch.repeat_interleave(torch.arange(rows.numel()), counts, output_size=total)
        e = starts[row_of] + torch.arange(total) - offsets[row_of]
        target = self.code[e] + (t % self.D) * self.N
        target = torch.where(target >= self.D * self.N, target - self.D * self.N, target)
        flat.index_add_(0, target, self.w[e])


def simulate(spec, mode: str) -> tuple[float, np.ndarray, np.ndarray]:
    """One run of spec["T"] ms. Returns (loop seconds, spike steps in labkit's stamp, neurons)."""
    dt = float(spec["dt"])
    p = {k[2:]: float(spec[k]) for k in spec.files if k.startswith("p_")}
    c = coefficients(p, dt)
    n, n_steps = int(spec["n"]), int(spec["n_steps"])
    D = int(max(spec["delays"].max(), spec["in_delays"].max())) + 1
    rec = Propagator(spec["indptr"], spec["indices"], spec["weights"], spec["delays"], D, n)
    inp = Propagator(spec["in_indptr"], spec["in_indices"], spec["in_weights"], spec["in_delays"], D, n)
    steps, ids = spec["in_steps"], spec["in_neurons"]
    bounds = np.searchsorted(steps, np.arange(1, n_steps + 2))
    src = [torch.from_numpy(np.unique(ids[bounds[k]:bounds[k + 1]])) for k in range(n_steps)]  # step k + 1
    buf = torch.zeros(D, n, dtype=torch.float64)
    flat = buf.view(-1)
    out_steps, out_ids = [], []
    if mode == "snntorch":
        import snntorch as snn

        if c["n_ref"] != 1 or p["v_reset"] != p["v_rest"]:
            raise ValueError(f"snntorch mode needs t_ref = dt (one refractory step: snnTorch's delayed reset) and "
                             f"v_reset = v_rest, got t_ref = {p['t_ref']}, dt = {dt}, v_reset = {p['v_reset']}")
        lif = snn.Synaptic(alpha=torch.tensor(c["decay_syn"], dtype=torch.float64),
                           beta=torch.tensor(c["decay_v"], dtype=torch.float64),
                           threshold=torch.tensor(p["v_th"] - p["v_rest"], dtype=torch.float64),
                           reset_mechanism="zero")
        syn = torch.zeros(n, dtype=torch.float64)
        mem = torch.from_numpy(spec["v0"] - p["v_rest"]).clone()
        gain = c["gain_syn"]
        t0 = time.perf_counter()
        with torch.no_grad():
            for k in range(n_steps):
                slot = buf[k % D]
                spk, syn, mem = lif(slot * gain, syn, mem)
                slot.zero_()
                rows = torch.nonzero(spk).flatten()
                if rows.numel():
                    out_ids.append(rows)
                    out_steps.append(k + 1)
                inp.add(flat, k + 1, src[k])
                rec.add(flat, k + 1, rows)
        loop = time.perf_counter() - t0
    elif mode == "torch":
        v = torch.from_numpy(spec["v0"]).clone()
        I = torch.zeros(n, dtype=torch.float64)
        refrac = torch.zeros(n, dtype=torch.int64)
        v_rest, v_reset, v_th = p["v_rest"], p["v_reset"], p["v_th"]
        t0 = time.perf_counter()
        for k in range(n_steps):
            slot = buf[k % D]
            I1 = I + slot
            v_new = v_rest + (v - v_rest) * c["decay_v"] + I1 * c["gain_syn"]
            refractory = refrac > 0
            spiked = ~refractory & (v_new >= v_th)
            v = torch.where(refractory | spiked, v_reset, v_new)
            refrac = torch.where(spiked, c["n_ref"], torch.where(refractory, refrac - 1, 0))
            I = I1 * c["decay_syn"]
            slot.zero_()
            rows = torch.nonzero(spiked).flatten()
            if rows.numel():
                out_ids.append(rows)
                out_steps.append(k + 1)
            inp.add(flat, k + 1, src[k])
            rec.add(flat, k + 1, rows)
        loop = time.perf_counter() - t0
    else:
        raise ValueError(f"mode must be 'snntorch' or 'torch', got {mode!r}")
    ids_out = torch.cat(out_ids).numpy() if out_ids else np.zeros(0, np.int64)
    steps_out = np.repeat(np.asarray(out_steps, np.int64), [r.numel() for r in out_ids])
    return loop, steps_out, ids_out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--mode", default="snntorch", choices=["snntorch", "torch"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = np.load(args.spec)

    def run_once():
        loop, steps, ids = simulate(spec, args.mode)
        return dict(loop_s=loop), steps, ids

    info = dict(mode=args.mode, torch=torch.__version__, numpy=np.__version__, python=sys.version.split()[0],
                torch_threads=torch.get_num_threads())
    if args.mode == "snntorch":
        from importlib.metadata import version

        info["snntorch"] = version("snntorch")
    drive(run_once, info, args)


if __name__ == "__main__":
    main()
