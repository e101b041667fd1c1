"""What every plot shares: matplotlib's Agg backend (no display needed), a constrained layout, the 1.0 line.

Each group draws its own figures (one per question) with these helpers;
matplotlib is imported on first use, so that a run without plots (an A/B
child) does not pay for it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOOP_STYLES", "figure", "plain_counts", "ratio_bars", "save", "title"]

# Line style and marker per loop kind: a series keeps its colour under both
# loops, and the two lines read as a pair.
LOOP_STYLES = {"asyncio": ("-", "o"), "uvloop": (":", "s")}

# Characters per title line: a longer line would run past the figure's edges.
_TITLE_WIDTH = 75


def figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float] = (9.0, 5.0)) -> tuple[Any, Any]:
    """A new figure with a constrained layout (no label clipped at the edges), and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the backend must be chosen before pyplot is imported

    return plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=True)


def title(ax: Any, text: str) -> None:
    """Set the title of the axes' figure, wrapped to its width.

    A figure title, not an axes title: the latter is centred over the axes,
    which long bar labels push to the right, so it ran past the figure's right
    edge. A constrained layout makes room for text but never wraps it.
    """
    ax.figure.suptitle("\n".join(textwrap.fill(part, _TITLE_WIDTH) for part in text.split("\n")))


def plain_counts(axis: Any) -> None:
    """Label ``axis`` (``ax.xaxis`` or ``ax.yaxis``) with whole numbers and thousands separators.

    Instead of matplotlib's default for large values, a bare multiplier such
    as "1e6" in the corner, which is easy to miss.
    """
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG and free it; return the path."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_bars(
    ax: Any,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    notes: dict[str, Sequence[str]],
    *,
    xlabel: str,
) -> None:
    """Horizontal bars of ratios, one bar per label and series, with the reference drawn as a line at 1.0.

    ``notes[series][i]`` is written at the end of bar ``i`` (the absolute figure behind the ratio).
    """
    height = 0.8 / max(1, len(series))
    top = 0.0
    for k, (name, ratios) in enumerate(series.items()):
        positions = [i + k * height for i in range(len(labels))]
        bars = ax.barh(positions, ratios, height=height, label=name)
        ax.bar_label(bars, labels=list(notes.get(name, ())), padding=3, fontsize="small")
        top = max(top, *ratios)
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--", label="reference (1.0)")
    # Room on the right for the notes at the ends of the longest bars.
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel(xlabel)
    # Below the axes, where it cannot cover a bar or its note.
    ax.figure.legend(loc="outside lower center", ncols=len(series) + 1, fontsize="small")
