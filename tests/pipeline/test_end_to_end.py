"""End-to-end: a 2-cycle run on digits with tiny settings writes every artifact with sane numbers."""

import json

import torch

import pytest
import yaml

from sae_ception.stages.cycle import run_cycles
from tests.pipeline.helpers import final_metrics, run_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    results = run_in_process(run_cycles, run_dir, ["cycle.max_cycles=2", "plots=true"])
    return run_dir, results


def test_every_artifact_is_written(finished_run):
    run_dir, results = finished_run
    assert [r["cycle"] for r in results] == [0, 1, 2]
    for cycle in range(3):
        for name in ("weights.safetensors", "config.json"):
            assert (run_dir / "checkpoints" / f"model_cycle_{cycle}" / name).is_file()
            assert (run_dir / "checkpoints" / f"sae_cycle_{cycle}" / name).is_file()
        assert (run_dir / "activations" / f"cycle_{cycle}" / "train.acts.npy").is_file()
        assert (run_dir / "results" / f"cycle_{cycle}.json").is_file()
    assert not (run_dir / "checkpoints" / "model_cycle_3").exists()
    for name in ("performance", "sae", "monosemanticity_sae", "clustering_sae", "probe", "sae_latent_csi_u_histograms", "sae_codes_pca"):
        png = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    summary = (run_dir / "results" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("cycle,performance/accuracy") and len(summary) == 4
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["cycle"]["max_cycles"] == 2 and saved["sae"]["type"] == "relu" and saved["seed"] == 0
    assert not list(run_dir.rglob("*.tmp")), "no temporary files may be left behind"


def test_metrics_are_in_range(finished_run):
    run_dir, _ = finished_run
    for name, metrics in final_metrics(run_dir).items():
        perf, sae = metrics["performance"], metrics["sae"]
        assert 0.3 < perf["accuracy"] <= 1.0, name  # far above chance (0.1) even with 2 epochs
        assert 0.0 <= perf["spliced_accuracy"] <= 1.0
        assert sae["mse"] >= 0 and sae["l0"] >= 0 and 0 <= sae["dead_fraction"] <= 1
        assert sae["explained_variance"] <= 1.0


def test_checkpoint_records_what_built_it(finished_run):
    run_dir, _ = finished_run
    meta = json.loads((run_dir / "checkpoints" / "sae_cycle_1" / "config.json").read_text())
    assert meta["type"] == "relu" and meta["d_in"] == 16 and meta["d_sae"] == 64
    model_meta = json.loads((run_dir / "checkpoints" / "model_cycle_1" / "config.json").read_text())
    assert model_meta["name"] == "mlp" and model_meta["config"]["hidden_sizes"] == [32, 16]
    assert model_meta["extra"]["stage"] == "auxiliary"


@pytest.mark.parametrize("overrides", [["sae=topk", "sae.k=4"], ["sharpening=per_example"], ["sharpening=random"]])
def test_variants_run_a_cycle(tmp_path, overrides):
    results = run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=1", *overrides])
    assert len(results) == 2
    if "sae=topk" in overrides:
        assert all(r["metrics"]["sae"]["l0"] <= 4 + 1e-6 for r in results)


def test_mixed_precision_on_cpu_is_refused_in_one_line(tmp_path):
    from sae_ception.errors import ConfigError
    from sae_ception.utils.device import make_accelerator

    with pytest.raises(ConfigError, match="mixed_precision=bf16 needs a CUDA device"):
        make_accelerator("cpu", "bf16")


def test_start_from_a_checkpoint_given_by_path(finished_run, tmp_path):
    from sae_ception.utils.io import load_checkpoint

    source = finished_run[0] / "checkpoints" / "model_cycle_1"
    results = run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0", f"inputs.model={source}"])
    imported, _ = load_checkpoint(tmp_path / "checkpoints" / "model_cycle_0")
    original, _ = load_checkpoint(source)
    assert all((imported[k] == original[k]).all() for k in original)
    ours, theirs = results[0]["metrics"]["performance"], final_metrics(finished_run[0])["cycle_1.json"]["performance"]
    assert (ours["accuracy"], ours["loss"]) == (theirs["accuracy"], theirs["loss"])  # same model, same test split


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0", "wandb.mode=offline", "analysis.enabled=true",
                                          "analysis.num_features=2"])
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    report = json.loads((tmp_path / "analysis" / "cycle_0" / "feature_report.json").read_text())
    cards = sorted(p.name.split("_")[1] for p in runs[0].parent.glob("files/media/images/analysis/cycle_0/feature_*.png"))
    assert cards == sorted(str(entry["feature"]) for entry in report["features"])  # one wandb image per feature card


