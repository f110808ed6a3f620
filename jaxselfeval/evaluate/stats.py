"""What the pooled samples say about each signal: sample@1, AUROC (pooled and within a prompt),
ECE against the token's targets, by kind of response and at each prune point."""

from __future__ import annotations

import numpy as np

from jaxselfeval.selfeval import metrics as M
from jaxselfeval.selfeval.labels import token_targets
from jaxselfeval.strategies.driver import combined_score


def pool_stats(correct, score, likelihood=None, *, length=None, score_at=None,
               likelihood_at=None, strict=None, kind=None, kinds=(),
               target: str = "capability") -> dict:
    """Of the pooled samples (correct, score, likelihood, length: [P, n]): sample@1 (mean
    correctness of all samples, the policy's accuracy), and how the final self-evaluation score
    (and the policy's own mean token log-probability) separates right from wrong, pooled over
    prompts and within each prompt (what Best-of-N uses), and the score's ECE against the
    token's targets (`target`: capability or reward) of the pooled samples.

    score_at {t: [P, n]}: the score after t tokens, a response that finished sooner scored as its
    complete self (what pruning at t sees): "auroc_at{t}" over every sample, and
    "auroc_trunc{t}" over the samples still running at t only; likelihood_at {t: [P, n]}: the
    mean token log-probability of those t tokens, "likelihood_auroc_at{t}" likewise.
    strict [P, n]: correctness read strictly (after '####'): "sample_at_1_strict".

    kind [P, n] (index into `kinds`, the ways a response went): "by_kind" {name: share, accuracy,
    mean score; the AUROC of this kind's wrong samples against every right sample ("vs_right",
    pooled and within a prompt: how well the token sees this kind of mistake) and of right vs
    wrong among this kind only ("in_kind", and the mean token log-probability's within a
    prompt)}."""
    groups = np.repeat(np.arange(correct.shape[0]), correct.shape[1])
    c = correct.ravel()
    targets = np.concatenate([token_targets(r, target) for r in correct])
    out = {"sample_at_1": float(correct.mean()), "samples": int(correct.size),
           "sample_at_1_by_candidate": correct.mean(0).tolist(),  # [n]: candidate c's accuracy
           "auroc": M.auroc(score.ravel(), c),
           "auroc_within": M.auroc_within(score.ravel(), c, groups),
           "ece": M.ece(score.ravel(), targets), "ece_target": target}
    if likelihood is not None:
        both = combined_score(score, likelihood)
        out.update({"likelihood_auroc": M.auroc(likelihood.ravel(), c),
                    "likelihood_auroc_within": M.auroc_within(likelihood.ravel(), c, groups),
                    "combined_auroc": M.auroc(both.ravel(), c),
                    "combined_auroc_within": M.auroc_within(both.ravel(), c, groups)})
    if kind is not None and len(kinds):
        out["by_kind"] = _by_kind(c, score.ravel(), groups, np.asarray(kind).ravel(), kinds,
                                  None if likelihood is None else likelihood.ravel())
    if strict is not None:
        out["sample_at_1_strict"] = float(np.mean(strict))
    for t, lk in (likelihood_at or {}).items():
        out[f"likelihood_auroc_at{t}"] = M.auroc(lk.ravel(), c)
        out[f"likelihood_auroc_within_at{t}"] = M.auroc_within(lk.ravel(), c, groups)
    for t, s in (score_at or {}).items():
        s = s.ravel()
        out[f"auroc_at{t}"] = M.auroc(s, c)
        out[f"auroc_within_at{t}"] = M.auroc_within(s, c, groups)
        if length is not None:
            live = length.ravel() > t
            out[f"auroc_trunc{t}"] = M.auroc(s[live], c[live])
            out[f"running_at{t}"] = float(live.mean())
    return out


def _by_kind(c, s, groups, kind, kinds, lik) -> dict:
    """`pool_stats`' "by_kind" from flat [N] arrays (see there)."""
    out = {}
    right = c > 0.5
    for i, name in enumerate(kinds):
        k = kind == i
        if not k.any():
            continue
        vs = right | (k & ~right)  # every right sample, and this kind's wrong ones
        d = {"share": float(k.mean()), "accuracy": float(c[k].mean()),
             "mean_score": float(s[k].mean()), "wrong": int((k & ~right).sum()),
             "auroc_vs_right": M.auroc(s[vs], c[vs]),
             "auroc_within_vs_right": M.auroc_within(s[vs], c[vs], groups[vs]),
             "auroc_in_kind": M.auroc(s[k], c[k]),
             "auroc_within_in_kind": M.auroc_within(s[k], c[k], groups[k])}
        if lik is not None:
            d["likelihood_auroc_within_in_kind"] = M.auroc_within(lik[k], c[k], groups[k])
        out[name] = d
    return out


def adaptive_bound(first_ok, correct, extra: int, cap: int) -> float:
    """The most adaptive sampling could score, in expectation, spending `extra` samples beyond
    the first round over all prompts: an oracle that knows which first answers [G] are wrong and
    each prompt's chance p of a right sample (its share of right samples in the pool `correct`
    [G, n]), gives at most `cap` more samples to a prompt, and keeps a right answer whenever it
    draws one. A prompt's k-th extra sample gains p (1 - p)^(k-1), which falls with k, so the
    `extra` largest gains over all prompts are the best allocation. No signal does better at
    this budget than this, up to the pool's noise in p."""
    first_ok = np.asarray(first_ok, np.float64)
    p = np.asarray(correct, np.float64).mean(1)[first_ok < 0.5]
    k = np.arange(cap)
    gains = (p[:, None] * (1 - p[:, None]) ** k[None, :]).ravel()
    top = np.sort(gains)[::-1][:max(0, int(extra))]
    return float((first_ok.sum() + top.sum()) / len(first_ok))
