"""`jaxselfeval data build`: the capability dataset, sampled on-policy.

For every prompt: n samples from the current model, a reward per sample (the task's verifier),
the capability target per sample, and mid-generation copies truncated at configured token counts
with the same target. Shards of `shard_prompts` prompts are written atomically (tmp + rename)
as JSONL, so a build killed at any moment resumes with no row lost or duplicated; sampling keys
depend only on (seed, prompt index, candidate), so a resumed build equals an uninterrupted one.
Finally a TFDS builder turns the shards into array_record files read with `tfds.data_source`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import write_atomic
from jaxselfeval.selfeval.capability_builder import load_rows, write_tfds  # noqa: F401 (public here)
from jaxselfeval.selfeval.labels import capability_targets, truncation_points
from jaxselfeval.selfeval.reward_model import check_rm_tokenizer, load_reward_model, score_sequences

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BuildConfig:
    model: str | None = None  # HF directory (default: the shipped tiny base model)
    task: str = "arithmetic"
    task_args: dict = dataclasses.field(default_factory=dict)  # the task's options (get_task)
    splits: dict = dataclasses.field(default_factory=lambda: {"train": 600, "validation": 150})
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus sampling (1 = none)
    max_new_tokens: int = 96
    truncations: list = dataclasses.field(default_factory=lambda: [8, 16])
    margin: float = 0.0
    shard_prompts: int = 50
    seed: int = 0
    out_dir: str = "runs/capability_data"
    # Without a verifier: prompts from JSONL files of user turns ({"prompt": ...} or
    # {"messages": [...]}, one per line), e.g. {train: a.jsonl, validation: b.jsonl}, and the
    # rewards of an HF LlamaForSequenceClassification reward model (also usable with a task).
    prompt_files: dict | None = None
    reward_model: str | None = None
    skip_bad_lines: bool = False  # malformed prompt-file lines: skip (counted) instead of an error
    on_too_long: str = "skip"  # prompts longer than the context minus max_new_tokens: skip | error
    # Where the policy (and reward model) sample: weight dtype, and a mesh over each host's own
    # devices such as "tensor=4" (null: one device). The rows do not depend on the mesh.
    dtype: str = "float32"
    mesh: str | None = None
    # prompts sampled at once (batch_prompts x n candidate rows decode together; null: a whole
    # shard). Size it to the chips with `jaxselfeval plan --decode-batch`; rows do not depend on it.
    batch_prompts: int | None = None
    # also keep each row's final state at the probe's last position, read while sampling (the
    # response is in the cache: the probe turn's few tokens per row), in shards/*.states.npy:
    # what a probe head is fitted to (`SelfEvalConfig.probe_head`), with no second pass
    probe_states: bool = False


def _write_atomic(path: Path, rows: list[dict]):
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


@dataclasses.dataclass
class Item:
    """One prompt to sample: id, chat-template token ids, difficulty (0 when unknown) and the
    task example it came from (None for prompt-file prompts)."""

    id: str
    prompt_ids: list
    difficulty: int = 0
    example: object = None


def task_items(task, tokenizer, split: str, limit: int) -> list[Item]:
    from jaxselfeval.tokenizer import encode_chat

    return [Item(e.id, encode_chat(tokenizer, task.messages(e)), int(e.difficulty), e)
            for e in task.examples(split)[:limit]]


def file_items(path, tokenizer, limit: int, cfg: "BuildConfig", context: int) -> list[Item]:
    from jaxselfeval.selfeval.prompts import load_prompts

    ps = load_prompts(path, tokenizer, max_prompt_len=context - cfg.max_new_tokens,
                      on_too_long=cfg.on_too_long, skip_bad_lines=cfg.skip_bad_lines)
    return [Item(f"{Path(path).name}:{ln}", ids) for ids, ln in
            zip(ps.token_ids[:limit], ps.line[:limit])]


def sample_rows(engine, items: list[Item], reward, *, offset, cfg: BuildConfig,
                spec=None) -> tuple[list[dict], np.ndarray | None]:
    """Rows for a chunk of prompts (prompt index = offset + i keys the sampler), sampled
    `cfg.batch_prompts` prompts at a time. reward(items, responses per item) -> one reward list
    per item. With `cfg.probe_states` (and the probe's `spec`): each row's final state at the
    probe, f32 [rows, D] in row order, read as the decode passes each truncation point and at
    its end (the same tokens: keys depend on the step, not on where decoding paused); else
    None."""
    from jaxselfeval.sample import Engine

    prompts = [it.prompt_ids for it in items]
    step = cfg.batch_prompts or len(items)
    points = sorted({int(t) for t in cfg.truncations if int(t) < cfg.max_new_tokens})
    resps, at = [], {t: [] for t in [0] + points}  # at[t]: states [candidates, D] at t tokens
    for s in range(0, len(items), step):
        P = engine.prefill(prompts[s:s + step], prompt_offset=offset + s)
        C = engine.branch(P, cfg.n, cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p)
        for t in points if cfg.probe_states else []:
            C = engine.decode(P, C, until=t)
            at[t].append(np.asarray(engine.probe_hidden(P, C, spec)))
        C = engine.decode(P, C)
        if cfg.probe_states:
            at[0].append(np.asarray(engine.probe_hidden(P, C, spec)))
        outs = Engine.outputs(C)
        resps += [outs[i * cfg.n:(i + 1) * cfg.n] for i in range(len(outs) // cfg.n)]
    at = {t: np.concatenate(v) for t, v in at.items() if v}
    rows, where = [], []
    for i, (it, resp, rewards) in enumerate(zip(items, resps, reward(items, resps))):
        targets = capability_targets(rewards, cfg.margin)
        for c, (r, rew, t) in enumerate(zip(resp, rewards, targets)):
            for tr in [0] + truncation_points(len(r), cfg.truncations):
                rows.append({"id": f"{offset + i}-{c}-{tr}", "example": it.id,
                             "prompt_ids": prompts[i], "response_ids": r if tr == 0 else r[:tr],
                             "truncation": tr, "target": float(t), "reward": float(rew),
                             "difficulty": it.difficulty})
                where.append((tr, i * cfg.n + c))
    if not cfg.probe_states:
        return rows, None
    D = engine.config.hidden_size
    return rows, np.stack([at[tr][k] for tr, k in where]).astype(np.float32).reshape(-1, D)


def states_path(shard: Path) -> Path:
    """Where a shard's probe states lie: shards/train-00000.jsonl -> train-00000.states.npy."""
    return shard.with_name(shard.stem + ".states.npy")


def load_states(out_dir, split: str) -> tuple[dict[str, int], np.ndarray]:
    """The probe states a build kept (`BuildConfig.probe_states`) for one split: (row id -> row
    of the array, f32 [rows, D])."""
    out = Path(out_dir)
    conf = json.loads((out / "build_config.json").read_text())
    if not conf.get("probe_states"):
        raise JSEError(f"the dataset at {out} was built without probe_states: rebuild it with "
                       f"probe_states=true (a new out_dir) to fit a probe head from it")
    ids, arrays = {}, []
    for shard in sorted((out / "shards").glob(f"{split}-*.jsonl")):
        if not states_path(shard).exists():
            raise JSEError(f"{states_path(shard)} is missing (written before its shard): remove "
                           f"{shard} and build again to sample it anew")
        a = np.load(states_path(shard))
        for line in shard.read_text().splitlines():
            ids[json.loads(line)["id"]] = len(ids)
        arrays.append(a)
    H = np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)
    if len(H) != len(ids):
        raise JSEError(f"the probe states of split {split} in {out} do not match its rows "
                       f"({len(H)} states, {len(ids)} rows): rebuild it in a new out_dir")
    return ids, H


