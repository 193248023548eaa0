"""scripts/compare.py on concept-transfer runs (scripts/transfer_concept.py): one entry per method, the methods as
groups, paired differences from a baseline method, and what it refuses (mixed kinds of run, damaged results).
The run folders are written by hand (config.yaml + results/transfer.json) so the tests take no training; one
test runs the real scripts on digits."""

from __future__ import annotations

import csv
import io
import math
import shutil

import pytest
import yaml

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison, where
from sae_ception.evaluation.compare_paired import (figure_metrics, format_paired, paired_comparison, paired_csv,
                                                   select_baseline, write_paired)
from sae_ception.evaluation.compare_wandb import comparison_rows, wandb_target
from sae_ception.evaluation.report import verdict
from sae_ception.utils.io import write_json
from sae_ception.utils.tracking import GROUP_FILE
from tests.conftest import run_script
from tests.evaluation.test_compare import make_run
from tests.fake_wandb import wandb_calls
from tests.pipeline.test_compare_script import run_main

# Student's t(0.975, 2) in closed form (as tests/evaluation/test_compare_paired.py): for 3 pairs
T_975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))

CONFIGURED = ("none", "copy_head", "finetune_head", "cascade")  # configs/transfer/*.yaml of these runs
NONE_BUDGET = {"target_images": 0, "target_labels": False, "other_images": 0, "gradient_steps": 0,
               "parameters_changed": 0}


def method_result(name, transfer, preservation, specificity, base_preservation=0.98, **budget):
    """One method's dict as stages/transfer.py writes it (confusion matrix included: it must not be compared)."""
    return {"method": name, "type": name, "settings": {"type": name},
            "measures": {"transfer": transfer, "preservation": preservation, "specificity": specificity,
                         "confusion": [[1, 0], [0, 1]], "confusion_rows": [0, 1], "confusion_columns": [0, 1, "other"],
                         "preservation_change": None if preservation is None else preservation - base_preservation},
            "budget": {**NONE_BUDGET, **budget}}


