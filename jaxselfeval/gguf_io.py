"""GGUF in: a llama.cpp model file -> an HF Llama directory (config.json, safetensors, tokenizer).

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")   # an HF dir transformers loads
    gguf_model_dir("model.gguf")   # the same, converted once into the cache (load_pretrained uses it)

Tensors are read and dequantized to float32 with the `gguf` package (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, Q2_K..Q6_K), llama.cpp's row permutation of the Q and K projections is undone,
and the tokenizer (tokenizer.json + chat template) is built from the file's `tokenizer.ggml.*`
metadata by transformers' own GGUF tokenizer conversion. Bad input (not a GGUF, an architecture
other than llama, an unsupported quant type) is one JSEError before anything is written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from jaxselfeval.errors import JSEError
from jaxselfeval.fileio import temp_dir_beside
from jaxselfeval.model.config import LlamaConfig
from jaxselfeval.safetensors_io import _Lazy, save_file

log = logging.getLogger(__name__)

SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
             "Q5_K", "Q6_K")

# GGUF tensor name -> HF name ("{i}": layer index)
NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
MARKER = "gguf_source.json"  # written into every converted directory


def _reader(path: Path):
    import gguf

    if not path.is_file():
        raise JSEError(f"GGUF file '{path}' does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise JSEError(f"'{path}' is not a GGUF file (it does not start with b'GGUF'): give a "
                       "llama.cpp .gguf model file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated/corrupt file: one line
        raise JSEError(f"cannot read GGUF file '{path}' ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''}): the file is damaged or "
                       "truncated; download it again") from None


def _meta(reader) -> dict:
    """Scalar/string metadata (arrays other than short ones left out)."""
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "merges", "scores",
                                                                     "token_type"):
            out[k] = len(f.data)
            continue
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001 - metadata we do not use
            continue
    return out


def gguf_config(meta: dict, tensor_names, path) -> LlamaConfig:
    """LlamaConfig from `llama.*` metadata; JSEError naming the architecture if it is not llama."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise JSEError(f"'{path}' is a GGUF of architecture '{arch}': only 'llama' models can be "
                       "converted")
    if "rope_freqs.weight" in tensor_names or meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise JSEError(f"'{path}' uses RoPE scaling (rope_freqs / llama.rope.scaling.*), which the "
                       "GGUF import does not map yet: convert the HF checkpoint instead")

    def key(name, default=None):
        v = meta.get(f"llama.{name}", default)
        if v is None:
            raise JSEError(f"'{path}' lacks the metadata key 'llama.{name}': not a complete llama "
                           "GGUF")
        return v

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = meta.get("llama.vocab_size") or meta.get("tokenizer.ggml.tokens")
    if not vocab:
        raise JSEError(f"'{path}' has neither llama.vocab_size nor a tokenizer vocabulary")
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(meta.get("llama.attention.key_length") or hidden // heads),
        max_position_embeddings=int(key("context_length", 4096)),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)), rope_type="default",
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of a Q or K projection [n_head * Dh, D] (its rotary halves are
    interleaved per head in GGUF; HF keeps them as two halves)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _hf_name(gguf_name: str, L: int) -> str | None:
    if gguf_name in NAMES:
        return NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < L:
        tmpl = NAMES.get("blk.{i}." + parts[2])
        return tmpl.format(i=parts[1]) if tmpl else None
    return None


