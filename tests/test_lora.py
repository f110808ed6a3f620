"""LoRA: a fresh adapter is the base model, merged weights give the adapter's logits, only the
adapters train, targets/rank come from config, and adapters shard like their weights."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.lora import (TARGETS, LoRAConfig, LoRAParam, add_lora, count_lora_params,
                              load_lora_config, merge_lora)
from jaxselfeval.model.adapter import without_adapter
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.sharding import make_mesh, shard_model
from jaxselfeval.train.step import (init_opt_state, jit_train_step, make_train_step,
                                    split_trainable)

CFG = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rope_type="llama3", rope_factor=8.0, rope_original_max_position_embeddings=16,
                  eos_token_id=2)
TOKS = np.random.default_rng(0).integers(3, 97, (4, 12)).astype(np.int32)


def _randomize_b(model, seed=1):
    """Non-zero B factors (a trained adapter)."""
    rng = np.random.default_rng(seed)
    for t in model.lora.targets:
        b = getattr(model.lora, f"{t}_b")
        b.value = jax.numpy.asarray(rng.normal(0, 0.05, b.shape).astype(np.float32))


def _loss(model, batch):
    logits = model(batch["tokens"])[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:]).mean()
    return ce, {"loss": ce}


def test_fresh_adapter_equals_base_exactly():
    model = jse.create_model(CFG, seed=0)
    ref = np.asarray(model(TOKS))
    add_lora(model, {"rank": 4, "alpha": 8, "targets": list(TARGETS)})
    assert count_lora_params(model) > 0
    assert np.array_equal(np.asarray(model(TOKS)), ref)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_merged_weights_give_adapter_logits(param_dtype, tmp_path):
    model = jse.create_model(CFG, seed=0, param_dtype=param_dtype)
    base = np.asarray(model(TOKS))
    add_lora(model, LoRAConfig(rank=4, alpha=16, targets=("wq", "wo", "w_down", "w_up")))
    _randomize_b(model)
    adapted = np.asarray(model(TOKS))
    assert np.abs(adapted - base).max() > 1e-3  # the adapter matters
    merged = merge_lora(model)
    assert getattr(merged, "lora", None) is None and type(merged).__name__ == "Llama"
    assert merged.wq[...].dtype == model.wq[...].dtype
    # a bf16 export rounds W + delta to bf16 (the adapter itself adds delta in f32)
    tol = 1e-5 if param_dtype == "float32" else 5e-3
    assert np.abs(np.asarray(merged(TOKS)) - adapted).max() <= tol
    assert np.array_equal(np.asarray(merged.wk[...]), np.asarray(model.wk[...]))  # not a target
    # export writes the merged weights; the input model keeps its adapters
    out = jse.save_pretrained(model, tmp_path / "hf")
    assert model.lora is not None
    again = jse.load_pretrained(out, dtype=param_dtype, compute_dtype="float32")
    assert np.abs(np.asarray(again(TOKS)) - adapted).max() <= tol


def test_sampler_runs_the_adapter_model():
    model = jse.create_model(CFG, seed=0)
    add_lora(model, {"rank": 2, "targets": ["wv", "w_gate"]})
    _randomize_b(model)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    outs = jse.generate(model, prompts, n=2, max_new_tokens=6, temperature=0.0, stop_ids=[])
    assert outs == jse.generate(merge_lora(model), prompts, n=2, max_new_tokens=6,
                                temperature=0.0, stop_ids=[])


def test_grad_step_changes_only_lora_params():
    model = jse.create_model(CFG, seed=0)
    add_lora(model, {"rank": 4, "targets": ["wq", "wv", "w_down"]})
    graphdef, lora, frozen = split_trainable(model)
    assert all(isinstance(v, LoRAParam) for v in jax.tree.leaves(
        lora, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    tx = optax.adamw(1e-2, weight_decay=0.0)
    opt = tx.init(lora)
    step = jax.jit(make_train_step(graphdef, _loss, tx))
    before_f = jax.tree.map(np.asarray, frozen)
    before_l = jax.tree.map(np.asarray, lora)
    new_lora, opt, m = step(lora, frozen, opt, {"tokens": TOKS})
    assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), before_f, frozen)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before_l, new_lora)
    flat = {"/".join(map(str, k)): v for k, v in jax.tree_util.tree_flatten_with_path(changed)[0]}
    assert all(v for k, v in flat.items() if k.split("/")[-2].endswith("_b")), flat
    # a second step moves A too (its gradient is non-zero once B is)
    newer, _, m2 = step(new_lora, frozen, opt, {"tokens": TOKS})
    assert float(m2["loss"]) < float(m["loss"])
    assert not np.array_equal(np.asarray(newer["lora"]["wq_a"].value),
                              np.asarray(new_lora["lora"]["wq_a"].value))


def test_sharded_lora_step_equals_single_device():
    assert jax.device_count() == 8
    mesh = make_mesh("fsdp=4,tensor=2")
    results = []
    for m in (None, mesh):
        model = jse.create_model(CFG, seed=0)
        add_lora(model, {"rank": 4, "targets": ["wq", "wo", "w_up"]})
        _randomize_b(model)
        if m is not None:
            shard_model(model, m)
            assert len(model.lora.w_up_a[...].sharding.device_set) == 8
        graphdef, lora, frozen = split_trainable(model)
        tx = optax.adamw(1e-2)
        mm = m if m is not None else make_mesh("data=1", jax.devices()[:1])
        opt = init_opt_state(tx, lora, mm)
        step = jit_train_step(make_train_step(graphdef, _loss, tx, accum=2), lora, frozen,
                              opt, mm)
        with jax.set_mesh(mm):
            lora, opt, met = step(lora, frozen, opt, {"tokens": TOKS})
        results.append((float(met["loss"]), np.asarray(lora["lora"]["wo_b"].value)))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)


def test_lora_config_from_yaml_and_errors(tmp_path):
    p = tmp_path / "sft.yaml"
    p.write_text("steps: 10\nlora:\n  rank: 16\n  alpha: 32\n  targets: [wq, wv]\n")
    c = load_lora_config(p, ["rank=8"])
    assert (c.rank, c.alpha, c.targets, c.scale) == (8, 32, ("wq", "wv"), 4.0)
    assert load_lora_config({"targets": "wk, w_gate"}).targets == ("wk", "w_gate")
    with pytest.raises(jse.JSEError, match="unknown lora target 'w_dwn'.*did you mean 'w_down'"):
        LoRAConfig(targets=("wq", "w_dwn"))
    with pytest.raises(jse.JSEError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    with pytest.raises(jse.JSEError, match="unknown lora config key 'rnak'.*'rank'"):
        load_lora_config({"rnak": 4})
    model = add_lora(jse.create_model(CFG), {"rank": 2})
    with pytest.raises(jse.JSEError, match="already has LoRA"):
        add_lora(model)
    _, params, frozen = split_trainable(jse.create_model(CFG))  # no adapters: every Param trains
    assert jax.tree.leaves(params) and not jax.tree.leaves(frozen)


def _dot_output_shapes(fn, *args):
    """Shapes of every dot_general result in fn's jaxpr (scan / remat / custom_vjp bodies too)."""
    import re

    text = str(jax.make_jaxpr(fn)(*args))
    return {tuple(int(d) for d in m.group(1).split(",") if d)
            for m in re.finditer(r":[a-z0-9]+\[([\d,]*)\] = dot_general", text)}


