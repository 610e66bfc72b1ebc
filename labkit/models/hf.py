"""TinyLM as a Hugging Face ``LlamaForCausalLM``: the peer the book compares labkit's decoders with.

    from labkit.models import load
    from labkit.models.hf import hf_generate, to_hf

    target, draft = to_hf(load("tinylm-plain")), to_hf(load("tinylm-draft-plain"))
    new_ids = hf_generate(target, prompt_ids, 96)                                   # greedy, KV cache
    new_ids = hf_generate(target, prompt_ids, 96, assistant=draft, num_assistant_tokens=4)  # assisted

A TinyLM built with ``token_shift=False`` *is* a Llama (pre-norm RMSNorm, RoPE in the rotate-half layout,
gated FFN, tied embeddings) whose gate uses ReLU: ``to_hf`` maps its config onto a ``LlamaConfig`` with
``hidden_act="relu"`` and copies the weights name for name (HF nests the decoder under ``model.``). The
logits agree to float rounding (tests/unit/test_hf.py). Models are built from configs: nothing is
downloaded.

Token ids. Our tokenizer (``labkit.models.tokenizer``) has no end-of-text token, so the exported config
sets ``eos_token_id=None`` (generation always runs ``max_new_tokens``, like ``labkit.decoding.generate``),
``bos_token_id=DOC`` (the token that starts every structured episode) and ``pad_token_id=0`` (the NUL byte,
which no text of the corpus holds; padding is masked out anyway).

``transformers`` is optional: it is imported when these functions run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from labkit.models import tokenizer as tk
from labkit.models.tinylm import TinyLM

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["BOS_TOKEN_ID", "PAD_TOKEN_ID", "hf_config", "hf_generate", "to_hf"]

BOS_TOKEN_ID = tk.DOC  # begins every structured episode
PAD_TOKEN_ID = 0  # the NUL byte: never in the corpus


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without transformers
        raise ImportError("labkit.models.hf needs Hugging Face transformers: `pip install transformers`") from err
    return transformers


def hf_config(model: TinyLM, attn_implementation: str = "sdpa") -> LlamaConfig:
    """The ``LlamaConfig`` of a plain (``token_shift=False``) TinyLM: same sizes, ReLU gate, tied embeddings.

    Raises ValueError when ``model`` uses token shift: HF Llama has no second embedding of the previous
    token, so such a model cannot be expressed as a ``LlamaForCausalLM``.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a labkit TinyLM, got {type(model).__name__}")
    cfg = model.config
    if cfg.token_shift:
        raise ValueError("model must be a plain TinyLM (token_shift=False), got token_shift=True: HF Llama has no "
                         "token shift (no embedding of the previous token), so it cannot hold this model; "
                         "export e.g. 'tinylm-plain' or 'tinylm-draft-plain'")
    transformers = _transformers()
    config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="relu",
        max_position_embeddings=cfg.context,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=None,
        pad_token_id=PAD_TOKEN_ID,
        use_cache=True,
    )
    config._attn_implementation = attn_implementation
    return config


@torch.no_grad()
def to_hf(model: TinyLM, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A ``transformers.LlamaForCausalLM`` with ``model``'s weights (copied), in eval mode, same device and dtype.

    ``model`` must have ``token_shift=False`` (ValueError otherwise). ``attn_implementation``: HF's
    attention ("sdpa", the default, or "eager"). The result's ``generation_config`` is greedy with no
    end-of-text token: ``generate`` produces exactly ``max_new_tokens`` tokens.
    """
    config = hf_config(model, attn_implementation)  # checks ``model`` before importing transformers
    transformers = _transformers()
    p = model.embed_tokens.weight
    hf = transformers.LlamaForCausalLM(config)
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v
             for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to model.embed_tokens.weight
    if missing or unexpected:
        raise RuntimeError(f"TinyLM -> LlamaForCausalLM weight names do not match: missing {missing}, "
                           f"unexpected {unexpected}")
    hf.tie_weights()
    if hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        hf.lm_head.weight = hf.model.embed_tokens.weight
    gen = hf.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = BOS_TOKEN_ID, None, PAD_TOKEN_ID
    gen.do_sample, gen.temperature, gen.top_k, gen.top_p = False, None, None, None
    return hf.to(device=p.device, dtype=p.dtype).eval()


def _check_hf(name: str, value) -> None:
    transformers = _transformers()
    if not isinstance(value, transformers.PreTrainedModel):
        raise TypeError(f"{name} must be a transformers PreTrainedModel (e.g. to_hf(model)), "
                        f"got {type(value).__name__}")


@torch.inference_mode()
def hf_generate(
    hf_model,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    assistant=None,
    num_assistant_tokens: int = 4,
    schedule: str = "constant",
    use_cache: bool = True,
    **generate_kwargs,
) -> list[int]:
    """Greedy ``hf_model.generate`` of one prompt; returns the ``max_new_tokens`` new ids as ``list[int]``.

    prompt_ids: (T,) token ids. ``assistant``: an HF model (e.g. ``to_hf(load("tinylm-draft-plain"))``)
    for assisted generation (HF's speculative decoding): it drafts ``num_assistant_tokens`` tokens per
    round; ``schedule="constant"`` keeps that number fixed (compare with a fixed γ), "heuristic" is HF's
    default (+2 after a fully accepted round, −1 otherwise). The assistant's dynamic confidence cut-off
    is switched off, so every round drafts the full number. The assistant's ``generation_config`` is
    set accordingly (in place). ``generate_kwargs`` go to ``generate`` unchanged.
    """
    _check_hf("hf_model", hf_model)
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1 or prompt_ids.is_floating_point():
            raise ValueError(f"prompt_ids must be a 1-D tensor of token ids, got shape {tuple(prompt_ids.shape)} "
                             f"of {prompt_ids.dtype}")
        prompt_ids = prompt_ids.tolist()
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids must hold at least one token, got an empty prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    context = hf_model.config.max_position_embeddings
    if len(ids) + max_new_tokens > context:
        raise ValueError(f"max_new_tokens must be <= {context - len(ids)} (context {context} - prompt of "
                         f"{len(ids)}), got {max_new_tokens}")
    kwargs: dict = {}
    if assistant is not None:
        _check_hf("assistant", assistant)
        if isinstance(num_assistant_tokens, bool) or not isinstance(num_assistant_tokens, int) \
                or num_assistant_tokens < 1:
            raise ValueError(f"num_assistant_tokens must be an int >= 1, got {num_assistant_tokens!r}")
        if schedule not in ("constant", "heuristic", "heuristic_transient"):
            raise ValueError(f"schedule must be 'constant', 'heuristic' or 'heuristic_transient', got {schedule!r}")
        gen = assistant.generation_config
        gen.num_assistant_tokens = num_assistant_tokens
        gen.num_assistant_tokens_schedule = schedule
        gen.assistant_confidence_threshold = 0.0  # no early stop of the draft: exactly γ tokens per round
        gen.eos_token_id, gen.pad_token_id = None, PAD_TOKEN_ID
        kwargs["assistant_model"] = assistant
    device = hf_model.device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    out = hf_model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=use_cache,
        eos_token_id=None,
        pad_token_id=PAD_TOKEN_ID,
        **kwargs,
        **generate_kwargs,
    )
    return out[0, len(ids):].tolist()
