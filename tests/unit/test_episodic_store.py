"""labkit.episodic.store: the SQLite memory — API, malformed input, crash safety, concurrency, migrations, versions.

The crash and concurrency tests run writers in fresh Python processes (``subprocess`` with ``sys.executable``, the
same isolation as multiprocessing's "spawn"). The child loads ``store.py`` straight from its file, so it starts in
~0.2 s instead of importing labkit (and torch).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from labkit.episodic import store as store_mod
from labkit.episodic.embed import HashingEmbedder
from labkit.episodic.store import MIGRATIONS, SCHEMA_VERSION, MemoryStore, StoreBusyError, fts_query

STORE_PY = Path(store_mod.__file__).resolve()

_CHILD_PRELUDE = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("episodic_store_child", {str(STORE_PY)!r})
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
"""


def _child(body: str, *args: str) -> subprocess.Popen:
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture()
def store(tmp_path):
    s = MemoryStore(tmp_path / "mem.db", HashingEmbedder(dim=128, seed=0))
    yield s
    s.close()


# -- basics ------------------------------------------------------------------------------------------------------
def test_file_is_wal_fts5_fk_and_current_schema(tmp_path):
    path = tmp_path / "m.db"
    with MemoryStore(path) as s:
        s.add_note("hello world")
    raw = sqlite3.connect(path)  # any SQLite tool can read it
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"notes", "note_versions", "links", "entities", "aliases", "triples", "edges", "embeddings",
            "notes_fts"} <= tables
    assert raw.execute("SELECT text FROM notes").fetchall() == [("hello world",)]
    raw.close()
    with MemoryStore(path) as s:
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(sqlite3.IntegrityError):  # FK enforced even through the raw connection
            s.conn.execute("INSERT INTO links (src, dst, created_at) VALUES (1, 999, 0)")


def test_add_get_meta_roundtrip(store):
    i = store.add_note("Alice moved to Paris.", created_at=12.5, session="s1", kind="event",
                       keywords=["Alice", "Paris"], tags=["move"], context={"place": "Paris"}, source="conversation")
    n = store.get_note(i)
    assert (n.text, n.created_at, n.session, n.kind) == ("Alice moved to Paris.", 12.5, "s1", "event")
    assert n.keywords == ("Alice", "Paris") and n.tags == ("move",) and json.loads(n.context) == {"place": "Paris"}
    assert (n.source, n.status, n.version) == ("conversation", "active", 1)
    ids = store.add_notes(["a b c", {"text": "d e f", "session": "s2"}])
    assert ids == [i + 1, i + 2] and store.count() == 3
    assert [n.id for n in store.notes(session="s2")] == [i + 2]
    assert [n.text for n in store.get_notes([ids[1], i])] == ["d e f", "Alice moved to Paris."]


def test_add_notes_is_all_or_nothing(store):
    store.add_note("first")
    with pytest.raises(ValueError, match="non-empty"):
        store.add_notes(["ok one", "ok two", "   "])
    assert store.count() == 1


def test_keyword_search_ranks_and_filters_status(store):
    a = store.add_note("the red fox jumps over the fence")
    b = store.add_note("a blue whale sings")
    c = store.add_note("red red red apples", keywords=["fruit"])
    hits = store.keyword_search("red", k=5)
    assert [h[0] for h in hits] == [c, a] and hits[0][1] >= hits[1][1]
    assert store.keyword_search("fruit")[0][0] == c  # keywords are indexed
    assert [h[0] for h in store.keyword_search("red whale", mode="all")] == []
    assert {h[0] for h in store.keyword_search("red whale", mode="any")} == {a, b, c}
    store.archive(c)
    assert [h[0] for h in store.keyword_search("red")] == [a]
    store.update_note(a, text="a green fox")  # the FTS index follows updates
    assert store.keyword_search("red") == [] and store.keyword_search("green")[0][0] == a


