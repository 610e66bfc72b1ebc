r"""MemOS: memories as managed resources — MemCubes with provenance, versions, a lifecycle and three memory types.

Both MemOS papers ("MemOS: A Memory OS for AI System"; "MemOS: An Operating System for Memory-Augmented Generation
(MAG) in Large Language Models") make **memory a system resource**: the unit is the **MemCube**, content plus
metadata (provenance, version, status, type), and every memory of the model is one of three types:

- **plaintext** — text the model reads (here: a note of :class:`~labkit.episodic.store.MemoryStore`);
- **activation** — runtime state: the KV cache of a text prefix for chapter 1's TinyLM, keys/values
  ``(B, n_kv_heads, T, head_dim)`` per layer, stored as a BLOB with dtype/shape. Reloading it and decoding the next
  token gives the logits of recomputing the whole prefix, without the prefill: $\mathrm{logits}(x_{T+1}\mid
  \mathrm{KV}(x_{1..T})) = \mathrm{logits}(x_{1..T+1})_{T+1}$;
- **parametric** — weights: a LoRA adapter (chapter 4) or any small tensor dict, also a BLOB.

Lifecycle: ``create`` → ``read`` (counts accesses) → ``update`` (a new version; the old one is kept in
``note_versions``, tensors are kept per version) → ``archive`` / ``restore`` / ``delete`` (soft) → ``expire``
(status *archived* once ``now ≥ created + ttl``) → ``consolidate`` (identical plaintext cubes merged: the oldest is
kept, the others soft-deleted with a ``duplicate_of`` link). Nothing is ever erased from the file.

**Transitions.** ``promote`` turns a plaintext cube into an activation cube (its KV cache, linked ``derived_from``;
the text stays as the auditable source); ``schedule`` is a minimal scheduler: promote every plaintext cube read at
least ``min_access`` times, archive caches whose source changed (reason ``stale``). ``size`` reports the bytes of a
cube. Plaintext → parametric (distilling text into weights) is not implemented: :func:`lora_tensors` /
:func:`merge_lora` only store and apply an adapter.

**Conflicting facts.** A fact ``(subject, relation)`` is one plaintext cube whose content is the value a policy
resolves from the claims seen so far; a claim ``c = (v_c, t_c, \text{source}_c, r_c, s_c)`` has a value, a time, a
source with reliability $r_c \in (0, 1)$ and a strength (coherence) $s_c \in (0, 1]$. Policies:

- ``lww`` last write wins: $v = v_{c^*}$, $c^* = \arg\max_c t_c$;  ``fww`` first write wins: $\arg\min_c t_c$;
- ``majority``: $v = \arg\max_v |\{c: v_c = v\}|$ (every claim counts 1: popularity, sources ignored);
- ``credibility``: $v = \arg\max_v \sum_{c: v_c = v} w_c$, $w_c = s_c \,\mathrm{logit}(r_c)$ (clipped at 0.05);
- ``recency_vote``: $v = \arg\max_v \sum_{c: v_c = v} w_c\, 2^{-(t_{\mathrm{ref}} - t_c)/h}$, $t_{\mathrm{ref}}$ the
  newest claim's time, $h$ the half-life: support counts, credible support counts more, old support fades.

Ties go to the value of the newest tied claim. Every change of the resolved value writes a version (reason
``conflict``) with ``created_at`` = the claim time, so "what was X's Y at time t" is read from the version history.

:func:`noise_sweep` measures every policy as the share of claims from unreliable sources grows (no database needed:
:func:`resolve` gives exactly what a :class:`FactMemory` stores); :func:`activation_benchmark` checks and times
activation memory against recomputing the prefix.

**Knowledge clashes** ("Adaptive Chameleon or Stubborn Sloth", Xie et al.): the *parametric* belief is the first
claim (source ``parametric``, reliability = the model's confidence); external evidence follows. We do **not** run an
LLM: the "model" is one of the policies (``fww`` = a stubborn sloth, ``lww`` = an adaptive chameleon, the weighted
votes in between), and we measure how often it keeps its memory (memorization ratio) as
the evidence varies in coherence (partial vs full support), credibility, amount, and whether one passage agrees with
the memory (the paper's confirmation-bias setting); :func:`coherence_sweep` traces it against the strength $s$.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from labkit.episodic.store import MemoryStore, Note

__all__ = [
    "CLASH_CONDITIONS",
    "MEMORY_TYPES",
    "POLICIES",
    "SOURCES",
    "SWEEP_SOURCES",
    "UNRELIABLE",
    "Claim",
    "FactMemory",
    "MemCube",
    "MemOS",
    "activation_benchmark",
    "clash_experiment",
    "coherence_sweep",
    "english_prefix",
    "fact_stream",
    "kv_from_tensors",
    "kv_to_tensors",
    "lora_tensors",
    "merge_lora",
    "noise_sweep",
    "resolve",
    "run_experiments",
    "stream_experiment",
]

MEMORY_TYPES = ("plaintext", "activation", "parametric")
POLICIES = ("lww", "fww", "majority", "credibility", "recency_vote")
#: source -> reliability (probability that its claim is the true, current value)
SOURCES: dict[str, float] = {"registry": 0.95, "news": 0.85, "blog": 0.7, "forum": 0.55}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS memcube_meta (note_id INTEGER PRIMARY KEY REFERENCES notes(id), "
    "memory_type TEXT NOT NULL, priority REAL NOT NULL DEFAULT 0, ttl REAL, expires_at REAL, "
    "access_count INTEGER NOT NULL DEFAULT 0, last_access REAL)",
    "CREATE INDEX IF NOT EXISTS memcube_meta_expiry ON memcube_meta(expires_at)",
    "CREATE TABLE IF NOT EXISTS memcube_blobs (note_id INTEGER NOT NULL REFERENCES notes(id), "
    "version INTEGER NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL, "
    "PRIMARY KEY (note_id, version, name))",
)
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


# ---------------------------------------------------------------------------------------------------------------
# Tensor <-> BLOB
# ---------------------------------------------------------------------------------------------------------------
def _to_blob(t: torch.Tensor) -> tuple[str, str, bytes]:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"tensor dtype must be one of {sorted(_DTYPES)}, got {name}")
    x = t.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:  # numpy has no bfloat16: store its 16 bits
        x = x.view(torch.int16)
    return name, json.dumps(list(t.shape)), x.numpy().tobytes()


def _from_blob(dtype: str, shape: str, data: bytes) -> torch.Tensor:
    dims = tuple(json.loads(shape))
    if dtype == "bfloat16":
        arr = np.frombuffer(data, dtype=np.int16).copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(dims)
    arr = np.frombuffer(data, dtype=str(_DTYPES[dtype]).removeprefix("torch.")).copy()
    return torch.from_numpy(arr).reshape(dims)


def kv_to_tensors(cache: Any) -> dict[str, torch.Tensor]:
    """A TinyLM ``KVCache`` as a flat dict: ``k{l}``, ``v{l}``: (B, n_kv_heads, T, head_dim), ``tokens`` and
    ``positions``: (B, T) int64."""
    if not all(hasattr(cache, a) for a in ("keys", "values", "tokens", "positions")):
        raise ValueError(f"cache must be a KVCache (keys, values, tokens, positions), got {type(cache).__name__}")
    out = {f"k{i}": k for i, k in enumerate(cache.keys)}
    out.update({f"v{i}": v for i, v in enumerate(cache.values)})
    out["tokens"], out["positions"] = cache.tokens, cache.positions
    return out


def kv_from_tensors(model: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild a ``KVCache`` for ``model`` from :func:`kv_to_tensors`' dict (ValueError if the shapes do not fit)."""
    cfg = model.config
    missing = [n for n in ("tokens", "positions", *(f"{p}{i}" for p in "kv" for i in range(cfg.n_layers)))
               if n not in tensors]
    if missing:
        raise ValueError(f"tensors lack {missing} for a {cfg.n_layers}-layer model")
    tokens = tensors["tokens"]
    cache = model.new_cache(int(tokens.shape[0]))
    want = (tokens.shape[0], cfg.n_kv_heads, tokens.shape[1], cfg.head_dim)
    dev = cache.tokens.device
    for i in range(cfg.n_layers):
        k, v = tensors[f"k{i}"], tensors[f"v{i}"]
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"layer {i} K/V must have shape {want}, got {tuple(k.shape)} / {tuple(v.shape)}")
        cache.keys[i], cache.values[i] = k.to(dev), v.to(dev)
    cache.tokens, cache.positions = tokens.to(dev).long(), tensors["positions"].to(dev).long()
    return cache


