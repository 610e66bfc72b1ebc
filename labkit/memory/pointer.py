"""Pointer networks (Vinyals, Fortunato & Jaitly, 2015): the attention weights *are* the output.

A sequence-to-sequence model with attention reads inputs P = (P_1 … P_n) into encoder states e_1 … e_n and, at
output step i, mixes them into a context vector, then picks a token from a *fixed* vocabulary. When the answer is
a position in the input ("sort these numbers": output the indices in ascending order), the vocabulary is
{1 … n} and n changes from example to example, so a fixed output layer cannot express it. A pointer network keeps
the attention scores and drops the rest:

    u_j^i = vᵀ tanh(W1 e_j + W2 d_i),   j = 1 … n
    p(C_i | C_1 … C_{i−1}, P) = softmax(u^i)

a distribution over exactly the n inputs, whatever n is. The decoder's next input is the input element it
pointed to (under teacher forcing: the one the target points to).

- ``PointerNet``: LSTM encoder, LSTM decoder, additive pointer attention; ``logits`` (B, steps, n).
- ``Seq2SeqAttention``: the baseline, same encoder/decoder and the same additive attention, but the attention
  only builds a context and a linear layer picks one of ``max_len`` position tokens: it cannot name a position
  ≥ ``max_len``.
- ``pointer_data``: sort (target = argsort of uniform [0, 1) numbers), copy and reverse, seeded.
- ``train_pointer``, ``evaluate``, ``decode``: teacher-forced cross-entropy training, greedy decoding with or
  without the mask that forbids pointing at a position twice, exact-sequence and per-position accuracy.
- ``pointer_compare``: both models trained on short lengths, tested on those and on longer ones.
- ``python -m labkit.memory.pointer`` runs the longer comparison and writes ``labkit/assets/pointer.json``;
  ``load()`` reads it back.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labkit.runtime import load_results
from labkit.runtime import progress as progress_bar

__all__ = [
    "FAST",
    "FULL",
    "RESULTS",
    "SCRIPT",
    "TASKS",
    "PointerNet",
    "Seq2SeqAttention",
    "decode",
    "evaluate",
    "load",
    "main",
    "pointer_compare",
    "pointer_data",
    "train_pointer",
]

TASKS = ("sort", "copy", "reverse")
RESULTS = Path(__file__).resolve().parent.parent / "assets" / "pointer.json"  # shipped with the package


# ---------------------------------------------------------------------------------------------------------
# Data


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def pointer_data(task: str, n: int, batch: int, seed: int | None = 0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` sequences of ``n`` uniform [0, 1) numbers and the positions to output, in order.

    Returns ``x`` (B, n) float and ``y`` (B, n) long, a permutation of 0 … n−1 per row:

    - ``"sort"``: y = argsort(x), ascending, so x[b, y[b]] is sorted;
    - ``"copy"``: y = 0, 1, …, n−1;
    - ``"reverse"``: y = n−1, …, 0.

    ``generator`` (a ``torch.Generator``) overrides ``seed``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _check_int("n", n)
    _check_int("batch", batch)
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
    x = torch.rand(batch, n, generator=g)
    if task == "sort":
        y = torch.argsort(x, dim=1, stable=True)
    elif task == "copy":
        y = torch.arange(n).expand(batch, n).clone()
    else:
        y = torch.arange(n - 1, -1, -1).expand(batch, n).clone()
    return x, y


# ---------------------------------------------------------------------------------------------------------
# Models


class _EncoderDecoder(nn.Module):
    """What both models share: input embedding, LSTM encoder, LSTM decoder, additive attention scores."""

    def __init__(self, hidden: int = 64, in_dim: int = 1):
        super().__init__()
        self.hidden, self.in_dim = _check_int("hidden", hidden), _check_int("in_dim", in_dim)
        self.embed = nn.Linear(in_dim, hidden)  # P_j -> embedding (inputs of the encoder and of the decoder)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.W1 = nn.Linear(hidden, hidden, bias=False)
        self.W2 = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n) or (B, n, in_dim) -> (B, n, in_dim) float, with the shape errors named."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.dim() == 2 and self.in_dim == 1:
            x = x[..., None]
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            want = "(B, n) or (B, n, 1)" if self.in_dim == 1 else f"(B, n, {self.in_dim})"
            raise ValueError(f"x must have shape {want}, got {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x must hold at least one sequence of at least one element, got shape {tuple(x.shape)}")
        return x.float()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, n, in_dim) -> embeddings (B, n, H), encoder states e (B, n, H), final (h, c) of the encoder."""
        emb = self.embed(x)
        e, state = self.encoder(emb)
        return emb, e, state

    def scores(self, W1e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """u_j^i = vᵀ tanh(W1 e_j + W2 d_i). W1e: (B, n, H) (precomputed W1 e), d: (B, T, H) -> u (B, T, n)."""
        return self.v(torch.tanh(W1e[:, None, :, :] + self.W2(d)[:, :, None, :])).squeeze(-1)


class PointerNet(_EncoderDecoder):
    """Ptr-Net: p(C_i | C_<i, P) = softmax_j(vᵀ tanh(W1 e_j + W2 d_i)) over the n input positions.

    The decoder starts from the encoder's final state with a learned start vector as input; each later input is
    the embedding of the element pointed to at the step before. ``forward`` returns the pointer logits
    u (B, steps, n); positions forbidden by ``mask_repeats`` hold −inf.
    """

    def __init__(self, hidden: int = 64, in_dim: int = 1):
        super().__init__(hidden, in_dim)
        self.go = nn.Parameter(torch.empty(hidden).uniform_(-1.0, 1.0))

    @property
    def max_len(self) -> None:
        """No limit: a pointer network can point into an input of any length."""
        return None

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, mask_repeats: bool = False,
                steps: int | None = None) -> torch.Tensor:
        """Pointer logits u: (B, steps, n).

        x: (B, n) reals (or (B, n, in_dim)). With ``targets`` (B, T) long in 0 … n−1: teacher forcing, all T steps
        in one pass (step i reads the element ``targets[:, i−1]`` points to), steps = T. Without: greedy
        decoding for ``steps`` steps (default n), each step reading the element it pointed to itself.
        ``mask_repeats``: a position pointed to before (the target's under teacher forcing, the model's own
        when greedy) gets −inf, so that no position is output twice; it needs steps ≤ n.
        """
        x = self._inputs(x)
        B, n, _ = x.shape
        emb, e, state = self.encode(x)
        W1e = self.W1(e)
        go = self.go.expand(B, 1, self.hidden)
        if targets is not None:
            targets = _check_targets(targets, B, n, "n")
            if mask_repeats and targets.shape[1] > n:
                raise ValueError(f"mask_repeats needs at most n = {n} steps, got {targets.shape[1]} targets")
            prev = torch.gather(emb, 1, targets[:, :-1, None].expand(-1, -1, self.hidden))  # (B, T−1, H)
            d, _ = self.decoder(torch.cat([go, prev], 1), state)
            u = self.scores(W1e, d)
            if mask_repeats:
                seen = F.one_hot(targets, n).cumsum(1) > 0  # (B, T, n): pointed to at step ≤ i
                u = u.masked_fill(F.pad(seen[:, :-1], (0, 0, 1, 0)), float("-inf"))
            return u
        steps = n if steps is None else _check_int("steps", steps)
        if mask_repeats and steps > n:
            raise ValueError(f"mask_repeats needs steps <= n = {n}, got {steps}")
        inp, used, out = go, torch.zeros(B, n, dtype=torch.bool), []
        for _ in range(steps):
            d, state = self.decoder(inp, state)
            u = self.scores(W1e, d)[:, 0]  # (B, n)
            if mask_repeats:
                u = u.masked_fill(used, float("-inf"))
            out.append(u)
            ptr = u.argmax(-1)
            used = used | F.one_hot(ptr, n).bool()
            inp = emb[torch.arange(B), ptr][:, None]
        return torch.stack(out, 1)