def test_dense_search_matches_brute_force_and_invalidates(store):
    rng = np.random.default_rng(0)
    words = ["river", "mountain", "city", "train", "bread", "music", "winter", "garden", "doctor", "ocean"]
    texts = [" ".join(rng.choice(words, size=4)) + f" item{i}" for i in range(60)]
    ids = store.add_notes(texts)
    emb = store.embedder
    q = "river train music"
    hits = store.dense_search(q, k=5)
    scores = emb.encode(texts) @ emb.encode([q])[0]
    want = [ids[j] for j in np.argsort(-scores, kind="stable")[:5]]
    assert [h[0] for h in hits] == want
    assert np.allclose([h[1] for h in hits], np.sort(scores)[::-1][:5], atol=1e-5)
    before = store.embedding_matrix()[1]
    store.update_note(hits[1][0], tags=["evolved"], context="A-MEM evolution step")  # vectors unchanged: no rebuild
    assert store.embedding_matrix()[1] is before
    store.delete(hits[0][0])  # a status change rebuilds the cached matrix
    assert hits[0][0] not in [h[0] for h in store.dense_search(q, k=5)]
    ids_m, mat = store.embedding_matrix()
    assert mat.shape == (59, 128) and len(ids_m) == 59 and not mat.flags.writeable


def test_dense_matrix_appends_own_notes_like_a_full_rebuild(tmp_path):
    emb = HashingEmbedder(dim=32)
    with MemoryStore(tmp_path / "m.db", emb) as s:
        s.add_notes([f"note {i} about rivers" for i in range(5)])
        s.embedding_matrix()  # build the cache
        for step in range(1200):  # many small appends: the buffer has to grow past its first capacity
            s.add_note(f"appended {step} lake" + " x" * (step % 7))
        s.add_notes([f"batch {i}" for i in range(30)])
        ids, mat = s.embedding_matrix()
        with MemoryStore(tmp_path / "m.db", emb) as fresh:
            ids2, mat2 = fresh.embedding_matrix()
        assert np.array_equal(ids, ids2) and np.array_equal(mat, mat2) and len(ids) == 1235
        (best, score), = s.dense_search("appended 1199 lake" + " x" * (1199 % 7), k=1)
        assert best == 5 + 1200 and score == pytest.approx(1.0, abs=1e-5)


def test_dense_matrix_sees_writes_from_another_connection(tmp_path):
    emb = HashingEmbedder(dim=64)
    with MemoryStore(tmp_path / "m.db", emb) as s1, MemoryStore(tmp_path / "m.db", emb) as s2:
        s1.add_note("alpha beta")
        assert len(s1.dense_search("alpha", k=10)) == 1
        new = s2.add_note("alpha gamma")
        assert new in [h[0] for h in s1.dense_search("alpha", k=10)]


def test_embeddings_cached_per_text_and_model(store):
    store.add_notes(["same text", "same text", "other"])
    assert store.stats["encoded"] == 2
    store.add_note("same text")
    assert store.stats["encoded"] == 2 and store.stats["cache_hits"] >= 1
    n = store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert n == 4  # one row per note, the vector reused, not recomputed


def test_precomputed_embedding_is_stored(store):
    v = np.arange(128, dtype=np.float32) + 1
    i = store.add_note("anything", embedding=v)
    assert store.stats["encoded"] == 0
    assert store.dense_search(v, k=1)[0][0] == i
    with pytest.raises(ValueError, match="128 values, got 3"):
        store.add_note("x", embedding=[1.0, 2.0, 3.0])


