"""docs/bench/README.md is what tools/bench_page.py makes of the committed rows."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_results_page_matches_the_committed_rows():
    out = subprocess.run(
        [sys.executable, "tools/bench_page.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr + out.stdout
