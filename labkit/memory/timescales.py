"""Where do long memories come from? Single-neuron versus network timescales (after Khajehabdollahi et al., 2024).

A leaky RNN gives every neuron its own learnable time constant τ ≥ 1:

    h_t = (1 − 1/τ) ⊙ h_{t−1} + (1/τ) ⊙ f(W h_{t−1} + U x_t + b)

With τ = 1 the unit is an ordinary (non-leaky) RNN unit, h_t = f(W h_{t−1} + U x_t + b); a large τ makes the
neuron integrate slowly, a *single-neuron* timescale. Long memory can also come from the recurrent loop W alone:
the *network* timescale, measured here as the decay time of the hidden activity's autocorrelation while the
network is driven by random input (``network_timescale``).

The tasks read a stream of random bits (``parity_data``, ``dms_data``):

- N-parity: at every step t, the parity of the last N inputs x_{t−N+1} … x_t;
- N-DMS (delayed match to sample): at every step t, whether x_t equals x_{t−N}.

Both need a memory of exactly N steps. ``train_curriculum`` grows N from 2 under one of two curricula:

- ``"single"``: one readout head, retrained on N, then N + 1, … (earlier N are free to be forgotten);
- ``"multi"``: one head per N seen so far, all trained together; a head for N + 1 joins when level N passes.

The paper reports that single-head networks tend to lengthen their single-neuron τ as N grows, while multi-head
networks keep τ near 1, build long *network* timescales from recurrent connectivity, reach larger N faster and are
more robust to perturbation. ``ablate_taus`` is that robustness check: reset every τ to 1, or add noise to W, and
measure the accuracy lost. What this small CPU-sized version reproduces is measured, not assumed (see the chapter).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TASKS",
    "LeakyRNN",
    "ablate_taus",
    "accuracy",
    "autocorrelation",
    "dms_data",
    "make_data",
    "network_timescale",
    "parity_data",
    "timescale_from_autocorrelation",
    "train_curriculum",
]

TASKS = ("parity", "dms")
_MIN_EXCESS = 1e-2  # τ_init ≤ 1 + this is realised as exactly this: softplus'(raw) must not vanish at init
_TAU_ONE_RAW = -1e4  # softplus(-1e4) == 0 in float32: τ is exactly 1


# ---------------------------------------------------------------------------------------------------------
# Data


def _check_N(Ns: int | Sequence[int]) -> list[int]:
    if isinstance(Ns, (int, float, bool)):
        Ns = [Ns]
    Ns = list(Ns)
    if not Ns:
        raise ValueError("need at least one N")
    for N in Ns:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be a positive int, got {N!r}")
    return Ns


def _bits(n_steps: int, batch: int, seed: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
    return torch.randint(0, 2, (batch, n_steps), generator=g)


def parity_data(n_steps: int, N: int | Sequence[int], batch: int, seed: int | None = 0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bits and, for each N in ``N`` (an int or a list: one target column per N), the running N-parity.

    Returns ``x`` (B, T, 1) float in {0, 1}, ``y`` (B, T, K) float in {0, 1} with y[:, t, k] = parity of
    x[:, t−N_k+1 … t], and ``mask`` (B, T, K) bool, True from step t = N_k − 1 on (0-based: the first step that
    has N_k inputs behind it); y is 0 where the mask is False. ``generator`` overrides ``seed``.
    """
    Ns = _check_N(N)
    bits = _bits(n_steps, batch, seed, generator)
    cs = F.pad(bits.cumsum(1), (1, 0))  # cs[:, t + 1] = x_0 + … + x_t
    ys, ms = [], []
    t = torch.arange(n_steps)
    for n in Ns:
        start = (t - n + 1).clamp(min=0)
        window = cs[:, t + 1] - cs[:, start]
        valid = (t >= n - 1).expand(batch, n_steps)
        ys.append(torch.where(valid, window % 2, 0))
        ms.append(valid)
    return bits[..., None].float(), torch.stack(ys, -1).float(), torch.stack(ms, -1)


