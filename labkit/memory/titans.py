"""Titans: a neural long-term memory that keeps learning at test time (Behrouz, Zhong & Mirrokni, 2024).

The memory M is a small network (a matrix, or a 2-layer MLP) whose *weights* are the state. Reading a token
asks M a question; writing one is a gradient step on an associative loss. Per head, with keys L2-normalised,

    k_t = W_K x_t,  v_t = W_V x_t,  q_t = W_Q x_t          ℓ(M; x_t) = ‖M(k_t) − v_t‖²

    surprise with momentum:   S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t−1}; x_t)
    forgetting:               M_t = (1 − α_t) M_{t−1} + S_t
    read (no update):         y_t = M_t(q_t)

The gradient is the *momentary surprise* (how badly M predicted v_t from k_t), S carries the *past
surprise* with momentum η_t, and α_t is a *forgetting* gate (weight decay). θ_t, η_t, α_t depend on the
token: sigmoid(Linear(x_t)), one per head (θ_t scaled into (0, max_lr)).

Chunk rule (the paper's parallel training). Within a chunk of C tokens every gradient is taken at the
weights the chunk started with, M_{chunk start}; only momentum and decay run token by token, as linear
scans x_t = a_t x_{t−1} + b_t (``linear_scan``). C = 1 is the fully online memory (each gradient at
M_{t−1}); a larger C trades exactness of the online rule for parallelism. Chunks are aligned to absolute
positions (multiples of C since the start of the sequence), whatever the calls' lengths.

- ``titans_recurrent``: the rule in the plainest token loop, gradients by autograd (the specification);
- ``titans_chunk``: the same outputs, chunk by chunk, with closed-form gradients (``memory_grad``);
- ``Titans``: the mixer (memory as a layer); ``TitansMAG`` and ``TitansMAC``: the paper's hybrids with
  attention (memory as a gate, memory as context).

Where θ starts. Within a chunk the update is one gradient step from M_0 on the chunk's summed loss
Σ_i θ_i ℓ(M; x_i) (the gradients are all taken at M_0, nothing corrects them in between). For the linear memory
without momentum it maps M_0 to a_C M_0 − 2 Σ_i θ_i Γ_Ci k_i k_iᵀ M_0 + (terms in v), a_C = Π(1 − α_i) and
Γ_Ci ∈ [0, 1] the decay after token i; with unit keys the eigenvalues lie in [a_C − 2 Σ_i θ_i, a_C]. Online
(C = 1) any θ < 1 is stable; a chunk of C correlated keys with θ ≈ 1/2 each multiplies M_0 by up to 1 − C
per chunk, and the memory explodes (on an MQAR batch at initialisation ‖M‖ ≈ 4·10³ after 64 tokens at
C = 16, against ≈ 10 online). So θ starts at min(max_lr/2, 1/C) (``_initial_theta``; the data-dependent part
of the gate spreads θ around it): Σ θ_i ≤ 1 over a chunk, the chunk's version of the online limit θ ≤ 1, at
which no chunk step without momentum or forgetting can expand the memory, whatever the keys (a steady decay α
adds at most ~α per chunk). C = 1 keeps θ = 1/2 (one step stores v exactly). Momentum repeats a chunk's stale
gradient and can double its step when all keys are alike; a fresh model's keys are not, and halving θ for
momentum left MQAR at 0.27 instead of 0.94 after 300 steps (width 32, seed 0). Starting in the exploding
regime breaks learning most visibly with forgetting on: the outer optimiser tames the blow-up fastest by
raising α, to ~0.35 per token, a memory of ~3 tokens that can no longer answer a recall query, and stays there.

Continuation. A state holds the current weights M, the momentum S and, when a call ends inside a chunk,
also the weights of that chunk's start (the gradients of the chunk's remaining tokens are taken there).
So continuation is exact at *every* split point, not only at chunk boundaries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit.memory.base import MemoryState, Mixer, check_gate, merge_heads, split_heads

__all__ = ["KINDS", "NeuralMemory", "Titans", "TitansMAC", "TitansMAG", "forgetting_scan", "init_memory",
           "linear_scan", "memory_grad", "memory_loss", "memory_read", "momentum_scan", "titans_chunk",
           "titans_recurrent"]

KINDS = ("linear", "mlp")

Weights = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# checks


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"memory must be one of {list(KINDS)}, got {kind!r}")


def _check_max_lr(max_lr) -> None:
    if isinstance(max_lr, bool) or not isinstance(max_lr, (int, float)) or not 0 < max_lr < math.inf:
        raise ValueError(f"max_lr must be a positive finite number, got {max_lr!r}")


# ----------------------------------------------------------------------------------------------------------
# the memory network: weights, read, loss, gradient


def init_memory(kind: str, n_heads: int, d_key: int, d_value: int, hidden: int = 2) -> Weights:
    """Initial memory weights, one set per head (``nn.Parameter``-ready tensors).

    "linear": ``{"W": (H, Dk, Dv)}`` zeros (M(k) = Wᵀk: an empty associative memory).
    "mlp": ``{"W1": (H, Dk, Dh), "W2": (H, Dh, Dv)}`` with Dh = hidden·Dk, M(k) = W2ᵀ silu(W1ᵀ k) / √Dh;
    standard normal (an all-zero MLP would have zero gradients and never learn). The 1/√Dh keeps the
    inner loss's curvature O(1) at any width (as the linear memory's is, 2‖k‖² = 2), so learning rates
    θ in (0, 1) are stable for both memories. No residual: a memory with one would always echo its
    query, which the block's own residual connection already does.
    """
    _check_kind(kind)
    if kind == "linear":
        return {"W": torch.zeros(n_heads, d_key, d_value)}
    d_hidden = hidden * d_key
    return {"W1": torch.randn(n_heads, d_key, d_hidden),  # keys have unit norm: pre-activations ~ N(0, 1)
            "W2": torch.randn(n_heads, d_hidden, d_value)}


def _matvec(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Rows x (B, H, C, D) times W: (B, H, D, E) shared by all C rows, or (B, H, C, D, E) one per row."""
    if W.dim() == x.dim():
        return x @ W
    return (x.unsqueeze(-2) @ W).squeeze(-2)


