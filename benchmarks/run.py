"""Kernel benchmarks: each labkit.kernels op against its torch reference, a peer library and the copy
bandwidth of the same machine (the roofline of a memory-bound op). Writes benchmarks/results/<host>.json.
Ops: ``attend`` (decode attention), ``tree_attend`` (tree verification attention; with 64 queries per
K/V byte it is bound by arithmetic, so its records also give GFLOP/s) and ``verify_sample`` (speculative
verify-and-sample; no peer library in torch), and chapter 2's ``project_attend`` (attention over a rank-r
cache; also timed against full-cache ``attend``: target speed-up >= 0.7 D/r), ``quant_attend`` (attention over
a 2/4-bit KIVI cache; target >= 3x its dequantize-then-attend reference) and ``evict_compact`` (top-k
eviction + gather).

    python benchmarks/run.py                          # full run, writes benchmarks/results/<host>.json
    python benchmarks/run.py --quick --out /tmp/x.json   # smoke test: tiny sizes, 2 repeats
    python benchmarks/run.py --ops project_attend,quant_attend --out /tmp/ch2.json   # only some ops

Every timing is the median of >= 5 repeats (9 on the CPU, 50 on a GPU) after a warm-up, with the
last-level cache flushed before each call (a decode step finds its KV cache cold: the other layers ran
in between; verify_sample is timed warm: its logits were just written); the backends take turns, and
ratios are taken within one run, on one machine.
``bytes moved`` counts what the op must read and write (q, K, V, out); a copy of N bytes moves 2N (read
+ write), so ``roofline = achieved GB/s / copy GB/s`` is comparable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from labkit.kernels import available_backends  # noqa: E402
from labkit.kernels.attend import attend, reference  # noqa: E402
from labkit.kernels.delta_rule import delta_rule  # noqa: E402
from labkit.kernels.delta_rule import reference as delta_rule_reference  # noqa: E402
from labkit.kernels.delta_step import delta_step  # noqa: E402
from labkit.kernels.delta_step import reference as delta_step_reference  # noqa: E402
from labkit.kernels.evict_compact import evict_compact  # noqa: E402
from labkit.kernels.evict_compact import reference as evict_reference  # noqa: E402
from labkit.kernels.project_attend import project_attend  # noqa: E402
from labkit.kernels.project_attend import reference as project_reference  # noqa: E402
from labkit.kernels.quant_attend import quant_attend, quantize_keys, quantize_values  # noqa: E402
from labkit.kernels.quant_attend import reference as quant_reference  # noqa: E402
from labkit.kernels.titans_update import reference as titans_reference  # noqa: E402
from labkit.kernels.titans_update import titans_update  # noqa: E402
from labkit.kernels.tree_attend import reference as tree_reference  # noqa: E402
from labkit.kernels.tree_attend import tree_attend, tree_mask  # noqa: E402
from labkit.kernels.verify_sample import reference as verify_reference  # noqa: E402
from labkit.kernels.verify_sample import verify_sample  # noqa: E402

OPS = ("attend", "tree_attend", "verify_sample", "project_attend", "quant_attend", "evict_compact", "delta_rule",
       "delta_step", "titans_update")
FLUSH_BYTES = 128 * 2**20  # larger than any last-level cache we expect (CPU L3, GPU L2)


# ---- timing ----------------------------------------------------------------------------------------------


class Timer:
    """Median time in ms of each of several functions, cold cache, on the CPU or one CUDA device.

    The functions take turns (round-robin), so a machine whose speed drifts during the run (a shared
    2-core VM) slows them all alike and their ratios stay fair. On CUDA each call is timed with events.
    """

    def __init__(self, device: torch.device, repeats: int, flush_bytes: int = FLUSH_BYTES):
        self.device, self.repeats = device, repeats
        self.flush_buffer = torch.empty(flush_bytes // 4, dtype=torch.float32, device=device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def flush(self) -> None:
        """Read and write a buffer larger than the cache, evicting K and V (on CUDA: queued, untimed)."""
        self.flush_buffer.add_(1.0)

    def measure(self, fns: dict[str, Callable[[], object]], flush: bool = True) -> dict[str, float]:
        for fn in fns.values():  # warm-up: compiles (numba, triton) and allocates
            fn()
            fn()
        self.sync()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(self.repeats):
            for name, fn in fns.items():
                if flush:
                    self.flush()
                times[name].append(self._time_one(fn))
        return {name: statistics.median(ts) for name, ts in times.items()}

    def _time_one(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)


def take_turns(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, flush: torch.Tensor | None = None,
               sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median wall time in ms of each function: warm-up calls first, then the functions take turns (so a drifting
    machine slows them alike), each timed call preceded (untimed) by a pass over ``flush`` when given, and followed
    by ``sync`` (e.g. ``torch.cuda.synchronize``) inside the timing when given."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if flush is not None:
                flush.add_(1.0)
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def kernel_records(op_name: str, case: str, timings: dict[str, float], ref: str, moved: float | None,
                   copy_gbps: float, peer: str | None = None, **extra) -> list[dict]:
    """One JSON record per backend: ms, speed-up over ``ref`` (and ``peer``), and with ``moved`` bytes the GB/s and
    roofline fraction (of the copy bandwidth); ``extra[backend]`` adds fields to that backend's record."""
    out = []
    for name, ms in timings.items():
        r = {"op": op_name, "case": case, "backend": name, "ms": round(ms, 4),
             "speedup_vs_reference": round(timings[ref] / ms, 2)}
        if peer is not None:
            r["speedup_vs_peer"] = round(timings[peer] / ms, 2)
        if moved is not None:
            gbps = moved / ms / 1e6
            r.update(gbps=round(gbps, 3), roofline=round(gbps / copy_gbps, 4), bytes=int(moved))
        r.update(extra.get(name, {}))
        out.append(r)
    return out