# -- malformed input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, exc, msg", [
    ("", ValueError, "non-empty"),
    ("  \n\t ", ValueError, "non-empty"),
    (b"\xff\xfe broken", ValueError, "not valid UTF-8"),
    ("lone \udc80 surrogate", ValueError, "lone surrogate"),
    (None, TypeError, "must be str"),
    (42, TypeError, "must be str"),
])
def test_bad_text_raises_clear_errors(store, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        store.add_note(bad)
    assert store.count(None) == 0


def test_huge_text_limit_is_configurable(tmp_path):
    with MemoryStore(tmp_path / "m.db", max_text_bytes=1000) as s:
        with pytest.raises(ValueError, match="at most 1000 UTF-8 bytes, got 1001"):
            s.add_note("x" * 1001)
        with pytest.raises(ValueError, match="at most 1000 UTF-8 bytes, got 1002"):
            s.add_note("é" * 501)  # bytes, not characters
        assert s.get_note(s.add_note("x" * 1000)).text == "x" * 1000
    with MemoryStore(tmp_path / "d.db") as s:
        with pytest.raises(ValueError, match="at most 1000000"):
            s.add_note("y" * 1_000_001)


def test_valid_utf8_bytes_are_accepted(store):
    assert store.get_note(store.add_note("café ☕".encode())).text == "café ☕"


def test_unknown_ids_and_fields(store):
    i = store.add_note("a note")
    with pytest.raises(KeyError, match="note id 999 not found"):
        store.get_note(999)
    with pytest.raises(KeyError, match="note id 999 not found"):
        store.update_note(999, text="x")
    with pytest.raises(KeyError, match="note id 999 not found"):
        store.link(i, 999)
    with pytest.raises(KeyError, match="note id 999"):
        store.add_triple("a", "r", "b", note_id=999)
    with pytest.raises(ValueError, match="unknown note field"):
        store.add_note("x", colour="red")
    with pytest.raises(ValueError, match="cannot update field"):
        store.update_note(i, id=5)
    with pytest.raises(ValueError, match="status must be one of"):
        store.update_note(i, status="gone")
    with pytest.raises(TypeError, match="note_id must be an int"):
        store.get_note("1")
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        store.keyword_search("a", k=0)
    assert store.count() == 1 and store.get_note(i).version == 1  # failed updates left no trace
    assert store.conn.execute("SELECT COUNT(*) FROM note_versions").fetchone()[0] == 0


INJECTIONS = [
    "Robert'); DROP TABLE notes;--",
    "1 OR 1=1; DELETE FROM notes WHERE '1'='1",
    "\" OR \"\"=\"",
    "x'; UPDATE notes SET text='pwned'; --",
    "SELECT * FROM sqlite_master; PRAGMA user_version = 0;",
]


def test_sql_injection_strings_stored_verbatim_and_searchable(store):
    ids = store.add_notes(INJECTIONS)
    store.add_note(INJECTIONS[0], session=INJECTIONS[1], keywords=[INJECTIONS[2]], source=INJECTIONS[3])
    assert [store.get_note(i).text for i in ids] == INJECTIONS
    assert store.count() == len(INJECTIONS) + 1 and store.schema_version == SCHEMA_VERSION
    assert store.get_note(ids[-1] + 1).session == INJECTIONS[1]
    assert ids[0] in [h[0] for h in store.keyword_search("DROP TABLE notes", k=10)]
    assert store.resolve(INJECTIONS[0]) is None
    e = store.add_entity(INJECTIONS[0])
    assert store.resolve(INJECTIONS[0]) == e and store.entities()[0].name == INJECTIONS[0].strip()
    assert store.integrity_check() == "ok"


FTS_NASTY = ['"', '""', '"unbalanced', "a AND", "OR", "NOT x", "NEAR(a b, 2)", "a NEAR b", "*", "ab*", "^start",
             "col:value", "text: hello", "(((", ")", "a + b - c", "{a b}", "'single'", "-", "😀 emoji", "\x00nul",
             "AND OR NOT NEAR", "x" * 5000]


@pytest.mark.parametrize("query", FTS_NASTY)
def test_fts_queries_with_operators_never_raise(store, query):
    store.add_notes(["a b c apples and oranges", "NEAR the start; col value", "text hello world"])
    hits = store.keyword_search(query, k=5)
    assert all(isinstance(i, int) and isinstance(s, float) for i, s in hits)
    store.keyword_search(query, k=5, mode="all")


def test_fts_query_quotes_every_word():
    assert fts_query('dog "AND" cat*') == '"dog" OR "AND" OR "cat"'
    assert fts_query("dog cat", mode="all") == '"dog" AND "cat"'
    assert fts_query(" ** \"' ") is None
    with pytest.raises(ValueError, match="mode must be"):
        fts_query("x", mode="near")


# -- versions and lifecycle --------------------------------------------------------------------------------------
def test_update_keeps_history_and_delete_is_soft(store):
    i = store.add_note("Bob lives in Rome", tags=["home"])
    store.update_note(i, text="Bob lives in Oslo", reason="conflict")
    store.update_note(i, tags=["home", "moved"])
    hist = store.history(i)
    assert [h.version for h in hist] == [1, 2, 3]
    assert [h.text for h in hist] == ["Bob lives in Rome", "Bob lives in Oslo", "Bob lives in Oslo"]
    assert [h.reason for h in hist] == ["conflict", "update", None] and hist[-1].archived_at is None
    assert hist[2].tags == ("home", "moved") and hist[1].tags == ("home",)
    assert store.keyword_search("Rome") == [] and store.keyword_search("Oslo")[0][0] == i
    assert store.dense_search("Bob lives in Oslo", k=1)[0][1] == pytest.approx(1.0, abs=1e-5)  # re-embedded
    store.delete(i)
    n = store.get_note(i)
    assert n.status == "deleted" and n.version == 4 and n.text == "Bob lives in Oslo"
    assert store.count() == 0 and store.count("deleted") == 1 and store.count(None) == 1
    assert store.keyword_search("Oslo") == [] and store.dense_search("Oslo") == []
    assert store.history(i)[-2].status == "active"
    store.restore(i)
    assert store.count() == 1 and len(store.history(i)) == 5


def test_links_entities_triples_edges(store):
    a, b, c = store.add_notes(["n1", "n2", "n3"])
    store.link(a, b, "related", 0.5)
    store.link(a, b, "related", 0.8)  # upsert: re-weight
    store.link(c, a, "follows")
    assert [(x.src, x.dst, x.weight) for x in store.links(a)] == [(a, b, 0.8)]
    assert {(x.src, x.dst) for x in store.links(a, "both")} == {(a, b), (c, a)}
    assert [x.kind for x in store.links(a, "in")] == ["follows"]
    with pytest.raises(ValueError, match="itself"):
        store.link(a, a)
    nyc = store.add_entity("New York City", kind="city")
    assert store.alias("N.Y.C.", "New York City") == nyc and store.resolve("n.y.c.") == nyc
    assert store.add_entity("new york city") == nyc and store.aliases(nyc) == ["N.Y.C."]
    t = store.add_triple("Erik Hort", "born in", "N.Y.C.", note_id=a, t=3.0)
    (tr,) = store.triples("New York City")
    assert (tr.id, tr.subject, tr.relation, tr.object, tr.object_id, tr.note_id, tr.t) == \
        (t, "Erik Hort", "born in", "New York City", nyc, a, 3.0)
    assert store.triples(note_id=b) == [] and len(store.triples(relation="born in")) == 1
    store.add_edges([("Erik Hort", "New York City", "relation", 1.0), ("New York City", "NYC", "synonym", 0.9)])
    assert len(store.edges()) == 2 and [e.weight for e in store.edges(kind="synonym")] == [0.9]
    src, dst, w = store.edge_arrays()
    assert src.dtype == np.int64 and src.shape == dst.shape == w.shape == (2,)
    with pytest.raises(KeyError, match="not found"):
        store.triples("nobody")


# -- migrations --------------------------------------------------------------------------------------------------
def test_v1_file_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(MIGRATIONS[0])
    raw.execute("PRAGMA user_version = 1")
    raw.executemany("INSERT INTO notes (text, created_at, session) VALUES (?, ?, ?)",
                    [("old note one", 1.0, "s"), ("old note two", 2.0, "s")])
    raw.execute("INSERT INTO links (src, dst, kind, weight, created_at) VALUES (1, 2, 'related', 1.0, 0)")
    raw.close()
    with MemoryStore(path, HashingEmbedder(dim=32)) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert [n.text for n in s.notes()] == ["old note one", "old note two"]
        assert s.get_note(1).source == "" and s.links(1)[0].dst == 2  # new column defaulted, old rows kept
        assert s.keyword_search("two")[0][0] == 2  # the v1 FTS index still works
        i = s.add_note("new note", source="file")
        s.add_triple("A", "r", "B", note_id=i)
        assert s.get_note(i).source == "file" and s.integrity_check() == "ok"
    with MemoryStore(path) as s:  # reopening a current file is a no-op
        assert s.count() == 3


def test_newer_file_is_refused(tmp_path):
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer than this code"):
        MemoryStore(path)


# -- crash safety and concurrency --------------------------------------------------------------------------------
KILL_CHILD = """
import sys
s = mod.MemoryStore(sys.argv[1])
for i in range(100000):
    nid = s.add_note(f"memory number {i} " + "x" * (i % 50))
    print(nid, i, flush=True)  # printed only after add_note returned (committed)
"""


def test_sigkill_mid_ingest_loses_no_returned_write(tmp_path):
    path = tmp_path / "crash.db"
    proc = _child(KILL_CHILD, str(path))
    returned: list[tuple[int, int]] = []
    deadline = time.monotonic() + 15
    while len(returned) < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        nid, i = map(int, line.split())
        returned.append((nid, i))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert len(returned) >= 50, f"child wrote only {len(returned)} notes before the deadline"
    with MemoryStore(path) as s:
        assert s.integrity_check() == "ok"
        for nid, i in returned:
            assert s.get_note(nid).text == f"memory number {i} " + "x" * (i % 50)
        assert s.count() >= len(returned)  # maybe one more: committed but not yet reported
        assert s.keyword_search(f"{returned[-1][1]}")[0][0] in {nid for nid, _ in returned} | {s.count()}


WRITER_CHILD = """
import os, sys, time
path, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
s = mod.MemoryStore(path, busy_timeout_ms=1)  # tiny busy timeout: contention goes through the retry loop
while not os.path.exists(go):
    time.sleep(0.005)
for i in range(200):
    s.add_note(f"{tag} note {i}", session=tag)
print(s.stats["retries"], flush=True)
s.close()
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path, go = tmp_path / "shared.db", tmp_path / "go"
    MemoryStore(path).close()
    procs = [_child(WRITER_CHILD, str(path), tag, str(go)) for tag in ("alpha", "beta")]
    time.sleep(0.3)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0 and "locked" not in err and "Traceback" not in err, err
    with MemoryStore(path) as s:
        assert s.count() == 400 and s.integrity_check() == "ok"
        for tag in ("alpha", "beta"):
            assert sorted(n.text for n in s.notes(session=tag)) == sorted(f"{tag} note {i}" for i in range(200))
        assert len({n.id for n in s.notes()}) == 400


def test_busy_error_after_retry_deadline(tmp_path):
    path = tmp_path / "lock.db"
    MemoryStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # hold the write lock
    try:
        with MemoryStore(path, busy_timeout_ms=10, retry_s=0.3) as s:
            t0 = time.monotonic()
            with pytest.raises(StoreBusyError, match="stayed locked"):
                s.add_note("blocked")
            assert time.monotonic() - t0 >= 0.3 and s.stats["retries"] >= 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with MemoryStore(path) as s:
        assert s.count() == 0
        s.add_note("now it works")
        assert s.count() == 1


def test_benchmark_results_found_from_the_package_and_by_path(tmp_path, monkeypatch):
    from labkit.episodic.store import benchmark_results

    monkeypatch.chdir(tmp_path)  # not inside the repository: found next to the package
    res = benchmark_results()
    assert res["benchmark"] == "episodic_store" and [r["n_notes"] for r in res["sizes"]] == [10_000, 100_000]
    for r in res["sizes"]:
        assert r["ingest_batched_notes_per_s"] > 0 and r["dense"]["median_ms"] > 0 and r["keyword"]["median_ms"] > 0
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"benchmark": "episodic_store", "sizes": []}))
    assert benchmark_results(own)["sizes"] == []
    with pytest.raises(FileNotFoundError, match="benchmarks/episodic_store.py"):
        benchmark_results(tmp_path / "missing.json")
