"""Activation memory in training: what one step saves for backward, and what it costs to save less.

MEMO ("Efficiently Training 7B LLM with 1 Million Sequence Length on 8 GPUs") fits long sequences by
managing activation memory token-wise: offload saved activations to CPU memory, recompute the rest. Here
we measure the two plain tools on TinyLM, by sequence length:

- ``plain``: autograd keeps every tensor a backward formula needs (grows ~linearly in T with a fused
  attention that does not store the T x T weights; the logits (B, T, vocab) are a large share);
- ``checkpoint``: ``torch.utils.checkpoint`` per block: only each block's input is kept, the block is
  recomputed in backward (about one extra forward of the blocks);
- ``offload``: ``torch.autograd.graph.save_on_cpu``: every saved tensor is copied to host memory and
  brought back in backward. On a GPU the device keeps none of them; on a CPU-only machine the placement is
  a no-op, so the step saves as much as ``plain`` and pays only the bookkeeping.

The primary figure is exact and portable: the bytes of every tensor handed to autograd's saved-tensor pack
hook during the forward (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded, each storage
counted once; for ``checkpoint`` the block inputs the recomputation holds are added. With CUDA the peak of
``torch.cuda.max_memory_allocated`` is reported too. Step time is forward + backward (no optimizer).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from labkit.models.tinylm import TinyLM, TinyLMConfig, rope_cos_sin

__all__ = ["MODES", "SavedTensorCounter", "activation_memory", "forward_logits", "training_step"]

MODES = ("plain", "checkpoint", "offload")


class SavedTensorCounter:
    """Counts the tensors autograd saves for backward while active (a ``saved_tensors_hooks`` pair).

    ``bytes``: distinct storages saved, parameters excluded (what the step holds for backward);
    ``raw_bytes``: the sum over every pack call (the same tensor saved by several ops counts each time);
    ``offloaded_bytes``: bytes moved from an accelerator to the host (``offload`` mode on a GPU).
    ``exclude``: tensors (the parameters) whose storage is never counted.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()) -> None:
        self._skip = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set[int] = set()
        self.bytes = self.raw_bytes = self.offloaded_bytes = self.count = 0

    def note(self, t: torch.Tensor) -> None:
        """Count ``t`` (called from a pack hook, or for tensors kept outside autograd's hooks)."""
        ptr = t.untyped_storage().data_ptr()
        if ptr in self._skip:
            return
        size = t.numel() * t.element_size()
        self.raw_bytes += size
        self.count += 1
        if ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += size

    def hooks(self, offload: bool = False) -> torch.autograd.graph.saved_tensors_hooks:
        """A context: count every saved tensor; with ``offload`` also move it to (pinned) host memory."""
        if not offload:
            def pack(t: torch.Tensor) -> torch.Tensor:
                self.note(t)
                return t

            return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        ctx = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        to_cpu = ctx.pack_hook

        def pack_offload(t: torch.Tensor):
            self.note(t)
            if t.device.type != "cpu":
                self.offloaded_bytes += t.numel() * t.element_size()
            return to_cpu(t)

        ctx.pack_hook = pack_offload  # read when the context is entered
        return ctx


def forward_logits(model: TinyLM, tokens: torch.Tensor, use_checkpoint: bool = False,
                   counter: SavedTensorCounter | None = None) -> torch.Tensor:
    """TinyLM's training forward (no cache), optionally checkpointing every block.

    tokens: (B, T) -> logits (B, T, vocab) float32; equals ``model(tokens)``. With ``use_checkpoint`` and a
    ``counter``, the block inputs the recomputation keeps are counted (they bypass the pack hooks).
    """
    B, T = tokens.shape
    positions = torch.arange(T, device=tokens.device).expand(B, T)
    cos, sin = rope_cos_sin(positions, model.config.head_dim, model.config.rope_base)
    h = model.embed(tokens)
    for i, block in enumerate(model.layers):
        if use_checkpoint:
            if counter is not None:
                for t in (h, cos, sin):
                    counter.note(t)
            h = checkpoint(block, h, cos, sin, None, None, i, "torch", use_reentrant=False)
        else:
            h = block(h, cos, sin, None, None, i, "torch")
    return model.lm_head(model.norm(h)).float()


def training_step(model: TinyLM, tokens: torch.Tensor, targets: torch.Tensor, mode: str = "plain"
                  ) -> tuple[float, SavedTensorCounter]:
    """One forward + backward of next-token cross-entropy in ``mode`` (gradients accumulate into ``.grad``).

    tokens, targets: (B, T). Returns (loss, the counter of what the forward saved for backward).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    counter = SavedTensorCounter(exclude=list(model.parameters()))
    with counter.hooks(offload=mode == "offload"):
        logits = forward_logits(model, tokens, use_checkpoint=mode == "checkpoint", counter=counter)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    return float(loss.detach()), counter


def _check_seq_lens(seq_lens: object, context: int) -> list[int]:
    if not isinstance(seq_lens, (list, tuple)) or not seq_lens:
        raise ValueError(f"seq_lens must be a non-empty list of ints, got {seq_lens!r}")
    for n in seq_lens:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= context:
            raise ValueError(f"seq_lens must be ints in 1..{context} (the config's context), got {n!r}")
    return list(seq_lens)


def activation_memory(config: TinyLMConfig, seq_lens: Sequence[int], modes: Sequence[str] = MODES,
                      batch_size: int = 1, repeats: int = 3, seed: int = 0, device: str | torch.device = "cpu",
                      progress: Callable | None = None) -> list[dict]:
    """Saved-activation bytes and step time of one training step of ``TinyLM(config)`` (untrained weights
    are fine: memory and time do not depend on them), per sequence length and mode.

    Returns one dict per (seq_len, mode): seq_len, mode, saved_bytes (distinct storages saved for
    backward, parameters excluded), saved_raw_bytes, saved_tensors, offloaded_bytes (moved to host: > 0
    only for ``offload`` on an accelerator), step_s (median of ``repeats`` timed steps after one warm-up),
    peak_cuda_bytes (``torch.cuda.max_memory_allocated`` over the step, None on CPU), loss.
    """
    if not isinstance(config, TinyLMConfig):
        raise TypeError(f"config must be a TinyLMConfig, got {type(config).__name__}")
    seq_lens = _check_seq_lens(seq_lens, config.context)
    if isinstance(modes, str) or not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty list drawn from {MODES}, got {modes!r}")
    for name, value in (("batch_size", batch_size), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = TinyLM(config).to(device).train()
    g = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    rows = []
    items = [(n, m) for n in seq_lens for m in modes]
    for n, mode in (progress(items) if progress else items):
        data = torch.randint(0, config.vocab_size, (batch_size, n + 1), generator=g).to(device)
        x, y = data[:, :-1], data[:, 1:]
        times = []
        peak = None
        for r in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            loss, counter = training_step(model, x, y, mode)
            if cuda:
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device) - base
            if r:  # the first run warms up
                times.append(time.perf_counter() - t0)
        rows.append({"seq_len": n, "mode": mode, "saved_bytes": counter.bytes, "saved_raw_bytes": counter.raw_bytes,
                     "saved_tensors": counter.count, "offloaded_bytes": counter.offloaded_bytes,
                     "step_s": statistics.median(times), "peak_cuda_bytes": peak, "loss": loss})
    return rows
