"""`jaxselfeval bench sampler`: our sampler vs transformers, branching, probe cost, shared cache.

All figures are measured side by side in one run on this machine (after a warm-up call that
compiles; the median of `--repeat` timed calls per side, the two sides alternating), and printed
as ratios next to their goals. Both sides run the same random weights in the same dtype: ours
made straight in that dtype (`bench.models.random_model`: no float32 copy, nothing downloaded),
copied in memory into transformers' LlamaForCausalLM built in that dtype on the same device.
Shapes: `bench.models.SHAPES`, up to llama3_2_1b and llama3_1_8b. Random weights give near-uniform
logits, a distribution no trained model has (top-p 0.95 would keep ~90% of the vocabulary); the
LM head is scaled so the logits have a standard deviation of `--logit-std` (default 6: a nucleus
of tens of tokens, as a trained model's).

Bounds (`roofline.py`, with the chip's datasheet HBM bandwidth and dense bf16 peak on a known
GPU, else this machine's measured figures; the line `limits:` says which): per shape our decode
step (the decode part of each timed call / new tokens; the speedup is of whole calls) next to the
decode step's bound, (weights + KV bytes read) / bandwidth or its FLOPs / peak, whichever is
larger; the prefill figure next to its FLOPs at the bf16 peak; the probe's share of generation
with its floor (the probe's FLOPs at the bf16 peak); the shared and copied cache's decode steps
next to their bounds.
"""

from __future__ import annotations

import json
import time

import numpy as np

from jaxselfeval.bench.models import SHAPES, shape_config
from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import write_file

MODES = {"greedy": dict(temperature=0.0, top_p=1.0), "top_p": dict(temperature=1.0, top_p=0.95)}


def add_arguments(p):
    p.add_argument("--shapes", default="tiny,small_100m,smollm2_135m,llama3_vocab",
                   help=f"model shapes, comma-separated ({', '.join(SHAPES)})")
    p.add_argument("--dtypes", default="bfloat16,float32", help="same dtype on both sides")
    p.add_argument("--modes", default="greedy,top_p", help="greedy, top_p (0.95 at T=1)")
    p.add_argument("--n", type=int, default=16, help="candidates per prompt")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--logit-std", type=float, default=6.0, help="LM head scaled to this logit std")
    p.add_argument("--figures-shape", default="small_100m",
                   help="shape for the prefill/probe/cache figures ('' to skip them)")
    p.add_argument("--figures-prompt-len", type=int, default=0,
                   help="prompt tokens of the prefill+branch and shared-cache figures (0: 512 "
                        "and 1024; --quick 64 and 128)")
    p.add_argument("--layers", type=int, default=None,
                   help="keep only this many layers of every shape (a cheap stand-in)")
    p.add_argument("--quick", action="store_true",
                   help="tiny and small_100m, bf16, 8 new tokens, short figure prompts")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed calls per side, ours and theirs alternating; the median of each")
    p.add_argument("--torch-threads", type=int, default=0, help="transformers' threads (0: its default)")
    p.add_argument("--out", default=None, help="also write JSON here")


