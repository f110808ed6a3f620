"""Capability dataset and training: a SIGKILLed build resumes exactly, the training example's probe
equals the sampler's probe, and a short capability-token training run exports a marked model."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxselfeval as jse
from jaxselfeval.sample import Engine, probe_spec
from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset, load_rows
from jaxselfeval.selfeval.rows import encode_rows
from jaxselfeval.selfeval.train import SelfEvalConfig, scores, train_selfeval
from jaxselfeval.tasks import get_task
from jaxselfeval.tokenizer import encode_chat

from conftest import make_tiny_selfeval_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random tiny Llama + the embedded tokenizer, saved as an HF directory."""
    return make_tiny_selfeval_model(tmp_path_factory.mktemp("tiny"))


def _cfg(model, out, **kw):
    kw = {"splits": {"train": 12, "validation": 6}, "n": 4} | kw
    kw = {"shard_prompts": 3} | kw
    return BuildConfig(model=str(model), max_new_tokens=24, truncations=[4, 8], out_dir=str(out),
                       **kw)


BUILD = """
import sys
from jaxselfeval.selfeval.dataset import BuildConfig, build_dataset
build_dataset(BuildConfig(model={model!r}, splits={{"train": 12, "validation": 6}}, n=4,
              max_new_tokens=24, truncations=[4, 8], shard_prompts=1, out_dir={out!r}), progress=False)
"""


def test_killed_build_resumes_with_no_row_lost_or_duplicated(tiny_dir, tmp_path):
    # one prompt a shard: 18 shards, so the kill lands mid-build even when the poller is slow
    ref = build_dataset(_cfg(tiny_dir, tmp_path / "ref", shard_prompts=1), progress=False)
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", BUILD.format(model=str(tiny_dir), out=str(out))])
    shards = out / "shards"
    deadline = time.time() + 240
    while len(list(shards.glob("*.jsonl"))) < 2:
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = len(list(shards.glob("*.jsonl")))
    assert done_before < 18  # killed mid-build
    build_dataset(_cfg(tiny_dir, out, shard_prompts=1), progress=False)
    for split in ("train", "validation"):
        a = sorted((r["id"], r["target"], list(r["response_ids"])) for r in load_rows(ref, split))
        b = sorted((r["id"], r["target"], list(r["response_ids"])) for r in load_rows(out, split))
        assert a == b and len({x[0] for x in b}) == len(b)
    rows = load_rows(ref, "train")
    assert {r["truncation"] for r in rows} >= {0, 4}
    for ex in {r["example"] for r in rows}:  # targets follow the rewards of the prompt's samples
        full = [r for r in rows if r["example"] == ex and r["truncation"] == 0]
        for r in full:
            assert r["target"] == (1.0 if r["reward"] == 1.0 else
                                   sum(o["reward"] == 0 for o in full if o is not r) / (len(full) - 1))