def make_transfer_run(folder, seed, methods, listed=None, extra=None, finished=True):
    """A concept-transfer run folder: config.yaml and results/transfer.json (`finished=False`: only the method
    files, as a run still running has them). `methods`: name -> method_result(...)."""
    folder.mkdir(parents=True)
    names = list(methods) if listed is None else listed
    config = {"seed": seed, "device": "auto", "run_dir": str(folder), "plots": True, "threads": "auto",
              "dataset": {"name": "digits", "num_classes": 10},
              "model_a": {"name": "mlp", "epochs": 8, "hidden_sizes": [512, 256, 128, 64]},
              "model_b": {"name": "mlp", "epochs": 8, "hidden_sizes": [512, 256, 128, 64]},
              "concept": {"classes_a": [0, 1, 2, 3], "classes_b": [2, 3, 4, 5], "target": 4, "distractor": 5,
                          "methods": names, "target_images": 100, "save_edited": True},
              # every method's YAML is in the config, whichever of them concept.methods runs
              "transfer": {name: {"type": name} for name in CONFIGURED},
              "wandb": {"mode": "disabled", "project": "sae-ception", "entity": None, "group": None,
                        "tags": ["concept-transfer"]},
              "paths": {"output_dir": str(folder)}, **(extra or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for name, result in methods.items():  # a method's result stores the settings it ran with, as the run does
        if result.get("settings") == {"type": name} and name in config["transfer"]:
            result = {**result, "settings": config["transfer"][name]}
            methods[name] = result
        write_json(folder / "results" / "methods" / f"{name}.json", result)
    if finished:
        write_json(folder / "results" / "transfer.json",
                   {"concept": config["concept"], "models": {"a": {"classes": [0, 1, 2, 3]}, "b": {}},
                    "methods": methods, "timings": [{"stage": "model_a", "cycle": 0, "seconds": 1.0}]})
    return folder


# seed -> (transfer, preservation, specificity) of finetune_head; none: (0, 0.98, 0) each seed
HEAD = {0: (0.50, 0.97, 0.10), 1: (0.60, 0.96, 0.05), 2: (0.70, 0.98, 0.00)}


@pytest.fixture
def sweep(tmp_path):
    """A `--multirun seed=0,1,2` sweep of methods none and finetune_head (folders in multirun's <n>/ layout).
    finetune_head − none: transfer 0.5, 0.6, 0.7; specificity 0.10, 0.05, 0.00; gradient steps 50 each."""
    for seed in (0, 1, 2):
        transfer, preservation, specificity = HEAD[seed]
        make_transfer_run(tmp_path / str(seed), seed, {
            "none": method_result("none", 0.0, 0.98, 0.0),
            "finetune_head": method_result("finetune_head", transfer, preservation, specificity, target_images=100,
                                           target_labels=True, other_images=400, gradient_steps=50,
                                           parameters_changed=65)})
    return tmp_path


def row(rows, metric):
    return next(r for r in rows if r.metric == metric)


def line(text, start):
    return next(li for li in text.splitlines() if li.startswith(start))


# --- reading: one entry per method


def test_each_method_is_one_entry_with_its_measures_and_budget_at_cycle_0(sweep):
    runs = find_runs([sweep])
    assert len(runs) == 6 and len({r.folder for r in runs}) == 6  # distinct pseudo-paths: nothing collides
    entry = next(r for r in runs if r.folder == sweep / "1" / "results" / "methods" / "finetune_head")
    assert entry.run_folder == sweep / "1" and entry.method == "finetune_head" and entry.kind == "transfer"
    assert entry.settings["transfer.method"] == "finetune_head" and entry.settings["seed"] == 1
    assert entry.by_cycle[0] == {
        "concept/transfer": 0.60, "concept/preservation": 0.96, "concept/preservation_change": pytest.approx(-0.02),
        "concept/specificity": 0.05, "budget/target_images": 100, "budget/target_labels": 1,
        "budget/other_images": 400, "budget/gradient_steps": 50, "budget/parameters_changed": 65}
    assert list(entry.by_cycle) == [0]  # the confusion matrix (lists) is no metric


def test_the_methods_are_the_groups_and_the_table_has_no_cycle_rows(sweep):
    comparison = compare(find_runs([sweep]))
    assert comparison.group_by == ["transfer.method"] and not comparison.has_cycles
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"none": 3, "finetune_head": 3}
    assert len(comparison.cycles) == 6  # one compared entry per method and run
    transfer = row(comparison.rows, "concept/transfer")
    mean, std, n = transfer.final["finetune_head"]
    assert (mean, n) == (pytest.approx(0.6), 3) and std == pytest.approx(0.1)
    assert [r.metric for r in comparison.rows] == [
        "concept/transfer", "concept/preservation", "concept/preservation_change", "concept/specificity",
        "budget/target_images", "budget/target_labels", "budget/other_images", "budget/gradient_steps",
        "budget/parameters_changed"]
    text = format_comparison(comparison)
    assert text.startswith("grouped by: transfer.method; 3 runs of concept transfer, one result per method: "
                           "6 results in 2 groups (n: runs per group)")
    assert "Δ" not in text and "cycle" not in text
    assert "specificity = distractor images called the target (lower)" in text
    assert [c.strip() for c in line(text, "concept/transfer").split("|")[1:]] == ["0 ± 0", "0.6 ± 0.1"]
    assert [c.strip() for c in line(text, "budget/target_labels").split("|")[1:]] == ["0 ± 0", "1 ± 0"]
    assert "note:" not in text


def test_which_other_methods_ran_is_no_group_but_a_setting_is(sweep):
    # a later run of the same sweep listed one more method (or kept no edited models): same groups
    make_transfer_run(sweep / "3", 3, {"none": method_result("none", 0.0, 0.98, 0.0),
                                       "finetune_head": method_result("finetune_head", 0.8, 0.97, 0.0),
                                       "copy_head": method_result("copy_head", 0.0, 0.98, 0.0)})
    comparison = compare(find_runs([sweep]))
    assert comparison.group_by == ["transfer.method"]
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"none": 4, "finetune_head": 4,
                                                                            "copy_head": 1}
    # k (concept.target_images) reaches a result only through a method's own target_images: `none` (which takes no
    # image) run again with another k is the same experiment, counted once
    make_transfer_run(sweep / "4", 0, {"none": method_result("none", 0.0, 0.98, 0.0)},
                      extra={"concept": {"classes_a": [0, 1, 2, 3], "classes_b": [2, 3, 4, 5], "target": 4,
                                         "distractor": 5, "methods": ["none"], "target_images": 10}})
    comparison = compare(find_runs([sweep]))
    assert comparison.group_by == ["transfer.method"]
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"none": 4, "finetune_head": 4,
                                                                            "copy_head": 1}
    assert any(note.startswith("1 result counted once") for note in comparison.notes)


def test_where_selects_methods_and_by_always_keeps_methods_apart(sweep):
    runs = find_runs([sweep])
    assert {r.method for r in where(runs, ["transfer.method=finetune_head"])} == {"finetune_head"}
    comparison = compare(runs, group_by=["dataset.name"])  # the same for every run: would average both methods
    assert comparison.group_by == ["dataset.name", "transfer.method"]
    assert list(comparison.groups) == ["digits, none", "digits, finetune_head"]
    assert comparison.notes == ["grouped by transfer.method as well: a group of several methods would average "
                                "different methods (--where transfer.method=NAME compares one method)"]
    one = compare(where(runs, ["transfer.method=none"]), group_by=["dataset.name"])
    assert one.group_by == ["dataset.name"] and one.notes == []


