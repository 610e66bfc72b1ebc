"""LLM in a flash (Alizadeh et al. 2024): decode with the FFN weights on storage, read on demand.

The paper's setting: the model is larger than DRAM, so its weights live in flash and every token must
bring the ones it needs into DRAM. Its cost model has two terms, per read a fixed latency and per byte a
transfer time::

    time = n_reads · latency + bytes / bandwidth            (read_cost_model)

so a decoder should (i) move fewer bytes and (ii) move them in fewer, larger reads. The paper runs models
up to twice the DRAM size, 4–5× (CPU) and 20–25× (GPU) faster than naively loading them. The names follow
the paper, top to bottom:

* **the flash file**: ``write_ffn_file`` writes every layer's FFN into one binary file, either
  ``"separate"`` (per layer the gate matrix, then the up matrix, then the transposed down matrix) or
  ``"bundled"`` (**row-column bundling**: neuron i's gate row, up row and down column side by side, so one
  read fetches the whole neuron). ``FfnFileLayout`` knows where every neuron's bytes are.
* **sparsity**: the FFN is ``W_down (relu(W_gate x) * W_up x)``; a hidden unit whose gate is ≤ 0 adds
  nothing, so its three weight vectors need not be read. ``active_neurons`` and ``activation_sparsity``
  measure this on text.
* **the predictor**: the active set must be known *before* reading the gate, so the paper trains a small
  **low-rank predictor** per layer (``LowRankPredictor``, ``train_predictor``) from the FFN input. The
  ``"oracle"`` predictor computes ``relu(W_gate x) > 0`` from the true gate: it needs the gate rows that
  are themselves on flash, so it is not deployable; it measures the I/O bound a perfect predictor reaches.
* **windowing**: keep in DRAM the neurons active in the last k tokens and read only the newly active ones
  (``window_hit_rate`` is the fraction of needed neurons already resident).
* **the decoder**: ``FlashFFN`` serves every layer's FFN from the file with real ``os.pread`` calls
  (neurons adjacent in the file are coalesced into one read; ``max_gap`` also reads through short gaps of
  unneeded neurons, our addition) into a DRAM neuron cache laid out as in the
  paper (a preallocated matrix; deleted rows are filled by the last rows, new rows are appended);
  ``flash_generate`` decodes greedily with it. Attention and embeddings stay in memory.
* **this machine's storage**: ``measure_read_curve`` measures read throughput against read size and
  ``fit_read_cost`` fits the cost model's latency and bandwidth to it.

Absolute times depend on the machine: the OS page cache, the SSD (or a virtual disk that is itself
cached by a host) and readahead all change them. ``cold=True`` drops the page cache for the file before
every step (``posix_fadvise(DONTNEED)``) and turns readahead off (``POSIX_FADV_RANDOM``), so the OS does
not act as a second, unlimited DRAM cache; bytes and read counts are exact on any machine.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FfnFileLayout",
    "FlashFFN",
    "FlashStats",
    "LowRankPredictor",
    "NeuronCache",
    "activation_sparsity",
    "active_neurons",
    "ffn_inputs",
    "fit_read_cost",
    "flash_generate",
    "measure_read_curve",
    "predictor_agreement",
    "read_cost_model",
    "train_predictor",
    "window_hit_rate",
    "write_ffn_file",
]

LAYOUTS = ("bundled", "separate")
POLICIES = ("naive", "sparse", "windowing")
PARTS = ("gate", "up", "down")  # the three weight vectors of one neuron, in file order
_FILE_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _ffn_weights(model, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate (d_ff, d), up (d_ff, d), down^T (d_ff, d)) of ``layer``: row i is neuron i's three vectors."""
    mlp = model.layers[layer].mlp
    return mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T


# --------------------------------------------------------------------------------------------------------
# 1. The FFN file: separate matrices or row-column bundles
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """One ``os.pread``: ``nbytes`` at ``offset``, holding ``pieces`` in file order.

    A piece ``(first, count, part)`` is the bytes of neurons first..first+count-1: their whole bundles
    (part ``"bundle"``) or one of their weight vectors (part ``"gate"``, ``"up"`` or ``"down"``).
    """

    offset: int
    nbytes: int
    pieces: tuple[tuple[int, int, str], ...]