def test_resume_with_other_settings_is_refused_and_leaves_the_shards(tiny_dir, tmp_path, caplog):
    """A build resumes only with the settings its shards were sampled with (else the dataset
    would mix two builds); the mesh may change (it does not change the rows)."""
    out = tmp_path / "d"
    cfg = _cfg(tiny_dir, out, splits={"train": 3, "validation": 3})
    build_dataset(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    conf = (out / "build_config.json").read_text()
    with pytest.raises(jse.JSEError, match=r"holds shards sampled with other settings \(n: 4 -> 3; "
                                           r"temperature: 1.0 -> 0.5\)"):
        build_dataset(_cfg(tiny_dir, out, splits={"train": 3, "validation": 3}, n=3,
                           temperature=0.5), progress=False)
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
    assert (out / "build_config.json").read_text() == conf
    with caplog.at_level("INFO"):  # the mesh and the sampler's batch size do not change rows
        build_dataset(_cfg(tiny_dir, out, splits={"train": 3, "validation": 3},
                           mesh="fsdp=2,tensor=4", batch_prompts=2), progress=False)
    assert "all shards present" in caplog.text
    one = build_dataset(_cfg(tiny_dir, tmp_path / "one", splits={"train": 3, "validation": 3},
                             batch_prompts=1), progress=False)
    for split in ("train", "validation"):  # one prompt at a time: the same rows
        key = lambda r: r["id"]  # noqa: E731
        a, b = sorted(load_rows(one, split), key=key), sorted(load_rows(out, split), key=key)
        assert len(a) > 0 and [(r["id"], list(r["response_ids"]), r["target"]) for r in a] == [
            (r["id"], list(r["response_ids"]), r["target"]) for r in b]


def test_training_probe_equals_sampler_probe(tiny_dir):
    from jaxselfeval.tokenizer import load_tokenizer

    model, tok = jse.load_pretrained(tiny_dir), load_tokenizer(tiny_dir)
    spec = probe_spec(tok)
    task = get_task("arithmetic")
    exs = task.examples("test")[:3]
    eng = Engine(model, stop_ids=(tok.eos_token_id,), seed=0)
    prompts = [encode_chat(tok, task.messages(e)) for e in exs]
    P = eng.prefill(prompts)
    C = eng.decode(P, eng.branch(P, 2, 24), until=10)
    s_engine = np.asarray(eng.probe(P, C, spec))
    outs = Engine.outputs(C)
    rows = [{"prompt_ids": prompts[i // 2], "response_ids": outs[i], "truncation": 0,
             "target": 0.5} for i in range(6)]
    toks, _, last, _, keep = encode_rows(rows, spec, 256)
    assert keep == list(range(6))
    assert list(toks[0, :last[0] + 1]) == prompts[0] + outs[0] + spec.after(outs[0])
    s_train = scores(model, toks, last, spec.yes, spec.no, batch=4)
    np.testing.assert_allclose(s_train, s_engine, atol=1e-5)


def test_short_selfeval_training_exports_marked_model(tiny_dir, tmp_path):
    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    # the shared-prompt layout sharded over the 8 devices: a prompt and 2 of its rows each
    cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"), steps=4, batch_size=16,
                         rows_per_prompt=2, eval_every=2, seq_len=192)
    out, final = train_selfeval(cfg, progress=False)
    meta = json.loads((out / "selfeval.json").read_text())
    assert meta["trained"] and 0 <= final["ece_full"] <= 1 and 0 <= final["brier_full"] <= 1
    assert (tmp_path / "se" / "reliability.png").stat().st_size > 5000
    hist = json.loads((tmp_path / "se" / "validation.json").read_text())["history"]
    assert [h["step"] for h in hist] == [2, 4]
    assert hist[-1]["brier_full"] == pytest.approx(final["brier_full"])  # the last step's is final
    assert jse.load_pretrained(out).config == jse.load_pretrained(tiny_dir).config


def test_prompts_a_batch_must_split_over_the_data_axes(tiny_dir, tmp_path):
    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    with pytest.raises(jse.JSEError, match=r"2 prompts a batch \(batch_size 8 / rows_per_prompt "
                                           r"4\) do not split over the data axes"):
        train_selfeval(SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"),
                                      batch_size=8, rows_per_prompt=4), progress=False)
    assert not (tmp_path / "se").exists()


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(jse.JSEError, match="run `jaxselfeval data build` first"):
        train_selfeval(SelfEvalConfig(data_dir=str(tmp_path)), progress=False)


@pytest.mark.parametrize("kw,msg", [({"dtype": "float16"}, "dtype='float16': use float32 or "
                                                           "bfloat16"),
                                    ({"mesh": "tensor=3"}, "has 3 devices but 8 are available")])
def test_bad_placement_fails_before_anything_is_written(tiny_dir, tmp_path, kw, msg):
    with pytest.raises(jse.JSEError, match=msg):
        build_dataset(BuildConfig(model=str(tiny_dir), out_dir=str(tmp_path / "d"), **kw),
                      progress=False)
    assert not (tmp_path / "d").exists()