def test_a_cycle_is_refused_for_transfer_runs(sweep):
    with pytest.raises(ConfigError, match=r"^--cycle 0: concept-transfer runs have no cycles \(one result per "
                                          r"method\); leave --cycle out$"):
        compare(find_runs([sweep]), cycle=0)


# --- paired differences from a baseline method


@pytest.mark.parametrize("selector", ["transfer.method=none", "none"])
def test_each_method_against_the_baseline_paired_by_seed(sweep, selector):
    comparison = compare(find_runs([sweep]))
    paired = paired_comparison(comparison, select_baseline(comparison, selector))
    assert paired.baseline == "none" and paired.groups == ["finetune_head"]
    assert [seed for seed, _, _ in paired.pairs["finetune_head"]] == [0, 1, 2] and paired.notes == []
    transfer = row(paired.rows, "concept/transfer").at_cycle["finetune_head"]
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # d = 0.5, 0.6, 0.7: mean 0.6, sd 0.1
    assert abs(transfer.diff.mean - 0.6) < 1e-9 and abs(transfer.diff.low - (0.6 - half)) < 1e-9
    assert transfer.verdict == "better"
    specificity = row(paired.rows, "concept/specificity").at_cycle["finetune_head"]  # d = 0.1, 0.05, 0: includes 0
    assert abs(specificity.diff.mean - 0.05) < 1e-9 and not specificity.diff.excludes_zero
    steps = row(paired.rows, "budget/gradient_steps").at_cycle["finetune_head"]  # +50 each: excludes 0, no verdict
    assert steps.diff.excludes_zero and steps.verdict == ""
    text = format_paired(paired)
    assert "Δ" not in text and "at the compared cycle" not in text
    assert line(text, "budget/gradient_steps").endswith("+50 [+50, +50]*")
    # preservation_change − none's 0: −0.01, −0.02, 0.00, mean −0.01 ± t·0.01/√3 = [−0.0348, +0.0148]: no star
    assert line(text, "concept/preservation_change").endswith("-0.01 [-0.0348, +0.0148]")


def test_a_lower_specificity_is_better():
    assert verdict("concept/specificity", 0.10, 0.02) == "better"
    assert verdict("concept/transfer", 0.2, 0.6) == "better" and verdict("concept/preservation", 0.98, 0.9) == "worse"
    assert verdict("concept/preservation_change", -0.05, 0.0) == "better"
    for item in ("target_images", "target_labels", "other_images", "gradient_steps", "parameters_changed"):
        assert verdict(f"budget/{item}", 0, 50) == ""  # a budget is what a method used, not a score


