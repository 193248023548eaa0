"""scripts/transfer_concept.py's SAE concept-space methods end to end on digits: sae_splice, sae_injection,
preserved_injection, vector_space, cross_arch_aligner and aligned_spatial. Each reads both models' SAEs
(`checkpoints/sae_a`, `sae_b`, trained once per run on penultimate features); the tests check what every method
reports (measures, budget, diagnostics), that the SAEs are trained once and reused, that the splice control is
exactly A reading its SAE's reconstruction, the cross-architecture rules, bad input, reproducibility and resume."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sae_ception.data import load_splits
from sae_ception.models import build_model
from sae_ception.models.checkpoint import config_from_checkpoint, load_model
from sae_ception.sae import build_sae, load_sae
from sae_ception.transfer import parse_transfer_config
from sae_ception.transfer.measures import transfer_measures
from sae_ception.utils.io import load_checkpoint
from sae_ception.utils.seeding import stage_seed
from tests.conftest import TINY, run_script
from tests.pipeline.helpers import snapshot
from tests.pipeline.test_transfer_concept import _refused, compose_transfer, results, run_transfer

SAE_METHODS = ["sae_splice", "sae_injection", "preserved_injection", "vector_space", "cross_arch_aligner",
               "aligned_spatial"]
EDITORS = ["preserved_injection", "vector_space", "cross_arch_aligner", "aligned_spatial"]  # train an editor
PROCRUSTES = ["sae_splice", "sae_injection", "preserved_injection", "vector_space", "aligned_spatial"]
FREE_SPACE = ["vector_space", "cross_arch_aligner", "aligned_spatial"]
CONTROLS = ["aligned_spatial_reachable", "aligned_spatial_no_b"]  # aligned_spatial without B's concept
K, EDITOR_STEPS, ALIGNER_STEPS, SAE_EPOCHS, FINETUNE_STEPS = 12, 3, 5, 3, 3
CLASSES_A, SHARED, TARGET = [0, 1, 2, 3], [2, 3], 4

# Seconds-long runs. The concept autoencoder (the default `sae`) learns slowly at its lr 1e-3: a few epochs
# at 0.01 give the tiny runs a usable SAE.
# One torch thread: on a busy 2-core machine tiny matrices on two threads wait on each other.
SAE_QUICK = ["threads=1", "wandb.mode=disabled", "progress=false", "device=cpu", "plots=false",
             "model_a.hidden_sizes=[32,16]", "model_b.hidden_sizes=[32,16]", "model_a.epochs=2", "model_b.epochs=2",
             "model_a.lr=0.01", "model_b.lr=0.01", f"sae.epochs={SAE_EPOCHS}", "sae.lr=0.01",
             f"concept.target_images={K}",
             f"transfer.finetune_head.steps={FINETUNE_STEPS}", "transfer.finetune_head.replay_per_class=20",
             *[f"transfer.{m}.steps={EDITOR_STEPS}" for m in EDITORS],
             f"transfer.cross_arch_aligner.aligner_steps={ALIGNER_STEPS}"]
ALL = ["finetune_head", *SAE_METHODS]


def methods(names) -> str:
    return f"concept.methods=[{','.join(names)}]"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sae_files(run_dir: Path) -> dict:
    """(mtime, content hash) of every file of both SAE checkpoints."""
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, sha(p))
            for p in sorted((run_dir / "checkpoints").glob("sae_*/*")) if p.is_file()}


def log_since(run_dir: Path, offset: int) -> str:
    return (run_dir / "transfer_concept.log").read_text()[offset:]


def log_size(run_dir: Path) -> int:
    return len((run_dir / "transfer_concept.log").read_text())


def sae_meta(run_dir: Path, which: str) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / f"sae_{which}")[1]["extra"]


def method_result(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "results" / "methods" / f"{name}.json").read_text())


def splits(overrides=()):
    """The data split every seed-0 run of these tests reads (as RunContext.splits loads it)."""
    cfg = parse_transfer_config(compose_transfer(Path("/nonexistent"), [methods(ALL), *overrides], base=SAE_QUICK))
    return load_splits(cfg.dataset, seed=stage_seed(cfg.seed, 0, "data"))


def train_count(labels: torch.Tensor, classes) -> int:
    return int(torch.isin(labels, torch.tensor(list(classes))).sum())


def load_a(run_dir: Path):
    path = run_dir / "checkpoints" / "model_a"
    _, meta = load_checkpoint(path)
    model = build_model(config_from_checkpoint(path), input_dim=meta["input_dim"], num_classes=meta["num_classes"])
    load_model(path, model, "model_a")
    return model.eval()


def one_line_refusal(proc, *needles):
    """A subprocess run refused: exit code 2, one non-empty output line naming every needle, no traceback. (The
    product logs to stdout, errors included: configs/hydra/job_logging/sae_ception.yaml.)"""
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 2, out[-3000:]
    assert len(lines) == 1 and "Traceback" not in out, lines
    assert "ERROR" in lines[0] and "error: " in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- one shared run: five SAE methods and finetune_head, then one more method added ---------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sae_methods") / "run"
    run_transfer(run_dir, [methods(ALL[:-1])], base=SAE_QUICK)
    first = SimpleNamespace(saes=sae_files(run_dir), snapshot=snapshot(run_dir), log_end=log_size(run_dir))
    run_transfer(run_dir, [methods(ALL)], base=SAE_QUICK)  # adds aligned_spatial
    return SimpleNamespace(dir=run_dir, first=first, second_log=log_since(run_dir, first.log_end))


def test_every_sae_method_runs_end_to_end_with_its_budget_and_diagnostics(shared):
    run_dir = shared.dir
    summary = results(run_dir)
    assert list(summary["methods"]) == ALL
    data = splits()
    rows_a = train_count(data.train.y, CLASSES_A)
    rows_b = train_count(data.train.y, [2, 3, 5]) + K  # B's other classes, and of the target only the k images
    others = train_count(data.train.y, [0, 1, 2, 3, 5])  # A's SAE's images and B's, less the target's

    # the SAEs: trained once, on what concepts.py promises, for the steps their epochs make
    meta_a, meta_b = sae_meta(run_dir, "a"), sae_meta(run_dir, "b")
    assert meta_a["made_with"]["images"] == {"classes": CLASSES_A, "per_class": None, "target_images": 0}
    assert meta_b["made_with"]["images"] == {"classes": [2, 3, 5], "per_class": None, "target_images": K}
    assert meta_a["training"]["final_fit"]["rows"] == rows_a and meta_b["training"]["final_fit"]["rows"] == rows_b
    steps_a, steps_b = meta_a["training"]["steps"], meta_b["training"]["steps"]
    assert steps_a == SAE_EPOCHS * math.ceil(rows_a / 64) and steps_b == SAE_EPOCHS * math.ceil(rows_b / 64)
    assert (run_dir / "checkpoints" / "sae_a" / "weights.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("sae_*")) == ["sae_a", "sae_b"]
    sae_a_size = sum(t.numel() for t in load_sae(run_dir / "checkpoints" / "sae_a").state_dict().values())

    finetune = summary["methods"]["finetune_head"]
    chosen = finetune["target_image_indices"]
    assert len(chosen) == K == finetune["budget"]["target_images"]
    assert bool((data.train.y[torch.tensor(chosen)] == TARGET).all())
    expected_steps = {"sae_splice": 0, "sae_injection": 0, "preserved_injection": EDITOR_STEPS,
                      "vector_space": EDITOR_STEPS, "aligned_spatial": EDITOR_STEPS,
                      "cross_arch_aligner": ALIGNER_STEPS + EDITOR_STEPS}
    for name in SAE_METHODS:
        result = summary["methods"][name]
        assert result == method_result(run_dir, name)
        m, budget, diag = result["measures"], result["budget"], result["diagnostics"]
        for measure in ("transfer", "preservation", "specificity"):
            assert math.isfinite(m[measure]) and 0.0 <= m[measure] <= 1.0, (name, measure, m[measure])
            assert 0.0 <= result["validation"][measure] <= 1.0, (name, measure)
        assert m["preservation_change"] == m["preservation"] - summary["models"]["a"]["preservation"]
        # the same k target images as finetune_head, with their labels; every other image the SAEs read
        assert result["target_image_indices"] == chosen, name
        assert budget["target_images"] == K and budget["target_labels"] is True
        assert budget["other_images"] == others, name
        assert budget["validation_images"] == 0
        # the SAEs' steps, plus the method's own (aligner, editor)
        assert diag["steps_sae"] == steps_a + steps_b, name
        assert budget["gradient_steps"] == steps_a + steps_b + expected_steps[name], name
        # head_row=a: A's own weights untouched; an editor (with a copy of A's SAE) added
        assert result["settings"]["head_row"] == "a"
        assert budget["parameters_changed"] == 0 and budget["parameters_added"] > sae_a_size, name
        assert (run_dir / "checkpoints" / f"edited_{name}" / "weights.safetensors").is_file()
        # what every SAE method reports
        for key in ("cka_features", "cka_concepts"):
            assert 0.0 <= diag[key] <= 1.0 + 1e-9, (name, key, diag[key])
        assert math.isfinite(diag["target_margin"]) and diag["target_margin"] >= 0, name
        if name in PROCRUSTES:
            assert 0.0 <= diag["procrustes_residual"] < 2 and 0.0 <= diag["procrustes_residual_images"] < 2, name
        else:
            assert "procrustes_residual" not in diag
        if name in FREE_SPACE:
            assert diag["free_dims"] == 8  # min(8, d_sae // 3) with d_sae 24
            assert 0.0 <= diag["free_space_energy"] <= 1.0
        if name in ("vector_space", "cross_arch_aligner"):
            assert 0.0 <= diag["free_projection_fraction"] <= 1.0 + 1e-9
        if name in EDITORS:
            assert all(math.isfinite(diag[f"loss_{t}"]) for t in ("preservation", "transfer", "confidence"))
    # one run, one pair of SAEs: every method sees the same similarity and (for the Procrustes ones) one R
    diags = {name: summary["methods"][name]["diagnostics"] for name in SAE_METHODS}
    assert len({(d["cka_features"], d["cka_concepts"], d["steps_sae"]) for d in diags.values()}) == 1
    assert len({diags[name]["procrustes_residual"] for name in PROCRUSTES}) == 1
    assert diags["cross_arch_aligner"]["aligner_residual"] >= 0
    assert math.isfinite(diags["cross_arch_aligner"]["aligner_residual"])
    for key in ("distance_2", "distance_3"):
        assert math.isfinite(diags["aligned_spatial"][key]) and diags["aligned_spatial"][key] >= 0
    assert 0.0 <= diags["aligned_spatial"]["angle_degrees"] <= 180.0
    assert math.isfinite(diags["preserved_injection"]["distinctive_excess"])
    # the splice adds exactly A's SAE, B's carried concept (24) and its strength
    assert summary["methods"]["sae_splice"]["budget"]["parameters_added"] == sae_a_size + 24 + 1
    assert summary["methods"]["sae_splice"]["settings"]["strength"] == 0.0


def test_the_saes_are_trained_once_and_reused_with_the_earlier_methods(shared):
    run_dir, log = shared.dir, shared.second_log
    assert sae_files(run_dir) == shared.first.saes  # neither SAE rewritten by the second invocation
    assert "sae_a: found" in log and "sae_b: found" in log and "skipping (resume)" in log
    assert "training a concept_autoencoder SAE" not in log
    assert "training a concept_autoencoder SAE" in (run_dir / "transfer_concept.log").read_text()[:shared.first.log_end]
    for name in ALL[:-1]:  # the earlier methods: reused as they were
        assert f"transfer/{name}: found" in log, name
        key = f"results/methods/{name}.json"
        assert snapshot(run_dir)[key] == shared.first.snapshot[key]
    assert "transfer/aligned_spatial: found" not in log and "results/methods/aligned_spatial.json" in snapshot(run_dir)
    assert "results/methods/aligned_spatial.json" not in shared.first.snapshot
    now = snapshot(run_dir)
    assert {k: v for k, v in now.items() if k.startswith("checkpoints/") and "aligned_spatial" not in k} == \
           {k: v for k, v in shared.first.snapshot.items() if k.startswith("checkpoints/")}


def test_sae_splice_is_exactly_a_reading_its_sae_reconstruction(shared):
    """strength 0: the edited model is A with h replaced by D_A(E_A(h)); its predictions (and so its measures) are
    those of A's head on the reconstruction computed here from the run's checkpoints of A and of A's SAE."""
    from sae_ception.transfer.editor import ConceptEditor, ConstantGate, ConstantInjection, NoBlend, attach

    run_dir = shared.dir
    model_a, sae_a = load_a(run_dir), load_sae(run_dir / "checkpoints" / "sae_a")
    data = splits()
    summary = results(run_dir)["methods"]

    @torch.no_grad()
    def through_sae(x):
        h = x.flatten(1)
        for block in model_a.blocks:
            h = block(h)
        return model_a.head(sae_a.decode(sae_a.encode(h)))

    for split, key in (("test", "measures"), ("val", "validation")):
        part = getattr(data, split)
        expected = transfer_measures(through_sae(part.x).argmax(1), part.y, CLASSES_A, TARGET, 5, [0, 1, 2, 3, 4, 5])
        got = summary["sae_splice"][key]
        for measure in ("transfer", "preservation", "specificity", "confusion"):
            assert got[measure] == expected[measure], (split, measure)

    # the saved edited model: A's weights, A's SAE, nothing injected
    state, _ = load_checkpoint(run_dir / "checkpoints" / "edited_sae_splice")
    for key, value in model_a.state_dict().items():
        assert torch.equal(state[key], value), key
    editor_prefix = next(k for k in state if k.endswith("injection.strength")).rsplit("injection.", 1)[0]
    for key, value in sae_a.state_dict().items():
        assert torch.equal(state[f"{editor_prefix}sae.{key}"], value), key
    assert float(state[f"{editor_prefix}injection.strength"]) == 0.0
    vector = state[f"{editor_prefix}injection.vector"]
    assert vector.shape == (24,) and float(vector.norm()) > 0  # B's concept is there, at strength 0

    # rebuilt from its weights, image by image: the same predictions as A's head on D_A(E_A(h))
    edited = attach(load_a(run_dir), ConceptEditor(load_sae(run_dir / "checkpoints" / "sae_a"), ConstantGate(),
                                                    ConstantInjection(vector, 0.0), NoBlend()))
    edited.load_state_dict(state, strict=True)
    edited.eval()
    with torch.no_grad():
        logits = edited(data.test.x)
    reference = through_sae(data.test.x)
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)

    # sae_injection: the same SAE, the same carried concept, strength 1: a different model
    injected, _ = load_checkpoint(run_dir / "checkpoints" / "edited_sae_injection")
    assert torch.equal(injected[f"{editor_prefix}injection.vector"], vector)
    assert float(injected[f"{editor_prefix}injection.strength"]) == 1.0
    assert summary["sae_injection"]["diagnostics"]["target_concept_norm"] == pytest.approx(float(vector.norm()))
    assert summary["sae_injection"]["diagnostics"]["target_margin"] != summary["sae_splice"]["diagnostics"]["target_margin"]


