"""`jaxselfeval bench prune`: Best-of-n decoded in full vs early pruning, side by side.

Both paths sample the same candidates (keys are per prompt, candidate and step), so the survivors
of the pruned run are exactly the full run's rows; the wall time of each is split into decoding
and probing, which is where the saving goes at a given response length.

`--shape NAME` (e.g. llama3_1_8b) times random weights of that shape (`bench.models.random_model`,
made straight in `--dtype`, nothing downloaded; the LM head scaled to logits of std
`--logit-std`, as `bench sampler` does) with the shipped tokenizer and task prompts: random
weights seldom sample an end token, so every candidate runs to `--max-new-tokens`. Each row
prints its decode bound: the decode steps (the longest response) at the chip's HBM bandwidth and
dense bf16 peak (`roofline.chip_limits`: datasheet on a known GPU, else measured), the probes
left out.
"""

from __future__ import annotations

import json
import time

from jaxselfeval.fileio import write_file


def add_arguments(p):
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped tiny model)")
    p.add_argument("--shape", default=None,
                   help="random weights of this shape instead (bench sampler's shapes, e.g. "
                        "llama3_1_8b, or a configs/models/ name); the shipped tokenizer")
    p.add_argument("--dtype", default="bfloat16", help="parameter and compute dtype of --shape")
    p.add_argument("--layers", type=int, default=None,
                   help="keep only this many layers of --shape (a cheap stand-in)")
    p.add_argument("--logit-std", type=float, default=6.0,
                   help="--shape's LM head scaled to this logit std")
    p.add_argument("--task", default="arithmetic", help="arithmetic | gsm8k")
    p.add_argument("--prompts", type=int, default=100, help="test prompts in the batch")
    p.add_argument("--n", type=int, default=16, help="candidates per prompt")
    p.add_argument("--at", type=int, default=8, help="probe and prune after this many tokens")
    p.add_argument("--keep", type=float, default=0.25, help="fraction of candidates kept")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--repeat", type=int, default=2, help="timed repetitions (after a warm-up)")
    p.add_argument("--out", default=None, help="also write JSON here")


def _phases(fns):
    """Run fns in order, blocking after each; seconds per fn."""
    import jax

    out, x = [], None
    for fn in fns:
        t = time.perf_counter()
        x = jax.block_until_ready(fn(x))
        out.append(time.perf_counter() - t)
    return out


def _model(args):
    """(model, tokenizer directory, what it is): the HF directory's weights, or random weights
    of --shape."""
    import jaxselfeval as jse
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.errors import JSEError

    if args.shape is None:
        if args.layers is not None:
            raise JSEError("--layers applies to --shape only")
        path = args.model or str(default_model_dir())
        return jse.load_pretrained(path), path, path
    if args.model is not None:
        raise JSEError("give --model (an HF directory) or --shape (random weights), not both")
    from jaxselfeval.bench.models import random_model, shape_config

    cfg = shape_config(args.shape, args.layers)
    model = random_model(cfg, args.dtype, seed=0,
                         head_std=args.logit_std / cfg.hidden_size ** 0.5)
    return model, str(default_model_dir()), f"{args.shape} (random {args.dtype} weights)"


def run(args) -> int:
    import numpy as np

    from jaxselfeval.bench import roofline
    from jaxselfeval.sample import Engine
    from jaxselfeval.strategies.config import PruneConfig
    from jaxselfeval.strategies.run import Runner
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    pc = PruneConfig(args.n, args.at, args.keep)
    task = get_task(args.task)
    model, tok_dir, what = _model(args)
    tok = load_tokenizer(tok_dir)
    if len(tok) > model.config.vocab_size:
        from jaxselfeval.errors import JSEError

        raise JSEError(f"the tokenizer's {len(tok)} tokens do not fit the model's vocabulary of "
                       f"{model.config.vocab_size}")
    run_ = Runner(model, tok, task, max_new_tokens=args.max_new_tokens)
    eng, spec, n, k = run_.eng, run_.spec, pc.n, pc.keep
    P = run_.prompts(task.examples("test")[:args.prompts])
    state = {}

    def full():
        def decode(_):
            state["c"] = eng.decode(P, eng.branch(P, n, run_.max_new))
            state["full_len"] = state["c"].length
            return state["c"].tokens

        return _phases([decode, lambda _: eng.probe(P, state["c"], spec)])

    def pruned():
        def early(_):
            state["c"] = eng.decode(P, eng.branch(P, n, run_.max_new), until=pc.at_tokens)
            return state["c"].tokens

        def probe_early(_):
            state["s"] = eng.probe(P, state["c"], spec)
            return state["s"]

        def finish(_):
            rows = Engine.top_rows(state["s"], n, k)
            state["c"] = eng.decode(P, Engine.select(state["c"], rows))
            state["pruned_len"] = state["c"].length
            return state["c"].tokens

        return _phases([early, probe_early, finish, lambda _: eng.probe(P, state["c"], spec)])

    full(), pruned()  # compile both paths
    f = np.mean([full() for _ in range(args.repeat)], axis=0)
    p = np.mean([pruned() for _ in range(args.repeat)], axis=0)
    full_len, pruned_len = np.asarray(state["full_len"]), np.asarray(state["pruned_len"])
    mean_len = float(np.mean(full_len))
    # decode bounds: one step per token of the longest response, at the chip's limits
    limits = roofline.chip_limits([])
    G, item = int(P.length.shape[0]), np.dtype(model.param_dtype).itemsize
    plen = float(np.mean(np.asarray(P.length)))
    bw, peak = limits["bandwidth"], limits["peaks"]["bfloat16"]

    def bound(rows, steps, done=0):  # `steps` steps of `rows` rows after `done` tokens
        if steps <= 0:
            return 0.0
        b = roofline.decode_step_bound(model.config, rows, plen, done + steps, item, bw, peak,
                                       prompts=G)
        return b["bound_s"] * steps

    at = pc.at_tokens
    full_bound = bound(G * n, int(full_len.max()))
    pruned_bound = bound(G * n, at) + bound(G * k, int(pruned_len.max()) - at, at)
    res = {"model": what, "prompts": args.prompts, "n": n, "at": at, "keep": k,
           "probe_tokens": len(spec.suffix) + 1, "mean_response_tokens": mean_len,
           "full": {"decode_s": f[0], "probe_s": f[1], "decode_bound_s": full_bound},
           "pruned": {"decode_s": p[0] + p[2], "probe_s": p[1] + p[3],
                      "decode_bound_s": pruned_bound},
           "speedup": float(f.sum() / p.sum()), "limits": limits}
    print(f"[prune] {what}: {args.prompts} prompts x {n} candidates, responses "
          f"{mean_len:.0f} tokens on average, probe turn {res['probe_tokens']} tokens")
    print(f"  {roofline.describe(limits)}")
    print(f"  Best-of-{n} in full  {f.sum():7.2f}s  (decode {f[0]:.2f}s, bound "
          f"{full_bound:.2f}s; probe {f[1]:.2f}s)")
    print(f"  pruned at {at}, keep {k} {p.sum():7.2f}s  (decode {p[0] + p[2]:.2f}s, bound "
          f"{pruned_bound:.2f}s; probe {p[1] + p[3]:.2f}s)")
    print(f"  {res['speedup']:.2f}x less wall time (goal >= 2x); decoding alone "
          f"{f[0] / (p[0] + p[2]):.2f}x")
    if args.out:
        write_file(args.out, json.dumps(res, indent=2, default=float))
    return 0
