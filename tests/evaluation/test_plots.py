"""The metric-against-cycle plots: an honest y-scale (a small change looks small), the better direction and the
first -> last values in each title, and undefined values as gaps (evaluation/plots.py's docstring states the rule)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sae_ception.evaluation import plots

MIN_SPAN = 0.1  # of a metric's natural range (1 for a metric in [0, 1]), or of its largest |value|


def results(family: str, series: dict[str, list]) -> list[dict]:
    """Hand-built results/cycle_N.json contents: one family, a list of values per metric (None: undefined)."""
    cycles = len(next(iter(series.values())))
    return [{"cycle": c, "metrics": {family: {name: values[c] for name, values in series.items()}}} for c in range(cycles)]


def panels(tmp_path, monkeypatch, results_list) -> dict[str, object]:
    """Draw with plot_families (PNG files written as in a run) and return each panel's Axes by metric name."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    paths = plots.plot_families(results_list, tmp_path)
    assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    axes = {}
    for fig in figures:
        for ax in fig.axes:
            if ax.get_visible() and ax.lines:
                axes[ax.get_title().split(" ")[0]] = ax
    return axes


def span(ax) -> float:
    low, high = ax.get_ylim()
    return high - low


UNIT = (0.0, 1.0)


@pytest.mark.parametrize("family, name, values, natural", [
    ("performance", "accuracy", [0.958, 0.959, 0.961], UNIT),
    ("performance", "accuracy", [0.997, 1.0], UNIT),
    ("performance", "f1_macro", [0.0, 0.002, 0.001], UNIT),
    ("performance", "spliced_accuracy", [0.5, 0.503], UNIT),
    ("performance", "spliced_accuracy_drop", [0.0, -0.004], (-1.0, 1.0)),
    ("sae", "explained_variance", [0.9198, 0.9279], UNIT),
    ("sae", "dead_fraction", [0.0, 0.0, 0.0], UNIT),
    ("monosemanticity_sae", "csi_mean", [0.642, 0.643], UNIT),
    ("monosemanticity_dense", "u_mean", [0.38, 0.39], UNIT),
    ("probe", "sae_accuracy", [0.91, 0.912], UNIT),
    ("clustering_sae", "ari_kmeans", [0.3859, 0.39], (-0.5, 1.0)),
    ("clustering_dense", "silhouette_kmeans", [0.2611, 0.2645], (-1.0, 1.0)),
])
def test_a_small_change_of_a_bounded_metric_does_not_fill_its_panel(tmp_path, monkeypatch, family, name, values, natural):
    ax = panels(tmp_path, monkeypatch, results(family, {name: values}))[name]
    low, high = ax.get_ylim()
    assert high - low >= MIN_SPAN * (natural[1] - natural[0]) - 1e-12
    assert (max(values) - min(values)) / (high - low) <= 0.1 + 1e-9  # a change of a hundredth fills a tenth at most
    assert low <= min(values) and high >= max(values)  # every value is on the panel
    slack = 0.051 * (high - low)  # the axis stays inside the natural range but for a 5% pad
    assert low >= natural[0] - slack and high <= natural[1] + slack


@pytest.mark.parametrize("family, name, values", [
    ("performance", "loss", [2.047, 2.040]),
    ("sae", "l0", [30.55, 30.28, 30.3]),
    ("sae", "mse", [0.0271, 0.0270]),
    ("clustering_dense", "calinski_harabasz", [92.38, 93.0]),
    ("clustering_dense", "davies_bouldin", [-1e-3, -2e-3]),  # any sign
])
def test_an_unbounded_metric_spans_at_least_a_tenth_of_its_size(tmp_path, monkeypatch, family, name, values):
    ax = panels(tmp_path, monkeypatch, results(family, {name: values}))[name]
    assert span(ax) >= MIN_SPAN * max(map(abs, values)) - 1e-12
    low, high = ax.get_ylim()
    assert low <= min(values) and high >= max(values)