def test_lora_selfeval_trains_adapters_and_exports_merged(tiny_dir, tmp_path):
    """LoRA option: the exported (merged) model's probe scores equal the adapter model's, and the
    base weights outside the adapter targets are untouched."""
    from jaxselfeval.lora import add_lora
    from jaxselfeval.tokenizer import load_tokenizer

    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"), steps=3, batch_size=8,
                         eval_every=3, seq_len=192, lr=1e-2, rows_per_prompt=0,  # whole rows
                         lora={"rank": 4, "alpha": 8, "targets": ["wq", "wv", "w_down"]})
    out, final = train_selfeval(cfg, progress=False)
    base, merged = jse.load_pretrained(tiny_dir), jse.load_pretrained(out)
    np.testing.assert_array_equal(np.asarray(base.wk[...]), np.asarray(merged.wk[...]))
    np.testing.assert_array_equal(np.asarray(base.embed[...]), np.asarray(merged.embed[...]))
    assert not np.allclose(np.asarray(base.wq[...]), np.asarray(merged.wq[...]))
    # the adapter model, rebuilt from the checkpoint's adapters, scores like the merged export
    spec = probe_spec(load_tokenizer(out))
    rows = load_rows(data, "validation")
    toks, _, last, _, _ = encode_rows(rows, spec, 192)
    s_merged = scores(merged, toks, last, spec.yes, spec.no)
    assert abs(final["mean_score"] - float(s_merged.mean())) < 1e-4
    assert not np.allclose(s_merged, scores(base, toks, last, spec.yes, spec.no), atol=1e-4)
    with_adapter = add_lora(jse.load_pretrained(tiny_dir), cfg.lora)
    np.testing.assert_allclose(scores(with_adapter, toks, last, spec.yes, spec.no),
                               scores(base, toks, last, spec.yes, spec.no), atol=1e-6)


def test_prompt_file_build_with_reward_model(tiny_dir, tmp_path):
    """No verifier: prompts from JSONL files (a malformed line skipped with skip_bad_lines, a
    prompt longer than the context skipped and counted) and rewards from a reward model."""
    from jaxselfeval.selfeval.reward_model import (init_reward_model, load_reward_model,
                                                   save_reward_model, score_sequences)

    rm_dir = save_reward_model(init_reward_model(jse.load_pretrained(tiny_dir, lm_head=False),
                                                 seed=1), tmp_path / "rm", tokenizer_dir=tiny_dir)
    good = [{"prompt": f"Tom has {k} apples. He buys 2 more. How many apples does Tom have now?"}
            for k in range(5)]
    lines = [json.dumps(x) for x in good[:3]] + ["{not json"] + [json.dumps(x) for x in good[3:]]
    lines.append(json.dumps({"prompt": "apples " * 400}))  # over the 256-token context
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(x) for x in good[:2]) + "\n")
    files = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "val.jsonl")}
    cfg = dict(model=str(tiny_dir), splits={"train": 10, "validation": 10}, n=3, max_new_tokens=12,
               truncations=[4], shard_prompts=2, prompt_files=files, reward_model=str(rm_dir),
               margin=0.01)
    with pytest.raises(jse.JSEError, match=r"train.jsonl:4: malformed prompt line"):
        build_dataset(BuildConfig(**cfg, out_dir=str(tmp_path / "strict")), progress=False)
    out = build_dataset(BuildConfig(**cfg, skip_bad_lines=True, out_dir=str(tmp_path / "d")),
                        progress=False)
    rows = load_rows(out, "train")
    full = [r for r in rows if r["truncation"] == 0]
    assert sorted({r["example"] for r in full}) == [f"train.jsonl:{i}" for i in (1, 2, 3, 5, 6)]
    assert len(full) == 5 * 3
    rm = load_reward_model(rm_dir)
    want = score_sequences(rm, [list(r["prompt_ids"]) + list(r["response_ids"]) for r in full])
    np.testing.assert_allclose([r["reward"] for r in full], want, rtol=1e-5, atol=1e-6)
    assert len(load_rows(out, "validation")) > 0
    with pytest.raises(jse.JSEError, match="need a reward_model"):
        build_dataset(BuildConfig(**{**cfg, "reward_model": None}, out_dir=str(tmp_path / "x")),
                      progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
    from jaxselfeval.tokenizer import build_tokenizer, save_tokenizer

    save_tokenizer(build_tokenizer(["zz yy xx 42"] * 20, 280), tmp_path / "other")
    other = save_reward_model(load_reward_model(rm_dir), tmp_path / "rm2",
                              tokenizer_dir=tmp_path / "other")
    with pytest.raises(jse.JSEError, match="tokenizes differently from the policy"):
        build_dataset(BuildConfig(**{**cfg, "reward_model": str(other)},
                                  out_dir=str(tmp_path / "x")), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(jse.JSEError, match="is not an HF directory"):
        build_dataset(BuildConfig(**{**cfg, "reward_model": str(tmp_path / "other")},
                                  out_dir=str(tmp_path / "x")), progress=False)
    assert not (tmp_path / "x").exists()


def test_validation_reads_each_truncation_point_two_ways(monkeypatch):
    """auroc_trunc{t}: the rows still running at t; auroc_at{t}: every response, one finished
    within t tokens counted as its complete self (what pruning at t sees)."""
    import types

    import numpy as np

    from jaxselfeval.selfeval import train as T

    # prompt a: a short wrong response (3 tokens, finished before 8) and a long right one;
    # prompt b: two long responses, right scored above wrong at 8 tokens
    rows = [  # (example, truncation, length, reward, score)
        ("a", 0, 3, 0.0, 0.1), ("a", 0, 20, 1.0, 0.9), ("a", 8, 8, 1.0, 0.5),
        ("b", 0, 20, 1.0, 0.7), ("b", 8, 8, 1.0, 0.6), ("b", 0, 30, 0.0, 0.3), ("b", 8, 8, 0.0, 0.4),
    ]
    ex, tr, length, rew, s = (np.asarray(c) for c in zip(*rows))
    monkeypatch.setattr(T, "scores", lambda *a, **k: s.astype(np.float64))
    val = {"tokens": None, "last": None, "target": rew, "truncation": tr, "reward": rew,
           "example": ex, "length": length}
    res = T.validate(None, val, types.SimpleNamespace(yes=0, no=1))
    # running at 8: (a right 0.5), (b right 0.6), (b wrong 0.4): both pairs ordered right
    assert res["auroc_trunc8"] == 1.0
    # + the finished wrong one of prompt a (0.1): still every (right, wrong) pair ordered
    assert res["auroc_at8"] == 1.0 and res["auroc_within_at8"] == 1.0
    s[0] = 0.55  # the finished wrong answer now outranks a's running right one (0.5)
    res = T.validate(None, val, types.SimpleNamespace(yes=0, no=1))
    assert res["auroc_trunc8"] == 1.0 and res["auroc_at8"] == pytest.approx(3 / 4)


def test_probe_fit_recovers_a_planted_direction():
    """fit_direction: targets drawn from sigmoid(offset + H w*) give back about w* (no
    intercept; the penalty is on standardised features)."""
    from jaxselfeval.selfeval.probe_fit import fit_direction

    rng = np.random.default_rng(0)
    H = rng.normal(0, 1, (4000, 6)) * np.array([1, 2, 0.5, 1, 3, 1]) + 0.5
    w = np.array([1.0, -0.5, 2.0, 0.0, 0.3, -1.0])
    off = rng.normal(0, 0.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(off + H @ w)))).astype(float)
    got = fit_direction(H, off, y, lam=1e-6)
    np.testing.assert_allclose(got, w, atol=0.15)
    # the shift where the policy writes, held down: a second moment on coordinate 2 alone
    second = np.zeros((6, 6))
    second[2, 2] = 1.0
    held = fit_direction(H, off, y, lam=1e-6, second=second, mu=10.0)
    assert abs(held[2]) < 0.2 * abs(got[2])
    assert abs(held[0] - got[0]) < abs(got[0])  # the other coordinates still read


