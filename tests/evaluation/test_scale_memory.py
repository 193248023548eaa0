"""The scale benchmark, scaled down, under a hard memory limit smaller than its dense codes would need: a
regression that materialises a split's codes as a dense matrix (or keeps a dense copy of a split) fails here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADROOM_GIB = 0.8  # address space the run may add after its imports


def test_the_whole_suite_runs_in_an_address_space_too_small_for_dense_codes(tmp_path):
    rows, share, d_sae = 80_000, 0.45, 8192
    test_rows = int(rows * share)
    dense_codes_gib = test_rows * d_sae * 4 / 2**30
    assert dense_codes_gib > HEADROOM_GIB + 0.25  # the cap leaves no room for the test split's dense codes
    sampling = {"probe_rows": 4000, "kmeans_rows": 4000, "silhouette_rows": 1500, "plot_rows": 1000}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--rows", str(rows), "--test-share", str(share),
         "--d-in", "32", "--d-sae", str(d_sae), "--k", "16", "--batch-size", "1024", "--out", str(tmp_path),
         "--address-space-gib", str(HEADROOM_GIB), "--sampling", json.dumps(sampling)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench_scale.json").read_text())
    assert report["address_space"]["dense_codes_refused"]  # the cap binds: a dense copy of the codes cannot exist
    assert report["codes"]["rows"] == test_rows and report["codes"]["nnz"] <= test_rows * 16
    families = report["metrics"]
    for family in ("monosemanticity_sae", "clustering_sae", "monosemanticity_dense", "clustering_dense"):
        assert families[family], family
    assert families["clustering_sae"]["kmeans_sample_size"] == 4000
    assert 0 < families["probe"]["sae_accuracy"] <= 1 and report["sampling"]["probe_fit_rows"] == 4000
    assert report["sae_quality"]["l0"] <= 16
    features = json.loads((tmp_path / "feature_report.json").read_text())["features"]
    assert len(features) == 16 and all(entry["top_examples"] for entry in features)
