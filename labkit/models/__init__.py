"""The small trained models the book ships (weights under ``labkit/assets/``, made by ``labkit.train``).

    model = labkit.models.load("tinylm")        # ~2M-parameter TinyLM with token shift
    model = labkit.models.load("tinylm-draft")  # ~10x smaller draft model (speculative decoding)
    model = labkit.models.load("tinylm-plain")  # the target's size without token shift (a plain Llama)
    model = labkit.models.load("tinylm-draft-plain")  # the draft's size without token shift (its draft)

The two plain models export to Hugging Face ``LlamaForCausalLM`` with ``labkit.models.hf.to_hf`` (the
peers of ``benchmarks/decoding.py``).

Each ``NAME`` has ``NAME.pt`` (a torch state dict, loaded with ``weights_only=True``), ``NAME.json``
(config, training recipe, final metrics, provenance) and ``NAME.curve.json`` (the training curve).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from labkit.models.tinylm import KVCache, TinyLM, TinyLMConfig

__all__ = ["ASSETS", "KVCache", "MODELS", "TinyLM", "TinyLMConfig", "available", "card", "curve", "load"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS = ("tinylm", "tinylm-draft", "tinylm-plain", "tinylm-draft-plain")


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}, got {name!r}")


def available() -> list[str]:
    """The shipped models whose weights are present."""
    return [n for n in MODELS if (ASSETS / f"{n}.pt").exists() and (ASSETS / f"{n}.json").exists()]


def card(name: str) -> dict:
    """The model's card: config, training recipe, final metrics and the command that trained it."""
    _check_name(name)
    path = ASSETS / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no weights for {name!r} under {ASSETS}: run `python -m labkit.train {name}`")
    return json.loads(path.read_text())


def curve(name: str) -> list[dict]:
    """The training curve: a list of {step, minutes, tokens, lookup_accuracy, english_bpc, train_loss}."""
    _check_name(name)
    return json.loads((ASSETS / f"{name}.curve.json").read_text())


def load(name: str, device: str | torch.device = "cpu") -> TinyLM:
    """The trained model ``name`` (one of ``MODELS``) in eval mode on ``device``."""
    info = card(name)
    model = TinyLM(TinyLMConfig.from_dict(info["config"]))
    state = torch.load(ASSETS / f"{name}.pt", map_location="cpu", weights_only=True)
    state = {k: v.float() for k, v in state.items()}
    if "lm_head.weight" not in state:  # tied to the input embedding; stored once
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state)
    return model.to(device).eval()
