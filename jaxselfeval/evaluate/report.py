"""Markdown report and plots of an evaluation (`results.json` -> report.md, *.png)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxselfeval.evaluate.records import best_within
from jaxselfeval.strategies.registry import STRATEGIES


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
    for kind, mk, label in (("threshold_likelihood", "s:", "adaptive by log-probability (free)"),
                            ("threshold_combined", "s--", "adaptive by token x log-probability")):
        if sw.get(kind):
            pts = sorted(sw[kind].values(), key=lambda v: v["mean_samples"])
            ax.plot([v["mean_samples"] for v in pts], [100 * v["accuracy"] for v in pts], mk,
                    label=label)
    for name, mk in ((st.record, st.marker) for st in STRATEGIES if st.marker):
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


def _g4(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


@dataclasses.dataclass(frozen=True)
class Goals:
    """The goals the report marks met / NOT met: the capability token's quality, and what each
    strategy must show. An evaluation's `goals` section (EvalConfig.goals) sets any of them;
    these defaults are the tiny demo's."""

    auroc: float = 0.85  # complete responses, pooled ...
    auroc_within: float = 0.75  # ... and within a prompt
    auroc_at: float = 0.75  # pooled, at the pruning goal's token count
    ece: float = 0.05
    bon_margin: float = 0.10  # Best-of-n by the token >= one sample + this, and >= greedy
    gain_share: float = 0.74  # adaptive at <= 1.2 samples: share of Best-of-n's gain recovered
    prune_at: int | None = None  # the pruning goal's token count (None: the earliest prune
    #                              point) ...
    prune_pruned: float = 0.75  # ... and share of candidates pruned there (a keep fraction swept)
    prune_loss: float = 1.0  # accuracy points below Best-of-n at most
    prune_speedup: float = 2.0  # less wall time, measured at the timed setting (0: not a goal)


GOALS = dataclasses.asdict(Goals())
CHANCE = 0.6  # a within-prompt AUROC below this ranks a prompt's samples no better than a coin


def _mark(ok) -> str:
    return "met" if ok else "NOT met"


def _ge(x, goal) -> bool:
    return x is not None and x == x and x >= goal


def goals_of(cfg: dict) -> dict:
    """The report's goals: GOALS with the evaluation's own `goals` over them."""
    return {**GOALS, **(cfg.get("goals") or {})}


def _prune_goal(result: dict, g: dict) -> dict:
    """The pruning figures the goal reads: the headline's timed setting, or the sweep's entry at
    the goal's token count and share pruned, when the config names one."""
    h, n = result["headline"], result["config"]["n"]
    if g["prune_at"] is None or "sweeps" not in result:
        return {"at": h["prune_at"], "pruned": h["prune_fraction_pruned"],
                "loss": h["prune_acc_loss_points"]}
    keep = 1 - g["prune_pruned"]
    a = result["sweeps"]["prune"].get(f"{g['prune_at']}:{keep}")
    if a is None:
        return {"at": g["prune_at"], "pruned": g["prune_pruned"], "loss": float("nan")}
    return {"at": g["prune_at"], "pruned": 1 - max(1, round(n * keep)) / n,
            "loss": 100 * (h["bon_self"] - a["accuracy"])}


