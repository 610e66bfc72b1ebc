"""Backend resolution shared by every op in ``labkit.kernels``.

Each op has up to three implementations: ``torch`` (the readable reference, any device), ``numba``
(CPU only) and ``triton`` (CUDA; on the CPU only through Triton's interpreter, ``TRITON_INTERPRET=1``,
which is how CI tests the GPU kernels). ``resolve_backend`` turns the user's ``backend=`` argument and
the device of the inputs into the one implementation to run, or a clear error.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch

from labkit.runtime import BACKENDS, current

__all__ = ["BACKENDS", "available_backends", "check_backend", "resolve_backend"]

# The optional compilers, imported once for every op. Without numba the decorators become no-ops (the
# module still imports; the numba backend is unavailable); without triton, ``triton`` and ``tl`` are None.
try:
    import numba
    from numba import njit, prange
except ImportError:
    numba = None
    prange = range

    def njit(*args, **kwargs):
        return lambda fn: fn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only machines, macOS
    triton = tl = None


@functools.cache
def has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # missing or broken install
        return False
    return True


@functools.cache
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # missing, broken, or a platform without wheels
        return False
    return True


def triton_interpret() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends(device: str | torch.device | None = None) -> tuple[str, ...]:
    """The backends that can run on ``device`` here (default: CUDA when present, else CPU).

    On the CPU Triton counts only under its interpreter (``TRITON_INTERPRET=1``): correct, but slow.
    """
    device = _device(device)
    found = ["torch"]
    if device.type == "cpu" and has_numba():
        found.append("numba")
    if has_triton() and (device.type == "cuda" or triton_interpret()):
        found.append("triton")
    return tuple(found)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_backend(backend: str, device: torch.device, op: str) -> None:
    """Raise a clear error when the explicit ``backend`` cannot run ``op`` on tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(
                f"backend='numba' runs on CPU tensors only, got tensors on {device}: "
                f"use backend='triton' or 'torch', or move the inputs with .cpu()"
            )
        if not has_numba():
            raise RuntimeError(f"backend='numba' needs the numba package (pip install numba) for {op}")
    if backend == "triton":
        if not has_triton():
            raise RuntimeError(
                f"backend='triton' needs the triton package (pip install triton; Linux + CUDA) for {op}, "
                f"but it could not be imported: use backend='auto'"
            )
        if device.type == "cpu" and not triton_interpret():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {device}: on the CPU Triton runs only "
                f"through its interpreter (set TRITON_INTERPRET=1 before importing labkit.kernels)"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' needs CUDA tensors, got tensors on {device}")


def _fits(backend: str, device: torch.device) -> bool:
    try:
        check_backend(backend, device, op="")
    except (ValueError, RuntimeError):
        return False
    return True


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """The backend that runs ``op`` for inputs on ``device``.

    "auto" takes the backend chosen by ``labkit.setup()`` when it can run on ``device``; otherwise
    Triton on CUDA, Numba on the CPU, torch when neither is installed. An explicit backend is checked
    and returned as is (a clear error when it cannot run here).
    """
    if backend != "auto":
        check_backend(backend, device, op)
        return backend
    env = current()
    if env is not None and env.backend != "auto" and _fits(env.backend, device):
        return env.backend
    if device.type == "cuda" and has_triton():
        return "triton"
    if device.type == "cpu" and has_numba():
        return "numba"
    return "torch"


# ---- input checks shared by the ops ------------------------------------------------------------------


def check_scale(scale, D: int) -> float:
    """The attention scale: 1/sqrt(D) for None, else a finite real number (clear error otherwise)."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_lengths(name: str, lengths, B: int, low: int, high: int, high_name: str,
                  device: torch.device) -> torch.Tensor:
    """A (B,) integer tensor of per-row valid lengths in ``low..high`` on ``device`` (clear error otherwise).

    ``high_name`` names the bound in the message (e.g. "T" for a cache of T positions)."""
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be an integer tensor of shape (B,), got {lengths!r}") from err
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise TypeError(f"{name} must hold integers, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"{name} must be on q's device {device}, got {lengths.device}")
    if B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < low or hi > high:
            raise ValueError(f"{name} must lie in {low}..{high_name} = {low}..{high}, got values from {lo} to {hi}")
    return lengths
