"""A memory on a real database: notes, versions, links, a knowledge graph and embeddings in one SQLite file.

The episodic memory of chapter 5 is a single SQLite file the reader can open with any SQLite tool
(``sqlite3 memory.db '.tables'``). It holds

- ``notes``: what the agent stored — ``text``, the event time ``created_at``, ``session``, ``kind``, A-MEM's
  ``keywords`` / ``tags`` / ``context``, MemOS's provenance ``source``, lifecycle ``status`` ∈ {active, archived,
  deleted} and ``version``;
- ``note_versions``: every update first copies the old row here, so nothing a user stored is ever lost; delete and
  archive are *soft* (a status change, itself versioned);
- ``links`` between notes (A-MEM), ``entities`` + ``aliases``, ``triples`` (subject, relation, object, note, time)
  and entity ``edges`` (HippoRAG's relation and synonym edges);
- ``embeddings``: one float32 blob per (note, model), with the hash of the text it encodes, so the same text and
  model are never encoded twice;
- ``notes_fts``: an FTS5 index of text/keywords/tags, kept in sync by triggers, ranked by BM25,

  $$\\mathrm{bm25}(q, d) = \\sum_{t \\in q} \\mathrm{idf}(t)\\,
    \\frac{f(t, d)\\,(k_1 + 1)}{f(t, d) + k_1 (1 - b + b\\,|d| / \\overline{|d|})},\\quad k_1 = 1.2,\\ b = 0.75 .$$

Dense search scores every active note by cosine similarity, ``s = M q`` with ``M: (n, dim)`` the unit vectors of
the active notes (one matrix, built once and rebuilt only after a write — by this connection or, seen through
``PRAGMA data_version``, by any other) and returns the top k.

Reliability. The file is in WAL mode with ``foreign_keys=ON``; every write is one ``BEGIN IMMEDIATE`` transaction,
so a write that returned is committed (a process killed with SIGKILL loses only writes that had not returned;
``synchronous=NORMAL`` is durable against process crashes, pass ``synchronous="FULL"`` to also survive power loss).
Lock contention is absorbed by SQLite's ``busy_timeout`` and, above it, a retry loop with jittered exponential
back-off, so "database is locked" never reaches the caller (after ``retry_s`` seconds of contention a
:class:`StoreBusyError` says so). The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` is an
ordered list of SQL scripts and opening an older file applies the missing ones, each in one transaction. User data
is always passed as bound parameters, never formatted into SQL; keyword queries are reduced to quoted terms, so
quotes, ``AND``/``OR``/``NEAR`` and ``*`` in a query are plain words.

One :class:`MemoryStore` per thread (sqlite3 connections are not shared across threads); any number of processes
may open the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Edge",
    "Entity",
    "Link",
    "MemoryStore",
    "Note",
    "StoreBusyError",
    "Triple",
    "benchmark_results",
    "fts_query",
]

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# Schema: ordered migrations. Never edit a released script; append a new one.
# ---------------------------------------------------------------------------------------------------------------
_V1 = """
CREATE TABLE notes (
    id         INTEGER PRIMARY KEY,
    text       TEXT NOT NULL,
    created_at REAL NOT NULL,
    session    TEXT,
    kind       TEXT NOT NULL DEFAULT 'note',
    keywords   TEXT NOT NULL DEFAULT '[]',
    tags       TEXT NOT NULL DEFAULT '[]',
    context    TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived', 'deleted')),
    version    INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX notes_session_time ON notes(session, created_at);
CREATE INDEX notes_status ON notes(status);
CREATE TABLE note_versions (
    note_id     INTEGER NOT NULL REFERENCES notes(id),
    version     INTEGER NOT NULL,
    text        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    session     TEXT,
    kind        TEXT NOT NULL,
    keywords    TEXT NOT NULL,
    tags        TEXT NOT NULL,
    context     TEXT NOT NULL,
    status      TEXT NOT NULL,
    archived_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (note_id, version)
);
CREATE TABLE links (
    src        INTEGER NOT NULL REFERENCES notes(id),
    dst        INTEGER NOT NULL REFERENCES notes(id),
    kind       TEXT NOT NULL DEFAULT 'related',
    weight     REAL NOT NULL DEFAULT 1.0,
    created_at REAL NOT NULL,
    PRIMARY KEY (src, dst, kind)
);
CREATE INDEX links_dst ON links(dst);
CREATE VIRTUAL TABLE notes_fts USING fts5(
    text, keywords, tags, content='notes', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER notes_fts_ai AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts(rowid, text, keywords, tags) VALUES (new.id, new.text, new.keywords, new.tags);
END;
CREATE TRIGGER notes_fts_ad AFTER DELETE ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text, keywords, tags)
    VALUES ('delete', old.id, old.text, old.keywords, old.tags);
END;
CREATE TRIGGER notes_fts_au AFTER UPDATE OF text, keywords, tags ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text, keywords, tags)
    VALUES ('delete', old.id, old.text, old.keywords, old.tags);
    INSERT INTO notes_fts(rowid, text, keywords, tags) VALUES (new.id, new.text, new.keywords, new.tags);
