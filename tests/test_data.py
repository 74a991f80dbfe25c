import json

import pytest

from edgetts.data import DataError, load_problems


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_known_shapes(tmp_path):
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q1", "answer": "work\n#### 1,234"}])
    math500 = write_jsonl(
        tmp_path / "m.jsonl", [{"problem": "p", "answer": "\\frac{1}{2}", "unique_id": "u1"}]
    )
    math = write_jsonl(tmp_path / "mt.jsonl", [{"problem": "p", "solution": "so \\boxed{7}."}])
    mawps = write_jsonl(tmp_path / "mw.jsonl", [{"input": "i", "target": 43.0, "idx": 5}])
    asdiv = write_jsonl(
        tmp_path / "a.jsonl", [{"body": "Ellen has 6.", "question": "How many?", "answer": "15 (balls)"}]
    )
    assert load_problems(gsm)[0].answer == "1234"
    p = load_problems(math500)[0]
    assert (p.id, p.answer) == ("u1", "\\frac{1}{2}")
    assert load_problems(math)[0].answer == "7"
    p = load_problems(mawps)[0]
    assert (p.id, p.question, p.answer) == ("5", "i", "43")
    p = load_problems(asdiv)[0]
    assert (p.question, p.answer) == ("Ellen has 6. How many?", "15")


def test_field_mapping_and_limit(tmp_path):
    f = write_jsonl(
        tmp_path / "x.jsonl", [{"ctx": "A", "ask": "B?", "gold": "3", "key": f"k{i}"} for i in range(5)]
    )
    problems = load_problems(f, question_key="ctx+ask", answer_key="gold", id_key="key", limit=2)
    assert [(p.id, p.question, p.answer) for p in problems] == [("k0", "A B?", "3"), ("k1", "A B?", "3")]


def test_json_list_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text(json.dumps([{"question": "q", "answer": "2"}]))
    assert load_problems(f)[0].answer == "2"


def test_malformed_line_reports_line_number(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "q", "answer": "1"}\n{"question": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_problems(f)


def test_unknown_shape_and_missing_key(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"foo": "bar"}])
    with pytest.raises(DataError, match="--question-key"):
        load_problems(f)
    with pytest.raises(DataError, match="no field 'nope'"):
        load_problems(f, question_key="nope")


def test_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_problems(tmp_path / "none.jsonl")
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "idx": 1}, {"question": "b", "idx": 1}])
    with pytest.raises(DataError, match="not unique"):
        load_problems(f)