def test_training_forms_no_full_size_weight_or_weight_gradient():
    """LoRA trains through W x + scale * B(A x): neither W + A B nor a gradient [in, out] of a
    target weight is computed (the merged path formed both in every layer)."""
    model = jse.create_model(CFG, seed=0)
    add_lora(model, {"rank": 4, "targets": ["wq", "w_up"]})
    _randomize_b(model)
    graphdef, lora, frozen = split_trainable(model)
    D, H, Dh, F = CFG.hidden_size, CFG.num_attention_heads, CFG.head_dim, CFG.intermediate_size

    def loss(lora):
        return _loss(nnx.merge(graphdef, lora, frozen), {"tokens": TOKS})[0]

    shapes = _dot_output_shapes(jax.grad(loss), lora)
    for full in ((D, H, Dh), (D, H * Dh), (D, F)):  # wq, w_up in their stacked-slice forms
        assert full not in shapes, (full, shapes)
    assert (4, H * Dh) in shapes or (4, F) in shapes  # the low-rank gradients are there


def test_low_rank_outputs_equal_merged_outputs_f32():
    model = jse.create_model(CFG, seed=0)
    add_lora(model, {"rank": 4, "targets": list(TARGETS)})
    _randomize_b(model)
    assert np.abs(np.asarray(model(TOKS)) - np.asarray(merge_lora(model)(TOKS))).max() <= 1e-5