END;
"""

_V2 = """
ALTER TABLE notes ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE note_versions ADD COLUMN source TEXT NOT NULL DEFAULT '';
CREATE TABLE entities (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    kind TEXT NOT NULL DEFAULT 'entity'
);
CREATE TABLE aliases (
    alias     TEXT PRIMARY KEY COLLATE NOCASE,
    entity_id INTEGER NOT NULL REFERENCES entities(id)
);
CREATE TABLE triples (
    id         INTEGER PRIMARY KEY,
    subject_id INTEGER NOT NULL REFERENCES entities(id),
    relation   TEXT NOT NULL,
    object_id  INTEGER NOT NULL REFERENCES entities(id),
    note_id    INTEGER REFERENCES notes(id),
    t          REAL
);
CREATE INDEX triples_subject ON triples(subject_id);
CREATE INDEX triples_object ON triples(object_id);
CREATE INDEX triples_note ON triples(note_id);
CREATE TABLE edges (
    src_entity INTEGER NOT NULL REFERENCES entities(id),
    dst_entity INTEGER NOT NULL REFERENCES entities(id),
    kind       TEXT NOT NULL DEFAULT 'relation',
    weight     REAL NOT NULL DEFAULT 1.0,
    PRIMARY KEY (src_entity, dst_entity, kind)
);
CREATE INDEX edges_dst ON edges(dst_entity);
"""

_V3 = """
ALTER TABLE notes ADD COLUMN updated_at REAL;
CREATE TABLE embeddings (
    note_id   INTEGER NOT NULL REFERENCES notes(id),
    model     TEXT NOT NULL,
    dim       INTEGER NOT NULL CHECK (dim > 0),
    vector    BLOB NOT NULL,
    text_hash TEXT NOT NULL,
    PRIMARY KEY (note_id, model)
);
CREATE INDEX embeddings_model_hash ON embeddings(model, text_hash);
"""

#: Ordered schema migrations; ``MIGRATIONS[i]`` takes a file from ``user_version`` i to i + 1.
#: v1 notes, versions, links, FTS5; v2 provenance + entities/aliases/triples/edges; v3 embeddings + updated_at.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)

STATUSES = ("active", "archived", "deleted")
_NOTE_META = ("created_at", "session", "kind", "keywords", "tags", "context", "source", "embedding")
_UPDATABLE = ("text", "created_at", "session", "kind", "keywords", "tags", "context", "source", "status")
_NOTE_COLS = "id, text, created_at, session, kind, keywords, tags, context, source, status, version, updated_at"
_WORD = re.compile(r"\w+", re.UNICODE)


class StoreBusyError(TimeoutError):
    """The database stayed locked by other writers for longer than the store's ``retry_s``."""


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Note:
    """One note (or, from :meth:`MemoryStore.history`, one version of it).

    ``archived_at`` and ``reason`` are set only on past versions: when the version was replaced and why.
    """

    id: int
    text: str
    created_at: float
    session: str | None
    kind: str
    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    context: str
    source: str
    status: str
    version: int
    updated_at: float | None = None
    archived_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Link:
    """A directed, typed, weighted link between two notes."""

    src: int
    dst: int
    kind: str
    weight: float
    created_at: float


@dataclass(frozen=True)
class Entity:
    """A graph node: a named entity (name unique, case-insensitive)."""

    id: int
    name: str
    kind: str


@dataclass(frozen=True)
class Triple:
    """``(subject, relation, object)`` extracted from note ``note_id`` at event time ``t``."""

    id: int
    subject_id: int
    relation: str
    object_id: int
    note_id: int | None
    t: float | None
    subject: str
    object: str


@dataclass(frozen=True)
class Edge:
    """An entity–entity edge of the knowledge graph (``kind`` e.g. 'relation' or 'synonym')."""

    src: int
    dst: int
    kind: str
    weight: float


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def fts_query(query: str, mode: str = "any") -> str | None:
    """Turn free text into a safe FTS5 MATCH expression: every word becomes a quoted term.

    ``'"dog" AND cat*'`` → ``'"dog" OR "AND" OR "cat"'`` (mode "any") — operators, quotes and ``*`` lose their
    meaning, so no user string can make the query fail. Returns None when the query has no word at all.
    """
    if mode not in ("any", "all"):
        raise ValueError(f"mode must be 'any' or 'all', got {mode!r}")
    if not isinstance(query, str):
        raise TypeError(f"query must be str, got {type(query).__name__}")
    terms = list(dict.fromkeys(_WORD.findall(query)))  # \w+ never contains a double quote
    if not terms:
        return None
    return (" OR " if mode == "any" else " AND ").join(f'"{t}"' for t in terms)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (trigger bodies kept whole)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]!r}")
    return out


def text_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text: the cache key of an embedding (together with the model name)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _str_list(value: Any, what: str) -> str:
    if value is None:
        return "[]"
    if isinstance(value, str):
        value = [value]
    items = list(value)
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(v).__name__}")
    return json.dumps(items, ensure_ascii=False)


def _context(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"context must be str or JSON-serialisable, got {type(value).__name__}") from exc


def _opt_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str or None, got {type(value).__name__}")
    return value


def _row_to_note(row: Sequence[Any], archived_at: float | None = None, reason: str | None = None) -> Note:
    return Note(
        id=row[0], text=row[1], created_at=row[2], session=row[3], kind=row[4], keywords=tuple(json.loads(row[5])),
        tags=tuple(json.loads(row[6])), context=row[7], source=row[8], status=row[9], version=row[10],
        updated_at=row[11], archived_at=archived_at, reason=reason,
    )


