"""On a GPU only (skipped elsewhere; CI has none): the cuDNN attention kernel, the sampler and a
training step run there and agree with the exact paths.

    JAX_PLATFORMS=cuda pytest -n 0 tests/test_gpu.py      # scripts/gpu_check.sh runs it
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.model.attention import attention_kernels
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.sample import Engine
from jaxselfeval.train.losses import lm_loss

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs a GPU (run with JAX_PLATFORMS=cuda)")

CFG = LlamaConfig.from_dict(dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None))


def _model(impl, dtype):
    return jse.create_model(CFG, seed=0, param_dtype="float32", compute_dtype=dtype,
                            attention_impl=impl)


def test_cudnn_attention_matches_exact_attention():
    """A 512-token forward through cuDNN's fused causal kernel (bf16) is as close to the f32 exact
    reference as the exact path in bf16 is (within 2x its error), and it really ran cuDNN."""
    toks = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 512)), jnp.int32)
    ref = np.asarray(_model("exact", "float32")(toks), np.float64)
    exact = np.asarray(_model("exact", "bfloat16")(toks).astype(jnp.float32), np.float64)
    fwd = jax.jit(lambda m, t: m(t))
    fused = np.asarray(fwd(_model("cudnn", "bfloat16"), toks).astype(jnp.float32), np.float64)
    assert attention_kernels(fwd.lower(_model("cudnn", "bfloat16"), toks)) == ["cudnn"]
    err_exact, err_fused = np.abs(exact - ref).max(), np.abs(fused - ref).max()
    assert err_fused <= 2 * err_exact + 1e-3, (err_fused, err_exact)
    assert (fused.argmax(-1) == ref.argmax(-1)).mean() > 0.98


def test_greedy_decode_on_gpu_equals_the_full_forward():
    """Cached greedy decode on the GPU (prefill, branch, windowed while_loop) emits the argmax of
    the full forward of the whole sequence, with its log-probabilities (f32)."""
    model = _model("exact", "float32")
    prompts = [[5, 17, 99, 3], [7, 8, 9, 10, 11, 12, 13]]
    eng = Engine(model, seed=0)
    P = eng.prefill(prompts)
    C = eng.decode(P, eng.branch(P, 1, 48, temperature=0.0))
    with jax.default_matmul_precision("highest"):
        for p, o, lp in zip(prompts, Engine.outputs(C), np.asarray(C.logprob)):
            assert len(o) == 48
            logits = np.asarray(model(jnp.asarray([p + o]))[0], np.float64)[len(p) - 1:-1]
            agree = (np.argmax(logits, -1) == np.asarray(o)).mean()
            assert agree > 0.95, agree  # TF32 matmuls in decode may flip a near-tie
            z = logits - logits.max(-1, keepdims=True)
            ref = (z[np.arange(48), o] - np.log(np.exp(z).sum(-1))).sum()
            assert abs(lp - ref) < 0.05 * 48


def test_training_steps_on_gpu_lower_the_loss():
    """Ten AdamW steps on one batch (bf16 compute) lower the next-token loss on the GPU."""
    model = _model("auto", "bfloat16")
    rng = np.random.default_rng(1)
    batch = {"tokens": jnp.asarray(rng.integers(0, CFG.vocab_size, (4, 256)), jnp.int32),
             "mask": jnp.ones((4, 256), jnp.float32)}
    opt = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        (loss, _), grads = nnx.value_and_grad(lm_loss, has_aux=True)(model, batch)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, batch)) for _ in range(10)]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
