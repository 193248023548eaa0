"""scripts/compare.py's core: grouping runs by what differs, mean ± std per group, change since cycle 0."""

import json
import math

import pytest
import yaml

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison
from sae_ception.utils.io import write_json


def make_run(folder, seed, sharpening, accuracies, cycles=None, max_cycles=None, extra=None):
    """A run folder as a run writes it; `accuracies` per cycle (`cycles`: which cycles, default 0, 1, ...)."""
    folder.mkdir(parents=True)
    config = {"seed": seed, "run_dir": str(folder), "sharpening": {"type": sharpening, "top_k_pct": 10.0},
              "wandb": {"mode": "disabled"}, "paths": {"output_dir": str(folder)}, **(extra or {})}
    if max_cycles is not None:
        config["cycle"] = {"max_cycles": max_cycles, "current": 0}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for cycle, accuracy in zip(cycles if cycles is not None else range(len(accuracies)), accuracies):
        write_json(folder / "results" / f"cycle_{cycle}.json",
                   {"cycle": cycle, "metrics": {"performance": {"accuracy": accuracy}, "clustering_sae": {"ari_kmeans": None}}})
    return folder


@pytest.fixture
def sweep(tmp_path):
    make_run(tmp_path / "0", 0, "per_class", [0.90, 0.94])
    make_run(tmp_path / "1", 1, "per_class", [0.90, 0.96])
    make_run(tmp_path / "2", 0, "random", [0.90, 0.88])
    make_run(tmp_path / "3", 1, "random", [0.92, 0.90])
    return tmp_path


def test_groups_by_the_setting_that_differs_not_the_seed(sweep):
    comparison = compare(find_runs([sweep]))
    assert comparison.group_by == ["sharpening.type"]
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {
        "per_class": 2, "random": 2}


def test_mean_std_and_change_since_cycle_0(sweep):
    row = next(r for r in compare(find_runs([sweep])).rows if r.metric == "performance/accuracy")
    mean, std, n = row.final["per_class"]
    assert (mean, n) == (pytest.approx(0.95), 2) and std == pytest.approx(math.sqrt(2) * 0.01)
    assert row.change["per_class"][0] == pytest.approx(0.05)
    assert row.change["random"][0] == pytest.approx(-0.02)
    text = format_comparison(compare(find_runs([sweep])))
    assert "0.95 ± 0.014" in text and "ok" in text and "bad" in text


def test_undefined_metrics_are_not_averaged_as_numbers(sweep):
    row = next(r for r in compare(find_runs([sweep])).rows if r.metric == "clustering_sae/ari_kmeans")
    assert row.final["random"][2] == 0
    assert "n/a" in format_comparison(compare(find_runs([sweep])))


def test_explicit_grouping_and_cycle(sweep):
    comparison = compare(find_runs([sweep]), group_by=["seed"], cycle=0)
    row = next(r for r in comparison.rows if r.metric == "performance/accuracy")
    assert row.final["1"][0] == pytest.approx(0.91)


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no run folders"):
        find_runs([tmp_path])


# --- damaged and unusual inputs: one ArtifactError/ConfigError line naming the file or argument, never a traceback

RESULTS_DAMAGE = {
    "not JSON": b"\x00\xffgarbage{",
    "empty": b"",
    "truncated": b'{"cycle": 1, "metrics": {"performance": {"accur',
    "a list": b"[1, 2, 3]",
    "no metrics": b'{"cycle": 1}',
    "metrics not a map": b'{"cycle": 1, "metrics": [0.9]}',
    "a family not a map": b'{"cycle": 1, "metrics": {"performance": 0.9}}',
    "a metric not a number": b'{"cycle": 1, "metrics": {"performance": {"accuracy": "high"}}}',
    "a boolean metric": b'{"cycle": 1, "metrics": {"performance": {"accuracy": true}}}',
    "no cycle": b'{"metrics": {"performance": {"accuracy": 0.9}}}',
    "cycle not an integer": b'{"cycle": "1", "metrics": {"performance": {"accuracy": 0.9}}}',
    "another cycle's file": b'{"cycle": 0, "metrics": {"performance": {"accuracy": 0.9}}}',
}


