"""Calibration and ranking metrics of the capability score, and the reliability diagram."""

from __future__ import annotations

import numpy as np


def auroc(scores, labels) -> float:
    """Area under the ROC curve (rank statistic; ties count one half). nan if one class is absent."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    rpos = r[:len(pos)].sum()
    return float((rpos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def brier(probs, targets) -> float:
    p, t = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    return float(np.mean((p - t) ** 2))


def reliability(probs, targets, bins: int = 10):
    """Per equal-width bin: (mean predicted, mean target, count)."""
    p, t = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append((float(p[m].mean()) if m.any() else float("nan"),
                    float(t[m].mean()) if m.any() else float("nan"), int(m.sum())))
    return out


def ece(probs, targets, bins: int = 10) -> float:
    """Expected calibration error: count-weighted |mean predicted - mean target| over bins."""
    n = len(np.asarray(probs))
    return float(sum(c * abs(mp - mt) for mp, mt, c in reliability(probs, targets, bins) if c) / max(n, 1))


def plot_reliability(probs, targets, path, *, bins: int = 10, title: str = "Reliability") -> str:
    """Save a reliability diagram (with per-bin counts) as PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = reliability(probs, targets, bins)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    centers = (np.arange(bins) + 0.5) / bins
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    mp = [r[0] for r in rel]
    mt = [r[1] for r in rel]
    ax.plot(mp, mt, "o-", label=f"model (ECE {ece(probs, targets, bins):.3f})")
    ax.set_ylabel("observed target (fresh sample does not beat it)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    axc.bar(centers, [r[2] for r in rel], width=1 / bins * 0.9)
    axc.set_xlabel("predicted P(No) / (P(Yes) + P(No))")
    axc.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