def test_the_same_command_in_a_new_folder_gives_the_same_results(shared, tmp_path):
    """Reproducibility, in a fresh process (exit code 0): every method in one invocation gives what the shared
    run gave in two (a method's result depends neither on the other methods nor on resume)."""
    other = tmp_path / "again"
    done = run_script("transfer_concept.py", *SAE_QUICK, methods(ALL), f"run_dir={other}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ours, theirs = results(shared.dir)["methods"], results(other)["methods"]
    assert list(theirs) == ALL
    for name in ALL:
        for key in ("measures", "validation", "diagnostics", "budget", "target_image_indices", "models", "settings"):
            assert theirs[name][key] == ours[name][key], (name, key)
    assert sae_files(other).keys() == shared.first.saes.keys()
    assert {k: v[1] for k, v in sae_files(other).items()} == {k: v[1] for k, v in shared.first.saes.items()}


def test_an_sae_checkpoint_of_another_width_is_refused_before_anything_runs(shared, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(shared.dir, run_dir)
    # B and the method results gone: a rerun would train B and run the methods, unless refused first
    shutil.rmtree(run_dir / "checkpoints" / "model_b")
    shutil.rmtree(run_dir / "results")
    path = run_dir / "checkpoints" / "sae_a"
    shutil.rmtree(path)
    cfg = parse_transfer_config(compose_transfer(Path("/nonexistent"), [methods(ALL)], base=SAE_QUICK))
    torch.manual_seed(0)
    build_sae(cfg.sae, d_in=8).save(path)
    line = _refused(caplog, run_dir, [methods(ALL)], f"{path} is an SAE of 8-wide features", base=SAE_QUICK)
    assert "model_a" in line and "16 wide" in line
    assert not (run_dir / "checkpoints" / "model_b").exists()


def test_an_sae_of_other_weights_of_its_model_is_trained_again(shared, tmp_path):
    """Model A's checkpoint replaced by other weights (as when it is deleted and retrained with other threads): its
    SAE, trained on the old A's features, is trained again, and the SAE methods are recomputed; B's SAE is kept."""
    from sae_ception.utils.io import save_checkpoint

    run_dir = tmp_path / "run"
    shutil.copytree(shared.dir, run_dir)
    folder = run_dir / "checkpoints" / "model_a"
    state, meta = load_checkpoint(folder)
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name] + 1e-3
    save_checkpoint(folder, state, meta)
    before = sae_files(run_dir)
    offset = log_size(run_dir)
    run_transfer(run_dir, ["concept.methods=[sae_splice]"], base=SAE_QUICK)
    log = log_since(run_dir, offset)
    assert "sae_a: " in log and "was trained on other images, settings or weights of model A" in log
    after = sae_files(run_dir)
    changed = {path.split("/")[1] for path in after if after[path] != before.get(path)}
    assert changed == {"sae_a"}
    assert "transfer/sae_splice: it was made with other weights of model A or B (or their SAEs)" in log


def test_the_controls_without_b_run_as_aligned_spatial_does(shared, tmp_path):
    """aligned_spatial_reachable and aligned_spatial_no_b: aligned_spatial's budget (the same images and steps) and
    diagnostics; the reachable one reports the margin of the code it starts from, which the search found."""
    run_dir = tmp_path / "run"
    shutil.copytree(shared.dir, run_dir)
    overrides = [methods(["aligned_spatial", *CONTROLS]), *[f"transfer.{m}.steps={EDITOR_STEPS}" for m in CONTROLS]]
    run_transfer(run_dir, overrides, base=SAE_QUICK)
    found = results(run_dir)["methods"]
    base = found["aligned_spatial"]
    for name in CONTROLS:
        result = found[name]
        assert result["budget"] == base["budget"] and result["target_image_indices"] == base["target_image_indices"]
        assert {"target_margin", "head_reachable_margin", "decoder_reachable_margin",
                "free_space_dead_fraction"} <= set(result["diagnostics"])
        assert 0.0 <= result["diagnostics"]["free_space_dead_fraction"] <= 1.0
    reachable = found["aligned_spatial_reachable"]["diagnostics"]
    assert reachable["position_margin"] == pytest.approx(reachable["decoder_reachable_margin"], abs=1e-5) or \
        reachable["position_margin"] <= reachable["decoder_reachable_margin"] + 1e-5  # its search starts lack B's code
    assert "position_margin" not in found["aligned_spatial_no_b"]["diagnostics"]


# --- architectures ----------------------------------------------------------------------------------------------
def test_models_of_different_widths(tmp_path):
    """A [32,16], B [24,12]: with sae.d_sae fixed (24) every SAE method runs (the Procrustes ones map 24 to 24);
    with the SAE width following the features (relu, d_sae null: 64 and 48) cross_arch_aligner still runs."""
    run_dir = tmp_path / "fixed"
    # (B's 12-wide SAE gets a few more epochs)
    run_transfer(run_dir, [methods(SAE_METHODS), "model_b.hidden_sizes=[24,12]", "sae.epochs=6"], base=SAE_QUICK)
    summary = results(run_dir)["methods"]
    assert list(summary) == SAE_METHODS
    assert load_sae(run_dir / "checkpoints" / "sae_b").d_in == 12 and load_sae(run_dir / "checkpoints" / "sae_b").d_sae == 24
    for name, result in summary.items():
        for measure in ("transfer", "preservation", "specificity"):
            assert 0.0 <= result["measures"][measure] <= 1.0, (name, measure)
        assert 0.0 <= result["diagnostics"]["cka_features"] <= 1.0 + 1e-9
        assert result["budget"]["parameters_changed"] == 0 and result["budget"]["parameters_added"] > 0
    aligner = summary["cross_arch_aligner"]["diagnostics"]
    assert math.isfinite(aligner["aligner_residual"]) and aligner["free_dims"] == 8

    run_dir = tmp_path / "relu"
    run_transfer(run_dir, ["concept.methods=[cross_arch_aligner]", "model_b.hidden_sizes=[24,12]", "sae=relu",
                           "sae.d_sae=null"], base=SAE_QUICK)
    result = results(run_dir)["methods"]["cross_arch_aligner"]
    sae_a, sae_b = load_sae(run_dir / "checkpoints" / "sae_a"), load_sae(run_dir / "checkpoints" / "sae_b")
    assert (sae_a.d_in, sae_a.d_sae, sae_b.d_in, sae_b.d_sae) == (16, 64, 12, 48)
    assert math.isfinite(result["diagnostics"]["aligner_residual"])
    assert result["budget"]["gradient_steps"] == result["diagnostics"]["steps_sae"] + ALIGNER_STEPS + EDITOR_STEPS


def test_a_procrustes_method_on_saes_of_unequal_widths_is_one_line_on_stderr(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("transfer_concept.py", *SAE_QUICK, "concept.methods=[vector_space]",
                      "model_b.hidden_sizes=[24,12]", "sae=relu", "sae.d_sae=null", f"run_dir={run_dir}", cwd=tmp_path)
    one_line_refusal(proc, "transfer.vector_space", "sae.d_sae", "64 latents", "48")
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []


def test_head_row_b_with_different_last_widths_is_refused(tmp_path, caplog):
    _refused(caplog, tmp_path / "run", ["concept.methods=[sae_injection]", "model_b.hidden_sizes=[24,12]",
                                        "transfer.sae_injection.head_row=b"],
             "transfer.sae_injection: copying B's target output row into A (head_row=b) needs A's and B's last "
             "hidden layers of equal width", base=SAE_QUICK)


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (["concept.classes_a=[0,1]", "concept.classes_b=[4,5]", "concept.target=4", "concept.methods=[vector_space]"],
     "share no class"),
    (["concept.methods=[vector_space]", "transfer.vector_space.free_dims=0"],
     "transfer.vector_space.free_dims=0 must be in 1..24"),
    (["concept.methods=[vector_space]", "transfer.vector_space.spatial_weight=1.5"],
     "transfer.vector_space.spatial_weight=1.5 must be in [0, 1]"),
    (["concept.methods=[sae_injection]", "transfer.sae_injection.align_on=bogus"],
     "transfer.sae_injection.align_on='bogus' is not valid; use one of centroids, images"),
    (["concept.methods=[preserved_injection]", "transfer.preserved_injection.distinctive=1000"],
     "transfer.preserved_injection.distinctive=1000 must be in 1..24"),
    (["concept.methods=[cross_arch_aligner]", "transfer.cross_arch_aligner.aligner_steps=0"],
     "transfer.cross_arch_aligner.aligner_steps=0 must be a positive integer"),
    (["concept.methods=[sae_splice]", "concept.sae_images_per_class=0"],
     "concept.sae_images_per_class=0 must be a positive integer"),
    (["concept.methods=[sae_splice,vector_space]", "concept.target_images=5000"],
     "concept.target_images=5000 (as transfer.sae_splice.target_images) is more than the"),
    # a method asking for fewer, but B's SAE trains on concept.target_images
    (["concept.methods=[sae_splice]", "concept.target_images=5000", "transfer.sae_splice.target_images=10"],
     "concept.target_images=5000 (the images B's SAE trains on) is more than the"),
])
def test_bad_sae_settings_are_one_line_and_write_nothing(tmp_path, caplog, overrides, match):
    _refused(caplog, tmp_path / "run", overrides, match, base=SAE_QUICK)


