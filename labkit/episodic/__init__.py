"""labkit.episodic: chapter 5, episodic agents — a memory that an agent writes, links, revises and searches.

Modules:

- ``labkit.episodic.store``: :class:`~labkit.episodic.store.MemoryStore`, the memory on a real database (one SQLite
  file: notes, versions, links, entities, triples, graph edges, cached embeddings; WAL, FTS5, migrations).
- ``labkit.episodic.embed``: sentence embedders behind one interface (MiniLM, and a non-semantic hashing stand-in).

Submodules are imported on demand (``from labkit.episodic.store import MemoryStore``), so importing the package
loads neither torch nor the embedding model.
"""

from __future__ import annotations