def test_stage_scripts_with_explicit_model_and_sae(finished_run, tmp_path):
    """train_auxiliary on a fresh folder from inputs.model + inputs.sae gives the run's own next model."""
    from sae_ception.entrypoints import ENTRYPOINTS
    from sae_ception.utils.io import load_checkpoint

    source = finished_run[0] / "checkpoints"
    entry = ENTRYPOINTS["train_auxiliary"]
    run_in_process(entry.task, tmp_path, ["cycle.max_cycles=2", "cycle.current=1",
                                          f"inputs.model={source / 'model_cycle_1'}", f"inputs.sae={source / 'sae_cycle_1'}"],
                   entry.preflight)
    ours, _ = load_checkpoint(tmp_path / "checkpoints" / "model_cycle_2")
    theirs, _ = load_checkpoint(source / "model_cycle_2")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "same inputs and seed must give the same model"


def test_resume_clears_what_a_killed_writer_left(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "checkpoints" / ".model_cycle_3.abc123.tmp").mkdir()
    (run_dir / "results" / ".cycle_3.json.xyz.tmp").write_text("{half")
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=2"])
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.parametrize("sae", ["jumprelu", "batchtopk"])
def test_every_sae_variant_runs_every_stage(tmp_path, sae):
    run_in_process(run_cycles, tmp_path / "run", [f"sae={sae}", "cycle.max_cycles=1", "sae.epochs=2"])
    for cycle in (0, 1):
        result = json.loads((tmp_path / "run" / "results" / f"cycle_{cycle}.json").read_text())
        assert result["metrics"]["sae"]["l0"] > 0 and 0 <= result["metrics"]["performance"]["spliced_accuracy"] <= 1


def test_target_l0_calibrates_the_penalty_and_saves_the_search(tmp_path):
    run_in_process(run_cycles, tmp_path / "run", ["sae.target_l0=6", "cycle.max_cycles=0", "sae.epochs=2"])
    meta = json.loads((tmp_path / "run" / "checkpoints" / "sae_cycle_0" / "config.json").read_text())
    record = meta["extra"]["training"]["calibration"]
    assert record["setting"] == "l1_coefficient" and record["target_l0"] == 6 and record["trials"]
    assert meta["config"]["l1_coefficient"] == record["coefficient"] and record["achieved_val_l0"] > 0


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("analysed")
    run_in_process(run_cycles, run_dir, ["analysis.enabled=true", "analysis.num_features=5", "cycle.max_cycles=0"])
    return run_dir


def test_feature_reports_at_the_end_of_a_run_and_from_the_script(analysed_run):
    from sae_ception.stages.cycle import analyze

    run_dir = analysed_run
    folder = run_dir / "analysis" / "cycle_0"
    report = json.loads((folder / "feature_report.json").read_text())
    assert len(report["features"]) == 5 and report["split"] == "test"
    first = report["features"][0]
    assert len(first["logit_effects"]) == 10 and len(first["label_histogram"]) == 10
    assert first["activation_rate"] > 0 and first["top_examples"] and 0 <= first["promotes"] < 10
    page = (folder / "index.html").read_text()
    assert page.count('<section class="card"') == 5 and page.count("data:image/png;base64,") == 5
    assert all(f'id="feature-{entry["feature"]}"' in page for entry in report["features"])
    (folder / "feature_report.json").unlink()
    (folder / "index.html").unlink()
    run_in_process(analyze, run_dir, ["analysis.enabled=true", "analysis.num_features=5", "cycle.max_cycles=0"])
    assert json.loads((folder / "feature_report.json").read_text()) == report
    assert (folder / "index.html").read_text() == page


def test_the_feature_gallery_of_a_run_loads_cleanly_in_chromium(analysed_run, chromium):
    from tests.browser import is_uniform, open_offline_page

    problems, images, screenshot = open_offline_page(chromium, analysed_run / "analysis" / "cycle_0" / "index.html")
    assert problems == [] and images == 5 and not is_uniform(screenshot)
