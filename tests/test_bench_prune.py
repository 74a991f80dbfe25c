"""tools/bench_prune.py: its table over appended rows, and a resume that refuses another run's rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_prune as bench  # noqa: E402


def row(index: int, setting: str, right: bool, tokens: int, seconds: float, pruned: int = 0) -> dict:
    return {
        "index": index,
        "setting": setting,
        "right": right,
        "tokens": tokens,
        "seconds": seconds,
        "samples": 16 if setting == "all" else 8,
        "pruned": pruned,
    }


def test_table_pairs_each_setting_with_all_n_on_the_problems_both_have():
    rows = [
        row(0, "all", True, 1000, 10.0),
        row(0, "prune", True, 400, 5.0, pruned=3),
        row(1, "all", False, 2000, 20.0),
        row(1, "prune", True, 1000, 8.0, pruned=1),
        row(2, "all", True, 3000, 30.0),  # not yet run with pruning: left out of both
    ]
    settings = (bench.BASELINE, bench.SETTINGS[2])
    lines = bench.table(rows, settings)
    assert "2 problems" in lines[0]
    assert lines[3] == "| all N | 1 |  | 3000 | 30 | 32 | 0 | 1.00 | 1.00 |"
    # won 1 lost 0; medians of 5/10, 8/20 and of 400/1000, 1000/2000
    assert lines[4] == "| adaptive + pruning | 2 | 1/0 (1.00) | 1400 | 13 | 16 | 4 | 0.45 | 0.45 |"


def test_rows_of_another_run_are_refused_not_mixed(tmp_path):
    out = tmp_path / "rows.jsonl"
    settings = {"data": "x.jsonl", "n": 8, "seed": 0, "max_tokens": 400}
    kept = {"id": "0/all", **row(0, "all", True, 1000, 10.0), "settings": settings}
    out.write_text(json.dumps(kept) + "\n")
    data = tmp_path / "x.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    with pytest.raises(SystemExit, match="other settings .*n was 8, now 16"):
        bench.main(["--data", str(data), "--limit", "1", "-n", "16", "--out", str(out)])
    assert out.read_text() == json.dumps(kept) + "\n"  # nothing written over


def test_a_finished_run_resumes_to_its_table_without_solving_again(tmp_path, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    run = {"data": "x.jsonl", "n": 16, "seed": 0, "max_tokens": 400}
    out = tmp_path / "rows.jsonl"
    out.write_text(
        "".join(
            json.dumps({"id": bench.row_id(0, s), **row(0, s.key, True, 100, 1.0), "settings": run}) + "\n"
            for s in bench.SETTINGS
        )
    )
    bench.main(["--data", str(data), "--limit", "1", "--out", str(out)])  # no model: nothing left to run
    printed = capsys.readouterr().out
    assert "1 problems" in printed and "| adaptive + pruning | 1 | 0/0 (1.00) |" in printed
