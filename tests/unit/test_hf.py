"""labkit.models.hf: a plain TinyLM exported to HF LlamaForCausalLM computes the same logits and tokens."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the HF peer needs transformers (`pip install transformers`)")

import labkit.models as models  # noqa: E402
from labkit.data import corpus  # noqa: E402
from labkit.decoding import generate, speculative_generate  # noqa: E402
from labkit.models import TinyLM, TinyLMConfig  # noqa: E402
from labkit.models import tokenizer as tk  # noqa: E402
from labkit.models.hf import hf_config, hf_generate, to_hf  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def plain():
    model = models.load("tinylm-plain")
    return model, to_hf(model)


@pytest.fixture(scope="module")
def draft():
    model = models.load("tinylm-draft-plain")
    return model, to_hf(model)


def _prompt() -> list[int]:
    return tk.encode(corpus.english_text("heldout")[:40])


def test_config_maps_every_field(plain):
    model, hf = plain
    cfg, c = model.config, hf.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (cfg.vocab_size, cfg.d_model, cfg.d_ff)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == \
        (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)
    assert c.hidden_act == "relu" and c.tie_word_embeddings and c.max_position_embeddings == cfg.context
    assert c.rope_parameters["rope_theta"] == cfg.rope_base and c.rms_norm_eps == cfg.norm_eps
    assert c.eos_token_id is None and c.bos_token_id == tk.DOC and c.pad_token_id == 0
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied, as in TinyLM
    assert sum(p.numel() for p in hf.parameters()) == model.num_parameters()


def test_logits_match_on_random_batches(plain):
    model, hf = plain
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for B, T in ((1, 1), (3, 37), (2, model.config.context)):
            x = torch.randint(0, tk.VOCAB_SIZE, (B, T), generator=g)
            torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_grouped_query_config_matches():
    """A random GQA model (2 K/V heads for 4 query heads) maps num_key_value_heads right."""
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=tk.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                context=32, token_shift=False, rope_base=500.0)).eval()
    hf = to_hf(model)
    x = torch.randint(0, tk.VOCAB_SIZE, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_greedy_generate_matches_labkit(plain):
    model, hf = plain
    prompt = _prompt()
    assert hf_generate(hf, prompt, 48) == generate(model, prompt, 48)


def test_assisted_generation_matches_greedy(plain, draft):
    model, hf = plain
    draft_model, hf_draft = draft
    prompt = _prompt()
    expected = generate(model, prompt, 48)
    assert hf_generate(hf, prompt, 48, assistant=hf_draft, num_assistant_tokens=4) == expected
    assert speculative_generate(model, draft_model, prompt, 48, gamma=4)[0] == expected
    assert hf_draft.generation_config.num_assistant_tokens_schedule == "constant"


def test_token_shift_model_is_refused():
    model = models.load("tinylm-draft")
    with pytest.raises(ValueError, match="model.*token_shift=True.*no token shift"):
        to_hf(model)
    with pytest.raises(ValueError, match="token_shift"):
        hf_config(model)


def test_hf_generate_errors_name_the_argument(plain):
    _, hf = plain
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf_generate(hf, [1, 2, 3], 200)
    with pytest.raises(ValueError, match="prompt_ids"):
        hf_generate(hf, [], 4)
    with pytest.raises(TypeError, match="hf_model"):
        hf_generate(object(), [1, 2], 4)
    with pytest.raises(ValueError, match="schedule"):
        hf_generate(hf, [1, 2], 4, assistant=hf, schedule="sometimes")
