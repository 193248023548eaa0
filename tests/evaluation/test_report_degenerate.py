"""A cycle whose SAE is degenerate (no latent fires) is marked in the cross-cycle table, and its SAE metrics are
never judged "better" or "worse" than another cycle's (issue 11, item 2)."""

from sae_ception.evaluation.report import format_table


def result(cycle, degenerate, mse, accuracy):
    metrics = {
        "performance": {"accuracy": accuracy, "spliced_accuracy": 0.1 if degenerate else 0.8},
        "sae": {"mse": mse, "explained_variance": float("nan") if degenerate else 0.9, "l0": 0.0 if degenerate else 8.0,
                "dead_fraction": 1.0 if degenerate else 0.1},
        "probe": {"dense_accuracy": 0.9, "sae_accuracy": 0.1 if degenerate else 0.85},
        "monosemanticity_sae": {"csi_mean": float("nan") if degenerate else 0.6, "u_mean": float("nan"),
                                "num_units": 64, "dead_units": 64 if degenerate else 6},
        "clustering_sae": {"ari_kmeans": 0.0 if degenerate else 0.4, "silhouette_sample_size": 359},
    }
    return {"cycle": cycle, "sae_degenerate": degenerate, "metrics": metrics}


def _rows(table):
    return {line.split("|")[0].strip(): line.rstrip() for line in table.splitlines()[2:]}


def test_a_degenerate_last_cycle_is_never_better():
    """Cycle 2's dead target layer gives mse 0: a drop from 0.1 that used to read as "better"."""
    table = format_table([result(0, False, 0.1, 0.90), result(2, True, 0.0, 0.95)])
    rows = _rows(table)
    for key in ("sae/mse", "sae/dead_fraction", "performance/spliced_accuracy", "probe/sae_accuracy",
                "monosemanticity_sae/dead_units", "clustering_sae/ari_kmeans"):
        assert rows[key].endswith("|"), rows[key]  # no verdict either way
    assert rows["performance/accuracy"].endswith("better")  # the model's own metrics are still compared
    assert rows["probe/dense_accuracy"].endswith("same")
    assert "cycle 2*" in table.splitlines()[0] and "cycle 0*" not in table
    healthy = format_table([result(0, False, 0.2, 0.90), result(1, False, 0.1, 0.92)])
    assert _rows(healthy)["sae/mse"].endswith("better") and "*" not in healthy  # as before


def test_a_degenerate_first_cycle_is_not_compared_either_and_the_table_says_why():
    table = format_table([result(0, True, 0.0, 0.90), result(1, False, 0.1, 0.92)])
    assert _rows(table)["sae/mse"].endswith("|")
    assert table.splitlines()[-1].startswith("* SAE degenerate")


def test_code_metrics_of_a_degenerate_sae_are_undefined_except_counts():
    from sae_ception.stages.evaluate import undefine_code_metrics

    families = undefine_code_metrics({k: v for k, v in result(0, True, 0.0, 0.9)["metrics"].items()
                                      if k not in ("performance", "sae")})
    probe = families["probe"]
    assert probe["dense_accuracy"] == 0.9 and probe["sae_accuracy"] != probe["sae_accuracy"]  # NaN
    assert families["clustering_sae"]["silhouette_sample_size"] == 359
    assert families["clustering_sae"]["ari_kmeans"] != families["clustering_sae"]["ari_kmeans"]  # NaN: null in JSON
    assert families["monosemanticity_sae"]["num_units"] == 64 and families["monosemanticity_sae"]["dead_units"] == 64


def test_the_summary_line_says_degenerate_and_does_not_print_an_undefined_ev():
    from sae_ception.stages.evaluate import summary_line

    metrics = result(0, True, 0.0, 0.9)["metrics"]
    metrics["sae"] |= {"mse": 0.0}
    metrics["monosemanticity_sae"]["u_mean"] = float("nan")
    line = summary_line(0, metrics, sae_degenerate=True)
    assert "EV n/a" in line and line.endswith("SAE DEGENERATE: all latents dead")