def dms_data(n_steps: int, N: int | Sequence[int], batch: int, seed: int | None = 0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bits and, for each N, the delayed match: y[:, t, k] = 1 if x_t == x_{t−N_k}, masked for t < N_k.

    Shapes and conventions as ``parity_data`` (the mask starts at t = N_k, the first step with a sample N_k
    steps back).
    """
    Ns = _check_N(N)
    bits = _bits(n_steps, batch, seed, generator)
    ys, ms = [], []
    t = torch.arange(n_steps)
    for n in Ns:
        past = torch.roll(bits, n, dims=1)
        valid = (t >= n).expand(batch, n_steps)
        ys.append(torch.where(valid, (bits == past).long(), 0))
        ms.append(valid)
    return bits[..., None].float(), torch.stack(ys, -1).float(), torch.stack(ms, -1)


def make_data(task: str, n_steps: int, N: int | Sequence[int], batch: int, seed: int | None = 0,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``parity_data`` or ``dms_data`` by name."""
    if task == "parity":
        return parity_data(n_steps, N, batch, seed, generator)
    if task == "dms":
        return dms_data(n_steps, N, batch, seed, generator)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


# ---------------------------------------------------------------------------------------------------------
# Model


class LeakyRNN(nn.Module):
    """A leaky RNN with one learnable time constant per neuron and ``n_heads`` binary readouts (logits).

    τ = 1 + softplus(raw) ≥ 1. ``tau_init`` sets every τ at init; values at or below 1 + 0.01 are realised as
    τ = 1.01, because at τ = 1 exactly the gradient with respect to ``raw`` vanishes and τ could never grow
    (``set_taus(1.0)`` does set τ = 1 exactly, for ablation). ``learn_tau=False`` freezes τ (a buffer).
    """

    def __init__(self, n_hidden: int = 64, n_heads: int = 1, tau_init: float = 1.0, learn_tau: bool = True,
                 nonlinearity: str = "tanh", n_inputs: int = 1):
        super().__init__()
        if n_hidden < 1 or n_heads < 1 or n_inputs < 1:
            raise ValueError("n_hidden, n_heads and n_inputs must be positive")
        if not tau_init >= 1.0:
            raise ValueError(f"tau_init must be >= 1, got {tau_init!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.n_hidden, self.n_heads, self.nonlinearity = n_hidden, n_heads, nonlinearity
        self.f = torch.tanh if nonlinearity == "tanh" else torch.relu
        self.inp = nn.Linear(n_inputs, n_hidden)  # U x + b
        self.rec = nn.Linear(n_hidden, n_hidden, bias=False)  # W h
        nn.init.normal_(self.rec.weight, 0.0, 1.0 / math.sqrt(n_hidden))  # spectral radius ≈ 1
        excess = max(float(tau_init) - 1.0, _MIN_EXCESS)
        raw = torch.full((n_hidden,), math.log(math.expm1(excess)))
        if learn_tau:
            self.raw_tau = nn.Parameter(raw)
        else:
            self.register_buffer("raw_tau", raw)
        self.heads = nn.ModuleList(nn.Linear(n_hidden, 1) for _ in range(n_heads))

    def taus(self) -> torch.Tensor:
        """The per-neuron time constants τ = 1 + softplus(raw), shape (n_hidden,)."""
        return 1.0 + F.softplus(self.raw_tau)

    @torch.no_grad()
    def set_taus(self, tau: float | torch.Tensor) -> None:
        """Overwrite τ (a number or an (n_hidden,) tensor, all ≥ 1); τ = 1 is exact (a non-leaky unit)."""
        tau = torch.as_tensor(tau, dtype=self.raw_tau.dtype).expand(self.n_hidden)
        if (tau < 1).any():
            raise ValueError("tau must be >= 1")
        excess = tau - 1.0
        raw = torch.where(excess > 0, torch.log(torch.expm1(excess.clamp(min=1e-30))), torch.full_like(tau, 0.0))
        self.raw_tau.copy_(torch.where(excess > 0, raw, torch.full_like(tau, _TAU_ONE_RAW)))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, n_inputs) -> logits (B, T, n_heads); with ``return_hidden`` also h: (B, T, n_hidden)."""
        B, T, _ = x.shape
        h = x.new_zeros(B, self.n_hidden) if h0 is None else h0
        inv = 1.0 / self.taus()
        keep = 1.0 - inv
        drive = self.inp(x)  # (B, T, H), precomputed for all steps
        W = self.rec.weight
        hs = []
        for t in range(T):
            h = keep * h + inv * self.f(drive[:, t] + h @ W.T)
            hs.append(h)
        H = torch.stack(hs, 1)
        logits = torch.cat([head(H) for head in self.heads], -1)
        return (logits, H) if return_hidden else logits


# ---------------------------------------------------------------------------------------------------------
# Timescales


def autocorrelation(x: torch.Tensor, max_lag: int, per_channel: bool = False) -> torch.Tensor:
    """The mean autocorrelation of the channels of x over lags 0 … max_lag, shape (max_lag + 1,).

    With ``per_channel`` the autocorrelation of each live channel instead, shape (max_lag + 1, C_alive).
    x: (T,), (T, C) or (B, T, C), time on the dimension before the last (or the only one). Each channel is
    centred on its time mean (per batch row); its autocorrelation pools the batch; channels with no variance
    (dead units) are left out of the mean over channels.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() == 1:
        x = x[None, :, None]
    elif x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"x must be (T,), (T, C) or (B, T, C), got shape {tuple(x.shape)}")
    T = x.shape[1]
    if not 0 <= max_lag < T:
        raise ValueError(f"max_lag must be in [0, T), got {max_lag} with T = {T}")
    x = x - x.mean(1, keepdim=True)
    var = (x * x).mean((0, 1))  # (C,)
    alive = var > 1e-12 * var.max().clamp(min=1e-300)
    if not alive.any():
        raise ValueError("every channel is constant: no autocorrelation")
    ac = torch.stack([(x[:, : T - k] * x[:, k:]).mean((0, 1)) for k in range(max_lag + 1)])  # (L, C)
    ac = ac[:, alive] / var[alive]
    return ac if per_channel else ac.mean(1)


