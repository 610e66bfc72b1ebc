"""Run-time set-up shared by every notebook: seeds, device, kernel backend, progress bars."""

from __future__ import annotations

import json
import os
import platform
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BACKENDS = ("auto", "torch", "numba", "triton")
# CI sets LABKIT_PROGRESS=0 so progress bars stay in the code but print nothing.
PROGRESS_ENV = "LABKIT_PROGRESS"


@dataclass(frozen=True)
class Environment:
    """What ``setup`` chose: the seed, the torch device and the kernel backend."""

    seed: int
    device: torch.device
    backend: str

    def __str__(self) -> str:
        return (
            f"labkit {_labkit_version()} | python {platform.python_version()} | torch {torch.__version__}"
            f" | numpy {np.__version__} | {_optional_versions()} | device {self.device}"
            f" | backend {self.backend} | seed {self.seed}"
        )


def _labkit_version() -> str:
    from labkit import __version__

    return __version__


def _optional_versions() -> str:
    # Read versions from package metadata: importing triton/numba here would cost seconds per kernel start.
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("numba", "triton"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} -")
    return " | ".join(parts)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a notebook reruns identically."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_backend(backend: str = "auto", device: torch.device | None = None) -> str:
    """Resolve ``backend`` ("auto" | "torch" | "numba" | "triton") to the one kernels will use.

    "auto" means Triton on a CUDA device, Numba on the CPU (torch when Numba is missing).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = choose_device(device)
    if backend != "auto":
        return backend
    if device.type == "cuda" and _has("triton"):
        return "triton"
    return "numba" if _has("numba") else "torch"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


_CURRENT: Environment | None = None


def setup(seed: int = 0, backend: str = "auto", device: str | None = None, quiet: bool = False) -> Environment:
    """Seed everything, choose device and kernel backend, print one line of versions.

    The chosen backend becomes the default of every ``labkit.kernels`` op called with ``backend="auto"``.
    """
    global _CURRENT
    seed_everything(seed)
    dev = choose_device(device)
    env = Environment(seed=int(seed), device=dev, backend=choose_backend(backend, dev))
    _CURRENT = env
    _configure_plotly()
    if not quiet:
        print(env)
    return env


def current() -> Environment | None:
    """The environment of the last ``setup`` call (None before any)."""
    return _CURRENT


def _configure_plotly() -> None:
    from labkit import viz

    viz.use_theme()


def progress_enabled() -> bool:
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable | None = None, **kwargs):
    """``tqdm.auto`` progress bar; ``LABKIT_PROGRESS=0`` silences it (CI) without removing it."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def load_results(default: Path, script: str, path: str | Path | None = None, what: str = "results") -> dict:
    """A committed results file (``default``, shipped under labkit/assets) or the JSON file at ``path``.

    A missing file raises ``FileNotFoundError`` naming the command that writes it (``python -m <script>``).
    """
    path = Path(default) if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}: run `python -m {script}` to write it")
    return json.loads(path.read_text())


def benchmark_results(name: str) -> dict:
    """A results file of ``benchmarks/`` (e.g. ``"snn-peers-vm.json"``) from the repository labkit runs in.

    Benchmark results live in the repository, not in the labkit package: from a bare ``pip install`` (Colab) a
    ``FileNotFoundError`` says to clone the repository, where they are committed.
    """
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / name
    if not path.exists():
        raise FileNotFoundError(f"no benchmark results at {path}: they are committed in the repository "
                                "(git clone https://github.com/engram-book/engram and run this notebook there), or "
                                "write them with the script named in benchmarks/")
    return json.loads(path.read_text())