def test_train_cycle_refuses_the_concept_autoencoder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("train_cycle.py", *TINY, f"run_dir={run_dir}", "sae=concept_autoencoder", cwd=tmp_path)
    one_line_refusal(proc, "sae=concept_autoencoder has no linear decoder", "scripts/transfer_concept.py")
    assert not run_dir.exists()


# --- resume -------------------------------------------------------------------------------------------------------
def test_resume_retrains_the_saes_when_their_settings_or_images_change(tmp_path):
    """A transfer run's `sae.*` and `concept.sae_images_per_class` are resume-neutral (TransferConfig.RESUME_NEUTRAL):
    the SAEs record what made them (`made_with`) and are trained again when it changed; the SAE methods' results
    record the SAEs' weights and are recomputed; A, B and the other methods are kept. concept.target_images (also
    neutral) changes only B's SAE (trained on the k target images)."""
    run_dir = tmp_path / "run"
    listed = [methods(["sae_splice", "sae_injection", "finetune_head"]), f"transfer.sae_splice.target_images={K}"]

    def rerun(*overrides) -> str:
        offset = log_size(run_dir)
        run_transfer(run_dir, [*listed, *overrides], base=SAE_QUICK)
        return log_since(run_dir, offset)

    run_transfer(run_dir, listed, base=SAE_QUICK)
    first = {name: method_result(run_dir, name) for name in ("sae_splice", "sae_injection", "finetune_head")}
    models = {p: (p.stat().st_mtime_ns, sha(p)) for p in (run_dir / "checkpoints").glob("model_*/weights.safetensors")}
    saes = sae_files(run_dir)

    # another SAE setting: both SAEs trained again with it, the SAE methods recomputed, the rest kept
    log = rerun("sae.l1_coefficient=0.1")
    listed.append("sae.l1_coefficient=0.1")
    assert log.count("was trained on other images, settings or weights of model") == 2
    assert all(sae_meta(run_dir, w)["made_with"]["sae"]["l1_coefficient"] == 0.1 for w in "ab")
    now = sae_files(run_dir)
    assert all(now[key][1] != saes[key][1] for key in saes if key.endswith("weights.safetensors"))
    for name in ("sae_splice", "sae_injection"):
        assert f"transfer/{name}: it was made with other weights of model A or B (or their SAEs)" in log
        result = method_result(run_dir, name)
        assert result["settings"] == first[name]["settings"]
        assert result["models"]["a"] == first[name]["models"]["a"] and result["models"]["sae_a"] != first[name]["models"]["sae_a"]
    assert "transfer/finetune_head: found" in log and method_result(run_dir, "finetune_head") == first["finetune_head"]
    assert {p: (p.stat().st_mtime_ns, sha(p)) for p in models} == models  # A and B kept
    assert "model A: found" in log and "model B: found" in log
    assert rerun().count("skipping (resume)") >= 2 + 2 + 3  # the same command again: nothing trained
    saes = sae_files(run_dir)
    before = {name: method_result(run_dir, name) for name in ("sae_splice", "sae_injection")}

    # another k: only B's SAE depends on it
    log = rerun("concept.target_images=10")
    listed.append("concept.target_images=10")
    now = sae_files(run_dir)
    assert {k: v for k, v in now.items() if "sae_a" in k} == {k: v for k, v in saes.items() if "sae_a" in k}
    assert now["checkpoints/sae_b/weights.safetensors"][1] != saes["checkpoints/sae_b/weights.safetensors"][1]
    assert "sae_a: found" in log and log.count("training it again") == 1
    assert sae_meta(run_dir, "b")["made_with"]["images"]["target_images"] == 10
    injection = method_result(run_dir, "sae_injection")
    assert "transfer/sae_injection: its settings changed" in log
    assert injection["settings"]["target_images"] == 10 and injection["budget"]["target_images"] == 10
    assert set(injection["target_image_indices"]) < set(before["sae_injection"]["target_image_indices"])
    assert injection["models"]["sae_a"] == before["sae_injection"]["models"]["sae_a"]
    assert injection["models"]["sae_b"] != before["sae_injection"]["models"]["sae_b"]
    # sae_splice kept its own k=12: same settings, but B's SAE changed under it
    splice = method_result(run_dir, "sae_splice")
    assert "transfer/sae_splice: it was made with other weights of model A or B (or their SAEs)" in log
    assert splice["settings"] == before["sae_splice"]["settings"]
    assert splice["target_image_indices"] == before["sae_splice"]["target_image_indices"]  # its 12 hold B's 10
    assert splice["models"]["sae_b"] == injection["models"]["sae_b"]

    # a method's own setting: that method alone is recomputed, on the same SAEs; head_row=b copies B's row
    saes = sae_files(run_dir)
    log = rerun("transfer.sae_injection.head_row=b")
    assert sae_files(run_dir) == saes and "sae_a: found" in log and "sae_b: found" in log
    assert "transfer/sae_splice: found" in log and "transfer/sae_injection: its settings changed" in log
    assert method_result(run_dir, "sae_injection")["budget"]["parameters_changed"] == 16 + 1  # B's row of the 16-wide head, its bias
    edited, _ = load_checkpoint(run_dir / "checkpoints" / "edited_sae_injection")
    b_state, _ = load_checkpoint(run_dir / "checkpoints" / "model_b")
    head = next(k[:-len(".weight")] for k in b_state if k.endswith(".weight") and b_state[k].shape[0] == 10)
    for part in ("weight", "bias"):  # the target's row is B's, exactly; every other row is A's
        assert torch.equal(edited[f"{head}.{part}"][TARGET], b_state[f"{head}.{part}"][TARGET])

    # fewer images per class for the SAEs: both trained again, on the first 50 of each class (and B on its k)
    log = rerun("concept.sae_images_per_class=50")
    assert log.count("training it again") == 2
    assert sae_meta(run_dir, "a")["training"]["final_fit"]["rows"] == 4 * 50
    assert sae_meta(run_dir, "b")["training"]["final_fit"]["rows"] == 3 * 50 + 10
    budget = method_result(run_dir, "sae_splice")["budget"]
    # the SAEs' 50 of each of classes 0, 1, 5, and every image of the shared classes (anchors_per_class: null)
    assert budget["other_images"] == train_count(splits().train.y, SHARED) + 3 * 50 and budget["target_images"] == K


