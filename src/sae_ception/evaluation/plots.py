"""PNG figures of a run: each metric family against cycle, per-unit CSI/U histograms of the SAE latents,
and a 2-D PCA of the SAE codes coloured by label for the first and last cycle."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sae_ception.evaluation.report import flatten_metrics  # noqa: E402
from sae_ception.utils.io import atomic_path  # noqa: E402

COUNT_METRICS = ("num_units", "silhouette_sample_size")


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_families(results: list[dict], out_dir: Path) -> list[Path]:
    """One figure per metric family: every (non-quantile) metric against cycle."""
    cycles = [r["cycle"] for r in results]
    flats = [flatten_metrics(r["metrics"]) for r in results]
    families = list(dict.fromkeys(k.split("/", 1)[0] for k in flats[0])) if flats else []
    paths = []
    for family in families:
        keys = [k for k in flats[0] if k.startswith(family + "/") and "_q" not in k and k.split("/")[1] not in COUNT_METRICS]
        if not keys:
            continue
        columns = min(3, len(keys))
        rows = -(-len(keys) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False, layout="constrained")
        for ax, key in zip(axes.flat, keys):
            values = [np.nan if f.get(key) is None else f[key] for f in flats]
            ax.plot(cycles, values, marker="o")
            ax.set_title(key.split("/", 1)[1], fontsize=10)
            ax.set_xlabel("cycle")
            ax.set_xticks(cycles)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(family)
        paths.append(_save(fig, out_dir / f"{family}.png"))
    return paths


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
