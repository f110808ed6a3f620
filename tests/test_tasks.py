"""Tasks: GSM8K ground truth verifies (altered answers fail), arithmetic is seeded, correct and
split-disjoint, TFDS array_record round trip, answer extraction edge cases."""

import json
import re

import pytest

import jaxselfeval as jse
from jaxselfeval.tasks import extract_answer, get_task
from jaxselfeval.tasks.gsm8k import raw_dir

@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    return get_task("gsm8k", data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_every_gsm8k_test_answer_verifies_and_altered_fail(gsm8k):
    exs = gsm8k.examples("test")
    raw = [json.loads(line) for line in (raw_dir() / "test.jsonl").read_text().splitlines()]
    assert len(exs) == len(raw) == 1319
    for e in exs:
        assert gsm8k.verify(e, e.solution) == 1.0, e.id
        wrong = e.solution.rsplit("####", 1)[0] + f"#### {int(float(e.answer)) + 1}"
        assert gsm8k.verify(e, wrong) == 0.0, e.id
    # read back through tfds.data_source equals the raw file
    assert [e.question for e in exs] == [r["question"] for r in raw]


def test_gsm8k_splits(gsm8k):
    tr, va = gsm8k.examples("train"), gsm8k.examples("validation")
    assert len(tr) + len(va) == 7473 and len(va) == 500
    assert not {e.id for e in tr} & {e.id for e in va}
    with pytest.raises(jse.JSEError, match="unknown split 'dev'"):
        gsm8k.examples("dev")


@pytest.mark.parametrize("text,ans", [
    ("so #### 1,000", "1000"), ("#### $18.00", "18"), ("#### -3", "-3"), ("#### 2.50", "2.5"),
    ("The answer is 5", None), ("#### 7.\n", "7"), ("#### 3\n#### 4", "4"),
])
def test_extraction(text, ans):
    assert extract_answer(text) == ans


def test_arithmetic_seeded_correct_disjoint():
    a = get_task("arithmetic", seed=3, n_train=2000)
    b = get_task("arithmetic", seed=3, n_train=2000)
    assert a.examples("test") == b.examples("test")
    assert a.examples("test") != get_task("arithmetic", seed=4).examples("test")
    qs = {s: {e.question for e in a.examples(s)} for s in ("train", "validation", "test")}
    assert not qs["train"] & qs["test"] and not qs["train"] & qs["validation"]
    assert not qs["validation"] & qs["test"]
    diffs = {e.difficulty for e in a.examples("test")}
    assert diffs == {1, 2, 3, 4}
    for e in a.examples("train"):
        assert a.verify(e, e.solution) == 1.0
        for line in e.solution.splitlines()[:-1]:
            x, op, y, _, z = line.split()
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(z)
        assert e.solution.splitlines()[-1] == f"#### {e.answer}"
        assert len(re.findall(r"\n", e.solution)) == e.difficulty


def test_unknown_task_and_missing_dir(monkeypatch, tmp_path):
    with pytest.raises(jse.JSEError, match="unknown task 'gsm9k' \\(did you mean 'gsm8k'\\?\\)"):
        get_task("gsm9k")
    with pytest.raises(jse.JSEError, match="no GSM8K test.jsonl in"):
        raw_dir(tmp_path)
    monkeypatch.setenv("JSE_GSM8K_DIR", str(tmp_path))
    with pytest.raises(jse.JSEError, match="JSE_GSM8K_DIR"):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")
