"""Tasks: GSM8K ground truth verifies (altered answers fail), arithmetic is seeded, correct and
split-disjoint, TFDS array_record round trip, answer extraction edge cases."""

import hashlib
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import jaxselfeval as jse  # noqa: E402
from jaxselfeval.tasks import extract_answer, get_task  # noqa: E402
from jaxselfeval.tasks.base import SYSTEM, canonical_number  # noqa: E402
from jaxselfeval.tasks.gsm8k import build, raw_dir  # noqa: E402

# sha256 of repr(test + validation examples) of ArithmeticTask(seed=0): the shipped tiny model
# was trained on seed 0's train split, so its held-out numbers stay valid only while this holds.
SEED0_HELD_OUT_SHA = "24462e0e4b09fead95c916aec60a3242"


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    try:
        raw_dir()
    except jse.JSEError as e:  # a clone without ../shared/data/gsm8k and no $JSE_GSM8K_DIR
        pytest.skip(f"GSM8K data not available: {e}")
    return get_task("gsm8k", data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_every_gsm8k_test_answer_verifies_and_altered_fail(gsm8k):
    exs = gsm8k.examples("test")
    raw = [json.loads(line) for line in (raw_dir() / "test.jsonl").read_text().splitlines()]
    assert len(exs) == len(raw) == 1319
    for e in exs:
        assert gsm8k.verify(e, e.solution) == 1.0, e.id
        wrong = e.solution.rsplit("####", 1)[0] + f"#### {int(float(e.answer)) + 1}"
        assert gsm8k.verify(e, wrong) == 0.0, e.id
        assert gsm8k.verify(e, e.solution.rsplit("####", 1)[0]) == 0.0, e.id  # no '####'
        assert e.difficulty == len(e.solution.splitlines()) - 1 >= 1
    # read back through the array_record data source, in the file's order
    assert [(e.question, e.solution) for e in exs] == [(r["question"], r["answer"]) for r in raw]
    assert gsm8k.messages(exs[0]) == [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": raw[0]["question"]}]


def test_gsm8k_splits(gsm8k):
    tr, va = gsm8k.examples("train"), gsm8k.examples("validation")
    assert len(tr) == 6973 and len(va) == 500
    assert [e.id for e in tr + va] == [f"train-{i}" for i in range(7473)]
    assert not {e.question for e in tr} & {e.question for e in va}
    with pytest.raises(jse.JSEError, match="unknown split 'dev': use one of train, validation, test"):
        gsm8k.examples("dev")


def _write(d, rows_by_split):
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_tfds_builder_small_copy_and_data_source(tmp_path):
    import tensorflow_datasets as tfds

    rows = {s: [{"question": f"{s} q{i}?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1:,}"}
                for i in range(n)] for s, n in (("train", 30), ("test", 7))}
    rows["test"][3]["answer"] = "Half is 2.50\n#### $2.50"
    _write(tmp_path / "raw", rows)
    data = tmp_path / "tfds"
    b = build(tmp_path / "raw", data)
    assert sorted(p.name for p in (data / "jse_gsm8k" / "1.0.0").glob("*.array_record*")) == [
        "jse_gsm8k-test.array_record-00000-of-00001", "jse_gsm8k-train.array_record-00000-of-00001"]
    assert b.info.splits["train"].num_examples == 30
    ds = tfds.data_source("jse_gsm8k", data_dir=str(data), split="test")
    got = sorted((ds[i] for i in range(len(ds))), key=lambda r: int(r["id"].decode().split("-")[1]))
    assert [r["question"].decode() for r in got] == [r["question"] for r in rows["test"]]
    assert [r["final"].decode() for r in got][:4] == ["1", "2", "3", "$2.50"]

    task = get_task("gsm8k", raw_dir=str(tmp_path / "raw"), data_dir=str(data))
    ex = task.examples("test")
    assert [e.answer for e in ex][:5] == ["1", "2", "3", "2.5", "5"]
    assert task.verify(ex[3], "so #### 2.5") == 1.0 and task.verify(ex[3], "#### 25") == 0.0
    assert [len(task.examples(s)) for s in ("train", "validation")] == [27, 3]  # a tenth

    # the prepared dir no longer matches the raw files: a clear error, not stale rows
    _write(tmp_path / "raw", {"test": rows["test"][:5]})
    with pytest.raises(jse.JSEError, match="has 7 test rows but .* has 5: delete it or use another"):
        build(tmp_path / "raw", data)


def test_tfds_builder_bad_row(tmp_path):
    _write(tmp_path / "raw", {"train": [{"question": "q", "answer": "1\n#### 1"}],
                              "test": [{"question": "q", "answer": "no final line"}]})
    with pytest.raises(jse.JSEError, match=r"test.jsonl:1: not a GSM8K row"):
        build(tmp_path / "raw", tmp_path / "tfds")


@pytest.mark.parametrize("text,ans", [
    ("so #### 1,000", "1000"), ("#### $18.00", "18"), ("#### -3", "-3"), ("#### 2.50", "2.5"),
    ("The answer is 5", None), ("#### 7.\n", "7"), ("#### 3\n#### 4", "4"), ("#### 5.0", "5"),
    ("#### -$3", "-3"), ("#### .5", "0.5"), ("#### 007", "7"), ("#### 1,234.50 dollars", "1234.5"),
    ("####", None), ("#### \nfoo", None), ("#### many", None), ("#### -0", "0"),
    ("x\n#### 12 apples\n", "12"), ("#### " + "9" * 40, "9" * 40),
])
def test_extraction(text, ans):
    assert extract_answer(text) == ans


def test_canonical_number_equalities():
    assert canonical_number("1,000") == canonical_number("1000") == "1000"
    assert canonical_number("5.0") == canonical_number("5") == canonical_number("$5.") == "5"
    assert canonical_number("100") == "100" and canonical_number("-12.30") == "-12.3"


def test_arithmetic_seeded_correct_disjoint():
    a = get_task("arithmetic", seed=3, n_train=2000)
    b = get_task("arithmetic", seed=3, n_train=2000)
    assert a.examples("test") == b.examples("test")
    assert a.examples("test") != get_task("arithmetic", seed=4).examples("test")
    sizes = {s: len(a.examples(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 2000, "validation": 500, "test": 500}
    qs = {s: {e.question for e in a.examples(s)} for s in sizes}
    assert [len(q) for q in qs.values()] == list(sizes.values())  # no duplicates within a split
    assert not qs["train"] & qs["test"] and not qs["train"] & qs["validation"]
    assert not qs["validation"] & qs["test"]
    for split in sizes:
        assert {e.difficulty for e in a.examples(split)} == {1, 2, 3, 4}
    ops = set()
    for e in a.examples("train") + a.examples("test"):
        assert a.verify(e, e.solution) == 1.0
        assert a.verify(e, e.solution.rsplit("####", 1)[0] + f"#### {int(e.answer) + 1}") == 0.0
        lines = e.solution.splitlines()
        assert len(lines) == e.difficulty + 1 and lines[-1] == f"#### {e.answer}"
        prev = int(re.search(r"has (\d+)", e.question).group(1))
        for line in lines[:-1]:  # one operation a line, chained from the question's start number
            x, op, y, eq, z = line.split()
            ops.add(op)
            assert eq == "=" and int(x) == prev
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(z)
            assert 0 < int(z) < 1000
            prev = int(z)
        assert str(prev) == e.answer
        assert len(e.question.split()) <= 40
    assert ops == {"+", "-", "*"}
    assert a.messages(a.examples("test")[0]) == [{"role": "user", "content": a.examples("test")[0].question}]


def test_arithmetic_held_out_fixed():
    """Held-out splits do not depend on n_train, and seed 0's are pinned (see SEED0_HELD_OUT_SHA)."""
    small, big = get_task("arithmetic", n_train=10), get_task("arithmetic", n_train=40000)
    held = small.examples("test") + small.examples("validation")
    assert held == big.examples("test") + big.examples("validation")
    assert not {e.question for e in held} & {e.question for e in big.examples("train")}
    assert hashlib.sha256(repr(held).encode()).hexdigest()[:32] == SEED0_HELD_OUT_SHA
    with pytest.raises(jse.JSEError, match="unknown split 'val'"):
        small.examples("val")


def test_unknown_task_and_missing_dir(monkeypatch, tmp_path):
    with pytest.raises(jse.JSEError, match="unknown task 'gsm9k' \\(did you mean 'gsm8k'\\?\\): "
                                           "use one of arithmetic, gsm8k"):
        get_task("gsm9k")
    with pytest.raises(jse.JSEError, match="no GSM8K test.jsonl in"):
        raw_dir(tmp_path)
    monkeypatch.setenv("JSE_GSM8K_DIR", str(tmp_path))
    with pytest.raises(jse.JSEError, match="JSE_GSM8K_DIR"):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")
    with pytest.raises(jse.JSEError, match="task 'arithmetic' has no option 'n_trian' \\(did you mean "
                                           "'n_train'\\?\\): its options are seed, n_train"):
        get_task("arithmetic", n_trian=5)


def test_arithmetic_checking_documents_mark_exactly_the_slipped_line():
    from jaxselfeval.tasks.arithmetic import MARK_BAD, MARK_OK

    task = get_task("arithmetic", seed=0, n_train=500)
    docs = task.checking_documents(task.examples("train"), 400, seed=5)
    assert docs == task.checking_documents(task.examples("train"), 400, seed=5)  # seeded
    n_bad = 0
    for messages, segs in docs:
        q = messages[0]["content"]
        assert q.startswith("Check: ") and len(messages) == 1
        assert [t for t, tr in segs if tr] == [s for s, _ in segs[1::3]]  # only marks trained
        prev = int(re.search(r"has (\d+)", q).group(1))
        marks = []
        for line, (mark, _), _ in zip(segs[0::3], segs[1::3], segs[2::3]):
            x, op, y, _, z = line[0].split()
            right = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]
            assert int(x) == prev and int(z) >= 0  # a slip is carried on by the later lines
            assert mark == (MARK_OK if int(z) == right else MARK_BAD)
            marks.append(mark)
            prev = int(z)
        assert segs[-1][0] == f"#### {prev}"
        assert marks.count(MARK_BAD) <= 1
        n_bad += MARK_BAD in marks
    assert 150 < n_bad < 250  # p_slip 0.5


def test_encode_segments_masks_only_trained_segments():
    from jaxselfeval.tokenizer import encode_chat, load_tokenizer
    from jaxselfeval.assets import ASSETS
    from jaxselfeval.train.data import encode_segments

    tok = load_tokenizer(ASSETS / "tiny_base")
    msgs = [{"role": "user", "content": "Check: Tom has 3 pens."}]
    segs = [("3 + 4 = 8", False), (" bad", True), ("\n", False), ("#### 8", False)]
    toks, mask, dropped = encode_segments(tok, [(msgs, segs)], 64)
    p = encode_chat(tok, msgs)
    bad = tok.encode(" bad", add_special_tokens=False)
    assert dropped == 0 and list(toks[0, :len(p)]) == p
    targets = toks[0, 1:][mask[0, :-1] == 1]  # the next tokens the loss sees
    assert list(targets) == bad
    assert len(toks[0]) == 64 and mask[0].sum() == len(bad)
    with pytest.raises(jse.JSEError, match="every document is longer than seq_len=8"):
        encode_segments(tok, [(msgs, segs)], 8)


def test_arithmetic_direct_share_answers_training_problems_directly():
    from jaxselfeval.errors import JSEError
    from jaxselfeval.tasks.arithmetic import is_direct

    shares = [0.8, 0.5, 0.2, 0.0]
    plain = get_task("arithmetic", n_train=4000, n_validation=50, n_test=50)
    mixed = get_task("arithmetic", n_train=4000, n_validation=50, n_test=50, direct_share=shares)
    for split in ("validation", "test"):  # held-out problems and solutions are untouched
        assert mixed.examples(split) == plain.examples(split)
    a, b = plain.examples("train"), mixed.examples("train")
    assert [e.question for e in a] == [e.question for e in b]
    for d, share in enumerate(shares, 1):
        rows = [(x, y) for x, y in zip(a, b) if x.difficulty == d]
        direct = [y for x, y in rows if is_direct(y.solution)]
        assert abs(len(direct) / len(rows) - share) < 0.05, (d, len(direct) / len(rows))
        for x, y in rows:  # a direct solution states the same (right) answer, nothing else
            assert y.solution == (f"#### {x.answer}" if is_direct(y.solution) else x.solution)
            assert mixed.verify(y, y.solution) == 1.0
    with pytest.raises(JSEError, match="one share in \\[0, 1\\] per difficulty 1..4"):
        get_task("arithmetic", direct_share=[0.5, 0.5])
    with pytest.raises(JSEError, match="direct_share"):
        get_task("arithmetic", direct_share=[0.5, 1.5, 0, 0])
    assert is_direct(" #### 12") and not is_direct("3 + 4 = 7\n#### 7")


def test_response_kinds():
    """arithmetic tells a worked response from a direct one; a task without kinds says -1."""
    task = get_task("arithmetic", n_train=10, n_validation=2, n_test=2)
    assert task.kinds == ("worked", "direct")
    assert task.kinds[task.response_kind("3 + 4 = 7\n#### 7")] == "worked"
    assert task.kinds[task.response_kind("  #### 7")] == "direct"
    from jaxselfeval.tasks.gsm8k import GSM8KTask

    assert GSM8KTask.kinds == () and GSM8KTask.response_kind(None, "#### 7") == -1


@pytest.mark.parametrize("text,ans", [
    ("3 + 9 = 12\n#### 12", "12"),
    ("So Leo has 12 shells.", "12"),
    ("He has $1,200.", "1200"),
    ("15 - 4 = 11, so the answer is 11.", "11"),
    ("The answer is -3", "-3"),
    ("#### 7\nI hope this helps! 2 more?", "2"),  # the last number, as lm-eval reads it
    ("no number at all", None),
])
def test_flexible_extraction_reads_the_last_number(text, ans):
    from jaxselfeval.tasks.base import extract_last_number

    assert extract_last_number(text) == ans


def test_few_shot_arithmetic_for_a_chat_model():
    """shots: a system turn stating the format, worked examples of their own (in no split) as
    earlier turns, then the question; the splits are those of the task without shots. flexible:
    verify reads the last number, verify_strict the number after '####'."""
    plain = get_task("arithmetic", max_steps=1, n_train=200)
    t = get_task("arithmetic", max_steps=1, n_train=200, shots=[2, 2, 1], extract="flexible")
    for split in ("train", "validation", "test"):
        assert t.examples(split) == plain.examples(split)
    e = t.examples("test")[0]
    m = t.messages(e)
    assert m[0] == {"role": "system", "content": SYSTEM} and m[-1]["content"] == e.question
    assert [x["role"] for x in m[1:-1]] == ["user", "assistant"] * 3
    shots = [x["content"] for x in m[1:-1:2]]
    questions = {x.question for s in ("train", "validation", "test") for x in t.examples(s)}
    assert not questions & set(shots)
    assert [x["content"].count("\n") for x in m[2:-1:2]] == [2, 2, 1]  # worked lines + ####
    assert plain.messages(e) == [{"role": "user", "content": e.question}]
    said = f"{e.question.split()[2]} + 1 = {e.answer}. So the answer is {e.answer}."
    assert t.verify(e, said) == 1.0 and t.verify_strict(e, said) == 0.0
    assert plain.verify(e, said) == 0.0  # strict by default
    assert t.verify(e, f"#### {e.answer}") == t.verify_strict(e, f"#### {e.answer}") == 1.0
