"""Auxiliary retraining with a list of lambdas, `cycle.init=scratch`, and the objective's record (issue 12).

- the candidate with the best validation accuracy becomes model N+1, whatever the test split says;
- every candidate's validation and test figures, objective terms and budget are saved;
- `init=scratch` starts from the baseline's initial weights and, with lambda = 0, retrains the baseline exactly;
- a killed search resumes from the candidates it finished;
- bad lambda lists and objectives stop before training with one line.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import sae_ception.stages.auxiliary as auxiliary_stage
from sae_ception.stages.auxiliary import select_by_validation
from sae_ception.stages.cycle import run_cycles
from tests.pipeline.helpers import expect_one_line_error, run_in_process

pytestmark = pytest.mark.slow

ONE_CYCLE = ["cycle.max_cycles=1"]


def _record(run_dir, cycle=0):
    return json.loads((run_dir / "results" / f"auxiliary_cycle_{cycle}.json").read_text())


def _weights(run_dir, cycle):
    return load_file(str(run_dir / "checkpoints" / f"model_cycle_{cycle}" / "weights.safetensors"))


def test_selection_reads_validation_only():
    candidates = [
        {"weight": 0.0, "val": {"accuracy": 0.90}, "test": {"accuracy": 0.99}},
        {"weight": 0.1, "val": {"accuracy": 0.95}, "test": {"accuracy": 0.50}},
        {"weight": 0.2, "val": {"accuracy": 0.95}, "test": {"accuracy": 0.98}},  # tie on val: the earlier one wins
    ]
    assert select_by_validation(candidates) == 1
    for candidate in candidates:  # no test figures at all: the choice cannot depend on them
        del candidate["test"]
    assert select_by_validation(candidates) == 1


def test_lambda_search_chooses_on_validation_and_saves_every_candidate(tmp_path, monkeypatch):
    """The test split's accuracy is rigged to rank the candidates opposite to validation: the choice must not move."""
    real_evaluate = auxiliary_stage.evaluate_classifier
    seen = {}

    def rigged(model, split, accelerator, batch_size):
        figures = real_evaluate(model, split, accelerator, batch_size)
        if split is seen.get("test"):
            val = real_evaluate(model, seen["val"], accelerator, batch_size)
            return {**figures, "accuracy": 1.0 - val["accuracy"]}  # test ranking = reversed validation ranking
        return figures

    real_train_candidate = auxiliary_stage._train_candidate

    def remember_splits(ctx, *args, **kwargs):
        seen.update(val=ctx.splits.val, test=ctx.splits.test)
        return real_train_candidate(ctx, *args, **kwargs)

    monkeypatch.setattr(auxiliary_stage, "evaluate_classifier", rigged)
    monkeypatch.setattr(auxiliary_stage, "_train_candidate", remember_splits)
    run_dir = tmp_path / "run"
    # lambda 200 swamps the task loss: its validation accuracy is far below the others'
    run_in_process(run_cycles, run_dir, [*ONE_CYCLE, "cycle.epochs=2", "cycle.aux_loss_weight=[200,0,0.1]"])
    record = _record(run_dir)
    vals = [c["val"]["accuracy"] for c in record["candidates"]]
    tests = [c["test"]["accuracy"] for c in record["candidates"]]
    assert record["chosen_index"] == max(range(3), key=lambda i: (vals[i], -i))
    assert max(vals) > min(vals), "the candidates must differ for this test to mean anything"
    assert record["chosen_index"] != max(range(3), key=lambda i: tests[i])
    assert [c["weight"] for c in record["candidates"]] == [200.0, 0.0, 0.1]
    for candidate in record["candidates"]:
        assert set(candidate["objective_start"]) == {"task_loss", "aux_loss", "weighted_aux_loss", "aux_to_task_ratio"}
        assert candidate["gradient_steps"] > 0 and candidate["examples_seen"] > 0
    assert record["budget"]["gradient_steps"] == sum(c["gradient_steps"] for c in record["candidates"])
    # the chosen candidate is model 1; the other candidates' weights are gone, their figures stay
    assert not (run_dir / "checkpoints" / "candidates_cycle_0").exists()
    aux = json.loads((run_dir / "results" / "cycle_1.json").read_text())["metrics"]["auxiliary"]
    assert aux["weight"] == record["chosen_weight"] and aux["candidates"] == 3
    assert aux["search_gradient_steps"] == record["budget"]["gradient_steps"]


def test_objective_terms_are_recorded_and_weighted(tmp_path):
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [*ONE_CYCLE, "cycle.aux_loss_weight=0.5", "cycle.aux_loss=mse"])
    record = _record(run_dir)
    (candidate,) = record["candidates"]
    start = candidate["objective_start"]
    assert record["aux_loss"] == "mse" and candidate["weight"] == 0.5
    assert start["weighted_aux_loss"] == pytest.approx(0.5 * start["aux_loss"])
    assert start["aux_to_task_ratio"] == pytest.approx(start["weighted_aux_loss"] / start["task_loss"])
    assert candidate["objective_end"]["aux_loss"] < start["aux_loss"]  # the objective was trained on
    assert not (run_dir / "checkpoints" / "candidates_cycle_0").exists()  # one lambda: no candidate folders