def memory_bandwidth(device: torch.device, nbytes: int, repeats: int) -> dict[str, float]:
    """GB/s of copying ``nbytes`` (counted as 2 * nbytes moved: read + write) with torch and numpy, and of
    only reading them (``sum``, for reference: no write-allocate traffic), median over repeats."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    runs = {"copy torch": lambda: dst.copy_(src), "read torch": lambda: src.sum()}
    if device.type == "cpu":
        a, b = src.numpy(), dst.numpy()
        runs["copy numpy"] = lambda: np.copyto(b, a)
    ms = Timer(device, repeats, flush_bytes=4 * 2**20).measure(runs, flush=False)
    return {name: (2 if name.startswith("copy") else 1) * nbytes / t / 1e6 for name, t in ms.items()}


# ---- the cases -------------------------------------------------------------------------------------------


def attend_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int]],
                   copy_gbps: float) -> list[dict]:
    """Decode attention: reference (torch), the peer (torch SDPA), and every fast backend on ``device``."""
    fast = [b for b in available_backends(device) if b != "torch"]
    if device.type == "cpu":
        fast = [b for b in fast if b != "triton"]  # the Triton interpreter is a test tool, not a benchmark
    records = []
    for B, H, T, D in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, K, V = (torch.randn(*s, generator=g).to(device) for s in ((B, H, D), (B, H, T, D), (B, H, T, D)))
        moved = (2 * q.numel() + K.numel() + V.numel()) * q.element_size()  # q and out, K and V
        expected = reference(q, K, V)

        def sdpa(q=q, K=K, V=V):
            return torch.nn.functional.scaled_dot_product_attention(q[:, :, None, :], K, V)[:, :, 0, :]

        runs = {"reference": lambda q=q, K=K, V=V: reference(q, K, V), "torch-sdpa (peer)": sdpa}
        for backend in fast:
            runs[backend] = lambda q=q, K=K, V=V, backend=backend: attend(q, K, V, backend=backend)
        case = f"B*H={B * H},T={T},D={D}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            err = (runs[name]().float() - expected.float()).abs().max().item()
            gbps = moved / ms / 1e6
            records.append({
                "op": "attend", "case": case, "backend": name, "ms": round(ms, 4), "gbps": round(gbps, 2),
                "roofline": round(gbps / copy_gbps, 3),
                "speedup_vs_reference": round(timings["reference"] / ms, 2),
                "bytes": moved, "max_abs_err": float(f"{err:.3g}"),
            })
    return records


def _fast_backends(device: torch.device) -> list[str]:
    fast = [b for b in available_backends(device) if b != "torch"]
    if device.type == "cpu":
        fast = [b for b in fast if b != "triton"]  # the Triton interpreter is a test tool, not a benchmark
    return fast


def _random_tree(N: int, seed: int = 0) -> torch.Tensor:
    """A random tree of N nodes, like a draft tree: each node's parent drawn from the earlier nodes."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, N)])