def test_policy_kl_and_leak_are_exact_for_two_moved_logits():
    """policy_kl / policy_leak: rows Yes -w / 2, No +w / 2 change the policy's next-token
    distribution by exactly the KL, and raise P(Yes) + P(No) by exactly what, a full softmax over
    the vocabulary gives."""
    from jaxselfeval.selfeval.probe_fit import policy_kl, policy_leak

    rng = np.random.default_rng(1)
    M, V, D = 50, 40, 5
    z = rng.normal(0, 2, (M, V))
    X, w = rng.normal(0, 1, (M, D)), rng.normal(0, 1, D)
    shift = np.zeros((M, V))
    shift[:, 3], shift[:, 7] = -(X @ w) / 2, (X @ w) / 2  # Yes = 3, No = 7

    def logsoftmax(a):
        return a - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)) - a.max(1, keepdims=True)

    lp, lq = logsoftmax(z), logsoftmax(z + shift)
    want = float((np.exp(lp) * (lp - lq)).sum(1).mean())
    got = policy_kl(w, X, np.exp(lp[:, [3, 7]]))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12) and got > 0
    rise = np.exp(lq[:, [3, 7]]).sum(1) - np.exp(lp[:, [3, 7]]).sum(1)
    leak = policy_leak(w, X, np.exp(lp[:, [3, 7]]))
    assert leak == pytest.approx(float(np.maximum(rise, 0).mean()), rel=1e-9) and leak > 0


