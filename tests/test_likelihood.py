"""The policy's own log-likelihood of its responses (the training-free Best-of-N score)."""

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.errors import JSEError
from jaxselfeval.sample.likelihood import mean_logprob, response_logprobs


@pytest.fixture(scope="module")
def model():
    cfg = jse.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return jse.create_model(cfg, seed=3)


def _direct(model, prompt, response):
    """Sum of log p(response token | everything before it), one unpadded sequence at a time."""
    seq = np.asarray([prompt + response], np.int32)
    logits = np.asarray(model(seq), np.float64)[0]
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(response))


def test_matches_unpadded_sequences_in_any_batch(model):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 50, int(k)).tolist() for k in rng.integers(1, 20, 7)]
    responses = [rng.integers(1, 50, int(k)).tolist() for k in rng.integers(0, 25, 7)]
    responses[2] = []
    total, count = response_logprobs(model, prompts, responses, batch=3)
    want = [_direct(model, p, r) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(total, want, rtol=1e-4, atol=1e-4)
    assert count.tolist() == [len(r) for r in responses]
    alone, _ = response_logprobs(model, prompts[3:4], responses[3:4], batch=1)
    assert alone[0] == pytest.approx(total[3], abs=1e-4)  # padding of other rows changes nothing
    mean = mean_logprob(total, count)
    assert mean[2] == -np.inf and mean[0] == pytest.approx(total[0] / count[0])


def test_bad_input(model):
    with pytest.raises(JSEError, match="2 prompts for 1 responses"):
        response_logprobs(model, [[1], [2]], [[3]])
    with pytest.raises(JSEError, match="prompt is empty"):
        response_logprobs(model, [[]], [[3]])
    with pytest.raises(JSEError, match="longer than the model's context"):
        response_logprobs(model, [[1] * 40], [[2] * 40])


def test_engine_tracks_the_teacher_forced_logprob_while_decoding(model):
    """The sampler's running log-probability of what it emitted (at any sampling temperature,
    through the KV cache, with rows stopping early) equals the teacher-forced full pass."""
    from jaxselfeval.sample import Engine

    eng = Engine(model, stop_ids=(1, 2, 3, 4, 5), seed=0)
    prompts = [[7, 8, 9], [10, 11, 12, 13, 14], [15]]
    P = eng.prefill(prompts)
    n = 4
    temps = np.tile([0.0, 0.7, 1.0, 1.5], len(prompts))
    C = eng.decode(P, eng.branch(P, n, 20, temperature=temps))
    outs = Engine.outputs(C)
    assert len({len(o) for o in outs}) > 1  # some rows stopped early
    total, count = response_logprobs(model, [p for p in prompts for _ in range(n)], outs)
    np.testing.assert_allclose(np.asarray(C.logprob), total, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Engine.mean_logprob(C), mean_logprob(total, count), rtol=1e-4,
                               atol=1e-4)
