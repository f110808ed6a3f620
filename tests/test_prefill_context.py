"""Prefill of a model whose context is not a power of two: a prompt that fits is accepted (the
bucket is capped at the context), one that does not is refused with a message naming its length
and the context."""

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.sample import Engine

CFG = jse.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48)


def test_prompt_that_fits_a_context_of_48_prefills_and_decodes():
    model = jse.create_model(CFG, seed=0)
    eng = Engine(model, seed=0)
    prompt = [int(t) for t in np.random.default_rng(0).integers(1, 64, 40)]  # bucket(40) = 64 > 48
    P = eng.prefill([prompt, prompt[:7]])
    assert P.cache.max_len == 48
    want = np.asarray(model(np.asarray([prompt], np.int32)))[0, -1]
    np.testing.assert_allclose(np.asarray(P.last_logits[0]), want, rtol=1e-5, atol=1e-5)
    C = eng.decode(P, eng.branch(P, 2, 8, temperature=0.0), until=8)  # 40 + 8 = 48: fits
    assert [len(o) for o in Engine.outputs(C)] == [8] * 4
    with pytest.raises(jse.JSEError, match=r"prompt of 49 tokens is longer than the model's "
                                           r"context \(48 tokens\): shorten it"):
        eng.prefill([prompt + prompt[:9]])
