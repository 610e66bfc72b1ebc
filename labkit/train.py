"""Train the book's tiny language models: ``python -m labkit.train NAME``.

NAME is ``tinylm`` (≈1.9M parameters, token shift), ``tinylm-draft`` (≈10x smaller, token shift; the
draft for speculative decoding), ``tinylm-plain`` (the target's size without token shift) or
``tinylm-draft-plain`` (the draft's size without token shift: the draft of ``tinylm-plain``). Data comes
from ``labkit.data.corpus`` (English from ``pydoc_data.topics`` + packed lookup/trace/copy episodes).
``tinylm-medusa`` and ``tinylm-ppd`` train chapter 1's guessers on the frozen tinylm instead
(``labkit.decoding.parallel``: Medusa heads, PPD prompt tokens).

Schedule (warmup-stable-decay): AdamW at a constant rate after a short warmup; the rate decays linearly to
0 over a final cooldown that starts when the held-out 8-pair lookup accuracy is ≥ 0.97 *and* the English
bits/char have plateaued, or when 85% of the time (``--minutes``) or step (``--steps``) budget is spent.
Every ``eval_every`` steps one point of the training curve is recorded.

Writes into ``--out`` (default ``labkit/assets``; ``--fast`` defaults to a temporary folder):
``NAME.pt`` (fp16 state dict, the tied output embedding stored once), ``NAME.json`` (config, recipe, final
metrics, time, tokens/s, the command line) and ``NAME.curve.json`` (the curve: step, minutes, tokens,
lookup_accuracy, english_bpc, train_loss). Final metrics are measured on the fp16-rounded weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labkit.data import corpus
from labkit.models import ASSETS, TinyLM, TinyLMConfig
from labkit.models import tokenizer as tk
from labkit.runtime import progress

__all__ = ["RECIPES", "Recipe", "english_bits_per_char", "evaluate", "lookup_accuracy", "main", "train"]

EVAL_SEED = 1_000_003  # held-out episodes: a generator seed the training stream never uses


@dataclass(frozen=True)
class Recipe:
    """How one model is trained."""

    config: TinyLMConfig
    minutes: float  # wall-clock cap
    steps: int | None = None  # step cap (None: time only)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 30
    english_fraction: float = 0.5
    answer_share: float = 0.5  # the loss is (1-share) * mean over English bytes + share * mean over answers
    eval_every: int = 30
    target_lookup: float = 0.97  # cooldown starts once 8-pair lookup >= this and English has plateaued
    plateau_bpc: float = 0.01  # "plateaued": mean of the last 3 evaluations < this below the 3 before
    cooldown: float = 0.15  # fraction of the run spent decaying the rate to 0
    seed: int = 0


def _cfg(**kw) -> TinyLMConfig:
    base = dict(vocab_size=tk.VOCAB_SIZE, d_model=192, n_layers=4, n_heads=6, n_kv_heads=6, d_ff=512, context=128)
    base.update(kw)
    return TinyLMConfig(**base)


RECIPES: dict[str, Recipe] = {
    # Budgets are in steps (deterministic); the minutes are safety caps. On an idle 2-core CPU the target
    # runs ≈ 0.5 s per step, so 800 steps ≈ 6-7 minutes.
    "tinylm": Recipe(_cfg(token_shift=True), steps=800, minutes=15.0),
    "tinylm-plain": Recipe(_cfg(token_shift=False), steps=800, minutes=15.0),
    "tinylm-draft": Recipe(_cfg(d_model=64, n_layers=3, n_heads=4, n_kv_heads=4, d_ff=192, token_shift=True),
                           steps=800, minutes=6.0),
    # the draft without token shift: a plain Llama that exports to HF (the assistant of HF assisted generation)
    "tinylm-draft-plain": Recipe(_cfg(d_model=64, n_layers=3, n_heads=4, n_kv_heads=4, d_ff=192,
                                      token_shift=False), steps=800, minutes=6.0),
}


# ------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def lookup_accuracy(model: TinyLM, n_pairs: int = 8, n_episodes: int = 500, seed: int = EVAL_SEED,
                    batch_size: int = 250) -> float:
    """Exact match of the greedy answer on fresh ``n_pairs``-pair lookups (chance: 1 / n_pairs)."""
    prompts, answers = corpus.lookup_prompts(seed, n_episodes, n_pairs)
    return _answer_accuracy(model, prompts, answers, batch_size)


def _answer_accuracy(model, prompts: np.ndarray, answers: np.ndarray, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(prompts), batch_size):
        x = torch.as_tensor(prompts[i:i + batch_size], device=device)
        pred = model(x)[:, -1].argmax(-1).cpu().numpy()
        correct += int((pred == answers[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(prompts)


@torch.no_grad()
def _episode_accuracy(model: TinyLM, episodes: list[corpus.Episode]) -> float:
    """Fraction of episodes whose every loss token is the greedy (argmax) prediction."""
    model.eval()
    device = next(model.parameters()).device
    ok = 0
    for ep in episodes:
        toks = torch.tensor([ep.tokens], device=device)
        pred = model(toks[:, :-1])[0].argmax(-1).cpu().numpy()
        mask = np.array(ep.loss[1:])
        ok += bool((pred[mask] == np.array(ep.tokens[1:])[mask]).all())
    return ok / len(episodes)


@torch.no_grad()
def english_bits_per_char(model: TinyLM, text: str | None = None, stride: int | None = None,
                          max_chars: int | None = None, batch_size: int = 64) -> float:
    """Bits per character of ``text`` (default: the held-out English), in windows of the model's context.

    Windows advance by ``stride`` (default context/2); every byte is scored once, with at least
    ``context - stride`` bytes of context (except the first window's). Bits per UTF-8 byte divided by
    characters: for the (nearly ASCII) topics text the two agree to < 0.1%.
    """
    model.eval()
    text = corpus.english_text("heldout") if text is None else text
    if max_chars is not None:
        text = text[:max_chars]
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    C = model.config.context
    stride = C // 2 if stride is None else stride
    if not 1 <= stride <= C:
        raise ValueError(f"stride must be in 1..{C}, got {stride}")
    if len(data) < 2:
        raise ValueError(f"text must hold at least 2 bytes, got {len(data)}")
    device = next(model.parameters()).device
    # window w covers inputs data[s:s+C] (targets data[s+1:s+C+1]) and scores targets from `first` on
    windows, firsts = [], []
    scored = 0  # targets scored so far: data[1 : scored + 1]
    s = 0
    while scored < len(data) - 1:
        s = max(0, min(s, len(data) - 1 - C))
        n = min(C, len(data) - 1 - s)
        windows.append((s, n))
        firsts.append(scored - s)  # first target index (within the window) not yet scored
        scored = s + n
        s += stride
    total = 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        n = max(w[1] for w in chunk)
        x = np.zeros((len(chunk), n), dtype=np.int64)
        y = np.zeros((len(chunk), n), dtype=np.int64)
        m = np.zeros((len(chunk), n), dtype=bool)
        for r, ((s0, nn), f) in enumerate(zip(chunk, firsts[i:i + batch_size])):
            x[r, :nn], y[r, :nn] = data[s0:s0 + nn], data[s0 + 1:s0 + nn + 1]
            m[r, f:nn] = True
        logits = model(torch.as_tensor(x, device=device))
        nll = F.cross_entropy(logits.transpose(1, 2), torch.as_tensor(y, device=device), reduction="none")
        total += float(nll[torch.as_tensor(m, device=device)].sum())
    assert int(sum(n - f for (_, n), f in zip(windows, firsts))) == len(data) - 1
    return total / math.log(2) / max(1, len(text) - 1)


def evaluate(model: TinyLM, n_episodes: int = 500, full: bool = True) -> dict:
    """Final metrics: lookup exact match by pair count (1..8), trace and copy exact match, English bpc."""
    by_pairs = {str(n): lookup_accuracy(model, n, n_episodes, seed=EVAL_SEED + n) for n in range(1, 9)}
    g = np.random.default_rng(EVAL_SEED - 1)
    traces = [corpus.trace_episode(g) for _ in range(n_episodes if full else 50)]
    copies = [corpus.copy_episode(g) for _ in range(n_episodes if full else 50)]
    return {
        "lookup_8pair_accuracy": lookup_accuracy(model, 8, 2 * n_episodes, seed=EVAL_SEED),
        "lookup_accuracy_by_pairs": by_pairs,
        "lookup_chance_by_pairs": {str(n): 1 / n for n in range(1, 9)},
        "trace_accuracy": _episode_accuracy(model, traces),
        "copy_accuracy": _episode_accuracy(model, copies),
        "english_bpc_heldout": english_bits_per_char(model, max_chars=None if full else 4000),
        "eval_episodes_per_count": n_episodes,
        "eval_seed": EVAL_SEED,
    }


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------


def _optimizer(model: TinyLM, recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))


def _loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, answer_share: float) -> torch.Tensor:
    """Cross-entropy on the loss targets, English bytes and episode answers averaged separately, then mixed.

    Answers are a few percent of the targets; weighting them by their count alone drowns them in English.
    """
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    text = mask & (targets < 256)
    answer = mask & (targets >= 256)
    parts, weights = [], []
    if text.any():
        parts.append(nll[text].mean())
        weights.append(1 - answer_share)
    if answer.any():
        parts.append(nll[answer].mean())
        weights.append(answer_share)
    return sum(w * p for w, p in zip(weights, parts)) / sum(weights)


def train(name: str, recipe: Recipe, out: Path, fast: bool = False, command: str = "") -> dict:
    """Train ``recipe`` from its seed, save NAME.pt / NAME.json / NAME.curve.json into ``out``; return the card."""
    torch.manual_seed(recipe.seed)
    data_rng = np.random.default_rng(recipe.seed)
    model = TinyLM(recipe.config)
    model.train()
    opt = _optimizer(model, recipe)
    C, B = recipe.config.context, recipe.batch_size
    curve_eps, curve_chars = (32, 1000) if fast else (512, 16384)

    def curve_point(step, minutes, tokens, loss):
        point = {
            "step": step, "minutes": round(minutes, 4), "tokens": tokens,
            "lookup_accuracy": lookup_accuracy(model, 8, curve_eps, seed=EVAL_SEED + 100),
            "english_bpc": round(english_bits_per_char(model, stride=C, max_chars=curve_chars), 4),
            "train_loss": None if loss is None else round(loss, 4),
        }
        model.train()
        return point

    curve = [curve_point(0, 0.0, 0, None)]
    budget_s = recipe.minutes * 60
    max_steps = recipe.steps if recipe.steps is not None else 10**9
    cooldown_start: int | None = None
    cooldown_len = 1
    reason = "step budget"
    train_s = 0.0  # time in optimizer steps only (tokens/s)
    t0 = time.perf_counter()
    losses: list[float] = []
    step = 0
    bar = progress(total=recipe.steps, desc=f"train {name}", leave=True)
    while True:
        elapsed = time.perf_counter() - t0
        if cooldown_start is None:
            if step >= int((1 - recipe.cooldown) * max_steps):
                cooldown_start, reason = step, "step budget"
            elif elapsed >= (1 - recipe.cooldown) * budget_s:
                cooldown_start, reason = step, "time budget"
            if cooldown_start is not None:
                cooldown_len = max(1, int(round(step * recipe.cooldown / (1 - recipe.cooldown))))
                if recipe.steps is not None:
                    cooldown_len = min(cooldown_len, max_steps - step)
        if cooldown_start is not None and step >= cooldown_start + cooldown_len:
            break
        if step >= max_steps or elapsed >= budget_s * 1.1:  # hard stops
            break
        # learning rate: warmup, constant, linear cooldown
        lr = recipe.lr * min(1.0, (step + 1) / recipe.warmup)
        if cooldown_start is not None:
            lr = recipe.lr * max(0.0, 1 - (step - cooldown_start) / cooldown_len)
        for group in opt.param_groups:
            group["lr"] = lr

        ts = time.perf_counter()
        batch = corpus.training_batch(data_rng, B, C, recipe.english_fraction)
        x, y = torch.from_numpy(batch.inputs), torch.from_numpy(batch.targets)
        mask = torch.from_numpy(batch.mask)
        loss = _loss(model(x), y, mask, recipe.answer_share)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_s += time.perf_counter() - ts
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)

        if step % recipe.eval_every == 0:
            point = curve_point(step, (time.perf_counter() - t0) / 60, step * B * C, float(np.mean(losses[-20:])))
            curve.append(point)
            bar.set_postfix(loss=point["train_loss"], lookup=point["lookup_accuracy"], bpc=point["english_bpc"])
            if cooldown_start is None and len(curve) >= 7:  # mean of the last 3 points vs the 3 before
                bpc = [p["english_bpc"] for p in curve]
                gained = np.mean(bpc[-6:-3]) - np.mean(bpc[-3:])
                if point["lookup_accuracy"] >= recipe.target_lookup and gained < recipe.plateau_bpc:
                    cooldown_start, reason = step, "lookup reached target and English plateaued"
                    cooldown_len = max(1, int(round(step * recipe.cooldown / (1 - recipe.cooldown))))
    bar.close()
    minutes = (time.perf_counter() - t0) / 60
    if curve[-1]["step"] != step:
        curve.append(curve_point(step, minutes, step * B * C, float(np.mean(losses[-20:])) if losses else None))

    # round to what we ship (fp16), then measure
    state = {k: v.detach().half() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    model.load_state_dict({**{k: v.float() for k, v in state.items()},
                           "lm_head.weight": state["embed_tokens.weight"].float()})
    model.eval()
    t_eval = time.perf_counter()
    metrics = evaluate(model, n_episodes=50 if fast else 500, full=not fast)
    card = {
        "name": name,
        "config": recipe.config.to_dict(),
        "parameters": model.num_parameters(),
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "config"},
        "metrics": metrics,
        "training": {
            "steps": step, "minutes": round(minutes, 3), "tokens": step * B * C,
            "tokens_per_second": round(step * B * C / max(train_s, 1e-9), 1),
            "cooldown_start_step": cooldown_start, "cooldown_reason": reason,
            "threads": torch.get_num_threads(), "eval_seconds": round(time.perf_counter() - t_eval, 1),
        },
        "data": {
            "english": "pydoc_data.topics, sorted topics joined by blank lines; last 10% held out",
            "english_chars_train": len(corpus.english_text("train")),
            "english_chars_heldout": len(corpus.english_text("heldout")),
            "english_fraction": recipe.english_fraction, "episode_mix": corpus.TASK_MIX,
            "curve": f"every {recipe.eval_every} steps: 8-pair lookup on {curve_eps} held-out episodes, "
                     f"English bpc on the first {curve_chars} held-out chars in non-overlapping windows",
        },
        "provenance": {
            "command": command, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "machine": platform.machine(), "fast": fast,
        },
        "weights": f"{name}.pt (fp16 torch state dict; lm_head.weight is tied to embed_tokens.weight)",
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / f"{name}.curve.json").write_text(json.dumps(curve, indent=0) + "\n")
    return card


GUESSERS = {"tinylm-medusa": "medusa", "tinylm-ppd": "ppd"}  # trained on the frozen tinylm by decoding.parallel


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in GUESSERS:  # Medusa heads / PPD prompt tokens: same command, their own trainer
        from labkit.decoding import parallel

        return parallel.main([GUESSERS[args[0]], *args[1:]])
    parser = argparse.ArgumentParser(prog="python -m labkit.train", description=__doc__.splitlines()[0],
                                     epilog="Also: tinylm-medusa, tinylm-ppd (see labkit.decoding.parallel).")
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="step cap (default: none)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default labkit/assets)")
    parser.add_argument("--fast", action="store_true", help="a few steps and a small evaluation (tests)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.name]
    changes = {}
    if args.fast:
        changes.update(steps=4, eval_every=2, warmup=2, batch_size=4)
    if args.minutes is not None:
        changes["minutes"] = args.minutes
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.seed is not None:
        changes["seed"] = args.seed
    recipe = replace(recipe, **changes)
    out = args.out or (Path(tempfile.mkdtemp(prefix="labkit-train-")) if args.fast else ASSETS)
    command = "python -m labkit.train " + " ".join(sys.argv[1:] if argv is None else argv)
    card = train(args.name, recipe, out, fast=args.fast, command=command)
    m, t = card["metrics"], card["training"]
    print(f"{args.name}: {card['parameters']:,} parameters, {t['steps']} steps in {t['minutes']:.2f} min "
          f"({t['tokens_per_second']:.0f} tokens/s); 8-pair lookup {m['lookup_8pair_accuracy']:.3f}, "
          f"English {m['english_bpc_heldout']:.3f} bits/char -> {out}")
    return card


if __name__ == "__main__":
    main()
