"""scripts/export_sae.py and `inputs.sae=<SAELens folder>` end to end: a real run's SAE written as a SAELens
folder, loaded by SAELens itself with the run's own codes on its cached activations, then fed back into a new
run that uses it; a folder that does not fit is one line before any work."""

import errno
import importlib.util
import json
import logging
import os
import sys

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from sae_ception.activations import load_activations
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.errors import SAECeptionError
from sae_ception.sae import load_sae
from tests.conftest import PROJECT_ROOT, TINY, run_script
from tests.pipeline.helpers import expect_one_line_error, run_in_process, snapshot

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


def test_a_saelens_sae_that_does_not_fit_the_models_activations_is_named_as_given_not_as_diverged(caplog, run,
                                                                                                      tmp_path):
    """A SAELens SAE of the right width trained for something else (here: random weights, decoder scaled up) is
    stopped at evaluation for reconstructing the training rows far worse than their mean; the line says it was
    given as inputs.sae, not that a learning rate of this run diverged (this run never trained it)."""
    folder, _ = run
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    with torch.no_grad():
        sae.W_dec.mul_(100.0)
    sae.save_model(tmp_path / "foreign")
    caplog.set_level(logging.INFO)
    entry = ENTRYPOINTS["train_cycle"]
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(entry.task, tmp_path / "new", ["cycle.max_cycles=0", f"inputs.sae={tmp_path / 'foreign'}",
                                                      f"inputs.model={folder / 'checkpoints' / 'model_cycle_1'}"],
                       entry.preflight)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    assert f"was given as inputs.sae ({(tmp_path / 'foreign').resolve()}) and does not fit model 0's activations" \
        in errors[0] and "sae.lr" not in errors[0], errors[0]


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
    out.mkdir()  # an empty folder is written without overwrite=true
    script.export(script.parse_args([f"run_dir={folder}", "cycle=1", f"out={out}"]))
    assert "exists and is not empty (a SAELens folder); give another out, or overwrite=true" in refused(
        f"run_dir={folder}", f"out={out}")
    script.export(script.parse_args([f"run_dir={folder}", "cycle=0", f"out={out}", "overwrite=true"]))
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert json.loads((out / "cfg.json").read_text())["metadata"]["sae_ception"]["cycle"] == 0
    assert not list(tmp_path.glob(".out.*")), "no temporary folder is left behind"


# --- where the export may go: never over the run, never over a folder that is not a SAELens export --------------
def refusal(script, *argv: str) -> str:
    with pytest.raises(SAECeptionError) as info:
        script.export(script.parse_args(list(argv)))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_run_folder_and_what_holds_it_are_never_replaced(run):
    """`out=<run_dir> overwrite=true` (the reviewer's command) deleted the run it exported: one line, exit 2,
    every file of the run as it was; so for the folder holding the run and for places among the run's files."""
    folder, _ = run
    before = snapshot(folder)
    proc = run_script("export_sae.py", f"run_dir={folder}", f"out={folder}", "overwrite=true")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert f"out={folder} is the run folder itself (run_dir={folder})" in lines[0]
    script = load_script()
    args = (f"run_dir={folder}", "overwrite=true")
    assert "contains the run folder" in refusal(script, *args, f"out={folder.parent}")
    assert "contains the run folder" in refusal(script, *args, f"out={folder / '..' / '..'}")
    for inside in ("checkpoints", "checkpoints/sae_cycle_1", "results", "new_folder", "saelens"):
        message = refusal(script, *args, f"out={folder / inside}")
        assert "lies inside the run folder" in message and f"exports go under {folder / 'saelens'}/" in message
    assert snapshot(folder) == before and not (folder / "new_folder").exists()


def test_overwrite_replaces_only_a_saelens_folder(run, tmp_path):
    folder, exported = run
    script = load_script()
    for name, files in {"mine": ["stray.txt"], "with_readme": ["cfg.json", "sae_weights.safetensors", "README.md"],
                        "half": ["cfg.json"], "other_run": ["config.yaml", "results/cycle_0.json"]}.items():
        out = tmp_path / name
        for file in files:
            (out / file).parent.mkdir(parents=True, exist_ok=True)
            (out / file).write_text(file)
        before = snapshot(out)
        message = refusal(script, f"run_dir={folder}", f"out={out}", "overwrite=true")
        assert ("holds files that are not a SAELens folder's" in message or "not a whole SAELens folder" in message), message
        assert snapshot(out) == before, f"{name} must be kept as it was"
    assert "(README.md)" in refusal(script, f"run_dir={folder}", f"out={tmp_path / 'with_readme'}", "overwrite=true")
    assert "cfg.json + sae_weights.safetensors and nothing else" in refusal(
        script, f"run_dir={folder}", f"out={tmp_path / 'mine'}", "overwrite=true")
    assert "contains the run folder" in refusal(script, f"run_dir={folder}", f"out={tmp_path.parent}", "overwrite=true")

    copy = tmp_path / "export_copy"  # a SAELens folder (an earlier export) is replaced
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    script.export(script.parse_args([f"run_dir={folder}", "cycle=0", f"out={copy}", "overwrite=true"]))
    assert json.loads((copy / "cfg.json").read_text())["metadata"]["sae_ception"]["cycle"] == 0