def memory_read(kind: str, weights: Weights, x: torch.Tensor) -> torch.Tensor:
    """M(x): x (B, H, C, Dk) -> (B, H, C, Dv).

    ``weights``: name -> (B, H, *shape), one memory for all C rows, or (B, H, C, *shape), one per row
    (the memory after each token, as ``titans_chunk`` produces them).
    """
    if kind == "linear":
        return _matvec(x, weights["W"])
    W1 = weights["W1"]
    return _matvec(F.silu(_matvec(x, W1)) / math.sqrt(W1.shape[-1]), weights["W2"])


def memory_loss(kind: str, weights: Weights, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ℓ(M; k, v) = ‖M(k) − v‖² per row: k (B, H, C, Dk), v (B, H, C, Dv) -> (B, H, C)."""
    return (memory_read(kind, weights, k) - v).square().sum(dim=-1)


def memory_grad(kind: str, weights: Weights, k: torch.Tensor, v: torch.Tensor) -> Weights:
    """∇_M ℓ(M; k_t, v_t) for every row t, in closed form, all at the same weights M.

    weights: name -> (B, H, *shape); k (B, H, C, Dk), v (B, H, C, Dv). Returns name -> (B, H, C, *shape).

    "linear", M(k) = Wᵀk, error e = Wᵀk − v:   ∇_W ℓ = 2 k eᵀ.
    "mlp", z = W1ᵀk, h = silu(z)/√Dh, M(k) = W2ᵀh: backpropagation by hand,
        ∇_W2 ℓ = h (2e)ᵀ,   δ = (W2 2e) ⊙ silu'(z)/√Dh,   ∇_W1 ℓ = k δᵀ,
    with silu'(z) = σ(z) (1 + z (1 − σ(z))).
    """
    if kind == "linear":
        e = _matvec(k, weights["W"]) - v
        return {"W": 2 * k[..., :, None] * e[..., None, :]}
    W1, W2 = weights["W1"], weights["W2"]
    c = 1 / math.sqrt(W1.shape[-1])
    z = _matvec(k, W1)  # (B, H, C, Dh)
    s = torch.sigmoid(z)
    h = c * z * s
    d_out = 2 * (_matvec(h, W2) - v)  # (B, H, C, Dv)
    delta = c * _matvec(d_out, W2.transpose(-1, -2)) * s * (1 + z * (1 - s))
    return {"W1": k[..., :, None] * delta[..., None, :], "W2": h[..., :, None] * d_out[..., None, :]}


# ----------------------------------------------------------------------------------------------------------
# momentum and forgetting: linear scans over a chunk


def linear_scan(a: torch.Tensor | None, b: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Every x_t of the recurrence x_t = a_t · x_{t−1} + b_t, t = 1..C, from x_0 = x0.

    a: (B, H, C) scalars, or None for a ≡ 1 (then it is a cumulative sum); b: (B, H, C, *shape);
    x0: (B, H, *shape). Returns (B, H, C, *shape). A plain loop over C: chunks are short.
    """
    if a is None:
        return x0.unsqueeze(2) + b.cumsum(dim=2)
    a = a.reshape(*a.shape, *([1] * (b.dim() - 3)))
    xs, x = [], x0
    for t in range(b.shape[2]):
        x = a[:, :, t] * x + b[:, :, t]
        xs.append(x)
    return torch.stack(xs, dim=2)


def momentum_scan(grads: Weights, theta: torch.Tensor, eta: torch.Tensor, momentum: Weights) -> Weights:
    """Surprise with momentum for every token of a chunk: S_t = η_t S_{t−1} − θ_t u_t.

    grads u: name -> (B, H, C, *shape); theta, eta: (B, H, C); momentum S_0: name -> (B, H, *shape).
    Returns name -> (B, H, C, *shape).
    """
    return {n: linear_scan(eta, -_per_token(theta, u) * u, momentum[n]) for n, u in grads.items()}


def forgetting_scan(steps: Weights, alpha: torch.Tensor | None, memory: Weights) -> Weights:
    """The memory after every token of a chunk: M_t = (1 − α_t) M_{t−1} + step_t (α None: no forgetting).

    steps: name -> (B, H, C, *shape); alpha: (B, H, C) or None; memory M_0: name -> (B, H, *shape).
    """
    keep = None if alpha is None else 1 - alpha
    return {n: linear_scan(keep, step, memory[n]) for n, step in steps.items()}


def _per_token(gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H, C) -> (B, H, C, 1, ...) broadcastable against ``like`` (B, H, C, *shape)."""
    return gate.reshape(*gate.shape, *([1] * (like.dim() - 3)))


# ----------------------------------------------------------------------------------------------------------
# functional ops: the specification and the chunked form


def _check_titans_args(q, k, v, theta, eta, alpha, memory, momentum) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, T, Dk), got shapes {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, H, T, Dv) with (B, H, T) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if q.shape[2] < 1:
        raise ValueError("the sequence must hold at least one token (T >= 1), got T = 0")
    for name, gate, high in (("theta", theta, math.inf), ("eta", eta, 1.0), ("alpha", alpha, 1.0)):
        if gate is None:
            continue
        check_gate(name, gate, 0.0, high)
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(gate.shape)}")
    if (eta is None) != (momentum is None):
        raise ValueError("eta and momentum go together: pass both (momentum on) or neither (momentum off), "
                         f"got eta {'None' if eta is None else 'given'} and momentum "
                         f"{'None' if momentum is None else 'given'}")
    if not isinstance(memory, dict) or not memory:
        raise ValueError(f"memory must be a dict of weight tensors (B, H, ...), got {type(memory).__name__}")


def titans_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                     eta: torch.Tensor | None, alpha: torch.Tensor | None, memory: Weights,
                     momentum: Weights | None = None, *, kind: str = "linear",
                     chunk_size: int = 1) -> tuple[torch.Tensor, Weights, Weights | None]:
    """The Titans memory, token by token (the specification of ``titans_chunk``).

    q, k: (B, H, T, Dk); v: (B, H, T, Dv); theta (learning rates), eta (momenta; None = no momentum),
    alpha (forgetting; None = none): (B, H, T); memory M_0: name -> (B, H, *shape) (``init_memory``'s
    names); momentum S_0: like memory, required with eta. For t = 1..T:

        M' = M at the start of t's chunk (t − 1 a multiple of chunk_size), u_t = ∇ℓ(M'; k_t, v_t)
        S_t = η_t S_{t−1} − θ_t u_t           M_t = (1 − α_t) M_{t−1} + S_t          o_t = M_t(q_t)

    (without momentum S_t is just −θ_t u_t). The gradient comes from autograd (``torch.func.grad``), not
    from ``memory_grad``, so this loop also checks the closed forms. chunk_size = 1: M' = M_{t−1}, the
    fully online memory. Returns o: (B, H, T, Dv), the final memory and the final momentum (or None).
    """
    _check_kind(kind)
    _check_positive_int("chunk_size", chunk_size)
    _check_titans_args(q, k, v, theta, eta, alpha, memory, momentum)

    def total_loss(weights: Weights, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        # one loss per (batch, head); their sum has each (batch, head)'s own gradient in its slot
        return memory_loss(kind, weights, k_t, v_t).sum()

    gradient = torch.func.grad(total_loss)
    M, S = dict(memory), (None if momentum is None else dict(momentum))
    outs = []
    for t in range(q.shape[2]):
        if t % chunk_size == 0:
            M_start = M
        u = gradient(M_start, k[:, :, t:t + 1], v[:, :, t:t + 1])
        th = theta[:, :, t]
        if S is None:
            step = {n: -_scalar(th, g) * g for n, g in u.items()}
        else:
            S = {n: _scalar(eta[:, :, t], g) * S[n] - _scalar(th, g) * g for n, g in u.items()}
            step = S
        keep = 1.0 if alpha is None else 1 - alpha[:, :, t]
        M = {n: _scalar(keep, M[n]) * M[n] + step[n] for n in M}
        outs.append(memory_read(kind, M, q[:, :, t:t + 1]))
    return torch.cat(outs, dim=2), M, S


def _scalar(gate, like: torch.Tensor):
    """A per-(batch, head) gate (B, H) shaped to multiply a weight tensor (B, H, *shape)."""
    if not torch.is_tensor(gate):
        return gate
    return gate.reshape(*gate.shape, *([1] * (like.dim() - 2)))


def titans_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                 eta: torch.Tensor | None, alpha: torch.Tensor | None, memory: Weights,
                 momentum: Weights | None = None, *, kind: str = "linear", chunk_size: int = 16,
                 offset: int = 0, start: Weights | None = None,
                 ) -> tuple[torch.Tensor, Weights, Weights | None, Weights | None]:
    """``titans_recurrent``'s outputs chunk by chunk: per chunk one batched closed-form gradient, two scans.

    Shapes and gates as in ``titans_recurrent``. Per chunk of C tokens starting from (M_0, S_0):

        U = [∇ℓ(M_0; k_t, v_t)]_t (``memory_grad``)   S = momentum_scan(U)   M = forgetting_scan(S)   o_t = M_t(q_t)

    The C memories M_t are materialised ((B, H, C, *shape)), which keeps the read trivially exact.

    Continuing inside a chunk: ``offset`` = tokens of the current chunk already written (the position
    modulo chunk_size) and ``start`` = the weights that chunk started with (required when offset > 0).
    Returns o: (B, H, T, Dv), the final memory, the final momentum (None without eta) and the start
    weights of the chunk the call ended in (None when it ended exactly at a chunk boundary).
    """
    _check_kind(kind)
    _check_positive_int("chunk_size", chunk_size)
    _check_titans_args(q, k, v, theta, eta, alpha, memory, momentum)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < chunk_size:
        raise ValueError(f"offset must be an int in [0, chunk_size={chunk_size}), got {offset!r}")
    if offset > 0 and start is None:
        raise ValueError(f"start (the weights at the chunk's start) is required when offset > 0, got offset={offset}")
    T = q.shape[2]
    outs, lo = [], 0
    while lo < T:
        if offset == 0:
            start = memory
        hi = min(T, lo + chunk_size - offset)
        grads = memory_grad(kind, start, k[:, :, lo:hi], v[:, :, lo:hi])
        a = None if alpha is None else alpha[:, :, lo:hi]
        if eta is None:
            steps = {n: -_per_token(theta[:, :, lo:hi], g) * g for n, g in grads.items()}
        else:
            steps = momentum_scan(grads, theta[:, :, lo:hi], eta[:, :, lo:hi], momentum)
            momentum = {n: s[:, :, -1] for n, s in steps.items()}
        memories = forgetting_scan(steps, a, memory)
        outs.append(memory_read(kind, memories, q[:, :, lo:hi]))
        memory = {n: m[:, :, -1] for n, m in memories.items()}
        offset = (offset + hi - lo) % chunk_size
        lo = hi
    return torch.cat(outs, dim=2), memory, momentum, (start if offset else None)


# ----------------------------------------------------------------------------------------------------------
# the memory as a module (shared by Titans, TitansMAG, TitansMAC)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _initial_theta(max_lr: float, n_grads: int) -> float:
    """The learning rate θ a memory starts from: min(max_lr/2, 1/n_grads).

    ``n_grads``: how many gradients, all taken at the chunk's start weights, one chunk step sums (chunk_size
    for Titans; chunk_size · window for Atlas's Omega rule). Then Σ θ ≤ 1 over a chunk, the chunk's version of
    the online limit θ ≤ 1: without momentum or forgetting and for unit keys no chunk step can expand the
    memory, whatever the keys (one key repeated is the edge). C = 1 keeps the online start max_lr/2. See the
    module docstring.
    """
    return min(max_lr / 2, 1 / n_grads)


class NeuralMemory(nn.Module):
    """The neural long-term memory with its own projections and gates; no output projection.

    ``forward(x, tensors, seen)`` writes and reads T tokens: x (B, T, d_model) -> (B, T, d_model) (heads
    merged). ``tensors``: the memory part of a mixer's state, with names

        "memory.<w>"       the current weights (B, H, *shape), <w> in ``init_memory``'s names
        "momentum.<w>"     the surprise S (with momentum)
        "chunk_start.<w>"  the weights at the current chunk's start (only while inside a chunk)

    ``init``: the initial memory weights, learned (the meta-learned initial state), one set per head.
    """

    def __init__(self, d_model: int, n_heads: int, *, memory: str = "linear", chunk_size: int = 16,
                 hidden: int = 2, max_lr: float = 1.0, momentum: bool = True, forgetting: bool = True) -> None:
        super().__init__()
        _check_kind(memory)
        _check_positive_int("chunk_size", chunk_size)
        _check_positive_int("hidden", hidden)
        _check_max_lr(max_lr)
        _check_bool("momentum", momentum)
        _check_bool("forgetting", forgetting)
        self.kind, self.chunk_size, self.hidden, self.max_lr = memory, chunk_size, hidden, float(max_lr)
        self.momentum, self.forgetting = momentum, forgetting
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        # data-dependent gates, one per head and token
        self.theta_proj = nn.Linear(d_model, n_heads)  # learning rate θ = max_lr · sigmoid(.)
        self.eta_proj = nn.Linear(d_model, n_heads) if momentum else None  # momentum η
        self.alpha_proj = nn.Linear(d_model, n_heads) if forgetting else None  # forgetting α
        with torch.no_grad():
            # θ ≈ min(max_lr/2, 1/C) at first: Σ θ ≤ 1 over a chunk (``_initial_theta``)
            self.theta_proj.bias.fill_(_logit(_initial_theta(self.max_lr, chunk_size) / self.max_lr))
            if momentum:
                self.eta_proj.bias.zero_()  # η ≈ 0.5
            if forgetting:
                self.alpha_proj.bias.fill_(_logit(0.02))  # forget little at first: α ≈ 0.02
        init = init_memory(memory, n_heads, self.head_dim, self.head_dim, hidden)
        self.init = nn.ParameterDict({n: nn.Parameter(w) for n, w in init.items()})

    def extra_repr(self) -> str:
        return (f"memory={self.kind!r}, chunk_size={self.chunk_size}, hidden={self.hidden}, "
                f"max_lr={self.max_lr}, momentum={self.momentum}, forgetting={self.forgetting}")

    def weights_numel(self) -> int:
        """Numbers in one set of memory weights (all heads)."""
        return sum(w.numel() for w in self.init.values())

    def state_size(self, seq_len: int) -> int:
        """Memory + momentum, + the chunk-start weights when ``seq_len`` ends inside a chunk."""
        n = self.weights_numel()
        return n * (1 + self.momentum) + (n if seq_len % self.chunk_size else 0)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """θ, η, α: (B, H, T) each (η None without momentum, α None without forgetting)."""
        theta = self.max_lr * torch.sigmoid(self.theta_proj(x)).transpose(1, 2)
        eta = torch.sigmoid(self.eta_proj(x)).transpose(1, 2) if self.momentum else None
        alpha = torch.sigmoid(self.alpha_proj(x)).transpose(1, 2) if self.forgetting else None
        return theta, eta, alpha

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised queries per head: (B, T, d_model) -> (B, H, T, D)."""
        return F.normalize(split_heads(self.q_proj(x), self.n_heads), dim=-1)

    def initial(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The state tensors of an empty memory: learned initial weights, zero momentum."""
        tensors = {f"memory.{n}": w.expand(batch_size, *w.shape) for n, w in self.init.items()}
        if self.momentum:
            tensors.update({f"momentum.{n}": w.new_zeros(batch_size, *w.shape) for n, w in self.init.items()})
        return tensors

    def current(self, tensors: dict[str, torch.Tensor]) -> Weights:
        """The current memory weights held in ``tensors``."""
        return {n: tensors[f"memory.{n}"] for n in self.init}

    def retrieve(self, x: torch.Tensor, weights: Weights) -> torch.Tensor:
        """Read without writing: M(q(x)) for x (B, T, d_model) -> (B, T, d_model)."""
        return merge_heads(memory_read(self.kind, weights, self.queries(x)))

    def forward(self, x: torch.Tensor, tensors: dict[str, torch.Tensor] | None,
                seen: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Write and read x (B, T, d_model) -> (B, T, d_model); ``seen`` tokens came before (chunk alignment)."""
        B = x.shape[0]
        tensors = self.initial(B) if tensors is None else tensors
        q = self.queries(x)
        k = F.normalize(split_heads(self.k_proj(x), self.n_heads), dim=-1)
        v = split_heads(self.v_proj(x), self.n_heads)
        theta, eta, alpha = self.gates(x)
        names = list(self.init)
        momentum = {n: tensors[f"momentum.{n}"] for n in names} if self.momentum else None
        offset = seen % self.chunk_size
        start = {n: tensors[f"chunk_start.{n}"] for n in names} if offset else None
        o, memory, momentum, start = titans_chunk(q, k, v, theta, eta, alpha, self.current(tensors), momentum,
                                                  kind=self.kind, chunk_size=self.chunk_size, offset=offset,
                                                  start=start)
        out = {f"memory.{n}": w for n, w in memory.items()}
        if momentum is not None:
            out.update({f"momentum.{n}": s for n, s in momentum.items()})
        if start is not None:
            out.update({f"chunk_start.{n}": w for n, w in start.items()})
        return merge_heads(o), out


def _memory_options(memory, chunk_size, hidden, max_lr, momentum, forgetting) -> dict:
    return dict(memory=memory, chunk_size=chunk_size, hidden=hidden, max_lr=max_lr, momentum=momentum,
                forgetting=forgetting)


class Titans(Mixer):
    """Titans' memory as a layer (MAL without the attention): y = o_proj(M_t(q_t)), heads merged.

    Options: ``memory`` "linear" (a Dk × Dv matrix per head) or "mlp" (Dk → hidden·Dk → Dv, SiLU);
    ``chunk_size`` C of the chunk rule (1 = fully online); ``hidden`` the MLP's expansion;
    ``max_lr`` the largest learning rate θ; ``momentum`` (η, else S_t = −θ_t ∇ℓ); ``forgetting`` (α, else 0).
    State: see ``NeuralMemory``. Continuation is exact at any split point.
    """

    name = "titans"

    def __init__(self, d_model: int, n_heads: int = 1, *, memory: str = "linear", chunk_size: int = 16,
                 hidden: int = 2, max_lr: float = 1.0, momentum: bool = True, forgetting: bool = True) -> None:
        super().__init__(d_model, n_heads)
        self.ltm = NeuralMemory(d_model, n_heads, **_memory_options(memory, chunk_size, hidden, max_lr, momentum,
                                                                     forgetting))
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return self.ltm.extra_repr()

    def state_size(self, seq_len: int) -> int:
        return self.ltm.state_size(seq_len)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the memory after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        seen = 0 if state is None else state.seen
        h, tensors = self.ltm(x, None if state is None else state.tensors, seen)
        return self.o_proj(h), MemoryState(self.fingerprint, tensors, seen + T)


class TitansMAG(Mixer):
    """Memory as a gate: sliding-window attention and the memory read the same input, a gate mixes them.

        y = o_proj(g ⊙ attn(x) + (1 − g) ⊙ mem(x)),      g = sigmoid(Linear(x))  (per feature)

    attn: causal softmax attention over the last ``window`` tokens (the token itself included); mem: the
    ``NeuralMemory`` (same options as ``Titans``). Attention is short-term, exact memory; the neural memory
    is the long-term, compressed one. State: the memory's tensors and ``"attn.k"``, ``"attn.v"``
    (B, H, ≤ window, D), the keys and values of the last ``window`` tokens.
    """

    name = "titans_mag"

    def __init__(self, d_model: int, n_heads: int = 1, *, window: int = 16, memory: str = "linear",
                 chunk_size: int = 16, hidden: int = 2, max_lr: float = 1.0, momentum: bool = True,
                 forgetting: bool = True) -> None:
        super().__init__(d_model, n_heads)
        _check_positive_int("window", window)
        self.window = window
        self.ltm = NeuralMemory(d_model, n_heads, **_memory_options(memory, chunk_size, hidden, max_lr, momentum,
                                                                     forgetting))
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"window={self.window}, {self.ltm.extra_repr()}"

    def state_size(self, seq_len: int) -> int:
        return self.ltm.state_size(seq_len) + 2 * self.d_model * min(seq_len, self.window)

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the state after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        seen = 0 if state is None else state.seen
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_heads)
        v = split_heads(self.v_proj(x), self.n_heads)
        memory_tensors = None
        if state is not None:
            k = torch.cat([state["attn.k"], k], dim=2)  # (B, H, P + T, D): P cached tokens first
            v = torch.cat([state["attn.v"], v], dim=2)
            memory_tensors = {n: t for n, t in state.tensors.items() if not n.startswith("attn.")}
        P = k.shape[2] - T
        i = torch.arange(P, P + T, device=x.device)[:, None]  # query positions
        j = torch.arange(P + T, device=x.device)[None, :]  # key positions
        band = (j <= i) & (i - j < self.window)  # causal, at most `window` tokens back (itself included)
        attn = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=band))
        mem, tensors = self.ltm(x, memory_tensors, seen)
        g = torch.sigmoid(self.g_proj(x))
        y = self.o_proj(g * attn + (1 - g) * mem)
        tensors.update({"attn.k": k[:, :, -self.window:], "attn.v": v[:, :, -self.window:]})
        return y, MemoryState(self.fingerprint, tensors, seen + T)