@dataclass(frozen=True)
class FfnFileLayout:
    """Where every neuron's weights lie in the file ``path`` written by ``write_ffn_file``.

    Per layer (layer l starts at ``l * layer_bytes``) the file holds d_ff neurons of three vectors of
    d_model values (``dtype``): gate row i, up row i and down column i.

    * ``"separate"``: gate (d_ff, d), then up (d_ff, d), then down^T (d_ff, d); neuron i is three pieces
      of ``row_bytes``, d_ff rows apart.
    * ``"bundled"``: neuron i is one piece of ``neuron_bytes`` = [gate_i | up_i | down_i].
    """

    path: str
    layout: str
    n_layers: int
    d_model: int
    d_ff: int
    dtype: str

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one weight vector (d_model values)."""
        return self.d_model * self.itemsize

    @property
    def neuron_bytes(self) -> int:
        """Bytes of one neuron: its gate row, up row and down column."""
        return 3 * self.row_bytes

    @property
    def layer_bytes(self) -> int:
        return self.d_ff * self.neuron_bytes

    @property
    def file_bytes(self) -> int:
        return self.n_layers * self.layer_bytes

    def plan_reads(self, layer: int, neurons: np.ndarray, max_gap: int = 0) -> list[Read]:
        """The reads that fetch ``neurons`` (sorted unique ids) of ``layer``: one per contiguous byte range.

        Consecutive neuron ids are contiguous in both layouts (a run of c bundled neurons is one piece; in
        the separate layout it is three pieces, one per matrix); pieces that touch in the file are merged
        into one read. ``max_gap`` > 0 also reads through gaps of up to that many unneeded neurons: more
        bytes, fewer and larger reads (worth it when a read's latency outweighs the gap's transfer time).
        """
        base = layer * self.layer_bytes
        pieces = []  # (offset, nbytes, first, count, part), in file order
        if self.layout == "bundled":
            for first, count in _runs(neurons, max_gap):
                pieces.append((base + first * self.neuron_bytes, count * self.neuron_bytes, first, count, "bundle"))
        else:
            for p, part in enumerate(PARTS):
                start = base + p * self.d_ff * self.row_bytes
                for first, count in _runs(neurons, max_gap):
                    pieces.append((start + first * self.row_bytes, count * self.row_bytes, first, count, part))
        reads: list[Read] = []
        for offset, nbytes, first, count, part in pieces:
            last = reads[-1] if reads else None
            if last is not None and last.offset + last.nbytes == offset:  # touches the previous read: coalesce
                reads[-1] = Read(last.offset, last.nbytes + nbytes, (*last.pieces, (first, count, part)))
            else:
                reads.append(Read(offset, nbytes, ((first, count, part),)))
        return reads


def _runs(neurons: np.ndarray, max_gap: int = 0) -> list[tuple[int, int]]:
    """Runs of sorted ``neurons`` as [(first, count), ...]: consecutive ids, bridging gaps of <= max_gap ids."""
    if len(neurons) == 0:
        return []
    breaks = np.flatnonzero(np.diff(neurons) > max_gap + 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(neurons)]])
    return [(int(neurons[a]), int(neurons[b - 1] - neurons[a] + 1)) for a, b in zip(starts, ends)]


def write_ffn_file(model, path: str | os.PathLike, layout: str = "bundled",
                   dtype: torch.dtype = torch.float16) -> FfnFileLayout:
    """Write every layer's FFN weights of ``model`` (a TinyLM) into ONE binary file at ``path``.

    layout: "bundled" (per layer, neuron i's gate row, up row and down column contiguous: (d_ff, 3, d))
    or "separate" (per layer gate (d_ff, d), up (d_ff, d), down^T (d_ff, d), one after another).
    dtype: torch.float16 (the trained weights are fp16, so lossless) or torch.float32.
    The file is fsync'ed so that its page cache can be dropped afterwards. Returns its ``FfnFileLayout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if dtype not in _FILE_DTYPES:
        raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype!r}")
    cfg = model.config
    info = FfnFileLayout(str(Path(path)), layout, cfg.n_layers, cfg.d_model, cfg.d_ff,
                         np.dtype(_FILE_DTYPES[dtype]).name)
    with open(path, "wb") as f:
        for layer in range(cfg.n_layers):
            gate, up, down_t = (w.detach().cpu().to(dtype).numpy() for w in _ffn_weights(model, layer))
            block = np.stack([gate, up, down_t], axis=1 if layout == "bundled" else 0)  # (d_ff,3,d) | (3,d_ff,d)
            f.write(np.ascontiguousarray(block).tobytes())
        f.flush()
        os.fsync(f.fileno())
    return info


def _check_layout(layout: FfnFileLayout, model) -> None:
    cfg = model.config
    want = (cfg.n_layers, cfg.d_model, cfg.d_ff)
    got = (layout.n_layers, layout.d_model, layout.d_ff)
    if got != want:
        raise ValueError(f"path holds an FFN file of (n_layers, d_model, d_ff) = {got}, the model has {want}")
    size = os.path.getsize(layout.path)
    if size != layout.file_bytes:
        raise ValueError(f"path {layout.path!r} must hold {layout.file_bytes} bytes, got {size}")


# --------------------------------------------------------------------------------------------------------
# 2. The cost model and this machine's read curve
# --------------------------------------------------------------------------------------------------------


def read_cost_model(bytes, n_reads, bandwidth: float, latency_per_read: float):
    """The paper's cost of loading from flash: ``n_reads · latency_per_read + bytes / bandwidth`` seconds.

    bytes, n_reads: numbers or arrays (broadcast); bandwidth: bytes/s > 0; latency_per_read: s >= 0.
    Scalars in, float out. Fewer bytes (sparsity, windowing) cut the second term; fewer, larger reads
    (bundling) cut the first.
    """
    b, n = np.asarray(bytes, dtype=np.float64), np.asarray(n_reads, dtype=np.float64)
    if np.any(b < 0) or np.any(n < 0):
        raise ValueError(f"bytes and n_reads must be >= 0, got bytes={bytes!r}, n_reads={n_reads!r}")
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
        raise ValueError(f"bandwidth must be a number of bytes/s > 0, got {bandwidth!r}")
    latency = latency_per_read
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not latency >= 0:
        raise ValueError(f"latency_per_read must be a number of seconds >= 0, got {latency_per_read!r}")
    seconds = n * latency_per_read + b / bandwidth
    return float(seconds) if seconds.ndim == 0 else seconds


