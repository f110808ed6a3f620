"""Trainer: sharded == single device, same seed == same run, SIGKILL + resume == uninterrupted,
NaN stops at a named step keeping the last good checkpoint, bad configs fail clearly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.model.llama import LAYER_PARAMS
from jaxselfeval.train import TrainConfig, lm_loss, run_training
from jaxselfeval.train.data import Batches

CFG = jse.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _data(n=64, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, 64, (n, seq)).astype(np.int32)
    toks[:, 1::2] = (toks[:, ::2] + 1) % 64  # learnable: odd tokens follow even ones
    mask = np.ones((n, seq), np.float32)
    return Batches(toks, mask, 8, seed)


def _train(tmp, steps=6, devices=None, mesh="data=-1", slow_step=0.0, **kw):
    """Train the tiny model; writes the final parameters to tmp/final.npz."""
    args = dict(steps=steps, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=3,
                mesh=mesh, compute_dtype="float32", log_every=1)
    cfg = TrainConfig(**{**args, **kw})
    model = jse.create_model(CFG, seed=0)
    model, hist = run_training(model, _data(), lm_loss, cfg, out_dir=tmp, progress=False,
                               devices=devices, on_step=lambda *a: time.sleep(slow_step))
    np.savez(Path(tmp) / "final.npz", **_params(model))
    return model, hist


def _params(model):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_same_seed_same_run_and_loss_falls(tmp_path):
    m1, h1 = _train(tmp_path / "a", devices=jax.devices()[:1])
    m2, h2 = _train(tmp_path / "b", devices=jax.devices()[:1])
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    p1, p2 = _params(m1), _params(m2)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert h1[-1]["loss"] < h1[0]["loss"]


def test_eight_device_mesh_matches_one_device(tmp_path):
    """Same loss curve within 1e-5 (f32; only the reduction order differs)."""
    _, h1 = _train(tmp_path / "one", devices=jax.devices()[:1])
    _, h8 = _train(tmp_path / "eight", mesh="data=2,fsdp=2,tensor=2")
    np.testing.assert_allclose([h["loss"] for h in h8], [h["loss"] for h in h1], rtol=1e-5, atol=1e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(jse.JSEError, match=r"loss is (nan|inf) at step \d+.*checkpoint \(step \d+\)"):
        _train(tmp_path / "nan", steps=12, lr=1e9, clip_norm=1e9)
    assert (tmp_path / "nan" / "ckpt" / "3").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(jse.JSEError, match="unknown config key 'stpes' \\(did you mean 'steps'\\?\\)"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(jse.JSEError, match="checking_fraction must be in \\[0, 1\\], got 1.5"):
        TrainConfig.from_dict({"checking_fraction": 1.5})
    with pytest.raises(jse.JSEError, match="exit_layer and exit_weight must be >= 0"):
        TrainConfig.from_dict({"exit_layer": -1})
    from jaxselfeval.train.base import train_base

    with pytest.raises(jse.JSEError, match="exit_layer 8 is not below the model's 8 layers: set "
                                           "exit_layer=0..7"):
        train_base(TrainConfig(model_config="tiny", exit_layer=8, out_dir=str(tmp_path / "ex")))
    assert not (tmp_path / "ex").exists()
    with pytest.raises(jse.JSEError, match="batch_size 12 .* not divisible by the data axes"):
        b = _data()
        run_training(jse.create_model(CFG), Batches(b.tokens, b.mask, 12, 0), lm_loss,
                     TrainConfig(batch_size=12, mesh="data=8", steps=1), out_dir=tmp_path / "d",
                     progress=False)
    _train(tmp_path / "shape", steps=3, devices=jax.devices()[:1])
    other = jse.create_model(CFG.replace(hidden_size=64), seed=0)
    with pytest.raises(jse.JSEError, match="holds a model of another shape \\(hidden_size: 32"):
        run_training(other, _data(), lm_loss, TrainConfig(steps=3, batch_size=8, mesh="data=-1"),
                     out_dir=tmp_path / "shape", progress=False, devices=jax.devices()[:1])


SCRIPT = """
import sys, jax
sys.path.insert(0, {tests!r})
from test_train import _train
_train({out!r}, steps=12, devices=jax.devices()[:1], slow_step={slow})
"""


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    tests = str(Path(__file__).parent)

    def launch(out, slow):
        return subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=tests, out=str(out),
                                                                     slow=slow)], env=env)

    full = launch(tmp_path / "full", 0.0)
    assert full.wait(timeout=300) == 0
    victim = launch(tmp_path / "killed", 0.3)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "ckpt" / "6").exists():
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert (tmp_path / "killed" / "ckpt").exists()
    resumed = launch(tmp_path / "killed", 0.0)
    assert resumed.wait(timeout=300) == 0
    a = np.load(tmp_path / "full" / "final.npz")
    b = np.load(tmp_path / "killed" / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k


def test_early_exit_reads_the_first_layers_and_its_loss_trains_them(tmp_path):
    """The trainer's early exit (`fold` to layer K, then on): the final logits are the plain
    forward's, the exit logits are those of the same model cut to its first K layers;
    lm_loss_with_exit adds that exit's loss."""
    from jaxselfeval.model.context import AttentionContext
    from jaxselfeval.train.losses import lm_loss_with_exit

    cfg3 = CFG.replace(num_hidden_layers=3)
    model = jse.create_model(cfg3, seed=1)
    cut = jse.create_model(cfg3.replace(num_hidden_layers=1), seed=1)
    for name, _ in nnx.to_flat_state(nnx.state(cut, nnx.Param)):
        full = getattr(model, name[0])[...]
        getattr(cut, name[0])[...] = full[:1] if name[0] in LAYER_PARAMS else full
    toks = _data().tokens[:4]
    x, _ = model.fold(model.embed_tokens(toks), AttentionContext(), stop=1)
    early = model.logits(model.norm(x))
    x, _ = model.fold(x, AttentionContext(), start=1)
    final = model.logits(model.norm(x))
    np.testing.assert_allclose(final, model(toks), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(early, cut(toks), rtol=1e-5, atol=1e-5)
    assert not np.allclose(early, final, atol=1e-3)
    batch = {"tokens": toks, "mask": np.ones(toks.shape, np.float32)}
    plain, _ = lm_loss(model, batch)
    total, m = lm_loss_with_exit(1, 0.5)(model, batch)
    np.testing.assert_allclose(m["loss"], plain, rtol=1e-6)
    np.testing.assert_allclose(total, plain + 0.5 * lm_loss(cut, batch)[0], rtol=1e-5)


def test_train_base_second_stage_starts_from_the_given_weights(tmp_path):
    """init_from: the weights and tokenizer of an HF directory, not a fresh model; bad ones are
    one line before anything is written."""
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.train.base import train_base

    init = default_model_dir()
    cfg = TrainConfig(init_from=str(init), task="arithmetic",
                      task_args={"n_train": 64, "n_validation": 4, "n_test": 4,
                                 "direct_share": [0.5, 0.5, 0.5, 0.5]},
                      steps=2, batch_size=8, lr=1e-4, warmup_steps=1, seq_len=112,
                      compute_dtype="float32", out_dir=str(tmp_path / "s2"), eval_problems=0,
                      checkpoint_every=2, log_every=1)
    export, summary = train_base(cfg, progress=False)
    assert (export / "tokenizer.json").read_text() == (init / "tokenizer.json").read_text()
    a, b = _params(jse.load_pretrained(init)), _params(jse.load_pretrained(export))
    assert a.keys() == b.keys()
    moved = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert 0 < moved < 0.01  # two small steps from the shipped weights, not a new model
    for bad, msg in ((dict(init_from=str(tmp_path / "nope")), "is not an HF model directory"),
                     (dict(model={"num_hidden_layers": 2}), "model.\\* overrides change the shape")):
        out = tmp_path / "bad"
        with pytest.raises(jse.JSEError, match=msg):
            train_base(TrainConfig(**{**cfg.__dict__, "out_dir": str(out), **bad}), progress=False)
        assert not out.exists()


def test_weight_decay_hits_matrices_not_norms_or_the_embedding_table():
    """Decay is decided by each parameter's logical axes: the stacked [layers, hidden] norms,
    the final norm and the embedding table keep their values under zero gradients (only decay
    moves a parameter then), while every matrix (attention, MLP, LM head) shrinks by lr * wd."""
    import jax.numpy as jnp

    from jaxselfeval.train.step import decays, make_optimizer, make_train_step

    model = jse.create_model(CFG.replace(tie_word_embeddings=False), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    before = {k: np.asarray(v[...]) for k, v in params.items()}
    lr, wd = 0.1, 0.5
    tx = make_optimizer(TrainConfig(lr=lr, warmup_steps=1, steps=10, min_lr_ratio=1.0,
                                    weight_decay=wd))

    def zero_loss(m, batch):  # every gradient is 0: Adam's step is 0, decay alone acts
        return 0.0 * jnp.sum(m(batch["tokens"])), {}

    step = jax.jit(make_train_step(graphdef, zero_loss, tx))
    opt = tx.init(params)
    batch = {"tokens": np.zeros((2, 4), np.int32)}
    for _ in range(2):  # the schedule's lr is 0 at step 0, lr at step 1
        params, opt, _ = step(params, nnx.State({}), opt, batch)
    kept = {"embed", "attn_norm", "mlp_norm", "final_norm"}
    assert kept | {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "lm_head"} == set(before)
    for k, v in params.items():
        want = before[k] if k in kept else before[k] * (1 - lr * wd)
        np.testing.assert_allclose(np.asarray(v[...]), want, rtol=1e-6, err_msg=k)
    assert not decays(("layers", "norm"), (2, 32)) and not decays(("layers", "mlp"), (2, 64))
    assert decays(("layers", "embed", "lora_rank"), (2, 32, 4)) and decays(None, (3, 2))


def test_chunked_lm_loss_equals_full_logits(monkeypatch):
    """Long sequences form the LM head chunk by chunk (LOSS_CHUNK): same loss, accuracy and
    gradient as the whole [B, S, V] logits, a chunk that does not divide S included."""
    from jaxselfeval.train import losses

    model = jse.create_model(CFG, seed=0)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(3, CFG.vocab_size, (2, 50)), jnp.int32),
             "mask": jnp.asarray(rng.integers(0, 2, (2, 50)), jnp.float32)}
    g, params = nnx.split(model, nnx.Param)

    def run(chunk):
        monkeypatch.setattr(losses, "LOSS_CHUNK", chunk)
        (loss, met), grads = jax.value_and_grad(
            lambda p: losses.lm_loss(nnx.merge(g, p), batch), has_aux=True)(params)
        return loss, met, grads

    full, chunked = run(4096), run(16)
    assert abs(float(full[0]) - float(chunked[0])) <= 1e-6
    assert float(full[1]["token_acc"]) == float(chunked[1]["token_acc"])
    assert float(full[1]["tokens"]) == float(chunked[1]["tokens"])
    for a, b in zip(jax.tree.leaves(full[2]), jax.tree.leaves(chunked[2])):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6
