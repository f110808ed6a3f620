"""This machine's measured memory bandwidth and matmul peak, and a decode step's roofline bound.

The bound of one decode step is the larger of (bytes it must read: weights + KV cache) / bandwidth
and (its matmul FLOPs) / matmul peak in the compute dtype. Both rates are measured here (a large
reduction; a large jitted matmul with f32 accumulation, as the model runs its matmuls).
"""

from __future__ import annotations

import time


def _best(fn, repeat=3):
    import jax

    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def _on_cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


def memory_bandwidth(mib: int | None = None) -> float:
    """Bytes/s of a jitted sum over a `mib` MiB float32 array (read once; 512 MiB on CPU, 4 GiB
    on an accelerator, whose bandwidth a small array underestimates)."""
    import jax
    import jax.numpy as jnp

    mib = mib or (512 if _on_cpu() else 4096)
    x = jnp.ones((mib * 2**18,), jnp.float32)
    f = jax.jit(jnp.sum)
    return x.nbytes / _best(lambda: f(x))


def matmul_peak(dtype, n: int | None = None) -> float:
    """FLOP/s of an [n, n] x [n, n] matmul in `dtype` (f32 accumulation; n 2048 on CPU, 8192 on
    an accelerator, where a smaller product does not fill the chip)."""
    import jax
    import jax.numpy as jnp

    n = n or (2048 if _on_cpu() else 8192)
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / _best(lambda: f(a, a))


def _layer_matmul_params(cfg) -> tuple[int, int]:
    """One layer's matmul weights: (q, k and v projections; attention output and MLP)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return D * (H + 2 * K) * Dh, H * Dh * D + 3 * D * F


def decode_step_bound(cfg, rows: int, prompt_len: int, new_tokens: int, itemsize: int,
                      bandwidth: float, peak: float) -> dict:
    """Roofline of one decode step of `rows` candidates sharing one prompt of `prompt_len`
    tokens, averaged over `new_tokens` steps. Returns seconds: {"bytes", "flops", "bound_s",
    "mem_s", "flop_s"}."""
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    # the LM head (tied or not) is read in full every step
    matmul_params = L * sum(_layer_matmul_params(cfg)) + D * V
    kv_slots = prompt_len + rows * new_tokens / 2  # shared prompt once + each row's own average
    kv_bytes = 2 * L * kv_slots * K * Dh * itemsize
    nbytes = matmul_params * itemsize + kv_bytes
    flops = 2 * rows * matmul_params + 4 * rows * L * H * Dh * (prompt_len + new_tokens / 2)
    mem_s, flop_s = nbytes / bandwidth, flops / peak
    return {"bytes": nbytes, "flops": flops, "mem_s": mem_s, "flop_s": flop_s,
            "bound_s": max(mem_s, flop_s)}


def probe_flops(cfg, rows: int, turn: int, context: int) -> float:
    """Matmul and attention FLOPs of one probe (`Engine.probe`): a `turn`-token probe turn for
    each of `rows` candidates whose prompt + response hold `context` tokens. Every layer projects
    every turn token; the last layer keeps keys and values of all of them but the query's
    attention output and MLP of the last one alone (`forward(last_only=True)` unrolled); the
    head reads two tokens. Counts only visible keys: a floor on the work, not XLA's count."""
    L, D, H, Dh = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    qkv, rest = _layer_matmul_params(cfg)
    n = rows * turn
    proj = 2 * n * (L * qkv + (L - 1) * rest) + 2 * rows * rest
    attn = 4 * H * Dh * (n * (L - 1) * (context + (turn + 1) / 2) + rows * (context + turn))
    return float(proj + attn + 2 * rows * D * 2)
