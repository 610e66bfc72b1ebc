"""Train and evaluate ``MemoryLM`` on the recall tasks of ``labkit.data.recall``.

- ``train_recall``: AdamW on batches from a ``make_batch(step, batch_size)`` stream; the loss is the
  cross-entropy at the target positions only (plus the mixers' ``aux_loss``).
- ``evaluate``: accuracy over the target positions of a fixed set.
- ``mqar_run``: one point of the chapter's figure: a fresh seeded model trained on a fresh MQAR stream,
  scored on a fixed held-out set, with its state size and the chance and shortcut baselines.

Determinism: with ``steps`` the same seed gives the same numbers (on the same machine and thread count).
A ``seconds`` budget stops after a wall-clock time, so the step count (and the result) varies from run
to run; use it for demos, and ``steps`` for anything recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.data.recall import IGNORE, mqar, mqar_baselines
from labkit.memory.model import MemoryLM
from labkit.runtime import progress as progress_bar

__all__ = ["evaluate", "lr_factor", "mqar_run", "mqar_stream", "recall_loss", "train_recall"]

Batch = tuple[torch.Tensor, torch.Tensor]


def recall_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy over the target positions (``targets != -100``). Returns (loss, correct, count).

    logits: (B, T, V); targets: (B, T) with -100 where there is nothing to predict.
    """
    mask = targets != IGNORE
    count = int(mask.sum())
    if count == 0:
        raise ValueError("targets hold no position to predict (all are -100)")
    picked = logits[mask]  # (count, V)
    answers = targets[mask]
    loss = F.cross_entropy(picked, answers)
    correct = int((picked.argmax(-1) == answers).sum())
    return loss, correct, count


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy (argmax = target) over the positions where ``targets != -100``. inputs, targets: (N, T)."""
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must have the same shape, got {tuple(inputs.shape)} "
                         f"and {tuple(targets.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = count = 0
    try:
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size].to(device)
            y = targets[start:start + batch_size].to(device)
            logits, _ = model(x)
            _, c, n = recall_loss(logits, y)
            correct, count = correct + c, count + n
    finally:
        model.train(was_training)
    return correct / count


def lr_factor(progress: float, schedule: str = "cosine", warmup: float = 0.1) -> float:
    """Multiplier of the peak learning rate at ``progress`` ∈ [0, 1] of training.

    Linear warm-up over the first ``warmup`` of training, then constant or a cosine down to 10%.
    """
    if progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    if schedule == "constant":
        return 1.0
    rest = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * rest))


def train_recall(model: nn.Module, make_batch: Callable[[int, int], Batch], steps: int | None = None,
                 seconds: float | None = None, lr: float = 3e-3, weight_decay: float = 0.1, batch_size: int = 64,
                 eval_data: Batch | None = None, seed: int = 0, progress: bool = True, schedule: str = "cosine",
                 warmup: float = 0.1, log_every: int = 10) -> dict:
    """Train ``model`` in place on ``make_batch(step, batch_size) -> (inputs, targets)``, each (B, T).

    Stops after ``steps`` optimizer steps or ``seconds`` of wall-clock time, whichever comes first (at
    least one must be given). The learning-rate schedule (``lr_factor``) follows the larger of the two
    progress fractions. AdamW (weight decay on the linear layers' matrices only), gradients clipped to 1.0.

    Returns ``{"steps", "seconds", "curve", "accuracy"}``: ``curve`` lists ``(step, loss, accuracy)`` of
    the training batch every ``log_every`` steps (and the last); ``accuracy`` is ``evaluate`` on
    ``eval_data`` after training (None without it).
    """
    if steps is None and seconds is None:
        raise ValueError("give steps or seconds (or both): training needs a stopping point, got neither")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0 or None, got {seconds!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]  # matrices only
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    device = next(model.parameters()).device
    model.train()
    curve: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc="train", **({} if progress else {"disable": True}))
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        done = max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
        if done >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(done, schedule, warmup)
        inputs, targets = make_batch(step, batch_size)
        logits, _ = model(inputs.to(device))
        loss, correct, count = recall_loss(logits, targets.to(device))
        aux = getattr(model, "aux_loss", None)
        total = loss + aux if torch.is_tensor(aux) else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % log_every == 0 or step == 1:
            curve.append((step, loss.item(), correct / count))
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / count:.2f}")
    bar.close()
    if curve and curve[-1][0] != step:
        curve.append((step, loss.item(), correct / count))
    result = {"steps": step, "seconds": time.perf_counter() - start, "curve": curve, "accuracy": None}
    if eval_data is not None:
        result["accuracy"] = evaluate(model, *eval_data)
    return result


def mqar_stream(n_pairs: int, seq_len: int, vocab_size: int = 256, seed: int = 0, n_passes: int = 1,
                power_a: float = 0.01) -> Callable[[int, int], Batch]:
    """``make_batch(step, batch_size)``: a fresh MQAR batch per step, seeded by ``(seed, step)``."""

    def make_batch(step: int, batch_size: int) -> Batch:
        g = np.random.default_rng(np.random.SeedSequence([int(seed), 0, int(step)]))
        return mqar(batch_size, seq_len, n_pairs, vocab_size, seed=g, power_a=power_a, n_passes=n_passes)

    return make_batch


def mqar_run(mixer: str, d_model: int = 64, n_pairs: int = 8, seq_len: int = 64, vocab_size: int = 256, *,
             steps: int | None = None, seconds: float | None = None, seed: int = 0, n_layers: int = 2,
             n_heads: int = 1, n_passes: int = 1, lr: float = 1e-2, batch_size: int = 64, n_eval: int = 512,
             power_a: float = 0.01, model_options: dict | None = None, progress: bool = False,
             **mixer_options) -> dict:
    """One point of the chapter's figure: train a fresh ``MemoryLM`` on MQAR and score it.

    The model is built under ``torch.manual_seed(seed)``; training batches come from
    ``mqar_stream(..., seed)`` (one fresh seeded batch per step, never repeated) and the ``n_eval``
    held-out examples from a separate seed stream. Remaining keyword arguments go to the mixer.

    Returns a dict: the settings (mixer, d_model, n_heads, n_layers, n_pairs, seq_len, vocab_size,
    n_passes, seed, lr, batch_size, mixer_options), ``state_size`` (``MemoryLM.state_size(seq_len)``),
    ``accuracy`` on the held-out set, ``steps`` and ``seconds`` trained, the training ``curve``, and the
    ``chance`` and ``shortcut`` baselines of ``mqar_baselines``.
    """
    baselines = mqar_baselines(n_pairs, vocab_size)
    eval_seed = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    eval_data = mqar(n_eval, seq_len, n_pairs, vocab_size, seed=eval_seed, power_a=power_a, n_passes=n_passes)
    torch.manual_seed(seed)
    model = MemoryLM(vocab_size, d_model=d_model, n_layers=n_layers, mixer=mixer, n_heads=n_heads,
                     mixer_options=mixer_options, **(model_options or {}))
    stream = mqar_stream(n_pairs, seq_len, vocab_size, seed=seed, n_passes=n_passes, power_a=power_a)
    out = train_recall(model, stream, steps=steps, seconds=seconds, lr=lr, batch_size=batch_size,
                       eval_data=eval_data, seed=seed, progress=progress)
    return {
        "mixer": mixer, "d_model": d_model, "n_heads": n_heads, "n_layers": n_layers, "n_pairs": n_pairs,
        "seq_len": seq_len, "vocab_size": vocab_size, "n_passes": n_passes, "seed": seed, "lr": lr,
        "batch_size": batch_size, "mixer_options": dict(mixer_options),
        "state_size": model.state_size(seq_len), "accuracy": out["accuracy"], "steps": out["steps"],
        "seconds": out["seconds"], "curve": out["curve"], **baselines,
    }
