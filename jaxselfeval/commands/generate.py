"""`jaxselfeval generate`: answer prompts with one strategy -> JSONL (response, score, cost).

    jaxselfeval generate --model runs/demo/selfeval/hf --prompt "Tom has 3 pens. ..." \
        --strategy adaptive threshold=0.8
    jaxselfeval generate --model DIR --prompts prompts.jsonl --strategy bon n=16 --out out.jsonl

Prompt files hold one user turn per line ({"prompt": ...} or {"messages": [...]}, as for
`data build`). Without --out the responses are printed. With --out, each finished batch of
prompts is kept in OUT.chunks/ until the whole file is written, so a killed run resumes at the
first unfinished batch (and writes what an uninterrupted run writes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

from jaxselfeval.strategies.registry import BY_CLI, CLI_NAMES

log = logging.getLogger(__name__)



@dataclasses.dataclass
class GenerateConfig:
    n: int = 16  # candidates for bon / majority / prune (adaptive: max_samples)
    temperature: float = 1.0  # sample / bon / majority / prune
    top_p: float = 1.0  # nucleus of every sampled draw (adaptive rounds too); 1 = none
    max_new_tokens: int = 256
    threshold: float = 0.8  # adaptive: stop a prompt once its best score reaches it
    rounds: tuple = (1, 1, 2, 4, 8)  # adaptive round sizes (the default is cut to n when larger)
    round_temperatures: tuple = (0.0, 0.7, 1.0, 1.0, 1.0)
    prune_at: int = 16  # prune / adaptive_prune: tokens decoded before the early probe
    keep_fraction: float = 0.125  # prune / adaptive_prune: share of a round decoded to the end
    # adaptive / prune / adaptive_prune: what ranks candidates: self (the capability token),
    # likelihood (the mean token probability: free, no probe) or combined (their product)
    signal: str = "self"
    batch_prompts: int = 64
    seed: int = 0


def add_arguments(p):
    from jaxselfeval.commands.placement import add_placement_arguments
    from jaxselfeval.configs import describe_defaults

    p.add_argument("--model", default=None,
                   help="HF model directory, self-eval-trained for bon/adaptive/prune (default: "
                        "the shipped tiny base)")
    p.add_argument("--prompt", action="append", default=[], help="a user turn (repeatable)")
    p.add_argument("--prompts", default=None, help="JSONL file of user turns")
    p.add_argument("--strategy", default="adaptive", choices=CLI_NAMES,
                   help="greedy | sample (one at temperature) | bon (Best-of-n by the capability "
                        "score) | bon_rm (Best-of-n by an external reward model: "
                        "--reward-model) | bon_likelihood (Best-of-n by the model's own mean token "
                        "log-probability: no training needed) | bon_combined (Best-of-n by "
                        "the capability score x that probability) | majority (vote on the final "
                        "answer) | vote, vote_likelihood, vote_combined (each distinct answer's "
                        "summed capability score, mean token probability or their product) | "
                        "adaptive | prune | adaptive_prune (adaptive rounds, each "
                        "pruned early)")
    p.add_argument("--out", default=None,
                   help="write JSONL here (default: print); finished batches of prompts are kept "
                        "in OUT.chunks until then, so re-running a killed run resumes it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--reward-model", default=None,
                   help="bon_rm: HF LlamaForSequenceClassification directory on the policy's "
                        "tokenizer (its reward of the chosen response is written as 'reward')")
    add_placement_arguments(p)
    p.add_argument("overrides", nargs="*",
                   help="key=value settings (defaults: " + describe_defaults(GenerateConfig) + ")")


@dataclasses.dataclass(frozen=True)
class _Item:
    id: str
    messages: list
    difficulty: int | None = None
    answer: str | None = None


class _Prompts:
    """The Runner's task interface for prompts without a verifier (correctness: nan)."""

    def messages(self, item):
        return item.messages

    def verify(self, item, text):
        return float("nan")

    verify_strict = verify

    def extract_answer(self, text):
        from jaxselfeval.tasks import extract_answer

        return extract_answer(text)

    def response_kind(self, text):
        return -1


def _strategy_config(strategy: str, cfg: GenerateConfig):
    """The validated AdaptiveConfig / PruneConfig (None for the pooled strategies)."""
    from jaxselfeval import strategies as S
    from jaxselfeval.strategies.driver import check_signal

    check_signal(cfg.signal)
    if strategy in ("adaptive", "adaptive_prune"):
        prune = strategy == "adaptive_prune"
        from jaxselfeval.strategies.config import rounds_for_n

        rounds, temps = rounds_for_n(cfg.n, cfg.rounds, cfg.round_temperatures)
        return S.AdaptiveConfig(rounds, cfg.threshold, temps,
                                max_samples=cfg.n, prune_at=cfg.prune_at if prune else None,
                                keep_fraction=cfg.keep_fraction if prune else 1.0)
    if strategy == "prune":
        return S.PruneConfig(cfg.n, cfg.prune_at, cfg.keep_fraction, cfg.temperature)
    return None


