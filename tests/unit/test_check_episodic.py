"""The Lab 5 checks (labkit.check.episodic) pass correct answers and bite on wrong ones, stubs and `...`."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from lab_answers import answer_factory, contract_tests, expect_hint
from numba import njit

import labkit.check.episodic as checks

_spec = importlib.util.spec_from_file_location(
    "_wrong_lab05_unit", Path(__file__).resolve().parents[1] / "labs" / "wrong_lab05.py")
_wrong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wrong)
WRONG = _wrong.WRONG

torch.set_num_threads(1)  # two cores shared with other jobs


# ------------------------------------------------------------------------- correct answers (as a student)

def safe_fts_query(text):
    terms = list(dict.fromkeys(re.findall(r"\w+", text)))
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def update_with_history(conn, note_id, new_text, reason):
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT text, version FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is None:
            raise KeyError(f"note id {note_id} not found")
        old_text, version = row
        conn.execute("INSERT INTO note_versions (note_id, version, text, reason) VALUES (?, ?, ?, ?)",
                     (note_id, version, old_text, reason))
        conn.execute("UPDATE notes SET text = ?, version = version + 1 WHERE id = ?", (new_text, note_id))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version + 1


def follow(world, entity, relations):
    node, pids = entity, []
    for r in relations:
        best = None
        for p in world.passages():
            for s, rel, o in p.triples:
                if rel == r and (s == node or (r == "spouse_of" and o == node)):
                    if best is None or p.t > best[0].t:
                        best = (p, o if s == node else s)
        if best is None:
            return None, pids
        pids.append(best[0].id)
        node = best[1]
    return node, pids


def ppr_power(indptr, indices, weights, s, alpha, tol):
    N = len(indptr) - 1
    src = np.repeat(np.arange(N), np.diff(indptr))
    out_w = np.bincount(src, weights, minlength=N)
    P = np.zeros((N, N))
    np.add.at(P, (indices, src), weights / np.where(out_w > 0, out_w, 1)[src])
    dangling = out_w == 0
    s = s / s.sum()
    r = s.copy()
    for _ in range(10_000):
        r_new = (1 - alpha) * (P @ r + r[dangling].sum() * s) + alpha * s
        if np.abs(r_new - r).sum() < tol:
            return r_new
        r = r_new
    return r


def hipporag_scores(M, q, ppr):
    count = M.sum(0)
    s = np.where(count > 0, q / np.maximum(count, 1), 0.0)
    if s.sum() > 0:
        s = s / s.sum()
    return s, M @ ppr(s)


def amem_links(ids, E, entities, i, k):
    sim = E @ E[i]
    sim[i] = -np.inf
    order = np.argsort(-sim, kind="stable")[: min(k, len(ids) - 1)]
    linked = set(order.tolist())
    linked |= {j for j in range(len(ids)) if j != i and entities[i] & entities[j]}
    return sorted(int(ids[j]) for j in linked)


def place_memory(events, capacity):
    slots = {}
    for place, t, obs in events:
        if place not in slots and len(slots) >= capacity:
            stalest = min(slots, key=lambda p: slots[p][0])
            del slots[stalest]
        slots[place] = (t, obs)
    return slots


def compressive_memory(frames, budget, short, tau):
    stm = []  # [sum, count, t0, t1]
    ltm = []
    for t, x in enumerate(frames):
        stm.append([x.copy(), 1, t, t])
        if len(stm) <= short:
            continue
        vec, count, t0, t1 = stm.pop(0)
        if ltm:
            last = ltm[-1][0]
            cos = vec @ last / max(np.linalg.norm(vec) * np.linalg.norm(last), 1e-12)
            if cos >= tau:
                ltm[-1][0] = ltm[-1][0] + vec
                ltm[-1][1] += count
                ltm[-1][3] = t1
                continue
        ltm.append([vec, count, t0, t1])
        if len(ltm) > budget - short:
            m = np.array([a[0] / a[1] for a in ltm])
            m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
            j = int(np.argmax((m[:-1] * m[1:]).sum(1)))
            a, b = ltm[j], ltm.pop(j + 1)
            ltm[j] = [a[0] + b[0], a[1] + b[1], a[2], b[3]]
    slots = ltm + stm
    d = frames.shape[1]
    means = np.array([a[0] / a[1] for a in slots]).reshape(len(slots), d)
    return (means, np.array([a[2] for a in slots], dtype=np.int64), np.array([a[3] for a in slots], dtype=np.int64),
            np.array([a[1] for a in slots], dtype=np.int64))


@njit(cache=True)
def ppr_step(in_ptr, in_src, in_p, dangling, S, R, alpha):
    N, B = R.shape
    m = np.zeros(B)
    for u in range(N):
        if dangling[u]:
            for b in range(B):
                m[b] += R[u, b]
    R_new = np.empty_like(R)
    residual = np.zeros(B)
    for v in range(N):
        for b in range(B):
            acc = 0.0
            for e in range(in_ptr[v], in_ptr[v + 1]):
                acc += in_p[e] * R[in_src[e], b]
            x = (1 - alpha) * (acc + m[b] * S[v, b]) + alpha * S[v, b]
            R_new[v, b] = x
            residual[b] += abs(x - R[v, b])
    return R_new, residual


@njit(cache=True)
def sim_topk_rows(X, k):
    N, d = X.shape
    idx = np.full((N, k), -1, dtype=np.int64)
    val = np.full((N, k), -np.inf)
    for i in range(N):
        for j in range(N):
            if j == i:
                continue
            s = 0.0
            for c in range(d):
                s += X[i, c] * X[j, c]
            if s <= val[i, k - 1]:
                continue
            m = k - 1
            while m > 0 and val[i, m - 1] < s:
                val[i, m] = val[i, m - 1]
                idx[i, m] = idx[i, m - 1]
                m -= 1
            val[i, m] = s
            idx[i, m] = j
    return idx, val


CORRECT = {
    "5.1": safe_fts_query,
    "5.2": update_with_history,
    "5.3": follow,
    "5.4": ppr_power,
    "5.5": hipporag_scores,
    "5.6": amem_links,
    "5.7": place_memory,
    "5.8": compressive_memory,
    "5.9": ppr_step,
    "5.10": sim_topk_rows,
}
CHECKS = {label: getattr(checks, f"ex_{label.replace('.', '_')}") for label in CORRECT}

SIGNATURES = {
    "5.1": "safe_fts_query(text)",
    "5.2": "update_with_history(conn, note_id, new_text, reason)",
    "5.3": "follow(world, entity, relations)",
    "5.4": "ppr_power(indptr, indices, weights, s, alpha, tol)",
    "5.5": "hipporag_scores(M, q, ppr)",
    "5.6": "amem_links(ids, E, entities, i, k)",
    "5.7": "place_memory(events, capacity)",
    "5.8": "compressive_memory(frames, budget, short, tau)",
    "5.9": "ppr_step(in_ptr, in_src, in_p, dangling, S, R, alpha)",
    "5.10": "sim_topk_rows(X, k)",
}
COMPILED = {"5.9", "5.10"}
_from_body, stub = answer_factory(SIGNATURES, COMPILED, WRONG)


def from_body(label: str, body: str | None = None):
    """Like answer_factory's, with ``re`` and ``sqlite3`` in the namespace (5.1, 5.2 use them)."""
    fn = _from_body(label, body)
    namespace = getattr(fn, "py_func", fn).__globals__
    namespace.setdefault("re", re)
    namespace.setdefault("sqlite3", sqlite3)
    return fn


