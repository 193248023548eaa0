"""The evaluation and feature-report stages on stored sparse codes: the results match the in-memory computation
from the run's own activations and SAE, the samples are recorded, and the code store is reused, rebuilt when
stale, and never left behind by a stage that stops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sae_ception.evaluation.clustering import clustering_metrics
from sae_ception.evaluation.features import feature_statistics, most_active_features
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics
from sae_ception.evaluation.paper_metrics import paper_monosemanticity_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy
from sae_ception.evaluation.representations import encode_all
from sae_ception.evaluation.rows import SparseCodes
from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.sae import load_sae
from sae_ception.stages.cycle import run_cycles
from tests.pipeline.helpers import run_in_process

ONE_CYCLE = ["cycle.max_cycles=0", "analysis.enabled=true", "analysis.num_features=5", "analysis.top_k=3"]


def _split(run_dir, name):
    folder = run_dir / "activations" / "cycle_0"
    return torch.from_numpy(np.load(folder / f"{name}.acts.npy")), torch.from_numpy(np.load(folder / f"{name}.labels.npy"))


def _close(got: dict, want: dict, rel=1e-5):
    for key, value in want.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert got[key] is None or math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("streamed") / "run"
    run_in_process(run_cycles, run_dir, ONE_CYCLE)
    return run_dir


def test_the_results_equal_the_in_memory_metrics_of_the_runs_own_codes(evaluated):
    results = json.loads((evaluated / "results" / "cycle_0.json").read_text())
    sae = load_sae(evaluated / "checkpoints" / "sae_cycle_0")
    train_X, train_y = _split(evaluated, "train")
    test_X, test_y = _split(evaluated, "test")
    codes = encode_all(sae, test_X)
    store = SparseCodes(evaluated / "codes" / "cycle_0" / "test")
    assert torch.equal(store.to_dense(), codes)  # every test example's codes, stored sparse
    metrics = results["metrics"]
    _close(metrics["sae"], sae_quality(sae, test_X))
    for name, test_rep in (("dense", test_X), ("sae", codes)):
        _close(metrics[f"monosemanticity_{name}"],
               monosemanticity_metrics(test_rep, test_y) | paper_monosemanticity_metrics(test_rep, test_y))
        _close(metrics[f"clustering_{name}"], clustering_metrics(test_rep, test_y, seed=results["sampling"]["seed"]))
    seed = results["sampling"]["seed"]
    assert metrics["probe"]["sae_accuracy"] == linear_probe_accuracy(encode_all(sae, train_X), train_y, codes, test_y, seed,
                                                                     centre=False)
    assert metrics["probe"]["dense_accuracy"] == linear_probe_accuracy(train_X, train_y, test_X, test_y, seed)
    assert results["sampling"] == {"probe_fit_rows": len(train_y), "kmeans_fit_rows": len(test_y),
                                   "silhouette_rows": len(test_y), "plot_rows": len(test_y),
                                   "train_rows": len(train_y), "test_rows": len(test_y), "seed": seed}


def test_the_feature_report_reads_the_stored_codes_and_equals_the_in_memory_report(evaluated):
    report = json.loads((evaluated / "analysis" / "cycle_0" / "feature_report.json").read_text())
    sae = load_sae(evaluated / "checkpoints" / "sae_cycle_0")
    test_X, test_y = _split(evaluated, "test")
    codes = encode_all(sae, test_X)
    features = most_active_features(codes, 5)
    assert [entry["feature"] for entry in report["features"]] == features.tolist()
    expected = feature_statistics(codes, test_y, features, num_classes=10, top_k=3)
    for got, want in zip(report["features"], expected):
        assert got["mean_activation"] == pytest.approx(want["mean_activation"], rel=1e-5)
        for key in ("activation_rate", "label_histogram", "label_mode"):
            assert got[key] == want[key], key
        assert [e["index"] for e in got["top_examples"]] == [e["index"] for e in want["top_examples"]]


def test_a_stale_store_is_rebuilt_and_the_chunk_size_changes_no_number(evaluated, tmp_path):
    import shutil

    from sae_ception.stages.cycle import reevaluate

    run_dir = tmp_path / "run"
    shutil.copytree(evaluated, run_dir)
    store = run_dir / "codes" / "cycle_0" / "test"
    meta = json.loads((store / "codes.json").read_text())
    meta["made_with"]["sae"] = "another SAE"
    (store / "codes.json").write_text(json.dumps(meta))
    run_in_process(reevaluate, run_dir, ["cycle.max_cycles=0", "evaluation.chunk_rows=16"])  # resume-neutral
    assert SparseCodes(store).made_with["sae"] != "another SAE"  # rebuilt for this run's SAE
    after = json.loads((run_dir / "results" / "cycle_0.json").read_text())["metrics"]
    before = json.loads((evaluated / "results" / "cycle_0.json").read_text())["metrics"]
    for family in before:
        _close(after[family], before[family], rel=1e-9)


def test_sampled_metrics_record_their_samples(tmp_path):
    small = ["evaluation.probe_rows=100", "evaluation.kmeans_rows=60", "evaluation.silhouette_rows=50",
             "evaluation.plot_rows=40", "evaluation.chunk_rows=16"]
    run_in_process(run_cycles, tmp_path / "run", ["cycle.max_cycles=0", *small])
    results = json.loads((tmp_path / "run" / "results" / "cycle_0.json").read_text())
    sampling = results["sampling"]
    assert (sampling["probe_fit_rows"], sampling["kmeans_fit_rows"], sampling["silhouette_rows"],
            sampling["plot_rows"]) == (100, 60, 50, 40) and sampling["test_rows"] > 60
    assert results["metrics"]["clustering_sae"]["kmeans_sample_size"] == 60
    assert results["metrics"]["clustering_sae"]["silhouette_sample_size"] == 50
    units = load_file(tmp_path / "run" / "results" / "units_cycle_0.safetensors")
    assert units["sae_pca_2d"].shape == (40, 2) and units["labels"].shape == (40,)
    assert all(0 <= results["metrics"]["probe"][k] <= 1 for k in ("dense_accuracy", "sae_accuracy"))


@pytest.mark.parametrize("setting", ["evaluation.probe_rows=0", "evaluation.chunk_rows=-3"])
def test_a_bad_sample_size_stops_before_anything_runs(tmp_path, caplog, setting):
    from tests.pipeline.helpers import expect_one_line_error

    expect_one_line_error(caplog, tmp_path / "run", [setting], f"{setting} must be a positive integer")


def test_a_run_made_before_the_evaluation_settings_existed_still_resumes_and_reevaluates(evaluated, tmp_path):
    import shutil

    import yaml

    from sae_ception.stages.cycle import reevaluate

    run_dir = tmp_path / "run"
    shutil.copytree(evaluated, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["evaluation"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    run_in_process(reevaluate, run_dir, ["cycle.max_cycles=0"])
    assert json.loads((run_dir / "results" / "cycle_0.json").read_text())["sampling"]["probe_fit_rows"] > 0