def verdict(result: dict) -> list[str]:
    """Each goal marked met / NOT met with its numbers, and why when not. A goal that rests on
    the capability token is never met while the token ranks a prompt's samples at chance."""
    h, n = result["headline"], result["config"]["n"]
    g = goals_of(result["config"])
    TOKEN_GOALS = {k: g[k] for k in ("auroc", "auroc_within", "auroc_at", "ece")}
    BON_MARGIN, GAIN_SHARE, PRUNE_LOSS, PRUNE_SPEEDUP = (g["bon_margin"], g["gain_share"],
                                                         g["prune_loss"], g["prune_speedup"])
    pool = result.get("pool") or {}
    pg = _prune_goal(result, g)
    t0 = pg["at"]
    lines = ["## Goals", ""]
    within = pool.get("auroc_within")
    chance = within is not None and not _ge(within, CHANCE)
    if pool:
        at = pool.get(f"auroc_at{t0}")
        lines += [
            f"- Capability token, complete responses: AUROC {pool['auroc']:.3f} pooled (goal >= "
            f"{TOKEN_GOALS['auroc']}), {within:.3f} within a prompt (goal >= "
            f"{TOKEN_GOALS['auroc_within']}): "
            f"{_mark(_ge(pool['auroc'], TOKEN_GOALS['auroc']) and _ge(within, TOKEN_GOALS['auroc_within']))}.",
            f"- Capability token at {t0} tokens (a response finished sooner scored as its complete "
            f"self, what pruning sees): AUROC "
            f"{'n/a' if at is None else format(at, '.3f')} pooled (goal >= "
            f"{TOKEN_GOALS['auroc_at']}): {_mark(_ge(at, TOKEN_GOALS['auroc_at']))}"
            + (f"; over the {100 * pool[f'running_at{t0}']:.0f}% of samples still running at "
               f"{t0} tokens only: {pool[f'auroc_trunc{t0}']:.3f}."
               if f"auroc_trunc{t0}" in pool else "."),
        ]
        if "ece" in pool:
            ref = {"reward": "the answers' correctness"}.get(pool.get("ece_target"),
                                                              "the capability targets")
            lines.append(f"- Calibration: ECE {pool['ece']:.3f} against {ref} "
                         f"(goal <= {TOKEN_GOALS['ece']}): {_mark(pool['ece'] <= TOKEN_GOALS['ece'])}.")
    bon, one, greedy = h["bon_self"], h["one_sample"], h["greedy"]
    why_chance = (f" (the token ranks a prompt's samples at chance, within-prompt AUROC "
                  f"{within:.3f}, so nothing here is its doing)") if chance else ""
    ok = bon >= one + BON_MARGIN and bon >= greedy and not chance
    lines.append(f"- Best-of-{n} by self-evaluation >= one sample + {100 * BON_MARGIN:.0f} points "
                 f"and >= greedy: {_mark(ok)} ({_pct(bon)} vs one sample {_pct(one)}, "
                 f"{100 * (bon - one):+.1f} points; greedy {_pct(greedy)}, "
                 f"{100 * (bon - greedy):+.1f}){why_chance}.")
    others = {"majority vote": h["majority"]}
    if h.get("bon_rm") is not None:
        others[f"external-RM Best-of-{n}"] = h["bon_rm"]
    for name, acc in others.items():
        lines.append(f"- Best-of-{n} by self-evaluation beats {name}: {_mark(bon > acc)} "
                     f"({100 * (bon - acc):+.1f} points).")
    rec = _recovered(h)
    lines.append(f"- Adaptive sampling at <= 1.2 mean samples recovers >= {100 * GAIN_SHARE:.0f}% "
                 f"of Best-of-{n}'s gain over the better of greedy and one sample: "
                 f"{_mark(rec is not None and rec >= GAIN_SHARE and not chance)} "
                 f"({_adaptive_gain(h, n)}){why_chance}{_bound_note(h, GAIN_SHARE)}.")
    problems = (h.get("signals") or {}).get("problems")
    for name, row, _ in signal_rows(h, n):
        lines.append(f"- {name}, the token against the best free signal: "
                     f"{_winner(row, problems)}.")
    best = best_choice(h.get("signals") or {}, n)
    if best:
        lines.append(f"- Choosing one of a prompt's {n} answers, the token's best way against the "
                     f"free signals' best way: {best}.")
    speedup = h["prune_wall_speedup"]  # None: nothing was timed (real_runs: none)
    prune_ok = (pg["pruned"] >= g["prune_pruned"] - 1e-9 and pg["loss"] <= PRUNE_LOSS
                and (speedup or 0.0) >= PRUNE_SPEEDUP)
    weak = bon < max(one, greedy)
    speed = (f" and >= {PRUNE_SPEEDUP:.0f}x less wall time" if PRUNE_SPEEDUP else "")
    lines.append(f"- Pruning >= {100 * g['prune_pruned']:.0f}% at {t0} tokens within "
                 f"{PRUNE_LOSS:.0f} point of Best-of-{n} by self-evaluation{speed}: "
                 f"{_mark(prune_ok and not chance and not weak)} "
                 f"({100 * pg['pruned']:.0f}% pruned, accuracy "
                 f"{-pg['loss']:+.1f} points vs Best-of-{n}; wall time "
                 + (f"{speedup:.2f}x less" if speedup is not None else "not timed")
                 + f" at {h['prune_at']} tokens, "
                 f"{100 * h['prune_fraction_pruned']:.0f}% pruned)" + (
                     f"; not met although the figures hold, because Best-of-{n} itself picks worse "
                     "than greedy or one sample here: being close to it is no evidence for the "
                     "capability score" if prune_ok and weak else "") + why_chance + ".")
    if pool:
        lines += ["", f"Over the {pool['samples']} pooled samples (the policy's sample@1 is "
                  f"{_pct(pool['sample_at_1'])}), the final self-evaluation score separates right "
                  f"from wrong answers with AUROC {pool['auroc']:.3f} pooled over prompts and "
                  f"{within:.3f} among a prompt's own samples."]
        if chance:
            lines.append("A within-prompt AUROC near 0.5 means the capability token tells easy "
                         "prompts from hard ones but not a prompt's right answers from its wrong "
                         f"ones, so Best-of-{n} by self-evaluation is at best a random pick among the "
                         "samples (one sample's accuracy), and what adaptive sampling gains "
                         "comes from its near-greedy first round and from spending samples on hard "
                         "prompts.")
        if pool.get("likelihood_auroc_within") is not None:
            lines.append(f"The policy's own mean token log-probability of each sample (no "
                         f"training, no probe) ranks a prompt's samples with AUROC "
                         f"{pool['likelihood_auroc_within']:.3f} (pooled "
                         f"{pool['likelihood_auroc']:.3f}) and picks Best-of-{n} at "
                         f"{_pct(h.get('bon_likelihood'))}"
                         + (f"; the token and the log-probability together (log score + mean "
                            f"token log-probability) rank at {pool['combined_auroc_within']:.3f} "
                            f"within a prompt and pick Best-of-{n} at {_pct(h['bon_combined'])}."
                            if h.get("bon_combined") is not None and "combined_auroc_within"
                            in pool else "."))
    return lines