# ---------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------
class MemoryStore:
    """Episodic memory in one SQLite file (see the module docstring for the schema and the guarantees).

    Args:
        path: the database file (created if missing; an older schema is migrated), or ":memory:".
        embedder: anything with ``name``, ``dim`` and ``encode(texts) -> (N, dim)`` unit rows (see
            ``labkit.episodic.embed``); None stores no vectors and disables :meth:`dense_search`.
        max_text_bytes: largest note text in UTF-8 bytes (1 MB by default).
        busy_timeout_ms: SQLite's own wait on a locked database, per statement.
        retry_s: total time the retry loop keeps trying a locked transaction before :class:`StoreBusyError`.
        synchronous: "NORMAL" (durable against process crashes, the default) or "FULL" (also power loss).
    """

    def __init__(
        self,
        path: str | Path,
        embedder: Any | None = None,
        *,
        max_text_bytes: int = 1_000_000,
        busy_timeout_ms: int = 5_000,
        retry_s: float = 60.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if max_text_bytes < 1:
            raise ValueError(f"max_text_bytes must be >= 1, got {max_text_bytes}")
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be an int >= 0, got {busy_timeout_ms!r}")
        if retry_s <= 0:
            raise ValueError(f"retry_s must be > 0, got {retry_s}")
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be one of OFF/NORMAL/FULL/EXTRA, got {synchronous!r}")
        if embedder is not None and not (hasattr(embedder, "encode") and hasattr(embedder, "dim")
                                         and hasattr(embedder, "name")):
            raise TypeError(f"embedder must have name, dim and encode(texts), got {type(embedder).__name__}")
        self.path = str(path)
        self.embedder = embedder
        self.max_text_bytes = int(max_text_bytes)
        self.retry_s = float(retry_s)
        self.stats = {"retries": 0, "encoded": 0, "cache_hits": 0, "writes": 0}
        self._rng = random.Random(os.getpid())
        self._matrix_gen = 0  # bumped by this connection's writes that change vectors in place (update/delete)
        self._matrix_key: tuple | None = None
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None
        self._buf_ids = np.zeros(0, dtype=np.int64)  # capacity-doubling buffers behind the cached matrix
        self._buf_mat = np.zeros((0, 0), dtype=np.float32)
        self._pending: list[tuple[list[int], list[np.ndarray]]] = []  # own appends since the matrix was built
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
        )
        try:
            c = self._conn
            c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")  # our validated int, not user data
            c.execute("PRAGMA foreign_keys = ON")
            self._retry(lambda conn: conn.execute("PRAGMA journal_mode = WAL").fetchone(), write=False)
            c.execute(f"PRAGMA synchronous = {synchronous}")  # validated against a fixed list above
            self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # -- plumbing -------------------------------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying sqlite3 connection (autocommit mode; prefer the methods, which handle locking)."""
        if self._conn is None:
            raise ValueError("the store is closed")
        return self._conn

    def _retry(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """Run ``fn(conn)`` (in one ``BEGIN IMMEDIATE`` transaction if ``write``), retrying while locked."""
        conn = self.conn
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    if write:
                        conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if write:
                    self.stats["writes"] += 1
                return result
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                attempt += 1
                self.stats["retries"] += 1
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"{self.path} stayed locked by other writers for {self.retry_s:g} s ({attempt} attempts)"
                    ) from exc
                time.sleep(min(0.001 * 2 ** min(attempt, 10), 0.05) * (0.5 + self._rng.random()))

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._retry(fn, write=True)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._retry(fn, write=False)

    def transaction(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(connection)`` in one transaction with the store's busy-retry (for extensions that keep their
        own tables in the same file, as :mod:`labkit.episodic.memos` does). Bind parameters; never format SQL."""
        return self._retry(fn, write=write)

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the file (== ``SCHEMA_VERSION`` once opened)."""
        return self._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {current}, newer than this code's {SCHEMA_VERSION}")
        if current == SCHEMA_VERSION:
            return

        def run(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            for i in range(version, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[i]):
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # a constant of this module

        self._write(run)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._matrix = None
        self._pending = []

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self.count()} active notes"
        return f"MemoryStore({self.path!r}, {state})"

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` ('ok' on a healthy file)."""
        rows = self._read(lambda c: c.execute("PRAGMA integrity_check").fetchall())
        return "\n".join(r[0] for r in rows)

    # -- validation -----------------------------------------------------------------------------------------------
    def _clean_text(self, text: Any, what: str = "text") -> str:
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        if not isinstance(text, str):
            raise TypeError(f"{what} must be str (or UTF-8 bytes), got {type(text).__name__}")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} is not valid Unicode (lone surrogate at index {exc.start})") from None
        if not text.strip():
            raise ValueError(f"{what} must be non-empty, got {text!r}")
        if size > self.max_text_bytes:
            raise ValueError(f"{what} must be at most {self.max_text_bytes} UTF-8 bytes, got {size}")
        return text

    def _clean_vector(self, vec: Any) -> np.ndarray:
        if self.embedder is None:
            raise ValueError("embedding given but the store has no embedder (its name keys the stored vectors)")
        v = np.asarray(vec, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.embedder.dim:
            raise ValueError(f"embedding must have {self.embedder.dim} values, got {v.shape[0]}")
        if not np.all(np.isfinite(v)):
            raise ValueError("embedding must be finite")
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def _prepare(self, text: Any, meta: Mapping[str, Any], now: float) -> dict[str, Any]:
        unknown = set(meta) - set(_NOTE_META)
        if unknown:
            raise ValueError(f"unknown note field(s) {sorted(unknown)}; expected some of {list(_NOTE_META)}")
        created = meta.get("created_at")
        created = now if created is None else float(created)
        if not math.isfinite(created):
            raise ValueError(f"created_at must be finite, got {created}")
        kind = meta.get("kind") or "note"
        if not isinstance(kind, str):
            raise TypeError(f"kind must be str, got {type(kind).__name__}")
        text = self._clean_text(text)
        return {
            "text": text, "created_at": created, "session": _opt_str(meta.get("session"), "session"), "kind": kind,
            "keywords": _str_list(meta.get("keywords"), "keywords"), "tags": _str_list(meta.get("tags"), "tags"),
            "context": _context(meta.get("context")), "source": _opt_str(meta.get("source"), "source") or "",
            "embedding": None if meta.get("embedding") is None else self._clean_vector(meta["embedding"]),
            "hash": text_hash(text),
        }

    def _vectors_for(self, rows: list[dict[str, Any]]) -> None:
        """Fill row["embedding"] for rows without one: cached (same text + model) or encoded in one batch."""
        if self.embedder is None:
            return
        need = {r["hash"]: r["text"] for r in rows if r["embedding"] is None}
        if not need:
            return
        model = self.embedder.name
        cached: dict[str, np.ndarray] = {}
        hashes = list(need)
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT text_hash, vector FROM embeddings WHERE model = ? AND text_hash IN ({marks})"
            for h, blob in self._read(lambda c, s=sql, p=[model, *chunk]: c.execute(s, p).fetchall()):
                cached[h] = np.frombuffer(blob, dtype=np.float32)
        missing = [h for h in hashes if h not in cached]
        self.stats["cache_hits"] += len(hashes) - len(missing)
        if missing:
            vecs = np.asarray(self.embedder.encode([need[h] for h in missing]), dtype=np.float32)
            if vecs.shape != (len(missing), self.embedder.dim):
                raise ValueError(f"embedder returned shape {vecs.shape}, expected {(len(missing), self.embedder.dim)}")
            self.stats["encoded"] += len(missing)
            cached.update(zip(missing, vecs))
        for r in rows:
            if r["embedding"] is None:
                r["embedding"] = cached[r["hash"]]

    # -- notes ----------------------------------------------------------------------------------------------------
    def add_note(self, text: str | bytes, **meta: Any) -> int:
        """Store one note and return its id. Keyword fields: created_at (event time, s; default now), session,
        kind ('note'), keywords / tags (lists of str), context (str or JSON-able), source (provenance), embedding
        (a precomputed ``(dim,)`` vector; otherwise the embedder encodes the text, or reuses a cached vector)."""
        return self.add_notes([{"text": text, **meta}])[0]

    def add_notes(self, batch: Iterable[str | bytes | Mapping[str, Any]]) -> list[int]:
        """Store many notes in one transaction (``executemany``); items are texts or dicts with "text" + fields of
        :meth:`add_note`. Returns the new ids in order. All-or-nothing: one invalid item stores none."""
        now = time.time()
        rows = []
        for i, item in enumerate(batch):
            if isinstance(item, Mapping):
                if "text" not in item:
                    raise ValueError(f"batch[{i}] has no 'text'")
                meta = {k: v for k, v in item.items() if k != "text"}
                rows.append(self._prepare(item["text"], meta, now))
            else:
                rows.append(self._prepare(item, {}, now))
        if not rows:
            return []
        self._vectors_for(rows)
        model = None if self.embedder is None else self.embedder.name

        def run(conn: sqlite3.Connection) -> list[int]:
            first = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM notes").fetchone()[0]
            ids = list(range(first, first + len(rows)))
            conn.executemany(
                "INSERT INTO notes (id, text, created_at, session, kind, keywords, tags, context, source, status, "
                "version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', 1)",
                [(i, r["text"], r["created_at"], r["session"], r["kind"], r["keywords"], r["tags"], r["context"],
                  r["source"]) for i, r in zip(ids, rows)],
            )
            if model is not None:
                conn.executemany(
                    "INSERT INTO embeddings (note_id, model, dim, vector, text_hash) VALUES (?, ?, ?, ?, ?)",
                    [(i, model, r["embedding"].shape[0], r["embedding"].astype(np.float32).tobytes(), r["hash"])
                     for i, r in zip(ids, rows)],
                )
            return ids

        ids = self._write(run)
        if model is not None and self._matrix is not None:
            if sum(len(p[0]) for p in self._pending) + len(ids) > 50_000:
                self._matrix = None  # too much to carry: rebuild from the file on the next search
                self._pending = []
            else:
                self._pending.append((ids, [r["embedding"] for r in rows]))
        return ids

    def get_note(self, note_id: int) -> Note:
        """The current version of a note (any status). KeyError if the id does not exist."""
        note_id = self._id(note_id, "note_id")
        row = self._read(lambda c: c.execute(f"SELECT {_NOTE_COLS} FROM notes WHERE id = ?", (note_id,)).fetchone())
        if row is None:
            raise KeyError(f"note id {note_id} not found")
        return _row_to_note(row)

    def get_notes(self, ids: Sequence[int]) -> list[Note]:
        """Several notes in the order of ``ids`` (KeyError naming the first missing id)."""
        ids = [self._id(i, "ids[]") for i in ids]
        found: dict[int, Note] = {}
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            sql = f"SELECT {_NOTE_COLS} FROM notes WHERE id IN ({','.join('?' * len(chunk))})"
            for row in self._read(lambda c, q=sql, p=chunk: c.execute(q, p).fetchall()):
                found[row[0]] = _row_to_note(row)
        for i in ids:
            if i not in found:
                raise KeyError(f"note id {i} not found")
        return [found[i] for i in ids]

    def notes(self, status: str | None = "active", session: str | None = None) -> list[Note]:
        """All notes with this status (None: any) [and session], ordered by (created_at, id)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
        sql = f"SELECT {_NOTE_COLS} FROM notes WHERE (? IS NULL OR status = ?) AND (? IS NULL OR session = ?) " \
              "ORDER BY created_at, id"
        rows = self._read(lambda c: c.execute(sql, (status, status, session, session)).fetchall())
        return [_row_to_note(r) for r in rows]

    @staticmethod
    def _id(value: Any, what: str) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{what} must be an int, got {type(value).__name__}")
        return int(value)

    def update_note(self, note_id: int, *, reason: str = "update", **changes: Any) -> Note:
        """Change fields of a note (text, created_at, session, kind, keywords, tags, context, source, status).

        The old row is first copied to ``note_versions`` (with ``reason``, e.g. MemOS's 'conflict' / 'duplicate'),
        then the note gets ``version + 1``. A new text is re-embedded (or its cached vector reused). Returns the new
        version. KeyError for an unknown id, ValueError for an unknown field or bad value.
        """
        note_id = self._id(note_id, "note_id")
        unknown = set(changes) - set(_UPDATABLE)
        if unknown:
            raise ValueError(f"cannot update field(s) {sorted(unknown)}; expected some of {list(_UPDATABLE)}")
        if not changes:
            raise ValueError("update_note needs at least one field to change")
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty str, got {reason!r}")
        sets: dict[str, Any] = {}
        new_vec: dict[str, Any] | None = None
        for key, value in changes.items():
            if key == "text":
                text = self._clean_text(value)
                sets["text"] = text
                if self.embedder is not None:
                    new_vec = {"text": text, "hash": text_hash(text), "embedding": None}
            elif key == "status":
                if value not in STATUSES:
                    raise ValueError(f"status must be one of {STATUSES}, got {value!r}")
                sets["status"] = value
            elif key == "created_at":
                sets["created_at"] = float(value)
            elif key in ("keywords", "tags"):
                sets[key] = _str_list(value, key)
            elif key == "context":
                sets[key] = _context(value)
            elif key == "kind":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"kind must be a non-empty str, got {value!r}")
                sets[key] = value
            elif key == "source":
                sets[key] = _opt_str(value, "source") or ""
            else:  # session
                sets[key] = _opt_str(value, key)
        if new_vec is not None:
            self._vectors_for([new_vec])
        now = time.time()
        model = None if self.embedder is None else self.embedder.name

        def run(conn: sqlite3.Connection) -> None:
            old = conn.execute(
                "SELECT version, text, created_at, session, kind, keywords, tags, context, status, source "
                "FROM notes WHERE id = ?", (note_id,)).fetchone()
            if old is None:
                raise KeyError(f"note id {note_id} not found")
            conn.execute(
                "INSERT INTO note_versions (note_id, version, text, created_at, session, kind, keywords, tags, "
                "context, status, source, archived_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (note_id, *old, now, reason),
            )
            assignments = ", ".join(f"{k} = ?" for k in sets)  # keys from the fixed _UPDATABLE whitelist
            conn.execute(
                f"UPDATE notes SET {assignments}, version = version + 1, updated_at = ? WHERE id = ?",
                (*sets.values(), now, note_id),
            )
            if new_vec is not None and model is not None:
                v = new_vec["embedding"]
                conn.execute(
                    "INSERT OR REPLACE INTO embeddings (note_id, model, dim, vector, text_hash) VALUES (?, ?, ?, ?, ?)",
                    (note_id, model, v.shape[0], v.astype(np.float32).tobytes(), new_vec["hash"]),
                )

        self._write(run)
        if "text" in sets or "status" in sets:  # tags/context/... leave the vectors and the active set as they are
            self._matrix_gen += 1
        return self.get_note(note_id)

    def history(self, note_id: int) -> list[Note]:
        """Every version of a note, oldest first; the last one is the current note (``archived_at`` None)."""
        current = self.get_note(note_id)
        rows = self._read(lambda c: c.execute(
            "SELECT note_id, text, created_at, session, kind, keywords, tags, context, source, status, version, NULL, "
            "archived_at, reason FROM note_versions WHERE note_id = ? ORDER BY version", (current.id,)).fetchall())
        return [_row_to_note(r[:12], archived_at=r[12], reason=r[13]) for r in rows] + [current]

    def delete(self, note_id: int, reason: str = "delete") -> Note:
        """Soft delete: status 'deleted' (versioned; the text stays in the file and in :meth:`history`)."""
        return self.update_note(note_id, status="deleted", reason=reason)

    def archive(self, note_id: int, reason: str = "archive") -> Note:
        """Status 'archived': kept, but no longer returned by searches."""
        return self.update_note(note_id, status="archived", reason=reason)

    def restore(self, note_id: int, reason: str = "restore") -> Note:
        """Back to status 'active'."""
        return self.update_note(note_id, status="active", reason=reason)

    def count(self, status: str | None = "active") -> int:
        """Number of notes with this status (None: all)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
        return self._read(lambda c: c.execute(
            "SELECT COUNT(*) FROM notes WHERE ? IS NULL OR status = ?", (status, status)).fetchone()[0])

    # -- links ----------------------------------------------------------------------------------------------------
    def link(self, src: int, dst: int, kind: str = "related", weight: float = 1.0) -> None:
        """Add (or re-weight) the link src → dst of this kind. KeyError if either note does not exist."""
        self.link_many([(src, dst, kind, weight)])

    def link_many(self, rows: Iterable[tuple[int, int, str, float]]) -> None:
        """Add many (src, dst, kind, weight) links in one transaction."""
        now = time.time()
        clean = []
        for src, dst, kind, weight in rows:
            src, dst = self._id(src, "src"), self._id(dst, "dst")
            if src == dst:
                raise ValueError(f"a note cannot link to itself (src = dst = {src})")
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"kind must be a non-empty str, got {kind!r}")
            if not math.isfinite(float(weight)):
                raise ValueError(f"weight must be finite, got {weight}")
            clean.append((src, dst, kind, float(weight), now))
        if not clean:
            return

        def run(conn: sqlite3.Connection) -> None:
            for nid in sorted({r[0] for r in clean} | {r[1] for r in clean}):
                if conn.execute("SELECT 1 FROM notes WHERE id = ?", (nid,)).fetchone() is None:
                    raise KeyError(f"note id {nid} not found")
            conn.executemany(
                "INSERT INTO links (src, dst, kind, weight, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(src, dst, kind) DO UPDATE SET weight = excluded.weight", clean)

        self._write(run)

    def links(self, note_id: int, direction: str = "out", kind: str | None = None) -> list[Link]:
        """Links of a note: 'out' (src = id), 'in' (dst = id) or 'both'; optionally one kind."""
        note_id = self._id(note_id, "note_id")
        if direction not in ("out", "in", "both"):
            raise ValueError(f"direction must be 'out', 'in' or 'both', got {direction!r}")
        src = note_id if direction in ("out", "both") else None
        dst = note_id if direction in ("in", "both") else None
        rows = self._read(lambda c: c.execute(
            "SELECT src, dst, kind, weight, created_at FROM links WHERE (src = ? OR dst = ?) "
            "AND (? IS NULL OR kind = ?) ORDER BY src, dst, kind", (src, dst, kind, kind)).fetchall())
        return [Link(*r) for r in rows]

    # -- entities, triples, edges ---------------------------------------------------------------------------------
    @staticmethod
    def _name(value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{what} must be a non-empty str, got {value!r}")
        return value.strip()

    @staticmethod
    def _entity_in(conn: sqlite3.Connection, ref: int | str, kind: str = "entity", create: bool = True) -> int:
        if isinstance(ref, str):
            name = MemoryStore._name(ref, "entity name")
            row = conn.execute("SELECT id FROM entities WHERE name = ?", (name,)).fetchone()
            if row is None:
                row = conn.execute("SELECT entity_id FROM aliases WHERE alias = ?", (name,)).fetchone()
            if row is not None:
                return row[0]
            if not create:
                raise KeyError(f"entity {name!r} not found")
            return conn.execute("INSERT INTO entities (name, kind) VALUES (?, ?)", (name, kind)).lastrowid
        eid = MemoryStore._id(ref, "entity")
        if conn.execute("SELECT 1 FROM entities WHERE id = ?", (eid,)).fetchone() is None:
            raise KeyError(f"entity id {eid} not found")
        return eid

    def add_entity(self, name: str, kind: str = "entity") -> int:
        """Get-or-create an entity by name (case-insensitive; an alias resolves to its entity). Returns its id."""
        name = self._name(name, "name")
        return self._write(lambda c: self._entity_in(c, name, kind))

    def alias(self, alias: str, entity: int | str) -> int:
        """Make ``alias`` another name of ``entity`` (id or name; created if a new name). Returns the entity id."""
        alias = self._name(alias, "alias")

        def run(conn: sqlite3.Connection) -> int:
            eid = self._entity_in(conn, entity)
            clash = conn.execute("SELECT id FROM entities WHERE name = ?", (alias,)).fetchone()
            if clash is not None and clash[0] != eid:
                raise ValueError(f"alias {alias!r} is already the name of entity {clash[0]}")
            conn.execute("INSERT INTO aliases (alias, entity_id) VALUES (?, ?) "
                         "ON CONFLICT(alias) DO UPDATE SET entity_id = excluded.entity_id", (alias, eid))
            return eid

        return self._write(run)

    def resolve(self, name: str) -> int | None:
        """The entity id of a name or alias (case-insensitive), None if unknown."""
        name = self._name(name, "name")

        def run(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT id FROM entities WHERE name = ?", (name,)).fetchone()
            if row is None:
                row = conn.execute("SELECT entity_id FROM aliases WHERE alias = ?", (name,)).fetchone()
            return None if row is None else row[0]

        return self._read(run)

    def entities(self, kind: str | None = None) -> list[Entity]:
        """All entities (of one kind), by id."""
        rows = self._read(lambda c: c.execute(
            "SELECT id, name, kind FROM entities WHERE ? IS NULL OR kind = ? ORDER BY id", (kind, kind)).fetchall())
        return [Entity(*r) for r in rows]

    def aliases(self, entity: int | str) -> list[str]:
        """The aliases of an entity (KeyError if unknown)."""
        def run(conn: sqlite3.Connection) -> list[str]:
            eid = self._entity_in(conn, entity, create=False)
            return [r[0] for r in conn.execute("SELECT alias FROM aliases WHERE entity_id = ? ORDER BY alias", (eid,))]

        return self._read(run)

    def add_triple(self, subject: int | str, relation: str, object: int | str, note_id: int | None = None,
                   t: float | None = None) -> int:
        """Store (subject, relation, object) [from note ``note_id``, at event time ``t``]; entity names are
        get-or-created. Returns the triple id."""
        return self.add_triples([(subject, relation, object, note_id, t)])[0]

    def add_triples(self, rows: Iterable[tuple]) -> list[int]:
        """Many ``(subject, relation, object[, note_id[, t]])`` in one transaction. Returns their ids."""
        clean = []
        for i, row in enumerate(rows):
            if not 3 <= len(row) <= 5:
                raise ValueError(f"rows[{i}] must be (subject, relation, object[, note_id[, t]]), got {len(row)} items")
            s, r, o, nid, t = (*row, None, None)[:5]
            r = self._name(r, f"rows[{i}] relation")
            nid = None if nid is None else self._id(nid, "note_id")
            clean.append((s, r, o, nid, None if t is None else float(t)))

        def run(conn: sqlite3.Connection) -> list[int]:
            out = []
            for s, r, o, nid, t in clean:
                if nid is not None and conn.execute("SELECT 1 FROM notes WHERE id = ?", (nid,)).fetchone() is None:
                    raise KeyError(f"note id {nid} not found")
                sid, oid = self._entity_in(conn, s), self._entity_in(conn, o)
                out.append(conn.execute(
                    "INSERT INTO triples (subject_id, relation, object_id, note_id, t) VALUES (?, ?, ?, ?, ?)",
                    (sid, r, oid, nid, t)).lastrowid)
            return out

        return self._write(run) if clean else []

    def triples(self, entity: int | str | None = None, relation: str | None = None,
                note_id: int | None = None) -> list[Triple]:
        """Triples touching ``entity`` (as subject or object), with ``relation``, from ``note_id`` (all optional)."""
        def run(conn: sqlite3.Connection) -> list[Triple]:
            eid = None if entity is None else self._entity_in(conn, entity, create=False)
            rows = conn.execute(
                "SELECT t.id, t.subject_id, t.relation, t.object_id, t.note_id, t.t, s.name, o.name FROM triples t "
                "JOIN entities s ON s.id = t.subject_id JOIN entities o ON o.id = t.object_id "
                "WHERE (? IS NULL OR t.subject_id = ? OR t.object_id = ?) AND (? IS NULL OR t.relation = ?) "
                "AND (? IS NULL OR t.note_id = ?) ORDER BY t.id",
                (eid, eid, eid, relation, relation, note_id, note_id)).fetchall()
            return [Triple(*r) for r in rows]

        return self._read(run)

    def add_edge(self, src: int | str, dst: int | str, kind: str = "relation", weight: float = 1.0) -> None:
        """Add (or re-weight) the entity edge src → dst of this kind ('relation', 'synonym', ...)."""
        self.add_edges([(src, dst, kind, weight)])

    def add_edges(self, rows: Iterable[tuple[int | str, int | str, str, float]]) -> None:
        """Many (src, dst, kind, weight) entity edges in one transaction (entity names get-or-created)."""
        clean = []
        for src, dst, kind, weight in rows:
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"kind must be a non-empty str, got {kind!r}")
            if not math.isfinite(float(weight)):
                raise ValueError(f"weight must be finite, got {weight}")
            clean.append((src, dst, kind, float(weight)))

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO edges (src_entity, dst_entity, kind, weight) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(src_entity, dst_entity, kind) DO UPDATE SET weight = excluded.weight",
                [(self._entity_in(conn, s), self._entity_in(conn, d), k, w) for s, d, k, w in clean])

        if clean:
            self._write(run)

    def edges(self, kind: str | None = None, entity: int | str | None = None) -> list[Edge]:
        """Entity edges (of one kind, touching one entity), ordered by (src, dst, kind)."""
        def run(conn: sqlite3.Connection) -> list[Edge]:
            eid = None if entity is None else self._entity_in(conn, entity, create=False)
            rows = conn.execute(
                "SELECT src_entity, dst_entity, kind, weight FROM edges WHERE (? IS NULL OR kind = ?) "
                "AND (? IS NULL OR src_entity = ? OR dst_entity = ?) ORDER BY src_entity, dst_entity, kind",
                (kind, kind, eid, eid, eid)).fetchall()
            return [Edge(*r) for r in rows]

        return self._read(run)

    def edge_arrays(self, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The edge list as arrays ``src: (E,) int64, dst: (E,) int64, weight: (E,) float64`` (to build a CSR)."""
        rows = self._read(lambda c: c.execute(
            "SELECT src_entity, dst_entity, weight FROM edges WHERE ? IS NULL OR kind = ? ORDER BY src_entity, "
            "dst_entity", (kind, kind)).fetchall())
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        return a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2]

    # -- search ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        return int(k)

    def keyword_search(self, query: str, k: int = 10, mode: str = "any") -> list[tuple[int, float]]:
        """Top-k active notes by FTS5 BM25 over text, keywords and tags: ``[(id, score)]``, best first.

        ``score = -bm25`` (higher is better). Every word of ``query`` is a quoted term ('any': OR, 'all': AND), so
        quotes, operators and ``*`` in user text never raise. A query without words returns [].
        """
        k = self._k(k)
        match = fts_query(query, mode)
        if match is None:
            return []
        rows = self._read(lambda c: c.execute(
            "SELECT n.id, bm25(notes_fts) AS r FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid "
            "WHERE notes_fts MATCH ? AND n.status = 'active' ORDER BY r, n.id LIMIT ?", (match, k)).fetchall())
        return [(int(i), -float(r)) for i, r in rows]

    def embedding_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``ids: (n,) int64`` and ``M: (n, dim) float32`` (unit rows) of the active notes, for this embedder.

        Cached. Notes added through this store are appended to the cached matrix (amortised O(new rows)); updates
        of other fields than text and status keep it; a text change, archive, delete or restore here, or a commit by
        another connection (``PRAGMA data_version``), rebuilds it from the file. Read-only arrays: do not modify them.
        """
        if self.embedder is None:
            raise ValueError("the store has no embedder; pass embedder=... to MemoryStore")
        model, dim = self.embedder.name, self.embedder.dim
        key = (model, dim, self._matrix_gen, self._read(lambda c: c.execute("PRAGMA data_version").fetchone()[0]))
        if self._matrix is None or self._matrix_key != key:
            rows = self._read(lambda c: c.execute(
                "SELECT e.note_id, e.vector FROM embeddings e JOIN notes n ON n.id = e.note_id "
                "WHERE e.model = ? AND n.status = 'active' AND e.dim = ? ORDER BY e.note_id", (model, dim)).fetchall())
            n = len(rows)
            cap = max(1024, n + n // 2)
            self._buf_ids = np.empty(cap, dtype=np.int64)
            self._buf_mat = np.empty((cap, dim), dtype=np.float32)  # aligned (a view on bytes would not be)
            self._buf_ids[:n] = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
            self._buf_mat[:n] = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(n, dim)
            self._pending = []
            self._set_matrix(n, key)
        elif self._pending:
            new_ids = [i for ids, _ in self._pending for i in ids]
            new_vecs = [v for _, vecs in self._pending for v in vecs]
            n0, n1 = len(self._matrix[0]), len(self._matrix[0]) + len(new_ids)
            if n1 > len(self._buf_ids):
                cap = max(2 * len(self._buf_ids), n1)
                ids_buf, mat_buf = np.empty(cap, dtype=np.int64), np.empty((cap, dim), dtype=np.float32)
                ids_buf[:n0], mat_buf[:n0] = self._buf_ids[:n0], self._buf_mat[:n0]
                self._buf_ids, self._buf_mat = ids_buf, mat_buf
            self._buf_ids[n0:n1] = new_ids  # new ids are larger than every stored id: the order by id holds
            self._buf_mat[n0:n1] = np.stack(new_vecs)
            self._pending = []
            self._set_matrix(n1, key)
        return self._matrix

    def _set_matrix(self, n: int, key: tuple) -> None:
        ids, mat = self._buf_ids[:n].view(), self._buf_mat[:n].view()
        ids.flags.writeable = False
        mat.flags.writeable = False
        self._matrix, self._matrix_key = (ids, mat), key

    def dense_search(self, query: str | np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        """Top-k active notes by cosine similarity to ``query`` (a text, encoded by the embedder, or a ``(dim,)``
        vector): ``[(id, score)]``, best first, ties by smaller id."""
        k = self._k(k)
        if self.embedder is None:
            raise ValueError("dense_search needs an embedder; pass embedder=... to MemoryStore")
        if isinstance(query, str):
            q = np.asarray(self.embedder.encode([self._clean_text(query, "query")]), dtype=np.float32)[0]
        else:
            q = self._clean_vector(query)
        ids, mat = self.embedding_matrix()
        if len(ids) == 0:
            return []
        scores = mat @ q
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        top = top[np.lexsort((ids[top], -scores[top]))]
        return [(int(ids[i]), float(scores[i])) for i in top]


# ---------------------------------------------------------------------------------------------------------------
# The committed benchmark
# ---------------------------------------------------------------------------------------------------------------
BENCHMARK_FILE = "episodic-store-vm.json"


def benchmark_results(path: str | Path | None = None) -> dict:
    """The store benchmark written by ``python benchmarks/episodic_store.py`` (ingest rate and query latency at 10k
    and 100k notes, MiniLM encode throughput; see that script for what each number measures).

    ``path`` if given; otherwise ``benchmarks/results/episodic-store-vm.json`` of the repository this package lives
    in, then of the current directory or any folder above it (a notebook runs in ``book/``). FileNotFoundError
    naming the command that writes it when there is none (e.g. labkit installed without the repository).
    """
    if path is not None:
        candidates = [Path(path)]
    else:
        rel = Path("benchmarks") / "results" / BENCHMARK_FILE
        here = Path.cwd().resolve()
        candidates = [Path(__file__).resolve().parents[2] / rel] + [base / rel for base in (here, *here.parents)]
    for c in candidates:
        if c.is_file():
            return json.loads(c.read_text())
    raise FileNotFoundError(f"no store benchmark at {candidates[0]}: run `python benchmarks/episodic_store.py` "
                            "in the repository to write it")