@pytest.mark.parametrize("damage", RESULTS_DAMAGE)
def test_a_damaged_results_file_is_named_with_how_to_rewrite_it(sweep, damage):
    path = sweep / "2" / "results" / "cycle_1.json"
    path.write_bytes(RESULTS_DAMAGE[damage])
    with pytest.raises(ArtifactError) as caught:
        compare(find_runs([sweep]))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert f"scripts/evaluate.py run_dir={sweep / '2'} eval_cycle=1" in message


CONFIG_DAMAGE = {
    "garbage bytes": b"\x00\xff\xfe binary \x00",
    "empty": b"",
    "only a comment": b"# nothing here\n",
    "truncated": b"seed: 0\nsharpening: {type: per_cl",
    "bad indentation": b"seed: 0\n  sharpening:\n type: x\n",
    "a list": b"- seed\n- 0\n",
    "a scalar": b"just some text\n",
}


@pytest.mark.parametrize("damage", CONFIG_DAMAGE)
def test_a_damaged_config_is_named_with_what_to_do(sweep, damage):
    path = sweep / "3" / "config.yaml"
    path.write_bytes(CONFIG_DAMAGE[damage])
    with pytest.raises(ArtifactError) as caught:
        find_runs([sweep])
    message = str(caught.value)
    assert str(path) in message and "is damaged" in message and "\n" not in message
    assert "restore it" in message and f"move {sweep / '3'} out of the folders being compared" in message


def test_missing_folders_and_files_given_as_folders_are_named(sweep):
    with pytest.raises(ArtifactError, match=r"nope does not exist; give run folders or sweep folders"):
        find_runs([sweep, sweep / "nope"])
    with pytest.raises(ArtifactError, match=r"cycle_0.json is a file, not a folder; give the run folder that holds it"):
        find_runs([sweep / "0" / "results" / "cycle_0.json"])
    with pytest.raises(ArtifactError, match="a results folder without config.yaml"):
        find_runs([sweep / "0" / "results"])


def test_stray_files_and_hidden_folders_are_not_runs_or_results(sweep):
    (sweep / "0" / "results" / "cycle_best.json").write_text("not results")
    (sweep / "0" / "results" / "cycle_1.json.bak").write_text("old")
    hidden = sweep / "0" / ".hydra"
    hidden.mkdir()
    (hidden / "config.yaml").write_text("garbage: [")
    runs = find_runs([sweep, sweep / "0"])  # a run given twice (itself and in its sweep) counts once
    assert len(runs) == 4 and sorted(next(r for r in runs if r.folder.name == "0").by_cycle) == [0, 1]


def test_runs_without_results_yet_are_left_out_and_said(sweep):
    (sweep / "4").mkdir()
    (sweep / "4" / "config.yaml").write_text(yaml.safe_dump({"seed": 2, "sharpening": {"type": "random"}}))
    comparison = compare(find_runs([sweep]))
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"per_class": 2, "random": 2}
    text = format_comparison(comparison)
    assert f"note: left out 1 run without results yet (still running, or failed before cycle 0 was evaluated): {sweep / '4'}" in text
    with pytest.raises(ArtifactError, match=r"no results yet in .*4 \(results/cycle_N.json is written"):
        compare(find_runs([sweep / "4"]))


# --- --by


@pytest.mark.parametrize("key, close", [("sharpening.typ", "sharpening.type"), ("sharpening_type", "sharpening.type"),
                                        ("Sharpening.Type", "sharpening.type"), ("top_k_pct", None),
                                        ("sharpening", "sharpening.top_k_pct, sharpening.type")])