def _records(run, items, strategy: str, cfg: GenerateConfig, scfg, offset: int, rm=None):
    """(one PromptRecord per item, the reward model's reward of each chosen response or None);
    scfg is `_strategy_config(strategy, cfg)`; `rm` (a RewardModel) for bon_rm."""
    import numpy as np

    from jaxselfeval import strategies as S

    if not BY_CLI[strategy].pooled:
        drv = S.LiveDriver(run, items, signal=cfg.signal, offset=offset)
        return (S.prune(drv, scfg) if strategy == "prune" else S.adaptive(drv, scfg)), None
    n = 1 if strategy in ("greedy", "sample") else cfg.n
    temp = 0.0 if strategy == "greedy" else cfg.temperature
    pool = S.sample_pool(run, items, n=n, temperature=temp, probe_at=(), offset=offset)
    name = "one" if strategy == "greedy" else BY_CLI[strategy].record
    if strategy == "bon_rm":
        S.add_rm_scores(pool, rm)
    recs = S.pool_records(pool, items, name, probe_len=run.probe_len)
    chosen = (np.argmax(pool["rm_score"], axis=1) if strategy == "bon_rm"
              else np.zeros(len(items), int))
    if strategy in ("greedy", "sample", "bon_rm"):  # the capability score of the answer too
        for g, r in enumerate(recs):
            r.chosen_score = float(pool["score"][g, chosen[g]])
    if strategy == "bon_rm":
        return recs, [float(pool["rm_score"][g, j]) for g, j in enumerate(chosen)]
    return recs, None


def run(args) -> int:
    from tqdm import tqdm

    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.commands.evaluate import check_selfeval_trained
    from jaxselfeval.commands.placement import load_model, load_rm
    from jaxselfeval.configs import load_dataclass_config
    from jaxselfeval.errors import JSEError
    from jaxselfeval.selfeval.prompts import load_prompts, require_chat_template
    from jaxselfeval.strategies import Runner, check_threshold
    from jaxselfeval.tokenizer import load_tokenizer

    cfg = load_dataclass_config(GenerateConfig, None, args.overrides)
    check_threshold(cfg.threshold)
    scfg = _strategy_config(args.strategy, cfg)  # bad settings fail before any model is loaded
    if not args.prompt and not args.prompts:
        raise JSEError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    if (args.strategy == "bon_rm") != bool(args.reward_model):
        raise JSEError("--strategy bon_rm needs --reward-model DIR" if args.reward_model is None
                       else "--reward-model is used by --strategy bon_rm only: pick that strategy "
                            "or leave the reward model out")
    path = args.model or str(default_model_dir())
    if BY_CLI[args.strategy].token:
        check_selfeval_trained(path)
    tok = load_tokenizer(path)
    require_chat_template(tok, path)
    rm = load_rm(args.reward_model, tok, args) if args.reward_model else None
    model = load_model(path, args)
    msgs = [[{"role": "user", "content": p}] for p in args.prompt]
    if args.prompts:
        context = model.config.max_position_embeddings - cfg.max_new_tokens
        msgs += load_prompts(args.prompts, tok, max_prompt_len=context,
                             tokenizer_dir=path).messages
    items = [_Item(str(i), m) for i, m in enumerate(msgs)]
    runner = Runner(model, tok, _Prompts(), seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                    top_p=cfg.top_p)
    store = _store(args, cfg, msgs, model) if args.out else None
    rows = []
    bar = tqdm(total=len(items), desc=args.strategy, unit="prompt", disable=args.no_progress)
    for s in range(0, len(items), cfg.batch_prompts):
        chunk = items[s:s + cfg.batch_prompts]
        if store is not None and store.has(s):
            rows += store.read_rows(s)
            bar.update(len(chunk))
            continue
        log.debug("%s: prompts %d-%d of %d", args.strategy, s + 1, s + len(chunk), len(items))
        recs, rewards = _records(runner, chunk, args.strategy, cfg, scfg, s, rm)
        batch = []
        for i, (it, r) in enumerate(zip(chunk, recs)):
            row = {"messages": it.messages,
                   "response": tok.decode(r.output, skip_special_tokens=True),
                   "score": r.chosen_score, "samples": r.samples, "gen_tokens": r.gen_tokens,
                   "probe_tokens": r.probe_tokens}
            if rewards is not None:
                row["reward"] = rewards[i]
            batch.append(row)
        if store is not None:
            store.write_rows(s, batch)
        rows += batch
        bar.update(len(chunk))
    bar.close()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if args.out:
        from jaxselfeval.fileio import write_atomic

        write_atomic(args.out, text)  # all or nothing
        shutil.rmtree(store.dir)
        log.info("wrote %d responses to %s", len(rows), args.out)
    else:
        sys.stdout.write(text)
    return 0


def _store(args, cfg: GenerateConfig, msgs, model):
    """OUT.chunks/: the finished batches of this run (same prompts, settings and model), kept
    until OUT is written."""
    from jaxselfeval.evaluate.chunks import ChunkStore, fingerprint_of

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rm = str(Path(args.reward_model).resolve()) if args.reward_model else None
    key = fingerprint_of([args.strategy, dataclasses.asdict(cfg), msgs, rm], model)
    store = ChunkStore(out.with_name(out.name + ".chunks"), key, what="generate run")
    done = [s for s in range(0, len(msgs), cfg.batch_prompts) if store.has(s)]
    if done:
        log.info("resuming: %d of %d batches already answered in %s", len(done),
                 -(-len(msgs) // cfg.batch_prompts), store.dir)
    return store
