r"""Streaming memory over a video-like stream, and a persona-consistency memory for a dialogue agent.

**Part 1 — streaming memory** (IXC2.5-OmniLive; OVBench / VideoChat-Online's Pyramid Memory Bank). A stream of
frames x_t ∈ R^d is generated from a latent event sequence: events of random durations, each with a prototype
μ_e (a random projection μ_e = W z_e / ‖W z_e‖ of a generated feature vector z_e ∈ R^k), frames
x_t = μ_{e(t)} + σ ε_t with ε_t ~ N(0, I/d); some events recur later and some are rare one-off *needles*
(1–3 frames). Every memory stores at most ``budget`` *slots*; a slot is a vector sum s, a frame count n and a
time span [t_0, t_1]; its content is the mean s / n. All four memories expose the same slots:

- ``FIFOMemory``: the last B frames (a short-term buffer only).
- ``CompressiveMemory`` (OmniLive-style): a short-term buffer of S frames; the frame it evicts is merged into the
  last long-term slot when cos(x, mean) ≥ τ (same event), else it opens a new slot; when long-term memory holds
  more than B − S slots, the adjacent pair with the highest cosine similarity is merged
  (s = s_i + s_{i+1}, n = n_i + n_{i+1}, span = [t_0^i, t_1^{i+1}]). Long-term spans stay contiguous, so the
  memory covers every frame seen.
- ``PyramidMemory`` (OVBench PMB-style, temporal part): L levels; level 0 is a FIFO of the most recent frames
  (stride 1); level l ≥ 1 receives what level l − 1 evicts and averages every r consecutive evicted slots into
  one, so a level-l slot summarises exactly r^l frames with span [k r^l, (k + 1) r^l − 1] (stride r^l). The top
  level has *dynamic eviction*: when full, it merges its most similar adjacent pair instead of dropping
  anything. Each level ≥ 1 also holds one partial accumulator (counted in the budget). Frames here are single
  vectors, so the paper's spatial pooling (fewer tokens per frame at higher levels) is not modelled.
- ``UniformMemory``: frames at times t ≡ 0 (mod k); when more than B are held, k doubles and every other one
  is dropped (uniform subsampling of the whole past).

Queries asked at time τ about [0, τ): *event at t* (decode the slot nearest to t), *last occurrence of E*
(largest t_1 of a slot decoding to E, within a tolerance), *has E happened?* (half seen, half never-seen
events), *how many distinct events?* (scored 1 − relative error, clipped at 0) and *what is happening now?*
(the event at a t in the last ``RECENT`` frames: OVBench's "present" tasks, where a recency buffer matters).
Decoding maps a slot mean to the nearest prototype of the event vocabulary (cosine). ``streaming_experiment``
measures accuracy vs elapsed time and budget and the cost per frame. ``python -m labkit.episodic.streaming``
writes the full run (3 seeds, both parts) to ``labkit/assets/streaming.json`` (``load``).

**Part 2 — persona consistency** (LMEDR, simplified). A persona is a set of functional facts (attribute,
value) with text; candidate responses come from templates: consistent (restate the value), contradicting
(another value of the same attribute, or the persona's value negated) and neutral. The memory check scores a
response r against the stored facts m:  s(r) = max_m P(entail | m, r) − max_m P(contradict | m, r),  either by a
rule-based NLI over (attribute, value, polarity) parsed from the text, or by a learned scorer: multinomial
logistic regression over hashed word-pair and word-triple cross features of (fact, response), trained on
generated pairs with held-out templates. Selection picks the candidate with the best s (ties broken by the
generator's own score). The paper's model (BART with entailment memory learned from NLI data, a discourse
memory and an orthogonality constraint) is not reproduced: this is the memory *check*, not the generator.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labkit.runtime import load_results

__all__ = [
    "MEMORIES",
    "QUERY_TYPES",
    "RECENT",
    "CompressiveMemory",
    "FIFOMemory",
    "LearnedNLI",
    "Persona",
    "PyramidMemory",
    "RuleNLI",
    "StreamMemory",
    "UniformMemory",
    "VideoStream",
    "answer_queries",
    "consistency_label",
    "load",
    "make_candidates",
    "make_memory",
    "make_persona",
    "make_queries",
    "make_stream",
    "nli_pairs",
    "persona_experiment",
    "pyramid_capacities",
    "select_response",
    "streaming_experiment",
]

RESULTS = Path(__file__).resolve().parent.parent / "assets" / "streaming.json"
QUERY_TYPES = ("event_at", "last_seen", "seen_before", "count", "present")
RECENT = 20  # frames: a "present" query asks about t in [now - RECENT, now)
MEMORIES = ("fifo", "compressive", "pyramid", "uniform")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_float(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------
# Part 1: the stream
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoStream:
    """A generated stream. frames: (T, d) float32; labels: (T,) event id per frame; prototypes: (V, d) unit
    rows for the whole vocabulary (ids ``n_shown..V-1`` never appear: distractors); needles: ids of one-off events;
    segments: (n_segments, 3) int rows (event, start, end_exclusive)."""

    frames: np.ndarray
    labels: np.ndarray
    prototypes: np.ndarray
    needles: np.ndarray
    segments: np.ndarray
    n_shown: int


def make_stream(
    n_frames: int = 2000,
    d: int = 64,
    latent_dim: int = 16,
    duration: tuple[int, int] = (10, 60),
    p_recur: float = 0.4,
    p_needle: float = 0.1,
    noise: float = 0.5,
    n_distractors: int = 50,
    seed: int = 0,
) -> VideoStream:
    """A synthetic "video": segments of events with durations uniform in ``duration``; a segment is a needle
    (new one-off event, 1–3 frames) with prob. ``p_needle``, else a recurring earlier event with prob.
    ``p_recur``, else a new event. Prototypes μ = normalize(W z), z ~ N(0, I_k), W ~ N(0, 1/k) of shape (d, k)."""
    n_frames = _check_int("n_frames", n_frames, 1)
    d = _check_int("d", d, 2)
    latent_dim = _check_int("latent_dim", latent_dim, 1)
    if len(duration) != 2 or not 1 <= duration[0] <= duration[1]:
        raise ValueError(f"duration must be (low, high) with 1 <= low <= high, got {duration!r}")
    p_recur = _check_float("p_recur", p_recur, 0.0, 1.0)
    p_needle = _check_float("p_needle", p_needle, 0.0, 1.0)
    noise = _check_float("noise", noise, 0.0, 100.0)
    n_distractors = _check_int("n_distractors", n_distractors, 0)
    rng = np.random.default_rng(seed)
    segments: list[tuple[int, int, int]] = []
    regular: list[int] = []
    needles: list[int] = []
    n_events, t = 0, 0
    while t < n_frames:
        u = rng.random()
        if u < p_needle:
            e, length = n_events, int(rng.integers(1, 4))
            n_events += 1
            needles.append(e)
        else:
            length = int(rng.integers(duration[0], duration[1] + 1))
            previous = segments[-1][0] if segments else -1
            choices = [r for r in regular if r != previous]
            if choices and rng.random() < p_recur:
                e = int(choices[rng.integers(len(choices))])
            else:
                e = n_events
                n_events += 1
                regular.append(e)
        end = min(t + length, n_frames)
        segments.append((e, t, end))
        t = end
    vocab = n_events + n_distractors
    w = rng.normal(0.0, 1.0 / np.sqrt(latent_dim), size=(d, latent_dim))
    protos = rng.normal(size=(vocab, latent_dim)) @ w.T
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    labels = np.empty(n_frames, dtype=np.int64)
    for e, s, end in segments:
        labels[s:end] = e
    frames = protos[labels] + noise * rng.normal(size=(n_frames, d)) / np.sqrt(d)
    return VideoStream(frames.astype(np.float32), labels, protos.astype(np.float32), np.array(needles, np.int64),
                       np.array(segments, np.int64).reshape(-1, 3), n_events)


# ----------------------------------------------------------------------------------------------------------------
# Part 1: memories
# ----------------------------------------------------------------------------------------------------------------


class _Slots:
    """A list of slots in time order: sums (n, d), counts (n,), spans t0/t1 (n,)."""

    def __init__(self, d: int, capacity: int):
        self.sums = np.zeros((capacity + 2, d), dtype=np.float64)
        self.counts = np.zeros(capacity + 2, dtype=np.int64)
        self.t0 = np.zeros(capacity + 2, dtype=np.int64)
        self.t1 = np.zeros(capacity + 2, dtype=np.int64)
        self.n = 0

    def append(self, vec: np.ndarray, count: int, t0: int, t1: int) -> None:
        i = self.n
        self.sums[i], self.counts[i], self.t0[i], self.t1[i] = vec, count, t0, t1
        self.n += 1

    def add_to_last(self, vec: np.ndarray, count: int, t1: int) -> None:
        self.sums[self.n - 1] += vec
        self.counts[self.n - 1] += count
        self.t1[self.n - 1] = t1

    def pop_front(self) -> tuple[np.ndarray, int, int, int]:
        out = (self.sums[0].copy(), int(self.counts[0]), int(self.t0[0]), int(self.t1[0]))
        for a in (self.sums, self.counts, self.t0, self.t1):
            a[: self.n - 1] = a[1 : self.n]
        self.n -= 1
        return out

    def means(self) -> np.ndarray:
        return self.sums[: self.n] / self.counts[: self.n, None]

    def merge_most_similar(self) -> None:
        """Merge the adjacent pair (i, i+1) with the highest cosine similarity of their means."""
        m = self.means()
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        i = int(np.argmax(np.einsum("ij,ij->i", m[:-1], m[1:])))
        self.sums[i] += self.sums[i + 1]
        self.counts[i] += self.counts[i + 1]
        self.t1[i] = self.t1[i + 1]
        for a in (self.sums, self.counts, self.t0, self.t1):
            a[i + 1 : self.n - 1] = a[i + 2 : self.n]
        self.n -= 1


class StreamMemory:
    """Base class: ``observe(frame)`` one frame at a time (frame: (d,)); ``slots()`` → (means (M, d), t0 (M,),
    t1 (M,), counts (M,)) in time order, with M ≤ budget."""

    def __init__(self, budget: int, d: int):
        self.budget = _check_int("budget", budget, 1)
        self.d = _check_int("d", d, 1)
        self.t = 0

    def observe(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _parts(self) -> list[_Slots]:
        raise NotImplementedError

    def slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        parts = [p for p in self._parts() if p.n]
        if not parts:
            return np.zeros((0, self.d)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        means = np.concatenate([p.means() for p in parts])
        t0 = np.concatenate([p.t0[: p.n] for p in parts])
        t1 = np.concatenate([p.t1[: p.n] for p in parts])
        counts = np.concatenate([p.counts[: p.n] for p in parts])
        order = np.argsort(t0, kind="stable")
        return means[order], t0[order], t1[order], counts[order]

    def __len__(self) -> int:
        return sum(p.n for p in self._parts())


class FIFOMemory(StreamMemory):
    """The last ``budget`` frames."""

    def __init__(self, budget: int, d: int):
        super().__init__(budget, d)
        self.buf = _Slots(d, self.budget)

    def observe(self, frame: np.ndarray) -> None:
        self.buf.append(frame, 1, self.t, self.t)
        if self.buf.n > self.budget:
            self.buf.pop_front()
        self.t += 1

    def _parts(self) -> list[_Slots]:
        return [self.buf]


class CompressiveMemory(StreamMemory):
    """Short-term FIFO of ``short`` frames (default budget // 4) + long-term event slots (OmniLive-style).

    tau: cosine threshold for merging an evicted frame into the last long-term slot (same event)."""

    def __init__(self, budget: int, d: int, short: int | None = None, tau: float = 0.6):
        super().__init__(budget, d)
        if self.budget < 2:
            raise ValueError(f"budget must be >= 2 for CompressiveMemory, got {budget}")
        short = max(1, self.budget // 4) if short is None else short
        self.short = _check_int("short", short, 1)
        if self.short >= self.budget:
            raise ValueError(f"short must be < budget={self.budget}, got {short}")
        self.tau = _check_float("tau", tau, -1.0, 1.0)
        self.stm = _Slots(d, self.short)
        self.ltm = _Slots(d, self.budget - self.short)

    def observe(self, frame: np.ndarray) -> None:
        self.stm.append(frame, 1, self.t, self.t)
        self.t += 1
        if self.stm.n <= self.short:
            return
        vec, count, t0, t1 = self.stm.pop_front()
        if self.ltm.n:
            mean = self.ltm.sums[self.ltm.n - 1]
            cos = float(vec @ mean) / max(float(np.linalg.norm(vec) * np.linalg.norm(mean)), 1e-12)
            if cos >= self.tau:
                self.ltm.add_to_last(vec, count, t1)
                return
        self.ltm.append(vec, count, t0, t1)
        if self.ltm.n > self.budget - self.short:
            self.ltm.merge_most_similar()

    def _parts(self) -> list[_Slots]:
        return [self.ltm, self.stm]


def pyramid_capacities(budget: int, n_levels: int) -> list[int]:
    """Slots per level for a budget: every level ≥ 1 also holds one accumulator, so
    sum(capacities) + (n_levels - 1) == budget; the remainder goes to the top level."""
    budget, n_levels = _check_int("budget", budget, 1), _check_int("n_levels", n_levels, 1)
    free = budget - (n_levels - 1)
    if free < 2 * n_levels:
        raise ValueError(f"budget must be >= {3 * n_levels - 1} for n_levels={n_levels}, got {budget}")
    caps = [free // n_levels] * n_levels
    caps[-1] += free - sum(caps)
    return caps


class PyramidMemory(StreamMemory):
    """Pyramid memory bank: level l slots summarise ``ratio**l`` consecutive frames; the top level merges its most
    similar adjacent pair when full (dynamic eviction). Budget = Σ capacities + (n_levels − 1) accumulators."""

    def __init__(self, budget: int, d: int, n_levels: int = 3, ratio: int = 4):
        super().__init__(budget, d)
        self.n_levels = _check_int("n_levels", n_levels, 1)
        self.ratio = _check_int("ratio", ratio, 2)
        self.capacities = pyramid_capacities(self.budget, self.n_levels)
        self.levels = [_Slots(d, c) for c in self.capacities]
        # accumulators of levels 1..L-1: [sum, count, t0, t1, n_inputs]
        self.acc = [[np.zeros(d), 0, 0, 0, 0] for _ in range(self.n_levels - 1)]

    def strides(self) -> list[int]:
        """Frames per slot at each level: [1, r, r², …]."""
        return [self.ratio**level for level in range(self.n_levels)]

    def _push(self, level: int, vec: np.ndarray, count: int, t0: int, t1: int) -> None:
        slots = self.levels[level]
        slots.append(vec, count, t0, t1)
        if slots.n <= self.capacities[level]:
            return
        if level == self.n_levels - 1:
            slots.merge_most_similar()
            return
        ev = slots.pop_front()
        acc = self.acc[level]
        if acc[4] == 0:
            acc[0], acc[1], acc[2] = ev[0].copy(), ev[1], ev[2]
        else:
            acc[0] += ev[0]
            acc[1] += ev[1]
        acc[3], acc[4] = ev[3], acc[4] + 1
        if acc[4] == self.ratio:
            self._push(level + 1, acc[0], acc[1], acc[2], acc[3])
            self.acc[level] = [np.zeros(self.d), 0, 0, 0, 0]

    def observe(self, frame: np.ndarray) -> None:
        self._push(0, frame, 1, self.t, self.t)
        self.t += 1

    def _parts(self) -> list[_Slots]:
        parts = list(self.levels)
        for acc in self.acc:
            if acc[4]:
                s = _Slots(self.d, 1)
                s.append(acc[0], acc[1], acc[2], acc[3])
                parts.append(s)
        return parts


class UniformMemory(StreamMemory):
    """Frames at t ≡ 0 (mod k); k doubles (dropping every other kept frame) whenever more than budget are held."""

    def __init__(self, budget: int, d: int):
        super().__init__(budget, d)
        self.k = 1
        self.buf = _Slots(d, self.budget)

    def observe(self, frame: np.ndarray) -> None:
        if self.t % self.k == 0:
            self.buf.append(frame, 1, self.t, self.t)
            if self.buf.n > self.budget:
                self.k *= 2
                keep = np.flatnonzero(self.buf.t0[: self.buf.n] % self.k == 0)
                for a in (self.buf.sums, self.buf.counts, self.buf.t0, self.buf.t1):
                    a[: len(keep)] = a[keep]
                self.buf.n = len(keep)
        self.t += 1

    def _parts(self) -> list[_Slots]:
        return [self.buf]


def make_memory(name: str, budget: int, d: int, **kwargs) -> StreamMemory:
    """One of ``MEMORIES`` ("fifo" | "compressive" | "pyramid" | "uniform") with ``budget`` slots."""
    classes = {"fifo": FIFOMemory, "compressive": CompressiveMemory, "pyramid": PyramidMemory,
               "uniform": UniformMemory}
    if name not in classes:
        raise ValueError(f"name must be one of {MEMORIES}, got {name!r}")
    return classes[name](budget, d, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Part 1: queries
# ----------------------------------------------------------------------------------------------------------------


def make_queries(stream: VideoStream, now: int, n_queries: int, rng: np.random.Generator) -> dict[str, list]:
    """Ground-truth queries about frames [0, now): per type a list of (argument, answer)."""
    labels = stream.labels[:now]
    seen = np.unique(labels)
    unseen = np.arange(stream.n_shown, len(stream.prototypes))
    unseen = np.concatenate([unseen, np.setdiff1d(np.arange(stream.n_shown), seen)])
    q: dict[str, list] = {}
    ts = rng.integers(0, now, size=n_queries)
    q["event_at"] = [(int(t), int(labels[t])) for t in ts]
    last = {int(e): int(np.flatnonzero(labels == e)[-1]) for e in seen}
    es = rng.choice(seen, size=n_queries)
    q["last_seen"] = [(int(e), last[int(e)]) for e in es]
    ask_seen = rng.random(n_queries) < 0.5
    q["seen_before"] = [(int(rng.choice(seen)), True) if s else (int(rng.choice(unseen)), False) for s in ask_seen]
    q["count"] = [(None, len(seen))]
    recent = rng.integers(max(0, now - RECENT), now, size=n_queries)
    q["present"] = [(int(t), int(labels[t])) for t in recent]
    return q


def answer_queries(
    memory: StreamMemory, prototypes: np.ndarray, queries: dict[str, list], now: int
) -> dict[str, float]:
    """Accuracy per query type (*event_at* / *present*: the event at a time t in the whole past / in the last
    ``RECENT`` frames). Slots decode to argmax_e cos(mean, μ_e); *last_seen* is right within
    max(3, 0.01·now) frames; *count* scores 1 − |predicted − true| / true (clipped at 0)."""
    means, t0, t1, _ = memory.slots()
    if len(means) == 0:
        return {k: 0.0 for k in QUERY_TYPES}
    ids = np.argmax(means @ prototypes.T, axis=1)
    out = {}
    for kind in ("event_at", "present"):
        ok = []
        for t, e in queries.get(kind, []):
            dist = np.maximum(t0 - t, 0) + np.maximum(t - t1, 0)
            ok.append(ids[int(np.argmin(dist))] == e)
        out[kind] = float(np.mean(ok)) if ok else float("nan")
    tol = max(3, int(0.01 * now))
    ok = []
    for e, last in queries["last_seen"]:
        hit = t1[ids == e]
        ok.append(len(hit) > 0 and abs(int(hit.max()) - last) <= tol)
    out["last_seen"] = float(np.mean(ok))
    present = set(ids.tolist())
    out["seen_before"] = float(np.mean([(e in present) == ans for e, ans in queries["seen_before"]]))
    true = queries["count"][0][1]
    out["count"] = max(0.0, 1.0 - abs(len(present) - true) / true)
    return out


def streaming_experiment(
    seed: int = 0,
    n_frames: int = 2000,
    budgets: Sequence[int] = (32, 64, 128),
    checkpoints: Sequence[int] | None = None,
    n_queries: int = 100,
    memories: Sequence[str] = MEMORIES,
    **stream_kwargs,
) -> dict:
    """Run every memory at every budget over one stream; answer the same queries at each checkpoint.

    Returns {"acc": {memory: {budget: (len(checkpoints), len(QUERY_TYPES)) list}}, "us_per_frame":
    {memory: {budget: µs}}, "checkpoints", "budgets", "query_types", "n_needles", "n_events", "seconds"}."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    n_frames = _check_int("n_frames", n_frames, 10)
    n_queries = _check_int("n_queries", n_queries, 1)
    budgets = [_check_int("budgets[i]", b, 8) for b in budgets]
    for m in memories:
        if m not in MEMORIES:
            raise ValueError(f"memories must be drawn from {MEMORIES}, got {m!r}")
    if checkpoints is None:
        checkpoints = [n_frames // 8, n_frames // 4, n_frames // 2, n_frames]
    checkpoints = sorted(int(c) for c in checkpoints)
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > n_frames:
        raise ValueError(f"checkpoints must lie in 1..n_frames={n_frames}, got {checkpoints}")
    stream = make_stream(n_frames=n_frames, seed=seed, **stream_kwargs)
    rng = np.random.default_rng(seed + 1)
    queries = {c: make_queries(stream, c, n_queries, rng) for c in checkpoints}
    acc: dict = {}
    cost: dict = {}
    for name in memories:
        acc[name], cost[name] = {}, {}
        for b in budgets:
            mem = make_memory(name, b, stream.frames.shape[1])
            rows, elapsed, t = [], 0.0, 0
            for c in checkpoints:
                tick = time.perf_counter()
                for frame in stream.frames[t:c]:
                    mem.observe(frame)
                elapsed += time.perf_counter() - tick
                t = c
                res = answer_queries(mem, stream.prototypes, queries[c], c)
                rows.append([res[k] for k in QUERY_TYPES])
            acc[name][b] = rows
            cost[name][b] = 1e6 * elapsed / n_frames
    return {"seed": seed, "n_frames": n_frames, "checkpoints": checkpoints, "budgets": budgets,
            "query_types": list(QUERY_TYPES), "acc": acc, "us_per_frame": cost,
            "n_needles": len(stream.needles), "n_events": int(len(np.unique(stream.labels))),
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------------------
# Part 2: persona consistency
# ----------------------------------------------------------------------------------------------------------------

# attribute -> (values, positive templates, negative templates); the last template of each list is held out
# from the learned scorer's training data. Attributes are functional: a persona has one value per attribute.
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "pet": (("dog", "cat", "parrot", "rabbit", "hamster"),
            ("i have a {v} .", "my {v} is sleeping next to me .", "i just fed my {v} ."),
            ("i do not have a {v} .", "i never owned a {v} .")),
    "job": (("teacher", "nurse", "chef", "pilot", "farmer"),
            ("i work as a {v} .", "being a {v} keeps me busy .", "i am a {v} by trade ."),
            ("i am not a {v} .", "i never worked as a {v} .")),
    "city": (("paris", "tokyo", "lagos", "lima", "oslo"),
             ("i live in {v} .", "{v} is my home .", "i moved to {v} years ago ."),
             ("i do not live in {v} .", "i have never lived in {v} .")),
    "hobby": (("chess", "surfing", "painting", "hiking", "baking"),
              ("i love {v} .", "my weekends are all about {v} .", "{v} is how i relax ."),
              ("i hate {v} .", "i never tried {v} .")),
    "drink": (("coffee", "tea", "juice", "soda", "milk"),
              ("i drink {v} every morning .", "{v} is my favorite drink .", "nothing beats a cup of {v} ."),
              ("i never drink {v} .", "i can not stand {v} .")),
    "instrument": (("piano", "guitar", "violin", "drums", "flute"),
                   ("i play the {v} .", "i practice {v} every day .", "my {v} lessons start at six ."),
                   ("i do not play the {v} .", "i never learned the {v} .")),
    "color": (("red", "blue", "green", "yellow", "purple"),
              ("my favorite color is {v} .", "i paint everything {v} .", "{v} suits me best ."),
              ("i dislike {v} .", "i never wear {v} .")),
    "sport": (("soccer", "tennis", "rugby", "cricket", "golf"),
              ("i play {v} on sundays .", "{v} is my sport .", "i coach a {v} team ."),
              ("i do not play {v} .", "i gave up {v} for good .")),
}
CHITCHAT = ("how was your day ?", "that sounds fun !", "tell me more about it .", "i see , what happened next ?")
NEGATION_CUES = frozenset({"not", "never", "hate", "dislike", "stand", "gave"})
_VALUE_TO_ATTR = {v: a for a, (vals, _, _) in ATTRIBUTES.items() for v in vals}


@dataclass(frozen=True)
class Persona:
    """facts: ((attribute, value), …); texts: one sentence per fact."""

    facts: tuple[tuple[str, str], ...]
    texts: tuple[str, ...]


def make_persona(n_facts: int, rng: np.random.Generator) -> Persona:
    """A persona of ``n_facts`` facts on distinct attributes, each stated with the first positive template."""
    n_facts = _check_int("n_facts", n_facts, 0)
    if n_facts > len(ATTRIBUTES):
        raise ValueError(f"n_facts must be <= {len(ATTRIBUTES)}, got {n_facts}")
    attrs = list(rng.permutation(list(ATTRIBUTES))[:n_facts])
    facts = tuple((str(a), str(rng.choice(ATTRIBUTES[a][0]))) for a in attrs)
    return Persona(facts, tuple(ATTRIBUTES[a][1][0].format(v=v) for a, v in facts))


def consistency_label(facts: Sequence[tuple[str, str]], attr: str | None, value: str | None, positive: bool) -> int:
    """Ground truth of a response (attr, value, polarity) against facts: +1 entailed, −1 contradicted, 0 neutral."""
    known = dict(facts)
    if attr is None or attr not in known:
        return 0
    same = known[attr] == value
    if positive:
        return 1 if same else -1
    return -1 if same else 0


def _render(attr: str | None, value: str | None, positive: bool, rng: np.random.Generator, held_out: bool | None):
    if attr is None:
        return str(rng.choice(CHITCHAT))
    temps = ATTRIBUTES[attr][1] if positive else ATTRIBUTES[attr][2]
    if held_out is None:
        pool = temps
    else:
        pool = temps[-1:] if held_out else temps[:-1]
    return str(rng.choice(pool)).format(v=value)


def make_candidates(persona: Persona, n_candidates: int, rng: np.random.Generator, held_out: bool | None = None):
    """Candidates about one topic attribute (from the persona w.p. 0.8): a mix of consistent, contradicting and
    neutral templated responses. Returns list of (text, label) with label ∈ {+1, 0, −1} (ground truth)."""
    n_candidates = _check_int("n_candidates", n_candidates, 1)
    own = [a for a, _ in persona.facts]
    other = [a for a in ATTRIBUTES if a not in own]
    attr = str(rng.choice(own)) if own and (rng.random() < 0.8 or not other) else str(rng.choice(other))
    out = []
    for _ in range(n_candidates):
        kind = rng.integers(4)
        if kind == 3:
            a, v, pos = None, None, True
        else:
            a = attr
            v = str(rng.choice(ATTRIBUTES[a][0]))
            pos = bool(rng.random() < 0.6)
        out.append((_render(a, v, pos, rng, held_out), consistency_label(persona.facts, a, v, pos)))
    return out


def nli_pairs(n: int, rng: np.random.Generator, held_out: bool = False) -> list[tuple[str, str, int]]:
    """``n`` labelled (fact text, response text, label) pairs; label ∈ {+1 entail, 0 neutral, −1 contradict}.
    Roughly balanced; held_out=True uses only the held-out templates (for testing generalisation)."""
    n = _check_int("n", n, 1)
    out = []
    attrs = list(ATTRIBUTES)
    for _ in range(n):
        a = str(rng.choice(attrs))
        v = str(rng.choice(ATTRIBUTES[a][0]))
        fact = ATTRIBUTES[a][1][0].format(v=v)
        kind = rng.integers(5)
        if kind == 0:                                    # entail: same value, positive
            ra, rv, pos = a, v, True
        elif kind == 1:                                  # contradict: other value, positive
            ra, rv, pos = a, str(rng.choice([x for x in ATTRIBUTES[a][0] if x != v])), True
        elif kind == 2:                                  # contradict: same value, negated
            ra, rv, pos = a, v, False
        elif kind == 3:                                  # neutral: other value negated, or another attribute
            ra, rv, pos = a, str(rng.choice([x for x in ATTRIBUTES[a][0] if x != v])), False
        else:
            ra = str(rng.choice([x for x in attrs if x != a]))
            rv, pos = str(rng.choice(ATTRIBUTES[ra][0])), bool(rng.random() < 0.5)
        out.append((fact, _render(ra, rv, pos, rng, held_out), consistency_label([(a, v)], ra, rv, pos)))
    return out


class RuleNLI:
    """Rule-based NLI over structured slots: parse (attribute, value, polarity) from a sentence by the value
    lexicon and the negation cues, then apply ``consistency_label``. ``probs`` returns one-hot (entail, neutral,
    contradict) rows."""

    @staticmethod
    def parse(text: str) -> tuple[str | None, str | None, bool]:
        words = text.lower().split()
        values = [w for w in words if w in _VALUE_TO_ATTR]
        if not values:
            return None, None, True
        return _VALUE_TO_ATTR[values[0]], values[0], not any(w in NEGATION_CUES for w in words)

    def pair_probs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(fact, response) pairs → (len(pairs), 3) one-hot rows."""
        return np.concatenate([self.probs([f], r) for f, r in pairs]) if pairs else np.zeros((0, 3))

    def probs(self, facts: Sequence[str], response: str) -> np.ndarray:
        """facts: M sentences → (M, 3) probabilities of (entail, neutral, contradict)."""
        a, v, pos = self.parse(response)
        out = np.zeros((len(facts), 3))
        for i, f in enumerate(facts):
            fa, fv, fpos = self.parse(f)
            lab = consistency_label([(fa, fv)] if fa and fpos else [], a, v, pos)
            out[i, 1 - lab] = 1.0
        return out


def _features(fact: str, response: str, n_hash: int) -> list[int]:
    fw, rw = fact.lower().split(), response.lower().split()
    keys = [f"{a}|{b}" for a in fw for b in rw]
    keys += [f"{a}|{b}|{c}" for a in fw for i, b in enumerate(rw) for c in rw[i + 1:]]
    keys += [f"r|{b}" for b in rw]
    return [zlib.crc32(k.encode()) % n_hash for k in keys]


class LearnedNLI:
    """Multinomial logistic regression over hashed cross features of (fact, response): word pairs (f, r),
    triples (f, r_i, r_j) and response unigrams, summed in an EmbeddingBag of ``n_hash`` rows × 3 classes."""

    def __init__(self, n_hash: int = 2**14, seed: int = 0):
        self.n_hash = _check_int("n_hash", n_hash, 16)
        gen = torch.Generator().manual_seed(seed)
        self.bag = torch.nn.EmbeddingBag(self.n_hash, 3, mode="sum")
        with torch.no_grad():
            self.bag.weight.copy_(0.01 * torch.randn(self.n_hash, 3, generator=gen))
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def _batch(self, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [_features(f, r, self.n_hash) for f, r in pairs]
        offsets = torch.tensor([0] + [len(x) for x in feats[:-1]]).cumsum(0)
        return torch.tensor([i for x in feats for i in x]), offsets

    def fit(self, data: Sequence[tuple[str, str, int]], epochs: int = 100, lr: float = 0.1, l2: float = 1e-4):
        """Full-batch Adam on cross-entropy; data: (fact, response, label ∈ {+1, 0, −1})."""
        if not data:
            raise ValueError("data must hold at least one labelled pair")
        idx, off = self._batch([(f, r) for f, r, _ in data])
        y = torch.tensor([1 - lab for _, _, lab in data])
        opt = torch.optim.Adam([self.bag.weight, self.bias], lr=lr)
        for _ in range(_check_int("epochs", epochs, 1)):
            opt.zero_grad()
            logits = self.bag(idx, off) + self.bias
            loss = torch.nn.functional.cross_entropy(logits, y) + l2 * self.bag.weight.pow(2).sum()
            loss.backward()
            opt.step()
        return self

    def probs(self, facts: Sequence[str], response: str) -> np.ndarray:
        """facts: M sentences → (M, 3) probabilities of (entail, neutral, contradict)."""
        return self.pair_probs([(f, response) for f in facts])

    def pair_probs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(fact, response) pairs → (len(pairs), 3) probabilities, in one batch."""
        if not pairs:
            return np.zeros((0, 3))
        idx, off = self._batch(pairs)
        with torch.no_grad():
            return torch.softmax(self.bag(idx, off) + self.bias, dim=1).numpy()


def select_response(candidates: Sequence[str], memory: Sequence[str], checker, base_scores: np.ndarray) -> int:
    """Index of the chosen candidate: argmax of s(r) = max_m P(entail) − max_m P(contradict) over the memory
    facts, ties (and an empty memory / no checker) broken by the generator's ``base_scores``."""
    base = np.asarray(base_scores, dtype=float)
    if len(base) != len(candidates) or not len(candidates):
        raise ValueError(f"base_scores must have one score per candidate ({len(candidates)}), got {len(base)}")
    if checker is None or not memory:
        return int(np.argmax(base))
    return _select(np.stack([checker.probs(list(memory), c) for c in candidates]), base)


def _select(probs: np.ndarray, base: np.ndarray) -> int:
    """probs: (n_candidates, M, 3) → argmax of max_m P(entail) − max_m P(contradict), ties by ``base``."""
    if probs.shape[1] == 0:
        return int(np.argmax(base))
    s = probs[:, :, 0].max(1) - probs[:, :, 2].max(1)
    return int(np.argmax(s + 1e-3 * (base - base.min()) / (np.ptp(base) + 1e-12)))


def persona_experiment(
    seed: int = 0,
    n_facts: int = 6,
    memory_sizes: Sequence[int] = (0, 1, 2, 4, 6),
    n_dialogues: int = 200,
    n_candidates: int = 6,
    n_train: int = 2000,
) -> dict:
    """Contradiction rate and consistency score (mean label of the selected response, in [−1, 1]) of a persona
    agent whose memory holds the first m of its ``n_facts`` facts, for each m in ``memory_sizes`` and each
    checker ("rule", "learned") and phrasing ("seen": candidates use the learned scorer's training templates,
    "unseen": only its held-out templates); keys "checker/phrasing"; m = 0 is "no memory check". Also the NLI
    accuracy of both checkers on single (fact, response) pairs with seen / held-out templates."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    n_facts = _check_int("n_facts", n_facts, 1)
    for m in memory_sizes:
        if not 0 <= m <= n_facts:
            raise ValueError(f"memory_sizes must lie in 0..n_facts={n_facts}, got {m}")
    n_dialogues = _check_int("n_dialogues", n_dialogues, 1)
    rng = np.random.default_rng(seed)
    learned = LearnedNLI(seed=seed).fit(nli_pairs(n_train, rng, held_out=False))
    test = nli_pairs(500, np.random.default_rng(seed + 10_000), held_out=True)
    seen = nli_pairs(500, np.random.default_rng(seed + 20_000), held_out=False)
    rule = RuleNLI()

    def nli_accuracy(checker, data) -> float:
        pred = np.argmax(checker.pair_probs([(f, r) for f, r, _ in data]), axis=1)
        return float(np.mean(pred == 1 - np.array([lab for _, _, lab in data])))

    nli_acc, seen_acc, rule_acc = nli_accuracy(learned, test), nli_accuracy(learned, seen), nli_accuracy(rule, test)
    results: dict = {"contradiction": {}, "consistency": {}, "oracle_consistency": {}}
    for phrasing, held_out in (("seen", False), ("unseen", True)):
        drng = np.random.default_rng(seed + 1)
        dialogues = []
        for _ in range(n_dialogues):
            persona = make_persona(n_facts, drng)
            cands = make_candidates(persona, n_candidates, drng, held_out=held_out)
            dialogues.append((persona, cands, drng.normal(size=n_candidates)))
        results["oracle_consistency"][phrasing] = float(np.mean([max(lab for _, lab in c) for _, c, _ in dialogues]))
        for name, checker in (("rule", rule), ("learned", learned)):
            # (n_candidates, n_facts, 3) per dialogue, computed once; memory size m keeps the first m facts
            pairs = [(f, c) for persona, cands, _ in dialogues for c, _ in cands for f in persona.texts]
            flat = checker.pair_probs(pairs).reshape(n_dialogues, n_candidates, n_facts, 3)
            probs = list(flat)
            contra, cons = [], []
            for m in memory_sizes:
                labels = np.array([cands[_select(p[:, :m], base)][1] for p, (_, cands, base) in zip(probs, dialogues)])
                contra.append(float(np.mean(labels == -1)))
                cons.append(float(np.mean(labels)))
            results["contradiction"][f"{name}/{phrasing}"] = contra
            results["consistency"][f"{name}/{phrasing}"] = cons
    return {"seed": seed, "n_facts": n_facts, "memory_sizes": list(memory_sizes), **results,
            "learned_heldout_acc": nli_acc, "learned_seen_acc": seen_acc, "rule_heldout_acc": rule_acc,
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------------------
# Full run
# ----------------------------------------------------------------------------------------------------------------

FAST = {"stream": {"n_frames": 2000, "budgets": (32, 64, 128), "n_queries": 100},
        "persona": {"n_dialogues": 150, "n_train": 1500}}
FULL = {"stream": {"n_frames": 8000, "budgets": (16, 32, 64, 128, 256), "n_queries": 200},
        "persona": {"n_dialogues": 500, "n_train": 3000}}
SEEDS = (0, 1, 2)


def load(path: str | Path | None = None) -> dict:
    """The committed full run (``labkit/assets/streaming.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.episodic.streaming", path, what="results")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Chapter 5 streaming memory and persona consistency, full run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stream = [streaming_experiment(seed=s, **FULL["stream"]) for s in args.seeds]
    persona = [persona_experiment(seed=s, **FULL["persona"]) for s in args.seeds]
    args.out.write_text(json.dumps({"settings": FULL, "stream": stream, "persona": persona}))
    for r in stream:
        print("stream seed", r["seed"], f"{r['seconds']:.1f}s")
    for r in persona:
        print("persona seed", r["seed"], r["contradiction"], f"{r['seconds']:.1f}s")


if __name__ == "__main__":
    main()