def test_csv_has_no_change_rows_and_the_png_shows_the_four_measures(sweep, tmp_path):
    comparison = compare(find_runs([sweep]))
    paired = paired_comparison(comparison, select_baseline(comparison, "transfer.method=none"))
    rows = list(csv.DictReader(io.StringIO(paired_csv(paired))))
    assert {r["quantity"] for r in rows} == {"at_cycle"} and len(rows) == 9
    assert figure_metrics(paired) == ["concept/transfer", "concept/preservation", "concept/preservation_change",
                                      "concept/specificity"]
    written = write_paired(paired, tmp_path / "figs", figure_metrics(paired))
    assert [p.name for p in written] == ["paired_vs_none.csv", "paired_vs_none.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- what is refused, and what is said


def test_sae_ception_and_transfer_runs_together_are_one_line_naming_some_of_each(monkeypatch, capsys, sweep):
    make_run(sweep / "sae_0", 0, "per_class", [0.9, 0.95])
    with pytest.raises(ConfigError) as caught:
        compare(find_runs([sweep]))
    message = str(caught.value)
    assert "\n" not in message and "SAE-ception runs and concept-transfer runs" in message
    assert f"SAE-ception runs: {sweep / 'sae_0'}; " in message
    assert f"concept-transfer runs (scripts/transfer_concept.py): {sweep / '0'}, {sweep / '1'}, {sweep / '2'})" in message
    code, out, err = run_main(monkeypatch, capsys, sweep)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: these folders hold")
    code, out, _ = run_main(monkeypatch, capsys, sweep, "--where", "concept.target=4")  # one kind selected: fine
    assert code == 0 and out.startswith("grouped by: transfer.method")


TRANSFER_DAMAGE = {
    "not JSON": (b"\x00\xffgarbage{", "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"methods": {"none": {"measures": {"transfer": 0.', "not valid JSON"),
    "a list": (b"[1, 2]", "no 'methods' object"),
    "no methods": (b'{"concept": {}}', "no 'methods' object"),
    "no method at all": (b'{"methods": {}}', "no method results"),
    "a method not a map": (b'{"methods": {"none": 3}}', "method 'none' is not an object"),
    "no measures": (b'{"methods": {"none": {"budget": {}}}}', "method 'none' has no measures object"),
    "no budget": (b'{"methods": {"none": {"measures": {"transfer": 0, "preservation": 1, "specificity": 0, '
                  b'"preservation_change": 0}}}}', "method 'none' has no budget object"),
    "a measure missing": (b'{"methods": {"none": {"measures": {"transfer": 0, "preservation": 1}, "budget": {}}}}',
                          "method 'none' has no measure 'preservation_change', 'specificity'"),
    "a measure not a number": (b'{"methods": {"none": {"measures": {"transfer": "high", "preservation": 1, '
                               b'"specificity": 0, "preservation_change": 0}, "budget": {}}}}',
                               "method 'none': measure 'transfer' is not a number"),
    "a budget item not a number": (b'{"methods": {"none": {"measures": {"transfer": 0, "preservation": 1, '
                                   b'"specificity": 0, "preservation_change": 0}, "budget": {"gradient_steps": [1]}}}}',
                                   "method 'none': budget item 'gradient_steps' is not a number"),
}


@pytest.mark.parametrize("damage", TRANSFER_DAMAGE)
def test_a_damaged_transfer_results_file_is_one_line_naming_it(monkeypatch, capsys, sweep, damage):
    content, problem = TRANSFER_DAMAGE[damage]
    path = sweep / "1" / "results" / "transfer.json"
    path.write_bytes(content)
    with pytest.raises(ArtifactError) as caught:
        find_runs([sweep])
    message = str(caught.value)
    assert message.startswith(f"{path} is damaged (") and problem in message and "\n" not in message
    assert f"run_dir={sweep / '1'}" in message  # what to do about it
    code, out, err = run_main(monkeypatch, capsys, sweep)
    assert code == 2 and out == "" and err == f"error: {message}\n"


def test_nulls_are_undefined_not_damage(sweep):
    make_transfer_run(sweep / "3", 3, {"none": method_result("none", None, None, None, gradient_steps=None)})
    comparison = compare(find_runs([sweep]))
    assert row(comparison.rows, "concept/transfer").final["none"][2] == 3  # the 3 runs that define it
    assert "(n=3)" in line(format_comparison(comparison), "concept/transfer")


def test_a_run_still_running_is_left_out_with_the_methods_it_finished(sweep):
    make_transfer_run(sweep / "3", 3, {"none": method_result("none", 0.0, 0.98, 0.0)},
                      listed=["none", "finetune_head"], finished=False)
    comparison = compare(find_runs([sweep]))
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"none": 3, "finetune_head": 3}
    assert comparison.notes == [
        f"left out 1 run without results/transfer.json yet (still running, or failed; it is written when every "
        f"method has finished): {sweep / '3'}; the methods some of them finished (results/methods/) are not used "
        f"until then: {sweep / '3'} (none)"]
    assert f"note: {comparison.notes[0]}" in format_comparison(comparison)
    with pytest.raises(ArtifactError, match=r"^no results yet in .*3 \(results/transfer.json is written when every "
                                            r"method has finished\); wait for the runs"):
        compare(find_runs([sweep / "3"]))


def test_a_run_resumed_with_more_methods_is_said(sweep):
    make_transfer_run(sweep / "3", 3, {"none": method_result("none", 0.0, 0.98, 0.0)},
                      listed=["none", "finetune_head", "cascade"])
    comparison = compare(find_runs([sweep]))
    assert comparison.notes == [
        f"1 run has a results/transfer.json without some methods its config.yaml lists (resumed with more methods "
        f"and still running, or stopped): {sweep / '3'} lacks finetune_head, cascade"]


def test_the_script_with_a_baseline_method(monkeypatch, capsys, sweep, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, sweep, "--baseline", "transfer.method=none", "--out", tmp_path / "o")
    assert code == 0 and err == ""
    plain, paired = out.split("\n\n")
    assert plain.startswith("grouped by: transfer.method") and "none (n=3)" in plain
    assert paired.startswith("difference from the baseline group 'none', paired by seed")
    assert line(paired, "concept/transfer").endswith("* ok")
    assert (tmp_path / "o" / "paired_vs_none.png").is_file()
    code, _, err = run_main(monkeypatch, capsys, sweep, "--cycle", "1")
    assert code == 2 and err.startswith("error: --cycle 1: concept-transfer runs have no cycles")


# --- --wandb


def test_wandb_reads_each_runs_settings_and_group_from_its_folder(monkeypatch, capsys, tmp_path, fake_wandb):
    for seed in (0, 1):
        run = make_transfer_run(tmp_path / "sweep" / str(seed), seed, {
            "none": method_result("none", 0.0, 0.98, 0.0),
            "copy_head": method_result("copy_head", 0.1 * seed, 0.98, 0.0, parameters_changed=65)},
            extra={"wandb": {"mode": "offline", "project": "transfer-proj", "entity": None, "group": None}})
        (run / GROUP_FILE).write_text("multirun/2026-11-30/09-00-00\n")
    runs = find_runs([tmp_path / "sweep"])
    target = wandb_target(runs)
    assert (target.project, target.mode, target.group) == ("transfer-proj", "offline", "multirun/2026-11-30/09-00-00")
    assert {r[2] for r in comparison_rows(compare(runs))} == {"at_cycle"}
    code, out, err = run_main(monkeypatch, capsys, tmp_path / "sweep", "--baseline", "none", "--wandb")
    assert code == 0 and err == ""
    assert out.splitlines()[-1].startswith("wandb: logged the comparison as compare-sweep to transfer-proj (offline, "
                                           "group multirun/2026-11-30/09-00-00)")
    (init,) = wandb_calls(fake_wandb, "init")
    assert init["kwargs"]["config"]["runs"] == 2 and init["kwargs"]["config"]["kind"] == "transfer"
    logged = wandb_calls(fake_wandb, "log")[0]["data"]
    rows = {(r[0], r[1], r[2]): r[3:] for r in logged["compare/table"]["data"]}
    assert rows[("copy_head", "budget/parameters_changed", "at_cycle")] == [65.0, 0.0, 2, 2]
    assert {r[9] for r in logged["compare/paired"]["data"]} == {"at_cycle"}


def test_a_transfer_sweep_with_wandb_disabled_is_refused_before_the_table(monkeypatch, capsys, sweep, fake_wandb):
    code, out, err = run_main(monkeypatch, capsys, sweep, "--wandb")
    assert code == 2 and out == "" and "wandb.mode=disabled" in err and not fake_wandb.exists()


# --- the real scripts


def test_a_transfer_sweep_compared_end_to_end(tmp_path):
    """`transfer_concept.py --multirun seed=0,1` on digits (small models, two methods), then compare.py on it."""
    sweep = tmp_path / "multirun"
    done = run_script("transfer_concept.py", "--multirun", "seed=0,1", f"hydra.sweep.dir={sweep}",
                      "wandb.mode=disabled", "progress=false", "device=cpu", "plots=false",
                      "model_a.hidden_sizes=[32,16]", "model_b.hidden_sizes=[32,16]", "model_a.epochs=2",
                      "model_b.epochs=2", "concept.methods=[none,copy_head]", "concept.save_edited=false")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    compared = run_script("compare.py", str(sweep), "--baseline", "transfer.method=none")
    assert compared.returncode == 0 and compared.stderr == "", compared.stderr
    plain, paired = compared.stdout.split("\n\n")
    assert plain.startswith("grouped by: transfer.method; 2 runs of concept transfer, one result per method: "
                            "4 results in 2 groups")
    assert "none (n=2)" in plain and "copy_head (n=2)" in plain and "note:" not in plain
    assert line(paired, "budget/parameters_changed").split("|")[1].strip().startswith("+")
    assert (sweep / "paired_vs_none.csv").is_file() and (sweep / "paired_vs_none.png").is_file()


def test_a_methods_diagnostics_are_compared_too(tmp_path):
    """`diagnostics` (e.g. procrustes_probe's alignment residual) become `diagnostics/*` rows; non-numbers are
    left out."""
    result = method_result("procrustes_probe", 0.0, 0.98, 0.0)
    result["diagnostics"] = {"procrustes_residual": 0.25, "note": "text"}
    make_transfer_run(tmp_path / "0", 0, {"procrustes_probe": result})
    (entry,) = find_runs([tmp_path])
    assert entry.by_cycle[0]["diagnostics/procrustes_residual"] == 0.25
    assert "diagnostics/note" not in entry.by_cycle[0]


# --- a sweep over one method's setting: each method's entry has only its own method's settings

ALPHAS = (1.0, 3.0, 10.0)
# alpha -> (transfer, preservation, specificity) of procrustes_probe; none and copy_head do not depend on it
PROBE = {1.0: (0.0, 0.98, 0.0), 3.0: (0.4, 0.95, 0.05), 10.0: (0.9, 0.80, 0.30)}
ALPHA = "transfer.procrustes_probe.alpha"


def alpha_config(alpha, target_images=100):
    """The `transfer` section of a run of `transfer.procrustes_probe.alpha=<alpha>`: every method's YAML."""
    return {**{name: {"type": name} for name in CONFIGURED},
            "procrustes_probe": {"type": "procrustes_probe", "alpha": alpha, "target_images": target_images}}


def alpha_run(folder, alpha, none=(0.0, 0.98, 0.0), seed=0):
    transfer, preservation, specificity = PROBE[alpha]
    return make_transfer_run(folder, seed, {
        "none": method_result("none", *none),
        "copy_head": method_result("copy_head", 0.0, 0.98, 0.0, parameters_changed=65),
        "procrustes_probe": method_result("procrustes_probe", transfer, preservation, specificity, target_images=100,
                                          target_labels=True, other_images=300, gradient_steps=40,
                                          parameters_changed=55)},
        extra={"transfer": alpha_config(alpha)})


@pytest.fixture
def alpha_sweep(tmp_path):
    """`--multirun transfer.procrustes_probe.alpha=1,3,10` (seed 0): none and copy_head give the same numbers in
    every run, procrustes_probe's differ by alpha."""
    for job, alpha in enumerate(ALPHAS):
        alpha_run(tmp_path / str(job), alpha)
    return tmp_path


def test_a_methods_entry_has_only_its_own_methods_settings(alpha_sweep):
    runs = find_runs([alpha_sweep])
    none = next(r for r in runs if r.method == "none")
    probe = next(r for r in runs if r.method == "procrustes_probe")
    assert "transfer.none.type" in none.settings and ALPHA not in none.settings
    assert not any(k.startswith(("transfer.copy_head.", "transfer.procrustes_probe.")) for k in none.settings)
    assert probe.settings[ALPHA] == 1.0 and "transfer.none.type" not in probe.settings
    assert probe.settings["transfer.procrustes_probe.target_images"] == 100 and "concept.target_images" not in probe.settings
    assert probe.run_settings["transfer.none.type"] == "none"
    assert not none.has_setting(ALPHA) and probe.has_setting(ALPHA) and none.has_setting("concept.target")


def test_a_sweep_over_one_methods_setting_gives_each_method_once_and_that_method_per_value(alpha_sweep):
    comparison = compare(find_runs([alpha_sweep]))
    assert comparison.group_by == ["transfer.method", ALPHA]
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {
        "none": 1, "copy_head": 1, "procrustes_probe, alpha=1.0": 1, "procrustes_probe, alpha=3.0": 1,
        "procrustes_probe, alpha=10.0": 1}
    assert list(comparison.groups) == ["none", "copy_head", "procrustes_probe, alpha=1.0",
                                       "procrustes_probe, alpha=3.0", "procrustes_probe, alpha=10.0"]
    assert comparison.groups["none"][0].run_folder == alpha_sweep / "0"  # the first by folder order is kept
    assert comparison.notes == [
        f"4 results counted once: the same method, settings and seed with the same numbers as a result already "
        f"counted (the first by folder order), from runs that differ only in other methods' settings ({ALPHA}); "
        f"left out: {alpha_sweep / '1/results/methods/none'}, {alpha_sweep / '1/results/methods/copy_head'}, "
        f"{alpha_sweep / '2/results/methods/none'} and 1 more"]
    transfer = row(comparison.rows, "concept/transfer")
    assert [transfer.final[name][:1] for name in comparison.groups] == [(0.0,), (0.0,), (0.0,), (0.4,), (0.9,)]
    text = format_comparison(comparison)
    assert text.startswith(f"grouped by: transfer.method, {ALPHA}; 3 runs of concept transfer, one result per "
                           "method: 5 results in 5 groups")
    assert "none (n=1)" in text and "procrustes_probe, alpha=10.0 (n=1)" in text and "unset" not in text
    assert text.count("note:") == 1


@pytest.mark.parametrize("selector", ["transfer.method=none", "none"])
def test_the_baseline_none_pairs_every_alpha_with_the_one_none(alpha_sweep, selector):
    comparison = compare(find_runs([alpha_sweep]))
    paired = paired_comparison(comparison, select_baseline(comparison, selector))
    assert paired.baseline == "none" and paired.notes == []
    assert paired.groups == ["copy_head", "procrustes_probe, alpha=1.0", "procrustes_probe, alpha=3.0",
                             "procrustes_probe, alpha=10.0"]
    assert all([seed for seed, _, _ in pairs] == [0] for pairs in paired.pairs.values())
    transfer = row(paired.rows, "concept/transfer").at_cycle
    assert [transfer[name].diff.mean for name in paired.groups] == [0.0, 0.0, pytest.approx(0.4), pytest.approx(0.9)]
    # a method's own setting selects one of its groups, the others lack it
    assert select_baseline(comparison, f"{ALPHA}=3.0") == "procrustes_probe, alpha=3.0"
    assert select_baseline(comparison, "procrustes_probe, alpha=1.0") == "procrustes_probe, alpha=1.0"


def test_the_script_on_an_alpha_sweep(monkeypatch, capsys, alpha_sweep, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, alpha_sweep, "--baseline", "transfer.method=none", "--out",
                              tmp_path / "o")
    assert code == 0 and err == ""
    plain, paired = out.split("\n\n")
    assert "none (n=1)" in plain and plain.count("note: ") == 1 and "4 results counted once" in plain
    assert paired.startswith("difference from the baseline group 'none', paired by seed")
    assert "procrustes_probe, alpha=10.0 (n=1)" in line(paired, "metric") and "note:" not in paired
    assert line(paired, "concept/transfer").split("|")[-1].strip() == "+0.9 (no CI)"


def test_by_method_alone_counts_each_experiment_once_and_says_what_a_group_mixes(alpha_sweep):
    comparison = compare(find_runs([alpha_sweep]), group_by=["transfer.method"])
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {
        "none": 1, "copy_head": 1, "procrustes_probe": 3}
    assert comparison.notes[0].startswith("4 results counted once: ")
    assert comparison.notes[1:] == [
        f"group 'procrustes_probe' mixes {ALPHA} = 1.0, 3.0, 10.0: its cells average over those values; "
        f"--by transfer.method {ALPHA} keeps them apart"]
    mean, _, n = row(comparison.rows, "concept/transfer").final["procrustes_probe"]
    assert (mean, n) == (pytest.approx(1.3 / 3), 3)
    assert f"note: {comparison.notes[1]}" in format_comparison(comparison)
    # grouped by alpha as well: nothing mixed
    assert len(compare(find_runs([alpha_sweep]), group_by=["transfer.method", ALPHA]).notes) == 1


def test_a_repeat_with_other_numbers_is_not_collapsed_and_is_said(alpha_sweep):
    shutil.rmtree(alpha_sweep / "1")
    alpha_run(alpha_sweep / "1", 3.0, none=(0.0, 0.97, 0.0))  # none gives other numbers in this run
    comparison = compare(find_runs([alpha_sweep]))
    assert {name: len(runs) for name, runs in comparison.groups.items()}["none"] == 2
    assert [r.run_folder for r in comparison.groups["none"]] == [alpha_sweep / "0", alpha_sweep / "1"]
    assert comparison.notes == [
        f"3 results counted once: the same method, settings and seed with the same numbers as a result already "
        f"counted (the first by folder order), from runs that differ only in other methods' settings ({ALPHA}); "
        f"left out: {alpha_sweep / '1/results/methods/copy_head'}, {alpha_sweep / '2/results/methods/none'}, "
        f"{alpha_sweep / '2/results/methods/copy_head'}",
        f"results of the same method, settings and seed differ between runs, so each is counted (a seed should "
        f"give the same numbers: check how the runs were made): none with seed 0 in {alpha_sweep / '0'}, "
        f"{alpha_sweep / '1'}"]
    paired = paired_comparison(comparison, select_baseline(comparison, "transfer.method=none"))
    assert any(note.startswith("seed 0 is repeated in group 'none'") for note in paired.notes)


def test_a_run_repeated_in_another_folder_counts_once(tmp_path):
    for job in ("a", "b"):
        alpha_run(tmp_path / job, 3.0)
    comparison = compare(find_runs([tmp_path]))
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"none": 1, "copy_head": 1,
                                                                            "procrustes_probe": 1}
    assert comparison.notes == [
        f"3 results counted once: the same method, settings and seed with the same numbers as a result already "
        f"counted (the first by folder order), from runs that differ only in their folders (the same settings: a "
        f"run repeated); left out: {tmp_path / 'b/results/methods/none'}, "
        f"{tmp_path / 'b/results/methods/copy_head'}, {tmp_path / 'b/results/methods/procrustes_probe'}"]


