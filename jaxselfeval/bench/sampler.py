"""`jaxselfeval bench sampler`: our sampler vs transformers, branching, probe cost, shared cache.

All figures are measured side by side in one run on this machine (after a warm-up call that
compiles; the median of `--repeat` timed calls per side, the two sides alternating), and printed
as ratios next to their goals. Both sides run the same random weights in
the same dtype (ours loads transformers' export). Random weights give near-uniform logits, a
distribution no trained model has (top-p 0.95 would keep ~90% of the vocabulary); the LM head is
scaled so the logits have a standard deviation of `--logit-std` (default 6: a nucleus of tens of
tokens, as a trained model's). Per shape the decode step's roofline bound (`roofline.py`, this
machine's measured bandwidth and matmul peak) is printed next to our decode step (the decode part
of each timed call / new tokens; the speedup is of whole calls). The probe's share of generation
is printed with its floor on this machine: the probe's FLOPs at the measured bf16 matmul peak.
"""

from __future__ import annotations

import json
import tempfile
import time

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import write_file

SHAPES = {  # name -> config name or dict (random weights; vocab sizes of real tokenizers)
    "tiny": "tiny",
    "small_100m": "small_100m",
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "llama3_vocab": dict(vocab_size=128256, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=500000.0,
                         tie_word_embeddings=True),
}
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


def _config(name):
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.model.config import LlamaConfig

    spec = SHAPES.get(name, name)
    if isinstance(spec, dict):
        return LlamaConfig.from_dict(dict(spec, bos_token_id=None, eos_token_id=None))
    return load_model_config(spec)


def _export(cfg, logit_std: float) -> str:
    """Random f32 weights, LM head scaled to `logit_std`, written as an HF directory."""
    import jaxselfeval as jse

    model = jse.create_model(cfg, seed=0)
    head = model.embed if cfg.tie_word_embeddings else model.lm_head
    # final-normed hidden has unit RMS: logit std = weight std * sqrt(hidden)
    head.value = head.value * (logit_std / (0.02 * cfg.hidden_size ** 0.5))
    d = tempfile.mkdtemp()
    jse.save_pretrained(model, d)
    return d


def run(args) -> int:
    if args.repeat < 1:
        raise JSEError(f"--repeat must be >= 1, got {args.repeat}")
    import jax
    import torch
    from transformers import LlamaForCausalLM

    import jaxselfeval as jse
    from jaxselfeval.bench import roofline
    from jaxselfeval.sample import Engine

    shapes, dtypes, new = args.shapes.split(","), args.dtypes.split(","), args.new_tokens
    if args.quick:
        shapes, dtypes, new = ["tiny", "small_100m"], ["bfloat16"], 8
    n, modes = args.n, args.modes.split(",")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # transformers on the chip jax uses
    if dev == "cuda":  # float32 matmuls in TF32 on both sides, as XLA runs them on a GPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    res = {"device": jax.devices()[0].device_kind, "n": n, "new_tokens": new,
           "repeat": args.repeat, "rows": []}
    bw = roofline.memory_bandwidth()
    peaks = {dt: roofline.matmul_peak(getattr(jax.numpy, dt)) for dt in dtypes}
    res.update(bandwidth=bw, peaks=peaks)
    print(f"device {res['device']}; transformers on {dev}; torch threads "
          f"{torch.get_num_threads()}; median of {args.repeat} alternating timed calls per side; "
          f"{n} candidates x {new} new tokens after a "
          f"{args.prompt_len}-token prompt; measured bandwidth "
          f"{bw / 1e9:.1f} GB/s, matmul peak " +
          ", ".join(f"{dt} {p / 1e9:.0f} GFLOP/s" for dt, p in peaks.items()))
    print(f"{'shape':13s} {'dtype':8s} {'mode':6s} {'params':>7s} {'ours tok/s':>10s} "
          f"{'hf tok/s':>9s} {'speedup':>8s} {'goal':>5s} {'step ms':>8s} {'bound ms':>8s} "
          f"{'x bound':>7s}")
    rng = np.random.default_rng(0)
    for name in shapes:
        cfg = _config(name)
        d = _export(cfg, args.logit_std)
        prompt = rng.integers(0, cfg.vocab_size, args.prompt_len).tolist()
        ids = torch.tensor([prompt] * n, device=dev)  # n rows (transformers' greedy takes no num_return_sequences)
        for dt in dtypes:
            model = jse.load_pretrained(d, dt, compute_dtype=dt)
            eng = Engine(model, seed=0)
            tm = LlamaForCausalLM.from_pretrained(d, dtype=getattr(torch, dt)).eval().to(dev)
            item = 2 if dt == "bfloat16" else 4
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
                       "ours_tok_s": n * new / t_ours, "hf_tok_s": n * new / t_hf,
                       "speedup": t_hf / t_ours, "goal": goal, "step_s": step,
                       "call_s_per_token": t_ours / new,
                       "bound_s": rl["bound_s"], "mem_bound_s": rl["mem_s"],
                       "flop_bound_s": rl["flop_s"]}
                res["rows"].append(row)
                print(f"{name:13s} {dt:8s} {mode:6s} {row['params'] / 1e6:6.1f}M "
                      f"{row['ours_tok_s']:10.0f} {row['hf_tok_s']:9.0f} {row['speedup']:7.2f}x "
                      f"{goal:4.1f}x {1e3 * step:8.1f} {1e3 * rl['bound_s']:8.1f} "
                      f"{step / rl['bound_s']:6.1f}x", flush=True)
            del tm
    print("tok/s and speedup: whole calls (prefill + branch + decode) on both sides; step ms: our "
          "decode time / new tokens (median over the timed calls); bound ms: the larger of "
          "(weights + KV bytes) / bandwidth and FLOPs / matmul peak of one decode step")
    if args.figures_shape:
        _figures(args, res, rng)
    if args.out:
        write_file(args.out, json.dumps(res, indent=2))
    return 0


