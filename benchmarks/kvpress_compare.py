"""labkit's eviction compressors side by side with kvpress's presses (chapter 2's peer), on bits/char.

    bash benchmarks/peers/setup_kvpress.sh                        # once: .venv-kvpress (transformers<5.3)
    .venv-kvpress/bin/python benchmarks/kvpress_compare.py        # writes benchmarks/results/kvpress-vm.json

The model is chapter 1's ``tinylm-plain`` exported with ``labkit.models.hf.to_hf`` (a ``LlamaForCausalLM``).
The measurement is ``labkit.kv.harness.bits_per_char``'s: the same held-out English windows (seed 0), a
``PREFIX``-byte prefix prefilled and compressed, then the next ``CONTINUATION`` bytes scored teacher-forced
through the compressed cache; the byte right after the prefix is predicted by the prefill's last logits.

- labkit rows: ``bits_per_char(load("tinylm-plain"), compressor)`` itself (labkit's TinyLM and KVCache).
- kvpress rows: the prefix is prefilled on the HF model inside ``with press(model)`` (kvpress compresses each
  layer's cache in a hook *after* that layer's attention, so the prefill's last logits see the full prefix,
  as labkit's), then the continuation is fed in one forward outside the press, with ``position_ids`` that go
  on from the prefix (kvpress's pipeline does the same: evicted entries leave gaps, kept keys keep their
  RoPE positions, as in labkit). ``compression_ratio = 1 - kept``.

Equal methods: StreamingLLM (n_sink 4, kept ``floor(kept * T)``) on both sides is the same rule. SnapKV differs
in details (see ``NOTES``); the script also reports, per budget, how many (layer, head) kept sets agree.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LABKIT_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kvpress  # noqa: E402
import transformers  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from labkit.data import corpus  # noqa: E402
from labkit.kv.base import NoCompression  # noqa: E402
from labkit.kv.eviction import SnapKV, StreamingLLM, attention_probs, snapkv_scores, top_k_indices  # noqa: E402
from labkit.kv.harness import bits_per_char  # noqa: E402
from labkit.models import load  # noqa: E402
from labkit.models.hf import to_hf  # noqa: E402

MODEL = "tinylm-plain"
KEPT = (0.75, 0.5, 0.25)
N_WINDOWS, PREFIX, CONTINUATION, SEED = 16, 64, 63, 0  # bits_per_char's defaults
N_SINK, WINDOW, KERNEL = 4, 8, 5  # StreamingLLM sinks; SnapKV observation window and pooling kernel (both sides)

NOTES = {
    "streamingllm": "same rule both sides: n_sink=4 first + most recent, kept = floor(kept*T), no key re-rotation "
                    "(kept keys keep their original RoPE positions); expected equal to float rounding",
    "snapkv": "same idea, per head, window=8 always kept, kernel=5; differences: kvpress averages the pooled "
              "scores with zero padding (avg_pool1d count_include_pad=True) over the pre-window keys only, labkit "
              "pools over all keys (pooling 'max' by default, 'avg' with count_include_pad=False); kvpress "
              "computes window attention in its own softmax (float32) from the pre-RoPE queries, labkit from a "
              "recomputed prefill; the rankings differ only near the edges (first 2 keys, the 2 before the "
              "window); with kvpress's rule in labkit's pipeline (snapkv-kvpress-rule) every kept set is identical",
    "snapkv-kvpress-rule": "labkit's SnapKV pipeline with kvpress's score detail (mean over the window, "
                           "zero-padded avg pooling over the pre-window keys): isolates the scoring difference",
    "knorm": "kvpress only (labkit has no key-norm eviction): keep the keys with the smallest L2 norm, per head",
}


class SnapKVPressRule(SnapKV):
    """labkit's SnapKV with kvpress's scoring detail: window queries' attention averaged over the pre-window
    keys only, avg-pooled with zero padding (count_include_pad=True). Not in labkit: a check that the rest of
    the pipeline (selection, cache, positions) is the same."""

    name = "snapkv-kvpress-rule"

    def scores(self, probs: torch.Tensor) -> torch.Tensor:
        return kvpress_rule_scores(probs, self.window, self.kernel)


def kvpress_rule_scores(probs: torch.Tensor, window: int, kernel: int) -> torch.Tensor:
    B, H, T, _ = probs.shape
    s = probs[..., -window:, :T - window].mean(-2).reshape(B * H, 1, T - window)
    s = F.avg_pool1d(s, kernel, stride=1, padding=kernel // 2).reshape(B, H, T - window)
    return F.pad(s, (0, window), value=0.0)  # the window itself is always kept (top_k_indices' n_recent)


def windows() -> list[torch.Tensor]:
    """The windows ``bits_per_char`` draws (same generator, same order)."""
    g = np.random.default_rng(SEED)
    text = corpus.english_tokens("heldout")
    out = []
    for _ in range(N_WINDOWS):
        s = int(g.integers(len(text) - PREFIX - CONTINUATION - 1))
        out.append(torch.as_tensor(text[s:s + PREFIX + CONTINUATION + 1].astype(np.int64))[None])
    return out


@torch.no_grad()
def hf_bits_per_char(hf, press, wins: list[torch.Tensor]) -> tuple[float, int]:
    """kvpress's side of bits_per_char; also returns the cache length held after compression (layer 0)."""
    total, count, held = 0.0, 0, 0
    for window in wins:
        cache = DynamicCache()
        prefix_ids = window[:, :PREFIX]
        if press is None:
            first = hf(prefix_ids, past_key_values=cache).logits[:, -1:]
        else:
            with press(hf):
                first = hf(prefix_ids, past_key_values=cache).logits[:, -1:]
        held = cache.get_seq_length()
        pos = torch.arange(PREFIX, PREFIX + CONTINUATION)[None]
        rest = hf(window[:, PREFIX:PREFIX + CONTINUATION], past_key_values=cache, position_ids=pos).logits
        logits = torch.cat([first, rest], dim=1)[0]
        targets = window[0, PREFIX:PREFIX + CONTINUATION + 1]
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        count += targets.numel()
    return total / math.log(2) / count, held