def test_seeds_of_an_alpha_sweep_are_averaged_per_alpha(tmp_path):
    for seed in (0, 1):
        for job, alpha in enumerate(ALPHAS):
            alpha_run(tmp_path / f"{seed}_{job}", alpha, seed=seed)
    comparison = compare(find_runs([tmp_path]))
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {
        "none": 2, "copy_head": 2, "procrustes_probe, alpha=1.0": 2, "procrustes_probe, alpha=3.0": 2,
        "procrustes_probe, alpha=10.0": 2}
    assert comparison.notes[0].startswith("8 results counted once: ")


def test_where_on_a_methods_setting_keeps_the_other_methods(alpha_sweep):
    runs = find_runs([alpha_sweep])
    kept = where(runs, [f"{ALPHA}=3.0"])
    assert sorted((r.method, r.run_folder.name) for r in kept) == [
        ("copy_head", "0"), ("copy_head", "1"), ("copy_head", "2"), ("none", "0"), ("none", "1"), ("none", "2"),
        ("procrustes_probe", "1")]
    comparison = compare(kept)
    assert list(comparison.groups) == ["none", "copy_head", "procrustes_probe"]
    with pytest.raises(ConfigError, match=rf"^--where {ALPHA}=4: no result of procrustes_probe has it; {ALPHA} is "
                                          r"1.0, 3.0, 10.0 in these runs$"):
        where(runs, [f"{ALPHA}=4"])