SIGNAL_NAMES = {"self": "self-evaluation (the token)", "likelihood": "mean token log-probability",
                "combined": "token x log-probability", "majority": "majority vote"}
FREE = ("likelihood", "majority")  # the signals that need no training


def _winner(row: dict, problems: int | None = None) -> str:
    """Which wins among the token (alone or combined) and the best free signal of a row
    {signal: accuracy}: a sentence; a margin inside the 95% interval of an accuracy on
    `problems` problems is said to be within noise."""
    token = {SIGNAL_NAMES[k]: v for k, v in row.items() if k in ("self", "combined")
             and v is not None}
    free = {SIGNAL_NAMES[k]: v for k, v in row.items() if k in FREE and v is not None}
    return _versus(token, free, problems)


def _versus(token: dict, free: dict, problems: int | None) -> str:
    """The best of `token` {name: accuracy} against the best of `free`, said plainly."""
    if not token or not free:
        return "no comparison"
    tk, tv = max(token.items(), key=lambda x: x[1])
    fk, fv = max(free.items(), key=lambda x: x[1])
    d = 100 * (tv - fv)
    if abs(d) < 0.05:
        return f"a tie: {tk} and {fk} both {_pct(tv)}"
    who = f"the token wins ({tk})" if d > 0 else f"the free signal wins ({fk})"
    noise = ""
    if problems:
        p = (tv + fv) / 2
        half = 196 * (max(p * (1 - p), 0.0) / problems) ** 0.5
        if abs(d) <= half:
            noise = f", within noise (+-{half:.1f} points on {problems} problems)"
    return f"{who}: {_pct(tv)} vs {_pct(fv)}, {d:+.1f} points{noise}"