def test_probe_fit_keeps_the_policy_within_its_leak_budget():
    """fit_within: unpenalised when the read leaks less than the budget; else the fit that pays
    for the shift, at or just under the budget, still reading the planted direction."""
    from jaxselfeval.selfeval.probe_fit import (ProbeStates, fit_direction, fit_within,
                                                policy_leak)

    rng = np.random.default_rng(2)
    H = rng.normal(0, 1, (3000, 4))
    w = np.array([1.5, -1.0, 0.5, 0.0])
    off = np.zeros(3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(H @ w)))).astype(float)
    # where the policy writes: coordinate 0 large; Yes / No unlikely there (1e-4 each)
    S = rng.normal(0, 1, (2000, 4)) * np.array([4.0, 0.2, 0.2, 0.2])
    ps = ProbeStates(H, off, S, np.full((2000, 2), 1e-4))
    free = fit_direction(H, off, y, lam=1e-3)
    w0, k0 = fit_within(ps, y, leak=1.0)
    np.testing.assert_allclose(w0, free)
    assert k0 == pytest.approx(policy_leak(free, S, ps.p))
    w1, k1 = fit_within(ps, y, leak=1e-4)
    assert k0 > 1e-4 >= k1 > 0.9e-4  # at the budget, not far below it
    assert abs(w1[0]) < 0.5 * abs(free[0]) and w1[1] < -0.5  # the costly coordinate gives way


def test_probe_rows_start_from_the_fit_and_export_with_the_model(tiny_dir, tmp_path):
    """lora.probe_rows: the rows start at the logistic fit on the frozen states (validated at
    step 0), train, and the export carries them: its scores are the trained model's."""
    from jaxselfeval.tokenizer import load_tokenizer

    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"), steps=2, batch_size=8,
                         eval_every=2, seq_len=192, lm_weight=0.0, kl_weight=1.0,
                         rows_per_prompt=1,
                         lora={"rank": 4, "alpha": 8, "targets": ["wq"], "probe_rows": True})
    out, final = train_selfeval(cfg, progress=False)
    with np.load(tmp_path / "se" / "probe_states.npz") as f:  # the frozen states, kept for refits
        assert f["h"].shape[0] == f["offset"].shape[0] and f["p"].shape == (len(f["states"]), 2)
    hist = json.loads((tmp_path / "se" / "validation.json").read_text())["history"]
    assert hist[0]["step"] == 0  # the fitted start, validated before any step
    base, merged = jse.load_pretrained(tiny_dir), jse.load_pretrained(out)
    spec = probe_spec(load_tokenizer(out))
    assert not base.config.tie_word_embeddings  # the untied head's two columns moved, alone
    np.testing.assert_array_equal(np.asarray(base.embed[...]), np.asarray(merged.embed[...]))
    moved = np.abs(np.asarray(base.lm_head[...]) - np.asarray(merged.lm_head[...])).max(0)
    assert set(np.flatnonzero(moved)) == {spec.yes, spec.no}
    toks, _, last, _, _ = encode_rows(load_rows(data, "validation"), spec, 192)
    assert abs(final["mean_score"] - float(scores(merged, toks, last, spec.yes,
                                                  spec.no).mean())) < 1e-3


def test_zero_steps_export_the_fitted_probe_rows_alone(tiny_dir, tmp_path):
    """steps=0 with lora.probe_rows: no optimiser step; the export is the base model with the
    fitted rows, validated once; a negative step count is refused."""
    from jaxselfeval.selfeval.probe_fit import policy_leak
    from jaxselfeval.tokenizer import load_tokenizer

    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    lora = {"rank": 4, "alpha": 8, "targets": ["wq"], "probe_rows": True}
    cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"), steps=0, batch_size=8,
                         seq_len=192, lm_weight=0.0, kl_weight=1.0, rows_per_prompt=1, lora=lora,
                         probe_rows_leak=1e-5)
    out, final = train_selfeval(cfg, progress=False)
    hist = json.loads((tmp_path / "se" / "validation.json").read_text())["history"]
    assert [h["step"] for h in hist] == [0]
    base, merged = jse.load_pretrained(tiny_dir), jse.load_pretrained(out)
    np.testing.assert_array_equal(np.asarray(base.wq[...]), np.asarray(merged.wq[...]))
    spec = probe_spec(load_tokenizer(out))
    delta = np.asarray(merged.lm_head[...]) - np.asarray(base.lm_head[...])  # [D, V]
    d_yes, d_no = delta[:, spec.yes], delta[:, spec.no]
    assert np.abs(d_no).max() > 0
    np.testing.assert_allclose(d_yes, -d_no, atol=1e-6)
    with np.load(tmp_path / "se" / "probe_states.npz") as f:  # within the policy's leak budget
        assert policy_leak(d_no - d_yes, f["states"], f["p"]) <= cfg.probe_rows_leak * 1.01
    with pytest.raises(jse.JSEError, match="steps must be >= 0"):
        train_selfeval(SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "x"), steps=-1,
                                      lora=lora), progress=False)