def test_a_sweep_over_k_groups_each_method_by_its_own_k(tmp_path):
    for job, k in enumerate((10, 100)):
        make_transfer_run(tmp_path / str(job), 0, {
            "none": method_result("none", 0.0, 0.98, 0.0),
            "procrustes_probe": method_result("procrustes_probe", 0.0, 0.98, 0.0, target_images=k)},
            extra={"transfer": alpha_config(1.0, target_images=k),
                   "concept": {"classes_a": [0, 1, 2, 3], "classes_b": [2, 3, 4, 5], "target": 4, "distractor": 5,
                               "methods": ["none", "procrustes_probe"], "target_images": k}})
    comparison = compare(find_runs([tmp_path]))
    # k is each method's own target_images (concept.target_images only feeds it): none, which takes no image,
    # is one experiment run twice; procrustes_probe one group per k
    assert comparison.group_by == ["transfer.method", "transfer.procrustes_probe.target_images"]
    assert list(comparison.groups) == ["none", "procrustes_probe, target_images=10",
                                       "procrustes_probe, target_images=100"]
    assert len(comparison.notes) == 1 and comparison.notes[0].startswith("1 result counted once")


def test_wandb_rows_are_of_the_collapsed_entries(alpha_sweep):
    rows = comparison_rows(compare(find_runs([alpha_sweep])))
    none = [r for r in rows if r[0] == "none" and r[1] == "concept/transfer"]
    assert none == [["none", "concept/transfer", "at_cycle", 0.0, None, 1, 1]]
    assert {r[0] for r in rows} == {"none", "copy_head", "procrustes_probe, alpha=1.0",
                                    "procrustes_probe, alpha=3.0", "procrustes_probe, alpha=10.0"}


