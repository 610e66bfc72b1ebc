"""A linear state-space layer (LSSL, Gu et al. 2021): a continuous-time memory, discretised.

Each channel runs the ODE x'(t) = A x(t) + B u(t), y = C x + D u with an N-dimensional state x. With the
HiPPO-LegS matrices (A, B), x(t) holds the coefficients of the best degree-(N−1) Legendre approximation of
the whole input history u(s), s ≤ t: a memory of fixed size N that compresses everything seen.

Discretised with step dt (``discretize``), the layer is a linear recurrence

    x_k = Ā x_{k−1} + B̄ u_k,        y_k = C x_k + D u_k

and, being linear and time-invariant, also a causal convolution y = K̄ ∗ u + D u with the kernel
K̄ = (C B̄, C Ā B̄, C Ā² B̄, …) (``ssm_kernel``): training uses the convolution (FFT), decoding the recurrence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from labkit.memory.base import MemoryState, Mixer

__all__ = ["LSSL", "discretize", "hippo_legs", "ssm_kernel", "ssm_recurrent"]


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS matrices in float64: A: (N, N), B: (N,).

    A[n, k] = −√(2n+1)·√(2k+1) if n > k, −(n+1) if n = k, 0 if n < k;  B[n] = √(2n+1).
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be a positive int, got {N!r}")
    r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    return A, r.clone()


def discretize(A: torch.Tensor, B: torch.Tensor, dt: float | torch.Tensor,
               method: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous (A: (N, N), B: (N,)) -> discrete (Ā, B̄) for step ``dt`` (a float or a tensor of any shape S).

    - "bilinear" (Tustin): Ā = (I − dt/2·A)⁻¹ (I + dt/2·A),  B̄ = (I − dt/2·A)⁻¹ dt·B;
    - "zoh" (input held constant over a step): Ā = exp(dt·A), B̄ = A⁻¹(exp(dt·A) − I) B, computed as one block
      of the exponential of [[A, B], [0, 0]]·dt (no inverse of A needed).

    Returns Ā: (*S, N, N), B̄: (*S, N).
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1] or B.shape != A.shape[:1]:
        raise ValueError(f"A must be (N, N) and B (N,), got shapes {tuple(A.shape)} and {tuple(B.shape)}")
    dt = torch.as_tensor(dt, dtype=A.dtype, device=A.device)
    if bool((dt <= 0).any()):
        raise ValueError(f"dt must be positive, got values down to {dt.min().item():.4g}")
    N = A.shape[0]
    dt_ = dt[..., None, None]
    if method == "bilinear":
        eye = torch.eye(N, dtype=A.dtype, device=A.device)
        left = eye - dt_ / 2 * A
        Ad = torch.linalg.solve(left, eye + dt_ / 2 * A)
        Bd = torch.linalg.solve(left, (dt_ * B[:, None]))[..., 0]
        return Ad, Bd
    if method == "zoh":
        M = torch.zeros(N + 1, N + 1, dtype=A.dtype, device=A.device)
        M[:N, :N], M[:N, N] = A, B
        E = torch.linalg.matrix_exp(dt_ * M)
        return E[..., :N, :N], E[..., :N, N]
    raise ValueError(f"method must be 'bilinear' or 'zoh', got {method!r}")


def _krylov(Ad: torch.Tensor, b: torch.Tensor, L: int) -> torch.Tensor:
    """Ad: (..., N, N), b: (..., N) -> (..., N, L), the columns b, Ad b, Ad² b, …, Ad^{L−1} b.

    By doubling: [X, Ad^m X] has twice the columns of X, then Ad^m ← (Ad^m)²; log₂ L matrix products.
    """
    X, P = b[..., None], Ad
    while X.shape[-1] < L:
        X = torch.cat([X, P @ X], dim=-1)
        P = P @ P
    return X[..., :L]


def ssm_kernel(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """The convolution kernel K̄ = (C B̄, C Ā B̄, …, C Ā^{L−1} B̄).

    Ad: (..., N, N), Bd: (..., N), C: (..., N) (broadcast over the leading dims) -> K: (..., L).
    """
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive int, got {L!r}")
    return torch.einsum("...n,...nl->...l", C, _krylov(Ad, Bd, L))


def ssm_recurrent(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, u: torch.Tensor,
                  x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence x_k = Ā x_{k−1} + B̄ u_k, y_k = C x_k, step by step (the specification).

    Ad: (H, N, N), Bd: (H, N), C: (H, N) for H independent channels; u: (B, H, L); x0: (B, H, N) or None (zero).
    Returns y: (B, H, L) and the last state x: (B, H, N).
    """
    x = u.new_zeros(*u.shape[:2], Ad.shape[-1]) if x0 is None else x0
    ys = []
    for k in range(u.shape[-1]):
        x = torch.einsum("hnm,bhm->bhn", Ad, x) + Bd * u[..., k, None]
        ys.append((C * x).sum(-1))
    return torch.stack(ys, dim=-1), x


