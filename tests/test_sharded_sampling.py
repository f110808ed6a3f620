"""Sampling on a mesh (the model sharded over a host's devices, as `--mesh` / `mesh=` do) draws the
tokens, scores and log-probabilities it draws on one device: prefill, branch, decode, probe,
pruning's gather, and adaptive rounds with compaction. bf16 weights track f32."""

import jax
import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.errors import JSEError
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.hf_io import load_for_sampling
from jaxselfeval.model.cache import cache_shardings
from jaxselfeval.sharding import local_mesh
from jaxselfeval.strategies import AdaptiveConfig, LiveDriver, Runner, adaptive
from jaxselfeval.tasks import get_task
from jaxselfeval.tokenizer import build_tokenizer, encode_chat, save_tokenizer

MESHES = ["fsdp=8", "data=2,fsdp=2,tensor=2"]  # (bf16 below runs on fsdp=2,tensor=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(HF dir of a random 2-layer model with the task's tokenizer, tokenizer, test problems)."""
    d = tmp_path_factory.mktemp("sharded")
    task = get_task("arithmetic", n_train=300, n_validation=10, n_test=10)
    tok = build_tokenizer([e.question + "\n" + e.solution for e in task.examples("train")], 300)
    save_tokenizer(tok, d / "tok")
    cfg = jse.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, eos_token_id=tok.eos_token_id)
    jse.save_pretrained(jse.create_model(cfg, seed=1), d / "hf", tokenizer_dir=d / "tok")
    return d / "hf", tok, task, task.examples("test")[:6]


def _sample(model, tok, exs):
    """Prefill, 4 candidates each, 5 tokens, early probe, keep the best 2, decode to 12, probe."""
    eng = Engine(model, stop_ids=(tok.eos_token_id,), seed=3)
    spec = probe_spec(tok)
    P = eng.prefill([encode_chat(tok, [{"role": "user", "content": e.question}]) for e in exs])
    C = eng.decode(P, eng.branch(P, 4, 12), until=5)
    early = eng.probe(P, C, spec)
    C = eng.decode(P, Engine.select(C, Engine.top_rows(early, 4, 2)))
    return eng, C, {"outputs": Engine.outputs(C), "early": np.asarray(early),
                    "score": np.asarray(eng.probe(P, C, spec)), "logprob": np.asarray(C.logprob),
                    "last_logits": np.asarray(P.last_logits)}


@pytest.mark.parametrize("spec", MESHES)
def test_engine_on_a_mesh_equals_one_device(setup, spec):
    path, tok, _, exs = setup
    _, _, ref = _sample(jse.load_pretrained(path), tok, exs)
    eng, C, got = _sample(load_for_sampling(path, mesh=spec), tok, exs)
    mesh = local_mesh(spec)
    assert eng.mesh is not None and dict(eng.mesh.shape) == dict(mesh.shape)
    assert C.cache.k.sharding.mesh.shape == mesh.shape  # the candidates' cache lives on the mesh
    assert len(C.cache.k.sharding.device_set) == 8
    # branch makes its rows' empty cache inside one compiled call: still split as the cache's
    # logical axes say (each device allocates only its slice), not replicated
    fresh = eng.branch(eng.prefill([[5, 6, 7]]), 8, 4).cache
    want = cache_shardings(eng.config, 8, 4, eng.mesh)
    for f in ("k", "v", "pos"):
        got_s = getattr(fresh, f).sharding
        assert got_s.is_equivalent_to(getattr(want, f), getattr(fresh, f).ndim), (f, got_s)
    assert got["outputs"] == ref["outputs"]
    for k in ("early", "score", "logprob", "last_logits"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=2e-5, err_msg=k)


def test_adaptive_with_pruning_on_a_mesh_equals_one_device(setup):
    """Rounds, early pruning and compaction (prompts that stop leave the batch) on the mesh."""
    path, tok, task, exs = setup
    run1 = Runner(jse.load_pretrained(path), tok, task, seed=0, max_new_tokens=10)
    cfg = AdaptiveConfig((1, 1, 2), 1.0, (0.0, 0.7, 1.0), 4, prune_at=3, keep_fraction=0.5)
    _, rounds = adaptive(LiveDriver(run1, exs), cfg, trace=True)
    best = sorted(float(r["best"][g]) for r in rounds for g in range(len(exs)))
    cfg = AdaptiveConfig((1, 1, 2), best[len(best) // 2], (0.0, 0.7, 1.0), 4, prune_at=3,
                         keep_fraction=0.5)  # some prompts stop early: compaction happens
    ref = adaptive(LiveDriver(run1, exs), cfg)
    got = adaptive(LiveDriver(Runner(load_for_sampling(path, mesh="data=2,fsdp=2,tensor=2"), tok,
                                     task, seed=0, max_new_tokens=10), exs), cfg)
    assert len({r.samples for r in ref}) > 1
    for a, b in zip(got, ref):
        assert (a.prompt_id, a.output, a.samples, a.gen_tokens, a.probe_tokens) == (
            b.prompt_id, b.output, b.samples, b.gen_tokens, b.probe_tokens)
        assert a.chosen_score == pytest.approx(b.chosen_score, abs=2e-5)


def test_bf16_sampling_tracks_f32(setup):
    path, tok, _, exs = setup
    _, _, ref = _sample(jse.load_pretrained(path), tok, exs)
    eng, C, got = _sample(load_for_sampling(path, "bfloat16", mesh="fsdp=2,tensor=4"), tok, exs)
    assert C.cache.k.dtype == jax.numpy.bfloat16
    scale = np.abs(ref["last_logits"]).max()
    assert np.abs(got["last_logits"] - ref["last_logits"]).max() < 0.03 * scale
    np.testing.assert_allclose(got["early"], ref["early"], atol=0.03)


@pytest.mark.parametrize("spec,msg", [
    ("tensor=3", "has 3 devices but 8 are available"),
    ("tensor=3,fsdp=-1", "does not divide the 8 devices"),
    ("model=8", "unknown mesh axis 'model'"),
    ("fsdp", "write axes as name=size")])
def test_bad_mesh_is_one_line(spec, msg):
    with pytest.raises(JSEError, match=msg):
        local_mesh(spec)