def test_scratch_starts_from_the_baseline_initial_weights(tmp_path, monkeypatch):
    starts = []
    real_train = auxiliary_stage.train_classifier
    import sae_ception.stages.baseline as baseline_stage
    real_baseline_train = baseline_stage.train_classifier

    def capture(train):
        def wrapped(model, *args, **kwargs):
            starts.append({k: v.clone() for k, v in model.state_dict().items()})
            return train(model, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(auxiliary_stage, "train_classifier", capture(real_train))
    monkeypatch.setattr(baseline_stage, "train_classifier", capture(real_baseline_train))
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [*ONE_CYCLE, "cycle.init=scratch", "cycle.aux_loss_weight=[0,0.3]"])
    baseline_start, *candidate_starts = starts
    assert len(candidate_starts) == 2
    for start in candidate_starts:
        assert start.keys() == baseline_start.keys()
        assert all(torch.equal(start[k], baseline_start[k]) for k in start)
    # lambda = 0 from scratch is the baseline's training again, step for step: same weights as model 0
    record = _record(run_dir)
    assert record["init"] == "scratch"
    assert record["candidates"][0]["gradient_steps"] == record["candidates"][1]["gradient_steps"]


def test_scratch_with_lambda_zero_reproduces_the_baseline(tmp_path):
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [*ONE_CYCLE, "cycle.init=scratch", "cycle.aux_loss_weight=0"])
    model_0, model_1 = _weights(run_dir, 0), _weights(run_dir, 1)
    assert all(torch.equal(model_0[k], model_1[k]) for k in model_0)


def test_killed_search_resumes_from_finished_candidates(tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    overrides = [*ONE_CYCLE, "cycle.aux_loss_weight=[0,0.1,0.2]"]

    class Killed(Exception):
        pass

    real_train_candidate = auxiliary_stage._train_candidate
    calls = []

    def killed_after_two(ctx, cycle, index, *args, **kwargs):
        if index == 2:
            raise Killed()
        calls.append(index)
        return real_train_candidate(ctx, cycle, index, *args, **kwargs)

    monkeypatch.setattr(auxiliary_stage, "_train_candidate", killed_after_two)
    with pytest.raises(Killed):
        run_in_process(run_cycles, run_dir, overrides)
    assert (run_dir / "checkpoints" / "candidates_cycle_0" / "lambda_1").is_dir()
    monkeypatch.setattr(auxiliary_stage, "_train_candidate", real_train_candidate)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="sae_ception")
    run_in_process(run_cycles, run_dir, overrides)
    skipped = [r.getMessage() for r in caplog.records if "skipping it (resume)" in r.getMessage()]
    assert len(skipped) == 2, skipped
    resumed = _record(run_dir)

    fresh_dir = tmp_path / "fresh"
    run_in_process(run_cycles, fresh_dir, overrides)
    fresh = _record(fresh_dir)
    assert resumed["chosen_index"] == fresh["chosen_index"]
    assert [c["val"] for c in resumed["candidates"]] == [c["val"] for c in fresh["candidates"]]
    assert all(torch.equal(v, _weights(fresh_dir, 1)[k]) for k, v in _weights(run_dir, 1).items())


@pytest.mark.parametrize("overrides,match", [
    (["cycle.aux_loss_weight=[]"], "cycle.aux_loss_weight=[] is empty"),
    (["cycle.aux_loss_weight=-0.1"], "cycle.aux_loss_weight=-0.1"),
    (["cycle.aux_loss_weight=[0.1,-1]"], "-1 is not valid"),
    (["cycle.aux_loss_weight=[0.1,0.1]"], "repeats a weight"),
    (["cycle.aux_loss_weight=[0.1,abc]"], "'abc' is not a number"),
    (["cycle.aux_loss=cosine_centred"], "cycle.aux_loss='cosine_centred' is not valid"),
    (["cycle.init=fresh"], "cycle.init='fresh' is not valid"),
    (["cycle.aux_loss_weight=[0,0.1]", "dataset.val_fraction=0"], "dataset.val_fraction=0"),
    (["cycle.init=scratch", "cycle.trainable=[head]"], "cycle.trainable=['head'] with cycle.init=scratch"),
    (["cycle.init=scratch", "inputs.model=/some/model"], "cycle.init=scratch trains a fresh model"),
])
def test_bad_auxiliary_settings_are_one_line(tmp_path, caplog, overrides, match):
    expect_one_line_error(caplog, tmp_path / "run", overrides, match)


def test_one_weight_in_a_list_is_the_same_setting_as_the_weight():
    from sae_ception.config import CycleConfig

    assert CycleConfig(aux_loss_weight=[0.1]).aux_loss_weight == CycleConfig(aux_loss_weight=0.1).aux_loss_weight == 0.1
    assert CycleConfig(aux_loss_weight=[0, 1]).aux_loss_weight == [0.0, 1.0]


def test_a_single_lambda_writes_its_record_before_the_model_that_marks_the_stage_done(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = auxiliary_stage.save_model
    seen = []

    def save(model, folder, extra=None):
        seen.append((folder.name, (run_dir / "results" / "auxiliary_cycle_0.json").is_file()))
        return real_save(model, folder, extra=extra)

    monkeypatch.setattr(auxiliary_stage, "save_model", save)
    run_in_process(run_cycles, run_dir, ONE_CYCLE)
    assert seen == [("model_cycle_1", True)]


def test_an_unused_top_k_is_said(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sae_ception")
    run_in_process(run_cycles, tmp_path / "run", [*ONE_CYCLE, "sharpening=class_mean", "sharpening.top_k=5"])
    assert any("sharpening.top_k=5 is not used by sharpening.type=class_mean" in r.getMessage() for r in caplog.records)