class Seq2SeqAttention(_EncoderDecoder):
    """The baseline: sequence-to-sequence with input attention and a fixed dictionary of ``max_len`` positions.

    Same embedding, encoder, decoder and additive attention as ``PointerNet``, but the attention weights
    a^i = softmax(u^i) only mix the encoder states into a context c_i = Σ_j a_j^i e_j, and the output is a
    token of a fixed vocabulary: logits = W_o tanh(W_c [d_i; c_i]) over the ``max_len`` position tokens 0 … max_len−1.
    The decoder reads the embedding of the previous output token (a start token first). It runs on inputs of
    any length (the encoder and the attention do), but can never output a position ≥ ``max_len``.
    """

    def __init__(self, max_len: int, hidden: int = 64, in_dim: int = 1):
        super().__init__(hidden, in_dim)
        self.max_len = _check_int("max_len", max_len)
        self.token = nn.Embedding(max_len + 1, hidden)  # position tokens 0 … max_len−1 and the start token
        self.W_c = nn.Linear(2 * hidden, hidden)
        self.W_o = nn.Linear(hidden, max_len)

    def _read(self, W1e: torch.Tensor, e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.scores(W1e, d), -1)  # (B, T, n)
        c = a @ e  # (B, T, H)
        return self.W_o(torch.tanh(self.W_c(torch.cat([d, c], -1))))  # (B, T, max_len)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, mask_repeats: bool = False,
                steps: int | None = None) -> torch.Tensor:
        """Logits over the fixed dictionary: (B, steps, max_len).

        Arguments as ``PointerNet.forward``; targets must be < ``max_len`` (the baseline has no token for a
        later position). ``mask_repeats`` forbids the tokens output before and the tokens ≥ n (positions that
        do not exist in this input); when n > max_len every token is used up after max_len steps, and a step with
        nothing left has all logits −inf (``decode`` outputs −1 there and feeds the start token).
        """
        x = self._inputs(x)
        B, n, _ = x.shape
        _, e, state = self.encode(x)
        W1e = self.W1(e)
        K = self.max_len
        start = torch.full((B, 1), K, dtype=torch.long)
        beyond = torch.arange(K) >= n  # (K,): tokens naming positions the input does not have
        if targets is not None:
            targets = _check_targets(targets, B, min(n, K), "min(n, max_len)")
            if mask_repeats and targets.shape[1] > min(n, K):
                raise ValueError(f"mask_repeats needs at most min(n, max_len) = {min(n, K)} steps, "
                                 f"got {targets.shape[1]} targets")
            d, _ = self.decoder(self.token(torch.cat([start, targets[:, :-1]], 1)), state)
            logits = self._read(W1e, e, d)
            if mask_repeats:
                seen = F.pad((F.one_hot(targets, K).cumsum(1) > 0)[:, :-1], (0, 0, 1, 0))
                logits = logits.masked_fill(seen | beyond, float("-inf"))
            return logits
        steps = n if steps is None else _check_int("steps", steps)
        inp, used, out = start, beyond.expand(B, K).clone(), []
        for _ in range(steps):
            d, state = self.decoder(self.token(inp), state)
            logits = self._read(W1e, e, d)[:, 0]
            if mask_repeats:
                logits = logits.masked_fill(used, float("-inf"))
            out.append(logits)
            ptr = logits.argmax(-1)
            dead = torch.isinf(logits).all(-1) if mask_repeats else torch.zeros(B, dtype=torch.bool)
            used = used | (F.one_hot(ptr, K).bool() & ~dead[:, None])
            inp = torch.where(dead, K, ptr)[:, None]
        return torch.stack(out, 1)


