"""SolveOptions: settings no strategy can run with fail before any model loads."""

import pytest

from edgetts.solver import SolveOptions


@pytest.mark.parametrize("bad, message", [
    ({"strategy": "bogus"}, "unknown strategy"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"memory_mb": 0}, "memory_mb"),
    ({"strategy": "beam_search", "n": 6, "beam_width": 4}, "multiple"),
])
def test_bad_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        SolveOptions(**bad).validate()


def test_defaults_are_valid():
    SolveOptions().validate()
    SolveOptions(strategy="greedy", top_k=20, top_p=0.8).validate()
