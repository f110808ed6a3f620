"""Memory plan: AOT-compile the train step and the sampler's prefill / decode for abstract,
sharded arrays and read XLA's per-device buffer sizes. Needs no weights and no accelerator.

    simulate_devices(16)                  # before JAX starts a backend: 16 simulated CPU devices
    res = run_plan(PlanConfig(model="llama3_1_8b", mesh="fsdp=16", chip="v5p-32", seq=4096))
    print(format_plan(res))

Each program is `jax.jit(...).lower(ShapeDtypeStructs with shardings).compile()`;
`compiled.memory_analysis()` gives bytes per device: arguments (params, optimizer state, caches),
outputs, aliased (donated buffers reused as outputs), temporaries, generated code.
total = arguments + outputs - aliased + temps + code, compared with the chip's HBM.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from jaxselfeval.errors import JSEError, closest

GiB = 1024**3
HBM = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB,
       "h100": 80 * 10**9, "h200": 141 * 10**9}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "tpu-v4": "v4"}
CORES_PER_CHIP = {"v4": 2, "v5p": 2}  # v4-N / v5p-N count TensorCores; v5e-N, v6e-N count chips
PROGRAMS = ("train", "prefill", "decode")


def parse_chip(spec: str) -> tuple[str, int | None]:
    """'v5p' -> ('v5p', None); 'v5p-32' -> ('v5p', 16) (JAX devices in the slice);
    'v5litepod-16' -> ('v5e', 16); 'h100-8' -> ('h100', 8)."""
    s = spec.strip().lower()
    name, _, n = s.rpartition("-")
    if not (name and n.isdigit()):
        name, n = s, None
    name = ALIASES.get(name, name)
    if name not in HBM:
        raise JSEError(f"unknown chip '{spec}'{closest(name, HBM)}: use one of "
                       f"{', '.join(HBM)} (optionally with a slice size, e.g. v5p-32, v5e-16)")
    if n is None:
        return name, None
    n = int(n)
    per = CORES_PER_CHIP.get(name, 1)
    if n < per or n % per:
        raise JSEError(f"'{spec}': {name} slice sizes count TensorCores ({per} per chip), so use "
                       f"a multiple of {per}")
    return name, n // per


@dataclasses.dataclass
class PlanConfig:
    """What to compile. batch: global training batch (sequences of `seq` tokens);
    decode_batch: candidate rows (n per prompt) with `prompt_len` + `max_new` cache slots."""

    model: str = "llama3_1_8b"
    mesh: str | None = None
    chip: str = "v5p"
    programs: tuple[str, ...] = PROGRAMS
    batch: int = 8
    seq: int = 2048
    grad_accum: int = 1
    remat: bool = True
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    lora: dict | None = None  # e.g. {"rank": 16, "targets": ["wq", "wv"]}: train adapters only
    decode_batch: int = 8
    n: int = 1
    prompt_len: int = 2048
    max_new: int = 2048
    weights_dtype: str = "bfloat16"  # serving weights (prefill / decode)
    backend: str = "auto"  # cpu: simulated CPU devices; tpu: libtpu's deviceless compiler
    attention: str = "auto"  # auto | exact | blockwise | splash | cudnn (model.attention.IMPLS)
    activation_sharding: bool = True  # trace under jax.set_mesh (batch-sharded activations)


def mesh_devices(cfg: PlanConfig) -> int:
    """Number of devices the plan needs (mesh product, or the chip slice's device count)."""
    from jaxselfeval.sharding import parse_mesh

    _, slice_n = parse_chip(cfg.chip)
    sizes = parse_mesh(cfg.mesh if cfg.mesh else ("fsdp=-1" if slice_n else None))
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if slice_n is None:
            raise JSEError(f"mesh '{cfg.mesh or 'fsdp=-1'}' needs a device count: give every axis "
                           "a size (e.g. fsdp=16) or a slice as --chip (e.g. v5p-32)")
        if slice_n % fixed:
            raise JSEError(f"mesh {sizes} does not divide the {slice_n} devices of {cfg.chip}")
        return slice_n
    if slice_n is not None and fixed != slice_n:
        raise JSEError(f"mesh {sizes} has {fixed} devices but {cfg.chip} has {slice_n} JAX "
                       f"devices: make the axis sizes multiply to {slice_n}")
    return fixed


def simulate_devices(n: int):
    """Ask for `n` simulated CPU devices (XLA_FLAGS). Call it before anything starts a JAX
    backend: a started backend keeps its devices (the mesh check then names the mismatch).
    Harmless on TPU/GPU hosts (it only affects the CPU platform)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def tpu_topology(chip: str, n: int) -> str:
    """libtpu topology name for n chips: v5e/v6e are 2D (4x4), v4/v5p 3D (2x2x4)."""
    e = n.bit_length() - 1
    if n < 1 or 1 << e != n:
        raise JSEError(f"{n} {chip} chips is not a TPU slice shape: use a power of two")
    if chip in ("v5e", "v6e"):
        return f"{chip}:{1 << (e // 2)}x{1 << (e - e // 2)}"
    dims = (2, 2, 1) if n == 4 else tuple(1 << (e // 3 + (i >= 3 - e % 3)) for i in range(3))
    return f"{chip}:{'x'.join(map(str, dims))}"


def _has_libtpu() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def plan_devices(n: int, chip: str = "v5p", backend: str = "auto"):
    """(devices, where): TPU chips compile with libtpu's deviceless compiler when it is installed
    (`pip install jax[tpu]`; real TPU buffer assignment), else n simulated CPU devices (or the
    accelerators themselves when exactly n are attached)."""
    import jax

    if backend not in ("auto", "cpu", "tpu"):
        raise JSEError(f"unknown backend '{backend}': use auto, cpu or tpu")
    tpu = chip not in ("h100", "h200")
    if backend == "tpu" and not tpu:
        raise JSEError(f"backend tpu compiles for TPU chips, not {chip}: use --backend cpu")
    if backend == "tpu" and not _has_libtpu():
        raise JSEError("backend tpu needs libtpu: pip install 'jax[tpu]' (or use --backend cpu)")
    if tpu and backend in ("auto", "tpu") and _has_libtpu():
        from jax.experimental import topologies

        name = tpu_topology(chip, n)
        kw = {"chip_config_name": "megacore"} if chip == "v4" else {}
        devs = topologies.get_topology_desc(platform="tpu", topology_name=name, **kw).devices
        return list(devs), f"compiled for TPU topology {name} by libtpu (no TPU attached)"
    devs = jax.devices()
    if devs[0].platform != "cpu" and len(devs) == n:
        return devs, f"compiled on {n} attached {devs[0].platform.upper()} devices"
    cpu = jax.devices("cpu")
    if len(cpu) < n:
        raise JSEError(f"the plan needs {n} devices but this process has {len(cpu)} CPU devices: "
                       f"run it in a fresh process (`jaxselfeval plan` sets XLA_FLAGS="
                       f"--xla_force_host_platform_device_count={n} itself)")
    return cpu[:n], (f"simulated on {n} CPU devices (XLA:CPU buffer assignment: bf16 math is "
                     "widened to f32, so temps run higher than on TPU)")


# ----------------------------------------------------------------------------- abstract args
def _sds(shape, dtype, mesh, axes):
    import jax
    from jax.sharding import NamedSharding

    from jaxselfeval.sharding import logical_spec

    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=NamedSharding(mesh, logical_spec(axes, shape, mesh)))


def abstract_state(state, mesh):
    """nnx.State of abstract Variables -> the same with sharded ShapeDtypeStruct values."""
    import jax
    from flax import nnx

    from jaxselfeval.sharding import state_shardings

    sh = state_shardings(state, mesh)
    return jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
                        state, sh, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_opt_state(tx, params, mesh):
    """tx.init(params) as sharded ShapeDtypeStructs, placed as `train.step.init_opt_state`
    places them (`opt_state_shardings`)."""
    import jax

    from jaxselfeval.train.step import opt_state_shardings

    sh = opt_state_shardings(tx, params, jax.tree.map(lambda x: x.sharding, params), mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        jax.eval_shape(tx.init, params), sh)


def abstract_cache(cfg, batch, length, dtype, mesh):
    """The sampler's cache (`init_cache(..., mesh=mesh)`) as sharded ShapeDtypeStructs."""
    import jax

    from jaxselfeval.model.cache import cache_shardings, init_cache

    shapes = jax.eval_shape(lambda: init_cache(cfg, batch, length, dtype))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        cache_shardings(cfg, batch, length, mesh))


