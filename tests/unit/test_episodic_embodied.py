import numpy as np
import pytest

from labkit.episodic import embodied as E


def test_fifo_capacity_and_eviction():
    m = E.FIFOMemory(3)
    for t in range(5):
        m.write((t, 0), t, t)
    assert [x[1] for x in m.memories()] == [2, 3, 4]


def test_place_one_slot_latest_and_capacity():
    m = E.PlaceMemory(2)
    m.write((0, 0), 0, 1)
    m.write((0, 0), 1, 2)
    assert m.memories() == [((0, 0), 1, 2)] and m.slots[(0, 0)][2] == 1
    m.write((1, 0), 2, -1)
    m.write((2, 0), 3, 5)  # evicts the place visited longest ago: (0, 0), last seen at t=1
    assert len(m.memories()) == 2 and (0, 0) not in m.slots


def test_hybrid_splits_capacity():
    m = E.HybridMemory(8)
    assert m.fifo.capacity + m.place.capacity == 8
    for t in range(20):
        m.write((t % 3, 0), t, -1)
    assert len(m.memories()) == 2 + 3


def test_bfs_optimal_and_distance_matrix():
    w = E.World(size=10, seed=1)
    d = E.bfs_dist(w.walls, (0, 0))
    D = w.distances()
    for goal in list(d)[::7]:
        path = E.bfs(w.walls, (0, 0), goal)
        assert len(path) - 1 == d[goal] == D[w.free.index((0, 0)), w.free.index(goal)] and path[-1] == goal
        assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:]))


def test_world_reachable_and_drift_is_local():
    for s in range(20):
        assert len(E.World(seed=10_000 + s).free) >= 72
    w = E.World(size=16, n_objects=5, seed=0, drift=2, move_every=1)
    for t in range(1, 50):
        before = w.obj_pos.copy()
        w.step_objects(t)
        assert np.abs(w.obj_pos - before).max() <= 2


def test_capacity_rows_deterministic_and_oracle_ceiling():
    r1, r2 = E.run_capacity((32,), (0, 1), 400), E.run_capacity((32,), (0, 1), 400)
    assert r1 == r2
    oracle = [r for r in r1 if r["memory"] == "oracle"]
    assert all(o["what_at"] == 1.0 and o["recent"] == 1.0 for o in oracle)
    place = np.mean([r["what_at"] for r in r1 if r["memory"] == "place"])
    fifo = np.mean([r["what_at"] for r in r1 if r["memory"] == "fifo"])
    assert place > fifo  # place-centric memory wins the place-centric task at equal capacity


def test_allocator_picks_fifo_for_recent_and_place_for_what_at():
    assert E.adaptive_allocator("recent", capacity=32, rounds=12, test_seeds=(5,))["chosen"] == "fifo"
    assert E.adaptive_allocator("what_at", capacity=32, rounds=12, test_seeds=(5,))["chosen"] == "place"


def test_navigation_memory_helps():
    rows = E.run_navigation(capacities=(24,), seeds=(0,), n_steps=400, size=12, n_objects=8, budget=60,
                            regions=(6,))
    tc = {r["memory"]: r["tc"] for r in rows}
    assert set(tc) == {"none", "fifo", "sparse", "sparse + 6×6 regions"}
    assert tc["sparse"] >= tc["none"] and all(0 <= r["spl"] <= r["tc"] for r in rows)


def test_sparse_ltm_keeps_one_place_per_object():
    m = E._SparseLTM(7, region=4, size=8)
    m.write((0, 0), 0, 1)
    m.write((5, 5), 1, 1)  # object 1 moved
    assert m.lookup(1) == ((5, 5), (1, 1)) and len(m.cells) == 1
    m.write((5, 5), 2, -1)  # seen gone
    assert m.lookup(1) == (None, None)


def test_fast_slow():
    r = E.fast_slow(n_trials=40, exposures=(1, 32), n_new=(1, 2), pretrain_steps=1000)
    assert r["fast"] >= 0.9 and r["slow_by_exposure"][0] < r["slow_by_exposure"][1]
    assert min(r["task"]["fast + slow"]) >= 0.8 and max(r["task"]["slow only"]) < 0.6
    g = E.fast_generalization((0.0, 3.0), n_trials=100)
    assert g[0] == 1.0 and g[1] < 0.8


@pytest.mark.parametrize("call,name", [(lambda: E.FIFOMemory(0), "capacity"), (lambda: E.World(size=2), "size"),
                                       (lambda: E.World(wall_frac=0.9), "wall_frac"),
                                       (lambda: E.World(drift=-1), "drift"),
                                       (lambda: E.adaptive_allocator("dance"), "task"),
                                       (lambda: E._nav_memory("lru", 8, 12, 4), "name")])
def test_bad_args(call, name):
    with pytest.raises(ValueError, match=name):
        call()
