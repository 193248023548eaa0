"""scripts/export_sae.py and `inputs.sae=<SAELens folder>` end to end: a real run's SAE written as a SAELens
folder, loaded by SAELens itself with the run's own codes on its cached activations, then fed back into a new
run that uses it; a folder that does not fit is one line before any work."""

import importlib.util
import json
import logging

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

from sae_ception.activations import load_activations
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.errors import SAECeptionError
from sae_ception.sae import load_sae
from tests.conftest import PROJECT_ROOT, TINY, run_script
from tests.pipeline.helpers import expect_one_line_error, run_in_process

pytestmark = pytest.mark.slow


def load_script():
    spec = importlib.util.spec_from_file_location("export_sae", PROJECT_ROOT / "scripts" / "export_sae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real two-cycle run (cycles 0 and 1 each with a ReLU SAE) and its cycle-1 SAE exported by the script."""
    folder = tmp_path_factory.mktemp("export") / "run"
    proc = run_script("train_cycle.py", *TINY, "cycle.max_cycles=1", f"run_dir={folder}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = folder.parent / "exported"
    proc = run_script("export_sae.py", f"run_dir={folder}", "cycle=1", f"out={out}")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 0 and len(lines) == 1 and f"wrote {out}" in lines[0], lines
    return folder, out


def test_saelens_reproduces_the_runs_codes_on_its_cached_activations(run):
    folder, out = run
    theirs, ours = SAE.load_from_disk(str(out)), load_sae(folder / "checkpoints" / "sae_cycle_1")
    assert ours.cfg.normalize == "scale" and isinstance(theirs, StandardSAE)
    activations = load_activations(folder / "activations" / "cycle_1")
    for split in ("train", "test"):
        acts = activations[split].acts_ND.float()
        with torch.no_grad():
            codes, their_codes = ours.encode(acts), theirs.encode(acts)
            torch.testing.assert_close(their_codes, codes, atol=1e-5 * max(1.0, float(codes.abs().max())), rtol=1e-5)
            assert torch.equal(codes != 0, their_codes != 0) and (codes != 0).any()
            torch.testing.assert_close(theirs.decode(their_codes), ours.decode(codes), atol=1e-5, rtol=1e-5)
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"]) == ("mlp", "blocks.1")  # hidden_sizes [32, 16], target_layer -1
    record = meta["sae_ception"]
    assert (record["run_dir"], record["cycle"], record["sae_type"]) == (str(folder), 1, "relu")
    assert record["sae_config"]["normalize"] == "scale" and record["rows"] == "one per example"


def test_a_saelens_export_fed_back_with_inputs_sae_is_used(caplog, run, tmp_path):
    """train_cycle (in process, the scripts' own body) on a new run whose model 0 is the run's model 1 and whose
    SAE 0 is the SAELens export: the SAE is imported (recorded as such) and scores as the original SAE does on
    the same activations."""
    folder, out = run
    new = tmp_path / "new"
    caplog.set_level(logging.INFO)
    entry = ENTRYPOINTS["train_cycle"]
    run_in_process(entry.task, new, ["cycle.max_cycles=0", f"inputs.model={folder / 'checkpoints' / 'model_cycle_1'}",
                                     f"inputs.sae={out}"], entry.preflight)
    assert f"imported inputs.sae={out} (SAELens standard SAE 16 -> 64 (model mlp, hook blocks.1))" in caplog.text
    meta = json.loads((new / "checkpoints" / "sae_cycle_0" / "config.json").read_text())
    assert meta["extra"] == {"imported_from": str(out.resolve()), "format": "saelens"}
    before = json.loads((folder / "results" / "cycle_1.json").read_text())["metrics"]["sae"]
    after = json.loads((new / "results" / "cycle_0.json").read_text())["metrics"]["sae"]
    for key in ("mse", "explained_variance", "l0", "dead_fraction"):
        assert after[key] == pytest.approx(before[key], rel=1e-4, abs=1e-6), key


def test_a_saelens_folder_of_another_width_stops_train_cycle_with_one_line(tmp_path):
    StandardSAE(StandardSAEConfig(d_in=8, d_sae=32)).save_model(tmp_path / "sae8")
    proc = run_script("train_cycle.py", *TINY, f"run_dir={tmp_path / 'run'}", f"inputs.sae={tmp_path / 'sae8'}")
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout + proc.stderr
    assert f"inputs.sae={tmp_path / 'sae8'} reads 8-dim activations but the model's target layer has 16" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_saelens_folder_of_another_type_says_which_sae_to_set(caplog, run, tmp_path):
    message = expect_one_line_error(caplog, tmp_path / "run", [f"inputs.sae={run[1]}", "sae=topk", "sae.k=4"],
                                    "inputs.sae", preflight=ENTRYPOINTS["train_cycle"].preflight)
    assert "is a 'relu' SAE but sae.type='topk'; set sae=relu" in message


def test_a_missing_inputs_sae_names_both_formats(caplog, tmp_path):
    message = expect_one_line_error(caplog, tmp_path / "run", [f"inputs.sae={tmp_path / 'nowhere'}"], "inputs.sae",
                                    preflight=ENTRYPOINTS["train_cycle"].preflight)
    assert "does not exist; give a folder holding config.json + weights.safetensors" in message
    assert "or cfg.json + sae_weights.safetensors (a SAELens SAE)" in message


def test_export_defaults_and_refusals(run, tmp_path):
    folder, _ = run
    script = load_script()

    def refused(*argv: str) -> str:
        with pytest.raises(SAECeptionError) as info:
            script.export(script.parse_args(list(argv)))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "key one of run_dir, cycle, out, overwrite" in refused(f"run_dir={folder}", "cycl=1")
    assert "run_dir is missing" in refused("cycle=1")
    assert "does not exist" in refused(f"run_dir={tmp_path / 'nowhere'}")
    (tmp_path / "empty_run").mkdir()
    assert "holds no config.yaml" in refused(f"run_dir={tmp_path / 'empty_run'}")
    assert "no SAE for cycle 5 (cycles with an SAE: [0, 1])" in refused(f"run_dir={folder}", "cycle=5")
    assert "overwrite='yes' must be true or false" in refused(f"run_dir={folder}", "overwrite=yes")

    default = script.export(script.parse_args([f"run_dir={folder}"]))  # the last cycle, inside the run folder
    assert default == folder / "saelens" / "sae_cycle_1"
    assert json.loads((default / "cfg.json").read_text())["metadata"]["sae_ception"]["cycle"] == 1

    out = tmp_path / "out"
    out.mkdir()
    (out / "stray.txt").write_text("mine")
    assert "exists and is not empty; give another out, or overwrite=true" in refused(f"run_dir={folder}", f"out={out}")
    script.export(script.parse_args([f"run_dir={folder}", "cycle=0", f"out={out}", "overwrite=true"]))
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert not list(tmp_path.glob(".out.*")), "no temporary folder is left behind"
