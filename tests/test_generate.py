"""`jaxselfeval generate`: every strategy answers each prompt once, in order; greedy equals the
sampler's greedy decode; bad input is one line and writes nothing."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jaxselfeval as jse  # noqa: E402
from jaxselfeval.assets import default_model_dir  # noqa: E402
from jaxselfeval.cli import main  # noqa: E402

PROMPTS = ["Tom has 12 pens. He buys 5 more. How many pens does Tom have now?",
           "Ann has 7 coins. She loses 2. She finds 4 more. How many coins does Ann have now?",
           "Sam has 3 cards. He gets 9 more. How many cards does Sam have now?"]
SMALL = ["n=4", "max_new_tokens=24", "rounds=[1, 1, 2]", "round_temperatures=[0, 1, 1]",
         "prune_at=4", "keep_fraction=0.5"]


def _gen(tmp_path, strategy, *extra):
    out = tmp_path / f"{strategy}.jsonl"
    args = ["generate", "--strategy", strategy, "--out", str(out)]
    for p in PROMPTS:
        args += ["--prompt", p]
    assert main(args + SMALL + list(extra)) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("strategy,samples", [("sample", {1}), ("bon", {4}), ("bon_likelihood", {4}),
                                              ("majority", {4}), ("vote", {4}), ("prune", {4}),
                                              ("adaptive", {1, 2, 4}), ("adaptive_prune", {1, 2, 4})])
def test_each_strategy_answers_every_prompt_in_order(tmp_path, strategy, samples):
    rows = _gen(tmp_path, strategy)
    assert [r["messages"][0]["content"] for r in rows] == PROMPTS
    for r in rows:
        assert r["samples"] in samples and r["gen_tokens"] >= 1 and isinstance(r["response"], str)
        if strategy != "majority":
            assert 0.0 <= r["score"] <= 1.0
    if strategy in ("bon", "vote", "prune", "adaptive", "adaptive_prune"):
        assert all(r["probe_tokens"] > 0 for r in rows)


def test_greedy_equals_the_samplers_greedy_decode(tmp_path):
    from jaxselfeval.sample import generate
    from jaxselfeval.tokenizer import encode_chat, load_tokenizer

    rows = _gen(tmp_path, "greedy")
    d = default_model_dir()
    tok = load_tokenizer(d)
    ids = [encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    ref = generate(jse.load_pretrained(d), ids, n=1, max_new_tokens=24, temperature=0.0,
                   tokenizer=tok)
    assert [r["response"] for r in rows] == [tok.decode(c[0], skip_special_tokens=True) for c in ref]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, caplog):
    out = tmp_path / "x.jsonl"
    assert main(["generate", "--out", str(out)]) == 2
    assert "no prompts: pass --prompt" in capsys.readouterr().err
    assert main(["generate", "--prompt", "hi", "--out", str(out), "threshold=1.5"]) == 2
    assert "threshold must be in [0, 1]" in capsys.readouterr().err
    assert main(["generate", "--prompt", "hi", "--out", str(out), "--strategy", "adaptive",
                 "n=4", "rounds=[1, 2, 4]", "round_temperatures=[0, 1, 1]"]) == 2
    assert "draw 7 samples, more than max_samples=4" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "Tom has 3 pens."}\n{not json\n')
    assert main(["generate", "--prompts", str(bad), "--out", str(out)]) == 2
    assert "p.jsonl:2" in capsys.readouterr().err
    assert not out.exists()
    with caplog.at_level("WARNING"):
        _gen(tmp_path, "bon")  # the shipped base model was never self-eval-trained
    assert "never self-eval-trained" in caplog.text


def test_mesh_samples_what_one_device_samples_and_bf16_runs(tmp_path, capsys):
    """--mesh shards the model over this host's 8 (simulated) devices: the same answers, samples,
    tokens and scores; --dtype bfloat16 answers with the f32 greedy answers of the tiny base."""
    ref = _gen(tmp_path, "adaptive")
    got = _gen(tmp_path, "adaptive", "--mesh", "fsdp=2,tensor=4")
    for a, b in zip(got, ref):
        assert (a["response"], a["samples"], a["gen_tokens"]) == (b["response"], b["samples"],
                                                                  b["gen_tokens"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    greedy = [r["response"] for r in _gen(tmp_path, "greedy")]
    assert [r["response"] for r in _gen(tmp_path, "greedy", "--dtype", "bfloat16")] == greedy
    out = tmp_path / "m.jsonl"
    capsys.readouterr()
    assert main(["generate", "--prompt", "hi", "--out", str(out), "--mesh", "tensor=3"]) == 2
    err = capsys.readouterr().err
    assert "has 3 devices but 8 are available" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A reward model (random head) on the shipped tiny base and its tokenizer."""
    from jaxselfeval.selfeval.reward_model import init_reward_model, save_reward_model

    base = default_model_dir()
    rm = init_reward_model(jse.load_pretrained(base, lm_head=False), seed=3)
    return save_reward_model(rm, tmp_path_factory.mktemp("rm"), tokenizer_dir=base)