def tree_attend_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int]],
                        copy_gbps: float) -> list[dict]:
    """Tree verification attention: reference, the peer (torch SDPA with the dense mask), fast backends.

    A case is (B, H, N, P, D): N tree tokens over a prefix of P. ``gflops`` counts the dense work the
    reference does (4 B H N (P + N) D); with N queries per K/V row the op is compute-bound on a CPU.
    """
    records = []
    for B, H, N, P, D in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        shapes = ((B, H, N, D), (B, H, P, D), (B, H, P, D), (B, H, N, D), (B, H, N, D))
        q, Kp, Vp, Kt, Vt = (torch.randn(*s, generator=g).to(device) for s in shapes)
        parents = _random_tree(N)
        args = (q, Kp, Vp, Kt, Vt, parents)
        moved = (2 * q.numel() + Kp.numel() + Vp.numel() + Kt.numel() + Vt.numel()) * q.element_size()
        flops = 4 * B * H * N * (P + N) * D
        expected = tree_reference(*args)

        def sdpa(q=q, Kp=Kp, Vp=Vp, Kt=Kt, Vt=Vt, parents=parents, P=P, N=N):
            mask = torch.cat([torch.ones(N, P, dtype=torch.bool, device=q.device),
                              tree_mask(parents).to(q.device)], dim=1)
            return torch.nn.functional.scaled_dot_product_attention(
                q, torch.cat([Kp, Kt], dim=2), torch.cat([Vp, Vt], dim=2), attn_mask=mask)

        runs = {"reference": lambda args=args: tree_reference(*args), "torch-sdpa (peer)": sdpa}
        for backend in _fast_backends(device):
            runs[backend] = lambda args=args, backend=backend: tree_attend(*args, backend=backend)
        case = f"tree B*H={B * H},N={N},P={P},D={D}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            err = (runs[name]().float() - expected.float()).abs().max().item()
            gbps = moved / ms / 1e6
            records.append({
                "op": "tree_attend", "case": case, "backend": name, "ms": round(ms, 4), "gbps": round(gbps, 2),
                "roofline": round(gbps / copy_gbps, 3),
                "speedup_vs_reference": round(timings["reference"] / ms, 2),
                "bytes": moved, "gflops": round(flops / ms / 1e6, 1), "max_abs_err": float(f"{err:.3g}"),
            })
    return records


def verify_sample_records(device: torch.device, timer: Timer, cases: list[tuple[int, int]],
                          copy_gbps: float) -> list[dict]:
    """Speculative verify-and-sample: reference and the fast backends (no peer library in torch).

    A case is (γ, V). The draft is the target blurred a little and the acceptance uniforms are small, so
    every draft token is accepted and the bonus token drawn: the worst case, every row read. ``bytes`` is
    what that reads once (logits and draft probabilities). Timed with a warm cache: the logits were just
    written by the target's last layer, and at ~0.1 ms a cold call mostly times the Python interpreter's
    own cache misses (both backends alike).
    """
    records = []
    for gamma, V in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        logits = 3 * torch.randn(gamma + 1, V, generator=g)
        q = torch.softmax(logits[:gamma] + 0.3 * torch.randn(gamma, V, generator=g), dim=-1)
        tokens = torch.multinomial(q, 1, generator=g).flatten()
        uniforms = torch.rand(gamma + 1, generator=g) * torch.tensor([0.05] * gamma + [1.0])
        args = tuple(x.to(device) for x in (logits, q, tokens, uniforms))
        moved = logits.numel() * logits.element_size() + q.numel() * q.element_size()
        expected = verify_reference(*args)
        runs = {"reference": lambda args=args: verify_reference(*args)}
        for backend in _fast_backends(device):
            runs[backend] = lambda args=args, backend=backend: verify_sample(*args, backend=backend)
        case = f"verify γ={gamma},V={V}"
        timings = timer.measure(runs, flush=False)
        for name, ms in timings.items():
            gbps = moved / ms / 1e6
            records.append({
                "op": "verify_sample", "case": case, "backend": name, "ms": round(ms, 4), "gbps": round(gbps, 2),
                "roofline": round(gbps / copy_gbps, 3),
                "speedup_vs_reference": round(timings["reference"] / ms, 2),
                "bytes": moved, "n_accepted": expected[0], "agrees_with_reference": runs[name]() == expected,
            })
    return records