def test_bf16_weights_keep_a_small_adapter_update():
    """W stored in bf16 with entries 1.0: an update of 1e-3 per entry is below half of bf16's
    spacing at 1.0 (2^-8), so W + delta rounded back to bf16 is W again and the update was lost.
    The low-rank path adds it in f32: the output moves, as the f32 model's does."""
    outs = {}
    for dt in ("bfloat16", "float32"):
        model = jse.create_model(CFG, seed=0, param_dtype=dt)
        model.wv.value = jax.numpy.ones_like(model.wv[...])
        base = np.asarray(model(TOKS))
        add_lora(model, {"rank": 1, "alpha": 1, "targets": ["wv"]})
        model.lora.wv_a.value = jax.numpy.ones_like(model.lora.wv_a[...]) * 0.1
        model.lora.wv_b.value = jax.numpy.ones_like(model.lora.wv_b[...]) * 0.01  # delta 1e-3
        outs[dt] = (base, np.asarray(model(TOKS)))
    moved32 = np.abs(outs["float32"][1] - outs["float32"][0]).max()
    moved16 = np.abs(outs["bfloat16"][1] - outs["bfloat16"][0]).max()
    assert moved32 > 1e-4
    assert moved16 > 0.5 * moved32  # not swallowed (the merged bf16 path gave exactly 0)
    d16, d32 = outs["bfloat16"][1] - outs["bfloat16"][0], outs["float32"][1] - outs["float32"][0]
    # about the same move (the other weights differ by bf16 rounding: measured 25% at most);
    # the merged path's move of exactly 0 is 100% off
    assert np.abs(d16 - d32).max() <= 0.4 * moved32


def test_model_declares_its_adapter_slot():
    """`Llama.lora` is a declared slot (None, or an Adapter the layers call), not an attribute
    found with getattr: any Adapter subclass plugs in."""
    from jaxselfeval.model.adapter import Adapter

    model = jse.create_model(CFG, seed=0)
    assert model.lora is None
    ref = np.asarray(model(TOKS))

    class Bias(Adapter):  # adds a constant to wv's output: a minimal adapter
        targets = ("wv",)

        def __init__(self):
            self.c = nnx.Param(jax.numpy.full((CFG.num_hidden_layers,), 0.5))

        def stacked(self):
            return {"wv": self.c[...]}

        def delta(self, name, x, c, compute_dtype, in_dims):
            return jax.numpy.full((*x.shape[:2], CFG.num_key_value_heads, CFG.head_dim), c)

    model.lora = Bias()
    assert np.abs(np.asarray(model(TOKS)) - ref).max() > 1e-3


