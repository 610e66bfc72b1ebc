"""The chapter's main figure: MQAR accuracy against state size, for every mixer, several sizes and seeds.

    python -m labkit.memory.sweep [--quick] [--out PATH] [--mixers a,b] [--seeds N] [--resume]
    python -m labkit.memory.sweep --merge part1.json part2.json     # -> labkit/assets/memory_sweep.json

Each point is ``labkit.memory.train.mqar_run`` at one mixer, one ``d_model`` (the state size follows
from it: ``2·T·d`` per layer for attention, ``d²/H`` per layer for linear attention and DeltaNet, …) and
one seed, on one fixed task; linear attention and DeltaNet get extra points with the pairs read twice
(JRT, ``n_passes = 2``). Training runs a fixed number of steps, so a point reruns exactly.

The JSON written to ``--out`` holds ``meta`` (date, machine, versions, the settings) and ``records``,
one per point: {mixer, d_model, n_heads, state_size, seed, accuracy, steps, seconds, n_pairs, seq_len,
n_passes, vocab_size, chance, shortcut, curve}. The file is rewritten after every point; ``--resume``
skips the points it already holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from labkit.memory import MIXERS, mixer_class
from labkit.runtime import load_results

__all__ = ["FULL", "QUICK", "SweepSettings", "curves", "load", "load_titans_parts", "main", "merge", "points",
           "run_sweep", "titans_parts"]

JRT_MIXERS = ("linear", "deltanet")


@dataclass(frozen=True)
class SweepSettings:
    """One sweep: the task, the model sizes, the training budget."""

    seq_len: int = 128
    n_pairs: int = 16
    vocab_size: int = 64
    d_models: tuple[int, ...] = (8, 16, 32, 64)
    n_layers: int = 2
    n_heads: int = 1
    steps: int = 600
    lr: float = 1e-2
    batch_size: int = 64
    n_eval: int = 512
    seeds: int = 3


FULL = SweepSettings(seq_len=64, n_pairs=8, vocab_size=64, d_models=(16, 32, 64), steps=300, seeds=2)
# FULL's task: 8 pairs in 64 tokens; attention (d_model 32) reaches 1.0 by step ~250 and a recurrent memory of
# width 16 is strained. Titans and ATLAS materialise a memory per token inside a chunk and cost 10-60x more per
# step at width 64 on a CPU (2.7 and 12 s per step), so they stop at the widths in MAX_D_MODEL.
QUICK = SweepSettings(seq_len=64, n_pairs=8, vocab_size=64, d_models=(16, 32), steps=150, n_eval=256, seeds=1)
FIGURE_MIXERS = ("attention", "linear", "deltanet", "gated_deltanet", "titans", "atlas", "mom", "lssl")
MAX_D_MODEL = {"titans": 32, "titans_mag": 32, "titans_mac": 32, "atlas": 16}


def points(settings: SweepSettings, mixers: list[str]) -> list[dict]:
    """Every (mixer, d_model, n_passes, seed) of the sweep, in run order (seed outermost)."""
    out = []
    for seed in range(settings.seeds):
        for mixer in mixers:
            passes = (1, 2) if mixer in JRT_MIXERS else (1,)
            for n_passes in passes:
                for d_model in settings.d_models:
                    if d_model > MAX_D_MODEL.get(mixer, d_model):
                        continue
                    out.append({"mixer": mixer, "d_model": d_model, "n_passes": n_passes, "seed": seed})
    return out


def _key(record: dict) -> tuple:
    return record["mixer"], record["d_model"], record["n_passes"], record["seed"]


def machine() -> dict:
    """Where the sweep ran: host, CPU, threads, accelerator, versions."""
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_sweep(settings: SweepSettings, mixers: list[str], out: Path | None = None, resume: bool = False,
              verbose: bool = True) -> dict:
    """Run every point of ``points(settings, mixers)``; write the JSON after each if ``out`` is given."""
    from labkit.memory.train import mqar_run

    records: list[dict] = []
    if resume and out is not None and out.exists():
        records = json.loads(out.read_text())["records"]
    done = {_key(r) for r in records}
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "settings": asdict(settings), "mixers": mixers, "command": " ".join(sys.argv)}
    todo = [p for p in points(settings, mixers) if _key(p) not in done]
    start = time.perf_counter()
    for i, point in enumerate(todo):
        record = mqar_run(point["mixer"], point["d_model"], settings.n_pairs, settings.seq_len, settings.vocab_size,
                          steps=settings.steps, seed=point["seed"], n_layers=settings.n_layers,
                          n_heads=settings.n_heads, n_passes=point["n_passes"], lr=settings.lr,
                          batch_size=settings.batch_size, n_eval=settings.n_eval)
        records.append(record)
        if verbose:
            print(f"[{i + 1}/{len(todo)}] {record['mixer']:>14} d={record['d_model']:<4} "
                  f"passes={record['n_passes']} seed={record['seed']}  state={record['state_size']:>8}  "
                  f"acc={record['accuracy']:.3f}  {record['seconds']:.1f} s", flush=True)
        if out is not None:
            meta["seconds"] = time.perf_counter() - start
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    meta["seconds"] = time.perf_counter() - start
    return {"meta": meta, "records": records}


RESULTS = Path(__file__).resolve().parent.parent / "assets" / "memory_sweep.json"  # shipped with the package


def load(path: str | Path | None = None) -> dict:
    """The committed sweep (``labkit/assets/memory_sweep.json``) or the file at ``path``."""
    return load_results(RESULTS, "labkit.memory.sweep", path, what="sweep results")


def curves(result: dict, n_passes: int = 1) -> dict[str, tuple[list[int], list[list[float]]]]:
    """Per mixer: (state sizes, accuracies (seeds, sizes)) for ``viz.line_band(None, ...)``; only the
    points with ``n_passes`` and only the seeds that have every size."""
    by_mixer: dict[str, dict[int, dict[int, float]]] = {}
    for r in result["records"]:
        if r["n_passes"] == n_passes:
            by_mixer.setdefault(r["mixer"], {}).setdefault(r["state_size"], {})[r["seed"]] = r["accuracy"]
    out = {}
    for mixer, sizes in by_mixer.items():
        xs = sorted(sizes)
        seeds = sorted(set.intersection(*(set(sizes[x]) for x in xs)))
        out[mixer] = (xs, [[sizes[x][s] for x in xs] for s in seeds])
    return out


def merge(paths: list[Path], out: Path) -> dict:
    """One sweep file from several (the same settings, disjoint points): records in file order, the
    parts' metadata kept under ``meta["parts"]``."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    settings = {json.dumps(part["meta"]["settings"], sort_keys=True) for part in parts}
    if len(settings) != 1:
        raise ValueError(f"the files to merge were run with different settings: {sorted(settings)}")
    records = [r for part in parts for r in part["records"]]
    keys = [_key(r) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("the files to merge share points; run them with disjoint --mixers")
    meta = {**parts[0]["meta"], "mixers": [m for part in parts for m in part["meta"]["mixers"]],
            "seconds": sum(part["meta"]["seconds"] for part in parts), "parts": [part["meta"] for part in parts]}
    result = {"meta": meta, "records": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{len(records)} points from {len(parts)} files -> {out}")
    return result


def available_mixers() -> list[str]:
    """The registered mixers whose module imports (the others are reported and left out)."""
    names = []
    for name in MIXERS:
        try:
            mixer_class(name)
        except (ImportError, AttributeError) as err:
            print(f"skipping mixer {name!r}: {type(err).__name__}: {err}", file=sys.stderr)
        else:
            names.append(name)
    return names


TITANS_PARTS = RESULTS.with_name("titans_parts.json")
PARTS = ((False, False), (True, False), (False, True), (True, True))  # (momentum, forgetting)


def titans_parts(settings: SweepSettings = FULL, d_model: int = 32, seed: int = 0, steps: int | None = None,
                 parts=PARTS, progress: bool = False) -> list[dict]:
    """Titans on the sweep's task with momentum and forgetting switched on and off (one ``mqar_run`` each).

    Returns one record per (momentum, forgetting): those two flags, ``accuracy``, ``steps``, ``seconds``.
    """
    from labkit.memory.train import mqar_run
    from labkit.runtime import progress as progress_bar

    out = []
    for momentum, forgetting in (progress_bar(parts, desc="titans parts") if progress else parts):
        r = mqar_run("titans", d_model, settings.n_pairs, settings.seq_len, settings.vocab_size,
                     steps=steps or settings.steps, seed=seed, n_layers=settings.n_layers, n_heads=settings.n_heads,
                     lr=settings.lr, batch_size=settings.batch_size, n_eval=settings.n_eval,
                     momentum=momentum, forgetting=forgetting)
        out.append({"momentum": momentum, "forgetting": forgetting, "d_model": d_model, "seed": seed,
                    "accuracy": r["accuracy"], "steps": r["steps"], "seconds": r["seconds"]})
    return out


def load_titans_parts(path: str | Path | None = None) -> dict:
    """The committed parts-switched-off run (``python -m labkit.memory.sweep --titans-parts``)."""
    path = Path(path) if path is not None else TITANS_PARTS
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}: run `python -m labkit.memory.sweep --titans-parts`")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.memory.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke-test sweep (minutes on a CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default labkit/assets/memory_sweep.json; --quick: /tmp/...)")
    parser.add_argument("--mixers", default=None, help=f"comma-separated subset of {','.join(MIXERS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per point (overrides the preset)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per point (overrides the preset)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible timings)")
    parser.add_argument("--resume", action="store_true", help="keep the points already in --out")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine these sweep files (run in parallel with different --mixers) into --out")
    parser.add_argument("--titans-parts", action="store_true",
                        help="Titans with momentum/forgetting switched off, width 32, seed 0 -> titans_parts.json")
    args = parser.parse_args(argv)
    if args.titans_parts:
        torch.set_num_threads(args.threads)
        result = {"meta": {**machine(), "settings": asdict(FULL)}, "records": titans_parts(FULL, progress=True)}
        (args.out or TITANS_PARTS).write_text(json.dumps(result, indent=1))
        return result
    if args.merge:
        return merge(args.merge, args.out or RESULTS)

    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        settings = replace(settings, seeds=args.seeds)
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.mixers:
        mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
        for name in mixers:
            mixer_class(name)  # unknown names and broken modules fail here, before any training
    else:
        mixers = [m for m in FIGURE_MIXERS if m in available_mixers()]
    out = args.out or (Path("/tmp/memory_sweep_quick.json") if args.quick else RESULTS)
    torch.set_num_threads(args.threads)
    result = run_sweep(settings, mixers, out=out, resume=args.resume)
    print(f"{len(result['records'])} points in {result['meta']['seconds']:.0f} s -> {out}")
    return result


if __name__ == "__main__":
    main()
