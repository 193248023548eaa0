"""PNG figures of a run: each metric family against cycle, per-unit CSI/U histograms of the SAE latents,
and a 2-D PCA of the SAE codes coloured by label for the first and last cycle.

The y-scale of the metric-against-cycle panels is honest, so a small change looks small:

- every y-axis spans at least `MIN_SPAN_FRACTION` (10%) of the metric's *scale* (and more when the values
  spread wider). The scale of a bounded metric is the width of its natural range (`NATURAL_RANGES`; e.g. 1 for
  accuracies, F1, explained variance, CSI, U, fractions and probe accuracies, all in [0, 1]; 2 for silhouettes;
  1.5 for ARI; `num_units` for unit counts); of any other metric it is its largest absolute value. So an accuracy
  going 0.958 -> 0.961 fills 3% of its panel, not all of it, and a loss that changes by 1% of its size fills 10%;
- a bounded metric's axis stays inside its natural range (plus 5% of the span, so points on a bound are not
  cut), unless a value lies outside it (explained variance below 0);
- tick labels are the values themselves (no offset such as "+9.58e-1" that hides the scale);
- each panel's title says which way is better (`↑ better`, `↓ better`, `closer to 0 better` or `no better
  direction`, from evaluation/report.py's DIRECTIONS) and the first -> last defined value with the change;
- an undefined value (null in results/cycle_N.json, NaN or inf) is a gap in the line marked `n/a` at the bottom
  of its cycle, never a 0.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sae_ception.evaluation.report import ABSOLUTE, better_direction, flatten_metrics  # noqa: E402
from sae_ception.utils.io import atomic_path  # noqa: E402

COUNT_METRICS = ("num_units", "silhouette_sample_size", "kmeans_sample_size")
# Not drawn as family panels: counts that only qualify another metric (live units beside each mean, argmax cluster
# counts) and the auxiliary family's budget and weighted terms (in results and the tables; constant or derived).
NOT_PLOTTED = ("argmax_clusters", "argmax_zero_rows", "gradient_steps", "examples_seen", "candidates",
               "search_gradient_steps", "search_examples_seen", "weighted_aux_loss_start", "weighted_aux_loss_end")


def plotted(name: str) -> bool:
    """Whether a metric (name after `family/`) gets a panel in its family's figure."""
    return not ("_q" in name or name in COUNT_METRICS or name in NOT_PLOTTED or name.endswith("_live_units"))
MIN_SPAN_FRACTION = 0.1  # a y-axis spans at least this fraction of its metric's scale
PAD = 0.05  # space above and below the values (and past a natural bound), as a fraction of the span

UNIT = (0.0, 1.0)
# Natural ranges of bounded metrics (by name after `family/`; a quantile such as `csi_q90` takes its mean's).
NATURAL_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": UNIT, "spliced_accuracy": UNIT, "f1_macro": UNIT, "f1_weighted": UNIT,
    "spliced_accuracy_drop": (-1.0, 1.0),
    "explained_variance": UNIT,  # (-inf, 1], nearly always in [0, 1]: values below 0 still show
    "dead_fraction": UNIT, "always_on_fraction": UNIT,
    "csi_mean": UNIT, "u_mean": UNIT,
    "ari_kmeans": (-0.5, 1.0), "silhouette_labels": (-1.0, 1.0), "silhouette_kmeans": (-1.0, 1.0),
    "dense_accuracy": UNIT, "sae_accuracy": UNIT,
    # the paper's and the 2.0 code's variants (METRICS_REFERENCE.md); u_paper divides nats by bits: at most ln 2
    "csi_paper_mean": UNIT, "u_paper_mean": (0.0, math.log(2)), "u_paper_normalized_mean": UNIT,
    "u_v2_mean": UNIT, "u_v2_normalized_mean": UNIT, "ari_argmax": (-0.5, 1.0),
}
# in [0, num_units] of their family
PER_UNIT_COUNTS = ("dead_units", "never_or_always_firing_units", "csi_live_units", "u_live_units",
                   "csi_paper_live_units", "u_paper_live_units", "u_paper_normalized_live_units", "u_v2_live_units",
                   "u_v2_normalized_live_units")


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    if not isinstance(fig, Figure) or fig.canvas.manager is not None:
        plt.close(fig)
    return path


def natural_range(name: str, flats: list[dict[str, float]] = (), family: str = "") -> Optional[tuple[float, float]]:
    """The range a metric (name after `family/`) can take, or None when it is unbounded."""
    if name in NATURAL_RANGES:
        return NATURAL_RANGES[name]
    stem, _, quantile = name.rpartition("_q")
    if quantile.isdigit() and f"{stem}_mean" in NATURAL_RANGES:
        return NATURAL_RANGES[f"{stem}_mean"]
    if name in PER_UNIT_COUNTS:
        units = [f.get(f"{family}/num_units") for f in flats]
        units = [u for u in units if _defined(u) and u > 0]
        return (0.0, float(max(units))) if units else None
    return None


