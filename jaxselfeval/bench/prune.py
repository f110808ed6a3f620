"""`jaxselfeval bench prune`: Best-of-n decoded in full vs early pruning, side by side.

Both paths sample the same candidates (keys are per prompt, candidate and step), so the survivors
of the pruned run are exactly the full run's rows; the wall time of each is split into decoding
and probing, which is where the saving goes at a given response length.
"""

from __future__ import annotations

import json
import time

from jaxselfeval.fileio import write_file


def add_arguments(p):
    p.add_argument("--model", default=None, help="HF model directory (default: the shipped tiny model)")
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


def run(args) -> int:
    import numpy as np

    import jaxselfeval as jse
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.sample import Engine
    from jaxselfeval.strategies.config import PruneConfig
    from jaxselfeval.strategies.run import Runner
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    path = args.model or str(default_model_dir())
    task = get_task(args.task)
    run_ = Runner(jse.load_pretrained(path), load_tokenizer(path), task,
                  max_new_tokens=args.max_new_tokens)
    pc = PruneConfig(args.n, args.at, args.keep)
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
            return state["c"].tokens

        return _phases([early, probe_early, finish, lambda _: eng.probe(P, state["c"], spec)])

    full(), pruned()  # compile both paths
    f = np.mean([full() for _ in range(args.repeat)], axis=0)
    p = np.mean([pruned() for _ in range(args.repeat)], axis=0)
    mean_len = float(np.mean(np.asarray(state["full_len"])))
    res = {"model": path, "prompts": args.prompts, "n": n, "at": pc.at_tokens, "keep": k,
           "probe_tokens": len(spec.suffix) + 1, "mean_response_tokens": mean_len,
           "full": {"decode_s": f[0], "probe_s": f[1]},
           "pruned": {"decode_s": p[0] + p[2], "probe_s": p[1] + p[3]},
           "speedup": float(f.sum() / p.sum())}
    print(f"[prune] {args.prompts} prompts x {n} candidates, responses {mean_len:.0f} tokens on "
          f"average, probe turn {res['probe_tokens']} tokens")
    print(f"  Best-of-{n} in full  {f.sum():7.2f}s  (decode {f[0]:.2f}s, probe {f[1]:.2f}s)")
    print(f"  pruned at {pc.at_tokens}, keep {k} {p.sum():7.2f}s  (decode {p[0] + p[2]:.2f}s, "
          f"probe {p[1] + p[3]:.2f}s)")
    print(f"  {res['speedup']:.2f}x less wall time (goal >= 2x); decoding alone "
          f"{f[0] / (p[0] + p[2]):.2f}x")
    if args.out:
        write_file(args.out, json.dumps(res, indent=2, default=float))
    return 0
