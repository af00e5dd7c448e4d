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


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` to `path` (PNG at 150 dpi), creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


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

    return save(fig, path)


def plot_det(scores: torch.Tensor, labels: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Save the detection error trade-off curve of verification `scores [N]` with `labels [N]` (1 = target) as a
    PNG: miss against false-alarm rate on normal-deviate axes, as the speaker literature draws it (a straight
    line for Gaussian scores), with the EER point marked. Returns the path."""
    from statistics import NormalDist

    from downstream.metrics import eer, operating_points

    _, p_miss, p_fa = operating_points(scores, labels)
    equal_error, _ = eer(scores, labels)
    count = max(int(torch.as_tensor(labels).numel()), 2)
    # Rates of exactly 0 or 1 have no normal deviate: clip to half a trial.
    floor = 0.5 / count
    ticks = [t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4) if t >= floor]
    deviate = np.vectorize(NormalDist().inv_cdf)

    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(deviate(np.clip(p_fa, floor, 1 - floor)), deviate(np.clip(p_miss, floor, 1 - floor)), lw=1.5)
    point = deviate(np.clip(equal_error, floor, 1 - floor))
    ax.plot([point], [point], "o", color="C3", label=f"EER {100 * equal_error:.2f}%")
    limits = deviate([floor, 0.5])
    ax.plot(limits, limits, ":", color="grey", lw=0.8)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    labels_text = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(deviate(ticks), labels=labels_text)
    ax.set_yticks(deviate(ticks), labels=labels_text)
    ax.set_xlabel("false-alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(True, lw=0.4, alpha=0.6)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)

    return save(fig, path)


def plot_roc(
    scores: torch.Tensor, labels: Sequence[int], domains: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Save the ROC curves of anomaly `scores` (labels 1 = anomaly) per domain as a PNG: each domain's normal
    clips against every anomalous clip, as DCASE's AUC(source) / AUC(target) rank them, with the 0.1
    false-positive limit of the pAUC marked. Returns the path."""
    from downstream.metrics import roc_auc, roc_curve

    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels_t = torch.as_tensor(list(labels))
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for domain in ("source", "target"):
        keep = torch.tensor([(d == domain) or (label == 1) for d, label in zip(domains, labels, strict=True)])
        if not (keep & (labels_t == 0)).any():
            continue
        fpr, tpr = roc_curve(scores[keep], labels_t[keep])
        auc = roc_auc(scores[keep], labels_t[keep])
        ax.plot(fpr, tpr, lw=1.5, label=f"{domain} normals vs all anomalies (AUC {100 * auc:.1f}%)")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.axvline(0.1, color="C3", lw=0.8, ls="--", label="pAUC limit (FPR 0.1)")
    ax.set_xlabel("false-positive rate (normal clips flagged)")
    ax.set_ylabel("true-positive rate (anomalies found)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(True, lw=0.4, alpha=0.6)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_grouped_bars(
    panels: dict[str, tuple[Sequence[str], Sequence[str], Sequence[Sequence[float]]]],
    path: str | Path,
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Grouped bar charts side by side: `panels[name] = (groups, series, heights [series][group])`, e.g. one panel
    per task, one group per metric, one bar per run. A NaN height draws no bar. Returns the path."""
    widths = [max(len(groups), 1) for groups, _, _ in panels.values()]
    fig = Figure(figsize=(max(6.0, 1.3 * sum(widths) + 2.5), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for axis, (name, (groups, series, heights)) in zip(axes, panels.items(), strict=True):
        positions = np.arange(len(groups))
        width = 0.8 / max(len(series), 1)
        for i, (label, values) in enumerate(zip(series, heights, strict=True)):
            offsets = positions + (i - (len(series) - 1) / 2) * width
            bars = axis.bar(offsets, values, width, label=label)
            if len(series) * len(groups) <= 24:  # more numbers than that only clutter the bars
                axis.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)
        axis.set_xticks(positions, list(groups), rotation=30, ha="right")
        axis.set_title(name)
        axis.set_ylabel(ylabel)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=1)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` as PNG (150 dpi) and PDF (vector, for papers) beside each other: `path` with each suffix."""
    path = Path(path)
    return [save(fig, path.with_suffix(".png")), save(fig, path.with_suffix(".pdf"))]


def plot_layer_curves(
    layers: Sequence[int],
    series: dict[str, Sequence[float]],
    path: str | Path,
    ylabel: str,
    title: str,
    chance: dict[str, float] | None = None,
) -> list[Path]:
    """A metric against layer index, one line per series (e.g. accuracy and UA), each series' chance level dashed
    in its colour. PNG and PDF."""
    fig = Figure(figsize=(max(5.0, 0.35 * len(layers) + 3), 3.6))
    FigureCanvasAgg(fig)
    axis = fig.subplots()
    for name, values in series.items():
        (line,) = axis.plot(layers, values, marker="o", label=name)
        if chance and name in chance:
            axis.axhline(chance[name], color=line.get_color(), linestyle="--", linewidth=1, label=f"{name} chance")
    axis.set_xticks(list(layers))
    axis.set_xlabel("layer (0 = input to the transformer)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return save_figure(fig, path)


def plot_layer_weights(
    weights: Sequence[Sequence[float]], runs: Sequence[str], path: str | Path, title: str
) -> list[Path]:
    """Learned weighted-sum layer weights: bars for one run, a runs x layers heat map for several. PNG and PDF."""
    matrix = np.asarray(weights, dtype=float)
    layers = np.arange(matrix.shape[1])
    if len(runs) == 1:
        fig = Figure(figsize=(max(5.0, 0.35 * len(layers) + 3), 3.6))
        FigureCanvasAgg(fig)
        axis = fig.subplots()
        axis.bar(layers, matrix[0])
        axis.axhline(1 / len(layers), color="grey", linestyle="--", linewidth=1, label="uniform (initial)")
        axis.set_ylabel("weight (softmax)")
        axis.legend(fontsize="small")
    else:
        fig = Figure(figsize=(max(5.0, 0.45 * len(layers) + 4), 1.2 + 0.45 * len(runs)))
        FigureCanvasAgg(fig)
        axis = fig.subplots()
        image = axis.imshow(matrix, aspect="auto", cmap="viridis")
        axis.set_yticks(range(len(runs)), list(runs))
        fig.colorbar(image, ax=axis, label="weight (softmax)")
    axis.set_xticks(layers)
    axis.set_xlabel("layer (0 = input to the transformer)")
    axis.set_title(title)
    return save_figure(fig, path)
