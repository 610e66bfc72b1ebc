r"""Recognition, recall and retention of few-shot memories in a tiny language model.

A reproduction at tiny scale of Orhan (2023), "Recognition, recall, and retention of few-shot memories in large
language models", with chapter 1's byte-level ``tinylm`` (≈1.9M parameters, trained on CPython's
``pydoc_data.topics``). The stream, for one seed:

1. *warm-up*: a few Adam updates on filler text (windows of the training split), so the optimizer state is that
   of a run already in progress;
2. *study*: ``n`` study sentences, each seen ``exposures`` times (one exposure = one shuffled pass over the study
   set in mini-batches of ``study_batch`` sentences);
3. *retention*: ``max(eval_steps)`` further updates on filler text, probing the memory at ``eval_steps``
   (0 = right after the study phase).

Study sentences and foils are sentences of the *held-out* 10 % of the text (never in the pretraining data),
40–80 characters, paired by length; the seed picks the pairs, which member of each pair is studied, the filler
order and the study order. A sentence x = x_1..x_L is scored by its mean loss per byte given a newline,

$$\ell(x) = -\tfrac{1}{L}\sum_{t=1}^{L} \log p_\theta(x_t \mid \texttt{\\n}, x_{<t}).$$

**Recognition** is a two-alternative forced choice between the studied sentence s_i and its matched foil f_i:

$$\mathrm{recognition} = \tfrac{1}{n}\sum_{i=1}^{n}
  \big(\mathbb{1}[\ell(s_i) < \ell(f_i)] + \tfrac12\,\mathbb{1}[\ell(s_i) = \ell(f_i)]\big),$$

0.5 in expectation for a model that has seen neither (which member is studied is a coin flip), and swapping the
roles of studied and foil turns a score r into exactly 1 − r.
**Recall**: cued with the first ``cue_chars`` bytes, greedy decoding continues for the rest of the sentence;
``recall_exact`` is the fraction of sentences reproduced exactly, ``recall_char`` the fraction of the continued
bytes that equal the sentence's byte at the same position. The same numbers on the foils (never studied) are
the baseline of what the model guesses from English alone.

``lmforget_experiment`` runs it for several exposure counts and seeds (plus an *unstructured* control whose
sentences have their characters shuffled); ``python -m labkit.continual.lmforget`` writes the full run to
``labkit/assets/lmforget.json`` (``load``), plotted by ``plot_retention`` and ``plot_exposures``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labkit.continual._checks import nonneg_int as _nonneg_int
from labkit.continual._checks import positive_int as _positive_int
from labkit.data import corpus
from labkit.models import TinyLM
from labkit.models import tokenizer as tk
from labkit.runtime import load_results

__all__ = [
    "EXPOSURES",
    "FAST",
    "FULL",
    "METRICS",
    "SEEDS",
    "STIMULI",
    "candidate_sentences",
    "curves",
    "load",
    "lmforget_experiment",
    "plot_exposures",
    "plot_retention",
    "recall",
    "recognition",
    "recognition_score",
    "retention_run",
    "sentence_losses",
    "shuffle_characters",
    "study_pairs",
    "summary_rows",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "lmforget.json"
STIMULI = ("sentences", "shuffled")
METRICS = ("recognition", "recognition_calibrated", "recall_exact", "recall_char", "foil_recall_exact",
           "foil_recall_char", "loss_studied", "loss_foil")
NEWLINE = tk.encode("\n")[0]


# ---------------------------------------------------------------------------------------------------------
# Validation


def _check_sentences(name: str, sentences: Sequence[str], min_len: int = 1) -> list[str]:
    if isinstance(sentences, str):
        raise ValueError(f"{name} must be a list of sentences, got a single str {sentences[:30]!r}")
    items = list(sentences)
    if not items:
        raise ValueError(f"{name} must hold at least one sentence, got an empty list")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(s).__name__}")
        if len(tk.encode(s)) < min_len:
            raise ValueError(f"{name}[{i}] must be at least {min_len} bytes long, got {len(tk.encode(s))}: {s!r}")
    return items


def _check_pairs(studied: Sequence[str], foils: Sequence[str], min_len: int = 1) -> tuple[list[str], list[str]]:
    s = _check_sentences("studied", studied, min_len)
    f = _check_sentences("foils", foils, min_len)
    if len(s) != len(f):
        raise ValueError(f"foils must hold one foil per studied sentence ({len(s)}), got {len(f)}")
    return s, f


def _check_eval_steps(eval_steps: Sequence[int]) -> list[int]:
    steps = [_nonneg_int("eval_steps[i]", v) for v in eval_steps]
    if not steps:
        raise ValueError("eval_steps must hold at least one step (0 = right after the study phase), got []")
    if steps != sorted(set(steps)):
        raise ValueError(f"eval_steps must be strictly increasing, got {list(eval_steps)}")
    return steps


# ---------------------------------------------------------------------------------------------------------
# Stimuli


@functools.cache
def candidate_sentences(min_chars: int = 40, max_chars: int = 80) -> tuple[str, ...]:
    """Sentences of the held-out English (never in tinylm's training text), ``min_chars``..``max_chars`` long.

    ASCII, starting with a capital, ending in ``.``/``!``/``?``, whitespace collapsed, de-duplicated, and not a
    substring of the training split. In document order.
    """
    _positive_int("min_chars", min_chars)
    _positive_int("max_chars", max_chars)
    if max_chars < min_chars:
        raise ValueError(f"max_chars must be >= min_chars={min_chars}, got {max_chars}")
    train = corpus.english_text("train")
    out: dict[str, None] = {}
    for para in corpus.english_text("heldout").split("\n\n"):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            if (min_chars <= len(s) <= max_chars and s.isascii() and s[0].isupper() and s[-1] in ".!?"
                    and ">>>" not in s and s not in train):
                out[s] = None
    return tuple(out)


def study_pairs(n_pairs: int, seed: int = 0, min_chars: int = 40, max_chars: int = 80) -> tuple[list[str], list[str]]:
    """``n_pairs`` (studied, foil) pairs of held-out sentences matched in length.

    The candidates are sorted by length and cut into neighbouring pairs; the seed draws ``n_pairs`` of those
    pairs and, per pair, which member is studied (a fair coin). Returns (studied, foils), each a list of n_pairs.
    """
    _positive_int("n_pairs", n_pairs)
    pool = sorted(candidate_sentences(min_chars, max_chars), key=lambda s: (len(s), s))
    pairs = [(pool[2 * i], pool[2 * i + 1]) for i in range(len(pool) // 2)]
    if n_pairs > len(pairs):
        raise ValueError(f"n_pairs must be <= {len(pairs)} (held-out sentences of {min_chars}..{max_chars} chars), "
                         f"got {n_pairs}")
    g = np.random.default_rng([seed, 11])
    chosen = g.choice(len(pairs), size=n_pairs, replace=False)
    flips = g.random(n_pairs) < 0.5
    studied = [pairs[k][int(f)] for k, f in zip(chosen, flips)]
    foils = [pairs[k][1 - int(f)] for k, f in zip(chosen, flips)]
    return studied, foils


def shuffle_characters(sentences: Sequence[str], seed: int = 0) -> list[str]:
    """Each sentence with its characters randomly permuted (same length and letters, no structure)."""
    items = _check_sentences("sentences", sentences)
    g = np.random.default_rng([seed, 13])
    return ["".join(np.asarray(list(s))[g.permutation(len(s))]) for s in items]


def _rows(sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sentences as rows ``\\n x_1 .. x_L`` zero-padded: inputs (N, Lmax), targets (N, Lmax), mask (N, Lmax)."""
    ids = [[NEWLINE, *tk.encode(s)] for s in sentences]
    width = max(len(r) for r in ids)
    tokens = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width - 1, dtype=torch.bool)
    for i, r in enumerate(ids):
        tokens[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r) - 1] = True
    return tokens[:, :-1], tokens[:, 1:], mask


