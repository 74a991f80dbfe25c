import json
import logging
import os

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


def test_torn_last_line_is_dropped(tmp_path, caplog):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"id": "1", "correct": True}) + "\n" + '{"id": "2", "cor')
    logger = logging.getLogger("edgetts")  # the CLI stops it propagating: listen on it directly
    logger.addHandler(caplog.handler)
    try:
        results = ResultsFile(out)
        assert results.done == {"1"}
        results.append({"id": "2", "correct": True})  # cut when this run writes (not if refused)
    finally:
        logger.removeHandler(caplog.handler)
    assert "dropped its torn last line" in caplog.text  # said, not silent (a user's review)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2"]


def test_a_whole_last_row_without_its_newline_gets_the_next_row_on_a_line_of_its_own(tmp_path):
    """Seen in review: the next row was glued onto it, and the file then refused for good."""
    out = tmp_path / "r.jsonl"
    first = json.dumps({"id": "1", "correct": True})
    out.write_text(first)  # saved by an editor that drops the final newline
    results = ResultsFile(out)
    assert results.done == {"1"}
    results.append({"id": "2", "correct": False})
    results.append({"id": "3", "correct": False})
    assert out.read_text().splitlines()[0] == first
    assert ResultsFile(out).done == {"1", "2", "3"}


def test_not_a_results_file(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("hello world\nmore text\n")
    with pytest.raises(ResultsError, match="not JSON"):
        ResultsFile(out)
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "x"}\n')
    with pytest.raises(ResultsError, match="no 'id'"):
        ResultsFile(other)


def test_a_file_of_notes_is_never_cut(tmp_path):
    # seen: `printf 'my notes' > notes.txt; edgetts run --out notes.txt` cut the notes away
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(ResultsError, match="not JSON"):
        ResultsFile(notes)
    assert notes.read_text() == "my notes"


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    first = ResultsFile(out, settings={"strategy": "majority", "n": 8})
    first.append({"id": "1", "correct": True})
    assert json.loads(out.read_text())["settings"] == {"strategy": "majority", "n": 8}
    assert ResultsFile(out, settings={"strategy": "majority", "n": 8}).done == {"1"}
    with pytest.raises(ResultsError, match="n was 8, now 4; strategy was 'majority', now 'best_of_n'"):
        ResultsFile(out, settings={"strategy": "best_of_n", "n": 4})


def test_a_setting_added_later_resumes_only_with_the_value_that_does_what_runs_did(tmp_path):
    out = tmp_path / "r.jsonl"
    ResultsFile(out, settings={"n": 8}).append({"id": "1", "correct": True})  # before "check"
    old_way = {"check": False}
    assert ResultsFile(out, settings={"n": 8, "check": False}, unrecorded=old_way).done == {"1"}
    with pytest.raises(ResultsError, match="check was False, now True"):
        ResultsFile(out, settings={"n": 8, "check": True}, unrecorded=old_way)


def test_a_setting_an_older_file_cannot_state_is_named_as_not_recorded(tmp_path):
    out = tmp_path / "r.jsonl"
    ResultsFile(out, settings={"n": 8}).append({"id": "1", "correct": True})  # before "verifier"
    with pytest.raises(ResultsError, match="verifier was not recorded, now 'probe@12ab'"):
        ResultsFile(out, settings={"n": 8, "verifier": "probe@12ab"})


def test_rows_keyed_by_another_field_resume_and_drop_their_own_torn_line(tmp_path):
    out = tmp_path / "bench.jsonl"
    rows = ResultsFile(out, id_field="problem_id")
    rows.append({"model": "m", "problem_id": "7", "correct": True})
    assert out.read_text().startswith('{"problem_id": "7"')  # its id first, as a torn line shows
    with out.open("a") as f:
        f.write('{"problem_id": "8", "mod')
    again = ResultsFile(out, id_field="problem_id")
    assert again.done == {"7"}
    again.append({"problem_id": "9"})
    assert out.read_text().count("\n") == 2 and "8" not in out.read_text()
    with pytest.raises(ResultsError, match="has no 'task_id'"):
        ResultsFile(out, id_field="task_id")


