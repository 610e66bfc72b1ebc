r"""Checks of Lab 5 (labs/lab05_episodic_agents.ipynb): episodic agents — a memory that is written, linked, revised
and searched.

Each ``ex_5_k`` property-tests a student's answer against labkit's reference on random inputs and prints one line
on success, or raises ``AssertionError`` with a hint. The references: ``labkit.episodic.store.fts_query`` (5.1);
a minimal two-table versioned schema run against the student's SQL, with a trigger that aborts half-way (5.2);
the gold paths of ``labkit.data.worlds`` questions (5.3); ``labkit.kernels.ppr.reference`` (5.4, 5.9); HippoRAG's
node specificity s_i = 1/|P_i| written here (5.5); the A-MEM link rule written here (5.6);
``labkit.episodic.embodied.PlaceMemory`` (5.7); ``labkit.episodic.streaming.CompressiveMemory`` (5.8); and a
float64 full-matrix similarity top-k with the tie rule of ``labkit.kernels.sim_topk.reference`` (5.10).
Every check is deterministic (fixed seeds, derandomised hypothesis).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st

from labkit.check import answer_array as _array
from labkit.check import answer_tuple as _tuple
from labkit.check import call_answer as _call
from labkit.check import exercise, expect, expect_close, for_all
from labkit.check import is_njit as _is_njit

_SEEDS = st.integers(0, 2**16)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ 5.1 a safe FTS5 query

_HOSTILE = list('abc xyz"\'*^:()-+{}.,') + ["AND", "OR", "NOT", "NEAR", "NEAR(", "é", "😀", "_", "\x00", "; DROP"]
_WORDS = ["abc", "xyz", "and", "or", "near", "not", "é", "abc_xyz", "drop"]


@exercise("5.1", "safe_fts_query turns any text into an FTS5 query that never fails and matches like labkit's "
                 "fts_query")
def ex_5_1(safe_fts_query: Callable) -> None:
    from labkit.episodic.store import fts_query

    rng = random.Random(0)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(body)")
    db.executemany("INSERT INTO t(body) VALUES (?)",
                   [(" ".join(rng.choices(_WORDS, k=rng.randint(1, 5))),) for _ in range(40)])

    def hits(match) -> set[int]:
        return set() if match is None else {r[0] for r in db.execute("SELECT rowid FROM t WHERE t MATCH ?", (match,))}

    texts = ["abc", 'abc" OR "xyz', "NEAR(abc xyz)", "abc AND", "x' OR 1=1; --", "", "   ", "!!", '"', "*"]
    texts += ["".join(rng.choices(_HOSTILE, k=rng.randint(0, 12))) for _ in range(250)]
    for text in texts:
        what = f"safe_fts_query({text!r})"
        got = _call(what, safe_fts_query, text)
        expect(got is None or isinstance(got, str), f"{what} should return a str or None, got {type(got).__name__}.")
        want = fts_query(text)
        if want is None:
            expect(got is None, f"{what} returned {got!r}: a text without any word should give None "
                                                  "(nothing to search for).")
            continue
        expect(got is not None, f"{what} returned None, but the text has words {want!r}.")
        try:
            found = hits(got)
        except sqlite3.OperationalError as err:
            expect(False, f"{what} = {got!r} made FTS5 fail ({err}): quote every term, \"word\", so that operators, "
                          "quotes and * lose their meaning.")
        expected = hits(want)
        expect(found == expected, f"{what} = {got!r} matched rows {sorted(found)}, expected {sorted(expected)} "
                                  f"(reference {want!r}): every word (\\w+) becomes a quoted term "
                                  "\"word\", joined by OR (unquoted, AND / OR / NEAR / quotes act as operators).")


# ------------------------------------------------------------------------------ 5.2 versioned update with history

SCHEMA_5_2 = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE note_versions (note_id INTEGER NOT NULL REFERENCES notes(id), version INTEGER NOT NULL,
                            text TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (note_id, version));
"""


