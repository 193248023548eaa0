"""The cross-cycle table and summary.csv: directions, undefined values, one row per cycle."""

import csv
import io

from sae_ception.evaluation.report import format_table, summary_csv, verdict


def result(cycle, accuracy, mse, csi_q90, ari):
    return {"cycle": cycle, "metrics": {
        "performance": {"accuracy": accuracy, "spliced_accuracy_drop": -0.02 if cycle else 0.05},
        "sae": {"mse": mse, "l0": 10.0 + cycle},
        "monosemanticity_sae": {"csi_mean": 0.5, "csi_q90": csi_q90},
        "clustering_sae": {"ari_kmeans": ari},
    }}


RESULTS = [result(0, 0.90, 0.2, 0.7, None), result(1, 0.92, 0.3, 0.6, 0.4)]


def test_verdicts_follow_each_metrics_direction():
    assert verdict("performance/accuracy", 0.90, 0.92) == "better"
    assert verdict("sae/mse", 0.2, 0.3) == "worse"
    assert verdict("monosemanticity_sae/csi_q90", 0.7, 0.6) == "worse"  # quantiles go their mean's way
    assert verdict("performance/spliced_accuracy_drop", 0.05, -0.02) == "better"  # closer to 0
    assert verdict("sae/l0", 10, 11) == ""  # no preferred direction
    assert verdict("clustering_sae/ari_kmeans", None, 0.4) == ""  # undefined at cycle 0
    assert verdict("performance/accuracy", 0.9, 0.9) == "same"


def test_table_has_a_row_per_metric_and_marks_undefined_values():
    table = format_table(RESULTS, skip_quantiles=False)
    rows = {line.split("|")[0].strip(): line for line in table.splitlines()[2:]}
    assert rows["performance/accuracy"].rstrip().endswith("better")
    assert "n/a" in rows["clustering_sae/ari_kmeans"]
    assert "csi_q90" not in format_table(RESULTS)  # quantiles are left to summary.csv by default


def test_summary_csv_has_one_row_per_cycle():
    rows = list(csv.DictReader(io.StringIO(summary_csv(RESULTS))))
    assert [r["cycle"] for r in rows] == ["0", "1"]
    assert rows[1]["performance/accuracy"] == "0.92" and rows[0]["clustering_sae/ari_kmeans"] == ""


def test_the_paper_variants_have_a_direction():
    assert verdict("monosemanticity_sae/u_paper_mean", 0.1, 0.2) == "better"
    assert verdict("monosemanticity_dense/csi_paper_live_units", 10, 8) == "worse"
    assert verdict("clustering_sae/ari_argmax", 0.3, 0.2) == "worse"
    assert verdict("clustering_sae/argmax_zero_rows", 3, 1) == "better"
    assert verdict("clustering_sae/argmax_clusters", 3, 9) == ""  # more clusters is neither


def calinski(cycle, n, value):
    return {"cycle": cycle, "num_examples": n, "metrics": {"clustering_dense": {"calinski_harabasz": value}}}


def test_calinski_harabasz_says_it_grows_with_n_and_is_not_judged_across_different_n():
    same = format_table([calinski(0, 360, 100.0), calinski(1, 360, 120.0)])
    rows = {line.split("|")[0].strip(): line.rstrip() for line in same.splitlines()[2:]}
    assert rows["clustering_dense/calinski_harabasz (grows with N)"].endswith("better")
    assert "N = 360 at every cycle" in same.splitlines()[-1] and "compare it only at equal N" in same
    changed = format_table([calinski(0, 360, 100.0), calinski(1, 720, 300.0)])
    assert changed.splitlines()[2].rstrip().endswith("|") and "N = 360, 720 by cycle" in changed
    assert "calinski_harabasz" not in format_table(RESULTS)  # no note without the metric
