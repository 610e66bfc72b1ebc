"""labkit.episodic: chapter 5, episodic agents — a memory that an agent writes, links, revises and searches.

Modules:

- ``labkit.episodic.store``: :class:`~labkit.episodic.store.MemoryStore`, the memory on a real database (one SQLite
  file: notes, versions, links, entities, triples, graph edges, cached embeddings; WAL, FTS5, migrations).
- ``labkit.episodic.embed``: sentence embedders behind one interface (MiniLM, and a non-semantic hashing stand-in).
- ``labkit.episodic.amem``: A-MEM, notes with keywords, tags and context, linked by explicit ids (similarity and
  shared entities) and evolved as new notes arrive; retrieval that follows the links.
- ``labkit.episodic.hipporag``: HippoRAG, a phrase graph from rule-based OpenIE with synonym edges, searched by
  Personalized PageRank with node specificity; dense and keyword (FTS5) baselines; recall@k vs distractors.
- ``labkit.episodic.memos``: MemOS, MemCubes (provenance, versions, lifecycle) of three types (plaintext,
  activation = a TinyLM KV cache, parametric = an adapter) and policies for facts that conflict.
- ``labkit.episodic.granularity``: turn / session / summary memory units and routers that pick one per question.
- ``labkit.episodic.sort``: SORT with chapter 1's tiny LM (in context, from memory after fine-tuning, by replay) and
  retrieval with and without positions.
- ``labkit.episodic.embodied``: FIFO vs place-centric memory with an adaptive allocator, a sparse + hierarchical
  navigation memory, and fast and slow word learning ("this is a dax").
- ``labkit.episodic.streaming``: memory over a stream (a FIFO buffer, compression into event summaries, a pyramid
  memory bank, uniform subsampling at equal budget) and a persona-consistency memory check.

Submodules are imported on demand (``from labkit.episodic.store import MemoryStore``), so importing the package
loads neither torch nor the embedding model.
"""

from __future__ import annotations