def test_an_unknowable_setting_of_an_older_file_resumes_and_a_newer_file_checks_it(tmp_path):
    from edgetts.results import UNKNOWN

    out = tmp_path / "r.jsonl"
    ResultsFile(out, settings={"n": 8}).append({"id": "1", "correct": True})  # before "data"
    assert ResultsFile(out, settings={"n": 8, "data": "a.jsonl"}, unrecorded={"data": UNKNOWN}).done == {"1"}
    other = tmp_path / "s.jsonl"
    ResultsFile(other, settings={"n": 8, "data": "a.jsonl"}).append({"id": "1", "correct": True})
    with pytest.raises(ResultsError, match="data was 'a.jsonl', now 'b.jsonl'"):
        ResultsFile(other, settings={"n": 8, "data": "b.jsonl"}, unrecorded={"data": UNKNOWN})


def test_a_line_separator_in_a_models_text_survives_a_resume(tmp_path):
    out = tmp_path / "r.jsonl"
    ResultsFile(out).append({"id": "1", "text": "a\u2028b\u0085c"})  # written raw (ensure_ascii off)
    assert "\u2028" in out.read_text()
    assert ResultsFile(out).records[0]["text"] == "a\u2028b\u0085c"


def test_unwritable_output_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResultsError, match="cannot write results"):
        ResultsFile(blocker / "r.jsonl")


def test_a_second_run_on_a_locked_file_is_refused_until_the_first_closes(tmp_path):
    """Two runs on one --out both read the same finished problems and solved and appended the
    same remaining ones (rows twice); now the second is refused while the first holds the file."""
    path = tmp_path / "out.jsonl"
    with ResultsFile(path, settings={"n": 4}, lock=True) as first:
        first.append({"id": "1", "answer": "2"})
        with pytest.raises(ResultsError, match="another run"):
            ResultsFile(path, settings={"n": 4}, lock=True)
        assert ResultsFile(path).done == {"1"}  # reading without the lock is still fine
    with pytest.raises(ResultsError, match="other settings") as refused:
        ResultsFile(path, settings={"n": 8}, lock=True)
    # a refused open let go at once (its traceback, kept here, still holds the half-made object)
    with ResultsFile(path, settings={"n": 4}, lock=True) as again:
        assert again.done == {"1"} and refused.value


def test_atomic_writes_at_once_never_share_a_temporary_file(tmp_path):
    """Seen: calibration and the metadata cache each wrote through one fixed <name>.tmp, so two
    writers at once could rename the other's half-written file into place, or fail."""
    import threading

    from edgetts.paths import write_atomically

    path = tmp_path / "calibration.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 100_000}) for i in range(2)]
    errors = []

    def write(text):
        try:
            for _ in range(30):
                write_atomically(path, text)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]
    # readable as a plain write would leave it (mkstemp's own files are the owner's alone)
    from edgetts.paths import UMASK

    assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK


def test_a_run_that_keeps_nothing_leaves_nothing_beside_its_out(tmp_path):
    """Seen in a user's review: a refused notes file got a notes.txt.lock, and a run that failed
    before its first row left an empty results file and its lock."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(ResultsError, match="not JSON"):
        ResultsFile(notes, lock=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with ResultsFile(tmp_path / "new.jsonl", settings={"n": 4}, lock=True):
        pass  # the model failed to load, say
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with ResultsFile(tmp_path / "kept.jsonl", settings={"n": 4}, lock=True) as kept:
        kept.append({"id": "1"})
    assert (tmp_path / "kept.jsonl").read_text().count("\n") == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux /proc")
def test_a_lock_that_cannot_be_made_is_not_called_held():
    """Seen in a user's review: --out /proc/x.jsonl said another run held the file."""
    with pytest.raises(ResultsError, match="cannot write results") as err:
        ResultsFile("/proc/x.jsonl", lock=True)
    assert "another run" not in str(err.value)


