r"""Embodied episodic memory in a grid world: place-centric vs temporal memory at equal capacity with an adaptive
allocator (Spatially-Aware Transformer), a hierarchical sparse memory for navigation (Mem4Nav), and one-shot
naming by a fast-binding memory next to slow weights (Grounded Language Learning Fast and Slow).

**World.** An ``size × size`` grid with walls on a seeded fraction of cells (only the part reachable from (0, 0)
is used) and ``n_objects`` objects; every ``move_every`` steps one object jumps to a random free cell. The agent
random-walks; at step t it observes the object on its own cell (``o_t``, or -1) and writes ``(p_t, t, o_t)`` to its
memory. The map (walls) is known; only the objects must be remembered.

**Part A (SAT).** Memories of capacity C entries: ``FIFOMemory`` (the last C entries: temporal order only),
``PlaceMemory`` (one slot per place with its latest entry; the place visited longest ago is evicted: place-centric)
and ``HybridMemory`` (a FIFO of C/4 plus a place memory of 3C/4). Queries at the end of a walk (``ask``):
*where is X now* (the remembered place of X's latest sighting equals X's current cell), *what is at P* (the
latest observation at a visited place P), *what did you see k steps ago* (k uniform in 1..``recent``). The
``adaptive_allocator`` is a UCB1 bandit that picks a memory strategy per task from rewards on training walks
(a one-step stand-in for SAT's RL-trained Adaptive Memory Allocator).

**Part B (Mem4Nav).** Navigation after a walk: "go to X" from the agent's cell with a step budget. The agent asks
its memory where X is, walks the shortest path there, and on a miss searches (``nearest unvisited cell first``)
the remembered region, then the whole map. Memories of C entries: dense FIFO (an end-to-end agent's context
window), a sparse place memory that keeps only cells where an object was seen (the octree's occupied leaves)
and the same plus a coarse region graph (``region × region`` blocks, one entry per block holding the objects last
seen in it: the semantic topology level). Metrics: task completion (reached X within the budget) and SPL.

**Part C (fast and slow).** Objects are feature vectors ``x = μ_c + σ ε`` (category prototype μ_c, exemplar
noise σ). *Slow*: a softmax classifier over names trained across many episodes on known categories; a new word
gets a new row, trained by SGD on the single introduction. *Fast*: a key-value memory ``word → x`` written once.
Instructions "put the <new word> on the <known word>" need both.
"""
from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["World", "FIFOMemory", "PlaceMemory", "HybridMemory", "MEMORIES", "TASKS", "bfs", "bfs_dist",
           "explore", "ask", "run_capacity", "adaptive_allocator", "NAV_MEMORIES", "navigate_episodes",
           "run_navigation", "fast_slow", "fast_generalization"]


