"""The accuracy plots of the benchmark tools: one look (log-2 x axis, grid, 120 dpi), error bars of
one standard error (the ± the tables print), and the legend beside the axes, where it covers no line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Points of several curves at the same x are spread by this factor per curve (on the log-2 axis),
# so their error bars stand side by side instead of on top of each other.
DODGE = 2**0.06


def standard_error(accuracy: float, problems: int) -> float:
    """One standard error of an accuracy over ``problems`` problems (binomial), as the tables print."""
    return (accuracy * (1 - accuracy) / max(problems, 1)) ** 0.5


def accuracy_axes() -> tuple[Any, Any]:
    """A figure and axes for accuracy against a compute measure (matplotlib, drawn off screen)."""
    try:
        import matplotlib
    except ImportError:
        # the plot is optional: the table is already printed, so say how to get the PNG too
        raise SystemExit('--plot needs matplotlib: pip install -e ".[plot]"') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # wider than the plot area: the legend goes to the right of the axes
    return plt.subplots(figsize=(9, 4.5))


def dodged(xs: Sequence[float], index: int, count: int) -> list[float]:
    """``xs`` shifted for curve ``index`` of ``count`` (centred), on a log axis."""
    return [x * DODGE ** (index - (count - 1) / 2) for x in xs]


def accuracy_curve(
    ax: Any, xs: Sequence[float], accuracy: Sequence[float], problems: Sequence[int], **style: Any
) -> None:
    """One curve with a one-standard-error bar at each point."""
    errors = [standard_error(a, n) for a, n in zip(accuracy, problems, strict=True)]
    ax.errorbar(xs, accuracy, yerr=errors, marker="o", markersize=4, capsize=3, elinewidth=1, **style)


def accuracy_level(ax: Any, accuracy: float, problems: int, **style: Any) -> None:
    """A horizontal line (a baseline with no N, e.g. greedy) with its standard error as a band."""
    se = standard_error(accuracy, problems)
    line = ax.axhline(accuracy, **style)
    ax.axhspan(accuracy - se, accuracy + se, color=line.get_color(), alpha=0.08, linewidth=0)


def save_accuracy_plot(fig: Any, ax: Any, path: str, xlabel: str, title: str) -> None:
    """Label the axes (x on a log-2 scale), add grid and legend, write the PNG to ``path``."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (bars: ± 1 standard error)")
    # wrapped: a long title (data set, problem count, policy name) must not run off the figure
    ax.set_title(textwrap.fill(title, width=70), fontsize=11)
    ax.grid(alpha=0.3)
    # outside the axes: inside, some corner always holds a line of some plot
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")
