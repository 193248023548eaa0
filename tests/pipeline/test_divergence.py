"""Issue 11, items 2-4 end to end on tiny runs: a diverging stage stops with one line and saves nothing (a rerun
stops the same way and changes no file); a degenerate SAE is reported as such, never as "better"; BatchTopK's
inference L0 is k; latents silent for a whole short run are dead."""

import json

import numpy as np
import pytest
import torch

from sae_ception.sae import load_sae
from sae_ception.stages.cycle import run_cycles
from sae_ception.utils.io import load_checkpoint
from tests.pipeline.helpers import expect_one_line_error, run_in_process

pytestmark = pytest.mark.slow

CASES = [  # (overrides, the one line starts with, artifacts that exist after it, artifacts that must not)
    (["sae.lr=1e30"], "sae.lr=1e+30: SAE training of cycle 0 diverged at step ", ["model_cycle_0"], ["sae_cycle_0"]),
    (["sae=topk", "sae.lr=1e30"], "sae.lr=1e+30: SAE training of cycle 0 diverged at step ", ["model_cycle_0"],
     ["sae_cycle_0"]),
    (["sae.lr=1e6"], "sae.lr=1e+06: SAE training of cycle 0 diverged (explained variance -", ["model_cycle_0"],
     ["sae_cycle_0"]),
    (["sae=batchtopk", "sae.lr=1000"], "sae.lr=1000: SAE training of cycle 0 diverged (explained variance -",
     ["model_cycle_0"], ["sae_cycle_0"]),
    (["sae=jumprelu", "sae.target_l0=5", "sae.lr=1e30"],
     "sae.lr=1e+30: SAE training of cycle 0 (calibration trial l0_coefficient=0.001) diverged at step ",
     ["model_cycle_0"], ["sae_cycle_0"]),
    (["model.lr=1e30"], "model.lr=1e+30: baseline training diverged in epoch 1 of 4 (train_task_loss nan)", [],
     ["model_cycle_0"]),
    (["cycle.lr=1e30"], "cycle.lr=1e+30: auxiliary training of cycle 0 diverged in epoch 1 of 1 (",
     ["model_cycle_0", "sae_cycle_0"], ["model_cycle_1"]),
    # finite but exploded: the losses stay finite, the kept epoch's task loss is far above guessing's ln(10)
    (["model.lr=10"], "model.lr=10: baseline training diverged (the kept epoch ", [], ["model_cycle_0"]),
    (["cycle.lr=1e6"], "cycle.lr=1e+06: auxiliary training of cycle 0 diverged (the kept epoch 1's mean task loss is ",
     ["model_cycle_0", "sae_cycle_0"], ["model_cycle_1"]),
    (["cycle.lr=100"], "cycle.lr=100: auxiliary training of cycle 0 diverged (the kept epoch 1's mean task loss is ",
     ["model_cycle_0", "sae_cycle_0"], ["model_cycle_1"]),
]


@pytest.mark.parametrize("overrides, starts, kept, absent", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_diverging_stage_stops_in_one_line_and_saves_nothing(caplog, tmp_path, overrides, starts, kept, absent):
    overrides = ["cycle.max_cycles=1", *overrides]
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(run_cycles, tmp_path, overrides)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0].startswith(f"error: {starts}"), errors
    assert f"; lower {starts.split('=')[0]} (in a new run_dir: this one records the old value" in errors[0], errors[0]
    checkpoints = tmp_path / "checkpoints"
    for name in kept:  # earlier stages' artifacts are whole and finite
        load_checkpoint(checkpoints / name)
    for name in absent:
        assert not (checkpoints / name).exists()
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files may be left behind"
    if "sae_cycle_0" in kept:
        assert (tmp_path / "results" / "cycle_0.json").is_file()
    # the same command again resumes what was saved, diverges the same way, and changes nothing
    expect_one_line_error(caplog, tmp_path, overrides, starts)


def dead_target_layer(run_dir, folder):
    """Model 0 of `run_dir` with its last hidden layer (the one SAE-ception reads) dead: a bias of -1e3 keeps every
    ReLU at 0. Finite weights that no SAE can find a feature in (issue 11 saw this after model.lr=1e6)."""
    from sae_ception.utils.io import save_checkpoint

    state, meta = load_checkpoint(run_dir / "checkpoints" / "model_cycle_0")
    bias = sorted(k for k in state if k.endswith(".bias") and not k.startswith("head"))[-1]
    state[bias] = torch.full_like(state[bias], -1e3)
    save_checkpoint(folder, state, meta)
    return folder


@pytest.fixture(scope="module")
def dead_model_run(tmp_path_factory):
    """A run started from a model whose target layer is dead: every activation the SAEs see is 0."""
    source = tmp_path_factory.mktemp("source")
    run_in_process(run_cycles, source, ["cycle.max_cycles=0"])
    model = dead_target_layer(source, tmp_path_factory.mktemp("dead") / "model")
    run_dir = tmp_path_factory.mktemp("dead_model")
    return run_dir, run_in_process(run_cycles, run_dir, [f"inputs.model={model}", "cycle.max_cycles=1"])


def test_a_degenerate_sae_is_reported_as_such(dead_model_run):
    run_dir, results = dead_model_run
    for cycle in (0, 1):
        saved = json.loads((run_dir / "results" / f"cycle_{cycle}.json").read_text())
        assert saved["sae_degenerate"] is True and "degenerate" in saved["warnings"][0]
        sae, probe = saved["metrics"]["sae"], saved["metrics"]["probe"]
        assert sae["dead_fraction"] == 1.0 and sae["explained_variance"] is None  # not "EV 1.000"
        assert probe["sae_accuracy"] is None and probe["dense_accuracy"] is not None
        assert all(v is None for k, v in saved["metrics"]["clustering_sae"].items()
                   if k not in ("silhouette_sample_size", "kmeans_sample_size"))
        meta = json.loads((run_dir / "checkpoints" / f"sae_cycle_{cycle}" / "config.json").read_text())
        assert meta["extra"]["training"]["degenerate"] is True
    assert all(r["sae_degenerate"] for r in results)