def _check_targets(targets: torch.Tensor, B: int, n: int, n_name: str) -> torch.Tensor:
    if not torch.is_tensor(targets) or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be an integer tensor (B, T), got {getattr(targets, 'dtype', type(targets))}")
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] < 1:
        raise ValueError(f"targets must have shape ({B}, T) with T >= 1, got {tuple(targets.shape)}")
    if targets.min() < 0 or targets.max() >= n:
        raise ValueError(f"targets must be positions in 0 … {n_name} − 1 = {n - 1}, "
                         f"got values in {int(targets.min())} … {int(targets.max())}")
    return targets.long()


# ---------------------------------------------------------------------------------------------------------
# Decoding, scoring, training


@torch.no_grad()
def decode(model: PointerNet | Seq2SeqAttention, x: torch.Tensor, mask_repeats: bool = False) -> torch.Tensor:
    """Greedy decoding of n steps: the positions output, (B, n) long; −1 where no valid token was left."""
    logits = model(x, mask_repeats=mask_repeats)
    pred = logits.argmax(-1)
    return torch.where(torch.isinf(logits).all(-1), -1, pred)


@torch.no_grad()
def evaluate(model: PointerNet | Seq2SeqAttention, task: str, n: int, batch: int = 256, seed: int = 12345,
             mask_repeats: bool = False) -> dict:
    """Greedy accuracy on ``batch`` fresh sequences of length n: ``exact`` (the whole output sequence right) and
    ``per_position`` (the fraction of the n output steps right), plus ``permutation`` (the output is a
    permutation of 0 … n−1, i.e. every input appears once; always 1 with the mask, unless the dictionary
    ran out)."""
    x, y = pointer_data(task, n, batch, seed=seed)
    pred = decode(model, x, mask_repeats=mask_repeats)
    hit = pred == y
    perm = (torch.sort(pred, 1).values == torch.arange(n)).all(1)
    return {"exact": hit.all(1).float().mean().item(), "per_position": hit.float().mean().item(),
            "permutation": perm.float().mean().item()}