@pytest.mark.parametrize("case", ["parent_is_a_file", "current_folder", "name_too_long", "path_too_long", "empty",
                                  "symlink", "cycle_01", "cycle_superscript"])
def test_an_out_or_cycle_that_cannot_work_is_one_line_before_any_write(run, tmp_path, monkeypatch, case):
    folder, _ = run
    script = load_script()
    (tmp_path / "load.py").write_text("x = 1")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    argv, words = {
        "parent_is_a_file": ([f"out={tmp_path / 'load.py' / 'x'}"], f"cannot be created: {tmp_path / 'load.py'} is a file"),
        "current_folder": (["out=."], "out=. is the current working folder"),
        "name_too_long": ([f"out={tmp_path / ('a' * 300)}"], f"has 300 bytes; at most {name_limit(tmp_path)} fit here"),
        "path_too_long": ([f"out={tmp_path / '/'.join(['b' * 200] * 21)}"], "is too long: its files' paths would have"),
        "empty": (["out="], "out= is empty"),
        "symlink": ([f"out={tmp_path / 'link'}"], "is a symbolic link; give the folder itself"),
        "cycle_01": (["cycle=01"], "cycle='01' must be a cycle number written plainly"),
        "cycle_superscript": (["cycle=\u00b2"], "must be a cycle number written plainly"),
    }[case]
    if case == "symlink":
        os.symlink(tmp_path / "empty", tmp_path / "link")
    before = snapshot(tmp_path)
    assert words in refusal(script, f"run_dir={folder}", *argv)
    assert snapshot(tmp_path) == before and not any((tmp_path / "empty").iterdir())


def name_limit(folder) -> int:
    """The longest folder name `out` may have: the file system's NAME_MAX less the atomic write's temporary
    name (`.<name>.<8 characters>.tmp`): 241 on most Linux file systems."""
    return os.pathconf(folder, "PC_NAME_MAX") - 14


def test_a_name_that_just_fits_is_written(run, tmp_path):
    folder, _ = run
    out = load_script().export(load_script().parse_args([f"run_dir={folder}", f"out={tmp_path / ('a' * name_limit(tmp_path))}"]))
    assert (out / "cfg.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_write_the_file_system_refuses_is_one_line(run, tmp_path):
    """/proc/x passes every check (its folder exists and is writable for root) but refuses the temporary folder."""
    folder, _ = run
    proc = run_script("export_sae.py", f"run_dir={folder}", "out=/proc/x")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert "error: out=/proc/x cannot be written" in lines[0] or "error: could not write out=/proc/x: " in lines[0], lines[0]


def test_a_full_disk_mid_write_is_one_line_and_leaves_nothing(run, tmp_path, monkeypatch):
    """A failed write (ENOSPC from safetensors) names out and the cause; a SAELens folder being replaced is kept
    as it was, and folders created for a new out are removed again."""
    from sae_ception.sae import saelens_format

    folder, exported = run
    script = load_script()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[1])

    monkeypatch.setattr(saelens_format, "save_file", full_disk)
    new = tmp_path / "new" / "deeper" / "sae"
    message = refusal(script, f"run_dir={folder}", f"out={new}")
    assert message.startswith(f"could not write out={new}: the disk is full (No space left on device)"), message
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    before = snapshot(copy)
    assert "the disk is full" in refusal(script, f"run_dir={folder}", f"out={copy}", "overwrite=true")
    assert snapshot(copy) == before and sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


# --- SAELens folders fed to a run: malformed or non-finite ones stop the preflight with one line ---------------
def test_a_malformed_saelens_cfg_stops_train_cycle_with_one_line(tmp_path):
    StandardSAE(StandardSAEConfig(d_in=16, d_sae=32)).save_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "metadata": "x"}))
    proc = run_script("train_cycle.py", *TINY, f"run_dir={tmp_path / 'run'}", f"inputs.sae={tmp_path / 'sae'}")
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout + proc.stderr
    assert f"inputs.sae: {tmp_path / 'sae' / 'cfg.json'}: metadata='x' must be a JSON object" in errors[0]
    assert not (tmp_path / "run").exists()


def test_saelens_weights_that_fold_to_inf_stop_the_preflight(caplog, tmp_path):
    """TopK with rescale_acts_by_decoder_norm whose W_enc · ‖W_dec[f]‖ overflows float32: refused by the
    preflight naming the tensor, not by a 'weights diverged, lower the learning rate' after the run started."""
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_dec[3] = 1e30
        sae.W_enc[:, 3] = 1e10
    sae.save_model(tmp_path / "sae")
    message = expect_one_line_error(caplog, tmp_path / "run", [f"inputs.sae={tmp_path / 'sae'}", "sae=topk", "sae.k=4"],
                                    "inputs.sae", preflight=ENTRYPOINTS["train_cycle"].preflight)
    assert "folding rescale_acts_by_decoder_norm into the weights makes W_enc overflow float32" in message
    assert not (tmp_path / "run").exists()
