"""Train the tiny base model from scratch: tokenizer + Llama + LM loss on answers -> HF dir,
then sample@1 / pass@N on held-out problems.

    export, summary = train_base(load_train_config("configs/train_tiny.yaml"))
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jaxselfeval.train.config import TrainConfig

log = logging.getLogger(__name__)


def eval_base(model_dir, cfg: TrainConfig, *, progress: bool = True) -> dict:
    """sample@1 (temperature 1.0) and pass@N of an HF directory on cfg.eval_problems held-out
    problems of cfg.task, overall and by difficulty (`jaxselfeval.evaluate.accuracy`)."""
    import jaxselfeval as jse
    from jaxselfeval.evaluate.accuracy import sample_accuracy
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    task = get_task(cfg.task, **cfg.task_args)
    return sample_accuracy(jse.load_pretrained(model_dir), load_tokenizer(model_dir), task,
                           split=cfg.eval_split, limit=cfg.eval_problems, n=cfg.eval_samples,
                           temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                           progress=progress)


def train_base(cfg: TrainConfig, *, progress: bool = True) -> tuple[Path, dict]:
    """Build the tokenizer on the task's training split, train a model of cfg.model_config from
    scratch with the LM loss on the answers, export it (HF layout) and evaluate it.

    Resumes from cfg.out_dir. Returns (export dir, summary dict incl. "accuracy" when
    cfg.eval_problems > 0); the summary is also written to out_dir/summary.json."""
    import jax

    import jaxselfeval as jse
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.model.llama import Llama
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
    from jaxselfeval.train.data import Batches, encode_sft
    from jaxselfeval.train.loop import run_training
    from jaxselfeval.train.losses import lm_loss

    from flax import nnx

    out = Path(cfg.out_dir)
    task = get_task(cfg.task, **cfg.task_args)
    train = task.examples("train")
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tok = load_tokenizer(tok_dir)
    else:
        tok = build_tokenizer([e.question + "\n" + e.solution for e in train], cfg.tokenizer_vocab)
        if jax.process_index() == 0:
            save_tokenizer(tok, tok_dir)
    tokens, mask, dropped = encode_sft(tok, task, train, cfg.seq_len)
    log.info("%d training sequences of %d tokens (%d longer dropped)", len(tokens), cfg.seq_len,
             dropped)
    mc = load_model_config(cfg.model_config).replace(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **cfg.model)
    model = Llama(mc, rngs=nnx.Rngs(cfg.seed), param_dtype=cfg.param_dtype,
                  compute_dtype=cfg.compute_dtype, remat=cfg.remat)
    log.info("model: %.2fM parameters (%s master weights, %s compute)",
             jse.count_params(model) / 1e6, cfg.param_dtype, cfg.compute_dtype)
    t0 = time.time()
    model, hist = run_training(model, Batches(tokens, mask, cfg.batch_size, cfg.seed), lm_loss, cfg,
                               out_dir=out, progress=progress)
    train_s = time.time() - t0
    summary = {"steps": cfg.steps, "train_seconds": round(train_s, 1),
               "final_loss": hist[-1]["loss"] if hist else None,
               "params": jse.count_params(model), "sequences": len(tokens)}
    log.info("trained to step %d in %.0fs (this run), final loss %s", cfg.steps, train_s,
             summary["final_loss"])
    export = Path(cfg.export_dir or out / "hf")
    jse.save_pretrained(model, export, dtype=cfg.export_dtype, tokenizer_dir=tok_dir)
    log.info("wrote %s", export)
    if cfg.eval_problems > 0:
        summary["accuracy"] = eval_base(export, cfg, progress=progress)
    if jax.process_index() == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return export, summary
