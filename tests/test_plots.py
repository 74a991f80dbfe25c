"""The benchmark plots (tools/plots.py): one-standard-error bars and a legend that covers no line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_strategies as bench  # noqa: E402
import plots  # noqa: E402

pytest.importorskip("matplotlib")


def test_standard_error_is_the_binomial_one():
    assert plots.standard_error(0.5, 100) == pytest.approx(0.05)
    assert plots.standard_error(1.0, 10) == 0.0
    assert plots.standard_error(0.3, 0) == pytest.approx((0.3 * 0.7) ** 0.5)  # no division by zero


def _capture(monkeypatch) -> dict:
    """Run the real save_accuracy_plot, and keep the figure and axes it saved for inspection."""
    seen: dict = {}
    real = plots.save_accuracy_plot

    def keep(fig, ax, path, xlabel, title):
        real(fig, ax, path, xlabel, title)
        seen.update(fig=fig, ax=ax, path=Path(path))

    monkeypatch.setattr(bench, "save_accuracy_plot", keep)
    return seen


def test_report_plot_has_the_tables_error_bars_and_an_outside_legend(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    default = bench.default_model_name()  # the policy the plot draws as the default
    summary = {
        (default, "majority", 1): {"accuracy": 0.4, "tokens": 100, "problems": 100},
        (default, "majority", 4): {"accuracy": 0.5, "tokens": 400, "problems": 100},
        (default, "best_of_n", 4): {"accuracy": 0.6, "tokens": 400, "problems": 100},
        (default, "greedy", 1): {"accuracy": 0.45, "tokens": 100, "problems": 100},
    }
    seen = _capture(monkeypatch)
    bench.plot(summary, str(tmp_path / "acc.png"), "toy", 100)
    ax, fig = seen["ax"], seen["fig"]
    assert seen["path"].stat().st_size > 1000
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"majority", "best of n"}
    # each bar spans accuracy ± the standard error the table prints
    (segments,) = bars["majority"].lines[2]
    spans = sorted(round(seg[1][1] - seg[0][1], 6) for seg in segments.get_segments())
    assert spans == sorted(round(2 * plots.standard_error(a, 100), 6) for a in (0.4, 0.5))
    # two curves at N = 4: dodged apart, so their bars do not sit on each other
    x_majority = bars["majority"].lines[0].get_xdata()[1]
    x_best = bars["best of n"].lines[0].get_xdata()[0]
    assert x_majority != x_best and abs(x_majority / x_best - 1) < 0.1
    # the greedy level carries its standard error as a band
    assert any(
        abs(p.get_height() - 2 * plots.standard_error(0.45, 100)) < 1e-9
        for p in ax.patches
        if hasattr(p, "get_height")
    )
    # the legend lies right of the axes, inside the figure: it covers no line and is not cut off
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1
    assert legend.x1 <= fig.bbox.x1
