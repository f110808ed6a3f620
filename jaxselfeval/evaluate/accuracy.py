"""Sampling accuracy of a model on a task split: sample@1 (mean over samples), pass@N, by difficulty."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


def sample_accuracy(model, tokenizer, task, *, split="test", limit=300, skip=0, n=16, temperature=1.0,
                    top_p=1.0, max_new_tokens=96, batch_prompts=64, seed=0, progress=True) -> dict:
    """Draw n samples per problem. sample@1 = mean correctness over all samples (the unbiased
    estimate of one sample's accuracy); pass@n = share of problems with any correct sample;
    "mixed": share of problems with both right and wrong samples; "by_kind" (tasks with
    `kinds`): each way a response can go, its share of the samples and how often it is right;
    "greedy": the share of problems the greedy answer gets right; "sample@1_strict" and
    "greedy_strict": the same read strictly (the number after '####')."""
    from jaxselfeval.sample import Engine
    from jaxselfeval.tokenizer import encode_chat

    exs = task.examples(split)[skip:skip + limit]
    eng = Engine(model, stop_ids=(tokenizer.eos_token_id,), seed=seed)
    correct = np.zeros((len(exs), n))
    strict = np.zeros((len(exs), n))
    greedy = np.zeros((len(exs), 2))  # flexible, strict
    kind = np.full((len(exs), n), -1)
    t0 = time.time()
    for s in tqdm(range(0, len(exs), batch_prompts), desc=f"sampling {split}", disable=not progress):
        chunk = exs[s:s + batch_prompts]
        P = eng.prefill([encode_chat(tokenizer, task.messages(e)) for e in chunk], prompt_offset=s)
        C = eng.decode(P, eng.branch(P, n, max_new_tokens, temperature=temperature,
                                            top_p=top_p))
        outs = Engine.outputs(C)
        first = Engine.outputs(eng.decode(P, eng.branch(P, 1, max_new_tokens, temperature=0.0)))
        for i, e in enumerate(chunk):
            for j in range(n):
                text = tokenizer.decode(outs[i * n + j])
                correct[s + i, j] = task.verify(e, text)
                strict[s + i, j] = task.verify_strict(e, text)
                kind[s + i, j] = task.response_kind(text)
            text = tokenizer.decode(first[i])
            greedy[s + i] = task.verify(e, text), task.verify_strict(e, text)
    diffs = np.asarray([e.difficulty for e in exs])
    res = {"problems": len(exs), "skip": skip, "samples": n, "temperature": temperature, "top_p": top_p,
           "sample@1": float(correct.mean()), f"pass@{n}": float(correct.max(1).mean()),
           "greedy": float(greedy[:, 0].mean()), "sample@1_strict": float(strict.mean()),
           "greedy_strict": float(greedy[:, 1].mean()),
           "by_difficulty": {int(d): {"sample@1": float(correct[diffs == d].mean()),
                                      f"pass@{n}": float(correct[diffs == d].max(1).mean()),
                                      "problems": int((diffs == d).sum())}
                             for d in sorted(set(diffs.tolist()))},
           "mixed": float(((correct.max(1) == 1) & (correct.min(1) == 0)).mean()),
           "seconds": round(time.time() - t0, 1)}
    kinds = getattr(task, "kinds", ())
    if kinds:
        res["by_kind"] = {name: {"share": float((kind == k).mean()),
                                 "accuracy": float(correct[kind == k].mean()) if (kind == k).any()
                                 else float("nan")}
                          for k, name in enumerate(kinds)}
    return res


def format_accuracy(res: dict) -> str:
    n = res["samples"]
    how = f"T={res['temperature']}" + (f", top-p {res['top_p']}" if res.get("top_p", 1.0) < 1 else "")
    lines = [f"| difficulty | problems | sample@1 ({how}) | pass@{n} |",
             "| --- | --- | --- | --- |"]
    for d, r in res["by_difficulty"].items():
        lines.append(f"| {d} | {r['problems']} | {100 * r['sample@1']:.1f}% | {100 * r[f'pass@{n}']:.1f}% |")
    lines.append(f"| all | {res['problems']} | {100 * res['sample@1']:.1f}% | {100 * res[f'pass@{n}']:.1f}% |")
    if "greedy" in res:
        lines.append(f"\ngreedy {100 * res['greedy']:.1f}%; read strictly (the number after "
                     f"'####'): greedy {100 * res['greedy_strict']:.1f}%, sample@1 "
                     f"{100 * res['sample@1_strict']:.1f}%")
    if "mixed" in res:
        lines.append(f"\nproblems with both right and wrong samples: {100 * res['mixed']:.0f}%")
    for name, d in res.get("by_kind", {}).items():
        lines.append(f"{name} responses: {100 * d['share']:.1f}% of the samples, right "
                     f"{100 * d['accuracy']:.1f}% of the time")
    return "\n".join(lines)