def test_ranking_pairs_lift_the_read_within_a_prompt():
    """rank_pairs / fit_direction's ranking term: when one feature tells prompts apart (their
    difficulty) but is noise within a prompt, ranking each prompt's right rows above its wrong
    ones turns the fit toward the feature that tells them apart within a prompt."""
    from jaxselfeval.selfeval import metrics as M
    from jaxselfeval.selfeval.probe_fit import fit_direction, rank_pairs

    rng = np.random.default_rng(3)
    G, n = 300, 8
    group = np.repeat(np.arange(G), n)
    ease = np.repeat(rng.normal(0, 2, G), n)
    x0 = ease + rng.normal(0, 1.5, G * n)  # the prompt's ease, noisy per row
    x1 = rng.normal(0, 1, G * n)  # tells a prompt's rows apart
    y = (rng.random(G * n) < 1 / (1 + np.exp(-(ease + 0.8 * x1)))).astype(float)
    H = np.stack([x0, x1, np.ones(G * n)], 1)
    pairs = rank_pairs(group, y > 0.5)
    r, w = y[pairs[:, 0]] > 0.5, y[pairs[:, 1]] > 0.5
    assert r.all() and not w.any() and (group[pairs[:, 0]] == group[pairs[:, 1]]).all()
    assert len(pairs) == sum(int(y[group == g].sum() * (n - y[group == g].sum())) for g in range(G))
    plain = fit_direction(H, np.zeros(G * n), y, 1e-4)
    ranked = fit_direction(H, np.zeros(G * n), y, 1e-4, pairs=pairs, rank_weight=4.0)
    within = [M.auroc_within(H @ v, y, group) for v in (plain, ranked)]
    assert within[1] > within[0] + 0.01
    assert abs(ranked[0] / ranked[1]) < abs(plain[0] / plain[1])
    np.testing.assert_allclose(fit_direction(H, np.zeros(G * n), y, 1e-4, pairs=pairs,
                                             rank_weight=0.0), plain)


def test_probe_head_is_read_at_the_probe_only_and_exported(tiny_dir, tmp_path):
    """probe_head: the fitted rows move the probe's Yes / No logits and nothing the policy
    samples from; the export keeps the base weights, carries the head beside them
    (probe_head.safetensors) and scores as the fitted model did."""
    from jaxselfeval.tokenizer import load_tokenizer

    data = build_dataset(_cfg(tiny_dir, tmp_path / "data"), progress=False)
    cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "se"), steps=0, batch_size=8,
                         seq_len=192, rows_per_prompt=1, probe_head=True, probe_rank_weight=1.0,
                         kl_weight=1.0)  # a KL weight without steps or LoRA is unused
    out, final = train_selfeval(cfg, progress=False)
    assert (out / "probe_head.safetensors").exists()
    assert json.loads((out / "selfeval.json").read_text())["probe_head"] is True
    base, got = jse.load_pretrained(tiny_dir), jse.load_pretrained(out)
    assert base.probe_head is None and got.probe_head is not None
    for name in ("embed", "lm_head", "wq", "w_down"):
        np.testing.assert_array_equal(np.asarray(getattr(base, name)[...]),
                                      np.asarray(getattr(got, name)[...]))
    spec = probe_spec(load_tokenizer(out))
    toks, _, last, _, _ = encode_rows(load_rows(data, "validation"), spec, 192)
    h = np.random.default_rng(0).normal(0, 1, (3, base.config.hidden_size)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(base.logits(h)), np.asarray(got.logits(h)))
    ids = np.asarray([spec.yes, spec.no, 5], np.int32)
    moved = np.asarray(got.token_logits(h, ids)) - np.asarray(base.token_logits(h, ids))
    assert np.abs(moved[:, :2]).max() > 1e-3 and np.abs(moved[:, 2]).max() == 0
    s = scores(got, toks, last, spec.yes, spec.no)
    assert abs(final["mean_score"] - float(s.mean())) < 1e-3
    assert abs(float(s.mean()) - float(scores(base, toks, last, spec.yes, spec.no).mean())) > 1e-3
    from jaxselfeval.lora import add_lora, merge_lora

    merged = merge_lora(add_lora(jse.load_pretrained(out), {"rank": 2, "alpha": 4,
                                                           "targets": ["wq"]}))
    np.testing.assert_array_equal(np.asarray(merged.probe_head.delta[...]),
                                  np.asarray(got.probe_head.delta[...]))  # merging keeps it
    with pytest.raises(jse.JSEError, match="probe_head is fitted, not trained"):
        train_selfeval(SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / "x"), steps=3,
                                      probe_head=True), progress=False)
    from safetensors.numpy import save_file

    save_file({"rows": np.zeros((2, 3), np.float32)}, str(out / "probe_head.safetensors"))
    with pytest.raises(jse.JSEError, match="probe_head.safetensors"):
        jse.load_pretrained(out)


