import os
import signal
import time

import pytest

from edgetts.grading import answers_equal, extract_answer, is_correct, last_boxed, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is \\boxed{18}.", "18"),
        ("first \\boxed{3} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\frac{\\sqrt{3}}{2}} ok", "\\frac{\\sqrt{3}}{2}"),
        ("The answer is 42.", "42"),
        ("The answer is: $7$", "7"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("x = 5 and then y = 7", "7"),
        ("no numbers here", None),
        ("", None),
        ("The answer is \\$5.", "5"),  # an escaped dollar is no math delimiter
        ("The answer is $\\$ 5$", "5"),
        ("x = \\boxed 5. Also \\frac{1}{2}", "5"),  # no brace: the token after it
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_unfinished_box_is_no_answer():
    assert last_boxed("\\boxed{12") is None
    assert extract_answer("we get 12 so \\boxed{12") is None
    # seen: a path cut at the token limit answered "\\(\\boxed" and won a tie against 5
    assert extract_answer("Therefore, the final answer is \\(\\boxed") is None


def test_cut_text_answers_only_explicitly():
    assert extract_answer("so far we have 3,", complete=False) is None
    assert extract_answer("so far we have 3,") == "3"  # no trailing comma in a number
    assert extract_answer("The answer is 3. Let me check 4", complete=False) == "3"
    assert extract_answer("we get \\boxed{7} and then 9", complete=False) == "7"
    assert extract_answer("The answer is \\(12\\)") == "12"


@pytest.mark.parametrize(
    "a, b",
    [
        ("18", "18.00"),
        ("\\$1,000", "1000"),
        ("\\frac{1}{2}", "0.5"),
        ("15 (balls)", "15"),
        ("18 dollars", "18"),
        ("3\\sqrt{13}", "3\\sqrt{13}"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\text{Purple}", "Purple"),
        ("50\\%", "50"),
        ("1\\,000", "1000"),
        ("50\\,\\%", "50"),
        ("12 eggs per day", "12"),
        ("5 m", "5"),
    ],
)
def test_equal_answers(a, b):
    assert answers_equal(a, b)
    assert answers_equal(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        ("18", "19"),
        ("3,5", "35"),
        ("\\frac{1}{3}", "0.5"),
        (None, "1"),
        # words with a number after them, or letters glued to it, are no unit
        ("5 and 7", "5"),
        ("2 or 3", "2"),
        ("2x^2", "2"),
        ("3x", "3"),
        ("1e5", "1"),
        ("4 hours and 30 minutes", "4"),
        # whole numbers compare exactly, however large
        ("1000001", "1000000"),
        ("192000000", "192000100"),
    ],
)
def test_unequal_answers(a, b):
    assert not answers_equal(a, b)


def test_normalize_groups_numbers():
    assert normalize_answer("18.0") == normalize_answer("\\$18") == "18"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer(None) is None


def test_is_correct_whole_solution():
    assert is_correct("7 pens cost 7 * 3 = 21.\n\nTherefore, the final answer is: $\\boxed{21}$.", "21")
    assert not is_correct("\\boxed{20}", "21")


def test_an_answer_sympy_would_compute_for_minutes_is_unequal_after_the_time_limit(monkeypatch):
    """Seen in review: a model's (10^{8})! made sympy compute the factorial in C code that holds
    the GIL; on a server's worker thread (no SIGALRM timeout there) it froze the whole server,
    health check and SIGTERM included. The comparison runs in a child process now, killed past
    its limit, and a new child serves the next comparison."""
    import threading

    from edgetts import symbolic

    monkeypatch.setattr(symbolic, "TIMEOUT_S", 2.0)
    symbolic.symbolic_equal.cache_clear()
    verdicts: list[bool] = []
    worker = threading.Thread(target=lambda: verdicts.append(answers_equal("(10^{8})!", "7")), daemon=True)
    worker.start()
    worker.join(60)  # a hang check: minutes before the fix
    assert verdicts == [False]
    assert answers_equal("x+1", "1+x") and not answers_equal("x+1", "x+2")


def test_a_comparison_process_that_died_or_cannot_start_leaves_answers_unequal(monkeypatch):
    """Diff review: a child that died was replaced with its pipes left open, and one that could
    not start raised out of every vote that reached a symbolic answer."""
    from edgetts import symbolic

    symbolic.symbolic_equal.cache_clear()
    assert answers_equal("x+3", "3+x")
    symbolic._child.process.kill()  # dead between two comparisons: the next one starts another
    symbolic._child.process.wait()
    assert answers_equal("x+4", "4+x")

    def cannot_start():
        raise OSError("no such interpreter")

    monkeypatch.setattr(symbolic, "_child", None)
    monkeypatch.setattr(symbolic, "_Child", cannot_start)
    assert not answers_equal("x+5", "5+x")


def _fresh_child(symbolic) -> None:
    symbolic.symbolic_equal.cache_clear()
    with symbolic._lock:
        if symbolic._child is not None:
            symbolic._child.kill()
        symbolic._child = None


def test_the_comparison_process_imports_nothing_from_the_working_directory(tmp_path, monkeypatch):
    """Review: `python -m` put the working directory first on the child's path, so a sympy.py
    in the folder a server was started from ran in the child."""
    from edgetts import symbolic

    marker = tmp_path / "planted-ran"
    (tmp_path / "sympy.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    monkeypatch.chdir(tmp_path)
    _fresh_child(symbolic)
    try:
        assert answers_equal("x+6", "6+x")
        assert not marker.exists()
    finally:
        _fresh_child(symbolic)


def test_the_comparison_process_outlives_the_thread_that_first_compared():
    """Review: the child's parent-death signal follows the thread that started it: a worker
    thread's exit killed it, and a comparison under way came back unequal, cached so."""
    import threading

    from edgetts import symbolic

    _fresh_child(symbolic)
    worker = threading.Thread(target=lambda: answers_equal("x+7", "7+x"))
    worker.start()
    worker.join(120)
    time.sleep(0.5)  # the signal, had it been sent, has arrived
    assert symbolic._child is not None and symbolic._child.process.poll() is None
    assert answers_equal("x+8", "8+x")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_process_compares_with_a_child_of_its_own():
    """Diff review: started from a thread pool, the comparison child could not be started in a
    forked copy of the process (the pool's thread is not copied): it waited for ever."""
    from edgetts import symbolic

    _fresh_child(symbolic)
    assert answers_equal("x+9", "9+x")  # the parent's child runs
    pid = os.fork()
    if pid == 0:  # the copy: a verdict within a minute, or SIGALRM ends it
        signal.alarm(60)
        os._exit(0 if answers_equal("x+10", "10+x") else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert symbolic._child is not None and symbolic._child.process.poll() is None  # untouched


def test_whole_numbers_compare_exactly_however_large():
    """Code review: as floats, 12345678901234567890 and 12345678901234567891 were equal, and a
    printed big integer normalised to another number (...168)."""
    assert not answers_equal("12345678901234567890", "12345678901234567891")
    assert answers_equal("12,345,678,901,234,567,890", "12345678901234567890")
    assert normalize_answer("12345678901234567890") == "12345678901234567890"
    assert answers_equal("5", "5.0") and answers_equal("18", "\\frac{36}{2}")
    assert normalize_answer("1" * 5000) is not None  # past Python's int limit: read as a float


def test_numbers_beyond_a_float_compare_without_overflow():
    """Sandbox/grading review: a 400-digit answer beside a decimal raised OverflowError in the
    vote, and two equal 5,000-digit answers were unequal (inf - inf)."""
    assert not answers_equal("1" * 400, "0.5")
    assert answers_equal("1" * 400, "1" * 400)
    assert answers_equal("9" * 5000, "9" * 5000)  # past the int limit: compared as text


@pytest.mark.parametrize(
    "a, b, equal",
    [
        # two decimals differ by more than the shorter one's rounding (the 1e-6 tolerance
        # merged these), a whole number exactly
        ("123456.7", "123456.8", False),
        ("1000000.5", "1000001", False),
        ("0.0000005", "0", False),
        ("\\$123,456.70", "123456.7", True),
        # a gold rounded to its last place (MAWPS) against a printed float (diff review)
        ("0.3333333333333334", "0.3333333333", True),
        ("0.6666666666666666", "0.6666666667", True),
        ("0.333", "0.3333333", False),
        # a decimal written for a fraction keeps the tolerance
        ("0.333333", "\\frac{1}{3}", True),
        ("\\frac{1}{3}", "0.333333", True),
        ("0.33", "\\frac{1}{3}", False),
        # Python's large floats and exponents
        ("1e+16", "10000000000000000", True),
        ("1.2e+20", "120000000000000000000", True),
        ("1e5", "100000", True),
        # pi is a number, not a unit; the words of "how many more / times" answers are units
        ("4 pi", "4", False),
        ("5 times", "5", True),
        ("5 more marbles", "5", True),
        ("4 dozen eggs", "4", True),
    ],
)
def test_decimals_exponents_and_scale_words(a, b, equal):
    assert answers_equal(a, b) is equal


def test_markdown_emphasis_around_an_answer_is_not_part_of_it():
    assert extract_answer("The answer is **12**.") == "12"
    assert extract_answer("**The answer is 42**") == "42"
    assert extract_answer("So 5 + 7 = 12. The final answer is: **$12**") == "12"
    assert extract_answer("The answer is ∞.") == "∞"  # a symbol is an answer (diff review)
    # a cut solution's "\\" is none: before, it voted as the answer "\\"
    assert extract_answer("the final answer is:\n\\", complete=False) is None


def test_normalized_numbers_are_exact_as_comparison_is():
    """Diff review: normalizing to 10 significant digits made a right 14-digit answer wrong
    once comparison became exact, and turned a fraction into a decimal in the vote."""
    assert normalize_answer("1234567.8912345") == "1234567.8912345"
    assert answers_equal(normalize_answer("1234567.8912345"), "1234567.8912345")
    assert normalize_answer("12345678901.5") == "12345678901.5"
    assert normalize_answer("\\frac{2}{4}") == "\\frac{1}{2}"
    assert answers_equal(normalize_answer("\\frac{1}{3}"), "0.333333")
    assert normalize_answer("1e-5") == "0.00001" and normalize_answer("-2.125") == "-2.125"


def test_math_verify_reads_the_gold_answer_first(monkeypatch):
    """math-verify's verify(gold, answer) is not symmetric: an interval answers an inequality
    gold, not the other way round."""
    import edgetts.grading as grading

    seen = []
    monkeypatch.setattr(grading, "symbolic_equal", lambda gold, answer: seen.append((gold, answer)))
    answers_equal("(1,\\infty)", "x>1")
    assert seen == [("x>1", "(1,\\infty)")]
