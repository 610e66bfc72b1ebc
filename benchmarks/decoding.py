"""Decoding benchmarks: labkit's decoders against their Hugging Face peers, on the same weights.

The target is ``tinylm-plain`` and the draft ``tinylm-draft-plain`` (no token shift, so both export to HF
``LlamaForCausalLM`` weight for weight: ``labkit.models.hf.to_hf``). Every row decodes the same prompts,
greedily, to the same length; each row is a ``Method``: a name, a callable ``prompt -> new ids`` and
optionally its peer (the row its ``vs_peer`` ratio is taken against). To add a decoder, append a
``Method`` to the list ``methods()`` returns.

    python benchmarks/decoding.py                    # writes benchmarks/results/decoding-<host>.json
    python benchmarks/decoding.py --quick --out /tmp/d.json   # smoke test: 2 repeats, 24 new tokens

Conventions (as ``benchmarks/run.py``): one thread (``torch.set_num_threads(1)``), every method warmed up
first, then the methods take turns (round-robin, so a machine whose speed drifts slows them all alike);
tokens/s is ``max_new_tokens / median`` of >= 5 repeats (7 by default); every ratio is taken within this
one run, on one machine. Before timing, each method's output is compared with labkit's cached greedy
``generate`` (``identical``): all rows here are greedy and must reproduce it token for token.
A second table (``run_tinylm``, key "tinylm") races chapter 1's methods on the token-shift ``tinylm``
(speculative with ``tinylm-draft``, prompt lookup, Medusa and PPD trees of the planned size) against
its own cached greedy decoding: the issue's "best method >= 1.5x with identical output" target.
Prompts (``prompts()``): the first 32 bytes of the held-out English, 32 bytes of held-out prose, and a
copy-ish structured prompt (a full copy episode, then the next one's ``<doc> <copy> values <sep>``) from
``labkit.data.corpus``; 96 new tokens fill the context of 128.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort a shared machine
os.environ.setdefault("LABKIT_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from labkit import decoding  # noqa: E402
from labkit.data import corpus  # noqa: E402
from labkit.models import load  # noqa: E402
from labkit.models import tokenizer as tk  # noqa: E402
from labkit.models.hf import hf_generate, to_hf  # noqa: E402

TARGET, DRAFT = "tinylm-plain", "tinylm-draft-plain"
GAMMA = 4  # draft tokens per round, both libraries (HF: num_assistant_tokens, constant schedule)
LOOKUP_NGRAM, LOOKUP_DRAFT = 3, 8  # prompt lookup: longest n-gram matched, tokens proposed
BASELINE = "labkit greedy (KV cache)"
NOTES = {
    "tokens_per_s": "max_new_tokens / median seconds of one whole call (prefill included), batch size 1",
    "vs_labkit_greedy": "labkit greedy's median time / this row's (> 1: faster than labkit greedy)",
    "vs_peer": "the peer row's median time / this row's (> 1: faster than its peer in the other library)",
    "*_paired": "median over the rounds of the same ratio taken round by round (the rows of a round run back "
                "to back): robust to a shared machine's busy spells",
    "best_tokens_per_s": "max_new_tokens / the fastest repeat",
    "target_forward_calls": "forward passes of the target model in one call, prefill included",
    "prompt lookup": "the libraries draft differently: labkit continues the latest earlier match of the last "
                     "n-gram, HF the earliest; both verify greedily, so the tokens agree, not the calls",
    "HF assisted": "the assistant drafts min(γ, tokens left - 1) tokens a round, no confidence cut-off "
                   "(assistant_confidence_threshold=0), schedule constant",
}


@dataclass
class Method:
    """One row: ``run(prompt) -> new ids``; ``peer``: the name of the row to compare with (or None)."""

    name: str
    run: Callable[[list[int]], list[int]]
    peer: str | None = None
    library: str = "labkit"


def prompts() -> dict[str, list[int]]:
    """The fixed prompts, 32 tokens each: held-out English (twice) and a copy-ish structured prompt.

    "english" is the held-out text's first 32 bytes (the middle of a code sample: the model continues with
    a newline and a run of spaces, an easy text to speculate on); "prose" starts at the first held-out
    paragraph that begins "Return " (the model's greedy continuation stays words there).
    """
    heldout = corpus.english_text("heldout")
    english = tk.encode(heldout[:32])
    start = re.search(r"\n\n\s*(Return )", heldout).start(1)
    prose = tk.encode(heldout[start:start + 32])
    g = np.random.default_rng(2024)
    first = corpus.copy_episode(g, 8).tokens  # <doc> <copy> 8 values <sep> the 8 values: 19 tokens
    structured = first + corpus.copy_episode(g, 10).tokens[:13]  # then <doc> <copy> 10 values <sep>
    return {"english": english, "prose": prose, "copy": structured}


def methods(target, draft, hf_target, hf_draft, max_new_tokens: int) -> list[Method]:
    """The rows, labkit first, each HF row naming its labkit peer (and vice versa)."""
    n = max_new_tokens
    return [
        Method(BASELINE, lambda p: decoding.generate(target, p, n), peer="HF generate greedy (use_cache)"),
        Method("HF generate greedy (use_cache)", lambda p: hf_generate(hf_target, p, n), peer=BASELINE,
               library="transformers"),
        Method(f"labkit speculative (γ={GAMMA})",
               lambda p: decoding.speculative_generate(target, draft, p, n, gamma=GAMMA)[0],
               peer=f"HF assisted (γ={GAMMA}, constant)"),
        Method(f"HF assisted (γ={GAMMA}, constant)",
               lambda p: hf_generate(hf_target, p, n, assistant=hf_draft, num_assistant_tokens=GAMMA),
               peer=f"labkit speculative (γ={GAMMA})", library="transformers"),
        Method(f"labkit prompt lookup (n={LOOKUP_NGRAM}, k={LOOKUP_DRAFT})",
               lambda p: decoding.prompt_lookup_generate(target, p, n, ngram=LOOKUP_NGRAM,
                                                         num_draft=LOOKUP_DRAFT)[0],
               peer=f"HF prompt lookup (n={LOOKUP_NGRAM}, k={LOOKUP_DRAFT})"),
        Method(f"HF prompt lookup (n={LOOKUP_NGRAM}, k={LOOKUP_DRAFT})",
               lambda p: hf_generate(hf_target, p, n, prompt_lookup_num_tokens=LOOKUP_DRAFT,
                                     max_matching_ngram_size=LOOKUP_NGRAM),
               peer=f"labkit prompt lookup (n={LOOKUP_NGRAM}, k={LOOKUP_DRAFT})", library="transformers"),
    ]


def target_calls(model: torch.nn.Module, fn: Callable[[], object]) -> int:
    """How many forward passes of ``model`` ``fn`` makes (a forward hook counts them)."""
    calls = [0]
    handle = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        fn()
    finally:
        handle.remove()
    return calls[0]


def time_methods(rows: list[Method], prompt: list[int], repeats: int) -> dict[str, list[float]]:
    """Seconds of each row's ``run(prompt)``: one warm-up each, then ``repeats`` round-robin turns."""
    for row in rows:
        row.run(prompt)
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for _ in range(repeats):
        for row in rows:
            start = time.perf_counter()
            row.run(prompt)
            times[row.name].append(time.perf_counter() - start)
    return times


def paired(reference: list[float], times: list[float]) -> float:
    """Median over rounds of reference[r] / times[r]: the two ran back to back, so a busy spell of a shared
    machine slows both (more robust there than the ratio of the medians)."""
    return round(statistics.median(a / b for a, b in zip(reference, times)), 3)


def machine() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
        "device": "cpu", "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run(repeats: int, max_new_tokens: int) -> dict:
    target, draft = load(TARGET), load(DRAFT)
    hf_target, hf_draft = to_hf(target), to_hf(draft)
    rows = methods(target, draft, hf_target, hf_draft, max_new_tokens)
    records = []
    totals: dict[str, float] = {row.name: 0.0 for row in rows}
    all_times: dict[str, list[float]] = {row.name: [] for row in rows}  # every round of every prompt
    for prompt_name, prompt in prompts().items():
        expected = decoding.generate(target, prompt, max_new_tokens)
        check = {row.name: row.run(prompt) == expected for row in rows}
        spec_stats = decoding.speculative_generate(target, draft, prompt, max_new_tokens, gamma=GAMMA)[1]
        lookup_stats = decoding.prompt_lookup_generate(target, prompt, max_new_tokens, ngram=LOOKUP_NGRAM,
                                                       num_draft=LOOKUP_DRAFT)[1]
        calls = {}
        for row in rows:
            model = hf_target if row.library == "transformers" else target
            calls[row.name] = target_calls(model, lambda row=row, prompt=prompt: row.run(prompt))
        times = time_methods(rows, prompt, repeats)
        median = {name: statistics.median(ts) for name, ts in times.items()}
        for row in rows:
            totals[row.name] += median[row.name]
            all_times[row.name] += times[row.name]
            rec = {
                "prompt": prompt_name, "prompt_tokens": len(prompt), "method": row.name, "library": row.library,
                "new_tokens": max_new_tokens, "tokens_per_s": round(max_new_tokens / median[row.name], 1),
                "median_ms": round(1e3 * median[row.name], 2),
                "times_ms": [round(1e3 * t, 2) for t in times[row.name]],
                "vs_labkit_greedy": round(median[BASELINE] / median[row.name], 3),
                "peer": row.peer,
                "vs_peer": round(median[row.peer] / median[row.name], 3) if row.peer else None,
                "best_tokens_per_s": round(max_new_tokens / min(times[row.name]), 1),
                "vs_labkit_greedy_paired": paired(times[BASELINE], times[row.name]),
                "vs_peer_paired": paired(times[row.peer], times[row.name]) if row.peer else None,
                "identical_to_greedy": check[row.name],
                "target_forward_calls": calls[row.name],
            }
            if row.name.startswith("labkit speculative"):
                rec.update(alpha=round(spec_stats.alpha, 3), tokens_per_call=round(spec_stats.tokens_per_call, 3))
            if row.name.startswith("labkit prompt lookup"):
                rec.update(alpha=round(lookup_stats.alpha, 3),
                           tokens_per_call=round(lookup_stats.tokens_per_call, 3))
            records.append(rec)
    n_prompts = len(prompts())
    summary = []
    for row in rows:  # all prompts together: total tokens over the sum of the per-prompt medians
        mine = [r for r in records if r["method"] == row.name]
        summary.append({
            "method": row.name, "library": row.library,
            "tokens_per_s": round(n_prompts * max_new_tokens / totals[row.name], 1),
            "vs_labkit_greedy": round(totals[BASELINE] / totals[row.name], 3),
            "peer": row.peer, "vs_peer": round(totals[row.peer] / totals[row.name], 3) if row.peer else None,
            "vs_labkit_greedy_paired": paired(all_times[BASELINE], all_times[row.name]),
            "vs_peer_paired": paired(all_times[row.peer], all_times[row.name]) if row.peer else None,
            "identical_to_greedy": all(r["identical_to_greedy"] for r in mine),
        })
    return {"records": records, "summary": summary}


def tinylm_methods(target, draft, max_new_tokens: int) -> list[Method]:
    """Chapter 1's methods on the token-shift ``tinylm`` (no HF peer: HF Llama has no token shift)."""
    from labkit.decoding import parallel

    n = max_new_tokens
    heads, prompts_ppd = parallel.load_medusa(), parallel.load_prompt_tokens()
    plans = {name: parallel.plan_tree(target, g) for name, g in (("medusa", heads), ("ppd", prompts_ppd))}
    return [
        Method(BASELINE, lambda p: decoding.generate(target, p, n)),
        Method(f"labkit speculative (γ={GAMMA}, tinylm-draft)",
               lambda p: decoding.speculative_generate(target, draft, p, n, gamma=GAMMA)[0]),
        Method(f"labkit prompt lookup (n={LOOKUP_NGRAM}, k={LOOKUP_DRAFT})",
               lambda p: decoding.prompt_lookup_generate(target, p, n, ngram=LOOKUP_NGRAM, num_draft=LOOKUP_DRAFT)[0]),
        Method(f"Medusa tree ({plans['medusa']['size']} nodes, planned)",
               lambda p: parallel.tree_generate(target, p, n, heads, tree=plans["medusa"]["size"])[0]),
        Method(f"PPD tree ({plans['ppd']['size']} nodes, prompts on {plans['ppd']['prompt_nodes']}, planned)",
               lambda p: parallel.tree_generate(target, p, n, prompts_ppd, tree=plans["ppd"]["size"],
                                                prompt_nodes=plans["ppd"]["prompt_nodes"])[0]),
    ]


def run_tinylm(repeats: int, max_new_tokens: int) -> list[dict]:
    """The single-model methods on tinylm against its cached greedy decoding, per prompt; every row must
    reproduce greedy token for token."""
    target, draft = load("tinylm"), load("tinylm-draft")
    rows = tinylm_methods(target, draft, max_new_tokens)
    records = []
    for prompt_name, prompt in prompts().items():
        expected = decoding.generate(target, prompt, max_new_tokens)
        times = time_methods(rows, prompt, repeats)
        median = {name: statistics.median(ts) for name, ts in times.items()}
        for row in rows:
            records.append({
                "prompt": prompt_name, "method": row.name, "new_tokens": max_new_tokens,
                "tokens_per_s": round(max_new_tokens / median[row.name], 1),
                "vs_labkit_greedy": round(median[BASELINE] / median[row.name], 3),
                "vs_labkit_greedy_paired": paired(times[BASELINE], times[row.name]),
                "identical_to_greedy": row.run(prompt) == expected,
                "target_forward_calls": target_calls(target, lambda row=row, prompt=prompt: row.run(prompt)),
            })
    return records


def print_table(result: dict) -> None:
    print(f"{'prompt':8} {'method':36} {'tok/s':>7} {'vs greedy':>9} {'vs peer':>7} {'(paired)':>8} {'same':>4} "
          f"{'calls':>5}")
    for r in result["records"] + [{**r, "prompt": "all"} for r in result["summary"]]:
        peer = "" if r["vs_peer"] is None else f"{r['vs_peer']:.2f}"
        paired_peer = "" if r["vs_peer_paired"] is None else f"{r['vs_peer_paired']:.2f}"
        calls = r.get("target_forward_calls", "")
        print(f"{r['prompt']:8} {r['method']:36} {r['tokens_per_s']:7.1f} {r['vs_labkit_greedy']:9.2f} {peer:>7} "
              f"{paired_peer:>8} {'yes' if r['identical_to_greedy'] else 'NO':>4} {calls:>5}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 24 new tokens (a smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/decoding-<host>.json; --quick: no file unless given)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 7, >= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    if not args.quick and repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a full run, got {repeats}")
    max_new_tokens = 24 if args.quick else 96
    started = time.perf_counter()
    result = {
        "host": socket.gethostname(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "target": TARGET, "draft": DRAFT, "gamma": GAMMA, "repeats": repeats, "max_new_tokens": max_new_tokens,
        "prompts": {name: tk.decode(ids) for name, ids in prompts().items()},
        "notes": NOTES,
        **run(repeats, max_new_tokens),
        "tinylm": run_tinylm(repeats, max_new_tokens),
    }
    result["machine"]["load_avg_1min_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_table(result)
    print("\ntinylm (token shift): chapter 1's methods vs its cached greedy decoding")
    for r in result["tinylm"]:
        print(f"{r['prompt']:8} {r['method']:44} {r['tokens_per_s']:7.1f} {r['vs_labkit_greedy']:6.2f}× "
              f"(paired {r['vs_labkit_greedy_paired']:.2f}×) {'yes' if r['identical_to_greedy'] else 'NO':>4} "
              f"{r['target_forward_calls']:>4} calls")
    out = args.out
    if out is None and not args.quick:
        out = ROOT / "benchmarks" / "results" / f"decoding-{socket.gethostname()}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
