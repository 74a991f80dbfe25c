import gzip
import json
from pathlib import Path

import pytest

from edgetts.data import DataError, _gold, load_code_problems, load_problems


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
    with pytest.raises(DataError, match="id '1' appears more than once"):
        load_problems(f)
    code = write_jsonl(tmp_path / "c.jsonl", [{"task_id": "T/0", "prompt": "def f(): ..."}] * 2)
    with pytest.raises(DataError, match="id 'T/0' appears more than once"):
        load_code_problems(code)
    with pytest.raises(DataError, match="no problems found"):
        load_problems(write_jsonl(tmp_path / "empty.jsonl", []))


def test_gold_answers_keep_math_tuples_intervals_and_lists():
    # ASDiv's "15 (balls)" loses its unit; MATH's brackets and lists are answers, not units
    golds = {
        "15 (balls)": "15",
        "(-2,1)": "(-2,1)",
        "(a+5)(b+2)": "(a+5)(b+2)",
        "(0,9) \\cup (9,36)": "(0,9) \\cup (9,36)",
        "-2,1": "-2,1",
        "1,234": "1234",
        "43.0": "43",
    }
    for raw, gold in golds.items():
        assert _gold({"answer": raw}, None, Path("x"), 1) == gold, raw


def test_a_line_separator_inside_a_string_is_text_and_a_corrupt_gzip_is_named(tmp_path):
    f = tmp_path / "ls.jsonl"
    f.write_text(json.dumps({"question": "a\u2028b?", "answer": "#### 3"}, ensure_ascii=False) + "\n")
    assert load_problems(f)[0].question == "a\u2028b?"
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"question": "q"}\n')[:-12] + b"garbage!" * 2)
    with pytest.raises(DataError, match="cannot read data file"):
        load_problems(bad)
    listed = tmp_path / "l.json.gz"
    listed.write_bytes(gzip.compress(json.dumps([{"question": "q", "answer": "1"}]).encode()))
    assert load_problems(listed)[0].answer == "1"


def test_null_answers_lists_and_null_ids_are_not_made_text(tmp_path):
    """Seen in a user's review: a null answer loaded as the gold 'None' (graded, always wrong),
    a list question as its Python repr, a null id as 'None'."""
    f = write_jsonl(tmp_path / "n.jsonl", [{"question": "What is 2+3?", "answer": None}])
    assert load_problems(f)[0].answer is None  # answered, not graded
    f = write_jsonl(tmp_path / "l.jsonl", [{"question": ["What is", "2+3?"], "answer": "5"}])
    with pytest.raises(DataError, match=r"l.jsonl:1: field 'question' is a list"):
        load_problems(f)
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": {"x": 1}}])
    with pytest.raises(DataError, match="field 'answer' is a dict"):
        load_problems(f)
    f = write_jsonl(tmp_path / "i.jsonl", [{"question": "q", "answer": "1", "id": None}])
    with pytest.raises(DataError, match=r"i.jsonl:1: the problem id \(id\) is empty"):
        load_problems(f)


@pytest.mark.parametrize(
    "row, words",
    [
        ({"question": "What is \u0000 2+3?", "answer": "5"}, "x.jsonl:2: field 'question' contains a NUL"),
        ({"question": "What is \ud800 2+3?", "answer": "5"}, "x.jsonl:2: field 'question' contains a lone"),
        ({"question": "q", "answer": "5", "id": "\udfff"}, "x.jsonl:2: field 'id' contains a lone"),
        ({"question": "q", "answer": "work\n#### 5\ud800"}, "x.jsonl:2: field 'answer' contains a lone"),
    ],
)
def test_text_no_model_reads_is_refused_by_its_line_when_the_file_loads(tmp_path, row, words):
    """Seen in review: such a row ended the run halfway (the rows before it solved), with the
    prompt's or the codec's words and no file or line."""
    f = write_jsonl(tmp_path / "x.jsonl", [{"question": "What is 1+1?", "answer": "2"}, row])
    with pytest.raises(DataError, match=words):
        load_problems(f)


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"question": ' + "[" * 200_000 + "]" * 200_000 + "}", "x.jsonl:2: not valid JSON"),
        ('{"question": "q", "id": ' + "7" * 5000 + "}", "x.jsonl:2: not valid JSON"),
    ],
)
def test_json_python_cannot_read_is_named_by_its_line(tmp_path, line, words):
    """Seen in review: a line nested 200k deep was a RecursionError traceback, a 5000-digit id
    an error without file or line."""
    f = tmp_path / "x.jsonl"
    f.write_text('{"question": "q0", "id": 0}\n' + line + "\n")
    with pytest.raises(DataError, match=words):
        load_problems(f)
    listed = tmp_path / "x.json"
    listed.write_text("[" + line + "]")
    with pytest.raises(DataError, match="x.json:1: not valid JSON"):
        load_problems(listed)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    """Seen in review: a file saved with a UTF-8 BOM (as some Windows editors do) was refused."""
    row = json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n"
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + row.encode())
    assert load_problems(f)[0].question == "What is 2+3?"
    gz = tmp_path / "bom.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbf" + row.encode()))
    assert load_problems(gz)[0].answer == "5"


@pytest.mark.parametrize("entry", [5, ["add"], "add all", "class"])
def test_a_code_rows_entry_point_must_be_a_function_name(tmp_path, entry):
    """Seen in review: an entry_point of 5 or ["add"] was run as `check(5)` and scored wrong."""
    row = {"task_id": "T/0", "prompt": "def add(a, b):\n", "test": "def check(c): ...", "entry_point": entry}
    f = write_jsonl(tmp_path / "c.jsonl", [row])
    with pytest.raises(DataError, match="c.jsonl:1: 'entry_point' must be a function's name"):
        load_code_problems(f)


def test_an_empty_entry_point_is_none(tmp_path):
    row = {"task_id": "T/0", "prompt": "def add(a, b):\n", "entry_point": ""}  # as before the check
    assert load_code_problems(write_jsonl(tmp_path / "c.jsonl", [row]))[0].entry_point is None


def test_rows_from_stdin(tmp_path, monkeypatch):
    """`run --data -` said "data file - does not exist"."""
    import io
    import sys

    rows = json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(rows.encode())))
    assert [(p.id, p.answer) for p in load_problems("-")] == [("1", "5")]
    code = json.dumps({"task_id": "T/0", "prompt": "def f(): ...", "entry_point": "f"}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(code.encode())))
    assert [p.entry_point for p in load_code_problems("-")] == ["f"]