def _record(op: str, case: str, name: str, ms: float, timings: dict[str, float], moved: int, copy_gbps: float,
            **extra) -> dict:
    gbps = moved / ms / 1e6
    return {"op": op, "case": case, "backend": name, "ms": round(ms, 4), "gbps": round(gbps, 2),
            "roofline": round(gbps / copy_gbps, 3), "speedup_vs_reference": round(timings["reference"] / ms, 2),
            "bytes": moved, **extra}


def project_attend_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int]],
                           copy_gbps: float) -> list[dict]:
    """Attention over a rank-r cache: its reference, full-cache ``attend`` (the fast backend, on the D-wide
    cache the projection replaces) and the fast backends. A case is (B, H, T, D, r).
    ``speedup_vs_full_attend`` = attend's time / this time; the target is 0.7 D/r (the traffic falls by D/r)."""
    records = []
    for B, H, T, D, r in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, K, V = (torch.randn(*s, generator=g) for s in ((B, H, D), (B, H, T, D), (B, H, T, D)))
        U = torch.linalg.qr(torch.randn(H, D, D, generator=g))[0][..., :r].contiguous()
        # contiguous, like a real cache (einsum may return a permuted layout)
        Kc, Vc = (torch.einsum("bhtd,hdr->bhtr", x, U).contiguous() for x in (K, V))
        q, K, V, U, Kc, Vc = (x.to(device) for x in (q, K, V, U, Kc, Vc))
        moved = (2 * q.numel() + Kc.numel() + Vc.numel() + 2 * U.numel()) * q.element_size()
        expected = project_reference(q, Kc, Vc, U, U)
        fast = _fast_backends(device)
        runs = {"reference": lambda a=(q, Kc, Vc, U, U): project_reference(*a)}
        if fast:
            runs[f"attend full D ({fast[0]})"] = lambda a=(q, K, V), b=fast[0]: attend(*a, backend=b)
        for backend in fast:
            runs[backend] = lambda a=(q, Kc, Vc, U, U), b=backend: project_attend(*a, backend=b)
        case = f"proj B*H={B * H},T={T},D={D},r={r}"
        timings = timer.measure(runs)
        full = timings.get(f"attend full D ({fast[0]})") if fast else None
        for name, ms in timings.items():
            extra = {"target_vs_full": round(0.7 * D / r, 2)}
            if not name.startswith("attend"):
                extra["max_abs_err"] = float(f"{(runs[name]().float() - expected.float()).abs().max().item():.3g}")
            if full is not None:
                extra["speedup_vs_full_attend"] = round(full / ms, 2)
            records.append(_record("project_attend", case, name, ms, timings, moved, copy_gbps, **extra))
    return records


def quant_attend_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int, int]],
                         copy_gbps: float) -> list[dict]:
    """Attention over a KIVI cache (groups of 32, a residual window of R fp32 tokens): the dequantize-then-
    attend reference (target: the fast backends >= 3x faster) and full-precision ``attend`` for comparison.
    A case is (B, H, T, D, bits, R); ``bytes`` counts the packed codes, scales, zeros and the residual."""
    records = []
    for B, H, T, D, bits, R in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, K, V = (torch.randn(*s, generator=g).to(device) for s in ((B, H, D), (B, H, T, D), (B, H, T, D)))
        Tq = T - R
        Kq, Vq = quantize_keys(K[:, :, :Tq], bits, 32), quantize_values(V[:, :, :Tq], bits, 32)
        Kr, Vr = K[:, :, Tq:].contiguous(), V[:, :, Tq:].contiguous()
        args = (q, Kq, Vq, Kr, Vr)
        moved = sum(x.numel() * x.element_size() for x in (*Kq[:3], *Vq[:3], Kr, Vr)) + 2 * q.numel() * 4
        expected = quant_reference(*args)
        fast = _fast_backends(device)
        runs = {"reference": lambda a=args: quant_reference(*a)}
        if fast:
            runs[f"attend fp32 ({fast[0]})"] = lambda a=(q, K, V), b=fast[0]: attend(*a, backend=b)
        for backend in fast:
            runs[backend] = lambda a=args, b=backend: quant_attend(*a, backend=b)
        case = f"kivi{bits} B*H={B * H},T={T},D={D},R={R}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            extra = {"target_vs_reference": 3.0}
            if not name.startswith("attend"):
                extra["max_abs_err"] = float(f"{(runs[name]().float() - expected.float()).abs().max().item():.3g}")
            records.append(_record("quant_attend", case, name, ms, timings, moved, copy_gbps, **extra))
    return records


