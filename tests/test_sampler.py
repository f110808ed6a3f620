"""Sampler: greedy parity with transformers, branching == independent runs, probes leave
continuations unchanged, pruning keeps survivors' tokens, self_evaluate == a full forward."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxselfeval as jse
from jaxselfeval.model.attention import attention_calls
from jaxselfeval.backends import cpu
from jaxselfeval.model.context import AttentionContext
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.sample.engine import _probe_fn

PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]


@pytest.fixture(scope="module")
def model(hf_models):
    return jse.load_pretrained(hf_models["llama3_gqa2_untied"][0])


@pytest.fixture(scope="module")
def tokenizer():
    from jaxselfeval.tokenizer import build_tokenizer

    return build_tokenizer(["3 + 4 = 7\n#### 7", "Tom has 3 apples."] * 50, vocab_size=300)


def test_greedy_equals_transformers_generate(hf_models, model):
    tm = hf_models["llama3_gqa2_untied"][1]
    out = jse.generate(model, PROMPTS, n=1, max_new_tokens=12, temperature=0.0, stop_ids=())
    for p, o in zip(PROMPTS, out):
        ref = tm.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        assert o[0] == ref


def test_decode_across_cache_windows_equals_a_full_forward(model):
    """Decode attends to growing windows of its cache (32, 64, then all 80 slots): greedy tokens
    and their log-probabilities equal those of the full forward of the whole sequence, and a
    decode stopped inside a window and resumed equals one run straight through."""
    from jaxselfeval.sample.engine import windows

    assert windows(80) == [32, 64, 80] and windows(16) == [16]
    eng = Engine(model, seed=3)
    P = eng.prefill(PROMPTS)
    C = eng.decode(P, eng.branch(P, 1, 80, temperature=0.0))
    outs = Engine.outputs(C)
    assert [len(o) for o in outs] == [80] * 3
    for p, o, lp in zip(PROMPTS, outs, np.asarray(C.logprob)):
        logits = np.asarray(model(jnp.asarray([p + o]))[0], np.float64)[len(p) - 1:-1]
        np.testing.assert_array_equal(np.argmax(logits, -1), o)
        z = logits - logits.max(-1, keepdims=True)
        ref = (z[np.arange(80), o] - np.log(np.exp(z).sum(-1))).sum()
        assert abs(lp - ref) < 1e-3 * 80
    Ts = eng.branch(P, 2, 80, temperature=1.0)
    whole = Engine.outputs(eng.decode(P, Ts))
    Ts = eng.branch(P, 2, 80, temperature=1.0)
    split = Engine.outputs(eng.decode(P, eng.decode(P, Ts, until=40)))  # stopped in window 64
    assert split == whole and min(len(o) for o in whole) > 40


def _run(eng, prompts, n, steps, cand_offset=0, temp=1.0, offset=0):
    P = eng.prefill(prompts, prompt_offset=offset)
    C = eng.branch(P, n, steps, temperature=temp, cand_offset=cand_offset)
    return P, eng.decode(P, C, until=steps)


def test_branch_equals_independent_runs(model):
    eng = Engine(model, seed=7)
    _, C = _run(eng, PROMPTS, 4, 10)
    branched = Engine.outputs(C)
    for g, p in enumerate(PROMPTS):
        for c in range(4):
            _, one = _run(eng, [p], 1, 10, cand_offset=c, offset=g)
            assert Engine.outputs(one)[0] == branched[g * 4 + c]
    assert len({tuple(r) for r in branched}) == len(branched)  # candidates differ


def test_probe_leaves_continuations_unchanged_and_prune_keeps_survivors(model, tokenizer):
    spec = probe_spec(tokenizer)
    spec = type(spec)(eot=3, suffix=(9, 10, 11), yes=40, no=41)  # ids valid in the tiny vocab
    eng = Engine(model, seed=1)
    _, full = _run(eng, PROMPTS, 4, 16)
    ref = Engine.outputs(full)
    P = eng.prefill(PROMPTS)
    C = eng.branch(P, 4, 16)
    C = eng.decode(P, C, until=5)
    scores = eng.probe(P, C, spec)
    assert scores.shape == (12,) and bool(jnp.all((scores >= 0) & (scores <= 1)))
    rows = Engine.top_rows(scores, 4, 2)
    assert np.array_equal(np.asarray(rows).reshape(3, 2),
                          np.sort(np.argsort(-np.asarray(scores).reshape(3, 4), axis=1)[:, :2], 1)
                          + np.arange(3)[:, None] * 4)
    kept = Engine.select(C, rows)
    kept = eng.decode(P, kept, until=16)
    for r, out in zip(np.asarray(rows), Engine.outputs(kept)):
        assert out == ref[r]
    C2 = eng.decode(P, C, until=16)  # probed but unpruned: identical to never probed
    assert Engine.outputs(C2) == ref


def test_probe_equals_self_evaluate_equals_full_forward(model, tokenizer):
    spec = probe_spec(tokenizer)
    assert spec.eot == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # use a model whose vocab covers the tokenizer
    cfg = model.config.replace(vocab_size=len(tokenizer))
    m = jse.create_model(cfg, seed=3)
    eng = Engine(m, seed=2, stop_ids=(spec.eot,))
    P = eng.prefill(PROMPTS)
    C = eng.branch(P, 2, 8)
    C = eng.decode(P, C, until=6)  # partial responses
    s_engine = np.asarray(eng.probe(P, C, spec))
    outs = Engine.outputs(C)
    prompts = [PROMPTS[i // 2] for i in range(6)]
    s_api = jse.self_evaluate(m, tokenizer, prompts, outs)
    np.testing.assert_allclose(s_engine, s_api, atol=1e-5)
    # the probe reads two logits, not [B, V]: no vocabulary-wide product in the program
    jaxpr = str(jax.make_jaxpr(lambda st, c: _probe_fn(
        eng.graphdef, st, P, c, jnp.asarray((spec.eot,) + tuple(spec.suffix), jnp.int32),
        jnp.asarray([spec.yes, spec.no], jnp.int32)))(eng.state, C))
    products = [ln.split("=")[0] for ln in jaxpr.splitlines() if "dot_general[" in ln]
    assert products and not any(f",{cfg.vocab_size}]" in o for o in products), products
    # and by hand: one row, a plain forward, no padding
    seq = prompts[0] + outs[0] + spec.after(outs[0])
    lg = np.asarray(m(jnp.asarray([seq])))[0, -1]
    p = np.exp(lg - lg.max())
    assert abs(p[spec.no] / (p[spec.yes] + p[spec.no]) - s_api[0]) < 1e-5


def test_probe_reads_only_the_written_cache_window(model, tokenizer):
    """The probe attends the window of the candidates' cache that holds the written slots (32 of
    80 after 6 tokens, 64 after 40): scores equal those over the whole buffer and a plain
    forward of one row."""
    spec = probe_spec(tokenizer)
    m = jse.create_model(model.config.replace(vocab_size=len(tokenizer)), seed=5)
    eng = Engine(m, seed=4, stop_ids=(spec.eot,))
    P = eng.prefill(PROMPTS)
    suffix = jnp.asarray((spec.eot,) + tuple(spec.suffix), jnp.int32)
    yes_no = jnp.asarray([spec.yes, spec.no], jnp.int32)
    C = eng.branch(P, 2, 80)
    jitted, seen = eng.programs.probe, []
    eng.programs = SimpleNamespace(**{**vars(eng.programs), "probe": lambda *a, **k: (
        seen.append(k.get("window")), jitted(*a, **k))[1]})
    for until, window in ((6, 32), (40, 64)):
        C = eng.decode(P, C, until=until)
        assert C.step == until
        whole = np.asarray(jitted(eng.state, P, C, suffix, yes_no))
        np.testing.assert_allclose(np.asarray(eng.probe(P, C, spec)), whole, atol=1e-5)
        assert seen[-1] == window
        # keys attended: the prompt's, the window's, the suffix's
        used = attention_calls(jax.jit(lambda st, c: _probe_fn(
            eng.graphdef, st, P, c, suffix, yes_no, window=window)).lower(eng.state, C))
        assert {t for _, _, t in used} == {P.cache.max_len + window + len(suffix)}, used
        out = Engine.outputs(C)[3]
        seq = PROMPTS[1] + out + spec.after(out)
        lg = np.asarray(m(jnp.asarray([seq])))[0, -1]
        p = np.exp(lg - lg.max())
        assert abs(p[spec.no] / (p[spec.yes] + p[spec.no]) - whole[3]) < 1e-5


def test_separate_layer_arrays_sample_what_the_layer_scan_samples(model, tokenizer):
    """`Engine(per_layer=True)` (the CPU backend's decode weights: the layers unrolled over
    separate, fused, transposed arrays, chosen on one CPU device for large models) prefills,
    decodes and probes as the scan over the stacked weights does: the same tokens,
    log-probabilities and scores (to float tolerance)."""
    spec = probe_spec(tokenizer)
    m = jse.create_model(model.config.replace(vocab_size=len(tokenizer)), seed=6)
    assert Engine(m).weights is None  # a small model keeps the scan
    out = {}
    for per_layer in (False, True):
        eng = Engine(m, seed=2, per_layer=per_layer, platform="cpu")
        assert (eng.weights is not None) == per_layer
        P = eng.prefill(PROMPTS)
        C = eng.decode(P, eng.branch(P, 3, 40, temperature=0.0))
        S = eng.decode(P, eng.branch(P, 3, 40, temperature=0.0), until=10)
        out[per_layer] = (np.asarray(P.last_logits), Engine.outputs(C), np.asarray(C.logprob),
                          np.asarray(eng.probe(P, S, spec)))
    (l0, o0, lp0, s0), (l1, o1, lp1, s1) = out[False], out[True]
    np.testing.assert_allclose(l1, l0, atol=1e-4)
    assert o1 == o0
    np.testing.assert_allclose(lp1, lp0, atol=1e-3)
    np.testing.assert_allclose(s1, s0, atol=1e-4)
    with pytest.raises(jse.JSEError, match="CPU layout"):
        Engine(m, per_layer=True, platform="tpu")


def test_completed_responses_probe(model, tokenizer):
    spec = probe_spec(tokenizer)
    m = jse.create_model(model.config.replace(vocab_size=len(tokenizer)), seed=4)
    eng = Engine(m, seed=0, stop_ids=tuple(range(len(tokenizer))))  # every token ends a row
    P = eng.prefill(PROMPTS)
    C = eng.decode(P, eng.branch(P, 2, 4))
    outs = Engine.outputs(C)
    assert all(len(o) == 1 for o in outs) and bool(jnp.all(C.done))
    spec2 = type(spec)(eot=outs[0][0], suffix=spec.suffix, yes=spec.yes, no=spec.no)
    s = np.asarray(eng.probe(P, C, spec2))
    # rows whose single token equals eot were "complete": no extra eot is inserted for them
    ref = jse.self_evaluate(m, tokenizer, [PROMPTS[i // 2] for i in range(6)],
                            [o if o[-1] == spec2.eot else o for o in outs])
    del ref  # self_evaluate uses the tokenizer's eot; compare by hand for row 0
    seq = PROMPTS[0] + outs[0] + list(spec2.suffix)
    lg = np.asarray(m(jnp.asarray([seq])))[0, -1]
    p = np.exp(lg - lg.max())
    assert abs(p[spec.no] / (p[spec.yes] + p[spec.no]) - s[0]) < 1e-5


@pytest.mark.parametrize("kw,msg", [
    (dict(n=0), "n must be >= 1"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(max_new_tokens=1000), "exceeds the model's context"),
])
def test_bad_sampling_arguments(model, kw, msg):
    args = dict(n=2, max_new_tokens=4)
    args.update(kw)
    with pytest.raises(jse.JSEError, match=msg):
        jse.generate(model, PROMPTS, **args)


def test_bad_prompts(model):
    with pytest.raises(jse.JSEError, match="empty"):
        jse.generate(model, [[1, 2], []])
    with pytest.raises(jse.JSEError, match="longer than the model's context"):
        jse.generate(model, [list(range(3, 90)) * 4])


@pytest.mark.parametrize("tied", [False, True])
def test_token_logits_are_those_columns_of_the_logits(model, tied):
    m = jse.create_model(model.config.replace(tie_word_embeddings=tied), seed=7)
    h = jax.random.normal(jax.random.PRNGKey(0), (3, 2, m.config.hidden_size))
    ids = jnp.asarray([5, 1, 5], jnp.int32)
    np.testing.assert_allclose(np.asarray(m.token_logits(h, ids)),
                               np.asarray(m.logits(h))[..., [5, 1, 5]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 16, 64, 65, 200])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transposed_weights_give_the_product_and_small_rows_put_the_weight_left(rows, dtype):
    """`backends.cpu.matmul_t(x, w^T)` equals x @ w (f32 accumulation, both dtypes). Up to
    SMALL_ROWS rows the product is computed as w^T @ x^T (the weight the left operand, about twice
    as fast on a CPU) and transposed back after a barrier; more rows multiply x by w^T directly."""
    SMALL_ROWS, _matmul_t = cpu.SMALL_ROWS, cpu.matmul_t

    dt = jnp.dtype(dtype)
    x = jax.random.normal(jax.random.PRNGKey(0), (rows, 1, 48)).astype(dt)
    w = jax.random.normal(jax.random.PRNGKey(1), (48, 80)).astype(dt)
    want = np.asarray(jnp.dot(x.reshape(rows, 48), w, preferred_element_type=jnp.float32))
    got = _matmul_t(x, w.T, dt)
    assert got.shape == (rows, 1, 80) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got)[:, 0], want, rtol=1e-5, atol=1e-4)
    text = str(jax.make_jaxpr(lambda x, wt: _matmul_t(x, wt, dt))(x, w.T))
    left = "optimization_barrier" in text
    assert left == (rows <= SMALL_ROWS), text


def test_last_only_runs_the_last_layer_for_the_last_position_alone(model):
    """With `last_only` (prefill, probe) the unrolled layers compute every position's keys and
    values, but the last layer's query, attention output and MLP for the last position only:
    the same hidden state as the full pass (to float tolerance), and one MLP product of B rows
    where the old pass had B x S."""
    m = model
    F = m.config.intermediate_size
    toks = jnp.asarray([PROMPTS[0], PROMPTS[0][::-1]])  # [2, 5]
    want, _ = m.forward(toks)
    blocks = cpu.decode_weights(m.stacked_weights(), m.head_t()).blocks
    last = AttentionContext(last_only=True)
    got, _ = m.forward_unrolled(blocks, toks, last)
    assert got.shape == (2, 1, m.config.hidden_size)
    np.testing.assert_allclose(np.asarray(got)[:, 0], np.asarray(want)[:, -1], atol=2e-5)
    scan, _ = m.forward(toks, last)  # the scan: the same state
    np.testing.assert_allclose(np.asarray(scan)[:, 0], np.asarray(want)[:, -1], atol=2e-5)
    jaxpr = jax.make_jaxpr(lambda t: m.forward_unrolled(blocks, t, last))(toks)
    # the down projection's weight, stored [out, in] = [D, F]; the other operand holds the
    # B x S (or B) activation rows, on either side by matmul_t's choice
    down = (m.config.hidden_size, F)
    rows = [b[0] if a == down else a[0] for a, b in
            ((e.invars[0].aval.shape, e.invars[1].aval.shape) for e in jaxpr.jaxpr.eqns
             if e.primitive.name == "dot_general") if down in (a, b)]
    assert sorted(rows) == [2] + [10] * (m.config.num_hidden_layers - 1), rows
