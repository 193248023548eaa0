"""The confusion matrices of a concept-transfer run: one panel per method, rows normalised to fractions."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sae_ception.utils.io import atomic_path  # noqa: E402


def plot_confusions(summary: dict, path: Path) -> Path:
    """Write one PNG: per method, the fraction of each true class's test images (rows) given each prediction
    (columns, `other` last), with the target row and column outlined. Returns `path`."""
    methods = summary["methods"]
    target = summary["concept"]["target"]
    columns = min(4, len(methods))
    rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.7 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax, (name, result) in zip(axes.flat, methods.items()):
        m = result["measures"]
        counts = np.asarray(m["confusion"], dtype=float)
        fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(fractions, vmin=0, vmax=1, cmap="Blues")
        labels_r, labels_c = [str(c) for c in m["confusion_rows"]], [str(c) for c in m["confusion_columns"]]
        ax.set_xticks(range(len(labels_c)), labels_c, fontsize=7)
        ax.set_yticks(range(len(labels_r)), labels_r, fontsize=7)
        for i in range(fractions.shape[0]):
            for j in range(fractions.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, f"{fractions[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if fractions[i, j] > 0.5 else "black")
        if target in m["confusion_rows"]:
            r, c = m["confusion_rows"].index(target), m["confusion_columns"].index(target)
            ax.add_patch(plt.Rectangle((-0.5, r - 0.5), fractions.shape[1], 1, fill=False, ec="red", lw=1))
            ax.add_patch(plt.Rectangle((c - 0.5, -0.5), 1, fractions.shape[0], fill=False, ec="red", lw=1))
        ax.set_title(f"{name}\ntransfer {m['transfer']:.2f} · preservation {m['preservation']:.2f}\n"
                     f"specificity {m['specificity']:.2f} (distractor called target)", fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