def _paired(a, b, repeat: int):
    """Median seconds of `repeat` timed calls of each of a and b, alternating a, b, a, b, ...
    after one warm-up (compiling) call of each: both sides see the same moments of a shared
    machine, and one slow moment moves neither median."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, ts in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return float(np.median(ta)), float(np.median(tb))


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _head_std(cfg, logit_std: float) -> float:
    """The LM head's weight std for logits of std `logit_std` (the final-normed hidden has unit
    RMS: logit std = weight std * sqrt(hidden))."""
    return logit_std / cfg.hidden_size ** 0.5


def _release(dev):
    """Free what the last shape left on the devices before the next one is built."""
    import gc

    gc.collect()
    if dev == "cuda":
        import torch

        torch.cuda.empty_cache()


def run(args) -> int:
    if args.repeat < 1:
        raise JSEError(f"--repeat must be >= 1, got {args.repeat}")
    if args.figures_prompt_len < 0:
        raise JSEError(f"--figures-prompt-len must be >= 0, got {args.figures_prompt_len}")
    shapes, dtypes, new = args.shapes.split(","), args.dtypes.split(","), args.new_tokens
    if args.quick:
        shapes, dtypes, new = ["tiny", "small_100m"], ["bfloat16"], 8
    cfgs = {name: shape_config(name, args.layers) for name in shapes}  # a bad name fails here, first
    import jax
    import torch

    import jaxselfeval as jse
    from jaxselfeval.bench import roofline
    from jaxselfeval.bench.models import random_model, torch_model
    from jaxselfeval.sample import Engine

    n, modes = args.n, args.modes.split(",")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # transformers on the chip jax uses
    if dev == "cuda":  # float32 matmuls in TF32 on both sides, as XLA runs them on a GPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    res = {"device": jax.devices()[0].device_kind, "n": n, "new_tokens": new,
           "prompt_len": args.prompt_len, "repeat": args.repeat, "rows": []}
    limits = roofline.chip_limits(dtypes)
    bw, peaks = limits["bandwidth"], limits["peaks"]
    res.update(bandwidth=bw, peaks=peaks, limits=limits)
    print(f"device {res['device']}; transformers on {dev}; torch threads "
          f"{torch.get_num_threads()}; median of {args.repeat} alternating timed calls per side; "
          f"{n} candidates x {new} new tokens after a {args.prompt_len}-token prompt")
    print(roofline.describe(limits))
    print(f"{'shape':13s} {'dtype':8s} {'mode':6s} {'params':>7s} {'ours tok/s':>10s} "
          f"{'hf tok/s':>9s} {'speedup':>8s} {'goal':>5s} {'step ms':>8s} {'bound ms':>8s} "
          f"{'x bound':>7s} {'bound by':>8s}")
    rng = np.random.default_rng(0)
    fig_model = None  # the figures' shape in bf16, when a row built it: not built twice
    for name in shapes:
        cfg = cfgs[name]
        prompt = rng.integers(0, cfg.vocab_size, args.prompt_len).tolist()
        ids = torch.tensor([prompt] * n, device=dev)  # n rows (transformers' greedy takes no num_return_sequences)
        for dt in dtypes:
            # the same draws in every dtype (each cast from one float32 draw), on both sides
            model = random_model(cfg, dt, seed=0, head_std=_head_std(cfg, args.logit_std))
            eng = Engine(model, seed=0)
            tm = torch_model(model, dev)
            item = np.dtype(model.param_dtype).itemsize
            rl = roofline.decode_step_bound(cfg, n, args.prompt_len, new, item, bw, peaks[dt])
            for mode in modes:
                kw = MODES[mode]

                decode_s = []  # the decode part of each call: the step the bound is of

                def ours():
                    P = eng.prefill([prompt])
                    B = _block(eng.branch(P, n, new, **kw))
                    t = time.perf_counter()
                    toks = _block(eng.decode(P, B, until=new).tokens)
                    decode_s.append(time.perf_counter() - t)
                    return toks

                def theirs():
                    hf = (dict(do_sample=False) if mode == "greedy" else
                          dict(do_sample=True, top_p=kw["top_p"], top_k=0, temperature=1.0))
                    with torch.no_grad():
                        tm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                    min_new_tokens=new, eos_token_id=None, pad_token_id=0, **hf)
                    if dev == "cuda":
                        torch.cuda.synchronize()

                t_ours, t_hf = _paired(ours, theirs, args.repeat)
                step = float(np.median(decode_s[1:])) / new  # decode runs `new` steps
                goal = 3.0 if name == "tiny" else 1.5
                row = {"shape": name, "dtype": dt, "mode": mode, "params": jse.count_params(model),
                       "layers": cfg.num_hidden_layers,
                       "ours_tok_s": n * new / t_ours, "hf_tok_s": n * new / t_hf,
                       "speedup": t_hf / t_ours, "goal": goal, "step_s": step,
                       "call_s_per_token": t_ours / new,
                       "bound_s": rl["bound_s"], "mem_bound_s": rl["mem_s"],
                       "flop_bound_s": rl["flop_s"], "bound_by": rl["by"],
                       "limits": limits["source"]}
                res["rows"].append(row)
                print(f"{name:13s} {dt:8s} {mode:6s} {_millions(row['params'])} "
                      f"{row['ours_tok_s']:10.0f} {row['hf_tok_s']:9.0f} {row['speedup']:7.2f}x "
                      f"{goal:4.1f}x {1e3 * step:8.2f} {1e3 * rl['bound_s']:8.2f} "
                      f"{step / rl['bound_s']:6.1f}x {rl['by']:>8s}", flush=True)
            if name == args.figures_shape and dt == "bfloat16":
                fig_model = model
            del model, eng, tm
            _release(dev)
    print("tok/s and speedup: whole calls (prefill + branch + decode) on both sides; step ms: our "
          "decode time / new tokens (median over the timed calls); bound ms: the larger of "
          "(weights + KV bytes) / HBM bandwidth and FLOPs / matmul peak of one decode step "
          f"({limits['source']} limits); bound by: which of the two")
    if args.figures_shape:
        _figures(args, res, rng, fig_model)
    if args.out:
        write_file(args.out, json.dumps(res, indent=2))
    return 0


def _millions(count: int) -> str:
    """A parameter count in 7 columns: 135.0M, 8030M."""
    m = count / 1e6
    return f"{m:6.1f}M" if m < 1000 else f"{m:6.0f}M"


def _figures(args, res, rng, model=None):
    """One prefill + branch vs N prefills; probe share of generation; shared vs copied cache;
    each next to its bound at the limits `run` chose. `model`: the figures' shape in bf16 if a
    row made it (its LM head scaled; no timing here depends on the logits' values), else made
    here."""
    from jaxselfeval.bench import roofline
    from jaxselfeval.bench.models import random_model
    from jaxselfeval.sample import Engine
    from jaxselfeval.sample.probe import ProbeSpec

    n = args.n
    long_prompt, cache_prompt, gen = (64, 128, 16) if args.quick else (512, 1024, 128)
    if args.figures_prompt_len:
        long_prompt = cache_prompt = args.figures_prompt_len
    cfg = shape_config(args.figures_shape, args.layers)
    if model is None:
        model = random_model(cfg, "bfloat16", seed=0)
    eng = Engine(model, seed=0)
    prompt = rng.integers(0, cfg.vocab_size, args.prompt_len).tolist()
    bw, peak = res["bandwidth"], res["peaks"]["bfloat16"]
    print(f"[figures on {args.figures_shape}, bfloat16, N={n}; bounds at bandwidth "
          f"{bw / 1e9:.0f} GB/s and bf16 peak {peak / 1e12:.3g} TFLOP/s, "
          f"{res['limits']['source']}]")
    # ---- prefill once + branch vs n independent prefills of a long prompt
    lp = rng.integers(0, cfg.vocab_size, long_prompt).tolist()
    t_branch, t_indep = _paired(lambda: _block(eng.branch(eng.prefill([lp]), n, 16).next_token),
                                lambda: _block(eng.prefill([lp] * n).last_logits), args.repeat)
    b_branch = roofline.prefill_flops(cfg, 1, long_prompt) / peak
    b_indep = roofline.prefill_flops(cfg, n, long_prompt) / peak
    res["prefill"] = {"prompt": long_prompt, "branch_s": t_branch, "independent_s": t_indep,
                      "ratio": t_indep / t_branch, "branch_bound_s": b_branch,
                      "independent_bound_s": b_indep}
    print(f"[prefill]  {long_prompt}-token prompt: prefill+branch {t_branch * 1e3:.1f} ms "
          f"(bound {b_branch * 1e3:.1f} ms) vs {n} independent prefills {t_indep * 1e3:.1f} ms "
          f"(bound {b_indep * 1e3:.1f} ms, {100 * b_indep / t_indep:.0f}% of the bf16 peak): "
          f"{t_indep / t_branch:.1f}x less (goal >= 8x)")
    # ---- probe cost per candidate vs generating a `gen`-token response
    spec = ProbeSpec(eot=1, suffix=tuple(range(2, 24)), yes=30, no=31)  # a 23-token probe turn
    P = eng.prefill([prompt])
    C = eng.decode(P, eng.branch(P, n, gen), until=gen)
    t_gen, t_probe = _paired(lambda: _block(eng.decode(P, eng.branch(P, n, gen), until=gen).tokens),
                             lambda: _block(eng.probe(P, C, spec)), args.repeat)
    # the floor: the probe's FLOPs at the bf16 matmul peak
    turn = len(spec.suffix) + 1
    flops = roofline.probe_flops(cfg, n, turn, args.prompt_len + gen)
    res["probe"] = {"probe_s": t_probe, "generate_s": t_gen, "share": t_probe / t_gen,
                    "flops": flops, "floor_s": flops / peak, "floor_share": flops / peak / t_gen}
    print(f"[probe]    {turn}-token probe of {n} candidates {t_probe * 1e3:.1f} ms "
          f"vs generating {gen} tokens {t_gen * 1e3:.0f} ms: {100 * t_probe / t_gen:.1f}% "
          f"(goal <= 5%; floor {100 * flops / peak / t_gen:.1f}%: its {flops / 1e9:.1f} "
          f"GFLOP at the bf16 peak {peak / 1e12:.3g} TFLOP/s)")
    # ---- shared prompt cache vs the prompt cache copied n times
    cp = rng.integers(0, cfg.vocab_size, cache_prompt).tolist()
    steps = 16
    Ps = eng.prefill([cp])
    Cs = eng.branch(Ps, n, steps)
    shared_bytes = Ps.cache.nbytes() + Cs.cache.nbytes()
    copied = _copied_baseline(eng, cp, n, steps)
    t_shared, t_copy = _paired(
        lambda: _block(eng.decode(Ps, eng.branch(Ps, n, steps), until=steps).tokens),
        lambda: _block(copied()), args.repeat)
    copy_bytes = copied.nbytes
    bounds = {s: roofline.decode_step_bound(cfg, n, cache_prompt, steps, 2, bw, peak,
                                            shared=s)["bound_s"] for s in (True, False)}
    res["cache"] = {"prompt": cache_prompt, "shared_bytes": shared_bytes, "copied_bytes": copy_bytes,
                    "bytes_ratio": shared_bytes / copy_bytes, "shared_step_s": t_shared / steps,
                    "copied_step_s": t_copy / steps, "shared_bound_s": bounds[True],
                    "copied_bound_s": bounds[False]}
    print(f"[cache]    {cache_prompt}-token prompt, N={n}: shared {shared_bytes / 2**20:.1f} MiB vs "
          f"copied {copy_bytes / 2**20:.1f} MiB = {shared_bytes / copy_bytes:.3f} (goal <= 0.125); "
          f"decode step {1e3 * t_shared / steps:.2f} ms (bound {1e3 * bounds[True]:.2f}) vs "
          f"{1e3 * t_copy / steps:.2f} ms (bound {1e3 * bounds[False]:.2f}) (goal: no worse)")


def _copied_baseline(eng, prompt, n, steps):
    """Decode with the prompt's KV copied into each of the n rows (no shared segment)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxselfeval.model.cache import init_cache
    from jaxselfeval.model.context import AttentionContext
    from jaxselfeval.sample.engine import vocab_logits
    from jaxselfeval.sample.sampling import row_keys, sample_tokens

    L = len(prompt)
    cfg = eng.config
    toks = jnp.asarray([prompt] * n, jnp.int32)
    cache = init_cache(cfg, n, L + steps, eng.cache_dtype)
    _, cache = jax.jit(lambda st, t, c: nnx.merge(eng.graphdef, st).forward(
        t, AttentionContext(cache=c, last_only=True)))(eng.state, toks, cache)

    @jax.jit
    def loop(st, cache):
        model = nnx.merge(eng.graphdef, st)

        def body(i, carry):
            cache, tok = carry
            pos = jnp.full((n, 1), L + i, jnp.int32)
            h, cache = model.forward(tok[:, None], AttentionContext(pos, cache=cache,
                                                                    last_only=True))
            logits = vocab_logits(model, None, h[:, 0], eng.platform)
            keys = row_keys(eng.key, jnp.zeros(n, jnp.int32), jnp.arange(n), i)
            return cache, sample_tokens(logits, keys, jnp.ones(n), jnp.ones(n))

        return jax.lax.fori_loop(0, steps, body, (cache, jnp.zeros(n, jnp.int32)))[1]

    def run():
        return loop(eng.state, cache)

    run.nbytes = cache.nbytes()
    return run
