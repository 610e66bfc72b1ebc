"""One realistic wrong answer per exercise of labs/lab05_episodic_agents.ipynb; each must make its check fail.

``WRONG[label]`` replaces the exercise's solution region (``labkit.assign.substitute``), indented like the
region: the body of the exercise's function (for 5.9 and 5.10 the body of an ``@njit`` function, so the wrong
answer must compile). tests/labs/test_labs.py runs all of WRONG in one notebook (the exercises do not build on
each other); tests/unit/test_check_episodic.py runs the same bodies against the checks directly and checks the
hint each one gets.
"""

WRONG = {
    # joins the raw words: FTS5 reads AND / OR / NEAR / quotes / * as syntax (and fails on some texts).
    "5.1": """
words = text.split()
if not words:
    return None
return " OR ".join(words)
""",
    # no transaction: the version row is written even when the UPDATE then fails.
    "5.2": """
row = conn.execute("SELECT text, version FROM notes WHERE id = ?", (note_id,)).fetchone()
if row is None:
    raise KeyError(f"note id {note_id} not found")
old_text, version = row
conn.execute("INSERT INTO note_versions (note_id, version, text, reason) VALUES (?, ?, ?, ?)",
             (note_id, version, old_text, reason))
conn.execute("UPDATE notes SET text = ?, version = version + 1 WHERE id = ?", (new_text, note_id))
return version + 1
""",
    # takes the FIRST passage that states the relation: an old home or employer instead of the current one.
    "5.3": """
node, pids = entity, []
for r in relations:
    found = None
    for p in world.passages():
        for s, rel, o in p.triples:
            if found is None and rel == r and (s == node or (r == "spouse_of" and o == node)):
                found = (p.id, o if s == node else s)
    if found is None:
        return None, pids
    pids.append(found[0])
    node = found[1]
return node, pids
""",
    # uses alpha as the damping (networkx's convention) instead of the restart probability.
    "5.4": """
N = len(indptr) - 1
src = np.repeat(np.arange(N), np.diff(indptr))
out_w = np.bincount(src, weights, minlength=N)
P = np.zeros((N, N))
np.add.at(P, (indices, src), weights / np.where(out_w > 0, out_w, 1)[src])
dangling = out_w == 0
s = s / s.sum()
r = s.copy()
for _ in range(10_000):
    r_new = alpha * (P @ r + r[dangling].sum() * s) + (1 - alpha) * s
    if np.abs(r_new - r).sum() < tol:
        return r_new
    r = r_new
return r
""",
    # no node specificity: every query entity gets the same seed weight, hubs included.
    "5.5": """
s = q / q.sum()
return s, M @ ppr(s)
""",
    # returns positions instead of the notes' ids.
    "5.6": """
sim = E @ E[i]
sim[i] = -np.inf
order = np.argsort(-sim, kind="stable")[: min(k, len(ids) - 1)]
linked = set(order.tolist())
linked |= {j for j in range(len(ids)) if j != i and entities[i] & entities[j]}
return sorted(linked)
""",
    # evicts the place stored first (a FIFO of places): a revisit does not refresh a place.
    "5.7": """
slots, first_seen = {}, []
for place, t, obs in events:
    if place not in slots:
        if len(slots) >= capacity:
            del slots[first_seen.pop(0)]
        first_seen.append(place)
    slots[place] = (t, obs)
return slots
""",
    # over budget, drops the oldest long-term slot instead of merging the most similar pair: frames are lost.
    "5.8": """
stm, ltm = [], []
for t, x in enumerate(frames):
    stm.append([x.copy(), 1, t, t])
    if len(stm) <= short:
        continue
    vec, count, t0, t1 = stm.pop(0)
    if ltm:
        last = ltm[-1][0]
        if vec @ last / max(np.linalg.norm(vec) * np.linalg.norm(last), 1e-12) >= tau:
            ltm[-1] = [last + vec, ltm[-1][1] + count, ltm[-1][2], t1]
            continue
    ltm.append([vec, count, t0, t1])
    if len(ltm) > budget - short:
        ltm.pop(0)
slots = ltm + stm
means = np.array([a[0] / a[1] for a in slots]).reshape(len(slots), frames.shape[1])
return (means, np.array([a[2] for a in slots], dtype=np.int64), np.array([a[3] for a in slots], dtype=np.int64),
        np.array([a[1] for a in slots], dtype=np.int64))
""",
    # forgets the dangling mass: the scores leak probability at every step.
    "5.9": """
N, B = R.shape
R_new = np.empty_like(R)
residual = np.zeros(B)
for v in range(N):
    for b in range(B):
        acc = 0.0
        for e in range(in_ptr[v], in_ptr[v + 1]):
            acc += in_p[e] * R[in_src[e], b]
        x = (1 - alpha) * acc + alpha * S[v, b]
        R_new[v, b] = x
        residual[b] += abs(x - R[v, b])
return R_new, residual
""",
    # does not skip j == i: every row's best neighbour is itself.
    "5.10": """
N, d = X.shape
idx = np.full((N, k), -1, dtype=np.int64)
val = np.full((N, k), -np.inf)
for i in range(N):
    for j in range(N):
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
""",
}
