"""labkit: the code behind Engram, a notebook textbook on memory in machines.

One module per chapter family (``labkit.prologue`` for chapter 0, ...), a few shared modules
(``labkit.viz``, ``labkit.data``, ``labkit.check``) and fused kernels in ``labkit.kernels``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from labkit.runtime import Environment, progress, seed_everything, setup

__all__ = ["Environment", "__version__", "progress", "seed_everything", "setup"]