def evict_compact_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int]],
                          copy_gbps: float) -> list[dict]:
    """Top-k eviction with compaction: reference (stable sort + gather) and the fast backends. A case is
    (B, H, T, D, k); ``bytes`` = scores read + the kept K/V rows read and written + the indices."""
    records = []
    for B, H, T, D, k in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        scores, K, V = (torch.randn(*s, generator=g).to(device) for s in ((B, H, T), (B, H, T, D), (B, H, T, D)))
        moved = scores.numel() * 4 + 2 * 2 * B * H * k * D * K.element_size() + B * H * k * 8
        expected = evict_reference(scores, K, V, k)
        runs = {"reference": lambda a=(scores, K, V, k): evict_reference(*a)}
        for backend in _fast_backends(device):
            runs[backend] = lambda a=(scores, K, V, k), b=backend: evict_compact(*a, backend=b)
        case = f"evict B*H={B * H},T={T},D={D},k={k}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            agrees = all(torch.equal(x, y) for x, y in zip(runs[name](), expected, strict=True))
            records.append(_record("evict_compact", case, name, ms, timings, moved, copy_gbps,
                                   agrees_with_reference=agrees))
    return records


def delta_rule_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int, bool]],
                       copy_gbps: float) -> list[dict]:
    """The chunkwise (gated) delta rule against the token-by-token torch loop (target: numba >= 5x, equal
    within 1e-5 relative). A case is (B, H, T, Dk, Dv, gated); ``bytes`` = q, k, v, o, the gates and S in/out;
    ``max_rel_err`` = max |o - o_ref| / max |o_ref|."""
    records = []
    for B, H, T, Dk, Dv, gated in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(B, H, T, Dk, generator=g)
        k = torch.nn.functional.normalize(torch.randn(B, H, T, Dk, generator=g), dim=-1)
        v = torch.randn(B, H, T, Dv, generator=g)
        beta = torch.rand(B, H, T, generator=g)
        alpha = 0.9 + 0.1 * torch.rand(B, H, T, generator=g) if gated else None
        S0 = torch.randn(B, H, Dk, Dv, generator=g)
        args = tuple(None if x is None else x.to(device) for x in (q, k, v, beta, alpha, S0))
        moved = 4 * (2 * q.numel() + v.numel() * 2 + beta.numel() * (2 if gated else 1) + 2 * S0.numel())
        expected = delta_rule_reference(*args)[0].float()
        runs = {"reference": lambda a=args: delta_rule_reference(*a)}
        for backend in _fast_backends(device):
            runs[backend] = lambda a=args, b=backend: delta_rule(*a, backend=b)
        case = f"{'gated ' if gated else ''}delta B*H={B * H},T={T},Dk={Dk},Dv={Dv}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            err = (runs[name]()[0].float() - expected).abs().max().item() / expected.abs().max().item()
            records.append(_record("delta_rule", case, name, ms, timings, moved, copy_gbps,
                                   target_vs_reference=5.0, max_rel_err=float(f"{err:.3g}")))
    return records


def delta_step_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, str]],
                       copy_gbps: float) -> list[dict]:
    """One fused decode step of a linear-attention memory against its torch reference (separate ops). A case
    is (B, H, Dk, Dv, rule), rule "linear" | "delta" | "gated-delta"; ``bytes`` = S read and S_new written
    (plus q, k, v, o): the roofline of a step is one read and one write of S."""
    records = []
    for B, H, Dk, Dv, rule in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(B, H, Dk, generator=g)
        k = torch.nn.functional.normalize(torch.randn(B, H, Dk, generator=g), dim=-1)
        v, S = torch.randn(B, H, Dv, generator=g), torch.randn(B, H, Dk, Dv, generator=g)
        beta = torch.rand(B, H, generator=g) if "delta" in rule else None
        alpha = 0.9 + 0.1 * torch.rand(B, H, generator=g) if "gated" in rule else None
        args = tuple(None if x is None else x.to(device) for x in (q, k, v, S, beta, alpha))
        moved = 4 * (2 * S.numel() + 2 * q.numel() + 2 * v.numel())
        expected = delta_step_reference(*args)
        runs = {"reference": lambda a=args: delta_step_reference(*a)}
        for backend in _fast_backends(device):
            runs[backend] = lambda a=args, b=backend: delta_step(*a, backend=b)
        case = f"step {rule} B*H={B * H},Dk={Dk},Dv={Dv}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            o, S_new = runs[name]()
            err = max((o.float() - expected[0].float()).abs().max().item(), (S_new - expected[1]).abs().max().item())
            records.append(_record("delta_step", case, name, ms, timings, moved, copy_gbps,
                                   max_abs_err=float(f"{err:.3g}")))
    return records