def _figures(args, res, rng):
    """One prefill + branch vs N prefills; probe share of generation; shared vs copied cache."""
    import jax

    import jaxselfeval as jse
    from jaxselfeval.bench import roofline
    from jaxselfeval.sample import Engine
    from jaxselfeval.sample.probe import ProbeSpec

    n = args.n
    long_prompt, cache_prompt, gen = (64, 128, 16) if args.quick else (512, 1024, 128)
    cfg = _config(args.figures_shape)
    model = jse.create_model(cfg, seed=0, param_dtype="bfloat16", compute_dtype="bfloat16")
    eng = Engine(model, seed=0)
    prompt = rng.integers(0, cfg.vocab_size, args.prompt_len).tolist()
    print(f"[figures on {args.figures_shape}, bfloat16, N={n}]")
    # ---- prefill once + branch vs n independent prefills of a long prompt
    lp = rng.integers(0, cfg.vocab_size, long_prompt).tolist()
    t_branch, t_indep = _paired(lambda: _block(eng.branch(eng.prefill([lp]), n, 16).next_token),
                                lambda: _block(eng.prefill([lp] * n).last_logits), args.repeat)
    res["prefill"] = {"prompt": long_prompt, "branch_s": t_branch, "independent_s": t_indep,
                      "ratio": t_indep / t_branch}
    print(f"[prefill]  {long_prompt}-token prompt: prefill+branch {t_branch * 1e3:.0f} ms vs {n} "
          f"independent prefills {t_indep * 1e3:.0f} ms: {t_indep / t_branch:.1f}x less "
          "(goal >= 8x)")
    # ---- probe cost per candidate vs generating a `gen`-token response
    spec = ProbeSpec(eot=1, suffix=tuple(range(2, 24)), yes=30, no=31)  # a 23-token probe turn
    P = eng.prefill([prompt])
    C = eng.decode(P, eng.branch(P, n, gen), until=gen)
    t_gen, t_probe = _paired(lambda: _block(eng.decode(P, eng.branch(P, n, gen), until=gen).tokens),
                             lambda: _block(eng.probe(P, C, spec)), args.repeat)
    # the floor: the probe's FLOPs at this machine's measured bf16 matmul peak
    turn = len(spec.suffix) + 1
    flops = roofline.probe_flops(cfg, n, turn, args.prompt_len + gen)
    peak = res["peaks"].get("bfloat16") or roofline.matmul_peak(jax.numpy.bfloat16)
    res["probe"] = {"probe_s": t_probe, "generate_s": t_gen, "share": t_probe / t_gen,
                    "flops": flops, "floor_s": flops / peak, "floor_share": flops / peak / t_gen}
    print(f"[probe]    {turn}-token probe of {n} candidates {t_probe * 1e3:.1f} ms "
          f"vs generating {gen} tokens {t_gen * 1e3:.0f} ms: {100 * t_probe / t_gen:.1f}% "
          f"(goal <= 5%; floor here {100 * flops / peak / t_gen:.1f}%: its {flops / 1e9:.1f} "
          f"GFLOP at the bf16 matmul peak {peak / 1e9:.0f} GFLOP/s)")
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
    res["cache"] = {"prompt": cache_prompt, "shared_bytes": shared_bytes, "copied_bytes": copy_bytes,
                    "bytes_ratio": shared_bytes / copy_bytes, "shared_step_s": t_shared / steps,
                    "copied_step_s": t_copy / steps}
    print(f"[cache]    {cache_prompt}-token prompt, N={n}: shared {shared_bytes / 2**20:.1f} MiB vs "
          f"copied {copy_bytes / 2**20:.1f} MiB = {shared_bytes / copy_bytes:.3f} (goal <= 0.125); "
          f"decode step {1e3 * t_shared / steps:.2f} ms vs {1e3 * t_copy / steps:.2f} ms "
          "(goal: no worse)")


def _copied_baseline(eng, prompt, n, steps):
    """Decode with the prompt's KV copied into each of the n rows (no shared segment)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxselfeval.model.cache import init_cache
    from jaxselfeval.sample.sampling import row_keys, sample_tokens

    L = len(prompt)
    cfg = eng.config
    toks = jnp.asarray([prompt] * n, jnp.int32)
    cache = init_cache(cfg, n, L + steps, eng.cache_dtype)
    _, cache = jax.jit(lambda st, t, c: nnx.merge(eng.graphdef, st).forward(t, cache=c, last_only=True))(
        eng.state, toks, cache)

    @jax.jit
    def loop(st, cache):
        model = nnx.merge(eng.graphdef, st)

        def body(i, carry):
            cache, tok = carry
            pos = jnp.full((n, 1), L + i, jnp.int32)
            logits, cache = model.forward(tok[:, None], pos, cache=cache, last_only=True)
            keys = row_keys(eng.key, jnp.zeros(n, jnp.int32), jnp.arange(n), i)
            return cache, sample_tokens(logits[:, 0], keys, jnp.ones(n), jnp.ones(n))

        return jax.lax.fori_loop(0, steps, body, (cache, jnp.zeros(n, jnp.int32)))[1]

    def run():
        return loop(eng.state, cache)

    run.nbytes = cache.nbytes()
    return run
