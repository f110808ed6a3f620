"""Train the tiny base model from scratch: tokenizer + Llama + LM loss on answers -> HF dir,
then sample@1 / pass@N on held-out problems.

    export, summary = train_base(load_train_config("configs/train_tiny.yaml"))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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


def _add_checking(task, tok, train, tokens, mask, cfg: TrainConfig):
    """Append int(checking_fraction * len(train)) checking documents to the SFT rows."""
    import numpy as np

    from jaxselfeval.errors import JSEError
    from jaxselfeval.train.data import encode_segments

    make = getattr(type(task), "checking_documents", None)
    if make is None:
        raise JSEError(f"task '{cfg.task}' has no checking documents: set checking_fraction=0")
    docs = make(train, int(cfg.checking_fraction * len(train)), seed=cfg.seed)
    ct, cm, dropped = encode_segments(tok, docs, cfg.seq_len)
    log.info("+ %d checking documents (%d longer dropped)", len(ct), dropped)
    return np.concatenate([tokens, ct]), np.concatenate([mask, cm])


def checking_accuracy(model, tok, task, n: int = 500, seed: int = 1) -> dict:
    """Teacher-forced accuracy of the marks on n checking documents of the validation split:
    {"lines": share of lines marked right, "documents": share with every mark right}."""
    import jax.numpy as jnp
    import numpy as np

    from jaxselfeval.train.data import encode_segments

    docs = task.checking_documents(task.examples("validation"), n, seed=seed)
    toks, mask, _ = encode_segments(tok, docs, 256)
    width = int((toks != (tok.pad_token_id or 0)).sum(1).max()) + 1
    toks, mask = toks[:, :width], mask[:, :width]
    pred = np.concatenate([np.asarray(jnp.argmax(model(jnp.asarray(toks[i:i + 100])), -1))
                           for i in range(0, len(toks), 100)])
    ok = (pred[:, :-1] == toks[:, 1:]) | (mask[:, :-1] == 0)
    first = mask[:, :-1] * (np.pad(mask[:, :-2], ((0, 0), (1, 0))) == 0)  # a mark's first token
    return {"lines": float((ok * first).sum() / first.sum()), "documents": float(ok.all(1).mean())}


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
    from jaxselfeval.train.losses import lm_loss, lm_loss_with_exit

    from flax import nnx

    from jaxselfeval.errors import JSEError
    from jaxselfeval.model.config import read_hf_config

    if cfg.init_from:
        cfg = dataclasses.replace(cfg, init_from=os.path.expanduser(cfg.init_from))
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").exists():
        raise JSEError(f"init_from '{cfg.init_from}' is not an HF model directory (no config.json): "
                       "train the first stage, or set init_from=null to train from scratch")
    if cfg.init_from and cfg.model:
        raise JSEError("model.* overrides change the shape of a model trained from scratch: drop "
                       "them, or set init_from=null")
    arch = (read_hf_config(cfg.init_from) if cfg.init_from
            else load_model_config(cfg.model_config)).replace(**cfg.model)
    layers = arch.num_hidden_layers
    if cfg.exit_layer >= layers:  # checked before anything is written
        raise JSEError(f"exit_layer {cfg.exit_layer} is not below the model's {layers} layers: "
                       f"set exit_layer=0..{layers - 1} (0: no early exit)")
    out = Path(cfg.out_dir)
    task = get_task(cfg.task, **cfg.task_args)
    train = task.examples("train")
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tok = load_tokenizer(tok_dir)
    else:
        tok = (load_tokenizer(cfg.init_from) if cfg.init_from else
               build_tokenizer([e.question + "\n" + e.solution for e in train], cfg.tokenizer_vocab))
        if jax.process_index() == 0:
            save_tokenizer(tok, tok_dir)
    tokens, mask, dropped = encode_sft(tok, task, train, cfg.seq_len)
    log.info("%d training sequences of %d tokens (%d longer dropped)", len(tokens), cfg.seq_len,
             dropped)
    if cfg.checking_fraction > 0:
        tokens, mask = _add_checking(task, tok, train, tokens, mask, cfg)
    loss = lm_loss_with_exit(cfg.exit_layer, cfg.exit_weight) if cfg.exit_layer else lm_loss
    if cfg.init_from:
        model = jse.load_pretrained(cfg.init_from, cfg.param_dtype, compute_dtype=cfg.compute_dtype)
        log.info("starting from the weights of %s", cfg.init_from)
    else:
        mc = arch.replace(**{"vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                             "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                             **cfg.model})  # the tokenizer's ids unless cfg.model sets them
        model = Llama(mc, rngs=nnx.Rngs(cfg.seed), param_dtype=cfg.param_dtype,
                      compute_dtype=cfg.compute_dtype, remat=cfg.remat)
    log.info("model: %.2fM parameters (%s master weights, %s compute)",
             jse.count_params(model) / 1e6, cfg.param_dtype, cfg.compute_dtype)
    t0 = time.time()
    model, hist = run_training(model, Batches(tokens, mask, cfg.batch_size, cfg.seed), loss, cfg,
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
    if cfg.checking_fraction > 0:
        summary["checking_accuracy"] = checking_accuracy(model, tok, task)
        log.info("checking marks on held-out documents: %s", summary["checking_accuracy"])
    if jax.process_index() == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return export, summary