def make_reward(cfg: BuildConfig, task, tokenizer, mesh=None):
    """reward(items, responses) from the reward model if configured (on `mesh`), else the task's
    verifier."""
    if cfg.reward_model:
        rm = load_reward_model(cfg.reward_model, cfg.dtype, mesh=mesh)

        def by_rm(items, resps):
            seqs = [it.prompt_ids + r for it, rs in zip(items, resps) for r in rs]
            s = score_sequences(rm, seqs).tolist()
            return [s[i * cfg.n:(i + 1) * cfg.n] for i in range(len(items))]

        return by_rm

    def by_verifier(items, resps):
        return [[task.verify(it.example, tokenizer.decode(r)) for r in rs]
                for it, rs in zip(items, resps)]

    return by_verifier


def build_dataset(cfg: BuildConfig, *, progress: bool = True) -> Path:
    """Sample every split's prompts shard by shard (skipping finished shards), then write TFDS.

    Multi-host (after `jax.distributed.initialize`): each process samples its own contiguous part
    of the missing shards on its local devices; process 0 writes the TFDS files once all are
    done. Sampling keys depend only on (seed, prompt index, candidate), so the dataset is the one
    a single process would write."""
    import jax

    import jaxselfeval as jse
    from jaxselfeval.assets import default_model_dir
    from jaxselfeval.distributed import barrier, host_shard
    from jaxselfeval.sample import Engine, probe_spec
    from jaxselfeval.sharding import local_mesh
    from jaxselfeval.tasks import get_task
    from jaxselfeval.tokenizer import load_tokenizer

    check_build_config(cfg)  # before anything is written
    mesh = local_mesh(cfg.mesh)  # a mesh that does not fit this host's devices fails here too
    out = Path(cfg.out_dir)
    shards = out / "shards"
    model_dir = cfg.model or str(default_model_dir())
    settings = dataclasses.asdict(cfg) | {"model": model_dir}
    check_same_settings(out, settings)
    tok = load_tokenizer(model_dir)
    if cfg.reward_model:
        check_rm_tokenizer(cfg.reward_model, tok)
    shards.mkdir(parents=True, exist_ok=True)
    main = jax.process_index() == 0  # starts the backend: after jax.distributed.initialize
    if main:
        write_atomic(out / "build_config.json", json.dumps(settings, indent=2))
    task = None if cfg.prompt_files else get_task(cfg.task, **cfg.task_args)
    todo = []
    for split, limit in cfg.splits.items():
        if cfg.prompt_files:
            from jaxselfeval.model.config import read_hf_config

            ctx = read_hf_config(model_dir).max_position_embeddings
            exs = file_items(cfg.prompt_files[split], tok, limit, cfg, ctx)
        else:
            exs = task_items(task, tok, split, limit)
        for s in range(0, len(exs), cfg.shard_prompts):
            path = shards / f"{split}-{s // cfg.shard_prompts:05d}.jsonl"
            if not path.exists():
                todo.append((split, s, exs[s:s + cfg.shard_prompts], path))
    barrier("jse_data_build_listed")  # every process listed the same missing shards before writing
    mine = host_shard(todo, jax.process_index(), jax.process_count())
    if jax.process_count() > 1:
        log.info("process %d samples %d of the %d missing shards", jax.process_index(), len(mine),
                 len(todo))
    if mine:
        model = jse.load_pretrained(model_dir, cfg.dtype, mesh=mesh)
        eng = Engine(model, stop_ids=(tok.eos_token_id,), seed=cfg.seed)
        reward = make_reward(cfg, task, tok, mesh)
        spec = probe_spec(tok) if cfg.probe_states else None
        base = {"train": 0, "validation": 10**6, "test": 2 * 10**6}
        for split, s, exs, path in tqdm(mine, desc="sampling shards", disable=not progress):
            rows, states = sample_rows(eng, exs, reward, offset=base.get(split, 0) + s, cfg=cfg,
                                       spec=spec)
            if states is not None:  # before its shard: a shard present has its states
                buf = io.BytesIO()
                np.save(buf, states)
                write_atomic(states_path(path), buf.getvalue())
            _write_atomic(path, rows)
    elif not todo:
        log.info("all shards present in %s: nothing to sample", shards)
    barrier("jse_data_build_sampled")
    if main:
        write_tfds(out, progress=progress)
    barrier("jse_data_build_written")
    return out