def fit_read_cost(curve: dict[int, float]) -> tuple[float, float]:
    """Fit the cost model to a read curve: (bandwidth bytes/s, latency_per_read s), least squares.

    curve: {chunk_size: bytes/s} from ``measure_read_curve``; one read of c bytes takes c / throughput(c)
    seconds, modelled as latency + c / bandwidth. Needs two chunk sizes or more.
    """
    if len(curve) < 2:
        raise ValueError(f"curve must hold at least 2 chunk sizes, got {len(curve)}")
    chunks = np.array(sorted(curve), dtype=np.float64)
    seconds = chunks / np.array([curve[int(c)] for c in chunks])
    slope, intercept = np.polyfit(chunks, seconds, 1)
    return 1.0 / max(slope, 1e-30), max(intercept, 0.0)


def _drop_page_cache(fd: int) -> bool:
    """Ask the OS to forget the file's cached pages (and not to read ahead). False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return True


def measure_read_curve(path: str | os.PathLike, chunk_sizes: Sequence[int] = (1024, 4096, 16384, 65536, 262144),
                       total_bytes: int | None = None, cold: bool = True, seed: int = 0) -> dict[int, float]:
    """This machine's read throughput against read size: {chunk_size: bytes per second}.

    For each chunk size, reads ``total_bytes`` (default: the whole file, at least one chunk) as chunks at
    random offsets (seeded) aligned to max(chunk, page size), so that no two reads share a page (the OS
    reads whole pages), after dropping the file's page cache when ``cold``. Small
    random reads pay the per-read latency; large ones approach the bandwidth. Machine-dependent: a virtual
    disk cached by its host, or a warm page cache (``cold=False``), reads far faster than a real SSD.
    """
    size = os.path.getsize(path)
    chunk_sizes = [_check_int("chunk_sizes entries", c, 1) for c in chunk_sizes]
    if not chunk_sizes or max(chunk_sizes) > size:
        raise ValueError(f"chunk_sizes must be a non-empty list of sizes <= the file's {size} bytes, got {chunk_sizes}")
    total = size if total_bytes is None else _check_int("total_bytes", total_bytes, 1)
    rng = np.random.default_rng(seed)
    curve = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for chunk in chunk_sizes:
            stride = max(chunk, mmap.PAGESIZE)
            slots = (size - chunk) // stride + 1
            n = max(1, min(total // chunk, slots))
            offsets = rng.choice(slots, size=n, replace=False) * stride
            if cold:
                _drop_page_cache(fd)
            start = time.perf_counter()
            for offset in offsets:
                os.pread(fd, chunk, int(offset))
            curve[chunk] = n * chunk / (time.perf_counter() - start)
    finally:
        os.close(fd)
    return curve


# --------------------------------------------------------------------------------------------------------
# 3. Activation sparsity and windowing
# --------------------------------------------------------------------------------------------------------


def _as_tokens(tokens) -> torch.Tensor:
    t = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(np.asarray(tokens))
    if t.dim() != 1 or t.is_floating_point() or t.numel() == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of int ids, got shape {tuple(t.shape)} of {t.dtype}")
    return t.long()


@contextmanager
def _replace_mlps(model, make):
    """Temporarily swap each ``model.layers[l].mlp`` for ``make(l, mlp)``; restored on exit."""
    originals = [layer.mlp for layer in model.layers]
    try:
        for l, layer in enumerate(model.layers):
            layer.mlp = make(l, originals[l])
        yield
    finally:
        for layer, mlp in zip(model.layers, originals):
            layer.mlp = mlp


class _Recorder(nn.Module):
    """Runs ``mlp`` unchanged and keeps its input (the post-norm hidden state)."""

    def __init__(self, mlp: nn.Module, store: list) -> None:
        super().__init__()
        self.mlp, self.store = mlp, store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.store.append(x.detach().reshape(-1, x.shape[-1]))
        return self.mlp(x)


@torch.inference_mode()
def ffn_inputs(model, tokens) -> list[torch.Tensor]:
    """The FFN input (the post-attention RMSNorm output) of every layer at every position: list of (T, d).

    tokens: (T,) ids; texts longer than the model's context are cut into context-long pieces, each run
    from a fresh start.
    """
    tokens = _as_tokens(tokens)
    stores: list[list[torch.Tensor]] = [[] for _ in model.layers]
    with _replace_mlps(model, lambda l, mlp: _Recorder(mlp, stores[l])):
        for piece in tokens.split(model.config.context):
            model(piece[None].to(model.embed_tokens.weight.device))
    return [torch.cat(s).float().cpu() for s in stores]


@torch.inference_mode()
def active_neurons(model, tokens) -> list[torch.Tensor]:
    """Which FFN neurons fire: per layer a (T, d_ff) bool tensor, ``relu(W_gate x_t) > 0``. tokens: (T,)."""
    return [F.linear(x, _ffn_weights(model, l)[0].float().cpu()) > 0 for l, x in enumerate(ffn_inputs(model, tokens))]


def activation_sparsity(model, tokens) -> list[float]:
    """Per layer, the fraction of FFN neurons that are exactly zero after the ReLU gate, over ``tokens`` (T,)."""
    return [1.0 - float(a.float().mean()) for a in active_neurons(model, tokens)]


def window_hit_rate(active, window: int) -> float:
    """The fraction of needed neurons already in DRAM when DRAM keeps those used in the last ``window`` steps.

    active: (T, N) bool (numpy or torch), active[t, i] = neuron i is needed at step t; window: int >= 1.
    At step t, needed = active[t] and resident = the union of active[max(0, t - window):t] (nothing at
    t = 0); the hit rate is Σ_t |needed ∧ resident| / Σ_t |needed|, and 1.0 when nothing is ever needed.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if isinstance(active, torch.Tensor):
        active = active.detach().cpu().numpy()
    active = np.asarray(active).astype(bool)
    if active.ndim != 2:
        raise ValueError(f"active must be a 2-D (T, N) bool array, got shape {active.shape}")
    # used_before[t, i] = how many of the steps 0..t-1 used neuron i; the window holds steps t-window..t-1
    used_before = np.concatenate([np.zeros((1, active.shape[1]), np.int64), np.cumsum(active, axis=0)])
    T = active.shape[0]
    steps = np.arange(T)
    resident = (used_before[steps] - used_before[np.maximum(0, steps - window)]) > 0
    needed = int(active.sum())
    return 1.0 if needed == 0 else float((active & resident).sum()) / needed