# ---------------------------------------------------------------------------------------------------------
# Probes


@torch.no_grad()
def sentence_losses(model: TinyLM, sentences: Sequence[str]) -> np.ndarray:
    """ℓ(x) for each sentence: mean negative log-likelihood per byte given a newline, (N,) in nats."""
    items = _check_sentences("sentences", sentences)
    was = model.training
    model.eval()
    x, y, m = _rows(items)
    nll = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")  # (N, L)
    model.train(was)
    return ((nll * m).sum(1) / m.sum(1)).numpy().astype(np.float64)


def recognition_score(loss_studied: np.ndarray, loss_foil: np.ndarray) -> float:
    """2AFC score: mean of 1[ℓ(s_i) < ℓ(f_i)] + ½·1[ℓ(s_i) = ℓ(f_i)] over pairs. Inputs (n,), (n,)."""
    a, b = np.asarray(loss_studied, dtype=np.float64), np.asarray(loss_foil, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"loss_studied and loss_foil must be equal-length non-empty 1-D arrays, got shapes "
                         f"{a.shape} and {b.shape}")
    return float(np.mean((a < b) + 0.5 * (a == b)))


def recognition(model: TinyLM, studied: Sequence[str], foils: Sequence[str]) -> float:
    """The 2AFC recognition score of ``model`` on (studied[i], foils[i]) pairs (see ``recognition_score``)."""
    s, f = _check_pairs(studied, foils)
    losses = sentence_losses(model, s + f)
    return recognition_score(losses[:len(s)], losses[len(s):])