def test_a_data_file_with_ids_is_not_a_results_file(tmp_path):
    """Seen in review: a data file (rows with an "id") was taken as --out: its problems counted
    as done, or the run's rows were appended into it."""
    from edgetts.results import RUN_ROW_FIELDS

    data = tmp_path / "other.jsonl"
    data.write_text('{"id": "a1", "question": "What is 9+9?", "answer": "18"}\n')
    with pytest.raises(
        ResultsError, match=r"other.jsonl:1 has no 'settings' or 'candidates': not an edgetts"
    ):
        ResultsFile(data, settings={"n": 4}, row_fields=RUN_ROW_FIELDS, lock=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.jsonl"]
    older = tmp_path / "older.jsonl"  # from before settings were recorded: its rows have candidates
    older.write_text('{"id": "a1", "answer": "18", "correct": true, "candidates": []}\n')
    assert ResultsFile(older, settings={"n": 4}, row_fields=RUN_ROW_FIELDS).done == {"a1"}


TORN_TAILS = {
    "cut inside a character": '{"id": "2", "question": "café'.encode()[:-1],
    "cut inside its id": b'{"i',
    "a power cut's NULs": b"\0" * 64,
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS)
def test_a_torn_last_line_of_any_kind_is_dropped_when_the_next_row_is_written(tmp_path, tail, caplog):
    """Seen in review: a line cut inside a UTF-8 character blocked every resume ("'utf-8' codec
    can't decode"); one cut inside its id, or NULs left by a power cut, were "not JSON"."""
    out = tmp_path / "r.jsonl"
    first = json.dumps({"id": "1", "correct": True}) + "\n"
    out.write_bytes(first.encode() + tail)
    results = ResultsFile(out)
    assert results.done == {"1"}
    logger = logging.getLogger("edgetts")  # the CLI stops it propagating: listen on it directly
    logger.addHandler(caplog.handler)
    try:
        results.append({"id": "2", "correct": False})
    finally:
        logger.removeHandler(caplog.handler)
    assert "dropped its torn last line" in caplog.text
    assert out.read_text().splitlines() == [first.strip(), '{"id": "2", "correct": false}']


@pytest.mark.parametrize(
    "line, words",
    [
        (b'{"id": "2", "q": "caf\xc3"}', "r.jsonl:2 is not UTF-8 text"),
        (b"\0" * 8, "r.jsonl:2 is not JSON"),
        (b'{"id": "2", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "r.jsonl:2 is not JSON edgetts can"),
        (b'{"id": ' + b"7" * 5000 + b"}", r"r.jsonl:2 is not JSON edgetts can read \(Exceeds the limit"),
    ],
)
def test_a_bad_line_before_the_last_is_refused_by_its_line_and_kept(tmp_path, line, words):
    out = tmp_path / "r.jsonl"
    text = json.dumps({"id": "1"}).encode() + b"\n" + line + b"\n" + json.dumps({"id": "3"}).encode() + b"\n"
    out.write_bytes(text)
    with pytest.raises(ResultsError, match=words):
        ResultsFile(out)
    assert out.read_bytes() == text
    notes = tmp_path / "notes.txt"  # not a piece of a results line: never cut, even last
    notes.write_bytes(b"caf\xc3")
    with pytest.raises(ResultsError, match="notes.txt:1 is not UTF-8 text"):
        ResultsFile(notes).append({"id": "1"})
    assert notes.read_bytes() == b"caf\xc3"


def test_a_refused_run_leaves_a_torn_line_and_makes_no_folders(tmp_path):
    """Seen in review: a resume refused for its settings still cut the torn last line, and a
    refused or empty run left the --out folders it had made."""
    out = tmp_path / "r.jsonl"
    text = json.dumps({"id": "1", "settings": {"n": 4}}) + '\n{"id": "2", "sett'
    out.write_text(text)
    with pytest.raises(ResultsError, match="n was 4, now 8"):
        ResultsFile(out, settings={"n": 8}, lock=True)
    assert out.read_text() == text
    with ResultsFile(out, settings={"n": 4}, lock=True):
        pass  # resumed, nothing written: the file is as it was
    assert out.read_text() == text
    with ResultsFile(tmp_path / "new" / "deeper" / "r.jsonl", settings={"n": 4}, lock=True):
        pass  # the model failed to load, say
    assert not (tmp_path / "new").exists()


def test_a_symlink_to_a_locked_file_finds_it_locked(tmp_path):
    """Seen in review: a second run through a symlinked --out took <link>.lock and appended
    beside the first."""
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(real.name)
    with ResultsFile(real, settings={"n": 4}, lock=True) as first:
        first.append({"id": "1"})
        with pytest.raises(ResultsError, match="another run"):
            ResultsFile(link, settings={"n": 4}, lock=True)
    with ResultsFile(link, settings={"n": 4}, lock=True) as second:
        second.append({"id": "2"})
        with pytest.raises(ResultsError, match="another run"):
            ResultsFile(real, settings={"n": 4}, lock=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl", "real.jsonl.lock"]


def test_a_fifo_as_output_is_refused_before_anything_is_made(tmp_path):
    """Seen in review: `mkfifo ff; edgetts run --out ff` hung for ever in the read."""
    import threading

    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    said = []

    def open_it():
        try:
            ResultsFile(fifo, settings={"n": 4}, lock=True)
        except ResultsError as exc:
            said.append(str(exc))

    opening = threading.Thread(target=open_it, daemon=True)  # a hang fails the test, not the suite
    opening.start()
    opening.join(timeout=10)
    assert said and "ff is not a regular file" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ff"]