def test_an_unknown_grouping_key_is_refused_with_the_closest_ones(sweep, key, close):
    with pytest.raises(ConfigError) as caught:
        compare(find_runs([sweep]), group_by=[key])
    message = str(caught.value)
    assert message.startswith(f"--by {key}: not a setting of any run; ") and "\n" not in message
    if close:
        assert close in message
    assert message.endswith("settings that differ between these runs: sharpening.type")


def test_a_grouping_key_only_some_runs_have_is_said_not_grouped_as_none(sweep):
    make_run(sweep / "4", 0, "per_class", [0.9, 0.91], extra={"sae": {"k": 8}})
    make_run(sweep / "5", 1, "per_class", [0.9, 0.93], extra={"sae": {"k": None}})
    comparison = compare(find_runs([sweep]), group_by=["sae.k"])
    assert {name: len(runs) for name, runs in comparison.groups.items()} == {"unset": 4, "8": 1, "null": 1}
    text = format_comparison(comparison)
    assert "note: sae.k is not a setting of 4 of 6 runs" in text and "'unset'" in text
    assert "None" not in text


def test_mixed_sweeps_group_by_every_setting_that_differs(tmp_path):
    make_run(tmp_path / "a" / "0", 0, "per_class", [0.9, 0.92], extra={"sae": {"type": "relu", "l1_coefficient": 0.01}})
    make_run(tmp_path / "b" / "0", 0, "per_class", [0.9, 0.93], extra={"sae": {"type": "topk", "k": 8}})
    comparison = compare(find_runs([tmp_path / "a", tmp_path / "b"]))
    assert comparison.group_by == ["sae.k", "sae.l1_coefficient", "sae.type"]
    assert list(comparison.groups) == ["unset, 0.01, relu", "8, unset, topk"]
    assert comparison.notes == [
        f"sae.k is not a setting of 1 of 2 runs ({tmp_path / 'a' / '0'}); their group says 'unset'",
        f"sae.l1_coefficient is not a setting of 1 of 2 runs ({tmp_path / 'b' / '0'}); their group says 'unset'"]


# --- --cycle and runs whose cycles differ


@pytest.mark.parametrize("cycle", [2, 3, 100])
def test_a_cycle_past_some_runs_last_is_refused_naming_them(sweep, cycle):
    with pytest.raises(ConfigError) as caught:
        compare(find_runs([sweep]), cycle=cycle)
    message = str(caught.value)
    assert message.startswith(f"--cycle {cycle}: no results for cycle {cycle} in 4 of 4 runs (")
    assert f"{sweep / '0'} has 0, 1" in message and message.endswith("cycles every run has: 0, 1")


def test_a_cycle_only_one_run_lacks_is_refused(sweep):
    make_run(sweep / "4", 2, "random", [0.9, 0.9, 0.95, 0.96])
    compare(find_runs([sweep]), cycle=1)  # every run has cycle 1
    with pytest.raises(ConfigError, match=r"--cycle 3: no results for cycle 3 in 4 of 5 runs .*; and 1 more\); "
                                          r"cycles every run has: 0, 1$"):
        compare(find_runs([sweep]), cycle=3)


@pytest.mark.parametrize("cycle", [-1, -5])
def test_a_negative_cycle_is_refused(sweep, cycle):
    with pytest.raises(ConfigError, match=rf"^--cycle {cycle}: cycles are numbered from 0; these runs have cycles 0, 1$"):
        compare(find_runs([sweep]), cycle=cycle)


def test_runs_ending_at_different_cycles_are_said(sweep):
    make_run(sweep / "4", 2, "random", [0.9, 0.9, 0.95], max_cycles=3)  # still running: cycle 3 to come
    comparison = compare(find_runs([sweep]))
    assert comparison.cycles[sweep / "4"] == 2 and comparison.cycles[sweep / "0"] == 1
    text = format_comparison(comparison)
    assert "values at each run's last cycle" in text
    assert "note: runs end at different cycles (cycle 1: 4 runs, cycle 2: 1 run)" in text
    assert "--cycle 1 compares every run at cycle 1" in text
    assert f"note: 1 run stops before cycle.max_cycles (still running, or stopped): {sweep / '4'} has cycles 0-2 of 0-3" in text


