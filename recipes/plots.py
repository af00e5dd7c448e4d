"""Plots written into run directories (PNG).

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, not pyplot: no global state, no display
needed, and nothing left open when a long run writes many of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_confusion(
    confusion: torch.Tensor | np.ndarray, classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Save `confusion [C, C]` (rows = reference, columns = prediction) as a PNG at `path`, creating its folder.

    Colours are row-normalised (the recall of each reference class), so small classes read as clearly as large
    ones; each cell shows its count and its percentage of the row. Returns the path.
    """
    counts = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.int64)
    num = len(classes)
    if counts.shape != (num, num):
        raise ValueError(f"confusion has shape {counts.shape} but {num} classes were named: {list(classes)}")
    support = counts.sum(axis=1, keepdims=True)
    # A class absent from the references gets an empty row, not 0 / 0.
    fractions = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)

    size = 1.0 + 0.8 * num
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of reference class")
    for i in range(num):
        for j in range(num):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100 * fractions[i, j]:.1f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if fractions[i, j] > 0.5 else "black",
            )
    long_names = num > 6 or max((len(c) for c in classes), default=0) > 5
    ax.set_xticks(
        range(num), labels=list(classes), rotation=45 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set_yticks(range(num), labels=list(classes))
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    if title:
        ax.set_title(title)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