@torch.no_grad()
def recall(model: TinyLM, sentences: Sequence[str], cue_chars: int = 20) -> dict[str, float | list[float]]:
    """Cued recall by greedy decoding: cue ``\\n x_1..x_c`` (c = ``cue_chars`` bytes), continue for the rest.

    Returns ``exact`` (fraction of sentences continued exactly), ``char`` (fraction of continued bytes equal to
    the sentence's byte at that position, pooled over sentences), ``per_sentence`` (each sentence's fraction) and
    ``n_target`` (each sentence's number of continued bytes).
    All sentences are decoded together with one KV cache (their cues have the same length).
    """
    _positive_int("cue_chars", cue_chars)
    items = _check_sentences("sentences", sentences, min_len=cue_chars + 1)
    ids = [tk.encode(s) for s in items]
    if max(len(r) for r in ids) > model.config.context - 1:
        raise ValueError(f"sentences must be at most {model.config.context - 1} bytes (the model's context), got "
                         f"{max(len(r) for r in ids)}")
    was = model.training
    model.eval()
    cue = torch.tensor([[NEWLINE, *r[:cue_chars]] for r in ids])
    targets = [r[cue_chars:] for r in ids]
    n_new = max(len(t) for t in targets)
    cache = model.new_cache(len(ids))
    logits = model(cue, cache=cache)[:, -1]
    out = torch.empty(len(ids), n_new, dtype=torch.long)
    for i in range(n_new):
        out[:, i] = logits.argmax(-1)
        if i + 1 < n_new:
            logits = model(out[:, i:i + 1], cache=cache)[:, -1]
    model.train(was)
    hits = [(out[k, :len(t)] == torch.tensor(t)).double() for k, t in enumerate(targets)]
    return {
        "exact": float(np.mean([bool(h.all()) for h in hits])),
        "char": float(torch.cat(hits).mean()),
        "per_sentence": [float(h.mean()) for h in hits],
        "n_target": [len(t) for t in targets],
    }


# ---------------------------------------------------------------------------------------------------------
# The stream