def titans_update_records(device: torch.device, timer: Timer, cases: list[tuple[int, int, int, int, int, bool]],
                          copy_gbps: float) -> list[dict]:
    """Titans' linear memory, chunk rule (C = 16), fused, against the token-by-token torch loop (target: numba
    >= 5x, equal within 1e-5 relative). A case is (B, H, T, Dk, Dv, full): full = momentum and forgetting on
    (else plain gradient steps); ``bytes`` = q, k, v, o, the gates and M (and S) in/out;
    ``max_rel_err`` = max |o - o_ref| / max |o_ref|."""
    records = []
    for B, H, T, Dk, Dv, full in cases:
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(B, H, T, Dk, generator=g)
        k = torch.nn.functional.normalize(torch.randn(B, H, T, Dk, generator=g), dim=-1)
        v = torch.randn(B, H, T, Dv, generator=g)
        theta = 0.1 * torch.rand(B, H, T, generator=g)
        eta = torch.rand(B, H, T, generator=g) if full else None
        alpha = 0.05 * torch.rand(B, H, T, generator=g) if full else None
        M0 = 0.1 * torch.randn(B, H, Dk, Dv, generator=g)
        S0 = torch.zeros(B, H, Dk, Dv) if full else None
        args = tuple(None if x is None else x.to(device) for x in (q, k, v, theta, eta, alpha, M0, S0))
        gates = theta.numel() * (3 if full else 1)
        moved = 4 * (2 * q.numel() + 2 * v.numel() + gates + 2 * M0.numel() * (2 if full else 1))
        expected = titans_reference(*args)[0].float()
        runs = {"reference": lambda a=args: titans_reference(*a)}
        for backend in _fast_backends(device):
            runs[backend] = lambda a=args, b=backend: titans_update(*a, backend=b)
        case = f"titans{' mom+forget' if full else ''} B*H={B * H},T={T},Dk={Dk},Dv={Dv}"
        timings = timer.measure(runs)
        for name, ms in timings.items():
            err = (runs[name]()[0].float() - expected).abs().max().item() / expected.abs().max().item()
            records.append(_record("titans_update", case, name, ms, timings, moved, copy_gbps,
                                   target_vs_reference=5.0, max_rel_err=float(f"{err:.3g}")))
    return records