def test_validation_measures_and_extra_budget_items_are_compared(tmp_path):
    result = method_result("finetune_head", 0.5, 0.97, 0.1, validation_images=180)
    result["validation"] = {"transfer": 0.6, "preservation": 0.96, "specificity": 0.05, "preservation_change": -0.01,
                            "confusion": [[1, 0], [0, 1]], "confusion_rows": [0, 1]}
    make_transfer_run(tmp_path / "0", 0, {"finetune_head": result})
    (entry,) = find_runs([tmp_path])
    assert entry.by_cycle[0]["validation/transfer"] == 0.6 and entry.by_cycle[0]["budget/validation_images"] == 180
    assert not any(k.startswith("validation/confusion") for k in entry.by_cycle[0])
    assert "validation/*: the same measures on the validation split" in format_comparison(compare([entry]))


def test_a_run_made_before_a_methods_yaml_is_its_own_group_of_that_method(tmp_path):
    alpha_run(tmp_path / "0", 3.0)
    make_transfer_run(tmp_path / "1", 1, {"none": method_result("none", 0.0, 0.98, 0.0),
                                          "procrustes_probe": method_result("procrustes_probe", 0.1, 0.9, 0.0)})
    comparison = compare(find_runs([tmp_path]))
    # its other settings (type, target_images) follow alpha: one key says it
    assert comparison.group_by == ["transfer.method", ALPHA]
    assert list(comparison.groups) == ["none", "copy_head", "procrustes_probe, alpha=3.0",
                                       "procrustes_probe, alpha=unset"]
    assert comparison.notes == [f"{ALPHA} is not a setting of 1 of 2 runs "
                                f"({tmp_path / '1/results/methods/procrustes_probe'}); their group says 'unset'"]
    assert compare(find_runs([tmp_path]), group_by=["transfer.method"]).notes == [
        f"group 'procrustes_probe' mixes {ALPHA} = 3.0, unset: its cells average over those values; "
        f"--by transfer.method {ALPHA} keeps them apart"]


def test_a_methods_settings_are_those_stored_with_its_result_not_the_rewritten_config(tmp_path):
    """A later command rewrites config.yaml when it starts; a result it had not yet replaced keeps the settings
    that made it, and compare labels it with those."""
    result = method_result("procrustes_probe", 0.0, 0.98, 0.0)
    result["settings"] = alpha_config(1.0)["procrustes_probe"]
    make_transfer_run(tmp_path / "0", 0, {"procrustes_probe": result}, extra={"transfer": alpha_config(10.0)})
    (entry,) = find_runs([tmp_path])
    assert entry.settings[ALPHA] == 1.0