def test_runs_without_cycle_0_have_no_change_and_say_so(sweep):
    make_run(sweep / "4", 2, "random", [0.97], cycles=[1])
    comparison = compare(find_runs([sweep]))
    row = next(r for r in comparison.rows if r.metric == "performance/accuracy")
    assert row.final["random"][2] == 3 and row.change["random"][2] == 2
    assert row.change["random"][0] == pytest.approx(-0.02)  # the two runs that have both cycles
    text = format_comparison(comparison)
    assert f"note: 1 run has no cycle 0 results, so no Δ since cycle 0: {sweep / '4'}" in text
    assert "-0.02 ± 0 (n=2)" in text


# --- what the table claims


def test_a_group_of_one_run_shows_its_value_and_n_not_a_zero_spread(sweep):
    comparison = compare(find_runs([sweep]), group_by=["seed", "sharpening.type"])
    assert [len(g) for g in comparison.groups.values()] == [1, 1, 1, 1]
    lines = format_comparison(comparison).splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert not any("±" in line for line in lines[lines.index(header):])  # only the legend above says ±
    assert "0, per_class (n=1)" in header and "1, random (n=1)" in header
    accuracy = next(line for line in lines if line.startswith("performance/accuracy"))
    assert [cell.strip() for cell in accuracy.split("|")[1:]] == ["0.94", "0.96", "0.88", "0.9"]


def test_headers_show_n_per_group_and_cells_show_fewer_defined(sweep):
    write_json(sweep / "1" / "results" / "cycle_1.json",
               {"cycle": 1, "metrics": {"performance": {"accuracy": None}, "clustering_sae": {"ari_kmeans": None}}})
    text = format_comparison(compare(find_runs([sweep])))
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert "per_class (n=2)" in header and "random (n=2)" in header
    accuracy = next(line for line in text.splitlines() if line.startswith("performance/accuracy"))
    assert "0.94 (n=1)" in accuracy and "0.89 ± 0.014" in accuracy
    assert "sample std" in text and "not a confidence interval" in text


def test_non_finite_values_are_undefined_not_averaged(sweep):
    (sweep / "1" / "results" / "cycle_1.json").write_text(
        '{"cycle": 1, "metrics": {"performance": {"accuracy": Infinity}, "clustering_sae": {"ari_kmeans": NaN}}}')
    row = next(r for r in compare(find_runs([sweep])).rows if r.metric == "performance/accuracy")
    assert row.final["per_class"][0] == pytest.approx(0.94) and row.final["per_class"][2] == 1
    assert row.change["per_class"][0] == pytest.approx(0.04) and row.change["per_class"][2] == 1


def test_a_degenerate_sae_is_left_out_of_the_sae_metrics_with_a_note(tmp_path):
    """A cycle whose SAE has no firing latent reads `sae/mse 0`: averaging it would call the change "ok"."""
    make_run(tmp_path / "0", 0, "per_class", [0.90, 0.94])
    make_run(tmp_path / "1", 1, "per_class", [0.90, 0.96])
    for run, mse in (("0", [0.5, 0.0]), ("1", [0.5, 0.4])):
        for cycle in (0, 1):
            path = tmp_path / run / "results" / f"cycle_{cycle}.json"
            data = json.loads(path.read_text())
            data["metrics"]["sae"] = {"mse": mse[cycle]}
            data["sae_degenerate"] = run == "0" and cycle == 1
            write_json(path, data)
    comparison = compare(find_runs([tmp_path]))
    row = next(r for r in comparison.rows if r.metric == "sae/mse")
    assert row.final["all runs"][:3:2] == (pytest.approx(0.4), 1)  # only the healthy run's value
    accuracy = next(r for r in comparison.rows if r.metric == "performance/accuracy")
    assert accuracy.final["all runs"][2] == 2  # the degenerate run's other metrics still count
    assert any("degenerate SAE" in note and "cycle 1" in note for note in comparison.notes)
