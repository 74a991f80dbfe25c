"""The accuracy plots of the benchmark tools: one look (log-2 x axis, grid, legend, 120 dpi)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


def accuracy_axes() -> tuple[Any, Any]:
    """A figure and axes for accuracy against a compute measure (matplotlib, drawn off screen)."""
    try:
        import matplotlib
    except ImportError:
        # the plot is optional: the table is already printed, so say how to get the PNG too
        raise SystemExit('--plot needs matplotlib: pip install -e ".[plot]"') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def save_accuracy_plot(fig: Any, ax: Any, path: str, xlabel: str, title: str) -> None:
    """Label the axes (x on a log-2 scale), add grid and legend, write the PNG to ``path``."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    # wrapped: a long title (data set, problem count, policy name) must not run off the figure
    ax.set_title(textwrap.fill(title, width=70), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")
