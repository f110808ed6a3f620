"""`jaxselfeval train selfeval`: fine-tune the capability token on the probe position.

Each row is prompt + response (or its prefix) + the probe turn; the loss is the cross-entropy of
the probe position's next-token distribution against the soft target (No: t, Yes: 1 - t), plus an
LM term on the sampled responses and a KL term to the frozen base that keep the policy where it
was.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import write_atomic
from jaxselfeval.lora import LoRAConfig, add_lora, count_lora_params, merge_lora
from jaxselfeval.model.adapter import without_adapter
from jaxselfeval.model.probe_head import ProbeHead
from jaxselfeval.sample.probe import no_share
from jaxselfeval.selfeval import metrics as M
from jaxselfeval.selfeval.dataset import load_states
from jaxselfeval.selfeval.labels import TARGETS, token_targets
from jaxselfeval.selfeval.probe_fit import (ProbeStates, fit_probe_head, fit_probe_rows,
                                            probe_offsets, probe_states, rank_pairs)
from jaxselfeval.selfeval.rows import (SharedPromptBatches, encode_rows, encode_shared,
                                       forward_rows, hidden_rows, prompt_batches)
from jaxselfeval.sharding import make_mesh

log = logging.getLogger(__name__)


def make_loss(yes: int, no: int, lm_weight: float, mass_weight: float = 1.0,
              kl_weight: float = 0.0):
    """loss_fn(model, batch) -> (loss, metrics). batch: either layout of `selfeval.rows` (flat
    rows, or shared prompts and their rows' continuations): the same loss on the same rows.

    The probe term is the cross-entropy of the probe position's next-token distribution against
    (No: t, Yes: 1 - t). It splits exactly into the binary cross-entropy of the score
    P(No) / (P(Yes) + P(No)) against t ("score_loss") plus -log(P(Yes) + P(No)) ("mass_loss": how
    much of the distribution the two answers hold); mass_weight 1 is that cross-entropy, a
    smaller weight moves a model that never answered Yes/No there more gently.

    Two terms keep the policy where it was, both on the sampled responses' tokens
    (batch["mask"]): lm_weight x the LM loss on the samples (which also pulls the policy toward
    the temperature they were drawn at), and kl_weight x KL(base || model), the full next-token
    distributions of the frozen base (the same model with its adapter off: LoRA only) and of the
    model being trained ("kl": mean over those positions, in nats).
    """
    def loss_fn(model, batch):
        tokens, last, t = batch["tokens"], batch["last"], batch["target"]
        logits = forward_rows(model, batch)
        lp = jax.nn.log_softmax(jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], -1)
        pair = jnp.stack([lp[:, yes], lp[:, no]], -1)
        mass = jax.nn.logsumexp(pair, -1)  # log(P(Yes) + P(No))
        score = -(t * (pair[:, 1] - mass) + (1 - t) * (pair[:, 0] - mass)).mean()
        mass_loss = -mass.mean()
        loss = score + mass_weight * mass_loss
        out = {"probe_loss": score + mass_loss, "score_loss": score, "mass_loss": mass_loss}
        m = batch["mask"][:, :-1]
        n = jnp.maximum(m.sum(), 1.0)
        if lm_weight:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
            lm = (ce * m).sum() / n
            loss = loss + lm_weight * lm
            out["lm_loss"] = lm
        if kl_weight:
            base = forward_rows(without_adapter(model), batch)
            base = jax.nn.log_softmax(jax.lax.stop_gradient(base[:, :-1]), -1)
            kl = (jnp.exp(base) * (base - jax.nn.log_softmax(logits[:, :-1], -1))).sum(-1)
            kl = (kl * m).sum() / n
            loss = loss + kl_weight * kl
            out["kl"] = kl
        out["loss"] = loss
        return loss, out

    return loss_fn


def _score_at(model, h, last, ids):
    """P(No) / (P(Yes) + P(No)) from the final hidden states h [B, S, D] at positions last [B]:
    the sampler's own score function (`no_share`: two LM-head columns). f32 [B]."""
    return no_share(model, h[jnp.arange(h.shape[0]), last], ids)


@functools.partial(jax.jit, static_argnums=0)
def _probe_scores(graphdef, state, tokens, last, ids):
    model = nnx.merge(graphdef, state)
    return _score_at(model, model.forward(tokens)[0], last, ids)


@functools.partial(jax.jit, static_argnums=0)
def _shared_probe_scores(graphdef, state, batch, ids):
    model = nnx.merge(graphdef, state)
    return _score_at(model, hidden_rows(model, batch), batch["last"], ids)


def scores(model, tokens, last, yes: int, no: int, batch: int = 64) -> np.ndarray:
    """P(No) / (P(Yes) + P(No)) at each row's probe position. f32 [N] (one compile per shape)."""
    g, st = nnx.split(model)
    ids = jnp.asarray([yes, no], jnp.int32)
    out = []
    for s in range(0, len(tokens), batch):
        t, l = tokens[s:s + batch], last[s:s + batch]
        pad = batch - len(t)
        if pad:
            t = np.concatenate([t, np.zeros((pad, t.shape[1]), t.dtype)])
            l = np.concatenate([l, np.zeros(pad, l.dtype)])
        out.append(np.asarray(_probe_scores(g, st, t, l, ids))[:batch - pad])
    return np.concatenate(out)


def shared_scores(model, d: dict, yes: int, no: int, rows: int = 256) -> np.ndarray:
    """`scores` of the rows of a shared-prompt layout (`encode_shared`), each prompt's keys and
    values computed once for all its rows (`prompt_batches`). f32 [N]."""
    g, st = nnx.split(model)
    ids = jnp.asarray([yes, no], jnp.int32)
    out = np.zeros(len(d["tokens"]), np.float32)
    for idx, b in prompt_batches(d, rows):
        s = np.asarray(_shared_probe_scores(g, st, b, ids))
        out[idx[idx >= 0]] = s[idx >= 0]
    return out


def retarget(rows: list[dict], target: str) -> list[dict]:
    """The rows with their "target" under `target` (the data holds the capability targets; a
    "reward" target is each row's own reward): the token's targets are a training choice."""
    if target == "capability":
        return rows
    return [{**r, "target": float(t)} for r, t in
            zip(rows, token_targets([r["reward"] for r in rows], target))]


def validate(model, val, spec) -> dict:
    """AUROC (win vs lose; pooled over prompts and within each prompt) of full responses and of
    each truncation point, Brier and ECE against the soft targets.

    Two readings of truncation point t: "auroc_trunc{t}" over the responses still running at t
    (the truncated rows), "auroc_at{t}" over every response, one that finished within t tokens
    counted as its complete self (what pruning at t sees). val["length"]: response tokens [N]."""
    if "h" in val:  # the probe states the build kept: the model's own read of them
        s = np.asarray(no_share(model, jnp.asarray(val["h"]),
                                jnp.asarray([spec.yes, spec.no], jnp.int32)))
    elif "prompt" in val:  # the shared-prompt layout
        s = shared_scores(model, val, spec.yes, spec.no)
    else:
        s = scores(model, val["tokens"], val["last"], spec.yes, spec.no)
    tr, rew, tgt = val["truncation"], val["reward"], val["target"]
    full = tr == 0
    ex = val["example"]
    res = {"auroc_full": M.auroc(s[full], rew[full] > 0.5),
           "auroc_within_full": M.auroc_within(s[full], rew[full], ex[full]),
           "brier_full": M.brier(s[full], tgt[full]), "ece_full": M.ece(s[full], tgt[full]),
           "ece_all": M.ece(s, tgt), "mean_score": float(s.mean())}
    for t in sorted(set(tr[~full].tolist())):
        res[f"auroc_trunc{t}"] = M.auroc(s[tr == t], rew[tr == t] > 0.5)
        res[f"auroc_within_trunc{t}"] = M.auroc_within(s[tr == t], rew[tr == t], ex[tr == t])
        if "length" in val:
            at = (tr == t) | (full & (val["length"] <= t))
            res[f"auroc_at{t}"] = M.auroc(s[at], rew[at] > 0.5)
            res[f"auroc_within_at{t}"] = M.auroc_within(s[at], rew[at], ex[at])
    res["_scores"] = s
    return res


def _probe_states(model, shared: dict, spec, cfg) -> ProbeStates:
    """The frozen model's `ProbeStates` on the training rows' shared-prompt layout, read once
    and kept in out_dir (`probe_states.npz`): a rerun with another budget refits in seconds."""
    path = Path(cfg.out_dir) / "probe_states.npz"
    if path.exists():
        with np.load(path) as f:
            return ProbeStates(**{k: f[k] for k in f.files})
    ps = probe_states(model, shared, spec.yes, spec.no)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **dataclasses.asdict(ps))
    write_atomic(path, buf.getvalue())
    return ps


