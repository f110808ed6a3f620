"""How the probe head's fit grows with its training prompts: cross-validation by prompt on the
probe states a build kept (`jaxselfeval data build ... probe_states=true`), no model pass.

Each fold's prompts are held out; the fit (`selfeval.probe_fit.fit_probe_head`: the reward
target plus `--rank-weight` times the within-prompt ranking) sees the first `fraction` of the
other prompts. Held-out complete responses: AUROC pooled and within a prompt, Best-of-n of
each prompt's n samples (and one sample, for scale), ECE; copies truncated at a point: AUROC
pooled.

    python scripts/probe_head_cv.py runs/demo_smollm2/data --fractions 0.25 0.5 1
"""

import argparse
import json
from pathlib import Path

import numpy as np

import jaxselfeval as jse
from jaxselfeval.selfeval import metrics as M
from jaxselfeval.selfeval.dataset import load_rows, load_states
from jaxselfeval.selfeval.probe_fit import fit_direction, probe_offsets, rank_pairs
from jaxselfeval.sample.probe import probe_spec
from jaxselfeval.tokenizer import load_tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="a capability dataset built with probe_states=true")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--rank-weight", type=float, default=1.0)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model_dir = json.loads((Path(a.data) / "build_config.json").read_text())["model"]
    spec = probe_spec(load_tokenizer(model_dir))
    rows = load_rows(a.data, "train")
    ids, states = load_states(a.data, "train")
    H = states[[ids[r["id"]] for r in rows]]
    off = probe_offsets(jse.load_pretrained(model_dir), H, spec.yes, spec.no)
    right = np.asarray([r["reward"] > 0.5 for r in rows])
    trunc = np.asarray([r["truncation"] for r in rows])
    ex = np.unique([r["example"] for r in rows], return_inverse=True)[1]
    folds = np.array_split(np.random.default_rng(a.seed).permutation(ex.max() + 1), a.folds)
    full = trunc == 0
    print(f"{ex.max() + 1} training prompts, {len(rows)} rows ({full.sum()} complete), "
          f"one sample right {right[full].mean():.3f}; rank weight {a.rank_weight:g}, "
          f"L2 {a.lam:g}")
    print("| prompts fitted | AUROC pooled | within | Best-of-n | ECE | "
          + " | ".join(f"AUROC at {t} tokens" for t in sorted(set(trunc[~full]))) + " |")
    for frac in a.fractions:
        s, seen = np.zeros(len(rows)), []
        for k in range(a.folds):
            test = np.isin(ex, folds[k])
            fit = np.concatenate([folds[j] for j in range(a.folds) if j != k])
            fit = fit[:int(len(fit) * frac)]
            seen.append(len(fit))
            ix = np.flatnonzero(np.isin(ex, fit))
            pairs = rank_pairs(ex[ix] * (trunc.max() + 1) + trunc[ix], right[ix])
            w = fit_direction(H[ix], off[ix], right[ix].astype(float), a.lam, pairs=pairs,
                              rank_weight=a.rank_weight)
            s[test] = 1 / (1 + np.exp(-(off[test] + H[test] @ w)))
        bon = np.mean([right[full & (ex == e)][np.argmax(s[full & (ex == e)])]
                       for e in np.unique(ex[full])])
        at = [M.auroc(s[trunc == t], right[trunc == t]) for t in sorted(set(trunc[~full]))]
        print(f"| {np.mean(seen):.0f} | {M.auroc(s[full], right[full]):.3f} | "
              f"{M.auroc_within(s[full], right[full].astype(float), ex[full]):.3f} | "
              f"{100 * bon:.1f}% | {M.ece(s[full], right[full].astype(float)):.3f} | "
              + " | ".join(f"{x:.3f}" for x in at) + " |", flush=True)


if __name__ == "__main__":
    main()
