"""Train the tiny base model from scratch: tokenizer + Llama + LM loss on answers -> HF dir."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jaxselfeval.train.config import TrainConfig

log = logging.getLogger(__name__)


def train_base(cfg: TrainConfig, *, progress: bool = True) -> Path:
    import jaxselfeval as jse
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import build_tokenizer, save_tokenizer
    from jaxselfeval.train.data import Batches, encode_sft
    from jaxselfeval.train.loop import run_training
    from jaxselfeval.train.losses import lm_loss

    out = Path(cfg.out_dir)
    task = get_task(cfg.task, **cfg.task_args)
    train = task.examples("train")
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        from jaxselfeval.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_dir)
    else:
        tok = build_tokenizer([e.question + "\n" + e.solution for e in train], cfg.tokenizer_vocab)
        save_tokenizer(tok, tok_dir)
    tokens, mask, dropped = encode_sft(tok, task, train, cfg.seq_len)
    log.info("%d training sequences of %d tokens (%d longer dropped)", len(tokens), cfg.seq_len,
             dropped)
    mc = load_model_config(cfg.model_config).replace(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **cfg.model)
    model = jse.create_model(mc, seed=cfg.seed, param_dtype=cfg.param_dtype,
                             compute_dtype=cfg.compute_dtype)
    log.info("model: %.2fM parameters", jse.count_params(model) / 1e6)
    t0 = time.time()
    model, hist = run_training(model, Batches(tokens, mask, cfg.batch_size, cfg.seed), lm_loss, cfg,
                               out_dir=out, progress=progress)
    log.info("trained %d steps in %.0fs, final loss %.4f", cfg.steps, time.time() - t0,
             hist[-1]["loss"] if hist else float("nan"))
    export = Path(cfg.export_dir or out / "hf")
    jse.save_pretrained(model, export, tokenizer_dir=tok_dir)
    log.info("wrote %s", export)
    return export