# ---------------------------------------------------------------------------------------------------------------
# MemCube and the MemOS store
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemCube:
    """One memory: content + metadata. ``tensors`` is filled for activation / parametric cubes by :meth:`MemOS.read`.

    ``meta`` is the free metadata dict given at creation (e.g. the fact key, the model id of a KV cache).
    """

    id: int
    content: str
    memory_type: str
    source: str
    version: int
    status: str
    created_at: float
    updated_at: float | None
    access_count: int
    priority: float
    ttl: float | None
    expires_at: float | None
    meta: dict
    tensors: dict[str, torch.Tensor] | None = None


def _check_number(name: str, value: Any, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if strict else v < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return v


class MemOS:
    """MemCubes on top of a :class:`MemoryStore` (same SQLite file; two extra tables ``memcube_meta`` and
    ``memcube_blobs``). Content and status live in the store's ``notes`` (kind ``memcube:<type>``), so versions,
    provenance and soft delete are the store's; tensors are BLOBs keyed by (note, version, name).
    """

    def __init__(self, store: MemoryStore) -> None:
        if not isinstance(store, MemoryStore):
            raise ValueError(f"store must be a MemoryStore, got {type(store).__name__}")
        self.store = store
        self.store.transaction(lambda c: [c.execute(s) for s in _SCHEMA])

    # -- create ---------------------------------------------------------------------------------------------------
    def create(self, content: str, memory_type: str = "plaintext", *, source: str = "",
               tensors: Mapping[str, torch.Tensor] | None = None, priority: float = 0.0, ttl: float | None = None,
               now: float | None = None, meta: Mapping[str, Any] | None = None) -> int:
        """Store a new cube and return its id. ``tensors`` is required for activation / parametric cubes (a dict
        name -> tensor) and not allowed for plaintext; ``ttl`` (seconds or days, same unit as ``now``) makes it expire
        at ``now + ttl``; ``now`` defaults to ``time.time()``."""
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {MEMORY_TYPES}, got {memory_type!r}")
        tensors = self._check_tensors(tensors, memory_type)
        priority = _check_number("priority", priority)
        if ttl is not None:
            ttl = _check_number("ttl", ttl, 0.0, strict=True)
        now = time.time() if now is None else _check_number("now", now)
        meta = dict(meta or {})
        nid = self.store.add_note(content, created_at=now, kind=f"memcube:{memory_type}", source=source,
                                  context={"memory_type": memory_type, "meta": meta})
        expires = None if ttl is None else now + ttl

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO memcube_meta (note_id, memory_type, priority, ttl, expires_at) VALUES (?, ?, ?, "
                         "?, ?)", (nid, memory_type, priority, ttl, expires))
            self._put_tensors(conn, nid, 1, tensors)

        try:
            self.store.transaction(run)
        except Exception:
            self.store.delete(nid, reason="create failed")
            raise
        return nid

    @staticmethod
    def _check_tensors(tensors: Mapping[str, torch.Tensor] | None, memory_type: str) -> dict[str, torch.Tensor]:
        if memory_type == "plaintext":
            if tensors:
                raise ValueError("a plaintext cube takes no tensors; use memory_type='activation' or 'parametric'")
            return {}
        if not tensors:
            raise ValueError(f"a {memory_type} cube needs tensors (a non-empty dict name -> tensor), got {tensors!r}")
        out = {}
        for k, v in tensors.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"tensor names must be non-empty str, got {k!r}")
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"tensors[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
            out[k] = v
        return out

    @staticmethod
    def _put_tensors(conn: sqlite3.Connection, nid: int, version: int, tensors: Mapping[str, torch.Tensor]) -> None:
        conn.executemany("INSERT INTO memcube_blobs (note_id, version, name, dtype, shape, data) VALUES (?, ?, ?, ?, "
                         "?, ?)", [(nid, version, k, *_to_blob(v)) for k, v in tensors.items()])

    # -- read -----------------------------------------------------------------------------------------------------
    def _meta(self, nid: int) -> tuple:
        row = self.store.transaction(lambda c: c.execute(
            "SELECT memory_type, priority, ttl, expires_at, access_count FROM memcube_meta WHERE note_id = ?",
            (nid,)).fetchone(), write=False)
        if row is None:
            raise KeyError(f"memcube id {nid} not found")
        return row

    def _cube(self, note: Note, with_tensors: bool) -> MemCube:
        mtype, prio, ttl, exp, acc = self._meta(note.id)
        ctx = json.loads(note.context) if note.context else {}
        tensors = self.tensors(note.id, note.version) if with_tensors and mtype != "plaintext" else None
        return MemCube(note.id, note.text, mtype, note.source, note.version, note.status, note.created_at,
                       note.updated_at, acc, prio, ttl, exp, ctx.get("meta", {}), tensors)

    def get(self, cube_id: int, with_tensors: bool = False) -> MemCube:
        """The cube as it is now (any status), without counting an access."""
        return self._cube(self.store.get_note(cube_id), with_tensors)

    def read(self, cube_id: int, now: float | None = None) -> MemCube:
        """Access a cube: count the access and return it with its tensors. KeyError for an unknown id; ValueError
        if it is not active (archived, deleted or expired — :meth:`restore` brings it back)."""
        cube = self.get(cube_id)
        now = time.time() if now is None else _check_number("now", now)
        if cube.status == "active" and cube.expires_at is not None and now >= cube.expires_at:
            self.expire(now)
            cube = self.get(cube_id)
        if cube.status != "active":
            raise ValueError(f"memcube {cube_id} must be active to be read, got status {cube.status!r}")
        self.store.transaction(lambda c: c.execute(
            "UPDATE memcube_meta SET access_count = access_count + 1, last_access = ? WHERE note_id = ?",
            (now, cube_id)))
        return self.get(cube_id, with_tensors=True)

    def tensors(self, cube_id: int, version: int | None = None) -> dict[str, torch.Tensor]:
        """The tensors of ``version`` (default: the current one): those written at the newest version <= it."""
        if version is None:
            version = self.store.get_note(cube_id).version
        rows = self.store.transaction(lambda c: c.execute(
            "SELECT name, dtype, shape, data FROM memcube_blobs WHERE note_id = ? AND version = (SELECT MAX(version) "
            "FROM memcube_blobs WHERE note_id = ? AND version <= ?) ORDER BY rowid", (cube_id, cube_id, version))
            .fetchall(), write=False)
        return {n: _from_blob(d, s, b) for n, d, s, b in rows}

    def cubes(self, status: str | None = "active", memory_type: str | None = None) -> list[MemCube]:
        """Cubes (of a status / type), highest priority first, then most accessed, then oldest."""
        if memory_type is not None and memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {MEMORY_TYPES} or None, got {memory_type!r}")
        notes = [n for n in self.store.notes(status=status) if n.kind.startswith("memcube:")]
        out = [self._cube(n, False) for n in notes]
        out = [c for c in out if memory_type is None or c.memory_type == memory_type]
        return sorted(out, key=lambda c: (-c.priority, -c.access_count, c.created_at, c.id))

    def history(self, cube_id: int) -> list[Note]:
        """Every version, oldest first (the store's :meth:`~MemoryStore.history`)."""
        return self.store.history(cube_id)

    # -- update and lifecycle -------------------------------------------------------------------------------------
    def update(self, cube_id: int, content: str | None = None, *, tensors: Mapping[str, torch.Tensor] | None = None,
               source: str | None = None, now: float | None = None, reason: str = "update",
               meta: Mapping[str, Any] | None = None) -> MemCube:
        """A new version of the cube (the old one stays in the history, its tensors stay under its version).
        ``now`` sets the new version's ``created_at`` (the time the new content became true)."""
        cube = self.get(cube_id)
        changes: dict[str, Any] = {}
        if content is not None:
            changes["text"] = content
        if source is not None:
            changes["source"] = source
        if now is not None:
            changes["created_at"] = _check_number("now", now)
        if meta is not None:
            changes["context"] = {"memory_type": cube.memory_type, "meta": dict(meta)}
        new_t = self._check_tensors(tensors, cube.memory_type) if tensors is not None else {}
        if not changes and not new_t:
            raise ValueError("update needs content, tensors, source, now or meta")
        if not changes:
            changes["source"] = cube.source  # a tensor-only update still writes a version
        note = self.store.update_note(cube_id, reason=reason, **changes)
        if new_t:
            self.store.transaction(lambda c: self._put_tensors(c, cube_id, note.version, new_t))
        return self.get(cube_id)

    def archive(self, cube_id: int, reason: str = "archive") -> MemCube:
        self.store.archive(cube_id, reason)
        return self.get(cube_id)

    def restore(self, cube_id: int, reason: str = "restore", ttl: float | None = None,
                now: float | None = None) -> MemCube:
        """Back to active; a new ``ttl`` (from ``now``) restarts the clock, otherwise an expired TTL is cleared."""
        cube = self.get(cube_id)
        now = time.time() if now is None else _check_number("now", now)
        if ttl is not None:
            ttl = _check_number("ttl", ttl, 0.0, strict=True)
        if ttl is not None or (cube.expires_at is not None and cube.expires_at <= now):
            exp = None if ttl is None else now + ttl
            self.store.transaction(lambda c: c.execute(
                "UPDATE memcube_meta SET ttl = ?, expires_at = ? WHERE note_id = ?", (ttl, exp, cube_id)))
        self.store.restore(cube_id, reason)
        return self.get(cube_id)

    def delete(self, cube_id: int, reason: str = "delete") -> MemCube:
        """Soft delete (status 'deleted'; content, versions and tensors stay in the file)."""
        self.store.delete(cube_id, reason)
        return self.get(cube_id)

    def expire(self, now: float | None = None) -> list[int]:
        """Archive (reason 'ttl') every active cube whose ``expires_at <= now``. Returns their ids."""
        now = time.time() if now is None else _check_number("now", now)
        ids = [r[0] for r in self.store.transaction(lambda c: c.execute(
            "SELECT m.note_id FROM memcube_meta m JOIN notes n ON n.id = m.note_id WHERE n.status = 'active' "
            "AND m.expires_at IS NOT NULL AND m.expires_at <= ? ORDER BY m.note_id", (now,)).fetchall(), write=False)]
        for i in ids:
            self.store.archive(i, reason="ttl")
        return ids

    def consolidate(self) -> dict[int, int]:
        """Merge duplicate active plaintext cubes (same text up to case, spacing and final punctuation): keep the
        oldest, give it the summed access count and the highest priority, soft-delete the others (reason
        'duplicate', link ``duplicate_of`` → keeper). Returns ``{removed id: kept id}``."""
        groups: dict[str, list[MemCube]] = defaultdict(list)
        for c in self.cubes("active", "plaintext"):
            groups[" ".join(c.content.lower().split()).rstrip(".!?;, ")].append(c)
        merged: dict[int, int] = {}
        for group in groups.values():
            if len(group) < 2:
                continue
            group.sort(key=lambda c: (c.created_at, c.id))
            keep, rest = group[0], group[1:]
            sources = sorted({c.source for c in group if c.source})
            meta = {**keep.meta, "merged_from": [c.id for c in rest], "sources": sources}
            self.update(keep.id, meta=meta, reason="consolidate")
            acc, prio = sum(c.access_count for c in group), max(c.priority for c in group)
            self.store.transaction(lambda c, a=acc, p=prio, k=keep.id: c.execute(
                "UPDATE memcube_meta SET access_count = ?, priority = ? WHERE note_id = ?", (a, p, k)))
            for c in rest:
                self.store.delete(c.id, reason="duplicate")
                self.store.link(c.id, keep.id, kind="duplicate_of")
                merged[c.id] = keep.id
        return merged

    # -- activation / parametric helpers --------------------------------------------------------------------------
    def save_kv(self, model: Any, prefix: str, **kw: Any) -> int:
        """Prefill ``prefix`` (tokenised by labkit.models.tokenizer) with ``model`` and store the KV cache as an
        activation cube (content = the prefix; meta: model_id, length)."""
        from labkit.models import tokenizer

        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        ids = torch.tensor([tokenizer.encode(prefix)], dtype=torch.long, device=next(model.parameters()).device)
        if ids.shape[1] >= model.config.context:  # leave one position to decode from the cache
            raise ValueError(f"prefix must be at most {model.config.context - 1} tokens, got {ids.shape[1]}")
        cache = model.new_cache(1)
        with torch.no_grad():
            model(ids, cache=cache)
        meta = {"model_id": cache.model_id, "length": cache.length, **kw.pop("meta", {})}
        return self.create(prefix, "activation", tensors=kv_to_tensors(cache), meta=meta, **kw)

    def load_kv(self, cube_id: int, model: Any, now: float | None = None) -> Any:
        """The stored KV cache of an activation cube, rebuilt for ``model`` (ValueError if it is another model)."""
        cube = self.read(cube_id, now)
        if cube.memory_type != "activation":
            raise ValueError(f"memcube {cube_id} must be an activation cube, got {cube.memory_type!r}")
        want = model.new_cache(1).model_id
        if cube.meta.get("model_id") != want:
            raise ValueError(f"memcube {cube_id} holds a cache of model {cube.meta.get('model_id')!r}, got {want!r}")
        return kv_from_tensors(model, cube.tensors)

    def size(self, cube_id: int) -> dict[str, int]:
        """Bytes a cube occupies now: ``text`` (UTF-8 content), ``tensors`` (the BLOBs of its current version) and
        ``all_versions`` (BLOBs of every version kept)."""
        note = self.store.get_note(cube_id)

        def run(c: sqlite3.Connection) -> tuple[int, int]:
            cur = c.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM memcube_blobs WHERE note_id = ? AND version = "
                            "(SELECT MAX(version) FROM memcube_blobs WHERE note_id = ? AND version <= ?)",
                            (cube_id, cube_id, note.version)).fetchone()[0]
            every = c.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM memcube_blobs WHERE note_id = ?",
                              (cube_id,)).fetchone()[0]
            return int(cur), int(every)

        cur, every = self.store.transaction(run, write=False)
        return {"text": len(note.text.encode()), "tensors": cur, "all_versions": every}

    # -- transitions between memory types ------------------------------------------------------------------------
    def promote(self, cube_id: int, model: Any, **kw: Any) -> int:
        """Plaintext → activation: prefill the cube's text with ``model`` and store its KV cache as a new activation
        cube linked ``derived_from`` → the plaintext cube (which stays; it is the auditable source). Returns the id."""
        cube = self.get(cube_id)
        if cube.memory_type != "plaintext":
            raise ValueError(f"memcube {cube_id} must be a plaintext cube to promote, got {cube.memory_type!r}")
        if cube.status != "active":
            raise ValueError(f"memcube {cube_id} must be active to promote, got status {cube.status!r}")
        meta = {"derived_from": cube_id, "from_version": cube.version, **kw.pop("meta", {})}
        kw.setdefault("source", f"promote:{cube_id}")
        kw.setdefault("priority", cube.priority)
        aid = self.save_kv(model, cube.content, meta=meta, **kw)
        self.store.link(aid, cube_id, kind="derived_from")
        return aid

    def activation_of(self, cube_id: int, model: Any) -> int | None:
        """The active activation cube derived from plaintext ``cube_id``'s current version for ``model``, if any."""
        cube, want = self.get(cube_id), model.new_cache(1).model_id
        for link in self.store.links(cube_id, direction="in", kind="derived_from"):
            a = self.get(link.src)
            if (a.status == "active" and a.meta.get("model_id") == want
                    and a.meta.get("from_version") == cube.version):
                return a.id
        return None

    def schedule(self, model: Any, min_access: int = 3, max_tokens: int | None = None,
                 now: float | None = None) -> dict[int, int]:
        """A minimal scheduler: promote every active plaintext cube read at least ``min_access`` times (and at most
        ``max_tokens`` tokens long, default the model's context - 1) that has no up-to-date activation cube yet; archive
        activation cubes whose plaintext source changed version or is no longer active (stale caches). Returns
        ``{plaintext id: new activation id}``; ``now`` is the new cubes' creation time."""
        if isinstance(min_access, bool) or not isinstance(min_access, int) or min_access < 1:
            raise ValueError(f"min_access must be a positive int, got {min_access!r}")
        from labkit.models import tokenizer

        limit = model.config.context - 1 if max_tokens is None else int(max_tokens)
        for a in self.cubes("active", "activation"):
            src = a.meta.get("derived_from")
            if src is None:
                continue
            s = self.get(int(src))
            if s.status != "active" or s.version != a.meta.get("from_version"):
                self.archive(a.id, reason="stale")
        out: dict[int, int] = {}
        for c in self.cubes("active", "plaintext"):
            if (c.access_count >= min_access and len(tokenizer.encode(c.content)) <= limit
                    and self.activation_of(c.id, model) is None):
                out[c.id] = self.promote(c.id, model, now=now)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Conflict policies
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One assertion ``value`` at time ``t`` by ``source`` with reliability in (0, 1) and strength in (0, 1]."""

    value: str
    t: float
    source: str
    reliability: float
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.reliability < 1.0:
            raise ValueError(f"reliability must be in (0, 1), got {self.reliability}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    @property
    def weight(self) -> float:
        """s · logit(r), at least 0.05 (a weak source still counts a little)."""
        return self.strength * max(math.log(self.reliability / (1.0 - self.reliability)), 0.05)


def resolve(claims: Sequence[Claim], policy: str, t: float | None = None, half_life: float = 365.0) -> str | None:
    """The value ``policy`` believes from the claims with ``t_c <= t`` (all if ``t`` is None); None if there are none.
    Claims are taken in time order (stable: equal times keep the given order)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    half_life = _check_number("half_life", half_life, 0.0, strict=True)
    seen = sorted((c for c in claims if t is None or c.t <= t), key=lambda c: c.t)
    if not seen:
        return None
    if policy == "lww":
        return seen[-1].value
    if policy == "fww":
        return seen[0].value
    t_ref = seen[-1].t
    score: dict[str, float] = defaultdict(float)
    last: dict[str, int] = {}
    for i, c in enumerate(seen):
        if policy == "majority":
            w = 1.0
        elif policy == "credibility":
            w = c.weight
        else:
            w = c.weight * 0.5 ** ((t_ref - c.t) / half_life)
        score[c.value] += w
        last[c.value] = i
    return max(score, key=lambda v: (round(score[v], 12), last[v]))


