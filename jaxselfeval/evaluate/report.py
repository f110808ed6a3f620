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
    for name, mk in (("one", "x"), ("majority", "^"), ("bon_rm", "D"), ("oracle", "*")):
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


def write_report(result: dict, out: Path) -> str:
    sm, h, cfg = result["summary"], result["headline"], result["config"]
    n = cfg["n"]
    lines = [f"# jaxselfeval evaluation: {cfg['task']} / {cfg['split']} ({sm['one']['n']} problems)", "",
             "| strategy | accuracy | ±95% | mean samples | mean tokens (incl. probes) |",
             "| --- | --- | --- | --- | --- |"]
    names = {"greedy": "greedy", "one": "one sample (T=1)", "majority": f"majority vote of {n}",
             "bon_self": f"Best-of-{n} by self-evaluation",
             "bon_rm": f"Best-of-{n} by external reward model", "oracle": f"oracle Best-of-{n} (pass@{n})",
             "adaptive": f"adaptive (threshold {cfg['threshold']})",
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
              f"external-RM Best-of-{n} {_pct(h.get('bon16_rm'))}, oracle {_pct(h['oracle'])}.",
              f"- Adaptive sampling at <= 1.2 mean samples (threshold {h['adaptive_threshold_at_1.2']}): "
              f"{_pct(h['adaptive_acc_at_1.2'])} with {h['adaptive_mean_samples'] or float('nan'):.2f} "
              f"samples, recovering {_pct(h['adaptive_gain_recovered'])} of the Best-of-{n} gain "
              "(goal >= 80%; the paper reports 74%).",
              f"- Pruning {100 * h['prune_fraction_pruned']:.0f}% of candidates at {h['prune_at']} tokens: "
              f"{_pct(h['prune_acc'])} ({h['prune_acc_loss_points']:+.1f} points vs Best-of-{n}), "
              f"{h['prune_wall_speedup']:.2f}x less wall time measured side by side "
              f"({result['wall_s']['bon_full']:.1f}s vs {result['wall_s']['pruned']:.1f}s).",
              "", "## Threshold sweep (adaptive sampling)", "",
              "| threshold | accuracy | mean samples | mean tokens |", "| --- | --- | --- | --- |"]
    for th, a in sorted(result["sweeps"]["threshold"].items(), key=lambda x: float(x[0])):
        lines.append(f"| {th} | {_pct(a['accuracy'])} | {a['mean_samples']:.2f} | {a['mean_tokens']:.0f} |")
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