def best_choice(sig: dict, n: int) -> str | None:
    """Across the ways of choosing one of a prompt's n answers (Best-of-n, answer votes), the
    token's best (alone or combined) against the free signals' best: a sentence, or None."""
    ways = [(f"Best-of-{n} by {SIGNAL_NAMES[k]}", k, v) for k, v in sig.get("bon", {}).items()]
    ways += [(f"answer vote by {SIGNAL_NAMES[k]}", k, v) for k, v in sig.get("vote", {}).items()
             if k != "majority"]  # majority is Best-of-n's majority vote already
    token = {w: v for w, k, v in ways if k in ("self", "combined") and v is not None}
    free = {w: v for w, k, v in ways if k in FREE and v is not None}
    return _versus(token, free, sig.get("problems")) if token and free else None


def signal_rows(h: dict, n: int) -> list[tuple[str, dict, str]]:
    """(strategy, {signal: accuracy}, note) for each strategy of the headline's signal table."""
    sig = h.get("signals") or {}
    rows = []
    if "bon" in sig:
        rows.append((f"Best-of-{n}", sig["bon"], ""))
    if sig.get("vote"):
        rows.append((f"answer vote of {n} (each distinct answer's summed signal)", sig["vote"],
                     ""))
    ad = sig.get("adaptive") or {}
    if ad:
        rows.append(("adaptive sampling, best at <= 1.2 mean samples",
                     {k: v["accuracy"] for k, v in ad.items()},
                     ", ".join(f"{k}: {v['mean_samples']:.2f} samples at threshold "
                               f"{_g4(v['threshold'])}"
                               for k, v in ad.items())))
    for key in sorted((k for k in sig if k.startswith("prune@")), key=lambda k: int(k[6:])):
        rows.append((f"pruning at {key[6:]} tokens (Best-of-{n}, keep the fewest)", sig[key], ""))
    return rows


