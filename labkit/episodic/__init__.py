"""labkit.episodic: chapter 5, episodic agents — a memory that an agent writes, links, revises and searches.

Modules:

- ``labkit.episodic.store``: :class:`~labkit.episodic.store.MemoryStore`, the memory on a real database (one SQLite
  file: notes, versions, links, entities, triples, graph edges, cached embeddings; WAL, FTS5, migrations).
- ``labkit.episodic.embed``: sentence embedders behind one interface (MiniLM, and a non-semantic hashing stand-in).
- ``labkit.episodic.sort``: Sequence Order Recall Tasks on a long text: in context, from a retrieved memory, by chance.
- ``labkit.episodic.embodied``: a grid-world agent with a FIFO or a place-centric episodic memory of equal capacity,
  and one-shot naming (a fast binding memory vs a slow learner).
- ``labkit.episodic.streaming``: memory over a stream (a FIFO buffer, compression into event summaries, a pyramid
  memory bank, uniform subsampling at equal budget) and a persona-consistency memory check.

Submodules are imported on demand (``from labkit.episodic.store import MemoryStore``), so importing the package
loads neither torch nor the embedding model.
"""

from __future__ import annotations
