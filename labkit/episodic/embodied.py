"""Embodied episodic memory: place-centric vs FIFO temporal memory at equal capacity (Spatially-Aware
Transformer, Mem4Nav) and one-shot naming (Grounded Language Learning Fast and Slow).

World: an ``H×W`` open grid (walls on a seeded fraction of cells) with ``n_objects`` objects; every
``move_every`` steps one object jumps to a random free cell. The agent walks a seeded random walk and at each
step t stores a memory ``(place p_t, time t, observation o_t)`` where ``o_t`` is the object at ``p_t`` (or -1).
Memories of capacity ``C``:

* FIFO temporal: keeps the last ``C`` memories (evicts the oldest).
* place-centric: one slot per place, refreshed on revisit; when full, evicts the place with the oldest time.

Queries: *where X* (latest remembered place of object X, correct iff equal to X's true latest observed place),
*before* (which object was at place P before the latest observation at P), *go back* (BFS path from the agent to
the remembered place of X; success iff the path ends at X's current cell; length vs optimal).
One-shot naming: a fast-binding key-value memory ``name → feature`` vs a slow linear classifier trained for a few
SGD steps on the one example, queried after ``k`` distractor steps in which other (distractor) names are taught.
"""
from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["World", "FIFOMemory", "PlaceMemory", "bfs", "explore", "evaluate", "run_capacity", "one_shot_naming"]


def _pos_int(name: str, v: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


class World:
    """Grid world; ``walls`` (H, W) bool, ``obj_pos`` (n_objects, 2) int."""

    def __init__(self, size: int = 12, n_objects: int = 8, wall_frac: float = 0.1, move_every: int = 25, seed: int = 0):
        self.size = _pos_int("size", size)
        if size < 3:
            raise ValueError(f"size must be >= 3, got {size}")
        if not 0 <= wall_frac < 0.5:
            raise ValueError(f"wall_frac must be in [0, 0.5), got {wall_frac}")
        self.n_objects, self.move_every = _pos_int("n_objects", n_objects), _pos_int("move_every", move_every)
        self.g = np.random.default_rng([seed, 21])
        self.walls = self.g.random((size, size)) < wall_frac
        self.walls[0, 0] = False
        free = [tuple(c) for c in np.argwhere(~self.walls)]
        # keep the largest connected component reachable from (0, 0)
        reach = set(bfs_dist(self.walls, (0, 0)))
        self.free = [c for c in free if c in reach]
        if len(self.free) < n_objects + 1:
            raise ValueError(f"n_objects must be < {len(self.free)} free cells, got {n_objects}")
        idx = self.g.choice(len(self.free), n_objects, replace=False)
        self.obj_pos = np.array([self.free[i] for i in idx])

    def object_at(self, p: tuple[int, int]) -> int:
        hit = np.where((self.obj_pos == np.asarray(p)).all(1))[0]
        return int(hit[0]) if len(hit) else -1

    def step_objects(self, t: int) -> None:
        if t > 0 and t % self.move_every == 0:
            k = int(self.g.integers(self.n_objects))
            self.obj_pos[k] = self.free[int(self.g.integers(len(self.free)))]

    def neighbours(self, p: tuple[int, int]) -> list[tuple[int, int]]:
        return _nbrs(self.walls, p)


def _nbrs(walls: np.ndarray, p: tuple[int, int]) -> list[tuple[int, int]]:
    n = walls.shape[0]
    out = []
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        q = (p[0] + dy, p[1] + dx)
        if 0 <= q[0] < n and 0 <= q[1] < n and not walls[q]:
            out.append(q)
    return out


def bfs_dist(walls: np.ndarray, start: tuple[int, int]) -> dict:
    """Shortest path lengths from ``start`` to every reachable cell (4-neighbour grid)."""
    d = {start: 0}
    q = deque([start])
    while q:
        p = q.popleft()
        for r in _nbrs(walls, p):
            if r not in d:
                d[r] = d[p] + 1
                q.append(r)
    return d


def bfs(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]] | None:
    """A shortest path ``[start, ..., goal]`` or None if unreachable."""
    prev = {start: None}
    q = deque([start])
    while q:
        p = q.popleft()
        if p == goal:
            path = [p]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return path[::-1]
        for r in _nbrs(walls, p):
            if r not in prev:
                prev[r] = p
                q.append(r)
    return None


class FIFOMemory:
    """Last ``capacity`` memories ``(place, t, obs)``."""

    def __init__(self, capacity: int):
        self.capacity = _pos_int("capacity", capacity)
        self.items: deque = deque(maxlen=self.capacity)

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        self.items.append((place, t, obs))

    def memories(self) -> list[tuple]:
        return list(self.items)


class PlaceMemory:
    """One slot per place holding its latest (t, obs) and the previous distinct obs; evicts the stalest place."""

    def __init__(self, capacity: int):
        self.capacity = _pos_int("capacity", capacity)
        self.slots: dict = {}

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        old = self.slots.get(place)
        prev = old[2] if old and old[1] == obs else (old[1] if old else None)
        if old is None and len(self.slots) >= self.capacity:
            del self.slots[min(self.slots, key=lambda k: self.slots[k][0])]
        self.slots[place] = (t, obs, prev)

    def memories(self) -> list[tuple]:
        return [(p, v[0], v[1]) for p, v in self.slots.items()]