def _pos_int(name: str, v: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------------------------------------------
# World
# ----------------------------------------------------------------------------------------------------------------


class World:
    """Grid world; ``walls`` (H, W) bool, ``free`` list of reachable cells, ``obj_pos`` (n_objects, 2) int."""

    def __init__(self, size: int = 12, n_objects: int = 8, wall_frac: float = 0.1, move_every: int = 25,
                 seed: int = 0, drift: int = 0):
        self.size = _pos_int("size", size)
        if size < 3:
            raise ValueError(f"size must be >= 3, got {size}")
        if not 0 <= wall_frac < 0.5:
            raise ValueError(f"wall_frac must be in [0, 0.5), got {wall_frac}")
        self.n_objects, self.move_every = _pos_int("n_objects", n_objects), _pos_int("move_every", move_every)
        if not isinstance(drift, (int, np.integer)) or drift < 0:
            raise ValueError(f"drift must be an int >= 0, got {drift!r}")
        self.drift = int(drift)
        self.g = np.random.default_rng([seed, 21])
        for _ in range(100):  # redraw until (0, 0) reaches at least half of the grid
            self.walls = self.g.random((size, size)) < wall_frac
            self.walls[0, 0] = False
            reach = bfs_dist(self.walls, (0, 0))
            if len(reach) >= size * size / 2:
                break
        self.free = sorted(reach)
        if len(self.free) < n_objects + 1:
            raise ValueError(f"n_objects must be < {len(self.free)} free cells, got {n_objects}")
        idx = self.g.choice(len(self.free), n_objects, replace=False)
        self.obj_pos = np.array([self.free[i] for i in idx])
        self._dist: np.ndarray | None = None

    def object_at(self, p: tuple[int, int]) -> int:
        hit = np.where((self.obj_pos == np.asarray(p)).all(1))[0]
        return int(hit[0]) if len(hit) else -1

    def step_objects(self, t: int) -> None:
        if t > 0 and t % self.move_every == 0:
            k = int(self.g.integers(self.n_objects))
            if self.drift:  # a local move: to a free cell at most ``drift`` steps along the axes
                y, x = self.obj_pos[k]
                near = [c for c in self.free if abs(c[0] - y) <= self.drift and abs(c[1] - x) <= self.drift]
                self.obj_pos[k] = near[int(self.g.integers(len(near)))]
            else:
                self.obj_pos[k] = self.free[int(self.g.integers(len(self.free)))]

    def neighbours(self, p: tuple[int, int]) -> list[tuple[int, int]]:
        return _nbrs(self.walls, p)

    def distances(self) -> np.ndarray:
        """All-pairs shortest path lengths between ``free`` cells, (F, F) int (computed once)."""
        if self._dist is None:
            index = {c: i for i, c in enumerate(self.free)}
            d = np.zeros((len(self.free), len(self.free)), dtype=np.int32)
            for i, c in enumerate(self.free):
                for q, v in bfs_dist(self.walls, c).items():
                    d[i, index[q]] = v
            self._dist = d
        return self._dist


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


# ----------------------------------------------------------------------------------------------------------------
# Part A: memories and queries
# ----------------------------------------------------------------------------------------------------------------


class FIFOMemory:
    """Temporal memory: the last ``capacity`` entries ``(place, t, obs)``."""

    def __init__(self, capacity: int):
        self.capacity = _pos_int("capacity", capacity)
        self.items: deque = deque(maxlen=self.capacity)

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        self.items.append((place, t, obs))

    def memories(self) -> list[tuple]:
        return list(self.items)


class PlaceMemory:
    """Place-centric memory: one slot per place holding its latest ``(t, obs)`` (and the previous distinct obs);
    when a new place arrives and the memory is full, the place visited longest ago is evicted."""

    def __init__(self, capacity: int):
        self.capacity = _pos_int("capacity", capacity)
        self.slots: dict = {}

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        old = self.slots.get(place)
        prev = old[2] if old and old[1] == obs else (old[1] if old else None)
        if old is None and len(self.slots) >= self.capacity:
            del self.slots[min(self.slots, key=lambda k: self.slots[k][0])]
        self.slots.pop(place, None)
        self.slots[place] = (t, obs, prev)

    def memories(self) -> list[tuple]:
        return [(p, v[0], v[1]) for p, v in self.slots.items()]


class HybridMemory:
    """A FIFO of ``capacity // 4`` entries next to a place memory of the rest (same total capacity)."""

    def __init__(self, capacity: int):
        self.capacity = _pos_int("capacity", capacity)
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 for HybridMemory, got {capacity}")
        self.fifo = FIFOMemory(max(1, capacity // 4))
        self.place = PlaceMemory(capacity - self.fifo.capacity)

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        self.fifo.write(place, t, obs)
        self.place.write(place, t, obs)

    def memories(self) -> list[tuple]:
        return self.fifo.memories() + self.place.memories()


MEMORIES = {"fifo": FIFOMemory, "place": PlaceMemory, "hybrid": HybridMemory}
TASKS = ("where", "what_at", "recent")


def explore(world: World, memory, n_steps: int, seed: int = 0) -> dict:
    """Random-walk ``n_steps`` from (0, 0), writing every observation to ``memory``; returns the full log
    [(place, t, obs)] and the agent's final cell."""
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


def _latest(mems: list[tuple], key) -> tuple | None:
    best = None
    for m in mems:
        if key(m) and (best is None or m[1] > best[1]):
            best = m
    return best


def ask(world: World, memory, truth: dict, n_queries: int = 40, recent: int = 64, seed: int = 0) -> dict:
    """Accuracy of the memory on the three tasks (see the module docstring), ``n_queries`` each."""
    g = np.random.default_rng([seed, 55])
    log, mems = truth["log"], memory.memories()
    now = len(log)
    # where is X now (all objects)
    where = []
    for x in range(world.n_objects):
        m = _latest(mems, lambda e, x=x: e[2] == x)
        where.append(float(m is not None and tuple(m[0]) == tuple(world.obj_pos[x])))
    # what is at P: latest observation of a visited place
    places = sorted({e[0] for e in log})
    last_obs = {e[0]: e[2] for e in log}
    what = []
    for i in g.integers(len(places), size=n_queries):
        p = places[int(i)]
        m = _latest(mems, lambda e, p=p: e[0] == p)
        what.append(float(m is not None and m[2] == last_obs[p]))
    # what did you see k steps ago
    rec = []
    by_t = {e[1]: e for e in mems}
    for k in g.integers(1, min(recent, now) + 1, size=n_queries):
        e = by_t.get(now - int(k))
        rec.append(float(e is not None and e[2] == log[now - int(k)][2]))
    return {"where": float(np.mean(where)), "what_at": float(np.mean(what)), "recent": float(np.mean(rec))}


def run_capacity(capacities=(8, 16, 32, 64, 128), seeds=(0, 1, 2), n_steps: int = 600, size: int = 12,
                 memories=tuple(MEMORIES), n_queries: int = 40) -> list[dict]:
    """Rows {memory, C, seed, where, what_at, recent}: every memory at every capacity on the same walks; an
    unbounded memory ("oracle", C = n_steps) gives each task's ceiling."""
    rows = []
    for s in seeds:
        for C in (*capacities, n_steps):
            for name in memories if C != n_steps else ("fifo",):
                w, mem = World(size=size, seed=s), MEMORIES[name](C)
                tr = explore(w, mem, n_steps, seed=s)
                rows.append(dict(memory=name if C != n_steps else "oracle", C=C, seed=s,
                                 **ask(w, mem, tr, n_queries, seed=s)))
    return rows


def adaptive_allocator(task: str, capacity: int = 32, rounds: int = 30, test_seeds=(1000, 1001, 1002),
                       n_steps: int = 600, strategies=tuple(MEMORIES), seed: int = 0) -> dict:
    """UCB1 over memory strategies for one task (or "mixed": the mean of the three). Each round draws a fresh
    training world/walk (seeded by ``seed`` and the round), runs the chosen strategy and gets its accuracy as
    the reward. Returns the choice per round, each strategy's mean reward and pull count, the strategy chosen at
    the end (highest mean) and the test accuracy of every strategy on ``test_seeds`` walks."""
    if task not in (*TASKS, "mixed"):
        raise ValueError(f"task must be one of {(*TASKS, 'mixed')}, got {task!r}")
    rounds = _pos_int("rounds", rounds)

    def reward(name: str, s: int) -> float:
        w, mem = World(seed=s), MEMORIES[name](capacity)
        r = ask(w, mem, explore(w, mem, n_steps, seed=s), seed=s)
        return float(np.mean([r[t] for t in TASKS])) if task == "mixed" else r[task]

    k = len(strategies)
    total, count, choices = np.zeros(k), np.zeros(k), []
    for r in range(rounds):
        if r < k:
            a = r
        else:
            a = int(np.argmax(total / count + np.sqrt(2 * np.log(r + 1) / count)))
        total[a] += reward(strategies[a], 10_000 * (seed + 1) + r)
        count[a] += 1
        choices.append(strategies[a])
    chosen = strategies[int(np.argmax(total / count))]
    test = {n: float(np.mean([reward(n, s) for s in test_seeds])) for n in strategies}
    return {"task": task, "choices": choices, "mean_reward": dict(zip(strategies, (total / count).tolist())),
            "pulls": dict(zip(strategies, count.astype(int).tolist())), "chosen": chosen, "test": test}


# ----------------------------------------------------------------------------------------------------------------
# Part B: navigation with a sparse, hierarchical memory (Mem4Nav-style)
# ----------------------------------------------------------------------------------------------------------------


class _SparseLTM:
    """Object sightings keyed by place: {place: (t, obj)}; a visit that sees nothing or another object updates or
    removes the entry; full: the oldest entry is evicted. With ``region`` > 0 it also keeps one node per
    ``region × region`` block, {block: {obj: t}} (the objects last seen in it), counted as one entry each."""

    def __init__(self, capacity: int, region: int = 0, size: int = 12):
        self.region = region
        self.n_nodes = ((size + region - 1) // region) ** 2 if region else 0
        self.capacity = capacity - self.n_nodes
        if self.capacity < 1:
            raise ValueError(f"capacity must exceed the {self.n_nodes} region nodes, got {capacity}")
        self.cells: dict = {}
        self.nodes: dict = {}

    def write(self, place: tuple[int, int], t: int, obs: int) -> None:
        if self.region:
            node = self.nodes.setdefault((place[0] // self.region, place[1] // self.region), {})
            for x in [x for x, (p, _) in node.items() if p == place and x != obs]:
                del node[x]
            if obs >= 0:
                for other in self.nodes.values():
                    other.pop(obs, None)
                node[obs] = (place, t)
        if obs < 0:
            self.cells.pop(place, None)
            return
        for p in [p for p, (_, o) in self.cells.items() if o == obs]:  # an object is in one place
            del self.cells[p]
        self.cells.pop(place, None)
        if len(self.cells) >= self.capacity:
            del self.cells[min(self.cells, key=lambda p: self.cells[p][0])]
        self.cells[place] = (t, obs)

    def lookup(self, x: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(cell, block): the remembered cell of x (or None) and the block where x was last seen (or None)."""
        cell = next((p for p, (_, o) in self.cells.items() if o == x), None)
        block = next((b for b, node in self.nodes.items() if x in node), None)
        return cell, block


class _FIFOLookup(FIFOMemory):
    def lookup(self, x: int):
        m = _latest(self.memories(), lambda e: e[2] == x)
        return (None if m is None else tuple(m[0])), None


class _NoMemory:
    def write(self, place, t, obs) -> None:
        pass

    def lookup(self, x: int):
        return None, None


NAV_MEMORIES = ("none", "fifo", "sparse", "sparse + regions")


def _nav_memory(name: str, capacity: int, size: int, region: int):
    if name == "none":
        return _NoMemory()
    if name == "fifo":
        return _FIFOLookup(capacity)
    if name == "sparse":
        return _SparseLTM(capacity)
    if name == "sparse + regions":
        return _SparseLTM(capacity, region=region, size=size)
    raise ValueError(f"name must be one of {NAV_MEMORIES}, got {name!r}")


def _search(world: World, start: int, cells: list[int], target: int, budget: int) -> tuple[bool, int, int]:
    """Visit ``cells`` (indices into world.free) nearest-unvisited-first from ``start`` until ``target`` is
    stepped on or ``budget`` steps are spent. Returns (found, steps, position)."""
    d = world.distances()
    left, pos, steps = list(cells), start, 0
    while left:
        j = int(np.argmin(d[pos, left]))
        nxt = left.pop(j)
        if steps + d[pos, nxt] > budget:
            return False, budget, pos
        steps += int(d[pos, nxt])
        pos = nxt
        if pos == target:
            return True, steps, pos
    return False, steps, pos


def navigate_episodes(world: World, memory, start: tuple[int, int], budget: int, region: int = 4) -> list[dict]:
    """"Go to X" for every object X (objects frozen), from ``start``: go to the remembered cell; on a miss (or
    without one) search the remembered block, then the whole map (coarse to fine). Rows {x, success, steps, optimal}."""
    index = {c: i for i, c in enumerate(world.free)}
    d = world.distances()
    rows = []
    for x in range(world.n_objects):
        s, tgt = index[start], index[tuple(world.obj_pos[x])]
        cell, block = memory.lookup(x)
        steps, pos, found = 0, s, False
        if cell is not None:
            steps, pos = int(d[s, index[cell]]), index[cell]
            found = pos == tgt and steps <= budget
        if not found and block is not None and steps < budget:
            cells = [index[c] for c in world.free if (c[0] // region, c[1] // region) == tuple(block)]
            found, used, pos = _search(world, pos, cells, tgt, budget - steps)
            steps += used
        if not found and steps < budget:
            found, used, pos = _search(world, pos, list(range(len(world.free))), tgt, budget - steps)
            steps += used
        rows.append(dict(x=x, success=bool(found), steps=min(steps, budget), optimal=int(d[s, tgt])))
    return rows


def run_navigation(capacities=(8, 12, 16, 24, 32, 48), seeds=(0, 1, 2), n_steps: int = 1000, size: int = 16,
                   budget: int = 100, regions=(4, 8), memories=NAV_MEMORIES, n_objects: int = 24,
                   drift: int = 3) -> list[dict]:
    """Rows {memory, C, seed, tc, spl}: task completion (share of "go to X" reached within ``budget`` steps) and
    SPL (success × optimal / max(steps, optimal)) after a ``n_steps`` walk, per memory and capacity; the
    hierarchical memory once per block size in ``regions`` (named "sparse + r×r regions"; skipped where its
    nodes would fill the capacity)."""
    rows = []
    for s in seeds:
        for C in capacities:
            variants = [(m, 0) for m in memories if m != "sparse + regions"]
            if "sparse + regions" in memories:
                variants += [("sparse + regions", r) for r in regions if C > ((size + r - 1) // r) ** 2]
            for name, r in variants:
                w = World(size=size, n_objects=n_objects, seed=s, drift=drift)
                mem = _nav_memory(name, C, size, r)
                tr = explore(w, mem, n_steps, seed=s)
                ep = navigate_episodes(w, mem, tr["agent"], budget, r or 1)
                tc = float(np.mean([e["success"] for e in ep]))
                spl = float(np.mean([e["success"] * e["optimal"] / max(e["steps"], e["optimal"], 1) for e in ep]))
                label = f"sparse + {r}×{r} regions" if r else name
                rows.append(dict(memory=label, C=C, seed=s, tc=tc, spl=spl))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Part C: fast binding and slow learning
# ----------------------------------------------------------------------------------------------------------------


def fast_generalization(noises=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), seed: int = 0, dim: int = 32, n_candidates: int = 4,
                        n_trials: int = 400) -> list[float]:
    """Fast binding alone: the new word's single exemplar is stored; at test another exemplar of the same
    category must be picked among ``n_candidates`` objects of other categories. Accuracy per exemplar noise σ."""
    g = np.random.default_rng([seed, 45])
    out = []
    for sigma in noises:
        ok = 0
        for _ in range(n_trials):
            mu = g.normal(size=(n_candidates, dim))
            mu /= np.linalg.norm(mu, axis=1, keepdims=True)
            stored = mu[0] + sigma * g.normal(size=dim) / np.sqrt(dim)
            view = mu + sigma * g.normal(size=(n_candidates, dim)) / np.sqrt(dim)
            ok += int(np.argmax(view @ stored) == 0)
        out.append(ok / n_trials)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def fast_slow(seed: int = 0, n_known: int = 20, dim: int = 32, noise: float = 0.6, exposures=(1, 2, 4, 8, 16, 32),
              lr: float = 0.1, n_new=(1, 2, 3), n_candidates: int = 4, n_trials: int = 200,
              pretrain_steps: int = 3000) -> dict:
    """One-shot word learning with a fast-binding memory and a slow classifier.

    Categories have unit prototypes μ_c ∈ R^dim; an exemplar is μ_c + noise · ε / sqrt(dim). The slow learner is a
    softmax classifier over known words, trained ``pretrain_steps`` SGD steps (lr ``lr``) on exemplars of the
    ``n_known`` known categories. In each trial, ``m`` new categories (m in ``n_new``) are named once ("this is a
    dax", one exemplar each); the test shows *another* exemplar of each among ``n_candidates`` objects of
    unnamed new categories, and a known target among ``n_candidates`` known objects.

    Returns accuracies:
    * "slow_by_exposure": the slow learner's new-word accuracy after k SGD steps on the introduction exemplars
      (a new row per word, initialised like the trained rows), for k in ``exposures``; "fast": the fast memory
      (one write) on the same trials; both with m = n_new[0];
    * "task": {condition: [success per m]} for "put the <new> on the <known>" (both picks right), conditions
      "fast only" (no slow weights: the known word is a guess), "slow only" (one SGD step for the new word),
      "fast + slow"."""
    g = np.random.default_rng([seed, 44])
    n_cat = n_known + 4 * (max(n_new) + n_candidates)
    protos = g.normal(size=(n_cat, dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)

    def exemplar(c) -> np.ndarray:
        c = np.atleast_1d(c)
        return protos[c] + noise * g.normal(size=(len(c), dim)) / np.sqrt(dim)

    W = 0.01 * g.normal(size=(n_known, dim))
    for _ in range(pretrain_steps):  # slow learning across many episodes
        c = g.integers(n_known, size=16)
        x = exemplar(c)
        p = _softmax(x @ W.T)
        p[np.arange(16), c] -= 1
        W -= lr * p.T @ x / 16
    row_scale = float(np.linalg.norm(W, axis=1).mean())

    def slow_new(Wk: np.ndarray, xs: np.ndarray, steps: int) -> np.ndarray:
        """Add one row per new word (random, like a trained row) and take ``steps`` SGD steps on xs."""
        Wn = np.concatenate([Wk, row_scale * g.normal(size=(len(xs), dim)) / np.sqrt(dim)])
        y = np.arange(len(Wk), len(Wn))
        for _ in range(steps):
            p = _softmax(xs @ Wn.T)
            p[np.arange(len(xs)), y] -= 1
            Wn = Wn - lr * p.T @ xs / len(xs)
        return Wn

    def trial(m: int):
        new = g.choice(np.arange(n_known, n_cat), size=m + n_candidates - 1, replace=False)
        named, others = new[:m], new[m:]
        intro = exemplar(named)                              # "this is a dax" (one exemplar each)
        target = int(g.integers(m))
        cand = np.concatenate([[named[target]], others[: n_candidates - 1]])
        view = exemplar(cand)                                # new exemplars at test
        known = g.choice(n_known, size=n_candidates, replace=False)
        kview = exemplar(known)                              # known objects; the instruction names known[0]
        return intro, target, view, known, kview

    def pick_slow(Wn: np.ndarray, view: np.ndarray, word: int) -> bool:
        return int(np.argmax(_softmax(view @ Wn.T)[:, word])) == 0

    m0 = n_new[0]
    slow_acc = {k: 0 for k in exposures}
    fast_acc = 0
    for _ in range(n_trials):
        intro, target, view, _, _ = trial(m0)
        fast_acc += int(np.argmax(view @ intro[target]) == 0)
        for k in exposures:
            slow_acc[k] += int(pick_slow(slow_new(W, intro, k), view, n_known + target))
    task: dict = {"fast only": [], "slow only": [], "fast + slow": []}
    for m in n_new:
        ok = {c: 0 for c in task}
        for _ in range(n_trials):
            intro, target, view, known, kview = trial(m)
            fast_new = int(np.argmax(view @ intro[target]) == 0)
            slow_known = int(np.argmax((kview @ W.T)[:, known[0]]) == 0)
            guess_known = int(g.integers(n_candidates) == 0)
            slow_new_ok = int(pick_slow(slow_new(W, intro, 1), view, n_known + target))
            ok["fast only"] += fast_new * guess_known
            ok["slow only"] += slow_new_ok * slow_known
            ok["fast + slow"] += fast_new * slow_known
        for c in task:
            task[c].append(ok[c] / n_trials)
    return {"seed": seed, "exposures": list(exposures), "slow_by_exposure": [slow_acc[k] / n_trials for k in exposures],
            "fast": fast_acc / n_trials, "n_new": list(n_new), "task": task, "chance": 1 / n_candidates}
