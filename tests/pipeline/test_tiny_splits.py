"""The whole cycle on tiny splits (digits): a 2-example test split, a 1-example validation split, a 3-example
training split. Every stage runs and the undefined metrics are null in results/cycle_N.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sae_ception.stages.cycle import run_cycles
from tests.pipeline.helpers import run_in_process

pytestmark = pytest.mark.slow

FAST = ["cycle.max_cycles=1", "model.epochs=2", "sae.epochs=1"]


def metrics(run_dir, cycle):
    return json.loads((run_dir / "results" / f"cycle_{cycle}.json").read_text())


def test_a_two_example_test_split_runs_every_stage_and_writes_null(tmp_path):
    """dataset.test_fraction=0.0011 of digits' 1797 examples: 2 test examples of 2 classes (k = N)."""
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, ["dataset.test_fraction=0.0011", "plots=true", *FAST])
    for cycle in (0, 1):
        result = metrics(run_dir, cycle)
        assert result["num_examples"] == 2
        for family in ("clustering_dense", "clustering_sae"):
            values = result["metrics"][family]
            assert all(values[k] is None for k in ("ari_kmeans", "silhouette_labels", "silhouette_kmeans",
                                                     "davies_bouldin", "calinski_harabasz")), values
            assert values["silhouette_sample_size"] == 2
        assert 0 <= result["metrics"]["performance"]["accuracy"] <= 1
        assert result["metrics"]["probe"]["dense_accuracy"] is not None  # trained on the full training split
    assert (run_dir / "plots").is_dir() and any((run_dir / "plots").glob("*.png"))
    assert (run_dir / "results" / "summary.csv").is_file()


@pytest.mark.parametrize("overrides,split,size", [
    (["dataset.test_fraction=0.0006"], "test", 1),  # one test example: one class, everything class-based is null
    (["dataset.test_fraction=0.0017"], "test", 3),  # three examples: some classes have a single example
    (["dataset.val_fraction=0.0006"], "val", 1),
    (["dataset.max_train_examples=3"], "train", 3),
])
def test_other_tiny_splits_run_every_stage(tmp_path, overrides, split, size):
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [*overrides, *FAST, "plots=true"])  # plots too: a 1-example PCA is NaN
    result = metrics(run_dir, 1)
    acts = run_dir / "activations" / "cycle_1" / f"{split}.labels.npy"
    assert len(np.load(acts)) == size
    if split == "test" and size == 1:
        mono = result["metrics"]["monosemanticity_sae"]
        assert mono["csi_mean"] is None and mono["u_mean"] is None and mono["dead_units"] is None
        assert all(v is None for k, v in result["metrics"]["clustering_sae"].items()
                   if k not in ("silhouette_sample_size", "kmeans_sample_size"))