@torch.no_grad()
def snapkv_agreement(model, hf, kept: float, wins: list[torch.Tensor], pooling: str) -> dict:
    """Per (window, layer, head): do kvpress's SnapKVPress and labkit's SnapKV keep the same positions?
    kvpress's kept positions are recovered by wrapping its ``score`` (the top-k it then takes)."""
    press = kvpress.SnapKVPress(compression_ratio=1 - kept, window_size=WINDOW, kernel_size=KERNEL)
    captured: list[torch.Tensor] = []
    original = press.score

    def score(*args, **kwargs):
        s = original(*args, **kwargs)
        n = kvpress.utils.compute_n_kept(s.shape[-1], press.compression_ratio)
        captured.append(s.topk(n, dim=-1).indices.sort(-1).values)
        return s

    press.score = score
    same = total = 0
    jaccard = []
    for window in wins:
        captured.clear()
        with press(hf):
            hf(window[:, :PREFIX], past_key_values=DynamicCache())
        cache = model.new_cache(1)
        model(window[:, :PREFIX], cache=cache)
        probs = attention_probs(model, cache)
        n_keep = max(1, math.floor(kept * PREFIX + 1e-9))
        for layer, p in enumerate(probs):
            sc = kvpress_rule_scores(p, WINDOW, KERNEL) if pooling == "kvpress-rule" else \
                snapkv_scores(p, WINDOW, KERNEL, pooling)
            ours = top_k_indices(sc, n_keep, WINDOW)[0]
            theirs = captured[layer][0]
            for h in range(ours.shape[0]):
                a, b = set(ours[h].tolist()), set(theirs[h].tolist())
                same += a == b
                total += 1
                jaccard.append(len(a & b) / len(a | b))
    return {"identical_sets": same, "sets": total, "mean_jaccard": round(float(np.mean(jaccard)), 4)}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load(MODEL)
    hf = to_hf(model, attn_implementation="sdpa")
    wins = windows()
    rows = []

    def add(kept, method, library, value, held=None, **extra):
        rows.append({"kept": kept, "method": method, "library": library, "bits_per_char": round(value, 6),
                     "cache_len": held, **extra})
        print(f"{kept:5}  {method:20} {library:8} {value:.5f}  len={held}", flush=True)

    lab = bits_per_char(model, NoCompression(), N_WINDOWS, PREFIX, CONTINUATION, SEED)
    theirs, held = hf_bits_per_char(hf, None, wins)
    add(1.0, "full", "labkit", lab, PREFIX)
    add(1.0, "full", "kvpress", theirs, held)
    for kept in KEPT:
        ratio = 1.0 - kept
        n_keep = max(1, math.floor(kept * PREFIX + 1e-9))
        add(kept, "streamingllm", "labkit",
            bits_per_char(model, StreamingLLM(kept, n_sink=N_SINK), N_WINDOWS, PREFIX, CONTINUATION, SEED), n_keep)
        add(kept, "streamingllm", "kvpress",
            *hf_bits_per_char(hf, kvpress.StreamingLLMPress(compression_ratio=ratio, n_sink=N_SINK), wins))
        for pooling in ("max", "avg", "kvpress-rule"):
            comp = SnapKVPressRule(kept, window=WINDOW, kernel=KERNEL) if pooling == "kvpress-rule" else \
                SnapKV(kept, window=WINDOW, kernel=KERNEL, pooling=pooling)
            add(kept, f"snapkv-{pooling}", "labkit",
                bits_per_char(model, comp, N_WINDOWS, PREFIX, CONTINUATION, SEED), n_keep,
                kept_sets_vs_kvpress=snapkv_agreement(model, hf, kept, wins, pooling))
        add(kept, "snapkv", "kvpress",
            *hf_bits_per_char(hf, kvpress.SnapKVPress(compression_ratio=ratio, window_size=WINDOW,
                                                      kernel_size=KERNEL), wins))
        add(kept, "knorm", "kvpress", *hf_bits_per_char(hf, kvpress.KnormPress(compression_ratio=ratio), wins))

    def value(kept, method, library):
        return next(r["bits_per_char"] for r in rows
                    if (r["kept"], r["method"], r["library"]) == (kept, method, library))

    same = {f"{k}": {"streamingllm_abs_diff": abs(value(k, "streamingllm", "labkit")
                                                  - value(k, "streamingllm", "kvpress")),
                     "snapkv_avg_abs_diff": abs(value(k, "snapkv-avg", "labkit") - value(k, "snapkv", "kvpress")),
                     "snapkv_kvpress_rule_abs_diff": abs(value(k, "snapkv-kvpress-rule", "labkit")
                                                         - value(k, "snapkv", "kvpress"))}
            for k in KEPT}
    same["1.0"] = {"full_abs_diff": abs(value(1.0, "full", "labkit") - value(1.0, "full", "kvpress"))}
    same = {k: {m: round(x, 6) for m, x in v.items()} for k, v in same.items()}
    out = {
        "benchmark": "kvpress_compare", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": MODEL, "setup": {"n_windows": N_WINDOWS, "prefix": PREFIX, "continuation": CONTINUATION,
                                  "seed": SEED, "n_sink": N_SINK, "snapkv_window": WINDOW, "snapkv_kernel": KERNEL,
                                  "hf_attn_implementation": "sdpa", "compression_ratio": "1 - kept"},
        "versions": {"kvpress": version("kvpress"), "transformers": transformers.__version__,
                     "torch": torch.__version__, "numpy": np.__version__, "labkit": version("labkit")},
        "machine": machine(), "rows": rows, "differences": same, "notes": NOTES,
    }
    path = ROOT / "benchmarks" / "results" / "kvpress-vm.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(same, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