def test_probe_states_kept_while_sampling_equal_a_pass_over_the_rows(tiny_dir, tmp_path):
    """probe_states: the build keeps each row's final state at the probe, read as the decode
    passes each truncation point and at its end; the rows are those of a build without it, the
    states those a pass over the finished rows reads, and a probe head fitted from them is the
    one fitted from that pass (its validation read too)."""
    from jaxselfeval.selfeval.dataset import load_states
    from jaxselfeval.selfeval.probe_fit import probe_states
    from jaxselfeval.selfeval.rows import encode_shared
    from jaxselfeval.tokenizer import load_tokenizer

    plain = build_dataset(_cfg(tiny_dir, tmp_path / "plain"), progress=False)
    kept = build_dataset(_cfg(tiny_dir, tmp_path / "kept", probe_states=True, batch_prompts=2),
                         progress=False)
    with pytest.raises(jse.JSEError, match="built without probe_states"):
        load_states(plain, "train")
    spec = probe_spec(load_tokenizer(tiny_dir))
    model = jse.load_pretrained(tiny_dir)
    for split in ("train", "validation"):
        key = lambda r: r["id"]  # noqa: E731
        a, b = sorted(load_rows(plain, split), key=key), sorted(load_rows(kept, split), key=key)
        assert [(r["id"], list(r["response_ids"])) for r in a] == [
            (r["id"], list(r["response_ids"])) for r in b]
        assert {r["truncation"] for r in b} >= {0, 4, 8}
        ids, H = load_states(kept, split)
        sh = encode_shared(b, spec.after, 192)
        want = probe_states(model, sh, spec.yes, spec.no).h
        got = H[[ids[b[i]["id"]] for i in sh["keep"]]]
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
    heads, finals = [], []
    for data in (plain, kept):
        cfg = SelfEvalConfig(data_dir=str(data), out_dir=str(tmp_path / f"se_{data.name}"),
                             steps=0, batch_size=8, seq_len=192, rows_per_prompt=1, probe_head=True,
                             probe_rank_weight=1.0)
        out, final = train_selfeval(cfg, progress=False)
        heads.append(np.asarray(jse.load_pretrained(out).probe_head.delta[...]))
        finals.append(final)
    assert not (tmp_path / "se_kept" / "probe_states.npz").exists()  # no pass over the rows
    np.testing.assert_allclose(heads[1], heads[0], atol=1e-3 * np.abs(heads[0]).max())
    assert abs(finals[0]["ece_all"] - finals[1]["ece_all"]) < 1e-3
    cfg = SelfEvalConfig(data_dir=str(kept), out_dir=str(tmp_path / "se_l2"), steps=0,
                         batch_size=8, seq_len=192, rows_per_prompt=1, probe_head=True,
                         probe_rank_weight=1.0, probe_l2=1e3)  # the fit's penalty is the config's
    out, _ = train_selfeval(cfg, progress=False)
    strong = np.asarray(jse.load_pretrained(out).probe_head.delta[...])
    assert np.abs(strong).max() < 0.2 * np.abs(heads[1]).max()
    with pytest.raises(jse.JSEError, match="probe_l2 must be >= 0"):
        train_selfeval(SelfEvalConfig(data_dir=str(kept), out_dir=str(tmp_path / "x"), steps=0,
                                      probe_head=True, probe_l2=-1.0), progress=False)
    assert abs(finals[0]["mean_score"] - finals[1]["mean_score"]) < 1e-3