class LSSL(Mixer):
    """d_model independent single-input single-output SSMs, HiPPO-LegS (A, B) shared, one step dt per channel.

    Options: ``state_dim`` N; ``dt_min``, ``dt_max``: the range of the log-uniform initial steps (a small
    dt remembers a long history, a large one reacts fast). Learned per channel: log dt, C (N numbers), D.
    ``n_heads`` only has to divide d_model: channels are the "heads" here.
    State: ``"x"``: (B, d_model, N).

    With a state given and T > 1 the convolution still runs: x_{−1} = x0 adds C Ā^{k+1} x0 to y_k (the free
    response of the recurrence), so prefill and continuation share one exact form.
    """

    name = "lssl"

    def __init__(self, d_model: int, n_heads: int = 1, *, state_dim: int = 32, dt_min: float = 1e-3,
                 dt_max: float = 1e-1) -> None:
        super().__init__(d_model, n_heads)
        if isinstance(state_dim, bool) or not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"state_dim must be a positive int, got {state_dim!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min!r} and {dt_max!r}")
        self.state_dim, self.dt_min, self.dt_max = state_dim, dt_min, dt_max
        A, B = hippo_legs(state_dim)
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)
        u = torch.rand(d_model)
        self.log_dt = nn.Parameter(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))
        self.C = nn.Parameter(torch.randn(d_model, state_dim) / math.sqrt(state_dim))
        self.D = nn.Parameter(torch.randn(d_model))
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, dt_min={self.dt_min}, dt_max={self.dt_max}"

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.state_dim

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ā: (d_model, N, N), B̄: (d_model, N), in float64 (the matrix powers are sensitive to rounding)."""
        return discretize(self.A.double(), self.B.double(), self.log_dt.double().exp())

    def forward(self, x: torch.Tensor, state: MemoryState | None = None) -> tuple[torch.Tensor, MemoryState]:
        """x: (B, T, d_model) -> y: (B, T, d_model), and the SSM state after these T tokens."""
        self.check_input(x)
        Bsz, T, _ = x.shape
        self.check_state(state, Bsz)
        u = self.in_proj(x).transpose(1, 2).double()  # (B, H, T), H = d_model channels
        Ad, Bd = self.discrete()
        C = self.C.double()
        x0 = None if state is None else state["x"].double()
        if T == 1:  # decoding: one step of the recurrence
            y, xT = ssm_recurrent(Ad, Bd, C, u, x0)
        else:
            X = _krylov(Ad, Bd, T)  # (H, N, T): Ā^l B̄
            K = torch.einsum("hn,hnl->hl", C, X)  # (H, T)
            n = 2 * T  # zero-pad to 2T so the circular FFT convolution is the causal linear one
            y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :T]
            xT = torch.einsum("hnl,bhl->bhn", X, u.flip(-1))  # x_{T−1} = Σ_l Ā^l B̄ u_{T−1−l}
            if x0 is not None:
                # free response: x_k gets Ā^{k+1} x0, so y_k gets (C Ā^{k+1}) x0 = ((Āᵀ)^{k+1} Cᵀ)ᵀ x0
                Crows = _krylov(Ad.transpose(-1, -2), C, T + 1)[..., 1:]  # (H, N, T)
                y = y + torch.einsum("hnl,bhn->bhl", Crows, x0)
                xT = xT + torch.einsum("hnm,bhm->bhn", torch.linalg.matrix_power(Ad, T), x0)
        y = y + self.D.double()[:, None] * u
        y = self.o_proj(y.to(x.dtype).transpose(1, 2))
        seen = (0 if state is None else state.seen) + T
        return y, MemoryState(self.fingerprint, {"x": xT.to(x.dtype)}, seen)