def test_large_changes_still_use_the_panel_and_values_outside_the_range_still_show(tmp_path, monkeypatch):
    axes = panels(tmp_path, monkeypatch, results("sae", {"explained_variance": [-0.5, 0.2, 0.6],
                                                         "dead_fraction": [0.1, 0.5, 0.9]}))
    low, high = axes["explained_variance"].get_ylim()
    assert low <= -0.5 and 0.6 <= high <= 0.7
    low, high = axes["dead_fraction"].get_ylim()
    assert 0.8 / (high - low) > 0.85 and -0.01 < low <= 0.1 and 0.9 <= high < 1.01


def test_counts_of_units_are_scaled_by_the_number_of_units(tmp_path, monkeypatch):
    axes = panels(tmp_path, monkeypatch, results("monosemanticity_sae", {
        "num_units": [256, 256], "dead_units": [3, 4], "csi_mean": [0.5, 0.6]}))
    assert "num_units" not in axes and span(axes["dead_units"]) >= 25.6


@pytest.mark.parametrize("name, direction", [
    ("accuracy", "\u2191 better"), ("loss", "\u2193 better"), ("spliced_accuracy_drop", "closer to 0 better"),
    ("f1_weighted", "\u2191 better"), ("spliced_loss", "\u2193 better"),
])
def test_titles_say_which_way_is_better_and_the_first_and_last_values(tmp_path, monkeypatch, name, direction):
    ax = panels(tmp_path, monkeypatch, results("performance", {name: [0.958, 0.95, 0.961]}))[name]
    first_line, second_line = ax.get_title().split("\n")
    assert first_line == f"{name} ({direction})"
    assert second_line == "0.958 \u2192 0.961 (+0.003)"


@pytest.mark.parametrize("family, name, direction", [
    ("sae", "l0", "no better direction"), ("sae", "mse", "\u2193 better"), ("probe", "dense_accuracy", "\u2191 better"),
    ("monosemanticity_sae", "dead_units", "\u2193 better"), ("clustering_sae", "davies_bouldin", "\u2193 better"),
    ("clustering_sae", "silhouette_labels", "\u2191 better"),
])
def test_every_family_carries_the_direction(tmp_path, monkeypatch, family, name, direction):
    ax = panels(tmp_path, monkeypatch, results(family, {name: [1.0, 2.0]}))[name]
    assert ax.get_title().startswith(f"{name} ({direction})\n")


def test_tick_labels_are_the_values_not_an_offset(tmp_path, monkeypatch):
    ax = panels(tmp_path, monkeypatch, results("performance", {"loss": [1000.001, 1000.002]}))["loss"]
    ax.figure.draw_without_rendering()
    assert ax.yaxis.get_offset_text().get_text() == ""


@pytest.mark.parametrize("undefined", [None, math.nan, math.inf])
def test_undefined_values_are_gaps_not_zeros(tmp_path, monkeypatch, undefined):
    axes = panels(tmp_path, monkeypatch, results("clustering_sae", {"ari_kmeans": [0.4, undefined, 0.41],
                                                                    "silhouette_labels": [undefined] * 3}))
    ax = axes["ari_kmeans"]
    ys = ax.lines[0].get_ydata()
    assert ys[0] == 0.4 and np.isnan(ys[1]) and ys[2] == 0.41
    assert ax.get_ylim()[0] > 0.25  # not pulled down to 0 by the undefined cycle
    assert [t.get_text() for t in ax.texts] == ["n/a"] and ax.texts[0].get_position()[0] == 1
    assert ax.get_title().endswith("0.4 \u2192 0.41 (+0.01)")
    empty = axes["silhouette_labels"]
    assert np.isnan(empty.lines[0].get_ydata()).all() and len(empty.texts) == 3
    assert empty.get_title().endswith("undefined at every cycle")