def timescale_from_autocorrelation(ac: torch.Tensor, method: str = "fit", floor: float = 0.05) -> float:
    """The decay time τ of an autocorrelation curve ac[0 … L] (ac[0] = 1), in steps.

    ``"fit"``: least squares of log ac(k) = −k/τ over the lags k ≥ 1 before ac first drops below ``floor``
    (falls back to ``"1/e"`` when ac(1) is already below it). ``"1/e"``: the lag where ac crosses 1/e,
    linearly interpolated; if it never does within L, returns L (a lower bound).
    """
    ac = torch.as_tensor(ac, dtype=torch.float64).flatten()
    if method not in ("fit", "1/e"):
        raise ValueError(f"method must be 'fit' or '1/e', got {method!r}")
    if method == "fit":
        below = (ac[1:] < floor).nonzero()
        k_end = int(below[0]) + 1 if len(below) else len(ac)
        if k_end >= 2:
            lags = torch.arange(1, k_end, dtype=torch.float64)
            slope = (lags * ac[1:k_end].log()).sum() / (lags * lags).sum()
            return float(-1.0 / slope) if slope < 0 else float("inf")
    target = math.exp(-1.0)
    below = (ac < target).nonzero()
    if not len(below):
        return float(len(ac) - 1)
    k = int(below[0])
    a0, a1 = float(ac[k - 1]), float(ac[k])
    return (k - 1) + (a0 - target) / (a0 - a1)


@torch.no_grad()
def network_timescale(model: LeakyRNN, n_steps: int = 400, batch: int = 16, burn_in: int = 50,
                      max_lag: int = 60, method: str = "fit", reduce: str = "mean", seed: int = 0) -> float:
    """τ_net: decay time of the hidden activity's autocorrelation, the network driven by random bits.

    ``reduce="mean"``: the timescale of the autocorrelation averaged over neurons (signs can cancel: a neuron
    that alternates has a negative lag-1 autocorrelation); ``"median"``: the median over neurons of each
    neuron's own timescale.
    """
    if reduce not in ("mean", "median"):
        raise ValueError(f"reduce must be 'mean' or 'median', got {reduce!r}")
    x, _, _ = parity_data(n_steps + burn_in, 1, batch, seed=seed)
    _, H = model(x, return_hidden=True)
    ac = autocorrelation(H[:, burn_in:], min(max_lag, n_steps - 1), per_channel=reduce == "median")
    if reduce == "mean":
        return timescale_from_autocorrelation(ac, method)
    return float(torch.tensor([timescale_from_autocorrelation(c, method) for c in ac.T]).median())