# -------------------------------------------------------------------------------------------- the tests


assert set(SIGNATURES) == set(CORRECT)
globals().update(contract_tests(CORRECT, CHECKS, WRONG, from_body, stub))


# -------------------------------------------------------------- the hints name the likely cause


def test_hints_of_the_wrong_answers():
    expect_hint(checks.ex_5_1, from_body("5.1"), "quoted term")
    expect_hint(checks.ex_5_2, from_body("5.2"), "BEGIN ... COMMIT")
    expect_hint(checks.ex_5_3, from_body("5.3"), "LARGEST t")
    expect_hint(checks.ex_5_4, from_body("5.4"), "RESTART probability")
    expect_hint(checks.ex_5_5, from_body("5.5"), "node specificity")
    expect_hint(checks.ex_5_6, from_body("5.6"), "note IDS")
    expect_hint(checks.ex_5_7, from_body("5.7"), "oldest")
    expect_hint(checks.ex_5_8, from_body("5.8"), "no frame may be lost")
    expect_hint(checks.ex_5_9, from_body("5.9"), "dangling mass")
    expect_hint(checks.ex_5_10, from_body("5.10"), "exclude the row itself")


def test_more_wrong_answers():
    """Further slips each check must reject, with the hint that names them."""
    def no_self_exclusion(ids, E, entities, i, k):
        order = np.argsort(-(E @ E[i]), kind="stable")[:k]
        return sorted({int(ids[j]) for j in order} | {int(ids[j]) for j in range(len(ids))
                                                     if j != i and entities[i] & entities[j]})

    expect_hint(checks.ex_5_6, no_self_exclusion, "does not link to itself")

    def stale_slot(events, capacity):  # keeps the FIRST visit of a place
        slots = {}
        for place, t, obs in events:
            if place in slots:
                continue
            if len(slots) >= capacity:
                del slots[min(slots, key=lambda p: slots[p][0])]
            slots[place] = (t, obs)
        return slots

    expect_hint(checks.ex_5_7, stale_slot, "LATEST")

    def unnormalised(M, q, ppr):
        count = M.sum(0)
        s = np.where(count > 0, q / np.maximum(count, 1), 0.0)
        return s, M @ ppr(s)

    expect_hint(checks.ex_5_5, unnormalised, "Σ s = 1")

    def dangling_lost(indptr, indices, weights, s, alpha, tol):
        N = len(indptr) - 1
        src = np.repeat(np.arange(N), np.diff(indptr))
        out_w = np.bincount(src, weights, minlength=N)
        P = np.zeros((N, N))
        np.add.at(P, (indices, src), weights / np.where(out_w > 0, out_w, 1)[src])
        s = s / s.sum()
        r = s.copy()
        for _ in range(10_000):
            r_new = (1 - alpha) * P @ r + alpha * s
            if np.abs(r_new - r).sum() < tol:
                return r_new
            r = r_new
        return r

    expect_hint(checks.ex_5_4, dangling_lost, "dangling")

    @njit
    def unstable_ties(X, k):  # replaces on equal scores: the higher index wins a tie
        N, d = X.shape
        idx = np.full((N, k), -1, dtype=np.int64)
        val = np.full((N, k), -np.inf)
        for i in range(N):
            for j in range(N):
                if j == i:
                    continue
                s = 0.0
                for c in range(d):
                    s += X[i, c] * X[j, c]
                if s < val[i, k - 1]:
                    continue
                m = k - 1
                while m > 0 and val[i, m - 1] <= s:
                    val[i, m] = val[i, m - 1]
                    idx[i, m] = idx[i, m - 1]
                    m -= 1
                val[i, m] = s
                idx[i, m] = j
        return idx, val

    expect_hint(checks.ex_5_10, unstable_ties, "index")

    def plain_python(X, k):
        return sim_topk_rows(X, k)

    expect_hint(checks.ex_5_10, plain_python, "@njit")


def test_sim_topk_reference_agrees_with_the_kernels_reference():
    """The float64 reference of 5.10 picks what labkit.kernels.sim_topk.reference picks (when no near-ties)."""
    from labkit.kernels.sim_topk import reference

    X = np.random.default_rng(0).standard_normal((30, 8))
    idx, val = checks.sim_topk_reference(X, 5)
    ref_idx, ref_val = reference(torch.from_numpy(X), 5)
    assert np.array_equal(idx, ref_idx.numpy())
    assert np.allclose(val, ref_val.numpy(), atol=1e-5)


def test_hipporag_reference_downweights_hubs():
    M = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0.0]])  # entity 0 in every passage
    s, _ = checks.hipporag_reference(M, np.array([1.0, 1.0, 0.0]), lambda s: s)
    assert np.allclose(s, [0.25, 0.75, 0.0])


@pytest.mark.parametrize("text", ['"', "NEAR(", "a AND", "*x", ""])
def test_fts_wrong_answer_breaks_fts5_or_mismatches(text):
    """The raw-words answer of 5.1 is not just different: some of these texts make FTS5 fail outright."""
    raw = from_body("5.1")(text)
    assert raw is None or isinstance(raw, str)
