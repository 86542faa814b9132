"""Every PNG the pipeline writes: confusion matrices, per-class F1, training loss curves, PR / reliability curves,
the functional-test heatmap.

Fixed size, DPI and no timestamp or version metadata, so the same numbers give byte-identical PNGs (DVC hashes
stay stable across reruns and matplotlib upgrades).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .io import atomic_path

PNG_METADATA = {"Software": None}  # no matplotlib version in the file: stable bytes across upgrades


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)
    _pyplot().close(fig)


def plot_confusion(names: Sequence[str], counts: Sequence[Sequence[int]], path: str | Path, title: str) -> None:
    """One confusion matrix (rows: actual, columns: predicted), counts written in the cells."""
    plot_confusions({title: (names, counts)}, path)


def plot_confusions(matrices: Mapping[str, tuple], path: str | Path) -> None:
    """Confusion matrices side by side, one per system: {title: (names, counts)}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for ax, (title, (names, counts)) in zip(axes[0], matrices.items()):
        n = len(names)
        ax.imshow(counts, cmap="Blues")
        peak = max((max(row) for row in counts), default=0)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i][j]), ha="center", va="center",
                        color="white" if counts[i][j] > peak / 2 else "black")
        ax.set_xticks(range(n), names, rotation=30, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))


def plot_per_class_f1(systems: Mapping[str, Mapping], labels: Sequence[str], path: str | Path) -> None:
    """Grouped bars: F1 of each real class for each system ({system: metrics of one split})."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(systems))
    for k, (name, m) in enumerate(systems.items()):
        values = [m["per_class"].get(label, {}).get("f1", 0.0) for label in labels]
        bars = ax.bar([i + k * width for i in range(len(labels))], values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_loss_curves(curves: Mapping[str, tuple], path: str | Path) -> bool:
    """Training (and dev) loss against the optimizer step; False (nothing written) when there is no curve."""
    losses = {name: xy for name, xy in curves.items() if name.split("/")[-1] in ("loss", "eval_loss")}
    if not losses:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in losses.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))
    return True


def plot_pr_curves(curves: Mapping[str, tuple], path: str | Path, chosen: tuple | None = None) -> None:
    """Precision-recall curves of P(positive) ({name: (precision, recall)}); `chosen`: (recall, precision) of the
    operating point picked on dev, marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (precision, recall) in curves.items():
        ax.plot(recall, precision, label=name)
    if chosen is not None:
        ax.plot([chosen[0]], [chosen[1]], "o", color="black", label="chosen threshold (dev)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall of the positive label")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_reliability(diagrams: Mapping[str, Mapping], path: str | Path) -> None:
    """Reliability diagrams ({name: calibration.reliability(...)}): observed frequency against mean predicted
    probability per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, diagram in diagrams.items():
        bins = diagram["bins"]
        ax.plot([b["mean_p"] for b in bins], [b["frequency"] for b in bins], marker="o", markersize=3,
                label=f"{name} (ECE {diagram['ece']:.3f})")
    ax.set_xlabel("predicted probability of the positive label")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence], path: str | Path,
                 title: str) -> None:
    """Accuracy per row (functionality) and column (system) in [0, 1], red (0) to green (1), the value written in
    each cell; None shows as an empty grey cell."""
    import numpy as np

    plt = _pyplot()
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(columns), 1.2 + 0.32 * len(rows)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(grid[i, j]):
                dark = grid[i, j] < 0.2 or grid[i, j] > 0.85  # the ends of the colour map are dark
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10, pad=24)
    fig.tight_layout()
    _save(fig, Path(path))