def signal_lines(h: dict, n: int) -> list[str]:
    """The token against the free signals, strategy by strategy, on the same samples."""
    rows = signal_rows(h, n)
    if not rows:
        return []
    lines = ["", "## The token against the free signals (the same samples)", "",
             "| strategy | self-evaluation | token x log-prob | mean token log-prob | majority vote "
             "| which wins |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row, note in rows:
        lines.append(f"| {name} | {_pct(row.get('self'))} | {_pct(row.get('combined'))} | "
                     f"{_pct(row.get('likelihood'))} | {_pct(row.get('majority'))} | "
                     f"{_winner(row, (h.get('signals') or {}).get('problems'))} |")
    notes = [f"{name}: {note}" for name, _, note in rows if note]
    return lines + ([""] + [f"- {x}" for x in notes] if notes else [])


def _recovered(h) -> float | None:
    g = h["adaptive_gain_recovered"]
    return None if g is None or g != g else g


def _adaptive_gain(h, n) -> str:
    """'X% of the gain', or why there is no gain to recover."""
    base = max(h["one_sample"], h["greedy"])
    name = "greedy" if h["greedy"] >= h["one_sample"] else "one sample"
    acc = h["adaptive_acc_at_1.2"]
    if _recovered(h) is not None:
        return (f"{_pct(acc)} at {h['adaptive_mean_samples']:.2f} samples, recovering "
                f"{_pct(h['adaptive_gain_recovered'])} of the Best-of-{n} gain over {name}: "
                f"{_pct(base)} -> {_pct(h['bon_self'])}")
    extra = "" if acc is None else (f"; adaptive itself is {100 * (acc - base):+.1f} "
                                    f"points over {name}")
    return (f"Best-of-{n} gains nothing over {name} here "
            f"({100 * (h['bon_self'] - base):+.1f} points), so there is no gain to "
            f"recover{extra}")


def _bound_note(h: dict, share: float) -> str:
    """What an oracle could recover at the adaptive budget (`stats.adaptive_bound`), and
    whether that puts the goal out of reach."""
    b, s = h.get("adaptive_bound_at_1.2"), h.get("adaptive_bound_share")
    if b is None:
        return ""
    known = s is not None and s == s  # nan: Best-of-n gains nothing to share
    reach = (": the goal is out of reach of any signal for this model at this budget"
             if known and s < share else "")
    return (f"; the most any signal could reach here, in expectation: {_pct(b)}"
            + (f", {_pct(s)} of the gain" if known else "")
            + " (an oracle that knows which first answers are wrong and each problem's chance "
            f"of a right sample, and keeps a right answer whenever it draws one){reach}")


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


def _f3(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def kind_lines(pool: dict) -> list[str]:
    """The token's AUROC by kind of mistake (the task's ways a response can go), when the pool
    has them: what the token sees and what it cannot."""
    bk = pool.get("by_kind")
    if not bk:
        return []
    lines = ["", "## What the token sees, by kind of response", "",
             "| kind | share of samples | right | mean score | its wrong ones vs every right "
             "one: AUROC pooled / within a prompt | right vs wrong among this kind: pooled / "
             "within | (mean token log-prob, within) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in bk.items():
        lines.append(f"| {name} | {_pct(d['share'])} | {_pct(d['accuracy'])} | "
                     f"{d['mean_score']:.3f} | {_f3(d['auroc_vs_right'])} / "
                     f"{_f3(d['auroc_within_vs_right'])} ({d['wrong']} wrong) | "
                     f"{_f3(d['auroc_in_kind'])} / {_f3(d['auroc_within_in_kind'])} | "
                     f"{_f3(d.get('likelihood_auroc_within_in_kind'))} |")
    return lines


def sampling_label(cfg: dict) -> str:
    """The pool's sampling settings, e.g. "T=0.5, top-p 0.9"."""
    top_p = cfg.get("top_p", 1.0)
    return f"T={cfg['temperature']}" + (f", top-p {top_p}" if top_p < 1 else "")


def _read_off_lines(result: dict) -> list[str]:
    """Which problems adaptive sampling and the pruned run ran on for real, and how well the
    records read off the pool (the same candidates under the same keys) matched them there."""
    w, total = result["wall_s"], result["summary"]["one"]["n"]
    if result["config"].get("real_runs") == "none":
        return ["", "Adaptive sampling and the pruned run are read off the pool and greedy run on "
                    "every problem (real_runs: none): the candidates they would draw, under the "
                    "same keys. Nothing was run for real or timed."]
    real = int(w.get("real_problems", total))
    if real >= total:
        return []
    names = {"adaptive": "adaptive", "adaptive_pruned": "adaptive + pruning",
             "pruned_run": "pruned run"}
    agree = ", ".join(f"{names[k]} {int(w[f'agree_{k}'])}/{real}" for k in names
                      if f"agree_{k}" in w)
    return ["", f"Adaptive sampling and the pruned run ran for real on {real} of the {total} "
                f"problems (real_runs: first); on the others their records are read off the same "
                f"pool and greedy run: the candidates they would draw, under the same keys. Where "
                f"both exist they agree on: {agree or 'nothing compared'} problems."]


def _rows(sweep: dict, per_signal: int = 12) -> list[tuple[float, dict]]:
    """A sweep's rows worth a table: about `per_signal` thresholds spread over its range, and
    the most accurate one within 1.2 mean samples."""
    items = sorted(((float(k), v) for k, v in sweep.items()), key=lambda x: x[0])
    step = max(1, len(items) // per_signal)
    keep = {th for th, _ in items[::step]} | {items[-1][0], best_within(sweep)[0]}
    return [(th, a) for th, a in items if th in keep]


def adaptive_headline(h: dict, n: int, share: float) -> str:
    """The headline's adaptive-sampling line, against the evaluation's own gain-share goal."""
    paper = ", the paper's figure" if share == Goals.gain_share else ""
    return (f"- Adaptive sampling at <= 1.2 mean samples (threshold "
            f"{_g4(h['adaptive_threshold_at_1.2'])}): {_pct(h['adaptive_acc_at_1.2'])} with "
            f"{h['adaptive_mean_samples'] or float('nan'):.2f} samples: {_adaptive_gain(h, n)} "
            f"(goal >= {100 * share:.0f}% of the gain{paper}).")


def sweep_tables(result: dict) -> list[str]:
    """Adaptive sampling's threshold sweep, one table per signal (each swept at the configured
    thresholds and at its own quantiles; a sample of them shown, the best at <= 1.2 samples
    marked)."""
    cfg, sw = result["config"], result["sweeps"]
    titles = {"threshold": "by the token",
              "threshold_likelihood": "by the free signal: the mean token probability, "
                                      "exp(mean log-prob)",
              "threshold_combined": "by the token x the mean token probability",
              "threshold_pruned": f"by the token, rounds pruned at {min(cfg['prune_at'])} tokens "
                                  f"(keep {cfg.get('combined_keep')})"}
    lines = []
    for kind, title in titles.items():
        if not sw.get(kind):
            continue
        cheap = best_within(sw[kind])[0]
        lines += ["", f"## Threshold sweep: adaptive sampling {title}", "",
                  "| threshold | accuracy | mean samples | mean tokens |", "| --- | --- | --- | --- |"]
        for th, a in _rows(sw[kind]):
            mark = " (best at <= 1.2 samples)" if th == cheap else ""
            lines.append(f"| {th:g}{mark} | {_pct(a['accuracy'])} | {a['mean_samples']:.2f} | "
                         f"{a['mean_tokens']:.0f} |")
    return lines


def write_report(result: dict, out: Path) -> str:
    sm, h, cfg = result["summary"], result["headline"], result["config"]
    n = cfg["n"]
    lines = [f"# jaxselfeval evaluation: {cfg['task']} / {cfg['split']} ({sm['one']['n']} problems)", "",
             "| strategy | accuracy | ±95% | mean samples | mean tokens (incl. probes) |",
             "| --- | --- | --- | --- | --- |"]
    fields = {"n": n, "sampling": sampling_label(cfg), "threshold": cfg["threshold"],
              "prune_at": min(cfg["prune_at"]), "keep": min(cfg["keep_fractions"]),
              "combined_keep": cfg.get("combined_keep")}
    names = {st.record: st.label.format(**fields) for st in STRATEGIES}
    for k, label in names.items():
        if k in sm:
            a = sm[k]
            lines.append(f"| {label} | {_pct(a['accuracy'])} | {100 * a['accuracy_ci95']:.1f} | "
                         f"{a['mean_samples']:.2f} | {a['mean_tokens']:.0f} |")
    lines += _read_off_lines(result)
    gain = h["bon_self"] - h["one_sample"]
    lines += ["", "## Headline", "",
              f"- Best-of-{n} by self-evaluation {_pct(h['bon_self'])} vs one sample "
              f"{_pct(h['one_sample'])} ({100 * gain:+.1f} points), majority vote {_pct(h['majority'])}, "
              f"external-RM Best-of-{n} {_pct(h.get('bon_rm'))}, Best-of-{n} by the policy's "
              f"own likelihood {_pct(h.get('bon_likelihood'))}, oracle {_pct(h['oracle'])}.",
              adaptive_headline(h, n, goals_of(result.get("config") or {})["gain_share"]),
              f"- Pruning {100 * h['prune_fraction_pruned']:.0f}% of candidates at {h['prune_at']} tokens: "
              f"{_pct(h['prune_acc'])} ({-h['prune_acc_loss_points']:+.1f} points vs Best-of-{n})"
              + (", not timed (real_runs: none)." if h["prune_wall_speedup"] is None else
                 f", {h['prune_wall_speedup']:.2f}x less wall time measured side by side "
                 f"({result['wall_s']['bon_full']:.1f}s vs {result['wall_s']['pruned']:.1f}s"
                 + (f" on the first {result['wall_s']['timed_problems']:.0f} problems"
                    if "timed_problems" in result["wall_s"] else "") + ")."),
              *_combined_line(result),
              "", *verdict(result), *signal_lines(h, n), *kind_lines(result.get("pool") or {}),
              ""]
    lines += sweep_tables(result)
    sw = result["sweeps"]
    lines += ["", "## Pruning sweep (the final pick and the early cut by the same signal)", "",
              "| prune at | keep | by the token: accuracy | mean tokens | by log-prob: accuracy "
              "| by token x log-prob: accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for k, a in sw["prune"].items():
        t, f = k.split(":")
        free = [_pct(sw.get(kind, {}).get(k, {}).get("accuracy"))
                for kind in ("prune_likelihood", "prune_combined")]
        lines.append(f"| {t} | {f} | {_pct(a['accuracy'])} | {a['mean_tokens']:.0f} | "
                     f"{free[0]} | {free[1]} |")
    lines += ["", "![accuracy vs samples](accuracy_vs_samples.png)", "",
              "![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
