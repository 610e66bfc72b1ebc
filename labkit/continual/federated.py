r"""Federated Orthogonal Training (FOT): continual federated learning whose global updates avoid old tasks' inputs.

**Setting** (continual federated learning). K clients; tasks 0..T−1 arrive in turn and at task t client k holds a
shard D_k of task t's training set (split *non-iid*: per class, Dirichlet(α) proportions over the clients, or
*iid*: a uniform random split). A server keeps the global model θ. One communication round of FedAvg (McMahan
et al., 2017): every client starts from θ, trains locally (``train_task``: Adam, E epochs) to θ_k, and the server
applies the mean update weighted by the shard sizes n_k,

    Δ = Σ_k n_k (θ_k − θ) / Σ_k n_k,        θ ← θ + Δ.

Trained this way on task t, the global model overwrites tasks < t: *global catastrophic forgetting*.

**FOT** (Bakman et al., 2023). Write a linear layer y = W x + b as W̃ x̃ with W̃ = [W b]: (out, d+1) and
x̃ = [x; 1]. If every input x̃ the layer saw on old tasks lies in span(U) (U: (d+1, r), orthonormal columns), an
update with ΔW̃ U = 0 leaves W̃ x̃ unchanged on all of them. So the server projects each layer's aggregated update

    ΔW̃ ← ΔW̃ (I − U Uᵀ)

before applying it: the first layer's outputs on old data do not move, hence neither do the second layer's inputs,
and so on up the network (up to the part of the old inputs outside span(U)).

**Global principal subspace extraction** (after each task, per layer). Client k sends the Gram matrix of its layer
inputs at the final global model, C_k = Σ_{x∈D_k} x̃ x̃ᵀ: (d+1, d+1); the sum C = Σ_k C_k is an all-reduce, so no
input leaves a client. (C = R Rᵀ for the representation matrix R = [x̃_1 … x̃_N] whose SVD the paper takes; the
paper's clients send R_k O_k with a random orthogonal O_k, and R_k O_k (R_k O_k)ᵀ = R_k R_kᵀ, the same C.) As in
GPM (Saha et al., 2021) the energy the basis already holds is tr(Uᵀ C U) of tr(C); the residual
(I − UUᵀ) C (I − UUᵀ) = V Λ Vᵀ gives new directions, and U grows by the fewest top eigenvectors r' with

    tr(Uᵀ C U) + Σ_{i<r'} λ_i ≥ ε · tr(C)                              (ε = ``threshold``).

**Two ways to run it, one code path.** ``backend="sim"`` loops over the clients in one process. ``backend="gloo"``
starts one process per client (``spawn_gloo``: torch.multiprocessing spawn, ``init_method="env://"`` with
MASTER_ADDR/MASTER_PORT, a free port found at run time); a round is one all-reduce of the float64 vector
[n_k (θ_k − θ), n_k], the statistics another, and rank 0 (the server) projects and broadcasts θ. Both call the same
client and server functions, and sums are float64, so they agree to float precision (a test checks it).
``python -m labkit.continual.federated`` writes the full gloo run to ``labkit/assets/federated.json`` (``load``).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from labkit.continual._checks import positive_int as _positive_int
from labkit.continual.data import Task, permuted_digits
from labkit.continual.metrics import AccuracyMatrix
from labkit.continual.models import MLP, Params
from labkit.continual.train import evaluate, train_task
from labkit.runtime import load_results

__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "METHODS",
    "SPLITS",
    "GlobalSubspace",
    "federated_experiment",
    "layer_grams",
    "load",
    "partition",
    "project_out",
    "projector",
    "run_federated",
    "spawn_gloo",
    "update_basis",
]

METHODS = ("fedavg", "fot")
BACKENDS = ("sim", "gloo")
SPLITS = ("dirichlet", "iid")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "federated.json"


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return float(threshold)


# ---------------------------------------------------------------------------------------------------------
# Splitting a task across clients


def partition(
    y: torch.Tensor | np.ndarray, n_clients: int, split: str = "dirichlet", alpha: float = 0.5, seed: int = 0,
    min_size: int = 8,
) -> list[np.ndarray]:
    """Indices of each client's shard of the labels ``y: (N,)``: a list of n_clients sorted int64 arrays that
    together hold every index exactly once.

    split "iid": a uniform random split into near-equal shards. "dirichlet" (non-iid): for every class c the
    clients' shares p_c ~ Dirichlet(α·1_K) cut that class's examples, so small α gives each client few classes;
    redrawn (up to 100 times) until every shard holds at least ``min_size`` examples.
    """
    n_clients = _positive_int("n_clients", n_clients)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha}")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of labels, got shape {y.shape}")
    min_size = _positive_int("min_size", min_size)
    if n_clients * min_size > len(y):
        raise ValueError(f"n_clients * min_size must be <= len(y) = {len(y)}, got {n_clients} * {min_size}")
    rng = np.random.default_rng([int(seed), 11])
    if split == "iid":
        return [np.sort(s).astype(np.int64) for s in np.array_split(rng.permutation(len(y)), n_clients)]
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, float(alpha))))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        shards = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise ValueError(f"could not draw a Dirichlet(alpha={alpha}) split with every shard >= {min_size} examples; "
                     f"raise alpha or lower min_size")


def _shards(task: Task, s: dict, seed: int, t: int) -> list[Task]:
    parts = partition(task.y_train, s["n_clients"], s["split"], s["alpha"], seed=seed * 1000 + t)
    return [Task(f"{task.name}/client{k}", task.x_train[p], task.y_train[p], task.x_test, task.y_test, task.classes,
                 info={"indices": p}) for k, p in enumerate(parts)]


# ---------------------------------------------------------------------------------------------------------
# The global subspace: statistics, basis, projection


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def layer_grams(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per ``nn.Linear`` of the model, the Gram matrix of its bias-augmented inputs on x: (N, d_in).

    Returns ``layer name -> C`` with C = Σ_n x̃_n x̃_nᵀ: (d+1, d+1) float64, x̃ = [layer input; 1].
    """
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def store(module, inputs, output):
            a = inputs[0].detach().double()
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
            grams[name] = grams.get(name, 0) + a.T @ a
        return store

    handles = [m.register_forward_hook(hook(n)) for n, m in _linears(model).items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return grams


def update_basis(basis: torch.Tensor | None, gram: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """Grow the orthonormal basis U: (d, r) with the residual of C: (d, d) until it holds ε of C's energy.

    With E = tr(C) and E_U = tr(Uᵀ C U): eigendecompose the residual (I − UUᵀ) C (I − UUᵀ) = V Λ Vᵀ (λ descending)
    and append the first r' columns of V, r' the smallest count with E_U + Σ_{i<r'} λ_i ≥ ε E (r' = 0 when E_U
    already reaches it). basis None means an empty U. Returns (U': (d, r + r') float64, r').
    """
    threshold = _check_threshold(threshold)
    gram = torch.as_tensor(gram, dtype=torch.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (d, d) matrix, got shape {tuple(gram.shape)}")
    d = gram.shape[0]
    if basis is None:
        basis = torch.zeros(d, 0, dtype=torch.float64)
    if basis.ndim != 2 or basis.shape[0] != d:
        raise ValueError(f"basis must be (d, r) with d = {d}, got shape {tuple(basis.shape)}")
    basis = basis.double()
    gram = 0.5 * (gram + gram.T)
    total = float(torch.trace(gram))
    if total <= 0:
        return basis, 0
    held = float(torch.trace(basis.T @ gram @ basis))
    if held >= threshold * total or basis.shape[1] >= d:
        return basis, 0
    p = torch.eye(d, dtype=torch.float64) - basis @ basis.T
    lam, vec = torch.linalg.eigh(p @ gram @ p)
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    need = threshold * total - held
    r_new = int(torch.searchsorted(torch.cumsum(lam, 0), torch.tensor([need], dtype=torch.float64)).item()) + 1
    r_new = min(r_new, d - basis.shape[1])
    new = vec[:, :r_new]
    new = new - basis @ (basis.T @ new)  # re-orthogonalise against U (eigh is exact only up to rounding)
    new, _ = torch.linalg.qr(new)
    return torch.cat([basis, new], 1), r_new


def projector(basis: torch.Tensor) -> torch.Tensor:
    """P = I − U Uᵀ: (d, d) for an orthonormal U: (d, r): P x = 0 for x in span(U), P x = x for x ⟂ span(U)."""
    if basis.ndim != 2:
        raise ValueError(f"basis must be (d, r), got shape {tuple(basis.shape)}")
    return torch.eye(basis.shape[0], dtype=basis.dtype) - basis @ basis.T


def project_out(update: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """ΔW̃ (I − U Uᵀ) for ΔW̃: (out, d) and U: (d, r): the rows of the update with their span(U) part removed."""
    if basis is None or basis.shape[1] == 0:
        return update
    if update.ndim != 2 or update.shape[1] != basis.shape[0]:
        raise ValueError(f"update must be (out, {basis.shape[0]}), got shape {tuple(update.shape)}")
    b = basis.to(update.dtype)
    return update - (update @ b) @ b.T


class GlobalSubspace:
    """The server's per-layer bases U_l: (d_l + 1, r_l) of the old tasks' layer inputs (bias-augmented)."""

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = _check_threshold(threshold)
        self.bases: dict[str, torch.Tensor] = {}

    def update(self, grams: dict[str, torch.Tensor]) -> dict[str, int]:
        """Fold one task's aggregated Gram matrices (``layer -> (d+1, d+1)``) into the bases; returns ranks added."""
        added = {}
        for name, c in grams.items():
            self.bases[name], added[name] = update_basis(self.bases.get(name), c, self.threshold)
        return added

    @property
    def ranks(self) -> dict[str, int]:
        return {n: int(u.shape[1]) for n, u in self.bases.items()}

    def project(self, model: nn.Module, delta: Params) -> Params:
        """Project the update ``delta`` (``name -> tensor`` like the model's parameters) layer by layer:
        [ΔW Δb] ← [ΔW Δb](I − U Uᵀ); parameters outside any ``nn.Linear`` pass unchanged."""
        out = dict(delta)
        for name, lin in _linears(model).items():
            u = self.bases.get(name)
            if u is None:
                continue
            pre = f"{name}." if name else ""
            dw = delta[f"{pre}weight"]
            db = delta[f"{pre}bias"][:, None] if lin.bias is not None else torch.zeros(len(dw), 1, dtype=dw.dtype)
            p = project_out(torch.cat([dw, db], 1), u)
            out[f"{pre}weight"] = p[:, :-1]
            if lin.bias is not None:
                out[f"{pre}bias"] = p[:, -1]
        return out


# ---------------------------------------------------------------------------------------------------------
# Client and server steps (shared by the simulation and the gloo processes)


def _unflatten(model: nn.Module, flat: torch.Tensor) -> Params:
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[i: i + p.numel()].view_as(p)
        i += p.numel()
    return out


@torch.no_grad()
def _load(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy the flat θ: (P,) into the model's parameters (copies: the model never aliases θ)."""
    for p, v in zip(model.parameters(), _unflatten(model, theta).values()):
        p.copy_(v)


def _client_round(model: nn.Module, theta: torch.Tensor, shard: Task, s: dict, seed: int) -> torch.Tensor:
    """Local training from θ; returns the float64 vector [n_k (θ_k − θ), n_k]: (P + 1,)."""
    _load(model, theta)
    train_task(model, shard, epochs=s["local_epochs"], lr=s["lr"], batch_size=s["batch_size"], seed=seed)
    n = float(len(shard.y_train))
    delta = parameters_to_vector(model.parameters()).detach().double() - theta.double()
    return torch.cat([n * delta, torch.tensor([n], dtype=torch.float64)])


def _client_stats(model: nn.Module, theta: torch.Tensor, shard: Task, s: dict) -> torch.Tensor:
    """The client's layer-input Gram matrices at θ, flattened into one float64 vector (first stat_samples rows)."""
    _load(model, theta)
    x = shard.x_train if s["stat_samples"] is None else shard.x_train[: s["stat_samples"]]
    return torch.cat([c.reshape(-1) for c in layer_grams(model, x).values()])


def _server_round(model: nn.Module, theta: torch.Tensor, summed: torch.Tensor, sub: GlobalSubspace | None,
                  log: dict) -> torch.Tensor:
    """θ + Δ with Δ = Σ n_k Δ_k / Σ n_k, projected out of the old subspace for FOT. Returns float32 (P,)."""
    delta = summed[:-1] / summed[-1]
    if sub is not None and sub.bases:
        d = _unflatten(model, delta)
        proj = sub.project(model, d)
        new = torch.cat([proj[n].reshape(-1) for n, _ in model.named_parameters()])
        log.setdefault("kept", []).append(float(new.norm() / delta.norm().clamp_min(1e-300)))
        delta = new
    return (theta.double() + delta).float()


def _server_stats(model: nn.Module, summed: torch.Tensor, sub: GlobalSubspace) -> dict[str, int]:
    grams, i = {}, 0
    for name, lin in _linears(model).items():
        d = lin.in_features + 1
        grams[name] = summed[i: i + d * d].view(d, d)
        i += d * d
    return sub.update(grams)


class _SimComm:
    """All clients in this process; reductions are ordered float64 sums."""

    def __init__(self, n_clients: int) -> None:
        self.clients, self.is_server = list(range(n_clients)), True

    def reduce(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out = parts[0].clone()
        for p in parts[1:]:
            out += p
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        return t


class _GlooComm:
    """This process is client ``rank``; rank 0 is also the server."""

    def __init__(self, rank: int) -> None:
        self.clients, self.is_server = [rank], rank == 0

    def reduce(self, parts: list[torch.Tensor]) -> torch.Tensor:
        import torch.distributed as dist

        out = parts[0].clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = t.contiguous().clone()
        dist.broadcast(t, src=0)
        return t


def _job_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _run_job(method: str, seed: int, s: dict, comm: _SimComm | _GlooComm) -> dict | None:
    """One continual federated run (T tasks × rounds); the server's result dict (None on other ranks)."""
    t0 = time.perf_counter()
    tasks = permuted_digits(s["n_tasks"], seed=seed)
    torch.manual_seed(seed)
    model = MLP(hidden=tuple(s["hidden"]))
    theta = parameters_to_vector(model.parameters()).detach().clone()
    sub = GlobalSubspace(s["threshold"]) if method == "fot" else None
    matrix = AccuracyMatrix.empty(len(tasks), [t.name for t in tasks])
    log: dict = {}
    ranks, kept = [], []
    for t, task in enumerate(tasks):
        shards = _shards(task, s, seed, t)
        for r in range(s["rounds"]):
            parts = [_client_round(model, theta, shards[k], s, _job_seed(seed, t, r, k)) for k in comm.clients]
            summed = comm.reduce(parts)
            if comm.is_server:
                theta = _server_round(model, theta, summed, sub, log)
            theta = comm.broadcast(theta)
        kept.append(float(np.mean(log.pop("kept"))) if log.get("kept") else 1.0)
        if sub is not None and t < len(tasks) - 1:
            summed = comm.reduce([_client_stats(model, theta, shards[k], s) for k in comm.clients])
            if comm.is_server:
                _server_stats(model, summed, sub)
                ranks.append(sub.ranks)
        if comm.is_server:
            _load(model, theta)
            matrix.record(t, evaluate(model, tasks))
    if not comm.is_server:
        return None
    return {"method": method, "seed": seed, "matrix": matrix.to_dict(), **matrix.summary(),
            "subspace_ranks": ranks, "update_kept": kept, "theta": theta.tolist() if s.get("keep_theta") else None,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# Launching real processes


def _free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        sk.bind((addr, 0))
        return int(sk.getsockname()[1])


def _port_free(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
        try:
            sk.bind((addr, port))
        except OSError:
            return False
    return True


def _entry(i: int, ranks: list[int], world_size: int, addr: str, port: int, init_timeout: float, fn: Callable,
           args: tuple, outdir: str) -> None:
    """Body of one spawned process: init the gloo group (env://), run fn(rank, world_size, *args), write results."""
    t_enter = time.time()
    torch.set_num_threads(1)
    import torch.distributed as dist

    rank = ranks[i]
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    try:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=init_timeout))
    except Exception as err:
        raise RuntimeError(f"rank {rank}: the gloo process group did not start (world_size={world_size}, "
                           f"{addr}:{port}, timeout {init_timeout} s): {type(err).__name__}: {err}") from err
    t_group = time.time()
    try:
        out = fn(rank, world_size, *args)
        dist.barrier()
    except Exception as err:  # leave a note for the parent: the first failure in time is the cause
        note = {"rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {err}".strip()}
        Path(outdir, f"error{rank}.json").write_text(json.dumps(note))
        raise
    finally:
        dist.destroy_process_group()
    timing = {"rank": rank, "enter": t_enter, "group": t_group, "end": time.time()}
    Path(outdir, f"timing{rank}.json").write_text(json.dumps(timing))
    if rank == 0:
        Path(outdir, "result.pkl").write_bytes(pickle.dumps(out))


def spawn_gloo(
    fn: Callable, world_size: int, args: tuple = (), ranks: Sequence[int] | None = None, timeout: float = 300.0,
    init_timeout: float = 30.0, master_addr: str = "127.0.0.1", port: int | None = None, retries: int = 3,
) -> tuple[Any, dict]:
    """Run ``fn(rank, world_size, *args)`` in a gloo process group; returns (rank 0's return value, timing).

    Starts one spawned process per rank in ``ranks`` (default: all of 0..world_size−1 on this machine), each with
    ``torch.set_num_threads(1)`` and OMP_WAIT_POLICY=PASSIVE, joined through ``init_method="env://"`` at
    master_addr:port. To span machines, run this on each with its own ``ranks``, the same world_size and the
    master's address and port (the value comes back only where rank 0 runs; None elsewhere).

    port None: a free port is found at run time (and another one tried, up to ``retries`` times, if it is taken
    before the group binds it); a given port that stays in use for ``retries`` checks is a ``RuntimeError``. Any
    failure (the group not forming within ``init_timeout`` s, a worker raising or dying, the whole run exceeding
    ``timeout`` s) raises ``RuntimeError`` naming it, after every started process has been stopped.

    timing: {"wall": s, "start_overhead": s from the call to the last rank's group being up, "ranks": [...]}.
    """
    import torch.multiprocessing as mp

    world_size = _positive_int("world_size", world_size)
    ranks = list(range(world_size)) if ranks is None else [int(r) for r in ranks]
    if not ranks or len(set(ranks)) != len(ranks) or not all(0 <= r < world_size for r in ranks):
        raise ValueError(f"ranks must be distinct ints in 0..{world_size - 1}, got {ranks}")
    retries = _positive_int("retries", retries)
    for name, v in (("timeout", timeout), ("init_timeout", init_timeout)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    fixed = port is not None
    last_error = ""
    for _ in range(retries):
        if fixed:
            if not _port_free(master_addr, port):
                last_error = f"port {port} on {master_addr} is in use"
                time.sleep(0.5)
                continue
            use = port
        else:
            use = _free_port(master_addr)
        try:
            return _launch(mp, fn, ranks, world_size, master_addr, use, init_timeout, timeout, args)
        except _PortTaken as err:
            last_error = str(err)
            continue
    raise RuntimeError(f"gloo process group failed to start after {retries} tries: {last_error}")


class _PortTaken(RuntimeError):
    pass


_THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _launch(mp, fn, ranks, world_size, addr, port, init_timeout, timeout, args) -> tuple[Any, dict]:
    t0 = time.time()
    saved = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update(_THREAD_ENV)  # inherited by the spawned interpreters before they import torch
    with tempfile.TemporaryDirectory(prefix="labkit-gloo-") as outdir:
        try:
            spawn_args = (ranks, world_size, addr, port, init_timeout, fn, tuple(args), outdir)
            ctx = mp.start_processes(_entry, args=spawn_args, nprocs=len(ranks), join=False, start_method="spawn")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=0.2):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gloo run timed out after {timeout} s (ranks {ranks}); stopped the processes")
        except mp.ProcessRaisedException as err:
            msg = str(err)
            if "address already in use" in msg.lower() or "eaddrinuse" in msg.lower():
                raise _PortTaken(f"port {port} on {addr} was taken: {msg.strip().splitlines()[-1]}") from None
            notes = sorted((json.loads(f.read_text()) for f in Path(outdir).glob("error*.json")),
                           key=lambda n: n["time"])
            if notes:  # the earliest error first: the others are usually its echo (connection reset, ...)
                what = "; then ".join(f"rank {n['rank']} raised {n['error']}" for n in notes)
            else:
                what = f"rank {ranks[err.error_index]}: {msg.strip().splitlines()[-1]}"
            raise RuntimeError(f"gloo worker failed: {what}\n{msg}") from None
        except mp.ProcessExitedException as err:
            raise RuntimeError(f"gloo worker died (process {err.error_index} = rank {ranks[err.error_index]}, "
                               f"exit code {err.exit_code}): {err}") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(5)
        wall = time.time() - t0
        timing_ranks = [json.loads(Path(outdir, f"timing{r}.json").read_text()) for r in ranks]
        result = pickle.loads(Path(outdir, "result.pkl").read_bytes()) if 0 in ranks else None
    timing = {"wall": wall, "start_overhead": max(t["group"] for t in timing_ranks) - t0,
              "import_overhead": max(t["enter"] for t in timing_ranks) - t0,
              "ranks": [{k: (v - t0 if k != "rank" else v) for k, v in t.items()} for t in timing_ranks]}
    return result, timing


def _gloo_worker(rank: int, world_size: int, jobs: list[tuple[str, int]], s: dict) -> list[dict] | None:
    """Runs every (method, seed) job as client ``rank``; the list of run dicts on rank 0, None elsewhere."""
    comm = _GlooComm(rank)
    out = [_run_job(m, sd, s, comm) for m, sd in jobs]
    return out if rank == 0 else None


# ---------------------------------------------------------------------------------------------------------
# Public entry points


DEFAULTS = {"n_clients": 4, "n_tasks": 5, "rounds": 4, "local_epochs": 1, "lr": 2e-3, "batch_size": 32,
            "hidden": (128, 128), "split": "dirichlet", "alpha": 0.5, "threshold": 0.7, "stat_samples": 200}


def _settings(**kw: Any) -> dict:
    unknown = set(kw) - set(DEFAULTS) - {"keep_theta"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **kw}
    for name in ("n_clients", "n_tasks", "rounds", "local_epochs", "batch_size"):
        s[name] = _positive_int(name, s[name])
    if s["stat_samples"] is not None:
        s["stat_samples"] = _positive_int("stat_samples", s["stat_samples"])
    if s["split"] not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {s['split']!r}")
    if not (np.isfinite(s["alpha"]) and s["alpha"] > 0):
        raise ValueError(f"alpha must be > 0, got {s['alpha']}")
    if not s["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {s['lr']}")
    s["threshold"] = _check_threshold(s["threshold"])
    s["hidden"] = tuple(_positive_int("hidden", h) for h in s["hidden"])
    return s


def federated_experiment(
    methods: Sequence[str] = METHODS, seeds: Sequence[int] = (0,), backend: str = "sim", timeout: float = 600.0,
    progress: bool = False, **settings: Any,
) -> dict:
    """Every (method, seed) run on permuted digits, in one process (``"sim"``) or one gloo group (``"gloo"``).

    methods ⊆ {"fedavg", "fot"}; settings override ``DEFAULTS`` (n_clients, n_tasks, rounds, local_epochs, lr,
    batch_size, hidden, split, alpha, threshold, stat_samples; keep_theta=True also returns each run's final flat
    parameters as run["theta"]). For "gloo" all runs share one process group (one process per client), so the
    start cost is paid once. Returns {"settings", "backend", "runs": [run dict per job], "summary": {method: ACC
    and BWT mean/std over seeds}, "seconds", "timing" (gloo only: wall, start_overhead, ...)}; each run dict holds
    its ``AccuracyMatrix`` as ``run["matrix"]`` (``AccuracyMatrix.from_dict``).
    """
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    seeds = [int(sd) for sd in seeds]
    if not seeds or any(sd < 0 for sd in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds}")
    s = _settings(**settings)
    jobs = [(m, sd) for sd in seeds for m in methods]
    t0 = time.perf_counter()
    timing = None
    if backend == "sim":
        torch.set_num_threads(1)
        it = jobs
        if progress:
            from labkit.runtime import progress as bar

            it = bar(jobs, desc="federated (sim)", total=len(jobs))
        runs = [_run_job(m, sd, s, _SimComm(s["n_clients"])) for m, sd in it]
    else:
        runs, timing = spawn_gloo(_gloo_worker, s["n_clients"], args=(jobs, s), timeout=timeout)
    summary = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        summary[m] = {k: {"mean": float(np.mean([r[k] for r in rs])), "std": float(np.std([r[k] for r in rs]))}
                      for k in ("ACC", "BWT", "forgetting", "LA")}
    return {"settings": {**s, "hidden": list(s["hidden"])}, "backend": backend, "runs": runs, "summary": summary,
            "seconds": time.perf_counter() - t0, "timing": timing}


def run_federated(method: str = "fot", seed: int = 0, backend: str = "sim", timeout: float = 600.0,
                  **settings: Any) -> dict:
    """One continual federated run; the run dict of ``federated_experiment`` (plus "timing" for gloo)."""
    res = federated_experiment([method], [seed], backend=backend, timeout=timeout, **settings)
    return {**res["runs"][0], "timing": res["timing"]}


FAST = {"n_tasks": 5, "rounds": 3}  # simulation, one seed: ~3 s warm
FULL: dict = {}  # DEFAULTS: 4 clients, 5 tasks, 4 rounds, Dirichlet(0.5) split, ε = 0.7
SEEDS = (0, 1, 2)
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95)  # ε of the stability / plasticity sweep (simulation)


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/federated.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.federated", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4 FOT vs FedAvg on permuted digits, gloo processes.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--backend", choices=BACKENDS, default="gloo")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    res = federated_experiment(METHODS, args.seeds, backend=args.backend, **FULL)
    iid = federated_experiment(METHODS, args.seeds, **{**FULL, "split": "iid"})
    sweep = {str(eps): federated_experiment(["fot"], args.seeds, **{**FULL, "threshold": eps})["summary"]["fot"]
             for eps in SWEEP}
    args.out.write_text(json.dumps({**res, "iid": iid, "threshold_sweep": sweep}))
    for name, r in (("non-iid", res), ("iid", iid)):
        for m, v in r["summary"].items():
            print(name, m, {k: f"{100 * x['mean']:.1f}±{100 * x['std']:.1f}" for k, x in v.items()})
    for eps, v in sweep.items():
        print("fot eps", eps, {k: f"{100 * x['mean']:.1f}±{100 * x['std']:.1f}" for k, x in v.items()})
    print(f"{res['seconds']:.1f} s", res["timing"] and {k: round(v, 2) for k, v in res["timing"].items()
                                                         if k != "ranks"})

if __name__ == "__main__":
    main()
