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
    m.write((2, 0), 3, 5)  # evicts the stalest place: (0, 0), last seen at t=1
    assert len(m.memories()) == 2 and (0, 0) not in m.slots


def test_bfs_optimal():
    w = E.World(size=10, seed=1)
    d = E.bfs_dist(w.walls, (0, 0))
    for goal in list(d)[::7]:
        path = E.bfs(w.walls, (0, 0), goal)
        assert len(path) - 1 == d[goal] and path[-1] == goal
        assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(path, path[1:]))


def test_deterministic_and_place_beats_fifo():
    r1, r2 = E.run_capacity((32,), (0, 1), 400), E.run_capacity((32,), (0, 1), 400)
    assert r1 == r2 or all(np.allclose([a[k] for k in ("where", "goback")], [b[k] for k in ("where", "goback")])
                           for a, b in zip(r1, r2))
    big = E.run_capacity((10**4,), (0,), 300)
    assert big[0]["where"] == big[1]["where"] == 1.0  # unbounded memories agree with the log


def test_one_shot_fast():
    r = E.one_shot_naming(gaps=(0, 8), n_trials=20)
    assert min(r["fast"]) >= 0.9


@pytest.mark.parametrize("call,name", [(lambda: E.FIFOMemory(0), "capacity"), (lambda: E.World(size=2), "size"),
                                       (lambda: E.World(wall_frac=0.9), "wall_frac")])
def test_bad_args(call, name):
    with pytest.raises(ValueError, match=name):
        call()