def _kept_probe_states(data: Path, split: str, rows: list[dict], keep) -> np.ndarray:
    """The final states at the probe f32 [len(keep), D] the build kept for rows[keep]
    (`BuildConfig.probe_states`), read while they were sampled: no pass over the rows."""
    ids, H = load_states(data, split)
    log.info("%s: the probe states the build kept (%d rows)", split, len(keep))
    return H[[ids[rows[i]["id"]] for i in keep]]


def _start_probe_rows(model, shared: dict, spec, cfg) -> None:
    """The LM head's probe rows start at the fit (`selfeval.probe_fit`), within
    `cfg.probe_rows_leak`."""
    ps = _probe_states(model, shared, spec, cfg)
    model.lora.set_vocab_rows(fit_probe_rows(ps, shared["target"], leak=cfg.probe_rows_leak))


def _fit_probe_head(model, shared: dict, rows: list[dict], spec, cfg, kept=None) -> None:
    """`model.probe_head`: the fit, ranking each prompt's right rows above its wrong ones (of
    the same truncation) with weight `cfg.probe_rank_weight`, on the probe states the build
    kept (`kept` [N, D]: the rows' `_kept_probe_states`) or else read by a pass over the rows."""
    if kept is not None:
        ps = ProbeStates(kept, probe_offsets(model, kept, spec.yes, spec.no),
                         np.zeros((0, kept.shape[1]), np.float32), np.zeros((0, 2), np.float32))
    else:
        ps = _probe_states(model, shared, spec, cfg)
    keep = shared["keep"]
    right = np.asarray([rows[i]["reward"] > 0.5 for i in keep])
    trunc = np.asarray([rows[i]["truncation"] for i in keep], np.int64)
    pairs = rank_pairs(shared["group"].astype(np.int64) * (trunc.max() + 1) + trunc, right)
    delta = fit_probe_head(ps, shared["target"], pairs, cfg.probe_rank_weight, cfg.probe_l2)
    model.probe_head = ProbeHead((spec.yes, spec.no), delta)