# ----------------------------------------------------------------------------- programs
def _compile(fn, pc: PlanConfig, mesh, *args):
    """fn.lower(*args).compile(), traced under jax.set_mesh(mesh) so the model's
    `shard_batch` constraints apply (as in a trainer / sampler that sets the mesh), with
    attention chosen for the mesh's devices (TPU: splash); `.attention` lists the kernels the
    program runs (read off the lowered program)."""
    import contextlib

    import jax

    from jaxselfeval.model.attention import attention_kernels

    ctx = jax.set_mesh(mesh) if pc.activation_sharding else contextlib.nullcontext()
    with ctx:
        lowered = fn.lower(*args)
        compiled = lowered.compile()
    compiled.attention = attention_kernels(lowered)
    return compiled


def compile_train(cfg, pc: PlanConfig, mesh):
    """The trainer's step (AdamW over f32 master weights, bf16 compute), or with `pc.lora`
    the LoRA step (adapters trained, base frozen in `param_dtype`)."""
    import jax
    from flax import nnx

    from jaxselfeval import lora as lora_mod
    from jaxselfeval.model.llama import abstract_model
    from jaxselfeval.train import TrainConfig, lm_loss
    from jaxselfeval.train.step import (jit_train_step, make_optimizer, make_train_step,
                                        split_trainable)

    data = mesh.shape["data"] * mesh.shape["fsdp"]
    if pc.batch % pc.grad_accum or (pc.batch // pc.grad_accum) % data:
        raise JSEError(f"batch {pc.batch} (micro-batch {pc.batch // max(pc.grad_accum, 1)}) is not "
                       f"divisible by the data axes (data x fsdp = {data}): change --batch or --mesh")
    model = abstract_model(cfg, param_dtype=pc.param_dtype, compute_dtype=pc.compute_dtype,
                           attention_impl=pc.attention)
    model.remat = pc.remat
    model.platform = mesh.devices.flat[0].platform  # auto attention picks this chip's kernel
    tx = make_optimizer(TrainConfig(steps=1000, warmup_steps=10))
    batch = {"tokens": _sds((pc.batch, pc.seq), "int32", mesh, ("batch", None)),
             "mask": _sds((pc.batch, pc.seq), "float32", mesh, ("batch", None))}
    if pc.lora is not None:
        lcfg = lora_mod.load_lora_config(pc.lora)
        model.lora = nnx.eval_shape(lambda: lora_mod.LoRA(cfg, lcfg, rngs=nnx.Rngs(0)))
    graphdef, params, frozen = split_trainable(model)
    params, frozen = abstract_state(params, mesh), abstract_state(frozen, mesh)
    opt = abstract_opt_state(tx, params, mesh)
    fn = jit_train_step(make_train_step(graphdef, lm_loss, tx, accum=pc.grad_accum), params,
                        frozen, opt, mesh)
    return _compile(fn, pc, mesh, params, frozen, opt, batch)


def _engine(cfg, pc: PlanConfig, mesh):
    from jaxselfeval.model.llama import abstract_model
    from jaxselfeval.sample.engine import Engine

    model = abstract_model(cfg, param_dtype=pc.weights_dtype, compute_dtype=pc.compute_dtype,
                           attention_impl=pc.attention)
    # traced for the mesh's chip (TPU: splash attention), the scan over stacked layers
    eng = Engine(model, stop_ids=cfg.eos_ids, platform=mesh.devices.flat[0].platform,
                 per_layer=False)
    return eng, abstract_state(eng.state, mesh)


def _prompts(cfg, pc, mesh, G):
    from jaxselfeval.sample.engine import Prompts

    return Prompts(abstract_cache(cfg, G, pc.prompt_len, pc.compute_dtype, mesh),
                   _sds((G,), "int32", mesh, ("batch",)),
                   _sds((G, cfg.vocab_size), "float32", mesh, ("batch", None)),
                   _sds((G,), "int32", mesh, ("batch",)))


def _groups(pc: PlanConfig) -> int:
    if pc.n < 1 or pc.decode_batch % pc.n:
        raise JSEError(f"decode batch {pc.decode_batch} is not a multiple of n={pc.n} candidates "
                       "per prompt: change --decode-batch or --n")
    return pc.decode_batch // pc.n


def compile_prefill(cfg, pc: PlanConfig, mesh):
    """Engine prefill: G = decode_batch / n prompts of prompt_len tokens into a fresh cache."""
    eng, state = _engine(cfg, pc, mesh)
    G = _groups(pc)
    toks = _sds((G, pc.prompt_len), "int32", mesh, ("batch", None))
    cache = abstract_cache(cfg, G, pc.prompt_len, pc.compute_dtype, mesh)
    return _compile(eng.programs.prefill, pc, mesh, state, toks, toks, cache, None)


def compile_decode(cfg, pc: PlanConfig, mesh):
    """Engine decode (the jitted while_loop of 1-token forwards, candidate cache donated):
    decode_batch rows attend to their prompt's shared cache + max_new own slots."""
    from jaxselfeval.sample.engine import Candidates

    eng, state = _engine(cfg, pc, mesh)
    G, B, T = _groups(pc), pc.decode_batch, pc.max_new

    def vec(dtype):
        return _sds((B,), dtype, mesh, ("batch",))

    cands = Candidates(cache=abstract_cache(cfg, B, T, pc.compute_dtype, mesh),
                       tokens=_sds((B, T), "int32", mesh, ("batch", None)),
                       next_token=vec("int32"), length=vec("int32"), done=vec("bool"),
                       temperature=vec("float32"), top_p=vec("float32"), prompt_id=vec("int32"),
                       cand_id=vec("int32"), start=vec("int32"), next_logprob=vec("float32"),
                       logprob=vec("float32"))
    until = _sds((), "int32", mesh, ())
    return _compile(eng.programs.decode, pc, mesh, state, _prompts(cfg, pc, mesh, G), cands,
                    until, eng.key, None)


COMPILERS = {"train": compile_train, "prefill": compile_prefill, "decode": compile_decode}


def memory(compiled) -> dict:
    """Bytes per device from `compiled.memory_analysis()`."""
    m = compiled.memory_analysis()
    if m is None:
        raise JSEError("this backend reports no memory analysis: run the plan on CPU "
                       "(JAX_PLATFORMS=cpu) or on TPU")
    d = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temps": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
    d["total"] = d["arguments"] + d["outputs"] - d["aliased"] + d["temps"] + d["code"]
    return {k: int(v) for k, v in d.items()}


def describe(name: str, pc: PlanConfig) -> str:
    if name == "train":
        what = f"LoRA r={pc.lora.get('rank', 8)}" if pc.lora is not None else "full AdamW"
        return (f"{what}, batch {pc.batch} x seq {pc.seq}, accum {pc.grad_accum}, "
                f"{'remat' if pc.remat else 'no remat'}, {pc.param_dtype} params")
    if name == "prefill":
        return f"{_groups(pc)} prompts x {pc.prompt_len} tokens, {pc.weights_dtype} weights"
    return (f"{pc.decode_batch} rows ({pc.n}/prompt), cache {pc.prompt_len}+{pc.max_new}, "
            f"{pc.weights_dtype} weights")


def run_plan(pc: PlanConfig) -> dict:
    """Compile every program of `pc.programs`; returns a JSON-able dict of the figures."""
    from jaxselfeval.configs import load_model_config
    from jaxselfeval.model.llama import abstract_model, count_params
    from jaxselfeval.sharding import make_mesh

    chip, _ = parse_chip(pc.chip)
    for p in pc.programs:
        if p not in COMPILERS:
            raise JSEError(f"unknown program '{p}'{closest(p, COMPILERS)}: use {', '.join(COMPILERS)}")
    n = mesh_devices(pc)
    devices, where = plan_devices(n, chip, pc.backend)
    mesh = make_mesh(pc.mesh or "fsdp=-1", devices)
    cfg = load_model_config(pc.model)
    out = {"model": str(pc.model), "params": count_params(abstract_model(cfg)), "chip": pc.chip,
           "hbm": HBM[chip], "devices": n, "mesh": dict(mesh.shape), "where": where,
           "activation_sharding": pc.activation_sharding, "programs": {}}
    for p in pc.programs:
        try:
            compiled = COMPILERS[p](cfg, pc, mesh)
            mem = memory(compiled)
        except Exception as e:  # the TPU compiler refuses programs whose temps exceed HBM
            msg = str(e)
            if "RESOURCE_EXHAUSTED" not in msg:
                raise
            line = next(x for x in msg.splitlines() if "RESOURCE_EXHAUSTED" in x)
            out["programs"][p] = {"what": describe(p, pc), "fits": False,
                                  "error": line.split("RESOURCE_EXHAUSTED:", 1)[1].strip()}
            continue
        out["programs"][p] = {"what": describe(p, pc), **mem, "fits": mem["total"] <= HBM[chip],
                              "attention": compiled.attention}
    out["fits"] = all(v["fits"] for v in out["programs"].values())
    return out


def _gib(b: int) -> str:
    return f"{b / GiB:.2f}"


def format_plan(res: dict) -> str:
    """A table of GiB per device per program, then one FITS / DOES NOT FIT line each."""
    mesh = " ".join(f"{k}={v}" for k, v in res["mesh"].items())
    hbm = _gib(res["hbm"])
    lines = [f"plan: {res['model']} ({res['params'] / 1e9:.2f}B params) on {res['chip']}, "
             f"mesh {mesh}", f"  {res['where']}",
             f"per device, GiB (HBM {hbm} GiB):",
             f"{'program':<8} {'arguments':>9} {'outputs':>8} {'aliased':>8} {'temps':>8} "
             f"{'code':>6} {'total':>8}  shapes"]
    for name, r in res["programs"].items():
        if "error" in r:
            lines.append(f"{name:<8} {'-':>9} {'-':>8} {'-':>8} {'-':>8} {'-':>6} {'-':>8}  "
                         f"{r['what']}")
            continue
        lines.append(f"{name:<8} {_gib(r['arguments']):>9} {_gib(r['outputs']):>8} "
                     f"{_gib(r['aliased']):>8} {_gib(r['temps']):>8} {_gib(r['code']):>6} "
                     f"{_gib(r['total']):>8}  {r['what']}, attention {'+'.join(r['attention'])}")
    for name, r in res["programs"].items():
        if "error" in r:
            lines.append(f"{name}: DOES NOT FIT (the compiler refused it: {r['error']})")
            continue
        verdict = "FITS" if r["fits"] else "DOES NOT FIT"
        lines.append(f"{name}: {verdict} ({_gib(r['total'])} of {hbm} GiB per device, "
                     f"{100 * r['total'] / res['hbm']:.0f}%)")
    lines.append(f"overall: {'FITS' if res['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)