def test_bon_rm_returns_the_reward_models_best_candidate(tmp_path, rm_dir, capsys):
    import numpy as np

    from jaxselfeval.sample import generate
    from jaxselfeval.selfeval.reward_model import load_reward_model, score_sequences
    from jaxselfeval.tokenizer import encode_chat, load_tokenizer

    rows = _gen(tmp_path, "bon_rm", "temperature=2.0", "--reward-model", str(rm_dir))
    d = default_model_dir()
    tok = load_tokenizer(d)
    ids = [encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    # the same 4 candidates: sampling keys depend on (seed, prompt, candidate) only
    cands = generate(jse.load_pretrained(d), ids, n=4, max_new_tokens=24, temperature=2.0,
                     tokenizer=tok)
    rm = load_reward_model(rm_dir)
    distinct = 0
    for row, p, cs in zip(rows, ids, cands):
        r = score_sequences(rm, [p + c for c in cs])
        distinct += len(set(np.round(r, 5))) > 1
        assert row["reward"] == pytest.approx(float(r.max()), abs=1e-5)
        assert row["response"] == tok.decode(cs[int(np.argmax(r))], skip_special_tokens=True)
        assert (row["samples"], row["probe_tokens"]) == (4, 0)
    assert distinct >= 2  # the pick mattered
    out = tmp_path / "x.jsonl"
    assert main(["generate", "--prompt", "hi", "--out", str(out), "--strategy", "bon_rm"]) == 2
    assert "--strategy bon_rm needs --reward-model DIR" in capsys.readouterr().err
    assert main(["generate", "--prompt", "hi", "--out", str(out), "--reward-model",
                 str(rm_dir)]) == 2
    assert "used by --strategy bon_rm only" in capsys.readouterr().err
    assert not out.exists()


def test_eval_with_a_reward_model_reports_its_best_of_n(tmp_path, rm_dir, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--out", str(out), "--reward-model", str(rm_dir), "--no-progress",
                 "limit=3", "n=2", "batch_prompts=3", "max_new_tokens=24", "rounds=[1, 1]",
                 "round_temperatures=[0, 1]", "thresholds=[0.5]", "prune_at=[4]",
                 "keep_fractions=[0.5]"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["bon_rm"]["n"] == 3 and res["summary"]["bon_rm"]["mean_samples"] == 2
    assert "Best-of-2 by external reward model" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--out", str(tmp_path / "e2"), "--reward-model", str(tmp_path)]) == 2
    assert "is not an HF directory" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_killed_run_resumes_at_the_first_unfinished_batch(tmp_path, monkeypatch):
    """With --out, finished batches are kept in OUT.chunks: a run killed after its first batch
    answers only the rest when run again and writes what an uninterrupted run writes."""
    import jaxselfeval.commands.generate as G

    def cmd(out):
        return ["generate", "--strategy", "adaptive", "--out", str(out)] + [
            x for p in PROMPTS for x in ("--prompt", p)]

    small = SMALL + ["batch_prompts=1"]
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    # the uninterrupted run has the same settings, so the same batch shapes: floats on XLA:CPU
    # depend on the batch shape (a score moved in its 7th digit between one batch of three
    # prompts and three of one on an AMD EPYC), so only like-for-like runs compare byte for byte
    assert main(cmd(whole) + small) == 0
    real, calls = G._records, []

    def killed_after_one(run, chunk, *a):
        if calls:
            raise KeyboardInterrupt
        calls.append(chunk[0].id)
        return real(run, chunk, *a)

    monkeypatch.setattr(G, "_records", killed_after_one)
    assert main(cmd(out) + small) == 130  # "interrupted"
    assert not out.exists() and len(list((tmp_path / "out.jsonl.chunks").glob("chunk-*"))) == 1

    def counted(run, chunk, *a):
        calls.append(chunk[0].id)
        return real(run, chunk, *a)

    calls.clear()
    monkeypatch.setattr(G, "_records", counted)
    assert main(cmd(out) + SMALL[:1] + ["max_new_tokens=16"] + SMALL[2:] + ["batch_prompts=1"]) == 2
    assert calls == []  # other settings: refused, the kept batch untouched
    assert main(cmd(out) + small) == 0
    assert calls == ["1", "2"]  # the first batch was not answered again
    assert out.read_text() == whole.read_text()
    assert not (tmp_path / "out.jsonl.chunks").exists()
