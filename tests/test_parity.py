"""Our Flax Llama against transformers' PyTorch LlamaForCausalLM on random tiny configs."""

import numpy as np
import pytest
import torch

import jaxselfeval as jse
from conftest import TINY_CONFIGS

TOL = 1e-4


def _tokens(vocab, batch, seq, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, seq)).astype(np.int32)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_logits_match_transformers(hf_models, name):
    path, tmodel = hf_models[name]
    model = jse.load_pretrained(path, dtype="float32")
    toks = _tokens(model.config.vocab_size, 3, 37)
    ours = np.asarray(model(toks))
    with torch.no_grad():
        ref = tmodel(torch.tensor(toks, dtype=torch.long)).logits.numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_left_padded_batch_matches_transformers(hf_models, name):
    path, tmodel = hf_models[name]
    model = jse.load_pretrained(path, dtype="float32")
    toks = _tokens(model.config.vocab_size, 3, 20, seed=1)
    mask = np.ones_like(toks)
    mask[0, :7] = 0
    mask[2, :13] = 0
    toks = np.where(mask == 1, toks, 0)
    ours = np.asarray(model(toks, attention_mask=mask))
    with torch.no_grad():
        ref = tmodel(torch.tensor(toks, dtype=torch.long),
                     attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= TOL
    # a left-padded row equals the same row run alone, unpadded
    alone = np.asarray(model(toks[2:3, 13:]))
    assert np.abs(alone[0] - ours[2, 13:]).max() <= TOL


def test_rope_llama3_frequencies_match_transformers():
    from transformers import LlamaConfig as HFConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from jaxselfeval.model.rope import inv_frequencies

    kw = dict(TINY_CONFIGS["llama3_gqa2_untied"])
    hf = HFConfig(**kw)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = inv_frequencies(jse.LlamaConfig.from_hf_dict(hf.to_dict()))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert not np.allclose(ours, 1.0 / (5e5 ** (np.arange(0, 16, 2) / 16)))  # scaling applied