def _defined(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def y_limits(values: list[Optional[float]], bounds: Optional[tuple[float, float]] = None) -> tuple[float, float]:
    """The y-axis of one metric-against-cycle panel (the rule in the module docstring)."""
    defined = [float(v) for v in values if _defined(v)]
    if not defined:
        return bounds if bounds is not None else (0.0, 1.0)
    low, high = min(defined), max(defined)
    scale = (bounds[1] - bounds[0]) if bounds is not None else max(abs(low), abs(high))
    span = max((high - low) * (1 + 2 * PAD), MIN_SPAN_FRACTION * scale) or 1.0
    bottom, top = (low + high) / 2 - span / 2, (low + high) / 2 + span / 2
    if bounds is not None:  # slide the window back inside the natural range (widened to any value outside it)
        floor = min(bounds[0] - PAD * span, low - PAD * span)
        ceiling = max(bounds[1] + PAD * span, high + PAD * span)
        if top > ceiling:
            bottom, top = bottom - (top - ceiling), ceiling
        if bottom < floor:
            bottom, top = floor, min(top + (floor - bottom), ceiling)
    return bottom, top


def direction_label(name: str) -> str:
    """Which way is better for a metric (name after `family/`), as shown in its panel's title."""
    if name in ABSOLUTE:
        return "closer to 0 better"
    return {1: "\u2191 better", -1: "\u2193 better"}.get(better_direction(name), "no better direction")


def _change_label(values: list[Optional[float]]) -> str:
    defined = [v for v in values if _defined(v)]
    if not defined:
        return "undefined at every cycle"
    if len(defined) == 1:
        return f"{defined[0]:.4g}"
    first, last = defined[0], defined[-1]
    return f"{first:.4g} \u2192 {last:.4g} ({last - first:+.2g})"


def _panel(ax, cycles: list[int], values: list[Optional[float]], name: str,
           bounds: Optional[tuple[float, float]]) -> None:
    ys = [float(v) if _defined(v) else np.nan for v in values]
    ax.plot(cycles, ys, marker="o")
    ax.set_title(f"{name} ({direction_label(name)})\n{_change_label(values)}", fontsize=10)
    ax.set_xlabel("cycle")
    ax.set_xticks(cycles)
    ax.set_ylim(*y_limits(values, bounds))
    ax.ticklabel_format(axis="y", useOffset=False)
    for cycle, y in zip(cycles, ys):
        if np.isnan(y):
            ax.text(cycle, 0.03, "n/a", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=9, color="#7b8794")


def family_figures(results: list[dict]) -> dict[str, Figure]:
    """One figure per metric family: every (non-quantile, non-count) metric against cycle, on an honest y-scale."""
    cycles = [r["cycle"] for r in results]
    flats = [flatten_metrics(r["metrics"]) for r in results]
    keys_all = list(dict.fromkeys(k for flat in flats for k in flat))
    families = list(dict.fromkeys(k.split("/", 1)[0] for k in keys_all))
    figures = {}
    for family in families:
        keys = [k for k in keys_all if k.startswith(family + "/") and plotted(k.split("/")[1])]
        if not keys:
            continue
        columns = min(3, len(keys))
        rows = -(-len(keys) // columns)
        fig = Figure(figsize=(4 * columns, 3.1 * rows + 0.4), layout="constrained")
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax, key in zip(axes.flat, keys):
            name = key.split("/", 1)[1]
            _panel(ax, cycles, [f.get(key) for f in flats], name, natural_range(name, flats, family))
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{family}\n(each y-axis spans at least {MIN_SPAN_FRACTION:.0%} of its metric's range or size: "
                     "small changes look small)", fontsize=10)
        figures[family] = fig
    return figures


def plot_families(results: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per metric family (`family_figures`), in `out_dir`."""
    return [_save(fig, out_dir / f"{family}.png") for family, fig in family_figures(results).items()]


def plot_unit_histograms(per_cycle_units: dict[int, dict[str, np.ndarray]], out_dir: Path) -> Path:
    """CSI and U of the SAE latents, one histogram per cycle (dead latents left out)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(0, 1, 21)
    for cycle, units in sorted(per_cycle_units.items()):
        for ax, name in zip(axes, ("sae_csi", "sae_u")):
            values = units[name][~np.isnan(units[name])]
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"cycle {cycle}")
    for ax, title in zip(axes, ("CSI of SAE latents", "U of SAE latents")):
        ax.set_title(title)
        ax.set_xlabel(title.split()[0])
        ax.set_ylabel("latents")
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "sae_latent_csi_u_histograms.png")


def plot_code_projections(per_cycle_units: dict[int, dict[str, np.ndarray]], out_dir: Path) -> Path:
    """The test examples' SAE codes in their first two principal components, first and last cycle."""
    shown = sorted(per_cycle_units)
    shown = shown[:1] + shown[-1:] if len(shown) > 1 else shown
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.5), squeeze=False)
    for ax, cycle in zip(axes.flat, shown):
        points, labels = per_cycle_units[cycle]["sae_pca_2d"], per_cycle_units[cycle]["labels"]
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
        ax.set_title(f"SAE codes, cycle {cycle} (PCA)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes.ravel().tolist(), label="label")
    return _save(fig, out_dir / "sae_codes_pca.png")