# --------------------------------------------------------------------------------------------------------
# 4. The low-rank predictor
# --------------------------------------------------------------------------------------------------------


class LowRankPredictor(nn.Module):
    """Per layer l, which FFN neurons will fire, from the FFN input x (d_model,): a rank-r bottleneck.

    logits_l(x) = B_l (A_l x) + b_l, A_l: (rank, d_model), B_l: (d_ff, rank); neuron i is predicted active
    when sigmoid(logits_l(x)_i) > thresholds[l]. ``predict(layer, x)``: x (..., d_model) -> (..., d_ff) bool.
    """

    def __init__(self, n_layers: int, d_model: int, d_ff: int, rank: int) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("d_model", d_model), ("d_ff", d_ff)):
            _check_int(name, value, 1)
        self.rank = _check_int("rank", rank, 1)
        if rank > min(d_model, d_ff):
            raise ValueError(f"rank must be in 1..{min(d_model, d_ff)} (min(d_model, d_ff)), got {rank}")
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, d_ff)) for _ in range(n_layers)
        )
        self.register_buffer("thresholds", torch.full((n_layers,), 0.5))

    def logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_ff) logits of "neuron i fires"."""
        return self.layers[layer](x)

    @torch.no_grad()
    def predict(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_ff) bool, the neurons to read."""
        return torch.sigmoid(self.logits(layer, x.float())) > self.thresholds[layer]

    def nbytes(self) -> int:
        """Bytes of the predictor's weights: they live in DRAM next to the neuron cache."""
        return sum(p.numel() * p.element_size() for p in self.parameters())