class FactMemory:
    """Facts ``(subject, relation) -> value`` as plaintext MemCubes, resolved by one policy.

    ``ingest`` stores the claim as a note (kind ``claim``, nothing lost) and, if the resolved value changes, writes a
    new version of the fact's cube (reason ``conflict``, ``created_at`` = the claim time). ``current`` reads the cube,
    ``value_at(t)`` the newest version created at or before ``t``.
    """

    def __init__(self, mem: MemOS, policy: str, half_life: float = 365.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.mem, self.policy = mem, policy
        self.half_life = _check_number("half_life", half_life, 0.0, strict=True)
        self.claims: dict[tuple[str, str], list[Claim]] = defaultdict(list)
        self.cube_of: dict[tuple[str, str], int] = {}
        self.n_versions = 0

    def ingest(self, subject: str, relation: str, claim: Claim) -> bool:
        """Add one claim; returns True if the believed value changed (a version was written)."""
        key = (subject, relation)
        lst = self.claims[key]
        if lst and claim.t < lst[-1].t:
            raise ValueError(f"claims must arrive in time order; got t={claim.t} after t={lst[-1].t}")
        self.mem.store.add_note(f"{subject} {relation} {claim.value}", kind="claim", source=claim.source,
                                created_at=claim.t, context={"reliability": claim.reliability,
                                                             "strength": claim.strength})
        lst.append(claim)
        value = resolve(lst, self.policy, half_life=self.half_life)
        text = f"{subject} {relation} {value}"
        if key not in self.cube_of:
            self.cube_of[key] = self.mem.create(text, source=claim.source, now=claim.t,
                                                meta={"subject": subject, "relation": relation, "value": value})
            self.n_versions += 1
            return True
        cube = self.mem.get(self.cube_of[key])
        if cube.meta.get("value") == value:
            return False
        self.mem.update(cube.id, text, source=claim.source, now=claim.t, reason="conflict",
                        meta={"subject": subject, "relation": relation, "value": value})
        self.n_versions += 1
        return True

    def current(self, subject: str, relation: str) -> str | None:
        cid = self.cube_of.get((subject, relation))
        return None if cid is None else self.mem.get(cid).meta.get("value")

    def value_at(self, subject: str, relation: str, t: float) -> str | None:
        cid = self.cube_of.get((subject, relation))
        if cid is None:
            return None
        best = None
        for n in self.mem.history(cid):
            if n.created_at <= t:
                best = json.loads(n.context).get("meta", {}).get("value")
        return best


# ---------------------------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------------------------
def fact_stream(world: Any, seed: int = 0, claims_per_fact: int = 3, lag: int = 400,
                sources: Mapping[str, float] | None = None, stale_share: float = 0.5,
                relations: Sequence[str] = ("lives_in", "works_at"),
                source_probs: Mapping[str, float] | None = None) -> list[tuple[str, str, Claim]]:
    """Noisy claims about the world's changing facts, in time order: for every fact ``[start, end)`` of a person,
    ``claims_per_fact`` claims at times uniform in ``[start, min(end, start + lag))``, each from a random source
    (uniform, or drawn with ``source_probs``: source -> weight); a source with reliability r says the true value with
    probability r, otherwise (with prob ``stale_share``) the previous value when there is one — a stale report — or
    a random wrong value."""
    sources = dict(SOURCES if sources is None else sources)
    if claims_per_fact < 1:
        raise ValueError(f"claims_per_fact must be >= 1, got {claims_per_fact}")
    if lag < 1:
        raise ValueError(f"lag must be >= 1, got {lag}")
    if not sources:
        raise ValueError("sources must name at least one source")
    g = np.random.default_rng(seed)
    names, rel = list(sources), [sources[s] for s in sources]
    probs = None
    if source_probs is not None:
        unknown = sorted(set(source_probs) - set(sources))
        if unknown:
            raise ValueError(f"source_probs names unknown sources {unknown}; sources are {names}")
        w = np.array([_check_number(f"source_probs[{n!r}]", source_probs.get(n, 0.0), 0.0) for n in names])
        if w.sum() <= 0:
            raise ValueError(f"source_probs must give some source a positive weight, got {dict(source_probs)}")
        probs = w / w.sum()
    out: list[tuple[str, str, Claim]] = []
    for relation in relations:
        pool = sorted({f.object for f in world.facts if f.relation == relation})
        for p in sorted({f.subject for f in world.facts if f.relation == relation}):
            hist = world.history(p, relation)
            for i, f in enumerate(hist):
                hi = min(f.end if f.end is not None else f.start + lag, f.start + lag)
                for _ in range(claims_per_fact):
                    t = float(g.integers(f.start, max(hi, f.start + 1)))
                    s = int(g.integers(len(names))) if probs is None else int(g.choice(len(names), p=probs))
                    if g.random() < rel[s]:
                        v = f.object
                    elif i > 0 and g.random() < stale_share:
                        v = hist[i - 1].object
                    else:
                        v = pool[int(g.integers(len(pool)))]
                        while v == f.object and len(pool) > 1:
                            v = pool[int(g.integers(len(pool)))]
                    out.append((p, relation, Claim(v, t, names[s], rel[s])))
    order = sorted(range(len(out)), key=lambda i: (out[i][2].t, i))
    return [out[i] for i in order]


def stream_experiment(seed: int = 0, n_people: int = 40, claims_per_fact: int = 3, half_life: float = 365.0,
                      n_times: int = 3) -> dict[str, Any]:
    """Ingest a world's fact stream under each policy; accuracy of "current Y of X" and "Y of X at time t"."""
    from labkit.data.worlds import make_world

    world = make_world(seed, n_people=n_people, n_places=12, n_orgs=10, n_events=0, change_rate=0.6)
    stream = fact_stream(world, seed, claims_per_fact)
    keys = sorted({(s, r) for s, r, _ in stream})
    g = np.random.default_rng(seed + 1)
    horizon = max(c.t for _, _, c in stream)
    probes = []
    for s, r in keys:
        t0 = world.history(s, r)[0].start
        for t in g.integers(t0, int(horizon) + 1, n_times):
            probes.append((s, r, float(t), world.value_at(s, r, int(t))))
    out: dict[str, Any] = {"seed": seed, "n_claims": len(stream), "n_facts": len(keys), "policies": {}}
    for policy in POLICIES:
        t0 = time.perf_counter()
        with MemoryStore(":memory:") as store:
            fm = FactMemory(MemOS(store), policy, half_life)
            for s, r, c in stream:
                fm.ingest(s, r, c)
            cur = np.mean([fm.current(s, r) == world.current(s, r) for s, r in keys])
            at = np.mean([fm.value_at(s, r, t) == truth for s, r, t, truth in probes])
            out["policies"][policy] = {"current": float(cur), "at_time": float(at), "versions": fm.n_versions,
                                       "notes": store.count(None), "seconds": time.perf_counter() - t0}
    return out


#: clash conditions: (name, number of counter passages, their strength, source pool, memory-supporting passages)
CLASH_CONDITIONS: tuple[tuple[str, int, float, tuple[str, ...], int], ...] = (
    ("1 partial counter", 1, 0.5, ("registry", "news"), 0),
    ("1 coherent counter", 1, 1.0, ("registry", "news"), 0),
    ("1 coherent low-cred. counter", 1, 1.0, ("blog", "forum"), 0),
    ("3 coherent counters", 3, 1.0, ("registry", "news", "blog", "forum"), 0),
    ("1 counter + 1 supporting", 1, 1.0, ("registry", "news"), 1),
    ("3 counters + 1 supporting", 3, 1.0, ("registry", "news", "blog", "forum"), 1),
)


def _clash_items(seed: int, n_people: int, cutoff_year: int, conf_scale: float
                 ) -> tuple[list[tuple[str, str, str, float]], np.random.Generator]:
    """(memory, counter value, truth, confidence) per fact, and the generator the evidence draws continue from."""
    from labkit.data.worlds import date_of, make_world

    conf_scale = _check_number("conf_scale", conf_scale, 0.0, strict=True)
    world = make_world(seed, n_people=n_people, n_places=12, n_orgs=10, n_events=0, change_rate=0.6)
    g = np.random.default_rng(seed + 7)
    cutoff = (_dt.date(cutoff_year, 1, 1) - date_of(0)).days
    items = []
    for relation in ("lives_in", "works_at"):
        pool = sorted({f.object for f in world.facts if f.relation == relation})
        for p in sorted({f.subject for f in world.facts if f.relation == relation}):
            held = [f for f in world.history(p, relation) if f.start <= cutoff and (f.end is None or cutoff < f.end)]
            if not held:
                continue
            memory, years = held[-1].object, (cutoff - held[-1].start) / 365.25
            conf = min(0.5 + 0.45 * (1.0 - math.exp(-years / conf_scale)), 0.99)
            conf = max(conf, 0.51)
            truth = world.current(p, relation)
            counter = truth if truth != memory else next(str(v) for v in g.permutation(pool) if v != memory)
            items.append((memory, counter, truth, conf))
    return items, g


def _clash_eval(items: Sequence[tuple[str, str, str, float]], conditions: Sequence[tuple], g: np.random.Generator,
                half_life: float, support_follows: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """Per condition and policy: memorization / counter / accuracy ratios. Supporting passages are coherent
    (strength 1) unless ``support_follows``, when they have the counter passages' strength."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, n_counter, strength, pool_s, n_support in conditions:
        res = {p: {"mem": 0, "ctr": 0, "acc": 0} for p in POLICIES}
        s_sup = strength if support_follows else 1.0
        for memory, counter, truth, conf in items:
            ev = [(counter, str(pool_s[int(g.integers(len(pool_s)))]), strength) for _ in range(n_counter)]
            ev += [(memory, ("registry", "news")[int(g.integers(2))], s_sup) for _ in range(n_support)]
            ev = [ev[i] for i in g.permutation(len(ev))]
            claims = [Claim(memory, 0.0, "parametric", conf)]
            claims += [Claim(v, float(i + 1), s, SOURCES[s], st) for i, (v, s, st) in enumerate(ev)]
            for p in POLICIES:
                a = resolve(claims, p, half_life=half_life)
                res[p]["mem"] += a == memory
                res[p]["ctr"] += a == counter
                res[p]["acc"] += a == truth
        n = max(len(items), 1)
        table[name] = {p: {"memorization": res[p]["mem"] / n, "counter": res[p]["ctr"] / n,
                           "accuracy": res[p]["acc"] / n} for p in POLICIES}
    return table


def clash_experiment(seed: int = 0, n_people: int = 60, cutoff_year: int = 2017, half_life: float = 365.0,
                     conf_scale: float = 3.0) -> dict[str, Any]:
    """Knowledge clashes, simulated (no LLM). The parametric memory of a fact is its value at a training cutoff
    (``cutoff_year``-01-01); its confidence grows with how long it had been true by then,
    ``c = 0.5 + 0.45 (1 - exp(-years / conf_scale))``. The question asks for the current value. When the memory is
    stale the counter-evidence states the truth; when it is still true the counter-evidence is misinformation (a
    random wrong value). Each counter passage comes from a random source of the condition's pool; supporting
    (memory-consistent) passages from a random credible source. Evidence order is shuffled. Returns, per condition
    and policy, the memorization ratio (answer = memory), the counter ratio and the accuracy (answer = truth)."""
    items, g = _clash_items(seed, n_people, cutoff_year, conf_scale)
    table = _clash_eval(items, CLASH_CONDITIONS, g, half_life)
    stale = float(np.mean([m != t for m, _, t, _ in items]))
    return {"seed": seed, "n_items": len(items), "stale_share": stale, "table": table,
            "mean_confidence": float(np.mean([c for *_, c in items]))}


def coherence_sweep(seed: int = 0, n_people: int = 60, strengths: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0),
                    n_counter: int = 1, supports: Sequence[int] = (0, 1), cutoff_year: int = 2017,
                    half_life: float = 365.0, conf_scale: float = 3.0) -> dict[str, Any]:
    """Memorization ratio of every policy against the coherence (strength) $s$ of the external evidence: one (or
    ``n_counter``) credible counter passage(s) of strength $s$, plus ``supports`` memory-consistent passages of the
    same strength (0: the paper's single-source setting; 1: its "evidence also contains the memory" setting).
    Returns ``{"strengths": [...], "curves": {"k supporting": {policy: [ratio per strength]}}, "n_items": n}``."""
    strengths = [_check_number("strength", s, 0.0, strict=True) for s in strengths]
    if any(s > 1 for s in strengths):
        raise ValueError(f"strengths must lie in (0, 1], got {strengths}")
    items, g = _clash_items(seed, n_people, cutoff_year, conf_scale)
    curves: dict[str, dict[str, list[float]]] = {}
    for k in supports:
        conds = [(f"s={s}", n_counter, s, ("registry", "news"), int(k)) for s in strengths]
        tab = _clash_eval(items, conds, g, half_life, support_follows=True)
        curves[f"{k} supporting"] = {p: [tab[c[0]][p]["memorization"] for c in conds] for p in POLICIES}
    return {"seed": seed, "strengths": strengths, "curves": curves, "n_items": len(items)}


#: the noise sweep's sources: two reliable, two unreliable (``rumour`` is right less often than not)
SWEEP_SOURCES: dict[str, float] = {"registry": 0.95, "news": 0.85, "forum": 0.55, "rumour": 0.35}
UNRELIABLE: tuple[str, ...] = ("forum", "rumour")


def noise_sweep(seed: int = 0, n_people: int = 40, shares: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                claims_per_fact: int = 3, half_life: float = 365.0, n_times: int = 3, lag: int = 400) -> dict[str, Any]:
    """Accuracy of every policy as the share $u$ of claims from unreliable sources grows. Each claim's source is
    drawn from :data:`SWEEP_SOURCES` with probability $u/2$ for each unreliable one and $(1-u)/2$ for each reliable
    one (same world and probe times for every $u$). Resolution uses :func:`resolve` directly — the same values a
    :class:`FactMemory` stores (a test checks it) — so the sweep needs no database. Returns per share the share of
    claims that contradict the value true at their time, and per policy the accuracy of "current value" and of
    "value at time t"."""
    from labkit.data.worlds import make_world

    shares = [_check_number("share", u, 0.0) for u in shares]
    if any(u > 1 for u in shares):
        raise ValueError(f"shares must lie in [0, 1], got {shares}")
    relations = ("lives_in", "works_at")
    world = make_world(seed, n_people=n_people, n_places=12, n_orgs=10, n_events=0, change_rate=0.6)
    keys = sorted({(f.subject, f.relation) for f in world.facts if f.relation in relations})
    horizon = max(f.start for f in world.facts if f.relation in relations) + lag
    g = np.random.default_rng(seed + 1)
    probes = [(s, r, float(t), world.value_at(s, r, int(t))) for s, r in keys
              for t in g.integers(world.history(s, r)[0].start, horizon + 1, n_times)]
    out: dict[str, Any] = {"seed": seed, "shares": shares, "wrong_share": [], "n_facts": len(keys),
                           "policies": {p: {"current": [], "at_time": []} for p in POLICIES}}
    for u in shares:
        probs = {s: (u if s in UNRELIABLE else 1.0 - u) for s in SWEEP_SOURCES}
        stream = fact_stream(world, seed, claims_per_fact, lag, sources=SWEEP_SOURCES, relations=relations,
                             source_probs=probs)
        out["wrong_share"].append(float(np.mean([c.value != world.value_at(s, r, int(c.t)) for s, r, c in stream])))
        by_key: dict[tuple[str, str], list[Claim]] = defaultdict(list)
        for s, r, c in stream:
            by_key[(s, r)].append(c)
        for p in POLICIES:
            cur = np.mean([resolve(by_key[k], p, half_life=half_life) == world.current(*k) for k in keys])
            at = np.mean([resolve(by_key[(s, r)], p, t=t, half_life=half_life) == v for s, r, t, v in probes])
            out["policies"][p]["current"].append(float(cur))
            out["policies"][p]["at_time"].append(float(at))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Activation and parametric memory: cost and size
# ---------------------------------------------------------------------------------------------------------------
def english_prefix(n_tokens: int, seed: int = 0) -> str:
    """``n_tokens`` characters of held-out English (printable ASCII, so one byte = one token) from a seeded offset."""
    import re

    from labkit.data.corpus import english_text

    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    text = re.sub(r"\s+", " ", "".join(ch for ch in english_text("heldout") if 32 <= ord(ch) < 127 or ch.isspace()))
    text = text.replace("<", "(").replace(">", ")")  # no special-token names
    start = int(np.random.default_rng(seed).integers(0, len(text) - n_tokens))
    return text[start:start + n_tokens]


def activation_benchmark(model_name: str = "tinylm", lengths: Sequence[int] = (8, 16, 32, 64, 96, 127),
                         repeats: int = 7, seed: int = 0, path: str | None = None) -> dict[str, Any]:
    """Activation memory, checked and timed. For each prefix length T (tokens): store the KV cache of the prefix
    as an activation cube in a SQLite file, then answer "next-token logits after prefix + one token" three ways:
    ``recompute`` (prefill all T + 1 tokens), ``load`` (read the cube from the file, rebuild the cache, decode one
    token) and ``in_ram`` (decode one token from a cache already in memory). Times are medians over ``repeats``
    (seconds); ``max_abs_diff`` compares the loaded path's logits with recomputing; ``kv_bytes`` is the BLOB size.
    Runs on CPU in whatever thread setting the caller chose."""
    import tempfile
    from pathlib import Path

    from labkit.models import load, tokenizer

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    model = load(model_name)
    ctx = model.config.context
    lengths = [int(T) for T in lengths]
    if any(T < 1 or T > ctx - 1 for T in lengths):
        raise ValueError(f"lengths must lie in 1..{ctx - 1}, got {lengths}")
    text = english_prefix(max(lengths) + 1, seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(path or Path(tmp) / "activation.db") as store:
        mem = MemOS(store)
        with torch.no_grad():
            model(torch.tensor([tokenizer.encode(text[:16])]))  # warm-up
            for T in lengths:
                prefix = text[:T]
                ids = torch.tensor([tokenizer.encode(text[:T + 1])])
                t0 = time.perf_counter()
                cid = mem.save_kv(model, prefix, source="benchmark")
                t_save = time.perf_counter() - t0
                rec, ld, dec = [], [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    full = model(ids)[0, -1]
                    t1 = time.perf_counter()
                    cache = mem.load_kv(cid, model)
                    t2 = time.perf_counter()
                    cached = model(ids[:, -1:], cache=cache)[0, -1]
                    t3 = time.perf_counter()
                    rec.append(t1 - t0)
                    ld.append(t2 - t1)
                    dec.append(t3 - t2)
                rows.append({"tokens": T, "kv_bytes": mem.size(cid)["tensors"], "save": t_save,
                             "recompute": float(np.median(rec)), "load": float(np.median(ld)) + float(np.median(dec)),
                             "load_only": float(np.median(ld)), "in_ram": float(np.median(dec)),
                             "max_abs_diff": float((cached - full).abs().max()),
                             "same_argmax": bool(cached.argmax() == full.argmax())})
    return {"model": model_name, "parameters": sum(p.numel() for p in model.parameters()), "rows": rows,
            "threads": torch.get_num_threads()}


def lora_tensors(model: torch.nn.Module, rank: int = 4, targets: Sequence[str] = ("q_proj", "v_proj"),
                 seed: int = 0, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A LoRA adapter as a tensor dict (a parametric memory): for every ``nn.Linear`` whose name ends with one of
    ``targets``, ``<name>.lora_A``: (rank, d_in) and ``<name>.lora_B``: (d_out, rank), both ~ N(0, scale²) so the
    adapter does something (a trained one would come from chapter 4's recipes)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in targets:
            d_out, d_in = mod.weight.shape
            out[f"{name}.lora_A"] = scale * torch.randn(rank, d_in, generator=g)
            out[f"{name}.lora_B"] = scale * torch.randn(d_out, rank, generator=g)
    if not out:
        raise ValueError(f"targets {tuple(targets)} match no nn.Linear of the model")
    return out


def merge_lora(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], alpha: float = 1.0) -> torch.nn.Module:
    r"""A copy of ``model`` with every adapter of :func:`lora_tensors` merged: $W \leftarrow W + \alpha B A$."""
    import copy

    new = copy.deepcopy(model)
    mods = dict(new.named_modules())
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A"):
                continue
            name = key.removesuffix(".lora_A")
            if name not in mods or f"{name}.lora_B" not in tensors:
                raise ValueError(f"adapter {name!r} has no matching layer / lora_B in the model")
            w = mods[name].weight
            w += alpha * (tensors[f"{name}.lora_B"] @ a).to(w)
    return new


# ---------------------------------------------------------------------------------------------------------------
# All experiments
# ---------------------------------------------------------------------------------------------------------------
def run_experiments(fast: bool = True, seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """The conflict experiments over ``seeds`` (FAST: 30 people per world; full: 120): the fact stream, the
    knowledge-clash conditions, the coherence sweep and the unreliable-source sweep. ``stream`` holds (mean, std)
    over seeds, ``clash`` means; the two sweeps keep one list per seed (for bands)."""
    torch.set_num_threads(1)
    n = 30 if fast else 120
    t0 = time.perf_counter()
    streams = [stream_experiment(s, n_people=n) for s in seeds]
    clashes = [clash_experiment(s, n_people=2 * n) for s in seeds]
    coh = [coherence_sweep(s, n_people=2 * n, strengths=(0.1, 0.3, 0.5, 0.7, 1.0) if fast else
                           tuple(np.round(np.linspace(0.1, 1.0, 10), 2))) for s in seeds]
    noise = [noise_sweep(s, n_people=n, shares=(0.0, 0.3, 0.6, 0.9) if fast else
                         (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) for s in seeds]
    summary: dict[str, Any] = {"stream": {}, "clash": {}}
    for p in POLICIES:
        summary["stream"][p] = {m: (float(np.mean([r["policies"][p][m] for r in streams])),
                                    float(np.std([r["policies"][p][m] for r in streams])))
                                for m in ("current", "at_time", "versions")}
    for name, *_ in CLASH_CONDITIONS:
        summary["clash"][name] = {p: {m: float(np.mean([c["table"][name][p][m] for c in clashes]))
                                      for m in ("memorization", "counter", "accuracy")} for p in POLICIES}
    summary["coherence"] = {"strengths": coh[0]["strengths"],  # curves: (seeds, strengths) per policy
                            "curves": {k: {p: [c["curves"][k][p] for c in coh] for p in POLICIES}
                                       for k in coh[0]["curves"]}}
    summary["noise"] = {"shares": noise[0]["shares"], "wrong_share": [r["wrong_share"] for r in noise],
                        "policies": {p: {m: [r["policies"][p][m] for r in noise] for m in ("current", "at_time")}
                                     for p in POLICIES}}  # (seeds, shares) per policy and metric
    summary["stale_share"] = float(np.mean([c["stale_share"] for c in clashes]))
    summary["mean_confidence"] = float(np.mean([c["mean_confidence"] for c in clashes]))
    summary["n_claims"] = [r["n_claims"] for r in streams]
    summary["n_facts"] = [r["n_facts"] for r in streams]
    summary["n_clash_items"] = [c["n_items"] for c in clashes]
    summary["seconds"] = time.perf_counter() - t0
    summary["seeds"] = list(seeds)
    return summary
