"""Each bad input stops before training with one line naming the setting, leaving existing files as they were."""

import pytest

from sae_ception.stages.cycle import run_cycles
from sae_ception.stages.sae import run_sae
from sae_ception.entrypoints import ENTRYPOINTS
from tests.conftest import TINY, run_script
from tests.pipeline.helpers import expect_one_line_error, run_in_process, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("existing")
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=0"])
    return run_dir


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.hidden_sizes=[0,16]"], "model.hidden_sizes"),
        (["model.hidden_sizes=[32,-3]"], "model.hidden_sizes"),
        (["sae.d_sae=0"], "sae.d_sae=0"),
        (["sae.d_sae=-8"], "sae.d_sae=-8"),
        (["sae.expansion_factor=0"], "sae.expansion_factor"),
        (["sae=topk", "sae.k=1000"], "sae.k=1000"),
        (["sae=topk", "sae.d_sae=32", "sae.k=33"], "sae.k=33"),
        (["sharpening.top_k_pct=0"], "sharpening.top_k_pct=0"),
        (["sharpening.top_k_pct=100.5"], "sharpening.top_k_pct=100.5"),
        (["sharpening.top_k_pct=-10"], "sharpening.top_k_pct=-10"),
        (["sharpening.top_k=300"], "sharpening.top_k=300 is larger than the SAE width"),
        (["sae.d_sae=32", "sharpening.top_k=33"], "sharpening.top_k=33 is larger than the SAE width 32"),
        (["sharpening.top_k=0"], "sharpening.top_k=0"),
        (["sharpening=random", "sharpening.reference=random"], "sharpening.reference"),
        (["sae.l1_coefficient=lots"], "sae.l1_coefficient"),
        (["sharpening.type=sharpest"], "sharpening.type='sharpest'"),
        (["device=gpu"], "device='gpu'"),
        (["analysis.context=-1"], "analysis.context=-1 must be >= 0"),
        (["dataset=mnist", "dataset.path=/no/such/folder"], "dataset.path"),
        (["model.epochs=0"], "model.epochs=0 must be a positive integer"),
        (["sae.epochs=0"], "sae.epochs=0 must be a positive integer"),
        (["cycle.epochs=0"], "cycle.epochs=0 must be a positive integer"),
        (["threads=many"], "threads='many' is not valid"),
        (["+sae.lrr=1"], "sae.lrr: not a setting; did you mean sae.lr?"),
        (["+cycle.epoch=3"], "cycle.epoch: not a setting; did you mean cycle.epochs?"),
        (["seed=-1"], "seed=-1 must be an integer in [0, 2^32)"),
        (["run_dir="], "run_dir is empty"),
        (["wandb.flush_seconds=-1"], "wandb.flush_seconds=-1"),
        (["wandb.flush_seconds=inf"], "wandb.flush_seconds=inf"),
        (["wandb.flush_seconds=soon"], "wandb.flush_seconds"),
    ],
)
def test_bad_values_on_an_existing_run(caplog, existing_run, overrides, match):
    expect_one_line_error(caplog, existing_run, overrides, match)