def test_kl_term_is_kl_to_the_model_with_its_adapter_off():
    """make_loss's KL term: zero for a fresh adapter; for a trained one, KL(base || adapted) on
    the masked positions, base = a plain model with the same weights (`without_adapter`), and
    its gradient reaches only the adapter."""
    from jaxselfeval.selfeval.train import make_loss

    base = jse.create_model(CFG, seed=0)
    base_logits = np.asarray(base(TOKS), np.float64)
    model = add_lora(jse.create_model(CFG, seed=0), {"rank": 4, "alpha": 8,
                                                      "targets": ["wq", "wv", "w_up"]})
    np.testing.assert_array_equal(np.asarray(without_adapter(model)(TOKS)),
                                  base_logits.astype(np.float32))
    mask = np.zeros(TOKS.shape, np.float32)
    mask[:2, 3:9] = 1.0
    batch = {"tokens": TOKS, "mask": mask, "last": np.full(4, 11, np.int32),
             "target": np.asarray([1.0, 0.0, 0.5, 1.0], np.float32)}
    loss = make_loss(5, 6, lm_weight=0.0, mass_weight=0.0, kl_weight=1.0)
    assert float(loss(model, batch)[1]["kl"]) == 0.0  # fresh adapter: the base itself
    _randomize_b(model)
    adapted = np.asarray(model(TOKS), np.float64)
    np.testing.assert_allclose(np.asarray(without_adapter(model)(TOKS)),
                               base_logits, atol=1e-6)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lb, la = log_softmax(base_logits[:, :-1]), log_softmax(adapted[:, :-1])
    kl = (np.exp(lb) * (lb - la)).sum(-1)
    want = (kl * mask[:, :-1]).sum() / mask[:, :-1].sum()
    got = float(loss(model, batch)[1]["kl"])
    assert want > 1e-4 and abs(got - want) <= 1e-4 * want + 1e-7
    graphdef, lora, frozen = split_trainable(model)
    g = jax.grad(lambda lo: loss(nnx.merge(graphdef, lo, frozen), batch)[0])(lora)
    assert max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(g)) > 0


def test_kl_weight_without_lora_is_a_clear_error(tmp_path):
    from jaxselfeval.selfeval.train import SelfEvalConfig, train_selfeval

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "build_config.json").write_text('{"model": "x"}')
    with pytest.raises(jse.JSEError, match="kl_weight needs lora"):
        train_selfeval(SelfEvalConfig(data_dir=str(tmp_path / "data"), kl_weight=1.0, lora=None),
                       progress=False)


@pytest.mark.parametrize("tied", [True, False])
def test_probe_rows_adapter_merges_to_the_same_logits_and_scores(tied):
    """probe_rows: the LM head's rows of two token ids train as an f32 delta, on the output side
    only (those tokens read as input as before). A fresh one changes nothing; a trained one
    gives the same logits, and the same two-column probe logits, as the merged plain model,
    which is untied when the head was tied (the input embedding unchanged)."""
    import dataclasses

    cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
    model = jse.create_model(cfg, seed=0)
    ids = [5, 9]
    toks = TOKS.copy()
    toks[:, 3] = 5  # a row token in the input: read there as before
    ref = np.asarray(model(toks))
    add_lora(model, LoRAConfig(rank=4, alpha=8, targets=("wq",), probe_rows=True), rows=ids)
    assert np.array_equal(np.asarray(model(toks)), ref)
    _randomize_b(model)
    d = np.random.default_rng(3).normal(0, 0.5, (2, cfg.hidden_size)).astype(np.float32)
    model.lora.set_vocab_rows(d)
    np.testing.assert_allclose(np.asarray(model.lora.vocab_rows()[1]), d, rtol=1e-6)
    adapted = np.asarray(model(toks))
    moved = np.abs(adapted - ref).max(axis=(0, 1))
    assert moved[ids].min() > 1e-2  # the rows' own logits moved most
    merged = merge_lora(model)
    assert not merged.config.tie_word_embeddings
    np.testing.assert_array_equal(np.asarray(merged.embed[...]), np.asarray(model.embed[...]))
    assert np.abs(np.asarray(merged(toks)) - adapted).max() <= 1e-4
    h, _ = model.forward(toks)
    two = np.asarray(model.token_logits(h, jax.numpy.asarray([9, 5, 7], jax.numpy.int32)))
    assert np.abs(two - adapted[..., [9, 5, 7]]).max() <= 1e-4
    base = np.asarray(without_adapter(model)(toks))
    assert np.array_equal(base, ref)  # the frozen base (the KL term's) has no rows either


def test_probe_rows_without_ids_is_a_clear_error():
    model = jse.create_model(CFG, seed=0)
    with pytest.raises(jse.JSEError, match="probe_rows needs"):
        add_lora(model, LoRAConfig(rank=4, probe_rows=True))