def _dump(conn: sqlite3.Connection) -> tuple:
    return (conn.execute("SELECT * FROM notes ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM note_versions ORDER BY note_id, version").fetchall())


@exercise("5.2", "update_with_history keeps every earlier text in note_versions, bumps the version, binds every "
                 "parameter and is atomic")
def ex_5_2(update_with_history: Callable) -> None:
    rng = random.Random(0)
    for _ in range(20):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(SCHEMA_5_2)
        n = rng.randint(1, 4)
        texts = {i: [f"note {i} v1 ' OR 1=1; --"] for i in range(1, n + 1)}
        conn.executemany("INSERT INTO notes (id, text) VALUES (?, ?)", [(i, t[0]) for i, t in texts.items()])
        for step in range(rng.randint(1, 7)):
            i = rng.randint(1, n)
            new = f"note {i} v{len(texts[i]) + 1} \"{step}\"); DROP TABLE notes; --"
            reason = rng.choice(["update", "conflict", "it's new"])
            what = f"update_with_history(conn, {i}, {new!r}, {reason!r})"
            v = _call(what, update_with_history, conn, i, new, reason)
            texts[i].append(new)
            expect(v == len(texts[i]), f"{what} returned {v!r}, expected the new version {len(texts[i])}.")
            expect(not conn.in_transaction, f"{what} left a transaction open: COMMIT at the end.")
        for i, seq in texts.items():
            cur = conn.execute("SELECT text, version FROM notes WHERE id = ?", (i,)).fetchone()
            old = [r[0] for r in conn.execute("SELECT text FROM note_versions WHERE note_id = ? ORDER BY version",
                                              (i,))]
            vers = [r[0] for r in conn.execute("SELECT version FROM note_versions WHERE note_id = ? ORDER BY version",
                                               (i,))]
            expect(cur == (seq[-1], len(seq)), f"note {i} is {cur}, expected {(seq[-1], len(seq))}: "
                                               "UPDATE notes SET text = ?, version = version + 1.")
            expect(old == seq[:-1], f"the history of note {i} is {old}, expected every earlier text {seq[:-1]}: "
                                    "copy the OLD row to note_versions before you overwrite it.")
            expect(vers == list(range(1, len(seq))), f"the history of note {i} has versions {vers}, expected "
                                                     f"{list(range(1, len(seq)))} (each old row keeps its version).")
        before = _dump(conn)
        try:
            _call("update_with_history(conn, unknown id)", update_with_history, conn, n + 7, "x", "update")
            raised = False
        except AssertionError as err:
            expect("KeyError" in str(err), f"update_with_history(conn, {n + 7}, ...) (an unknown id) should raise "
                                           f"KeyError: {err}")
            raised = True
        expect(raised, f"update_with_history(conn, {n + 7}, ...) (an unknown id) should raise KeyError.")
        expect(_dump(conn) == before and not conn.in_transaction,
               "an update of an unknown id changed the tables or left a transaction open.")
        conn.execute("CREATE TRIGGER boom BEFORE UPDATE ON notes BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        try:
            update_with_history(conn, 1, "never stored", "update")
        except sqlite3.DatabaseError:
            pass
        except Exception as err:  # noqa: BLE001 - any other error is reported with its type
            expect(False, f"update_with_history raised {type(err).__name__}: {err} when the UPDATE failed; let the "
                          "sqlite3 error through after ROLLBACK.")
        expect(_dump(conn) == before and not conn.in_transaction,
               "an UPDATE that failed half-way left a trace (a version row without its update, or an open "
               "transaction): wrap the copy and the update in one BEGIN ... COMMIT and ROLLBACK on error.")


# ------------------------------------------------------------------------------ 5.3 a question's gold chain


def _worlds():
    from labkit.data.worlds import make_world

    return [make_world(seed, n_people=40, n_places=10, n_orgs=10, n_events=5) for seed in range(3)]


@exercise("5.3", "follow walks a question's relations through the passages' triples (latest value wins) to the gold "
                 "answer and supporting passages")
def ex_5_3(follow: Callable) -> None:
    for seed, world in enumerate(_worlds()):
        for kind in ("1hop", "2hop", "3hop"):
            for q in world.questions(kind, 8, seed=seed):
                rels = [r for _, r, _ in q.path]
                what = f"follow(world, {q.entity!r}, {rels})  [{q.text}]"
                ans, pids = _tuple(what, _call(what, follow, world, q.entity, rels), ("answer", "passage_ids"))
                if ans != q.answer:
                    hint = "take, at each hop, the triple of the passage with the LARGEST t (the latest value wins)."
                    expect(False, f"{what} answered {ans!r}, expected {q.answer!r} ({world.entity(q.answer).name}): "
                                  f"{hint} Gold path: {list(q.path)}.")
                expect(list(pids) == list(q.support), f"{what} cited passages {list(pids)}, expected {list(q.support)}:"
                                                      " one passage per hop, the one whose triple you followed.")


# ------------------------------------------------------------------------------ 5.4 PPR by power iteration


def random_graph(rng: np.random.Generator, N: int, E: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random weighted CSR (indptr (N+1,), indices (E',), weights (E',)) whose last two nodes are dangling."""
    src, dst = rng.integers(0, N, E), rng.integers(0, N, E)
    src[: N // 5] = np.arange(N // 5)
    keep = rng.random(E) > 0.1
    src, dst = src[keep], dst[keep]
    src[src >= N - 2] = 0
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    indptr = np.zeros(N + 1, np.int64)
    indptr[1:] = np.cumsum(np.bincount(src, minlength=N))
    return indptr, dst.astype(np.int64), rng.uniform(0.1, 2.0, src.size)


def _transition(indptr, indices, weights):
    from labkit.kernels.ppr import ppr_transition

    return ppr_transition(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(weights))


def _ppr_ref(g, s: np.ndarray, alpha: float) -> np.ndarray:
    from labkit.kernels.ppr import reference

    return reference(g, torch.from_numpy(s)[None], alpha, 1e-13, 10_000)[0][0].numpy()


@exercise("5.4", "ppr_power computes Personalized PageRank (restart α, dangling mass back to s) equal to labkit's "
                 "reference")
def ex_5_4(ppr_power: Callable) -> None:
    def test(example):
        N, n_seeds, alpha, seed = example
        rng = _rng(seed)
        indptr, indices, w = random_graph(rng, N, 3 * N)
        s = np.zeros(N)
        s[rng.choice(N, min(N, n_seeds), replace=False)] = rng.uniform(0.5, 1.5, min(N, n_seeds))
        what = f"ppr_power(graph with {N} nodes, {len(indices)} edges, 2 dangling, s, alpha={alpha})"
        got = _array(what, _call(what, ppr_power, indptr.copy(), indices.copy(), w.copy(), s.copy(), alpha, 1e-10))
        g = _transition(indptr, indices, w)
        want = _ppr_ref(g, s, alpha)
        expect(got.shape == (N,), f"{what} has shape {got.shape}, expected ({N},).")
        if np.allclose(got, want, atol=1e-7):
            return
        if np.allclose(got, _ppr_ref(g, s, 1 - alpha), atol=1e-6):
            hint = "α is the RESTART probability: r = (1 − α)(P r + m s) + α s (networkx's damping d = 1 − α)."
        elif abs(got.sum() - 1) > 1e-6:
            hint = (f"the scores sum to {got.sum():.4f}, not 1: send the mass of the dangling nodes back to s "
                    "(m = Σ_dangling r) and normalise s.")
        else:
            hint = "P[v, u] = w_uv / W_u: normalise each node's OUT-weights (columns of P), not its in-weights."
        expect_close(what, got, want, atol=1e-7, hint=hint)

    for_all(st.tuples(st.integers(3, 40), st.integers(1, 3), st.sampled_from([0.15, 0.3, 0.5]), _SEEDS), test,
            max_examples=20)


# ------------------------------------------------------------------------------ 5.5 node specificity + passage scores


def hipporag_reference(M: np.ndarray, q: np.ndarray, ppr: Callable) -> tuple[np.ndarray, np.ndarray]:
    """HippoRAG's seeds and passage scores. M (n_passages, n_entities) 0/1 incidence, q (n_entities,) 0/1 query
    entities, ppr: s (n_entities,) -> r (n_entities,). s_i ∝ q_i / |P_i| with |P_i| = Σ_p M[p, i] (entities in no
    passage get 0), normalised to Σ s = 1 (all zeros if no query entity occurs); scores = M r."""
    count = M.sum(0)
    s = np.where(count > 0, q / np.maximum(count, 1), 0.0)
    if s.sum() > 0:
        s = s / s.sum()
    return s, M @ ppr(s)


@exercise("5.5", "hipporag_scores weights the query entities by node specificity 1/|P_i| and scores passages by "
                 "their entities' PPR mass, as HippoRAG does")
def ex_5_5(hipporag_scores: Callable) -> None:
    def test(example):
        n_pass, n_ent, seed = example
        rng = _rng(seed)
        M = (rng.random((n_pass, n_ent)) < 0.3).astype(float)
        M[:, 0] = 1.0  # entity 0 is a hub: it occurs in every passage
        if n_ent > 2:
            M[:, -1] = 0.0  # the last entity occurs in no passage
        q = np.zeros(n_ent)
        q[rng.choice(n_ent, min(n_ent, 3), replace=False)] = 1.0
        q[0] = 1.0
        A = rng.random((n_ent, n_ent))

        def ppr(s):  # a stand-in for PPR: any fixed linear map of the seeds
            return A @ np.asarray(s, dtype=float)

        what = f"hipporag_scores(M ({n_pass}, {n_ent}), q with {int(q.sum())} entities, ppr)"
        s, scores = _tuple(what, _call(what, hipporag_scores, M.copy(), q.copy(), ppr), ("s", "scores"))
        s, scores = _array(f"s of {what}", s), _array(f"scores of {what}", scores)
        s_ref, sc_ref = hipporag_reference(M, q, ppr)
        if not np.allclose(s, s_ref, atol=1e-10):
            if s_ref.sum() > 0 and s.sum() > 0 and np.allclose(s / s.sum(), s_ref, atol=1e-10):
                hint = "normalise the seeds to a probability vector, Σ s = 1."
            elif np.allclose(s, q / q.sum(), atol=1e-10) or np.allclose(s, q, atol=1e-10):
                hint = "weight each query entity by its node specificity s_i = 1/|P_i| (|P_i| = passages containing i)."
            else:
                hint = ("s_i ∝ q_i / |P_i| with |P_i| = Σ_p M[p, i] (a column sum); an entity in no passage gets 0 "
                        "(no division by zero).")
            expect_close(f"s of {what}", s, s_ref, atol=1e-10, hint=hint)
        expect_close(f"scores of {what}", scores, sc_ref, atol=1e-9,
                     hint="a passage's score is the PPR mass of its entities: scores = M @ ppr(s).")

    for_all(st.tuples(st.integers(1, 12), st.integers(2, 15), _SEEDS), test, max_examples=30)


# ------------------------------------------------------------------------------ 5.6 the A-MEM link rule


def amem_links_reference(ids: np.ndarray, E: np.ndarray, entities: list[set], i: int, k: int) -> list[int]:
    """A-MEM-style links of note at position i: the k other notes with the largest cosine (ties: lower position
    first) ∪ every other note sharing an entity with it, as sorted note ids."""
    S = E @ E[i]
    S[i] = -np.inf
    order = np.argsort(-S, kind="stable")
    top = {int(j) for j in order[: min(k, len(ids) - 1)]}
    shared = {j for j in range(len(ids)) if j != i and entities[i] & entities[j]}
    return sorted(int(ids[j]) for j in top | shared)


@exercise("5.6", "amem_links links a note to its top-k most similar notes and every note sharing an entity, by "
                 "explicit note id")
def ex_5_6(amem_links: Callable) -> None:
    def test(example):
        N, d, k, seed = example
        rng = _rng(seed)
        E = rng.standard_normal((N, d))
        E /= np.linalg.norm(E, axis=1, keepdims=True)
        ids = np.sort(rng.choice(10 * N + 100, N, replace=False)) + 1000  # note ids are not positions
        pool = ["ann", "bo", "paris", "acme", "expo", "rome"]
        entities = [set(rng.choice(pool, int(rng.integers(0, 3)), replace=False).tolist()) for _ in range(N)]
        i = int(rng.integers(N))
        what = f"amem_links(ids, E ({N}, {d}), entities, i={i}, k={k})"
        got = _call(what, amem_links, ids.copy(), E.copy(), [set(e) for e in entities], i, k)
        expect(got is not None, f"{what} returned None: did you forget `return`?")
        got = [int(x) for x in got]
        want = amem_links_reference(ids, E, entities, i, k)
        if got == want:
            return
        pos = set(range(N))
        if set(got) <= pos and not set(got) <= set(ids.tolist()):
            hint = "return note IDS (ids[j]), not positions j: links must survive a reordering of the store."
        elif int(ids[i]) in got:
            hint = "a note does not link to itself: exclude position i before taking the top k."
        elif got != sorted(set(got)):
            hint = "return the ids sorted ascending, without duplicates (a set union)."
        else:
            hint = ("links = top-k other notes by cosine (E @ E[i], ties to the lower position) ∪ every other note "
                    "sharing at least one entity.")
        expect(False, f"{what} = {got}, expected {want}: {hint}")

    for_all(st.tuples(st.integers(2, 25), st.integers(2, 8), st.integers(1, 5), _SEEDS), test, max_examples=40)


# ------------------------------------------------------------------------------ 5.7 place-centric memory


@exercise("5.7", "place_memory keeps one slot per place and evicts the stalest place, like labkit's PlaceMemory")
def ex_5_7(place_memory: Callable) -> None:
    from labkit.episodic.embodied import PlaceMemory

    def test(example):
        C, n_places, n_steps, seed = example
        rng = _rng(seed)
        events = [((int(rng.integers(n_places)), int(rng.integers(2))), t, int(rng.integers(-1, 4)))
                  for t in range(n_steps)]
        ref = PlaceMemory(C)
        for p, t, o in events:
            ref.write(p, t, o)
        want = {p: (t, o) for p, t, o in ref.memories()}
        what = f"place_memory(events ({n_steps} writes over {2 * n_places} places), capacity={C})"
        got = _call(what, place_memory, list(events), C)
        expect(isinstance(got, dict), f"{what} should return a dict place -> (t, obs), got {type(got).__name__}.")
        got = {p: tuple(v) for p, v in got.items()}
        expect(len(got) <= C, f"{what} holds {len(got)} places, more than the capacity {C}.")
        if got != want:
            if set(got) == set(want):
                hint = "a slot holds the LATEST (t, obs) seen at its place: overwrite on every visit."
            else:
                hint = ("when a NEW place arrives and memory is full, evict the place whose latest visit is the oldest "
                        "(smallest t), not the one stored first: a revisit refreshes a place.")
            expect(False, f"{what} kept {sorted(got.items())}, expected {sorted(want.items())}: {hint}")

    for_all(st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(0, 60), _SEEDS), test, max_examples=40)


# ------------------------------------------------------------------------------ 5.8 a compressive stream memory


def _stream(rng: np.random.Generator, T: int, d: int) -> np.ndarray:
    protos = rng.standard_normal((4, d))
    frames, e = [], int(rng.integers(4))
    for _ in range(T):
        if rng.random() < 0.25:
            e = int(rng.integers(4))
        frames.append(protos[e] + 0.3 * rng.standard_normal(d))
    return np.array(frames).reshape(T, d)


@exercise("5.8", "compressive_memory keeps a short FIFO and merges evicted frames into event slots within the budget, "
                 "like labkit's CompressiveMemory")
def ex_5_8(compressive_memory: Callable) -> None:
    from labkit.episodic.streaming import CompressiveMemory

    def test(example):
        T, budget, short_frac, tau, seed = example
        rng = _rng(seed)
        d = 6
        short = max(1, min(budget - 1, int(short_frac * budget)))
        frames = _stream(rng, T, d)
        ref = CompressiveMemory(budget, d, short=short, tau=tau)
        for x in frames:
            ref.observe(x)
        want = ref.slots()
        what = f"compressive_memory(frames ({T}, {d}), budget={budget}, short={short}, tau={tau})"
        got = _tuple(what, _call(what, compressive_memory, frames.copy(), budget, short, tau),
                     ("means", "t0", "t1", "counts"))
        means, t0, t1, counts = (_array(f"{n} of {what}", x) for n, x in zip(("means", "t0", "t1", "counts"), got))
        expect(len(counts) <= budget, f"{what} holds {len(counts)} slots, more than the budget {budget}.")
        expect(int(counts.sum()) == T, f"{what}: the counts add up to {int(counts.sum())}, expected all {T} frames: "
                                       "no frame may be lost; when long-term memory is over budget, MERGE the most "
                                       "similar adjacent pair, do not drop a slot.")
        for name, a, b in (("t0", t0, want[1]), ("t1", t1, want[2]), ("counts", counts, want[3])):
            if a.shape != b.shape or not np.array_equal(a, b):
                expect(False, f"{name} of {what} is {a.astype(int).tolist()}, expected {b.tolist()}: an evicted frame "
                              "joins the last long-term slot when cos(x, its mean) ≥ τ, else opens a new slot; over "
                              "budget, merge the adjacent pair of highest COSINE similarity of their means.")
        expect_close(f"means of {what}", means, want[0], atol=1e-9, hint="a slot's content is its mean, sum / count.")

    for_all(st.tuples(st.integers(0, 60), st.integers(2, 8), st.sampled_from([0.25, 0.5]),
                      st.sampled_from([0.3, 0.6, 0.9]), _SEEDS), test, max_examples=30)


# ------------------------------------------------------------------------------ 5.9 kernel: one batched PPR pass


@exercise("5.9", "ppr_step (Numba) does one fused batched PPR iteration (mat-vec, dangling mass, teleport, L1 "
                 "residual) over the in-edge CSR")
def ex_5_9(ppr_step: Callable) -> None:
    expect(_is_njit(ppr_step), "compile ppr_step with @njit (from numba import njit).")

    def test(example):
        N, B, alpha, seed = example
        rng = _rng(seed)
        indptr, indices, w = random_graph(rng, N, 4 * N)
        g = _transition(indptr, indices, w)
        S = rng.random((N, B))
        S /= S.sum(0)
        R = rng.random((N, B))
        R /= R.sum(0)
        args = [np.ascontiguousarray(x) for x in (g.in_ptr.numpy(), g.in_src.numpy(), g.in_p.numpy(),
                                                  g.dangling.numpy(), S, R)]
        keep = [a.copy() for a in args]
        what = f"ppr_step(graph with {N} nodes, S, R ({N}, {B}), alpha={alpha})"
        R_new, res = _tuple(what, _call(what, ppr_step, *args, alpha), ("R_new", "residual"))
        expect(all(np.array_equal(a, b) for a, b in zip(args, keep)), f"{what} changed its inputs: write into new "
                                                                       "arrays.")
        R_new, res = _array(f"R_new of {what}", R_new), _array(f"residual of {what}", res)
        P = np.zeros((N, N))
        np.add.at(P, (np.repeat(np.arange(N), np.diff(keep[0])), keep[1]), keep[2])
        dang = keep[3]
        want = (1 - alpha) * (P @ R + R[dang].sum(0) * S) + alpha * S
        if not (R_new.shape == want.shape and np.allclose(R_new, want, atol=1e-12)):
            if R_new.shape == want.shape and np.allclose(R_new, (1 - alpha) * P @ R + alpha * S, atol=1e-12):
                hint = "add the dangling mass m_b = Σ_{u dangling} R[u, b] back at S: (1 − α)(P R + m S) + α S."
            elif R_new.shape == want.shape and np.allclose(R_new, alpha * (P @ R + R[dang].sum(0) * S)
                                                           + (1 - alpha) * S, atol=1e-12):
                hint = "α is the restart probability: (1 − α)(P R + m S) + α S."
            else:
                hint = "R_new[v] = (1 − α)(Σ_{e in row v} in_p[e] R[in_src[e]] + m S[v]) + α S[v]."
            expect_close(f"R_new of {what}", R_new, want, atol=1e-12, hint=hint)
        expect_close(f"residual of {what}", res, np.abs(want - R).sum(0), atol=1e-12,
                     hint="residual[b] = Σ_v |R_new[v, b] − R[v, b]| (the L1 norm per query).")

    for_all(st.tuples(st.integers(3, 50), st.integers(1, 8), st.sampled_from([0.15, 0.4]), _SEEDS), test,
            max_examples=20)


# ------------------------------------------------------------------------------ 5.10 kernel: similarity top-k


def sim_topk_reference(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar OTHER rows of every row of X (N, d), by dot product in float64, ties to the lower index
    (the rule of ``labkit.kernels.sim_topk.reference``, in float64): (indices (N, k) int64, scores (N, k))."""
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, 1)


@exercise("5.10", "sim_topk_rows (Numba) finds every row's k most similar other rows without the N × N matrix, equal "
                  "to the full-matrix reference (ties to the lower index)")
def ex_5_10(sim_topk_rows: Callable) -> None:
    expect(_is_njit(sim_topk_rows), "compile sim_topk_rows with @njit (from numba import njit).")

    def test(example):
        N, d, k, ints, seed = example
        rng = _rng(seed)
        k = min(k, N - 1)
        X = rng.integers(-1, 2, (N, d)).astype(np.float64) if ints else rng.standard_normal((N, d))
        Xc = np.ascontiguousarray(X)
        what = f"sim_topk_rows(X ({N}, {d}){' with many ties' if ints else ''}, k={k})"
        idx, val = _tuple(what, _call(what, sim_topk_rows, Xc, k), ("indices", "scores"))
        expect(np.array_equal(Xc, X), f"{what} changed X.")
        idx, val = _array(f"indices of {what}", idx), _array(f"scores of {what}", val)
        want_i, want_v = sim_topk_reference(X, k)
        expect(idx.shape == (N, k), f"indices of {what} have shape {idx.shape}, expected ({N}, {k}).")
        if not np.array_equal(idx, want_i):
            row = int(np.argmax((idx != want_i).any(1)))
            if (idx == np.arange(N)[:, None]).any():
                hint = "exclude the row itself (j ≠ i): a note is not its own neighbour."
            elif sorted(idx[row].tolist()) == sorted(want_i[row].tolist()):
                hint = "order each row by score descending, equal scores by index ascending."
            elif np.allclose(np.sort(val[row]), np.sort(want_v[row])):
                hint = "among equal scores keep the LOWER index (replace only on a strictly larger score)."
            else:
                hint = "keep the k largest dot products ⟨x_i, x_j⟩ over j ≠ i."
            expect(False, f"row {row} of indices of {what} is {idx[row].astype(int).tolist()}, expected "
                          f"{want_i[row].tolist()} (scores {np.round(want_v[row], 4).tolist()}): {hint}")
        expect_close(f"scores of {what}", val, want_v, atol=1e-9, hint="scores[i, m] = ⟨x_i, x_{indices[i, m]}⟩.")

    for_all(st.tuples(st.integers(2, 40), st.integers(1, 6), st.integers(1, 6), st.booleans(), _SEEDS), test,
            max_examples=25)


__all__ = ["SCHEMA_5_2", "amem_links_reference", "hipporag_reference", "random_graph", "sim_topk_reference"] + [
    f"ex_5_{k}" for k in range(1, 11)]
