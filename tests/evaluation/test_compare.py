"""scripts/compare.py's core: grouping runs by what differs, mean ± std per group, change since cycle 0."""

import math

import pytest
import yaml

from sae_ception.errors import ArtifactError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison
from sae_ception.utils.io import write_json


def make_run(folder, seed, sharpening, accuracies):
    folder.mkdir(parents=True)
    config = {"seed": seed, "run_dir": str(folder), "sharpening": {"type": sharpening, "top_k_pct": 10.0},
              "wandb": {"mode": "disabled"}, "paths": {"output_dir": str(folder)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for cycle, accuracy in enumerate(accuracies):
        write_json(folder / "results" / f"cycle_{cycle}.json",
                   {"cycle": cycle, "metrics": {"performance": {"accuracy": accuracy}, "clustering_sae": {"ari_kmeans": None}}})


@pytest.fixture
def sweep(tmp_path):
    make_run(tmp_path / "0", 0, "per_class", [0.90, 0.94])
    make_run(tmp_path / "1", 1, "per_class", [0.90, 0.96])
    make_run(tmp_path / "2", 0, "random", [0.90, 0.88])
    make_run(tmp_path / "3", 1, "random", [0.92, 0.90])
    return tmp_path


def test_groups_by_the_setting_that_differs_not_the_seed(sweep):
    comparison = compare(find_runs([sweep]))
    assert comparison.group_by == ["sharpening.type"]
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {
        "per_class": 2, "random": 2}


def test_mean_std_and_change_since_cycle_0(sweep):
    row = next(r for r in compare(find_runs([sweep])).rows if r.metric == "performance/accuracy")
    mean, std, n = row.final["per_class"]
    assert (mean, n) == (pytest.approx(0.95), 2) and std == pytest.approx(math.sqrt(2) * 0.01)
    assert row.change["per_class"][0] == pytest.approx(0.05)
    assert row.change["random"][0] == pytest.approx(-0.02)
    text = format_comparison(compare(find_runs([sweep])))
    assert "0.95 ± 0.014" in text and "ok" in text and "bad" in text


def test_undefined_metrics_are_not_averaged_as_numbers(sweep):
    row = next(r for r in compare(find_runs([sweep])).rows if r.metric == "clustering_sae/ari_kmeans")
    assert row.final["random"][2] == 0
    assert "n/a" in format_comparison(compare(find_runs([sweep])))


def test_explicit_grouping_and_cycle(sweep):
    comparison = compare(find_runs([sweep]), group_by=["seed"], cycle=0)
    row = next(r for r in comparison.rows if r.metric == "performance/accuracy")
    assert row.final["1"][0] == pytest.approx(0.91)


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no run folders"):
        find_runs([tmp_path])