def _latest_place(mems: list[tuple], x: int):
    best = None
    for p, t, o in mems:
        if o == x and (best is None or t > best[1]):
            best = (p, t)
    return None if best is None else best[0]


def explore(world: World, memory, n_steps: int, seed: int = 0) -> dict:
    """Random-walk ``n_steps``; write every observation; return ground-truth logs (full, unbounded)."""
    n_steps = _pos_int("n_steps", n_steps)
    g = np.random.default_rng([seed, 33])
    p = (0, 0)
    log = []
    for t in range(n_steps):
        world.step_objects(t)
        o = world.object_at(p)
        memory.write(p, t, o)
        log.append((p, t, o))
        nb = world.neighbours(p)
        p = nb[int(g.integers(len(nb)))]
    return dict(log=log, agent=p)


def evaluate(world: World, memory, truth: dict) -> dict:
    """Accuracy on where-X, before-at-P, go-back-to-X (success rate and mean path/optimal ratio)."""
    log, mems = truth["log"], memory.memories()
    seen = sorted({o for _, _, o in log if o >= 0})
    where = [float(_latest_place(mems, x) == _latest_place(log, x)) for x in seen]
    # before: places whose observation history changed; truth = obs before the last change
    hist: dict = {}
    for p, _, o in log:
        h = hist.setdefault(p, [])
        if not h or h[-1] != o:
            h.append(o)
    before = []
    for p, h in hist.items():
        if len(h) >= 2:
            if isinstance(memory, PlaceMemory):
                v = memory.slots.get(p)
                ans = v[2] if v else None
            else:
                hs = []
                for q, _, o in mems:
                    if q == p and (not hs or hs[-1] != o):
                        hs.append(o)
                ans = hs[-2] if len(hs) >= 2 else None
            before.append(float(ans == h[-2]))
    goback, ratio = [], []
    for x in seen:
        tgt = _latest_place(mems, x)
        true_cell = tuple(world.obj_pos[x])
        ok = tgt is not None and tuple(tgt) == true_cell
        goback.append(float(ok))
        if ok:
            path = bfs(world.walls, truth["agent"], tgt)
            opt = bfs_dist(world.walls, truth["agent"])[true_cell]
            ratio.append((len(path) - 1) / max(opt, 1) if opt else 1.0)
    m = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return dict(where=m(where), before=m(before), goback=m(goback), path_ratio=m(ratio), n_before=len(before))


def run_capacity(capacities=(8, 16, 32, 64, 128), seeds=(0, 1, 2), n_steps: int = 600, size: int = 12) -> list[dict]:
    """Rows {memory, C, seed, where, before, goback, path_ratio} for FIFO vs place-centric at equal capacity."""
    rows = []
    for s in seeds:
        for C in capacities:
            for name, cls in (("fifo", FIFOMemory), ("place", PlaceMemory)):
                w, mem = World(size=size, seed=s), cls(C)
                tr = explore(w, mem, n_steps, seed=s)
                rows.append(dict(memory=name, C=C, seed=s, **evaluate(w, mem, tr)))
    return rows


def one_shot_naming(gaps=(0, 1, 4, 16, 64), n_trials: int = 50, dim: int = 32, slow_steps: int = 5,
                    lr: float = 0.5, noise: float = 0.3, seed: int = 0) -> dict:
    """Accuracy of naming the 'dax' among 4 candidate objects after ``gap`` distractor teaching steps.

    Fast: a dict name → feature (one write); recall = argmax cosine of the stored feature with candidates.
    Slow: a linear softmax classifier over names, ``slow_steps`` SGD steps per taught example (sequential, so
    later distractor names interfere). Candidates are noisy views (``noise``) of the object features."""
    if not 0 < lr:
        raise ValueError(f"lr must be > 0, got {lr}")
    g = np.random.default_rng([seed, 44])
    out = {"fast": [], "slow": []}
    for gap in gaps:
        fast_ok = slow_ok = 0
        for _ in range(n_trials):
            n_names = gap + 1
            feats = g.normal(size=(n_names + 3, dim))
            feats /= np.linalg.norm(feats, axis=1, keepdims=True)
            store = {}
            Wt = np.zeros((n_names, dim))
            for k in range(n_names):  # name 0 is 'dax', taught first, then gap distractors
                store[k] = feats[k]
                for _ in range(slow_steps):
                    z = Wt @ feats[k]
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    grad = np.outer(p - np.eye(n_names)[k], feats[k])
                    Wt -= lr * grad
            cand_idx = np.array([0, n_names, n_names + 1, n_names + 2])  # dax + 3 unnamed objects
            cands = feats[cand_idx] + noise * g.normal(size=(4, dim)) / np.sqrt(dim)
            fast_ok += int(np.argmax(cands @ store[0]) == 0)
            z = cands @ Wt.T  # (4, n_names)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            slow_ok += int(np.argmax(logp[:, 0]) == 0)
        out["fast"].append(fast_ok / n_trials)
        out["slow"].append(slow_ok / n_trials)
    return dict(gaps=list(gaps), **out)
