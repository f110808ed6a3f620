"""Markdown report and plots of an evaluation (`results.json` -> report.md, *.png)."""

from __future__ import annotations

from pathlib import Path


def plots(result: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw, sm = result["sweeps"], result["summary"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    bon = sorted((int(k), v) for k, v in sw["bon"].items())
    ax.plot([v["mean_samples"] for _, v in bon], [100 * v["accuracy"] for _, v in bon], "o-",
            label="Best-of-N (self-evaluation)")
    th = sorted(((float(k), v) for k, v in sw["threshold"].items()), key=lambda x: x[1]["mean_samples"])
    ax.plot([v["mean_samples"] for _, v in th], [100 * v["accuracy"] for _, v in th], "s-",
            label="adaptive sampling (threshold sweep)")
    for name, mk in (("one", "x"), ("majority", "^"), ("bon_rm", "D"), ("bon_likelihood", "v"),
                     ("oracle", "*")):
        if name not in sm:
            continue
        ax.plot([sm[name]["mean_samples"]], [100 * sm[name]["accuracy"]], mk, ms=9, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean samples per prompt")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_samples.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot([v["mean_tokens"] for _, v in bon], [100 * v["accuracy"] for _, v in bon], "o-",
            label="Best-of-N (self-evaluation)")
    for t in sorted({k.split(":")[0] for k in sw["prune"]}, key=int):
        pts = sorted(((float(k.split(":")[1]), v) for k, v in sw["prune"].items()
                      if k.split(":")[0] == t))
        ax.plot([v["mean_tokens"] for _, v in pts], [100 * v["accuracy"] for _, v in pts], "s--",
                label=f"prune at {t} tokens (keep {', '.join(str(f) for f, _ in pts)})")
    ax.plot([v["mean_tokens"] for _, v in th], [100 * v["accuracy"] for _, v in th], "^-",
            label="adaptive sampling")
    if sw.get("threshold_pruned"):
        tp = sorted(sw["threshold_pruned"].values(), key=lambda v: v["mean_tokens"])
        ax.plot([v["mean_tokens"] for v in tp], [100 * v["accuracy"] for v in tp], "P-",
                label="adaptive + pruning (threshold sweep)")
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per prompt (probe tokens included)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs generated tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tokens.png", dpi=100)
    plt.close(fig)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def verdict(result: dict) -> list[str]:
    """The issue's goals, each marked met / not met with its numbers, and why when not."""
    h, n = result["headline"], result["config"]["n"]
    pool = result.get("pool") or {}
    lines = ["## Goals", ""]

    def mark(ok):
        return "met" if ok else "NOT met"

    bon = h["bon16_self"]
    others = {"one sample": h["one_sample"], "majority vote": h["majority"]}
    if h.get("bon16_rm") is not None:
        others[f"external-RM Best-of-{n}"] = h["bon16_rm"]
    for name, acc in others.items():
        lines.append(f"- Best-of-{n} by self-evaluation beats {name}: {mark(bon > acc)} "
                     f"({100 * (bon - acc):+.1f} points).")
    lines.append(f"- Adaptive sampling recovers >= 80% of the Best-of-{n} gain at <= 1.2 samples: "
                 f"{mark(_recovered(h) is not None and _recovered(h) >= 0.8)} ({_adaptive_gain(h, n)}).")
    lines.append(f"- Pruning >= 75% at the earliest point with <= 1 point loss and >= 2x less wall "
                 f"time: {mark(h['prune_fraction_pruned'] >= 0.75 and h['prune_acc_loss_points'] <= 1 and h['prune_wall_speedup'] >= 2)} "
                 f"({100 * h['prune_fraction_pruned']:.0f}% pruned, accuracy "
                 f"{-h['prune_acc_loss_points']:+.1f} points vs Best-of-{n}, "
                 f"{h['prune_wall_speedup']:.2f}x)" + (
                     f"; the accuracy half holds only because Best-of-{n} itself picks worse than "
                     "one sample here, so this is no evidence for the capability score."
                     if bon < h["one_sample"] else "."))
    if pool:
        lines += ["", f"Why: over the {pool['samples']} pooled samples (the policy's sample@1 is "
                  f"{_pct(pool['sample_at_1'])}), the final self-evaluation score separates right "
                  f"from wrong answers with AUROC {pool['auroc']:.3f} pooled over prompts but "
                  f"{pool['auroc_within']:.3f} among a prompt's own samples."]
        if pool["auroc_within"] < 0.6:
            lines.append("A within-prompt AUROC near 0.5 means the capability token tells easy "
                         "prompts from hard ones but not a prompt's right answers from its wrong "
                         f"ones, so Best-of-{n} by self-evaluation is at best a random pick among the "
                         "samples (one sample's accuracy), and what adaptive sampling gains "
                         "comes from its near-greedy first round and from spending samples on hard "
                         "prompts.")
        if pool.get("likelihood_auroc_within") is not None:
            lik = h.get("bon16_likelihood")
            lines.append(f"For comparison, the policy's own mean token log-probability of each "
                         f"sample (no training, no probe) ranks a prompt's samples with AUROC "
                         f"{pool['likelihood_auroc_within']:.3f} (pooled "
                         f"{pool['likelihood_auroc']:.3f}) and picks Best-of-{n} at {_pct(lik)}"
                         + (": the model's own token probabilities do tell a prompt's right answers "
                            "from its wrong ones, but the capability token has not learned to read "
                            "that at the probe position." if pool["likelihood_auroc_within"] >
                            pool["auroc_within"] + 0.1 else "."))
        if bon < h["one_sample"] - 0.05:
            lines.append(f"Best-of-{n} falls below one sample, i.e. below a random pick: in "
                         f"{100 * (1 - bon):.0f}% of the prompts the highest of the {n} scores went "
                         "to a wrong answer, though most prompts have right ones (oracle "
                         f"{_pct(h['oracle'])}).")
    return lines


def _recovered(h) -> float | None:
    g = h["adaptive_gain_recovered"]
    return None if g is None or g != g else g


def _adaptive_gain(h, n) -> str:
    """'X% of the gain', or why there is no gain to recover."""
    if _recovered(h) is not None:
        return f"recovering {_pct(h['adaptive_gain_recovered'])} of the Best-of-{n} gain"
    acc = h["adaptive_acc_at_1.2"]
    extra = "" if acc is None else (f"; adaptive itself is {100 * (acc - h['one_sample']):+.1f} "
                                    "points over one sample")
    return (f"Best-of-{n} gains nothing over one sample here "
            f"({100 * (h['bon16_self'] - h['one_sample']):+.1f} points), so there is no gain to "
            f"recover{extra}")


def _combined_line(result: dict) -> list[str]:
    """The headline of adaptive sampling and pruning combined, against adaptive alone."""
    sm, h = result["summary"], result["headline"]
    if "adaptive_pruned" not in sm:
        return []
    a, b = sm["adaptive"], sm["adaptive_pruned"]
    return [f"- Adaptive sampling with pruned rounds: {_pct(b['accuracy'])} with "
            f"{b['mean_samples']:.2f} samples started and {b['mean_tokens']:.0f} tokens per prompt "
            f"(probes included), against adaptive alone at the same threshold "
            f"{_pct(a['accuracy'])} with {a['mean_tokens']:.0f} tokens "
            f"({h['adaptive_pruned_tokens_vs_adaptive']:.2f}x the tokens)."]


def write_report(result: dict, out: Path) -> str:
    sm, h, cfg = result["summary"], result["headline"], result["config"]
    n = cfg["n"]
    lines = [f"# jaxselfeval evaluation: {cfg['task']} / {cfg['split']} ({sm['one']['n']} problems)", "",
             "| strategy | accuracy | ±95% | mean samples | mean tokens (incl. probes) |",
             "| --- | --- | --- | --- | --- |"]
    names = {"greedy": "greedy", "one": "one sample (T=1)", "majority": f"majority vote of {n}",
             "bon_self": f"Best-of-{n} by self-evaluation",
             "bon_rm": f"Best-of-{n} by external reward model",
             "bon_likelihood": f"Best-of-{n} by the policy's own likelihood (no training)",
             "oracle": f"oracle Best-of-{n} (pass@{n})",
             "adaptive": f"adaptive (threshold {cfg['threshold']})",
             "adaptive_pruned": f"adaptive + pruning (threshold {cfg['threshold']}, rounds pruned at "
                                f"{min(cfg['prune_at'])} tokens, keep {cfg.get('combined_keep')})",
             "pruned_run": f"pruned at {min(cfg['prune_at'])} tokens, keep {min(cfg['keep_fractions'])}"}
    for k, label in names.items():
        if k in sm:
            a = sm[k]
            lines.append(f"| {label} | {_pct(a['accuracy'])} | {100 * a['accuracy_ci95']:.1f} | "
                         f"{a['mean_samples']:.2f} | {a['mean_tokens']:.0f} |")
    gain = h["bon16_self"] - h["one_sample"]
    lines += ["", "## Headline", "",
              f"- Best-of-{n} by self-evaluation {_pct(h['bon16_self'])} vs one sample "
              f"{_pct(h['one_sample'])} ({100 * gain:+.1f} points), majority vote {_pct(h['majority'])}, "
              f"external-RM Best-of-{n} {_pct(h.get('bon16_rm'))}, Best-of-{n} by the policy's "
              f"own likelihood {_pct(h.get('bon16_likelihood'))}, oracle {_pct(h['oracle'])}.",
              f"- Adaptive sampling at <= 1.2 mean samples (threshold {h['adaptive_threshold_at_1.2']}): "
              f"{_pct(h['adaptive_acc_at_1.2'])} with {h['adaptive_mean_samples'] or float('nan'):.2f} "
              f"samples, {_adaptive_gain(h, n)} (goal >= 80% of the gain; the paper reports 74%).",
              f"- Pruning {100 * h['prune_fraction_pruned']:.0f}% of candidates at {h['prune_at']} tokens: "
              f"{_pct(h['prune_acc'])} ({-h['prune_acc_loss_points']:+.1f} points vs Best-of-{n}), "
              f"{h['prune_wall_speedup']:.2f}x less wall time measured side by side "
              f"({result['wall_s']['bon_full']:.1f}s vs {result['wall_s']['pruned']:.1f}s).",
              *_combined_line(result),
              "", *verdict(result), "", "## Threshold sweep (adaptive sampling)", "",
              "| threshold | accuracy | mean samples | mean tokens |", "| --- | --- | --- | --- |"]
    for th, a in sorted(result["sweeps"]["threshold"].items(), key=lambda x: float(x[0])):
        lines.append(f"| {th} | {_pct(a['accuracy'])} | {a['mean_samples']:.2f} | {a['mean_tokens']:.0f} |")
    tp = result["sweeps"].get("threshold_pruned")
    if tp:
        lines += ["", f"## Threshold sweep (adaptive + pruning: rounds pruned at "
                      f"{min(cfg['prune_at'])} tokens, keep {cfg.get('combined_keep')})", "",
                  "| threshold | accuracy | mean samples started | mean tokens |",
                  "| --- | --- | --- | --- |"]
        for th, a in sorted(tp.items(), key=lambda x: float(x[0])):
            lines.append(f"| {th} | {_pct(a['accuracy'])} | {a['mean_samples']:.2f} | "
                         f"{a['mean_tokens']:.0f} |")
    lines += ["", "## Pruning sweep", "", "| prune at | keep | accuracy | mean tokens |",
              "| --- | --- | --- | --- |"]
    for k, a in result["sweeps"]["prune"].items():
        t, f = k.split(":")
        lines.append(f"| {t} | {f} | {_pct(a['accuracy'])} | {a['mean_tokens']:.0f} |")
    lines += ["", "![accuracy vs samples](accuracy_vs_samples.png)", "",
              "![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
