"""Results across cycles for people: a table with each metric per cycle and whether it moved the right way,
and `results/summary.csv` with one row per cycle."""

from __future__ import annotations

import csv
import io

# Which way is better, by metric name (the part after `family/`): +1 higher, -1 lower, 0 no preference.
# `spliced_accuracy_drop` is better closer to 0 and is judged on its absolute value.
DIRECTIONS = {
    "accuracy": 1, "loss": -1, "spliced_accuracy": 1, "spliced_loss": -1, "spliced_accuracy_drop": -1,
    "f1_macro": 1, "f1_weighted": 1,
    "mse": -1, "mse_normalized": -1, "explained_variance": 1, "l0": 0, "l1": 0,
    "dead_fraction": -1, "always_on_fraction": -1,
    "csi_mean": 1, "u_mean": 1, "dead_units": -1, "never_or_always_firing_units": -1, "num_units": 0,
    # the paper's and the 2.0 code's variants (evaluation/paper_metrics.py), and the units each mean covers
    # (or, for those variants, how many of its units are not dead): more live units, fewer scored by convention
    **{f"{variant}_mean": 1 for variant in ("csi_paper", "u_paper", "u_paper_normalized", "u_v2", "u_v2_normalized")},
    **{f"{variant}_live_units": 1
       for variant in ("csi", "u", "csi_paper", "u_paper", "u_paper_normalized", "u_v2", "u_v2_normalized")},
    "ari_kmeans": 1, "ari_argmax": 1, "silhouette_labels": 1, "silhouette_kmeans": 1, "davies_bouldin": -1,
    "calinski_harabasz": 1, "silhouette_sample_size": 0, "kmeans_sample_size": 0, "argmax_clusters": 0, "argmax_zero_rows": -1,
    "dense_accuracy": 1, "sae_accuracy": 1,
    # concept transfer (scripts/transfer_concept.py, transfer/measures.py; compared as `concept/<name>` and
    # `budget/<name>`): target images called the target, accuracy on A's classes and its change from A, and
    # specificity = the fraction of distractor images called the target (so lower is better); a budget is what a
    # method used, not a score (`gradient_steps` is also the auxiliary family's step count: no direction there either)
    "transfer": 1, "preservation": 1, "preservation_change": 1, "specificity": -1,
    "target_images": 0, "target_labels": 0, "other_images": 0, "gradient_steps": 0, "parameters_changed": 0,
    "parameters_added": 0,
    "procrustes_residual": -1,  # diagnostics: ||H_B R - H_A|| / ||H_A|| of an alignment, lower = better aligned
    "procrustes_residual_images": -1, "aligner_residual": -1,  # the same on every image's codes; of the aligner
    "cka_features": 1, "cka_concepts": 1,  # linear CKA of A's and B's representations of the shared classes
    "carried_auc": 1,  # diagnostics: how well a carried probe separates the target in A's features
}
ABSOLUTE = {"spliced_accuracy_drop"}
# Metrics that grow with the number of examples N as well as with what they measure: compared only at equal N.
GROWS_WITH_N = {"calinski_harabasz"}
GROWS_WITH_N_NOTE = " (grows with N)"


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{family}/{name}": value for family, values in metrics.items() for name, value in values.items()}


def better_direction(name: str) -> int:
    """A quantile such as `csi_q90` goes the way its mean (`csi_mean`) goes."""
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    stem, _, quantile = name.rpartition("_q")
    return DIRECTIONS.get(f"{stem}_mean", 0) if quantile.isdigit() else 0


def _defined(value) -> bool:
    return value is not None and value == value


def verdict(key: str, first, last) -> str:
    """'better', 'worse', 'same' or '' (no preferred direction, or undefined) for a change first -> last."""
    name = key.split("/", 1)[1]
    direction = better_direction(name)
    if not direction or not (_defined(first) and _defined(last)):
        return ""
    if name in ABSOLUTE:
        first, last = abs(first), abs(last)
    change = (last - first) * direction
    return "better" if change > 0 else "worse" if change < 0 else "same"


def depends_on_sae(key: str) -> bool:
    """Whether a `family/name` metric is computed from the SAE (its quality, its codes, or its reconstruction
    spliced into the model), so it means nothing for a degenerate SAE."""
    family, _, name = key.partition("/")
    return family == "sae" or family.endswith("_sae") or name.startswith(("sae_", "spliced_"))


def grows_with_n(key: str) -> bool:
    """Whether a `family/name` metric grows with the number of examples (Calinski-Harabasz: (N − k) / (k − 1))."""
    return key.split("/", 1)[-1] in GROWS_WITH_N


def format_table(results: list[dict], skip_quantiles: bool = True) -> str:
    """Rows are metrics, columns are cycles, the last column says whether the first -> last change is good.
    A cycle whose SAE is degenerate (`"sae_degenerate": true`: no latent fires) is marked `*`, and the SAE's
    metrics get no verdict when the first or last cycle is such a cycle: better or worse than nothing is
    not a change. A metric that grows with the number of examples (Calinski-Harabasz) is labelled so, a line
    under the table gives each cycle's N, and it gets no verdict when the first and last cycles' N differ."""
    flats = [flatten_metrics(r["metrics"]) for r in results]
    keys = [k for k in flats[0] if not (skip_quantiles and "_q" in k.split("/", 1)[1])] if flats else []
    degenerate = [bool(r.get("sae_degenerate")) for r in results]
    sizes = [r.get("num_examples") for r in results]
    labels = {key: key + (GROWS_WITH_N_NOTE if grows_with_n(key) else "") for key in keys}
    name_width = max((len(label) for label in labels.values()), default=6)
    header = f"{'metric':<{name_width}} | " + " | ".join(
        f"{'cycle ' + str(r['cycle']) + ('*' if bad else ''):>9}" for r, bad in zip(results, degenerate)) + " | change"
    lines = [header, "-" * len(header)]
    for key in keys:
        cells = " | ".join(_cell(flat.get(key)) for flat in flats)
        judged = not (depends_on_sae(key) and (degenerate[0] or degenerate[-1]))
        judged = judged and not (grows_with_n(key) and sizes[0] != sizes[-1])
        change = verdict(key, flats[0].get(key), flats[-1].get(key)) if judged else ""
        lines.append(f"{labels[key]:<{name_width}} | {cells} | {change}")
    if any(grows_with_n(key) for key in keys):
        lines.append(f"calinski_harabasz{GROWS_WITH_N_NOTE}: it scales with the number of examples N "
                     f"({_sizes_note(sizes)}); compare it only at equal N")
    if any(degenerate):
        lines.append("* SAE degenerate (no latent fires on this split): its SAE metrics are not compared across cycles")
    return "\n".join(lines)


def _sizes_note(sizes: list) -> str:
    if all(n is None for n in sizes):
        return "N not recorded"
    if len(set(sizes)) == 1:
        return f"N = {sizes[0]} at every cycle"
    return "N = " + ", ".join("?" if n is None else str(n) for n in sizes) + " by cycle"


def _cell(value) -> str:
    return f"{'n/a':>9}" if not _defined(value) else f"{value:>9.4g}"


def summary_csv(results: list[dict]) -> str:
    """One row per cycle, one column per `family/metric`; undefined values are empty cells."""
    flats = [flatten_metrics(r["metrics"]) for r in results]
    columns = list(dict.fromkeys(k for flat in flats for k in flat))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cycle", *columns])
    for result, flat in zip(results, flats):
        writer.writerow([result["cycle"], *("" if not _defined(flat.get(k)) else flat[k] for k in columns)])
    return buffer.getvalue()
