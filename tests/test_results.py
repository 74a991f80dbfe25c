import json

import pytest

from edgetts.results import ResultsError, ResultsFile


def test_append_and_resume(tmp_path):
    out = tmp_path / "r.jsonl"
    results = ResultsFile(out)
    results.append({"id": "1", "correct": True})
    results.append({"id": "2", "correct": False})
    again = ResultsFile(out)
    assert again.done == {"1", "2"}
    assert again.accuracy() == (1, 2)


def test_torn_last_line_is_dropped(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"id": "1", "correct": True}) + "\n" + '{"id": "2", "cor')
    results = ResultsFile(out)
    assert results.done == {"1"}
    results.append({"id": "2", "correct": True})
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2"]


def test_not_a_results_file(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("hello world\nmore text\n")
    with pytest.raises(ResultsError, match="not JSON"):
        ResultsFile(out)
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "x"}\n')
    with pytest.raises(ResultsError, match="no 'id'"):
        ResultsFile(other)