def _diverged(caplog, run_dir: Path) -> str:
    """sae.lr=10: A's SAE diverges (after A and B are trained and saved); one error line, exit code 2."""
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_transfer(run_dir, ["concept.methods=[sae_splice]", "sae.lr=10"], base=SAE_QUICK)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "sae.lr=10: SAE training of model A diverged" in errors[0]
    return errors[0]


def test_a_diverged_sae_is_trained_again_in_the_same_folder_with_another_lr(tmp_path, caplog):
    run_dir = tmp_path / "run"
    _diverged(caplog, run_dir)
    models = {p: (p.stat().st_mtime_ns, sha(p)) for p in (run_dir / "checkpoints").glob("model_*/weights.safetensors")}
    assert len(models) == 2 and not (run_dir / "checkpoints" / "sae_a").exists()
    run_transfer(run_dir, ["concept.methods=[sae_splice]"], base=SAE_QUICK)  # sae.lr=0.01: resume-neutral
    assert {p: (p.stat().st_mtime_ns, sha(p)) for p in models} == models
    assert sae_meta(run_dir, "a")["made_with"]["sae"]["lr"] == 0.01
    assert list(results(run_dir)["methods"]) == ["sae_splice"]


# --- regressions ---------------------------------------------------------------------------------------------------
def test_a_short_concept_autoencoder_training_is_not_called_a_divergence(tmp_path, caplog):
    """sae.epochs=5 at the concept autoencoder's own lr (1e-3): the SAE has not yet learned the features' mean,
    and the run stops with 'sae.lr=0.001: SAE training of model A diverged (explained variance -2.21 ...); lower
    sae.lr'. A lower lr (1e-4) gives -9.5; a higher one (1e-2) passes: the advice is backwards."""
    base = [o for o in SAE_QUICK if not o.startswith("sae.lr=")]
    caplog.clear()
    try:
        run_transfer(tmp_path / "run", ["concept.methods=[sae_splice]", "sae.epochs=5"], base=base)
    except SystemExit:
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        pytest.fail(f"refused: {errors}")
    assert (tmp_path / "run" / "results" / "methods" / "sae_splice.json").is_file()


def test_cross_arch_aligner_free_dims_is_bounded_by_a_concept_dimension():
    """A [32,16] -> relu SAE of 64 latents, B [24,12] -> 48: free directions are taken in A's 64-dim space."""
    common = ["concept.methods=[cross_arch_aligner]", "model_b.hidden_sizes=[24,12]", "sae=relu", "sae.d_sae=null"]
    cfg = parse_transfer_config(compose_transfer(Path("/nonexistent"),
                                                 [*common, "transfer.cross_arch_aligner.free_dims=50"], base=SAE_QUICK))
    assert cfg.transfer["cross_arch_aligner"].free_dims == 50


def test_a_diverged_sae_line_does_not_send_the_user_to_a_new_folder(tmp_path, caplog):
    line = _diverged(caplog, tmp_path / "run")
    assert "new run_dir" not in line, line