# ---- report ----------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    info = {
        "cpu_count": os.cpu_count(), "cpu": _cpu_name(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        # other work on the machine while it ran (1-minute load average; on a 2-core VM, > 1 means contention)
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for name in ("numba", "triton"):
        try:
            module = __import__(name)
            info[name] = module.__version__
        except Exception:  # missing or broken install
            info[name] = None
    if info["numba"]:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(result: dict) -> None:
    bandwidth = "  ".join(f"{k} {v:.1f}" for k, v in result["bandwidth_gbps"].items())
    print(f"{result['host']}  {result['date']}  {result['machine']['device']}  "
          f"torch threads {result['machine']['torch_threads']}  GB/s: {bandwidth}  (roof {result['copy_gbps']:.1f})")
    header = (f"{'case':<34} {'backend':<18} {'ms':>9} {'GB/s':>8} {'roofline':>9} {'speedup':>8} "
              f"{'GFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    for r in result["records"]:
        gflops = f"{r['gflops']:>8.1f}" if "gflops" in r else ""
        if "speedup_vs_full_attend" in r:
            gflops = f"{r['speedup_vs_full_attend']:>6.2f}x vs full attend (target {r['target_vs_full']:.2f}x)"
        print(f"{r['case']:<34} {r['backend']:<18} {r['ms']:>9.3f} {r['gbps']:>8.2f} {r['roofline']:>9.2f} "
              f"{r['speedup_vs_reference']:>7.2f}x {gflops}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/<host>.json; --quick: no file unless given)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 7)")
    parser.add_argument("--ops", default=None,
                        help=f"comma-separated subset of ops to run (default all: {','.join(OPS)})")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    repeats = args.repeats or (2 if args.quick else 9 if device.type == "cpu" else 50)
    if args.quick:
        cases, copy_bytes, flush_bytes = [(1, 2, 64, 16), (1, 3, 200, 33)], 8 * 2**20, 4 * 2**20
        tree_cases, verify_cases = [(1, 2, 5, 16, 16)], [(2, 64)]
    else:
        cases, copy_bytes, flush_bytes = [(4, 8, 1024, 64), (4, 8, 8192, 64)], 256 * 2**20, FLUSH_BYTES
        tree_cases = [(1, 8, 64, 2048, 64), (1, 8, 16, 512, 64)]  # (B, H, N tree tokens, P prefix, D)
        verify_cases = [(4, 512), (4, 32000)]  # (γ, V)
    if args.quick:
        project_cases, quant_cases = [(1, 2, 64, 16, 4)], [(1, 2, 64, 16, 4, 0), (1, 2, 70, 16, 2, 6)]
        evict_cases = [(1, 2, 64, 8, 16)]
        delta_rule_cases = [(1, 2, 100, 16, 16, True)]  # (B, H, T, Dk, Dv, gated)
        delta_step_cases = [(1, 2, 16, 16, "gated-delta")]  # (B, H, Dk, Dv, rule)
        titans_cases = [(1, 2, 100, 16, 16, True)]  # (B, H, T, Dk, Dv, momentum + forgetting)
    else:
        project_cases = [(4, 8, 8192, 64, 16), (4, 8, 8192, 64, 32)]  # (B, H, T, D, r)
        quant_cases = [(4, 8, 8192, 64, 4, 0), (4, 8, 8192, 64, 2, 0), (4, 8, 8192, 64, 4, 128)]  # (..., bits, R)
        evict_cases = [(4, 8, 8192, 64, 2048)]  # (B, H, T, D, k)
        delta_rule_cases = [(1, 8, 2048, 64, 64, False), (1, 8, 2048, 64, 64, True)]  # (B, H, T, Dk, Dv, gated)
        delta_step_cases = [(4, 8, 128, 128, "linear"), (4, 8, 128, 128, "gated-delta")]  # (B, H, Dk, Dv, rule)
        titans_cases = [(1, 8, 2048, 64, 64, False), (1, 8, 2048, 64, 64, True)]  # (B, H, T, Dk, Dv, full)
    ops = OPS if args.ops is None else [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"--ops must name ops from {','.join(OPS)}, got {','.join(unknown)}")

    bandwidth = memory_bandwidth(device, copy_bytes, repeats=max(repeats, 5))
    copy_gbps = max(v for k, v in bandwidth.items() if k.startswith("copy"))
    timer = Timer(device, repeats, flush_bytes)
    result = {
        "host": socket.gethostname(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(device),
        "copy_gbps": round(copy_gbps, 2),
        "bandwidth_gbps": {k: round(v, 2) for k, v in bandwidth.items()},
        "ops": ops,
        "records": [],
    }
    runners = {
        "attend": lambda: attend_records(device, timer, cases, copy_gbps),
        "tree_attend": lambda: tree_attend_records(device, timer, tree_cases, copy_gbps),
        "verify_sample": lambda: verify_sample_records(device, timer, verify_cases, copy_gbps),
        "project_attend": lambda: project_attend_records(device, timer, project_cases, copy_gbps),
        "quant_attend": lambda: quant_attend_records(device, timer, quant_cases, copy_gbps),
        "evict_compact": lambda: evict_compact_records(device, timer, evict_cases, copy_gbps),
        "delta_rule": lambda: delta_rule_records(device, timer, delta_rule_cases, copy_gbps),
        "delta_step": lambda: delta_step_records(device, timer, delta_step_cases, copy_gbps),
        "titans_update": lambda: titans_update_records(device, timer, titans_cases, copy_gbps),
    }
    for op in ops:
        result["records"] += runners[op]()
    print_table(result)
    out = args.out
    if out is None and not args.quick and args.ops is not None:
        parser.error("--ops runs only some cases: give --out (results/<host>.json is for full runs)")
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / f"{socket.gethostname()}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