# ---------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def accuracy(model: LeakyRNN, task: str, Ns: Sequence[int], heads: Sequence[int] | None = None,
             n_steps: int | None = None, batch: int = 512, seed: int = 12345) -> list[float]:
    """Accuracy of head ``heads[k]`` on N = ``Ns[k]`` (default heads 0, 1, …) over the unmasked steps."""
    Ns = _check_N(Ns)
    heads = list(range(len(Ns))) if heads is None else list(heads)
    n_steps = n_steps or max(Ns) + 40
    x, y, m = make_data(task, n_steps, Ns, batch, seed=seed)
    logits = model(x)[..., heads]
    hit = ((logits > 0).float() == y) & m
    return (hit.sum((0, 1)) / m.sum((0, 1))).tolist()


class _Adam:
    """Adam with one learning rate per parameter group (torch.optim's first use imports torch._dynamo: seconds)."""

    def __init__(self, groups: list[tuple[list[torch.Tensor], float]], betas=(0.9, 0.999), eps: float = 1e-8):
        self.groups = [(list(ps), lr) for ps, lr in groups]
        self.betas, self.eps, self.t = betas, eps, 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for ps, _ in self.groups for p in ps}

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for ps, lr in self.groups:
            for p in ps:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


def train_curriculum(task: str = "parity", mode: str = "single", N_max: int = 20, steps_per_level: int = 600,
                     threshold: float = 0.9, seconds: float | None = None, seed: int = 0, n_hidden: int = 64,
                     tau_init: float = 1.0, learn_tau: bool = True, nonlinearity: str = "tanh", lr: float = 3e-3,
                     tau_lr: float | None = 3e-2,
                     batch: int = 64, seq_extra: int = 24, eval_every: int = 25, eval_batch: int = 256,
                     measure_tau_net: bool = True) -> dict:
    """Grow N from 2 to ``N_max`` under the single- or multi-head curriculum; return the history.

    A level N passes when the accuracy on N (single) or on every N' ≤ N (multi, head k ↔ N = 2 + k), checked
    every ``eval_every`` steps on fresh sequences, exceeds ``threshold``. A level that does not pass within
    ``steps_per_level`` steps, or a run out of ``seconds`` (wall clock, all levels), ends the curriculum.
    Sequences are N + ``seq_extra`` steps long; every unmasked step is a target (BCE on the logits). Adam,
    gradients clipped at norm 1; the τ parameters get their own rate ``tau_lr`` (None: ``lr``), since at
    τ ≈ 1 softplus is flat and at the common rate τ barely moves within a CPU-sized budget.

    Returns ``{"levels": [...], "N_reached": int, "taus": tensor, "tau_net": float, "model": LeakyRNN, ...}``:
    each level records N, steps, passed, acc (per trained N), τ mean / median / max and τ_net after it.
    ``N_reached`` is the last N passed (1 if none) and ``model`` / ``taus`` / ``tau_net`` are the network as
    it was then (its ``head_Ns`` lists the N each head was trained on, for ``ablate_taus``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if mode not in ("single", "multi"):
        raise ValueError(f"unknown mode {mode!r}; expected 'single' or 'multi'")
    if isinstance(N_max, bool) or not isinstance(N_max, int) or N_max < 2:
        raise ValueError(f"N_max must be an int >= 2, got {N_max!r}")
    if steps_per_level < 1 or not 0 < threshold <= 1:
        raise ValueError("steps_per_level must be >= 1 and threshold in (0, 1]")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeakyRNN(n_hidden, n_heads=1 if mode == "single" else N_max - 1, tau_init=tau_init,
                         learn_tau=learn_tau, nonlinearity=nonlinearity)
    tau_params = [model.raw_tau] if learn_tau else []
    others = [p for n, p in model.named_parameters() if n != "raw_tau"]
    opt = _Adam([(others, lr), (tau_params, lr if tau_lr is None else tau_lr)])
    gen = torch.Generator().manual_seed(seed + 1)

    def tau_stats() -> dict:
        tau = model.taus().detach()
        return {"tau_mean": float(tau.mean()), "tau_median": float(tau.median()), "tau_max": float(tau.max())}

    levels: list[dict] = []
    best = {"N": 1, "state": copy.deepcopy(model.state_dict()), "head_Ns": [], "tau_net": float("nan")}
    out_of_time = False
    for N in range(2, N_max + 1):
        Ns = [N] if mode == "single" else list(range(2, N + 1))
        heads = list(range(len(Ns)))
        T = N + seq_extra
        steps, passed, acc = 0, False, [0.0] * len(Ns)
        while steps < steps_per_level:
            if seconds is not None and time.perf_counter() - t0 > seconds:
                out_of_time = True
                break
            x, y, m = make_data(task, T, Ns, batch, generator=gen)
            logits = model(x)[..., heads]
            loss = F.binary_cross_entropy_with_logits(logits[m], y[m])
            model.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
            if steps % eval_every == 0:
                acc = accuracy(model, task, Ns, heads, n_steps=T, batch=eval_batch, seed=seed + 10_000 + steps)
                if min(acc) > threshold:
                    passed = True
                    break
        if steps == 0:  # out of time before the level began: not a level tried
            break
        rec = {"N": N, "steps": steps, "passed": passed, "acc": dict(zip(Ns, acc)),
               "time": time.perf_counter() - t0, **tau_stats()}
        rec["tau_net"] = network_timescale(model, seed=seed) if measure_tau_net else float("nan")
        levels.append(rec)
        if not passed:
            break
        best = {"N": N, "state": copy.deepcopy(model.state_dict()), "head_Ns": Ns, "tau_net": rec["tau_net"]}
        if out_of_time:
            break
    model.load_state_dict(best["state"])
    model.head_Ns = best["head_Ns"]
    model.task = task
    return {"task": task, "mode": mode, "levels": levels, "N_reached": best["N"], "taus": model.taus().detach(),
            "tau_net": best["tau_net"], "model": model, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# Robustness


@torch.no_grad()
def ablate_taus(model: LeakyRNN, task: str | None = None, Ns: Sequence[int] | None = None,
                w_noise: float = 0.1, batch: int = 512, seed: int = 0) -> dict:
    """Accuracy before and after (a) resetting every τ to 1, (b) adding noise to the recurrent weights W.

    The noise is Gaussian with std ``w_noise`` × std(W). ``task`` and ``Ns`` (head k ↔ Ns[k]) default to what
    ``train_curriculum`` stored on the model. Returns per-N accuracies ``acc``, ``acc_tau1``, ``acc_noise`` and
    the mean drops ``drop_tau1``, ``drop_noise`` (positive = worse). The model itself is not changed.
    """
    task = task if task is not None else getattr(model, "task", None)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    Ns = list(Ns) if Ns is not None else list(getattr(model, "head_Ns", []))
    if not Ns:
        raise ValueError("no N to evaluate: pass Ns (the model passed no level)")
    Ns = _check_N(Ns)

    def acc(m: LeakyRNN) -> list[float]:
        return accuracy(m, task, Ns, batch=batch, seed=seed + 777)

    base = acc(model)
    m1 = copy.deepcopy(model)
    m1.set_taus(1.0)
    a1 = acc(m1)
    m2 = copy.deepcopy(model)
    W = m2.rec.weight
    g = torch.Generator().manual_seed(seed)
    W.add_(w_noise * W.std() * torch.randn(W.shape, generator=g))
    a2 = acc(m2)

    def mean_drop(a: list[float]) -> float:
        return sum(b - c for b, c in zip(base, a)) / len(base)

    return {"Ns": Ns, "acc": dict(zip(Ns, base)), "acc_tau1": dict(zip(Ns, a1)), "acc_noise": dict(zip(Ns, a2)),
            "drop_tau1": mean_drop(a1), "drop_noise": mean_drop(a2)}