class TitansMAC(Mixer):
    """Memory as context: per segment, attention reads the persistent tokens, what the memory recalls, and
    the segment; the memory then learns from the attention's output.

    For a segment s of tokens x (segments of ``segment`` tokens, aligned to absolute positions):

        h = M_{start of s}(q(x))                          recall, no update (memory at the segment's start)
        z = attn(x; [persistent ‖ h ‖ x])                  causal: token i sees all persistent tokens, h_{≤i}, x_{≤i}
        r = mem(z)                                         write z into the memory (the chunk rule), read it back
        y = o_proj(z ⊙ r)

    ``n_persistent`` learned vectors (task knowledge, independent of the input) join every segment's keys.
    Attention never looks past the segment: the memory carries everything older.

    State: the memory's tensors; while a call ends inside a segment also ``"segment.x"`` (B, n, d_model),
    the segment's first n inputs, and ``"segment_start.<w>"``, the memory weights at the segment's start
    (the segment's remaining tokens recall from them), so continuation is exact at any split point.
    """

    name = "titans_mac"

    def __init__(self, d_model: int, n_heads: int = 1, *, segment: int | None = None, n_persistent: int = 4,
                 memory: str = "linear", chunk_size: int = 16, hidden: int = 2, max_lr: float = 1.0,
                 momentum: bool = True, forgetting: bool = True) -> None:
        super().__init__(d_model, n_heads)
        segment = chunk_size if segment is None else segment
        _check_positive_int("segment", segment)
        if isinstance(n_persistent, bool) or not isinstance(n_persistent, int) or n_persistent < 0:
            raise ValueError(f"n_persistent must be an int >= 0, got {n_persistent!r}")
        self.segment, self.n_persistent = segment, n_persistent
        self.ltm = NeuralMemory(d_model, n_heads, **_memory_options(memory, chunk_size, hidden, max_lr, momentum,
                                                                     forgetting))
        self.persistent = nn.Parameter(torch.randn(n_persistent, d_model) / math.sqrt(d_model))
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"segment={self.segment}, n_persistent={self.n_persistent}, {self.ltm.extra_repr()}"

    def state_size(self, seq_len: int) -> int:
        partial = seq_len % self.segment
        extra = partial * self.d_model + self.ltm.weights_numel() if partial else 0
        return self.ltm.state_size(seq_len) + extra

    def attend(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One segment's attention: queries x (B, L, d), keys/values [persistent ‖ h ‖ x] -> (B, L, d)."""
        B, L, _ = x.shape
        context = torch.cat([self.persistent.expand(B, -1, -1), h, x], dim=1)  # (B, Np + 2L, d)
        q = split_heads(self.q_proj(x), self.n_heads)
        k = split_heads(self.k_proj(context), self.n_heads)
        v = split_heads(self.v_proj(context), self.n_heads)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        mask = torch.cat([torch.ones(L, self.n_persistent, dtype=torch.bool, device=x.device), causal, causal], 1)
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the state after these T tokens."""
        self.check_input(x)
        B, T, _ = x.shape
        self.check_state(state, B)
        seen = 0 if state is None else state.seen
        names = list(self.ltm.init)
        tensors, buffered, seg_start = None, 0, None
        if state is not None:
            tensors = {n: t for n, t in state.tensors.items() if not n.startswith("segment")}
            if "segment.x" in state.tensors:  # the call starts inside a segment: put its first tokens back
                x = torch.cat([state["segment.x"], x], dim=1)
                buffered = state["segment.x"].shape[1]
                seg_start = {n: state[f"segment_start.{n}"] for n in names}
        outs, position = [], seen
        for lo in range(0, x.shape[1], self.segment):
            seg = x[:, lo:lo + self.segment]
            if lo > 0 or seg_start is None:
                seg_start = self.ltm.current(tensors if tensors is not None else self.ltm.initial(B))
            h = self.ltm.retrieve(seg, seg_start)
            z = self.attend(seg, h)[:, (buffered if lo == 0 else 0):]  # outputs for this call's tokens only
            r, tensors = self.ltm(z, tensors, position)
            position += z.shape[1]
            outs.append(z * r)
        if seg.shape[1] < self.segment:  # ended inside a segment: keep it for the next call
            tensors.update({"segment.x": seg, **{f"segment_start.{n}": w for n, w in seg_start.items()}})
        return self.o_proj(torch.cat(outs, dim=1)), MemoryState(self.fingerprint, tensors, seen + T)