@dataclasses.dataclass
class SelfEvalConfig:
    data_dir: str = "runs/capability_data"
    model: str | None = None  # the policy the data was sampled from (default: from the data)
    out_dir: str = "runs/selfeval"
    export_dir: str | None = None
    seq_len: int = 192
    batch_size: int = 32
    steps: int = 400  # 0: no optimiser step (with lora.probe_rows: the fitted rows alone)
    lr: float = 1e-3
    warmup_steps: int = 20
    lm_weight: float = 0.1
    kl_weight: float = 0.0  # KL(frozen base || model) on the samples' tokens (needs lora)
    mass_weight: float = 1.0  # weight of -log(P(Yes) + P(No)) (1: plain cross-entropy)
    # what the token predicts (selfeval.labels.TARGETS): "capability" (the paper's: the share of
    # a prompt's other samples that do not beat this one) or "reward" (P(this answer is right))
    target: str = "capability"
    seed: int = 0
    # each batch holds batch_size / rows_per_prompt prompts and rows_per_prompt of each one's rows
    # (responses and truncations): a prompt's keys and values are computed once for its rows
    # (about half the tokens of a whole row each); 0: whole rows, batches drawn row by row
    rows_per_prompt: int = 4
    eval_every: int = 200
    compute_dtype: str = "float32"
    mesh: str = "data=-1"
    remat: bool = False  # recompute each layer in the backward pass (less activation memory)
    # a section, e.g. {rank: 16, alpha: 32, targets: [wq, wk, wv, wo]} or lora.rank=16: train
    # adapters only (base frozen), merged into the weights at export; null: every weight
    lora: LoRAConfig | None = None
    # with lora.probe_rows: the fitted start's budget of the probability it adds to the policy
    # writing Yes or No, per token written (exact: the rows move only those two logits)
    probe_rows_leak: float = 1e-4
    # the token as the probe's own Yes / No rows, fitted (steps: 0, no lora): read at the probe
    # only, so the policy stays the base model exactly and the fit needs no budget
    # (`model.probe_head`, exported as probe_head.safetensors beside the weights)
    probe_head: bool = False
    # with probe_head: the weight of ranking each prompt's right answers above its wrong ones
    # in the fit (the read within a prompt, what Best-of-n picks by)
    probe_rank_weight: float = 0.0
    # with probe_head: the fit's L2 penalty on standardised features (weaker with more rows:
    # scripts/probe_head_cv.py cross-validates it)
    probe_l2: float = 1e-3