def test_a_degenerate_sae_is_never_called_better(dead_model_run, caplog):
    from sae_ception.evaluation.report import format_table

    _, results = dead_model_run
    table = format_table(results)
    for line in table.splitlines():
        if line.startswith(("sae/", "probe/sae", "monosemanticity_sae/", "clustering_sae/", "performance/spliced")):
            assert line.rstrip().endswith("|"), line  # no verdict
    assert "cycle 0*" in table and "SAE degenerate" in table.splitlines()[-1]


def test_the_summary_line_says_degenerate(dead_model_run, tmp_path, caplog):
    caplog.set_level("INFO")
    model = dead_model_run[0] / "checkpoints" / "model_cycle_0"
    run_in_process(run_cycles, tmp_path, [f"inputs.model={model}", "cycle.max_cycles=0"])
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cycle 0 | test acc")]
    assert summary and summary[-1].endswith("| SAE DEGENERATE: all latents dead") and "EV n/a" in summary[-1]


def _train_rows(run_dir, cycle=0):
    return torch.from_numpy(np.load(run_dir / "activations" / f"cycle_{cycle}" / "train.acts.npy"))


@pytest.mark.parametrize("k, epochs", [(4, 2), (2, 6)])
def test_batchtopk_inference_l0_is_k(tmp_path, k, epochs):
    """`experiment=smoke cycle.max_cycles=0 sae=batchtopk sae.k=4` gave training L0 4.0, test L0 1.04."""
    results = run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0", "sae=batchtopk", f"sae.k={k}",
                                                    f"sae.epochs={epochs}"])
    test_l0 = results[0]["metrics"]["sae"]["l0"]
    assert abs(test_l0 - k) < 0.25 * k, test_l0
    sae = load_sae(tmp_path / "checkpoints" / "sae_cycle_0")
    train = _train_rows(tmp_path)
    with torch.no_grad():
        assert (sae.encode(train) != 0).sum(-1).float().mean().item() == pytest.approx(k, abs=0.01)
    from sae_ception.sae.batchtopk import top_count_threshold

    with torch.no_grad():
        expected = top_count_threshold([sae.pre_activation(sae.normalize(train))], k * len(train))
    assert sae.threshold.item() == pytest.approx(expected, rel=1e-6)  # what the checkpoint carries


@pytest.mark.parametrize("overrides", [["sae=topk", "sae.k=2", "sae.expansion_factor=8"],
                                       ["sae=batchtopk", "sae.k=2", "sae.expansion_factor=8"],
                                       ["sae=topk", "sae.k=1", "sae.expansion_factor=16"]])
def test_latents_silent_for_a_short_run_are_counted_dead(tmp_path, overrides):
    """`sae=topk sae.k=2 sae.expansion_factor=8` on the smoke preset reported 0% dead and never started AuxK
    while 56 of 128 latents never fired."""
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0", *overrides])
    stats = json.loads((tmp_path / "checkpoints" / "sae_cycle_0" / "config.json").read_text())["extra"]["training"]
    sae = load_sae(tmp_path / "checkpoints" / "sae_cycle_0")
    with torch.no_grad():
        never_fire = ((sae.encode(_train_rows(tmp_path)) != 0).sum(0) == 0).float().mean().item()
    assert never_fire > 0.2  # the case at hand: many latents never fire on the training rows
    assert stats["dead_fraction"] > 0.5 * never_fire and stats["aux"] > 0  # counted, and AuxK ran
    assert stats["dead_window"] == 400  # one epoch of the 400 training rows, not dead_after_examples (10000)
    assert stats["final_fit"]["dead_fraction"] == pytest.approx(never_fire)


@pytest.fixture(scope="module")
def finished_cycle_0(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=0"])
    return run_dir


@pytest.mark.parametrize("damage, starts", [
    ("shift", "sae.lr=0.001: evaluation of cycle 0 stopped: its explained variance on the training rows is -"),
    ("overflow", "sae.lr=0.001: evaluation of cycle 0 stopped: sae/mse is inf"),  # reconstructions overflow
])
def test_an_sae_with_untrustworthy_numbers_stops_evaluation_and_writes_nothing(finished_cycle_0, tmp_path, caplog,
                                                                                 damage, starts):
    """An SAE from elsewhere (or saved by an older version) whose weights are finite but whose numbers are not
    to be trusted: the evaluation stops in one line and the cycle's earlier results stay as they were."""
    import shutil

    from sae_ception.stages.cycle import reevaluate

    run_dir = tmp_path / "run"
    shutil.copytree(finished_cycle_0, run_dir)
    target = run_dir / "checkpoints" / "sae_cycle_0"
    sae = load_sae(target)
    with torch.no_grad():
        if damage == "shift":
            sae.b_dec_D += 1e6
        else:
            sae.W_enc_DF.mul_(1e30)
    sae.save(target)
    run_in_process(lambda ctx: None, run_dir, ["cycle.max_cycles=0"])  # the copy's config.yaml names its new folder
    message = expect_one_line_error(caplog, run_dir, ["cycle.max_cycles=0"], starts, task=reevaluate)
    assert f"the SAE of cycle 0 ({target}) diverged: train it again with a lower sae.lr (in a new run_dir" in message
