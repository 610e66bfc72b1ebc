"""Chapter 5's memory store on a real database: ingest rate and query latency at 10k and 100k notes, and the MiniLM
encode throughput. Writes benchmarks/results/episodic-store-vm.json (or --out).

    python benchmarks/episodic_store.py                              # full: 10k and 100k notes, 2k sentences
    python benchmarks/episodic_store.py --quick --out /tmp/s.json   # smoke test: 1k and 3k notes, 200 sentences

Notes are generated templated sentences (seeded; no downloads). Ingest stores each note *with* a 384-d float32
embedding, passed in precomputed (random unit vectors: storing costs the same as for MiniLM vectors, and encoding
100k sentences with MiniLM on one thread would take minutes — its throughput is measured separately on
--encode-n sentences, so the end-to-end rate with encoding is about 1 / (1/ingest + 1/encode)). Cases:

- ``ingest batched``: ``add_notes`` in batches of --batch (one transaction each) into a fresh file; notes/s.
- ``ingest one by one``: ``add_note`` per note (one committed transaction each) for --single notes; notes/s.
- ``keyword``: ``keyword_search`` (FTS5 BM25) of 2-word queries, k = 10; median and p90 over --queries. The
  templated vocabulary is small, so most words occur in thousands of notes (BM25 must score every match);
  ``keyword_selective`` queries one day number (~1/400 of the notes).
- ``dense``: ``dense_search`` with a query vector (no encoding), k = 10, on the cached (n, 384) matrix; median over
  --queries; ``dense matrix build`` is a full rebuild (reads every vector blob from SQLite: what a search pays
  after an update/delete or another process's write); ``add then dense search`` is the agent loop (add_note with its
  vector, then dense_search k = 5: own appends grow the cached matrix in place).
- ``MiniLM``: model load time, batched encode throughput (sentences/s, batch 64), one-sentence query latency.

One thread (torch.set_num_threads(1)); synchronous=NORMAL (WAL); files in a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):  # numpy's BLAS on one thread too
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import machine  # noqa: E402

from labkit.episodic.embed import MiniLMEmbedder  # noqa: E402
from labkit.episodic.store import MemoryStore  # noqa: E402

NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
PLACES = ["the kitchen", "the library", "the harbour", "the market", "the station", "the garden", "the museum",
          "the office", "the bakery", "the bridge", "the clinic", "the school", "the park", "the river bank"]
OBJECTS = ["a red umbrella", "an old map", "a silver key", "a blue notebook", "a broken clock", "a letter",
           "a wooden box", "a camera", "a bicycle", "a violin", "a basket of apples", "a green scarf"]
TEMPLATES = ["{a} saw {o} in {p} on day {d}.", "{a} gave {o} to {b} near {p}.", "On day {d}, {a} met {b} at {p}.",
             "{a} lost {o} somewhere in {p}.", "{a} told {b} that {o} was in {p}.", "{a} moved from {p} to {q}."]


def sentences(n: int, seed: int) -> list[str]:
    """n templated episodic sentences (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = TEMPLATES[rng.integers(len(TEMPLATES))]
        a, b = rng.choice(NAMES, size=2, replace=False)
        p, q = rng.choice(PLACES, size=2, replace=False)
        out.append(t.format(a=a, b=b, p=p, q=q, o=OBJECTS[rng.integers(len(OBJECTS))], d=int(rng.integers(1, 400))))
    return out


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ms(xs: list[float]) -> dict:
    return {"median_ms": round(1e3 * statistics.median(xs), 3),
            "p90_ms": round(1e3 * float(np.quantile(xs, 0.9)), 3), "n": len(xs)}


def bench_size(n: int, args: argparse.Namespace, tmp: Path) -> dict:
    texts = sentences(n, args.seed)
    vecs = unit_rows(n, 384, args.seed + 1)
    path = tmp / f"store-{n}.db"
    emb = MiniLMEmbedder(threads=1)  # never loaded here: vectors are passed in
    with MemoryStore(path, emb) as s:
        t0 = time.perf_counter()
        for i in range(0, n, args.batch):
            s.add_notes([{"text": texts[j], "embedding": vecs[j], "session": f"s{j // 500}", "created_at": float(j)}
                         for j in range(i, min(n, i + args.batch))])
        ingest_s = time.perf_counter() - t0
        assert s.count() == n
        rng = np.random.default_rng(args.seed + 2)
        words = [w for w in " ".join(texts[:2000]).replace(".", "").replace(",", "").split() if len(w) > 3]
        kq = [" ".join(rng.choice(words, size=2)) for _ in range(args.queries)]
        s.keyword_search(kq[0])  # warm-up
        ktimes = []
        for q in kq:
            t = time.perf_counter()
            hits = s.keyword_search(q, k=10)
            ktimes.append(time.perf_counter() - t)
            assert hits, q
        sel = []  # one selective term (a day number, ~1/400 of the notes) instead of two common words
        for d in rng.integers(1, 400, size=args.queries):
            t = time.perf_counter()
            s.keyword_search(str(int(d)), k=10)
            sel.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids, mat = s.embedding_matrix()
        build_s = time.perf_counter() - t
        assert mat.shape == (n, 384)
        dq = unit_rows(args.queries, 384, args.seed + 3)
        dtimes = []
        for q in dq:
            t = time.perf_counter()
            hits = s.dense_search(q, k=10)
            dtimes.append(time.perf_counter() - t)
        # the agent loop: store a note, then search neighbours (the cached matrix grows in place, no rebuild)
        loop = []
        for v in unit_rows(args.queries, 384, args.seed + 4):
            t = time.perf_counter()
            s.add_note("a new observation", embedding=v)
            s.dense_search(v, k=5)
            loop.append(time.perf_counter() - t)
        ids, mat = s.embedding_matrix()
        # correctness: the nearest stored vector to a stored vector is itself
        j = int(rng.integers(n))
        assert s.dense_search(vecs[j], k=1)[0][0] == int(ids[j])
    size_mb = sum(f.stat().st_size for f in tmp.glob(f"store-{n}.db*")) / 2**20
    return {
        "n_notes": n, "ingest_batched_notes_per_s": round(n / ingest_s, 1), "ingest_batched_s": round(ingest_s, 3),
        "batch": args.batch, "keyword": _ms(ktimes), "dense": _ms(dtimes),
        "dense_matrix_build_ms": round(1e3 * build_s, 2), "add_then_dense_search": _ms(loop),
        "keyword_selective": _ms(sel), "file_mb": round(size_mb, 1),
    }


def bench_single(args: argparse.Namespace, tmp: Path) -> dict:
    texts = sentences(args.single, args.seed + 5)
    vecs = unit_rows(args.single, 384, args.seed + 6)
    with MemoryStore(tmp / "single.db", MiniLMEmbedder(threads=1)) as s:
        t0 = time.perf_counter()
        for t, v in zip(texts, vecs):
            s.add_note(t, embedding=v)
        dt_s = time.perf_counter() - t0
    return {"n_notes": args.single, "notes_per_s": round(args.single / dt_s, 1), "s": round(dt_s, 3)}


def bench_minilm(args: argparse.Namespace) -> dict:
    emb = MiniLMEmbedder(threads=1, batch_size=64)
    t0 = time.perf_counter()
    emb.model  # noqa: B018 - load
    load_s = time.perf_counter() - t0
    texts = sentences(args.encode_n, args.seed + 7)
    emb.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    x = emb.encode(texts)
    enc_s = time.perf_counter() - t0
    assert x.shape == (len(texts), 384)
    single = []
    for q in texts[:20]:
        t = time.perf_counter()
        emb.encode([q])
        single.append(time.perf_counter() - t)
    return {"load_s": round(load_s, 2), "n_sentences": len(texts), "batch_size": 64,
            "encode_sentences_per_s": round(len(texts) / enc_s, 1), "encode_s": round(enc_s, 2),
            "query_encode": _ms(single)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=25)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--single", type=int, default=2000)
    ap.add_argument("--encode-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "episodic-store-vm.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.single, args.encode_n, args.queries = [1000, 3000], 200, 200, 20
    torch.set_num_threads(1)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result: dict = {"benchmark": "episodic_store", "date": now,
                    "machine": machine(torch.device("cpu")), "seed": args.seed, "quick": args.quick,
                    "sqlite": __import__("sqlite3").sqlite_version, "sizes": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in args.sizes:
            r = bench_size(n, args, tmp)
            print(json.dumps(r), flush=True)
            result["sizes"].append(r)
        result["ingest_one_by_one"] = bench_single(args, tmp)
        print(json.dumps(result["ingest_one_by_one"]), flush=True)
    result["minilm"] = bench_minilm(args)
    print(json.dumps(result["minilm"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