# settings that do not change the rows: a build may resume with other values
_RESUMABLE_WITH_OTHER = ("out_dir", "mesh", "batch_prompts")


def check_same_settings(out: Path, settings: dict):
    """A build resumes into `out` only with the settings its shards were sampled with (a resumed
    build must equal an uninterrupted one); one-line error naming what differs otherwise."""
    old_path = out / "build_config.json"
    if not old_path.exists() or not any((out / "shards").glob("*.jsonl")):
        return
    defaults = dataclasses.asdict(BuildConfig())  # keys added since that build: their defaults
    old = defaults | json.loads(old_path.read_text())
    settings = json.loads(json.dumps(settings))  # as written: tuples -> lists
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
            if k not in _RESUMABLE_WITH_OTHER and old.get(k) != v]
    if diff:
        raise JSEError(f"{out} holds shards sampled with other settings ({'; '.join(diff)}): "
                       f"build with the same settings to resume, or remove it / pick another "
                       f"out_dir")


def check_build_config(cfg: BuildConfig):
    """One-line errors for settings that cannot work together."""
    if cfg.prompt_files is not None:
        if not cfg.reward_model:
            raise JSEError("prompt_files need a reward_model (an HF LlamaForSequenceClassification "
                           "directory): prompts from a file have no verifier")
        missing = [s for s in cfg.splits if s not in cfg.prompt_files]
        if missing:
            raise JSEError(f"prompt_files has no file for split(s) {', '.join(missing)}: give "
                           f"prompt_files={{{', '.join(f'{s}: FILE' for s in cfg.splits)}}}")
        for s in cfg.splits:
            if not Path(cfg.prompt_files[s]).is_file():
                raise JSEError(f"prompt file '{cfg.prompt_files[s]}' (split {s}) does not exist")
    if cfg.on_too_long not in ("skip", "error"):
        raise JSEError(f"on_too_long={cfg.on_too_long!r}: use 'skip' or 'error'")
    if cfg.n < 1:
        raise JSEError(f"n must be >= 1, got {cfg.n}")
    if cfg.batch_prompts is not None and cfg.batch_prompts < 1:
        raise JSEError(f"batch_prompts must be >= 1 (or null: a whole shard), got {cfg.batch_prompts}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise JSEError(f"dtype={cfg.dtype!r}: use float32 or bfloat16")