def test_dataset_folder_without_idx_files(caplog, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no data here")
    expect_one_line_error(caplog, tmp_path / "run", ["dataset=mnist", f"dataset.path={tmp_path / 'empty'}"], "dataset.path")


def test_cycle_without_a_model(caplog, existing_run):
    message = expect_one_line_error(
        caplog, existing_run, ["cycle.current=3"], "cycle.current=3",
        task=lambda ctx: run_sae(ctx, 3), preflight=ENTRYPOINTS["train_sae"].preflight,
    )
    assert "cycles with a model: [0]" in message


def test_checkpoint_that_does_not_fit(caplog, existing_run, tmp_path):
    checkpoint = existing_run / "checkpoints" / "model_cycle_0"
    message = expect_one_line_error(
        caplog, tmp_path / "new_run", [f"inputs.model={checkpoint}", "model.hidden_sizes=[64,64]"], "inputs.model",
        preflight=ENTRYPOINTS["train_cycle"].preflight,
    )
    assert "does not fit the configured model" in message


def test_missing_checkpoint_path(caplog, tmp_path):
    expect_one_line_error(
        caplog, tmp_path / "run", [f"inputs.model={tmp_path / 'nope'}"], "inputs.model",
        preflight=ENTRYPOINTS["train_cycle"].preflight,
    )


def test_real_cli_prints_one_line_and_exits_2(existing_run):
    before = snapshot(existing_run)
    proc = run_script("train_sae.py", *TINY, f"run_dir={existing_run}", "cycle.current=4")
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    assert len(errors) == 1 and "cycle.current=4" in errors[0], lines
    assert "Traceback" not in proc.stderr
    assert snapshot(existing_run) == before


def test_trainable_typo_stops_before_the_baseline(caplog, tmp_path):
    expect_one_line_error(
        caplog, tmp_path / "run", ["cycle.trainable=[blocks.9]"], "cycle.trainable",
        preflight=ENTRYPOINTS["train_cycle"].preflight,
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_start_cycle_past_the_last(caplog, existing_run):
    expect_one_line_error(
        caplog, existing_run, ["cycle.current=3", "cycle.max_cycles=2"], "cycle.current=3",
        preflight=ENTRYPOINTS["train_cycle"].preflight,
    )


def test_no_test_split_left(caplog, tmp_path):
    expect_one_line_error(caplog, tmp_path / "run", ["dataset.test_fraction=0"], "dataset.test_fraction=0")


def test_explicit_model_that_differs_from_the_runs_own(caplog, existing_run, tmp_path):
    from sae_ception.utils.io import load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(existing_run / "checkpoints" / "model_cycle_0")
    state = {k: v + 1.0 for k, v in state.items()}
    save_checkpoint(tmp_path / "other_model", state, meta)
    expect_one_line_error(
        caplog, existing_run, [f"inputs.model={tmp_path / 'other_model'}"], "differs from",
        preflight=ENTRYPOINTS["train_cycle"].preflight,
    )


def test_sae_for_another_layer_width(caplog, existing_run, tmp_path):
    from sae_ception.sae import SAE_TYPES, build_sae

    build_sae(SAE_TYPES.get("relu").config_class(d_sae=32), d_in=8).save(tmp_path / "sae8")
    message = expect_one_line_error(
        caplog, tmp_path / "run", [f"inputs.model={existing_run / 'checkpoints' / 'model_cycle_0'}",
                                   f"inputs.sae={tmp_path / 'sae8'}"], "inputs.sae",
        task=ENTRYPOINTS["train_auxiliary"].task, preflight=ENTRYPOINTS["train_auxiliary"].preflight,
    )
    assert "reads 8-dim activations but the model's target layer has 16" in message


def test_sae_of_another_type(caplog, existing_run, tmp_path):
    message = expect_one_line_error(
        caplog, tmp_path / "run", [f"inputs.model={existing_run / 'checkpoints' / 'model_cycle_0'}",
                                   f"inputs.sae={existing_run / 'checkpoints' / 'sae_cycle_0'}", "sae=topk", "sae.k=4"],
        "inputs.sae", task=ENTRYPOINTS["train_auxiliary"].task, preflight=ENTRYPOINTS["train_auxiliary"].preflight,
    )
    assert "is a 'relu' SAE but sae.type='topk'" in message


@pytest.mark.parametrize("files, match", [
    ({"wandb_run_id.txt": "abc123\n", "wandb_steps.json": "{broken"}, "wandb_steps.json: not readable as JSON"),
    ({"wandb_run_id.txt": "abc123\n", "wandb_steps.json": '{"run_id": "zzz", "reserved": 5, "segments": []}'},
     "records wandb run 'zzz', but wandb_run_id.txt says 'abc123'"),
    ({"wandb_steps.json": '{"run_id": "abc123", "reserved": 5, "segments": []}'}, "wandb_run_id.txt is missing"),
    ({"wandb_run_id.txt": "not an id!\n"}, "is not a wandb run id"),
])
def test_damaged_wandb_files_of_a_resumed_run(caplog, tmp_path, fake_wandb, files, match):
    """The wandb run id and step ledger a run folder keeps (README, "Uploading offline wandb runs")."""
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0"])
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    expect_one_line_error(caplog, tmp_path, ["cycle.max_cycles=0", "wandb.mode=offline"], match)
