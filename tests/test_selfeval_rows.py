"""The shared-prompt layout of capability rows trains the same loss as whole rows: each prompt's
keys and values computed once and attended by its rows give the same probe, LM and KL terms and
the same adapter gradient, and the same reward-model scores; its batches are a pure function of
(seed, step)."""

import jax
import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.lora import add_lora
from jaxselfeval.train.step import split_trainable
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.sample.probe import ProbeSpec
from jaxselfeval.selfeval.reward_model import init_reward_model, score_responses, score_sequences
from jaxselfeval.selfeval.rows import SharedPromptBatches, encode_rows, encode_shared
from jaxselfeval.selfeval.train import make_loss, scores, shared_scores

CFG = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256)
SPEC = ProbeSpec(eot=3, suffix=(4, 8, 9, 10), yes=5, no=6)


def _rows(n_prompts=6, samples=3, seed=0):
    """Prompts of different lengths; each sample a full row and (when long enough) truncations
    at 2 and 5 tokens, some ending in eot."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_prompts):
        prompt = rng.integers(11, 97, rng.integers(4, 12)).tolist()
        for c in range(samples):
            resp = rng.integers(11, 97, rng.integers(1, 9)).tolist() + ([3] if c % 2 else [])
            for tr in (0, 2, 5):
                if tr and len(resp) <= tr:
                    continue
                rows.append({"example": f"ex{e}", "prompt_ids": prompt,
                             "response_ids": resp if tr == 0 else resp[:tr], "truncation": tr,
                             "target": float(rng.random())})
    return rows


def _model():
    model = add_lora(jse.create_model(CFG, seed=0),
                     {"rank": 4, "alpha": 8, "targets": ["wq", "wk", "wv", "wo", "w_up"]})
    rng = np.random.default_rng(1)
    for t in model.lora.targets:  # a trained adapter: the KL term is not zero
        b = getattr(model.lora, f"{t}_b")
        b.value = jax.numpy.asarray(rng.normal(0, 0.05, b.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("rows_per_prompt", [2, 4])
def test_shared_prompt_batch_gives_the_loss_and_gradient_of_whole_rows(rows_per_prompt):
    rows = _rows()
    shared = encode_shared(rows, SPEC.after, seq_len=64)
    batches = SharedPromptBatches(shared, 8, rows_per_prompt, seed=3)
    batch = batches.batch(1)
    _, picked = batches.indices(1)
    # the same rows, whole: encode_rows over the picked rows in the batch's order
    chosen = [rows[shared["keep"][j]] for j in picked]
    toks, mask, last, tgt, keep = encode_rows(chosen, SPEC, seq_len=64)
    assert len(keep) == len(chosen)
    flat = {"tokens": toks, "mask": mask, "last": last, "target": tgt}
    np.testing.assert_array_equal(tgt, batch["target"])
    assert mask.sum() == batch["mask"].sum() > 0
    model = _model()
    loss = make_loss(SPEC.yes, SPEC.no, lm_weight=0.5, mass_weight=0.3, kl_weight=1.0)
    graphdef, lora, frozen = split_trainable(model)
    grad = jax.jit(jax.grad(lambda p, b: loss(nnx.merge(graphdef, p, frozen), b), has_aux=True))
    ga, ma = grad(lora, flat)
    gb, mb = grad(lora, batch)
    assert float(ma["kl"]) > 1e-5
    for k in ma:
        np.testing.assert_allclose(float(mb[k]), float(ma[k]), rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        scale = float(np.abs(np.asarray(a)).max())
        assert scale > 0
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4 * scale)


def test_shared_prompt_batches_are_a_function_of_seed_and_step():
    shared = encode_shared(_rows(n_prompts=8, samples=4), SPEC.after, seq_len=64)
    a, b = SharedPromptBatches(shared, 8, 2, seed=0), SharedPromptBatches(shared, 8, 2, seed=0)
    for step in (0, 3, 7):  # steps across epochs (2 steps an epoch)
        x, y = a.batch(step), b.batch(step)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    groups, picked = a.indices(0)
    assert len(set(groups.tolist())) == 4 and len(picked) == 8
    assert (shared["group"][picked] == np.repeat(groups, 2)).all()  # each prompt's own rows
    seen = np.concatenate([a.indices(s)[0] for s in range(a.per_epoch)])
    assert sorted(seen.tolist()) == list(range(8))  # an epoch visits every prompt once
    assert a.describe() == b.describe()
    assert SharedPromptBatches(shared, 8, 4, 0).describe() != a.describe()


def test_shared_prompt_layout_rejects_bad_settings():
    shared = encode_shared(_rows(n_prompts=2), SPEC.after, seq_len=64)
    with pytest.raises(jse.JSEError, match="rows_per_prompt 3 must be >= 1 and divide"):
        SharedPromptBatches(shared, 8, 3, 0)
    with pytest.raises(jse.JSEError, match="only 2 prompts for 4 a batch"):
        SharedPromptBatches(shared, 8, 2, 0)
    rows = _rows(n_prompts=1)
    rows[1] = dict(rows[1], prompt_ids=rows[1]["prompt_ids"] + [12])
    with pytest.raises(jse.JSEError, match="different prompts"):
        encode_shared(rows, SPEC.after, seq_len=64)


@pytest.mark.parametrize("pad", [0, 3])  # 3: the pad token also ends a response (as ChatML's)
def test_reward_model_scores_shared_prompts_as_whole_sequences(pad):
    """score_responses (each prompt's keys/values once) reads the token transformers' sequence
    classifier reads (the rightmost non-pad one) and gives score_sequences' rewards."""
    rm = init_reward_model(jse.create_model(CFG, seed=2), seed=0, pad_token_id=pad)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(11, 97, L).tolist() for L in (5, 9, 7)]
    responses = [[rng.integers(11, 97, rng.integers(1, 8)).tolist() + ([3] if j % 2 else [])
                  for j in range(4)] for _ in prompts]
    got = score_responses(rm, prompts, responses, rows=8)  # 2 prompts a batch: one filler
    want = score_sequences(rm, [p + r for p, rs in zip(prompts, responses) for r in rs])
    assert got.shape == (3, 4) and np.ptp(want) > 1e-4
    np.testing.assert_allclose(got, want.reshape(3, 4), atol=1e-5)


def test_shared_scores_equal_whole_row_scores():
    """Validation in the shared-prompt layout (prompts with different numbers of rows, filler
    rows and a filler prompt in the last batch) scores each row as the whole row scores."""
    rows = _rows(n_prompts=5, samples=3)
    d = encode_shared(rows, SPEC.after, seq_len=64)
    toks, _, last, _, keep = encode_rows([rows[i] for i in d["keep"]], SPEC, seq_len=64)
    model = _model()
    want = scores(model, toks, last, SPEC.yes, SPEC.no, batch=8)
    counts = np.bincount(d["group"])
    assert len(set(counts.tolist())) > 1  # prompts with different numbers of rows
    got = shared_scores(model, d, SPEC.yes, SPEC.no, rows=2 * counts.max())  # 2 prompts a batch
    assert np.ptp(want) > 1e-4
    np.testing.assert_allclose(got, want, atol=2e-6)