def _tensor_plan(reader, cfg: LlamaConfig, path) -> dict:
    """HF name -> GGUF tensor, after checking names, quant types and that nothing is missing."""
    plan, L = {}, cfg.num_hidden_layers
    for t in reader.tensors:
        qt = t.tensor_type.name
        if qt not in SUPPORTED:
            raise JSEError(f"'{path}': tensor '{t.name}' is quantized as {qt}, which is not "
                           f"supported (supported: {', '.join(SUPPORTED)}): use a GGUF with one of "
                           "those types")
        hf = _hf_name(t.name, L)
        if hf is None:
            raise JSEError(f"'{path}': unexpected tensor '{t.name}' for a {L}-layer llama model")
        plan[hf] = t
    want = {NAMES[k].format(i=i) for k in NAMES for i in range(L)} - (
        {"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing = sorted(want - set(plan))
    if missing:
        raise JSEError(f"'{path}': missing tensor(s) {', '.join(missing[:3])}"
                       f"{' ...' if len(missing) > 3 else ''}: the file is incomplete")
    return plan


def read_tensor(t, hf_name: str, cfg: LlamaConfig) -> np.ndarray:
    """One GGUF tensor dequantized to float32 in HF layout ([out, in] for projections)."""
    from gguf.quants import dequantize

    w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape(tuple(int(x) for x in reversed(t.shape)))  # GGUF lists dims innermost first
    if hf_name.endswith("q_proj.weight"):
        w = unpermute(w, cfg.num_attention_heads)
    elif hf_name.endswith("k_proj.weight"):
        w = unpermute(w, cfg.num_key_value_heads)
    return w


def read_gguf(path) -> tuple[LlamaConfig, dict]:
    """-> (config, {HF name: float32 array}) of a llama GGUF (everything in memory: small models
    and tests; `convert_gguf` writes one tensor at a time)."""
    path = Path(path)
    reader = _reader(path)
    meta = _meta(reader)
    cfg = gguf_config(meta, {t.name for t in reader.tensors}, path)
    plan = _tensor_plan(reader, cfg, path)
    return cfg, {k: read_tensor(t, k, cfg) for k, t in plan.items()}


def check_tokenizer_deps() -> None:
    """The GGUF tokenizer conversion runs transformers' GGUF reader, which imports torch; without
    it, one clear error before anything is downloaded or written."""
    if importlib.util.find_spec("torch") is None:
        raise JSEError("converting a GGUF file needs torch (transformers' GGUF tokenizer reader "
                       "imports it), which is not installed: pip install -e '.[gguf]' "
                       "(torch==2.13.0, the CPU wheel)")


def _save_tokenizer(path: Path, out: Path) -> None:
    """tokenizer.json / tokenizer_config.json / chat template from the GGUF's metadata, built by
    transformers' GGUF tokenizer conversion."""
    from transformers import PreTrainedTokenizerFast

    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      local_files_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise JSEError(f"cannot build a tokenizer from '{path}' metadata ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # readable by transformers 4 and 5
    for k in ("is_local", "local_files_only"):
        tc.pop(k, None)
    cfg_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def convert_gguf(path, out_dir, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write a llama GGUF as an HF directory `out_dir` (config.json, model.safetensors, tokenizer,
    gguf_source.json). Tensors are dequantized to float32 (dtype: float32/bfloat16/float16 of the
    written tensors). The directory appears whole or not at all; an existing non-empty `out_dir`
    is refused unless `overwrite` and it is an earlier conversion (has gguf_source.json)."""
    from jaxselfeval.model.llama import as_dtype

    path, out = Path(path), Path(out_dir)
    check_tokenizer_deps()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (overwrite and (out / MARKER).exists()):
            raise JSEError(f"output '{out}' already exists and is not empty: choose a new --out "
                           "(an existing directory is never overwritten)")
    reader = _reader(path)
    meta = _meta(reader)
    cfg = gguf_config(meta, {t.name for t in reader.tensors}, path)
    plan = _tensor_plan(reader, cfg, path)
    dt = np.dtype(as_dtype(dtype))
    tmp = temp_dir_beside(out)
    try:
        _save_tokenizer(path, tmp)
        lazy = {}
        for name, t in plan.items():
            shape = tuple(int(x) for x in reversed(t.shape))
            lazy[name] = _Lazy(shape, dt, lambda t=t, n=name: read_tensor(t, n, cfg).astype(dt))
        save_file(lazy, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(dt.name), indent=2))
        (tmp / MARKER).write_text(json.dumps({
            "gguf": str(path.resolve()), "sha256": sha256(path), "name": meta.get("general.name"),
            "quant_types": sorted({t.tensor_type.name for t in reader.tensors}),
            "dtype": dt.name}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if (out / MARKER).exists() else out.rmdir()
        os.replace(tmp, out)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s -> %s (%d tensors)", path, out, len(plan))
    return out


def cache_dir() -> Path:
    """$JSE_CACHE_DIR, else $XDG_CACHE_HOME/jaxselfeval, else ~/.cache/jaxselfeval."""
    if os.environ.get("JSE_CACHE_DIR"):
        return Path(os.environ["JSE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxselfeval"


def gguf_model_dir(path) -> Path:
    """The HF directory of a GGUF file, converted once into the cache (keyed by the file's
    path, size and mtime) and reused after."""
    path = Path(path)
    if not path.is_file():
        raise JSEError(f"GGUF file '{path}' does not exist")
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    out = cache_dir() / "gguf" / f"{path.stem}-{key[:16]}"
    if not (out / MARKER).exists():
        convert_gguf(path, out)
    return out