class _Adam:
    """Plain Adam (torch.optim's first use imports torch._dynamo: seconds of a 4-second budget)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, (m, v) in zip(self.params, self.state):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def train_pointer(model: PointerNet | Seq2SeqAttention, task: str = "sort", lengths: Sequence[int] = range(5, 11),
                  steps: int = 800, batch: int = 32, lr: float = 3e-3, clip: float = 2.0, seed: int = 0,
                  progress: bool = False) -> list[float]:
    """Teacher-forced cross-entropy training, in place; returns the loss per step.

    Every step draws one length n from ``lengths`` (uniformly) and a batch of that length; the loss is the mean
    over the batch and the n output steps of −log p(C_i = target_i | target_<i, P). No mask in training (as in
    the paper); Adam, gradient norm clipped at ``clip``, learning rate decayed by cosine to 10 % of ``lr``.
    """
    lengths = [_check_int("lengths[i]", n) for n in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one length")
    _check_int("steps", steps)
    _check_int("batch", batch)
    if isinstance(model, Seq2SeqAttention) and max(lengths) > model.max_len:
        raise ValueError(f"lengths must be <= the baseline's max_len = {model.max_len}, got {max(lengths)}")
    g = torch.Generator().manual_seed(seed)
    opt = _Adam(model.parameters(), lr)
    losses = []
    model.train()
    for step in progress_bar(range(steps), desc=f"train {type(model).__name__}",
                             **({} if progress else {"disable": True})):
        n = lengths[int(torch.randint(len(lengths), (1,), generator=g))]
        x, y = pointer_data(task, n, batch, generator=g)
        logits = model(x, targets=y)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.lr = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------------------
# The comparison


FAST = dict(hidden=32, steps=120, batch=32, test_lengths=(5, 10, 15, 20), eval_batch=128)
FULL = dict(hidden=48, steps=800, batch=32, test_lengths=tuple(range(5, 21)), eval_batch=256)
SCRIPT = dict(hidden=128, steps=4000, batch=32, test_lengths=tuple(range(2, 31)), eval_batch=500)


def pointer_compare(task: str = "sort", train_lengths: Sequence[int] = range(5, 11),
                    test_lengths: Sequence[int] = FULL["test_lengths"], hidden: int = FULL["hidden"],
                    steps: int = FULL["steps"], batch: int = FULL["batch"], lr: float = 3e-3,
                    eval_batch: int = FULL["eval_batch"], example_n: int | None = None, seed: int = 0,
                    progress: bool = False) -> dict:
    """Train a ``PointerNet`` and a ``Seq2SeqAttention`` (``max_len`` = the longest training length, same hidden
    size, same data, same steps) on ``train_lengths``, and evaluate both at every length in ``test_lengths``.

    Returns a dict: ``lengths``; ``train_lengths``; ``max_len``; ``acc[model][mode][metric]`` a list over
    ``lengths``, with model in ("pointer", "seq2seq"), mode in ("greedy", "masked") (greedy decoding without and
    with the no-repeat mask), metric in ("exact", "per_position", "permutation"); ``losses[model]`` (per step);
    ``params[model]``; ``seconds[model]`` and ``cpu_seconds[model]`` (training: wall clock, process CPU);
    ``models`` (the trained modules); ``example``: one sort example of length ``example_n`` (default
    ``max_len`` + 5, beyond training) decoded greedily by the pointer net, with ``x``, ``target``, ``pred`` and
    ``probs`` (n, n) the pointer distributions (rows: output steps, columns: input positions), also reordered by
    rank in ``probs_by_rank`` (columns: the input's k-th smallest element; a perfect sort is the identity).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    train_lengths = sorted({_check_int("train_lengths[i]", n) for n in train_lengths})
    test_lengths = sorted({_check_int("test_lengths[i]", n) for n in test_lengths})
    if not train_lengths or not test_lengths:
        raise ValueError("train_lengths and test_lengths must each hold at least one length")
    max_len = max(train_lengths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = {"pointer": PointerNet(hidden), "seq2seq": Seq2SeqAttention(max_len, hidden)}
    out: dict = {"task": task, "lengths": test_lengths, "train_lengths": train_lengths, "max_len": max_len,
                 "hidden": hidden, "steps": steps, "batch": batch, "seed": seed,
                 "acc": {}, "losses": {}, "params": {}, "seconds": {}, "cpu_seconds": {}}
    for name, model in models.items():
        t0, c0 = time.perf_counter(), time.process_time()
        out["losses"][name] = train_pointer(model, task, train_lengths, steps=steps, batch=batch, lr=lr,
                                            seed=seed + 1, progress=progress)
        out["seconds"][name] = time.perf_counter() - t0
        out["cpu_seconds"][name] = time.process_time() - c0
        out["params"][name] = sum(p.numel() for p in model.parameters())
        acc = {}
        for mode in ("greedy", "masked"):
            rows = [evaluate(model, task, n, batch=eval_batch, seed=seed + 10_000 + n, mask_repeats=mode == "masked")
                    for n in test_lengths]
            acc[mode] = {k: [r[k] for r in rows] for k in ("exact", "per_position", "permutation")}
        out["acc"][name] = acc
    n = _check_int("example_n", example_n) if example_n is not None else max_len + 5
    x, y = pointer_data(task, n, 1, seed=seed + 777)
    with torch.no_grad():
        probs = torch.softmax(models["pointer"](x), -1)[0]
    order = torch.argsort(x[0])
    out["example"] = {"n": n, "x": x[0].tolist(), "target": y[0].tolist(), "pred": probs.argmax(-1).tolist(),
                      "probs": probs.tolist(), "probs_by_rank": probs[:, order].tolist()}
    out["models"] = models
    return out


# ---------------------------------------------------------------------------------------------------------
# Script: the longer run, committed as JSON


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    return obj


def load(path: str | Path | None = None) -> dict:
    """The committed comparison (``labkit/assets/pointer.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.pointer", path, what="pointer results")


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m labkit.memory.pointer [--out PATH] [--steps N] [--hidden H] [--seed S]``: the longer run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--steps", type=int, default=SCRIPT["steps"])
    parser.add_argument("--hidden", type=int, default=SCRIPT["hidden"])
    parser.add_argument("--batch", type=int, default=SCRIPT["batch"])
    parser.add_argument("--eval-batch", type=int, default=SCRIPT["eval_batch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="sort", choices=TASKS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    res = pointer_compare(args.task, test_lengths=SCRIPT["test_lengths"], hidden=args.hidden, steps=args.steps,
                          batch=args.batch, eval_batch=args.eval_batch, seed=args.seed, progress=True)
    res.pop("models")
    losses = res.pop("losses")
    every = max(1, args.steps // 200)  # keep the file small: the loss curve, 200 points, each a window mean
    res["loss_curve"] = {k: {"step": list(range(0, len(v), every)),
                             "loss": [sum(v[i:i + every]) / len(v[i:i + every]) for i in range(0, len(v), every)]}
                         for k, v in losses.items()}
    res["meta"] = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "threads": 1, "seconds_total": time.perf_counter() - t0,
                   "cpu_seconds_total": time.process_time() - c0,
                   "command": "python -m labkit.memory.pointer"}
    Path(args.out).write_text(json.dumps(_round(res), indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