def _training_text(split: str, n_rows: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    from labkit.data.corpus import english_tokens

    text = english_tokens(split)
    starts = rng.integers(0, len(text) - length, size=n_rows)
    return [text[s:s + length].astype(np.int64) for s in starts]


class _MaskedMLP(nn.Module):
    """The FFN with only the predicted neurons: down((relu(gate x) * up x) * predicted(x))."""

    def __init__(self, mlp: nn.Module, predictor: LowRankPredictor, layer: int) -> None:
        super().__init__()
        self.mlp, self.predictor, self.layer = mlp, predictor, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.predictor.predict(self.layer, x)
        return self.mlp.down_proj(F.relu(self.mlp.gate_proj(x)) * self.mlp.up_proj(x) * keep)


def _reduced_rank_start(x: torch.Tensor, gate: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-r linear predictor of the gate pre-activation W_gate x in mean squared error.

    x: (N, d) FFN inputs, gate: (d_ff, d). With Σ = E[x xᵀ], the SVD W_gate Σ^½ = U S Vᵀ gives
    A = V_rᵀ Σ^-½ (rank, d) and B = U_r S_r (d_ff, rank): reduced-rank regression. BCE then only has to
    fine-tune it, which is why training takes seconds.
    """
    sigma = x.T @ x / len(x) + 1e-6 * torch.eye(x.shape[1])
    evals, evecs = torch.linalg.eigh(sigma)
    sqrt, inv_sqrt = (evecs * evals.sqrt()) @ evecs.T, (evecs * evals.rsqrt()) @ evecs.T
    u, s, vt = torch.linalg.svd(gate @ sqrt, full_matrices=False)
    return vt[:rank] @ inv_sqrt, u[:, :rank] * s[:rank]


def train_predictor(model, rank: int = 32, steps: int = 50, seed: int = 0, n_rows: int = 48, lr: float = 1e-2,
                    batch_size: int = 512, target_recall: float | None = 0.99, n_prompts: int = 8,
                    new_tokens: int = 24) -> tuple[LowRankPredictor, dict]:
    """Train a ``LowRankPredictor`` for ``model``, per layer, from (FFN input, which neurons fired). Seconds.

    Data: ``n_rows`` random context-long windows of the English training text (seeded). Each layer starts
    from reduced-rank regression of the gate pre-activation (``_reduced_rank_start``, scaled so the logits
    have spread ~4), then Adam minimises the paper's BCE for ``steps`` minibatches of ``batch_size``
    positions. ``target_recall``: each layer's threshold is then set on the training data so that this
    fraction of the truly active neurons is predicted (a missed neuron changes the output, an extra one
    only costs a read); None keeps 0.5.

    Returns (predictor, metrics): per layer ``recall``, ``precision``, ``density`` (fraction truly active)
    and ``predicted_density`` on held-out text; ``greedy_match`` and ``token_agreement`` from
    ``predictor_agreement`` (``n_prompts`` held-out prompts, ``new_tokens`` each); ``train_seconds``
    (data collection and fitting); ``predictor_bytes``.
    """
    rank, steps = _check_int("rank", rank, 1), _check_int("steps", steps, 0)
    n_rows, batch_size = _check_int("n_rows", n_rows, 1), _check_int("batch_size", batch_size, 1)
    if target_recall is not None and not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1] or None, got {target_recall!r}")
    cfg = model.config
    predictor = LowRankPredictor(cfg.n_layers, cfg.d_model, cfg.d_ff, rank)  # checks rank
    start = time.perf_counter()

    def collect(split: str, rows: int, stream: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        texts = np.concatenate(_training_text(split, rows, cfg.context, np.random.default_rng([seed, stream])))
        inputs = [x.clone() for x in ffn_inputs(model, texts)]  # normal tensors: autograd may use them
        with torch.no_grad():
            fired = [F.linear(x, _ffn_weights(model, l)[0].float().cpu()) > 0 for l, x in enumerate(inputs)]
        return inputs, fired

    inputs, fired = collect("train", n_rows, 0)
    batches = np.random.default_rng([seed, 1])
    for l in range(cfg.n_layers):
        x, y = inputs[l], fired[l].float()
        down, up = predictor.layers[l]
        with torch.no_grad():
            gate = _ffn_weights(model, l)[0].detach().float().cpu()
            a, b = _reduced_rank_start(x, gate, rank)
            scale = 4.0 / float((x @ gate.T).std())
            down.weight.copy_(a)
            up.weight.copy_(b * scale)
            up.bias.zero_()
        optimizer = torch.optim.Adam(predictor.layers[l].parameters(), lr=lr)
        for _ in range(steps):
            batch = torch.from_numpy(batches.integers(0, len(x), size=min(batch_size, len(x))))
            loss = F.binary_cross_entropy_with_logits(predictor.logits(l, x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if target_recall is not None:
            with torch.no_grad():
                p = torch.sigmoid(predictor.logits(l, x))[fired[l]]  # the probabilities of the true actives
            # just below the (1 - target_recall) quantile: that fraction of the true actives lies above it
            threshold = float(torch.quantile(p, 1 - target_recall)) if p.numel() else 0.5
            predictor.thresholds[l] = math.nextafter(threshold, -math.inf)
    predictor.eval()
    train_seconds = time.perf_counter() - start

    metrics: dict = {"rank": rank, "recall": [], "precision": [], "density": [], "predicted_density": [],
                     "thresholds": predictor.thresholds.tolist(), "train_seconds": train_seconds,
                     "predictor_bytes": predictor.nbytes()}
    held_inputs, held_fired = collect("heldout", max(1, n_rows // 4), 2)
    for l in range(cfg.n_layers):
        guess, truth = predictor.predict(l, held_inputs[l]), held_fired[l]
        hits = float((guess & truth).sum())
        metrics["recall"].append(hits / max(1.0, float(truth.sum())))
        metrics["precision"].append(hits / max(1.0, float(guess.sum())))
        metrics["density"].append(float(truth.float().mean()))
        metrics["predicted_density"].append(float(guess.float().mean()))
    metrics.update(predictor_agreement(model, predictor, n_prompts=n_prompts, new_tokens=new_tokens, seed=seed))
    return predictor, metrics


def predictor_agreement(model, predictor: LowRankPredictor, n_prompts: int = 8, prompt_len: int = 32,
                        new_tokens: int = 24, seed: int = 0) -> dict:
    """How often greedy decoding with only the predicted neurons equals dense greedy decoding.

    ``n_prompts`` held-out prompts of ``prompt_len`` tokens (seeded), ``new_tokens`` each. Returns
    {"greedy_match": fraction of prompts with identical continuations, "token_agreement": fraction of
    positions with the same token}. Decoding with only the predicted neurons is what ``flash_generate``
    computes with this predictor (up to the float summation order).
    """
    from labkit.decoding import generate

    n_prompts, prompt_len = _check_int("n_prompts", n_prompts, 1), _check_int("prompt_len", prompt_len, 1)
    prompts = _training_text("heldout", n_prompts, prompt_len, np.random.default_rng([seed, 3]))
    same_prompt, same_token = 0, 0
    for prompt in prompts:
        dense = generate(model, prompt.tolist(), new_tokens)
        with _replace_mlps(model, lambda l, mlp: _MaskedMLP(mlp, predictor, l)):
            sparse = generate(model, prompt.tolist(), new_tokens)
        same_prompt += dense == sparse
        same_token += sum(a == b for a, b in zip(dense, sparse))
    return {"greedy_match": same_prompt / n_prompts, "token_agreement": same_token / (n_prompts * new_tokens)}


# --------------------------------------------------------------------------------------------------------
# 5. The decoder: FFN neurons read from the file into a DRAM neuron cache
# --------------------------------------------------------------------------------------------------------


class NeuronCache:
    """The DRAM copy of one layer's resident neurons, managed as in the paper (Section 3.3).

    ``rows[:count]``: (count, 3, d_model) the resident neurons' [gate | up | down] vectors, in the file's
    dtype; ``neuron_of[slot]`` the neuron in a slot, ``slot_of[neuron]`` its slot (-1: not resident).
    New neurons are appended after the last row; deleting neurons moves the last rows into the freed slots,
    so the matrix stays dense and only as many rows are copied as are deleted. The matrix grows by doubling
    (up to d_ff rows); its size in use is ``nbytes``.
    """

    def __init__(self, d_ff: int, d_model: int, dtype: np.dtype) -> None:
        self.rows = np.empty((0, 3, d_model), dtype)
        self.neuron_of = np.empty(0, np.int64)
        self.slot_of = np.full(d_ff, -1, np.int64)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.count * self.rows[0].nbytes if len(self.rows) else 0

    def add(self, neurons: np.ndarray) -> np.ndarray:
        """Give each of ``neurons`` (not resident) a slot at the end; returns the slots (their rows to fill)."""
        need = self.count + len(neurons)
        if need > len(self.rows):
            capacity = min(len(self.slot_of), max(need, 2 * len(self.rows)))
            rows = np.empty((capacity, *self.rows.shape[1:]), self.rows.dtype)
            rows[:self.count] = self.rows[:self.count]
            self.rows = rows
            self.neuron_of = np.concatenate([self.neuron_of[:self.count], np.empty(capacity - self.count, np.int64)])
        slots = np.arange(self.count, need)
        self.neuron_of[slots] = neurons
        self.slot_of[neurons] = slots
        self.count = need
        return slots

    def keep_only(self, keep: np.ndarray) -> None:
        """Delete every resident neuron whose ``keep[neuron]`` (d_ff,) bool is False."""
        resident = self.neuron_of[:self.count]
        gone = ~keep[resident]
        if not gone.any():
            return
        new_count = self.count - int(gone.sum())
        holes = np.flatnonzero(gone[:new_count])  # freed slots inside the new, shorter matrix
        movers = new_count + np.flatnonzero(~gone[new_count:])  # kept rows past its end
        self.slot_of[resident[gone]] = -1
        self.rows[holes] = self.rows[movers]
        self.neuron_of[holes] = self.neuron_of[movers]
        self.slot_of[self.neuron_of[holes]] = holes
        self.count = new_count


@dataclass
class FlashStats:
    """What ``flash_generate`` read and how long it took, per forward step.

    Step 0 processes the prompt (a cold start: every needed neuron is read); the ``*_per_token`` figures
    average the decode steps after it, the totals include it. ``read_seconds``: inside ``os.pread`` and the
    copy into the neuron cache; ``compute_seconds``: the rest of the step (attention, predictor, FFN
    arithmetic, cache management). ``step_dram_bytes``: the most bytes the neuron caches held at once in
    each step (the model object keeps its own copy of the FFN for the comparison; a deployment would not).
    """

    policy: str
    layout: str
    window: int
    predictor: str
    cold: bool
    ffn_bytes: int
    tokens: int = 0
    step_bytes: list[int] = field(default_factory=list)
    step_reads: list[int] = field(default_factory=list)
    step_read_seconds: list[float] = field(default_factory=list)
    step_compute_seconds: list[float] = field(default_factory=list)
    step_dram_bytes: list[int] = field(default_factory=list)

    @property
    def peak_dram_bytes(self) -> int:
        """The most bytes the neuron caches held at once, the prompt's step included."""
        return max(self.step_dram_bytes, default=0)

    @property
    def decode_peak_dram_bytes(self) -> int:
        """The most bytes the neuron caches held at once during the decode steps (after the prompt)."""
        return max(self.step_dram_bytes[1:], default=0)

    @property
    def bytes_read(self) -> int:
        return sum(self.step_bytes)

    @property
    def n_reads(self) -> int:
        return sum(self.step_reads)

    @property
    def mean_read_bytes(self) -> float:
        return self.bytes_read / self.n_reads if self.n_reads else math.nan

    def _per_token(self, values: list) -> float:
        return float(np.mean(values[1:])) if len(values) > 1 else math.nan

    @property
    def bytes_per_token(self) -> float:
        return self._per_token(self.step_bytes)

    @property
    def reads_per_token(self) -> float:
        return self._per_token(self.step_reads)

    @property
    def read_seconds_per_token(self) -> float:
        return self._per_token(self.step_read_seconds)

    @property
    def compute_seconds_per_token(self) -> float:
        return self._per_token(self.step_compute_seconds)

    @property
    def seconds_per_token(self) -> float:
        return self.read_seconds_per_token + self.compute_seconds_per_token

    def summary(self) -> dict:
        """The headline figures as one dict (a table row)."""
        return {"policy": self.policy, "layout": self.layout, "window": self.window, "predictor": self.predictor,
                "cold": self.cold, "tokens": self.tokens, "bytes_per_token": self.bytes_per_token,
                "reads_per_token": self.reads_per_token, "mean_read_bytes": self.mean_read_bytes,
                "read_ms_per_token": 1e3 * self.read_seconds_per_token,
                "compute_ms_per_token": 1e3 * self.compute_seconds_per_token,
                "peak_dram_bytes": self.peak_dram_bytes, "decode_peak_dram_bytes": self.decode_peak_dram_bytes,
                "ffn_bytes": self.ffn_bytes}


class FlashFFN:
    """Every layer's FFN served from the flash file: read what the policy needs, compute, keep the window.

    policy: "naive" reads the layer's whole FFN every step and keeps nothing; "sparse" reads only the
    predicted-active neurons and keeps nothing; "windowing" keeps the neurons active in the last ``window``
    tokens and reads only the newly active ones. predictor: "oracle" (``relu(W_gate x) > 0`` with the
    model's true gate: measures the I/O bound, not deployable since the gate rows are on flash) or a
    ``LowRankPredictor`` (deployable; a missed neuron changes the output slightly); None for "naive".
    max_gap: read through gaps of up to this many unneeded neurons (``FfnFileLayout.plan_reads``; 0 reads
    only needed neurons, as the paper). ``ffn(layer, x)``: x (T, d_model) -> (T, d_model). Use as a context
    manager (closes the file).
    """

    def __init__(self, model, layout: FfnFileLayout, policy: str = "windowing", window: int = 4,
                 predictor: str | LowRankPredictor | None = "oracle", cold: bool = True, max_gap: int = 0) -> None:
        if not isinstance(layout, FfnFileLayout):
            raise TypeError(f"layout must be an FfnFileLayout (from write_ffn_file), got {type(layout).__name__}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if policy == "naive" and predictor is not None:
            raise ValueError(f"predictor must be None for policy 'naive' (it reads everything), got {predictor!r}")
        if policy != "naive" and not (predictor == "oracle" or isinstance(predictor, LowRankPredictor)):
            raise ValueError(f"predictor must be 'oracle' or a LowRankPredictor for policy {policy!r}, "
                             f"got {predictor!r}")
        window = _check_int("window", window, 1) if policy == "windowing" else 0
        _check_layout(layout, model)
        self.layout, self.policy, self.window, self.predictor = layout, policy, window, predictor
        self.max_gap = _check_int("max_gap", max_gap, 0)
        self.gate = [_ffn_weights(model, l)[0] for l in range(layout.n_layers)]  # in memory: for the oracle only
        self.dtype = np.dtype(layout.dtype)
        d_ff, d = layout.d_ff, layout.d_model
        self.caches = [NeuronCache(d_ff, d, self.dtype) for _ in range(layout.n_layers)]
        self.history = [deque(maxlen=window) for _ in range(layout.n_layers)]  # per token: neurons it used
        name = "none" if predictor is None else "oracle" if predictor == "oracle" else f"low-rank {predictor.rank}"
        self.stats = FlashStats(policy, layout.layout, window, name, cold=False, ffn_bytes=layout.file_bytes)
        self.cold = cold
        self.fd = os.open(layout.path, os.O_RDONLY)

    # -- file handling -------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FlashFFN:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin_step(self) -> None:
        """Start a forward step: new counters; with ``cold``, drop the file's page cache first."""
        self.stats.cold = _drop_page_cache(self.fd) if self.cold else False
        for values in (self.stats.step_bytes, self.stats.step_reads, self.stats.step_read_seconds,
                       self.stats.step_dram_bytes):
            values.append(0)

    def _read(self, layer: int, neurons: np.ndarray) -> None:
        """Bring ``neurons`` (sorted, not resident) of ``layer`` into its cache with coalesced preads."""
        cache = self.caches[layer]
        start = time.perf_counter()
        cache.add(neurons)
        wanted = np.zeros(self.layout.d_ff, bool)
        wanted[neurons] = True  # the rest of a read (gaps bridged by max_gap) is dropped
        d = self.layout.d_model
        for read in self.layout.plan_reads(layer, neurons, self.max_gap):
            data = os.pread(self.fd, read.nbytes, read.offset)
            if len(data) != read.nbytes:
                raise OSError(f"short read from {self.layout.path!r}: {len(data)} of {read.nbytes} bytes")
            values = np.frombuffer(data, self.dtype)
            at = 0
            for first, count, part in read.pieces:
                keep = wanted[first:first + count]
                slots = cache.slot_of[first:first + count][keep]
                if part == "bundle":
                    cache.rows[slots] = values[at:at + count * 3 * d].reshape(count, 3, d)[keep]
                    at += count * 3 * d
                else:
                    cache.rows[slots, PARTS.index(part)] = values[at:at + count * d].reshape(count, d)[keep]
                    at += count * d
            self.stats.step_reads[-1] += 1
            self.stats.step_bytes[-1] += read.nbytes
        self.stats.step_read_seconds[-1] += time.perf_counter() - start

    def _predict(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(T, d_ff) bool: the neurons to use at each position."""
        if self.predictor == "oracle":
            return F.linear(x, self.gate[layer]) > 0
        return self.predictor.predict(layer, x)

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The FFN of ``layer`` on x (T, d_model) with the weights read from the file -> (T, d_model)."""
        cache = self.caches[layer]
        if self.policy == "naive":
            use = None
            needed = np.arange(self.layout.d_ff)
        else:
            use = self._predict(layer, x)  # (T, d_ff)
            needed = np.flatnonzero(use.any(0).cpu().numpy())
        self._read(layer, needed[cache.slot_of[needed] < 0])
        self.stats.step_dram_bytes[-1] = max(self.stats.step_dram_bytes[-1], sum(c.nbytes for c in self.caches))

        w = torch.from_numpy(cache.rows[cache.slot_of[needed]]).to(x.dtype)  # (n, 3, d): gate, up, down
        h = F.relu(F.linear(x, w[:, 0])) * F.linear(x, w[:, 1])  # (T, n)
        if use is not None:
            h = h * use[:, torch.from_numpy(needed)]  # predicted inactive at this position: contributes nothing
        out = h @ w[:, 2]  # (T, d)

        # slide the window: keep what the last `window` tokens used, delete the rest
        keep = np.zeros(self.layout.d_ff, bool)
        if use is not None and self.window:
            self.history[layer].extend(use.cpu().numpy())
            keep = np.logical_or.reduce(np.stack(self.history[layer]), axis=0)
        cache.keep_only(keep)
        return out


class _FlashMLP(nn.Module):
    def __init__(self, flash: FlashFFN, layer: int) -> None:
        super().__init__()
        self.flash, self.layer = flash, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (1, T, d_model)
        return self.flash.ffn(self.layer, x[0])[None]


@torch.inference_mode()
def flash_generate(model, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int,
                   path: str | os.PathLike | FfnFileLayout, policy: str = "windowing", window: int = 4,
                   bundled: bool | None = None, predictor: str | LowRankPredictor | None = "oracle",
                   cold: bool = True, max_gap: int = 0) -> tuple[list[int], FlashStats]:
    """Greedy decoding with every FFN read from a file on storage. Returns (new token ids, ``FlashStats``).

    path: an ``FfnFileLayout`` from ``write_ffn_file``, or a file path where the model's FFN is written
    first (``bundled``: row-column bundles, the default, or separate matrices). One forward step per token
    (the prompt in one step), as ``labkit.decoding.generate``; inside each layer the FFN is served by a
    ``FlashFFN`` (see it for ``policy``, ``window``, ``predictor`` and ``max_gap``); attention and embeddings stay in
    memory. With ``predictor="oracle"`` the tokens equal ``generate(model, prompt, max_new_tokens)``'s
    (the FFN sums the same nonzero terms, in another order). ``cold``: drop the file's page cache before
    every step so reads reach the storage layer; times are machine-dependent, bytes and reads are not.
    """
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
    if isinstance(path, FfnFileLayout):
        if bundled is not None and bundled != (path.layout == "bundled"):
            raise ValueError(f"bundled={bundled} contradicts the file's layout {path.layout!r}")
        layout = path
    else:
        layout = write_ffn_file(model, path, "bundled" if bundled in (None, True) else "separate")
    if policy == "naive" and predictor == "oracle":
        predictor = None  # the default predictor means nothing to a policy that reads everything
    sequence = _as_tokens(prompt).tolist()
    if min(sequence) < 0 or max(sequence) >= model.config.vocab_size:
        raise ValueError(f"prompt must hold ids in 0..{model.config.vocab_size - 1}, "
                         f"got {min(sequence)}..{max(sequence)}")
    if len(sequence) + max_new_tokens > model.config.context:
        raise ValueError(f"max_new_tokens must be <= {model.config.context - len(sequence)} (context "
                         f"{model.config.context} - prompt of {len(sequence)}), got {max_new_tokens}")
    device = model.embed_tokens.weight.device
    kv_cache = model.new_cache(batch_size=1)

    with FlashFFN(model, layout, policy, window, predictor, cold, max_gap) as flash, \
            _replace_mlps(model, lambda l, mlp: _FlashMLP(flash, l)):
        for _ in range(max_new_tokens):
            flash.begin_step()
            start = time.perf_counter()
            new = torch.tensor([sequence[kv_cache.length:]], device=device)  # the prompt, then one token
            logits = model(new, cache=kv_cache)[0, -1]
            sequence.append(int(logits.argmax()))
            wall = time.perf_counter() - start
            flash.stats.step_compute_seconds.append(wall - flash.stats.step_read_seconds[-1])
        flash.stats.tokens = max_new_tokens
    return sequence[len(sequence) - max_new_tokens:], flash.stats
