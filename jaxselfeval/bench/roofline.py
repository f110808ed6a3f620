"""The chip's limits (datasheet or measured) and the roofline bounds the benchmarks print.

The bound of one decode step is the larger of (bytes it must read: weights + KV cache) / HBM
bandwidth and (its matmul FLOPs) / matmul peak in the compute dtype; a prefill's or a training
step's bound is its FLOPs at the dense bf16 peak. `chip_limits` takes the bandwidth and the dense
bf16 peak from the datasheet of a known GPU (`DATASHEET`, matched on `device_kind`) and measures
them elsewhere (a large reduction; a large jitted matmul with f32 accumulation, as the model
runs its matmuls); other dtypes' peaks are always measured.
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


# datasheet figures: HBM bytes/s and dense (no sparsity) bf16 FLOP/s
DATASHEET = {
    "NVIDIA H200": (4.8e12, 989e12),
    "NVIDIA H100 SXM": (3.35e12, 989e12),
    "NVIDIA A100 80GB SXM": (2.0e12, 312e12),
    "NVIDIA A100 80GB PCIe": (1.935e12, 312e12),
}


def datasheet_chip(device_kind: str) -> str | None:
    """The DATASHEET entry of a jax `device_kind` ("NVIDIA H200", "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB", ...), or None for a chip it does not list (an H100 PCIe or NVL, an
    H200 NVL, a GH200, any CPU or TPU)."""
    k = device_kind.upper().replace("-", " ")
    if any(v in k for v in ("NVL", "GH200", "GH100")):
        return None
    if "H200" in k:
        return "NVIDIA H200"
    if "H100" in k and "PCIE" not in k and ("SXM" in k or "HBM3" in k):
        return "NVIDIA H100 SXM"
    if "A100" in k and "80GB" in k:
        return "NVIDIA A100 80GB PCIe" if "PCIE" in k else "NVIDIA A100 80GB SXM"
    return None


def chip_limits(dtypes=("bfloat16",), device_kind: str | None = None) -> dict:
    """{"source", "chip", "bandwidth" (bytes/s), "peaks" {dtype: FLOP/s}, "measured" [what was
    measured]}: a DATASHEET chip's HBM bandwidth and dense bf16 peak ("source": "datasheet"),
    else this machine's measured figures ("source": "measured"); a peak in another dtype than
    bf16 is measured on every chip."""
    import jax
    import jax.numpy as jnp

    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    chip = datasheet_chip(kind)
    dtypes = list(dict.fromkeys(["bfloat16", *dtypes]))
    measured = []
    if chip is not None:
        bw, bf16 = DATASHEET[chip]
        peaks = {"bfloat16": bf16}
    else:
        bw, peaks = memory_bandwidth(), {}
        measured.append("bandwidth")
    for dt in dtypes:
        if dt not in peaks:
            peaks[dt] = matmul_peak(getattr(jnp, dt))
            measured.append(f"{dt} peak")
    return {"source": "datasheet" if chip else "measured", "chip": chip or kind,
            "bandwidth": bw, "peaks": peaks, "measured": measured}


def describe(limits: dict) -> str:
    """One line: which figures the bounds use, and where they come from."""
    peaks = ", ".join(f"{dt} {p / 1e12:.3g} TFLOP/s" for dt, p in limits["peaks"].items())
    src = (f"{limits['chip']} datasheet (HBM bandwidth, dense bf16 peak)"
           if limits["source"] == "datasheet" else f"measured on this {limits['chip']}")
    meas = (f"; measured here: {', '.join(limits['measured'])}"
            if limits["source"] == "datasheet" and limits["measured"] else "")
    return (f"limits: {src}: bandwidth {limits['bandwidth'] / 1e9:.0f} GB/s, peaks {peaks}"
            f"{meas}")


def _layer_matmul_params(cfg) -> tuple[int, int]:
    """One layer's matmul weights: (q, k and v projections; attention output and MLP)."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return D * (H + 2 * K) * Dh, H * Dh * D + 3 * D * F


def decode_step_bound(cfg, rows: int, prompt_len: int, new_tokens: int, itemsize: int,
                      bandwidth: float, peak: float, *, prompts: int = 1,
                      shared: bool = True) -> dict:
    """Roofline of one decode step of `rows` candidates of `prompts` prompts of `prompt_len`
    tokens (rows / prompts rows each), averaged over `new_tokens` steps. shared: each prompt's KV
    is read once per step (the sampler's shared prompt cache); else once per row (copied rows).
    Returns {"bytes", "flops", "bound_s", "mem_s", "flop_s", "by"} (seconds; by: "memory" or
    "compute", whichever bounds)."""
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    # the LM head (tied or not) is read in full every step
    matmul_params = L * sum(_layer_matmul_params(cfg)) + D * V
    # each prompt's KV once (or each row's copy) + each row's own average
    kv_slots = (prompts if shared else rows) * prompt_len + rows * new_tokens / 2
    kv_bytes = 2 * L * kv_slots * K * Dh * itemsize
    nbytes = matmul_params * itemsize + kv_bytes
    flops = 2 * rows * matmul_params + 4 * rows * L * H * Dh * (prompt_len + new_tokens / 2)
    mem_s, flop_s = nbytes / bandwidth, flops / peak
    return {"bytes": nbytes, "flops": flops, "mem_s": mem_s, "flop_s": flop_s,
            "bound_s": max(mem_s, flop_s), "by": "memory" if mem_s >= flop_s else "compute"}


def prefill_flops(cfg, rows: int, prompt_len: int) -> float:
    """Matmul and attention FLOPs of a prefill of `rows` prompts of `prompt_len` tokens: every
    layer on every token, causal attention over the visible keys only, the LM head on the last
    token alone (the sampler keeps the last logits). Its bound: these at the dense bf16 peak."""
    L, D, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    H, Dh = cfg.num_attention_heads, cfg.head_dim
    S = prompt_len
    proj = 2 * rows * S * L * sum(_layer_matmul_params(cfg))
    attn = 4 * rows * L * H * Dh * S * (S + 1) / 2
    return float(proj + attn + 2 * rows * D * V)


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