def train_selfeval(cfg: SelfEvalConfig, *, progress=True) -> tuple[Path, dict]:
    import jaxselfeval as jse
    from jaxselfeval.sample.probe import probe_spec
    from jaxselfeval.selfeval.dataset import load_rows
    from jaxselfeval.tokenizer import load_tokenizer
    from jaxselfeval.train import TrainConfig, run_training
    from jaxselfeval.train.data import Batches

    data = Path(cfg.data_dir)
    if not (data / "build_config.json").exists():
        raise JSEError(f"no capability dataset in '{data}': run `jaxselfeval data build` first")
    if cfg.steps and cfg.kl_weight and cfg.lora is None:
        raise JSEError("kl_weight needs lora: the frozen base is the model with its adapters "
                       "off; set lora={rank: 16, ...} or use lm_weight for full fine-tuning")
    if cfg.steps < 0:
        raise JSEError(f"steps must be >= 0 (0: no optimiser step), got {cfg.steps}")
    if cfg.probe_head and (cfg.steps or cfg.lora is not None):
        raise JSEError("probe_head is fitted, not trained: set steps=0 and lora=null (or use "
                       "lora.probe_rows to train the LM head's rows)")
    if cfg.probe_l2 < 0:
        raise JSEError(f"probe_l2 must be >= 0, got {cfg.probe_l2}")
    if cfg.target not in TARGETS:
        raise JSEError(f"target must be one of {', '.join(TARGETS)}, got {cfg.target!r}")
    built = json.loads((data / "build_config.json").read_text())
    model_dir = cfg.model or built["model"]
    tok = load_tokenizer(model_dir)
    spec = probe_spec(tok)
    model = jse.load_pretrained(model_dir, compute_dtype=cfg.compute_dtype)
    if cfg.lora is not None:
        add_lora(model, cfg.lora, seed=cfg.seed, rows=(spec.yes, spec.no))
        log.info("LoRA: training %d adapter parameters, the base is frozen",
                 count_lora_params(model))
    probe_rows = cfg.lora is not None and model.lora.row_ids is not None  # lora.probe_rows
    resumed = (Path(cfg.out_dir) / "ckpt").exists()
    tr_rows = retarget(load_rows(data, "train"), cfg.target)
    shared = (encode_shared(tr_rows, spec.after, cfg.seq_len)
              if cfg.rows_per_prompt or probe_rows or cfg.probe_head else None)
    if cfg.rows_per_prompt:
        batches = SharedPromptBatches(shared, cfg.batch_size, cfg.rows_per_prompt, cfg.seed)
        batches.check_mesh(make_mesh(cfg.mesh))
        n_train = len(shared["tokens"])
    else:
        tk, mk, last, tgt, _ = encode_rows(tr_rows, spec, cfg.seq_len)
        batches = Batches(tk, mk, cfg.batch_size, cfg.seed, last=last, target=tgt)
        n_train = len(tk)
    if probe_rows:  # after every check of the settings: the fit is a pass over the rows
        _start_probe_rows(model, shared, spec, cfg)
    # a probe head reads the frozen model's own states: those the build kept, if it kept them
    # and sampled from this model
    kept = cfg.probe_head and built.get("probe_states", False) and built["model"] == model_dir
    if cfg.probe_head:
        _fit_probe_head(model, shared, tr_rows, spec, cfg,
                        _kept_probe_states(data, "train", tr_rows, shared["keep"])
                        if kept else None)
    va_rows = retarget(load_rows(data, "validation"), cfg.target)
    if cfg.rows_per_prompt:
        val = encode_shared(va_rows, spec.after, cfg.seq_len)
        keep = val["keep"]
    else:
        vt, vm, vl, vtg, keep = encode_rows(va_rows, spec, cfg.seq_len)
        val = {"tokens": vt, "last": vl, "target": vtg}
    val |= {"truncation": np.asarray([va_rows[i]["truncation"] for i in keep]),
           "reward": np.asarray([va_rows[i]["reward"] for i in keep]),
           "example": np.asarray([va_rows[i]["example"] for i in keep]),
           "length": np.asarray([len(va_rows[i]["response_ids"]) for i in keep])}
    if kept:
        val["h"] = _kept_probe_states(data, "validation", va_rows, keep)
    log.info("%d train rows, %d validation rows", n_train, len(val["tokens"]))
    history = []

    def log_validation(step, v):
        history.append({"step": step, **{k: x for k, x in v.items() if k != "_scores"}})
        log.info("step %d validation: %s", step,
                 {k: round(x, 4) for k, x in v.items() if k != "_scores"})

    def on_step(step, rec, get_model):
        if step % cfg.eval_every == 0 and step < cfg.steps:  # the last step's is `final`
            log_validation(step, validate(get_model(), val, spec))

    if probe_rows and cfg.steps and not resumed:  # the fitted start alone, before any step
        log_validation(0, validate(model, val, spec))
    if cfg.steps:
        tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                           warmup_steps=cfg.warmup_steps, seed=cfg.seed, mesh=cfg.mesh,
                           compute_dtype=cfg.compute_dtype,
                           checkpoint_every=max(cfg.steps // 4, 1), remat=cfg.remat,
                           min_lr_ratio=0.1, weight_decay=0.0)
        loss = make_loss(spec.yes, spec.no, cfg.lm_weight, cfg.mass_weight, cfg.kl_weight)
        model, _ = run_training(model, batches, loss, tcfg,
                                out_dir=cfg.out_dir, progress=progress, on_step=on_step)
    final = validate(model, val, spec)
    log_validation(cfg.steps, final)
    s = final.pop("_scores")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    M.plot_reliability(s, val["target"], out / "reliability.png",
                       title="Capability token on held-out prompts")
    (out / "validation.json").write_text(json.dumps({"final": final, "history": history}, indent=2))
    export = Path(cfg.export_dir or out / "hf")
    if cfg.lora is not None:
        model = merge_lora(model)
    jse.save_pretrained(model, export, tokenizer_dir=model_dir)
    (export / "selfeval.json").write_text(json.dumps({"trained": True, "target": cfg.target,
                                                      "probe_head": cfg.probe_head,
                                                      "validation": final,
                                                      "base_model": str(model_dir)}, indent=2))
    return export, final