def _filler(g: np.random.Generator, batch_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of the training split: inputs, targets (B, length), mask all True."""
    text = corpus.english_tokens("train")
    starts = g.integers(0, len(text) - length - 1, size=batch_size)
    rows = torch.from_numpy(np.stack([text[s:s + length + 1] for s in starts]).astype(np.int64))
    return rows[:, :-1], rows[:, 1:], torch.ones(batch_size, length, dtype=torch.bool)


class _Adam:
    """Adam (Kingma & Ba) without weight decay, written out: with g the gradient clipped to global norm 1,
    m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², θ ← θ − lr · m̂ / (√v̂ + ε) (m̂, v̂ bias-corrected).

    The same update as ``torch.optim.Adam``; written here because the first ``torch.optim`` optimizer of a
    process imports torch's compiler stack (seconds), which the FAST budget cannot spare.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.b1, self.b2), self.eps, self.t = lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)
            p.grad = None


def _step(model: TinyLM, opt: _Adam, batch) -> float:
    """One update on ``batch`` = (inputs, targets, mask), each (B, T): mean NLL over the masked targets."""
    x, y, m = batch
    nll = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
    loss = nll[m].mean()
    loss.backward()
    grads = [p.grad for p in opt.params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > 1.0:
        for g in grads:
            g.mul_(1.0 / (float(norm) + 1e-6))
    opt.step()
    return float(loss.detach())


def _probe(model: TinyLM, studied: list[str], foils: list[str], cue_chars: int,
           reference: np.ndarray) -> dict[str, float]:
    """Every metric of ``METRICS``; ``reference``: (2n,) the losses of studied + foils before the study phase."""
    n = len(studied)
    losses = sentence_losses(model, studied + foils)
    ls, lf = losses[:n], losses[n:]
    delta = losses - reference
    r = recall(model, studied + foils, cue_chars)  # one decoding batch for both
    hits, n_target = np.asarray(r["per_sentence"]), np.asarray(r["n_target"], dtype=float)
    def pooled(sl):
        return float((hits[sl] * n_target[sl]).sum() / n_target[sl].sum())
    return {"recognition": recognition_score(ls, lf), "recognition_calibrated": recognition_score(delta[:n], delta[n:]),
            "recall_exact": float(np.mean(hits[:n] == 1.0)), "recall_char": pooled(slice(0, n)),
            "foil_recall_exact": float(np.mean(hits[n:] == 1.0)), "foil_recall_char": pooled(slice(n, None)),
            "loss_studied": float(ls.mean()), "loss_foil": float(lf.mean())}


def retention_run(
    model: TinyLM,
    studied: Sequence[str],
    foils: Sequence[str],
    exposures: int = 1,
    eval_steps: Sequence[int] = (0, 1, 2, 4, 8, 16, 32, 64),
    seed: int = 0,
    lr: float = 1e-3,
    study_batch: int = 8,
    filler_batch: int = 4,
    filler_length: int = 128,
    warmup_steps: int = 4,
    cue_chars: int = 20,
    probe_before: bool = True,
) -> dict:
    """Warm up, study ``studied`` ``exposures`` times, keep training on filler text; probe at ``eval_steps``.

    ``model`` is deep-copied (the caller's weights are never changed). Adam (``lr``, betas (0.9, 0.95), no weight
    decay, gradient norm clipped to 1: ``_Adam``) runs through all three phases; each update is one mini-batch: study
    batches hold ``study_batch`` study sentences (a row ``\\n`` + sentence, loss on the sentence), filler batches
    ``filler_batch`` random windows of ``filler_length`` bytes of the training split. ``seed`` fixes the filler
    windows and the study order. Returns a JSON-ready dict: ``steps`` (= eval_steps, filler updates after the
    study phase), one list per metric of ``METRICS`` (same length), ``before`` (the metrics after warm-up, before
    any study; None unless ``probe_before``) and the settings. ``recognition_calibrated`` is the 2AFC on the loss
    *changes* since the end of the warm-up, ℓ_t(x) − ℓ_before(x) (it removes how hard each sentence is).
    """
    s, f = _check_pairs(studied, foils, min_len=_positive_int("cue_chars", cue_chars) + 1)
    exposures = _positive_int("exposures", exposures)
    steps = _check_eval_steps(eval_steps)
    for name, v in (("study_batch", study_batch), ("filler_batch", filler_batch), ("filler_length", filler_length)):
        _positive_int(name, v)
    _nonneg_int("warmup_steps", warmup_steps)
    _nonneg_int("seed", seed)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr must be a float in (0, 1), got {lr!r}")
    if not isinstance(model, TinyLM):
        raise ValueError(f"model must be a TinyLM, got {type(model).__name__}")
    if filler_length > model.config.context:
        raise ValueError(f"filler_length must be <= the model's context {model.config.context}, got {filler_length}")

    t0 = time.perf_counter()
    model = copy.deepcopy(model)  # never train the caller's (pretrained) weights
    model.train()
    opt = _Adam(model.parameters(), lr=lr)
    g = np.random.default_rng([seed, 17])
    for _ in range(warmup_steps):
        _step(model, opt, _filler(g, filler_batch, filler_length))
    reference = sentence_losses(model, s + f)
    before = _probe(model, s, f, cue_chars, reference) if probe_before else None
    for _ in range(exposures):
        order = g.permutation(len(s))
        for i in range(0, len(s), study_batch):
            _step(model, opt, _rows([s[k] for k in order[i:i + study_batch]]))
    out: dict = {"steps": steps, **{m: [] for m in METRICS}}
    done = 0
    for target in steps:
        while done < target:
            _step(model, opt, _filler(g, filler_batch, filler_length))
            done += 1
        for m, v in _probe(model, s, f, cue_chars, reference).items():
            out[m].append(v)
    out.update({
        "before": before, "exposures": exposures, "n_pairs": len(s), "seed": seed,
        "settings": {"lr": lr, "study_batch": study_batch, "filler_batch": filler_batch,
                     "filler_length": filler_length, "warmup_steps": warmup_steps, "cue_chars": cue_chars},
        "seconds": time.perf_counter() - t0,
    })
    return out


# ---------------------------------------------------------------------------------------------------------
# The experiment


EXPOSURES = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
FULL = {"n_pairs": 16, "exposures": EXPOSURES, "retention_exposures": (1, 8),
        "eval_steps": (0, 1, 2, 4, 8, 16, 32), "shuffled_exposures": (1, 8)}
FAST = {"seeds": (0,), "n_pairs": 4, "exposures": (1, 4), "retention_exposures": (4,), "eval_steps": (0, 2),
        "shuffled_exposures": (4,), "warmup_steps": 1, "probe_before": False}


def lmforget_experiment(
    seeds: Sequence[int] = SEEDS,
    n_pairs: int = 16,
    exposures: Sequence[int] = EXPOSURES,
    retention_exposures: Sequence[int] = (1, 8),
    eval_steps: Sequence[int] = (0, 1, 2, 4, 8, 16, 32),
    shuffled_exposures: Sequence[int] = (1, 8),
    model: TinyLM | None = None,
    progress: bool = False,
    **run_kwargs,
) -> dict:
    """``retention_run`` for every seed × exposure count, on sentences and on shuffled characters.

    Sentences are studied ``exposures`` times; the runs whose count is in ``retention_exposures`` are probed at
    every one of ``eval_steps`` (which must start at 0), the others right after the study phase only (step 0:
    the recall-vs-exposures curve). The *shuffled* control studies the same pairs with the characters of every
    studied and foil sentence shuffled, ``shuffled_exposures`` times, probed at step 0 only. ``model``:
    default the shipped ``tinylm`` (loaded once; every run copies it). Per seed, the pairs come from
    ``study_pairs(n_pairs, seed)``, and every run of the seed sees the same filler stream, so the warm-up (and
    the ``before`` probe, stored on the seed's first run of each stimulus type only) is the same for all of them.
    ``run_kwargs`` go to ``retention_run``. Returns ``{"settings", "runs": [run dicts + "stimuli"], "seconds"}``
    (JSON-ready).
    """
    seeds = [_nonneg_int("seeds[i]", s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got []")
    exposures = [_positive_int("exposures", e) for e in exposures]
    if not exposures:
        raise ValueError("exposures must hold at least one exposure count, got []")
    keep = {_positive_int("retention_exposures", e) for e in retention_exposures}
    shuffled = [_positive_int("shuffled_exposures", e) for e in shuffled_exposures]
    steps = _check_eval_steps(eval_steps)
    if steps[0] != 0:
        raise ValueError(f"eval_steps must start at 0 (right after the study phase), got {list(eval_steps)}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if model is None:
        from labkit.models import load as load_model

        model = load_model("tinylm")
    jobs = [(seed, "sentences", e) for seed in seeds for e in exposures]
    jobs += [(seed, "shuffled", e) for seed in seeds for e in shuffled]
    if progress:
        from labkit.runtime import progress as bar

        jobs = bar(jobs, desc="lmforget runs")
    runs, probed = [], set()
    want_before = run_kwargs.pop("probe_before", True)
    for seed, stimuli, e in jobs:
        studied, foils = study_pairs(n_pairs, seed)
        if stimuli == "shuffled":
            studied, foils = shuffle_characters(studied, seed), shuffle_characters(foils, seed + 1)
        full = stimuli == "sentences" and e in keep
        first = (seed, stimuli) not in probed
        probed.add((seed, stimuli))
        run = retention_run(model, studied, foils, exposures=e, eval_steps=steps if full else [0], seed=seed,
                            probe_before=want_before and first, **run_kwargs)
        run["stimuli"] = stimuli
        runs.append(run)
    settings = {"seeds": seeds, "n_pairs": n_pairs, "exposures": exposures,
                "retention_exposures": sorted(keep), "eval_steps": steps, "shuffled_exposures": shuffled,
                **runs[0]["settings"]}
    return {"settings": settings, "runs": runs, "seconds": time.perf_counter() - t0}


def curves(results: dict, metric: str = "recall_char", stimuli: str = "sentences",
           step: int | None = None) -> dict[int, np.ndarray]:
    """exposures -> ``metric`` per seed: (seeds, len(eval_steps)) over the retention steps (only the runs probed at
    every step), or (seeds,) at one ``step`` (every run probed there, e.g. step 0)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if stimuli not in STIMULI:
        raise ValueError(f"stimuli must be one of {STIMULI}, got {stimuli!r}")
    full = list(results["settings"]["eval_steps"])
    if step is not None and step not in full:
        raise ValueError(f"step must be one of the eval_steps {full}, got {step}")
    out: dict[int, list] = {}
    for r in results["runs"]:
        if r["stimuli"] != stimuli:
            continue
        if step is None and r["steps"] == full:
            out.setdefault(r["exposures"], []).append(r[metric])
        elif step is not None and step in r["steps"]:
            out.setdefault(r["exposures"], []).append(r[metric][r["steps"].index(step)])
    return {e: np.asarray(v, dtype=float) for e, v in sorted(out.items())}


def plot_retention(results: dict, metric: str = "recall_char", stimuli: str = "sentences"):
    """Mean ± std over seeds of ``metric`` against filler updates after the study phase, one line per exposure
    count (x axis: step + 1, log scale, so step 0 shows)."""
    from labkit.viz import line_band

    cs = curves(results, metric, stimuli)
    x = np.asarray(results["settings"]["eval_steps"], dtype=float) + 1
    named = {f"{e} exposure{'s' if e > 1 else ''}": v for e, v in cs.items()}
    return line_band(x, named, title=f"retention of {metric} ({stimuli})", xaxis="updates on new text + 1",
                     yaxis=metric, log_x=True)


def plot_exposures(results: dict, step: int = 0, stimuli: str = "sentences"):
    """Recognition and recall (mean ± std over seeds) against the number of exposures, ``step`` updates after the
    study phase (default: right after it); the foils' recall is the baseline of recall."""
    from labkit.viz import line_band

    named, xs = {}, None
    for metric in ("recognition", "recall_char", "recall_exact", "foil_recall_char"):
        cs = curves(results, metric, stimuli, step=step)
        xs = list(cs)
        named[metric] = np.stack([cs[e] for e in xs], axis=1)  # (seeds, exposure counts)
    return line_band(xs, named, title=f"memory vs exposures ({stimuli}, {step} updates after study)",
                     xaxis="exposures", yaxis="score", log_x=True)


def summary_rows(results: dict, step: int = 0,
                 metrics: Sequence[str] = ("recognition", "recognition_calibrated", "recall_exact", "recall_char",
                                           "foil_recall_char")) -> list[dict]:
    """One row per (stimuli, exposures): ``metric`` as "mean ± std" over seeds, ``step`` updates after the study
    phase (for ``labkit.viz.table``)."""
    rows: dict[tuple[str, int], dict] = {}
    for stim in STIMULI:
        for metric in metrics:
            for e, v in curves(results, metric, stim, step=step).items():
                row = rows.setdefault((stim, e), {"stimuli": stim, "exposures": e, "seeds": len(v)})
                row[metric] = f"{v.mean():.2f} ± {v.std():.2f}"
    return list(rows.values())


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/lmforget.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.continual.lmforget", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 4: recognition, recall and retention in tinylm.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--fast", action="store_true", help="the FAST setting (prints, writes nothing by default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kwargs = dict(FAST) if args.fast else {**FULL, "seeds": tuple(args.seeds)}
    res = lmforget_experiment(progress=True, **kwargs)
    out = args.out if args.out is not None else (None if args.fast else RESULTS)
    if out is not None:
        Path(out).write_text(json.dumps(res))
    for stim in STIMULI:
        for metric in ("recognition", "recognition_calibrated", "recall_exact", "recall_char", "foil_recall_char"):
            at0 = curves(res, metric, stim, step=0)
            print(f"{stim:9s} {metric:22s} step 0 by exposures "
                  + " ".join(f"x{e}: {v.mean():.2f}±{v.std():.2f}" for e, v in at0.items()))
            for e, v in curves(res, metric, stim).items():
                print(f"{'':9s} {metric:22s} x{e} over steps {res['settings']['eval_steps']}: "
                      + " ".join(f"{m:.2f}" for m in v.mean(0)))
    print(f"{res['seconds']:.1f} s" + (f" -> {out}" if out else ""))


if __name__ == "__main__":
    main()
