"""`jaxselfeval bench sampler`: our sampler vs transformers, branching, probe cost, shared cache.

All figures are measured side by side in one run on this machine (after a warm-up call that
compiles), and printed as ratios next to their goals.
"""

from __future__ import annotations

import json
import time

import numpy as np


def add_arguments(p):
    p.add_argument("--models", default="tiny,small_100m", help="model shape configs to compare")
    p.add_argument("--n", type=int, default=16, help="candidates per prompt")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", help="weights/compute dtype of our sampler")
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    p.add_argument("--out", default=None, help="also write JSON here")


def _timed(fn, repeat=1):
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def _block(x):
    import jax

    return jax.block_until_ready(x)


def run(args) -> int:
    import jax
    import torch

    import jaxselfeval as jse
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.sample import Engine
    from jaxselfeval.sample.probe import ProbeSpec

    torch.set_num_threads(max(1, len(jax.devices("cpu")) and torch.get_num_threads()))
    n, new = args.n, args.new_tokens
    prompt_len, long_prompt, cache_prompt = args.prompt_len, 512, 1024
    if args.quick:
        new, long_prompt, cache_prompt = 8, 64, 128
    res = {"device": jax.devices()[0].device_kind, "n": n, "rows": []}
    print(f"device {res['device']}; torch threads {torch.get_num_threads()}; ours in {args.dtype}")
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        cfg = load_model_config(name)
        model = jse.create_model(cfg, seed=0, param_dtype=args.dtype, compute_dtype=args.dtype)
        f32 = jse.create_model(cfg, seed=0)
        prompt = rng.integers(0, cfg.vocab_size, prompt_len).tolist()
        eng = Engine(model, seed=0)

        def ours():
            P = eng.prefill([prompt])
            C = eng.decode(P, eng.branch(P, n, new), until=new)
            return _block(C.tokens)

        t_ours = _timed(ours)
        tm = _torch_model(f32)
        ids = torch.tensor([prompt])

        def theirs():
            with torch.no_grad():
                tm.generate(ids, do_sample=True, num_return_sequences=n, max_new_tokens=new,
                            min_new_tokens=new, eos_token_id=None, pad_token_id=0, top_k=0)

        t_hf = _timed(theirs)
        row = {"model": name, "params": jse.count_params(model), "ours_tok_s": n * new / t_ours,
               "hf_tok_s": n * new / t_hf, "speedup": t_hf / t_ours}
        goal = 3.0 if name == "tiny" else 1.5
        print(f"[generate] {name:10s} {row['params'] / 1e6:6.1f}M  ours {row['ours_tok_s']:8.0f} tok/s"
              f"  transformers {row['hf_tok_s']:8.0f} tok/s  speedup {row['speedup']:.2f}x (goal >= {goal}x)")
        res["rows"].append(row)

        if name != args.models.split(",")[-1]:
            continue
        # ---- prefill once + branch vs 16 independent prefills of a long prompt
        lp = rng.integers(0, cfg.vocab_size, long_prompt).tolist()
        t_branch = _timed(lambda: _block(eng.branch(eng.prefill([lp]), n, 16).next_token))
        t_indep = _timed(lambda: _block(eng.prefill([lp] * n).last_logits))
        res["prefill"] = {"prompt": long_prompt, "branch_s": t_branch, "independent_s": t_indep,
                          "ratio": t_indep / t_branch}
        print(f"[prefill]  {long_prompt}-token prompt: prefill+branch {t_branch * 1e3:.0f} ms vs {n} "
              f"independent prefills {t_indep * 1e3:.0f} ms: {t_indep / t_branch:.1f}x less "
              "(goal >= 8x)")
        # ---- probe cost per candidate vs generating a 128-token response
        gen = 16 if args.quick else 128
        spec = ProbeSpec(eot=1, suffix=tuple(range(2, 24)), yes=30, no=31)  # a 23-token probe turn
        P = eng.prefill([prompt])

        def decode_full():
            return _block(eng.decode(P, eng.branch(P, n, gen), until=gen).tokens)

        t_gen = _timed(decode_full)
        C = eng.decode(P, eng.branch(P, n, gen), until=gen)
        t_probe = _timed(lambda: _block(eng.probe(P, C, spec)))
        res["probe"] = {"probe_s": t_probe, "generate_s": t_gen, "share": t_probe / t_gen}
        print(f"[probe]    {len(spec.suffix) + 1}-token probe of {n} candidates {t_probe * 1e3:.1f} ms "
              f"vs generating {gen} tokens {t_gen * 1e3:.0f} ms: {100 * t_probe / t_gen:.1f}% "
              "(goal <= 5%)")
        # ---- shared prompt cache vs the prompt cache copied n times
        cp = rng.integers(0, cfg.vocab_size, cache_prompt).tolist()
        steps = 16
        Ps = eng.prefill([cp])
        Cs = eng.branch(Ps, n, steps)
        shared_bytes = Ps.cache.nbytes() + Cs.cache.nbytes()
        t_shared = _timed(lambda: _block(eng.decode(Ps, eng.branch(Ps, n, steps), until=steps).tokens))
        copied = _copied_baseline(eng, cp, n, steps)
        t_copy = _timed(lambda: _block(copied()))
        copy_bytes = copied.nbytes
        res["cache"] = {"prompt": cache_prompt, "shared_bytes": shared_bytes, "copied_bytes": copy_bytes,
                        "bytes_ratio": shared_bytes / copy_bytes, "shared_step_s": t_shared / steps,
                        "copied_step_s": t_copy / steps}
        print(f"[cache]    {cache_prompt}-token prompt, N={n}: shared {shared_bytes / 2**20:.1f} MiB vs "
              f"copied {copy_bytes / 2**20:.1f} MiB = {shared_bytes / copy_bytes:.3f} (goal <= 0.125); "
              f"decode step {1e3 * t_shared / steps:.2f} ms vs {1e3 * t_copy / steps:.2f} ms "
              "(goal: no worse)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _torch_model(model):
    """The same weights in transformers' LlamaForCausalLM (via our HF export, in a temp dir)."""
    import tempfile

    from transformers import LlamaForCausalLM

    import jaxselfeval as jse

    d = tempfile.mkdtemp()
    jse.save_pretrained(model, d)
    return LlamaForCausalLM.from_pretrained(d).float().eval()


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
