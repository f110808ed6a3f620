"""Ranking and calibration metrics of the capability score, and the reliability diagram.

scores / probs: predicted P(No) / (P(Yes) + P(No)) in [0, 1], shape [N].
labels: 0/1 (AUROC); targets: 0/1 or soft capability targets in [0, 1] (Brier, ECE, reliability).
"""

from __future__ import annotations

import numpy as np

from jaxselfeval.errors import JSEError


def _pair(a, b, what: str):
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise JSEError(f"{what}: {a.size} predictions but {b.size} targets; give one each")
    return a, b


def _probs(p, what: str):
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise JSEError(f"{what}: predictions must be probabilities in [0, 1] "
                       f"(got min {np.nanmin(p):.4g}, max {np.nanmax(p):.4g})")
    return p


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count 1/2.

    labels: 0/1 or bool (values > 0.5 are positives). Rank (Mann-Whitney) form with average
    ranks over ties. nan if one class is absent.
    """
    s, y = _pair(scores, labels, "auroc")
    y = y > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based start of each tie group
    avg_rank = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    r_pos = avg_rank[inv][y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_within(scores, labels, groups) -> float:
    """AUROC over the (positive, negative) pairs of the SAME group (prompt), ties count 1/2:
    how well the score ranks a prompt's own samples, which is what Best-of-N and pruning use
    (the pooled `auroc` also rewards telling easy prompts from hard ones). nan if no group has
    both classes."""
    s, y = _pair(scores, labels, "auroc_within")
    g = np.asarray(groups).reshape(-1)
    if g.shape != s.shape:
        raise JSEError(f"auroc_within: {s.size} scores but {g.size} group ids")
    y = y > 0.5
    num = den = 0.0
    for key in np.unique(g):
        i = g == key
        a, b = s[i][y[i]], s[i][~y[i]]
        if len(a) and len(b):
            num += (a[:, None] > b[None]).sum() + 0.5 * (a[:, None] == b[None]).sum()
            den += len(a) * len(b)
    return float(num / den) if den else float("nan")


def brier(probs, targets) -> float:
    """Mean squared error of the probabilities against the (soft) targets."""
    p, t = _pair(probs, targets, "brier")
    return float(np.mean((p - t) ** 2)) if p.size else float("nan")


def reliability_diagram(probs, targets, bins: int = 10) -> dict:
    """Equal-width bins over [0, 1] (p == 1 falls in the last bin).

    Returns numpy arrays: edges [bins+1], mean_pred [bins], mean_target [bins] (nan where a bin
    is empty), count [bins] int.
    """
    if int(bins) < 1:
        raise JSEError(f"bins must be a positive integer, got {bins}")
    p, t = _pair(probs, targets, "reliability")
    _probs(p, "reliability")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, p, minlength=bins) / count
        mean_target = np.bincount(idx, t, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "mean_pred": mean_pred,
            "mean_target": mean_target, "count": count}


def reliability(probs, targets, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per bin: (mean predicted, mean target, count); nan means for empty bins."""
    d = reliability_diagram(probs, targets, bins)
    return [(float(a), float(b), int(c)) for a, b, c in zip(d["mean_pred"], d["mean_target"],
                                                             d["count"])]


def ece(probs, targets, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of count/N * |mean predicted - mean target|."""
    d = reliability_diagram(probs, targets, bins)
    n = d["count"].sum()
    if n == 0:
        return float("nan")
    full = d["count"] > 0
    gap = np.abs(d["mean_pred"][full] - d["mean_target"][full])
    return float((d["count"][full] * gap).sum() / n)


def plot_reliability(probs, targets, path, *, bins: int = 10,
                     title: str = "Reliability") -> str:
    """Save a reliability diagram (top: mean target per bin vs the diagonal; bottom: per-bin
    counts, written on the bars) as a PNG at `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = reliability_diagram(probs, targets, bins)
    centers = (d["edges"][:-1] + d["edges"][1:]) / 2
    width = 1.0 / bins
    full = d["count"] > 0
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(centers[full], d["mean_target"][full], width=width * 0.9, alpha=0.35,
           edgecolor="tab:blue", label="mean target per bin")
    ax.plot(d["mean_pred"][full], d["mean_target"][full], "o-", color="tab:blue",
            label=f"model (ECE {ece(probs, targets, bins):.3f}, Brier {brier(probs, targets):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed target (a fresh sample does not beat it)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    bars = axc.bar(centers, d["count"], width=width * 0.9, color="tab:gray")
    axc.bar_label(bars, labels=[str(int(c)) if c else "" for c in d["count"]], fontsize=7)
    axc.set_xlabel("predicted P(No) / (P(Yes) + P(No))")
    axc.set_ylabel("count")
    axc.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
