"""`compare.py --baseline`: paired differences by seed (evaluation/paired.py, evaluation/compare_paired.py) against
hand-computed cases, the marking, the pairing notes, the baseline selector, the CSV and the PNG."""

from __future__ import annotations

import csv
import io
import math

import pytest
import yaml
from PIL import Image

from sae_ception.errors import ConfigError
from sae_ception.evaluation.compare import compare, find_runs
from sae_ception.evaluation.compare_paired import (CSV_COLUMNS, figure_metrics, format_paired, paired_comparison,
                                                   paired_csv, select_baseline, slug, write_paired)
from sae_ception.evaluation.paired import paired_difference
from sae_ception.utils.io import write_json

# Student's t quantiles in closed form (not from scipy, which the code uses): for 1 degree of freedom the t
# distribution is Cauchy, t_p = tan(π(p − ½)); for 2, t_p = (2p − 1)·√(2 / (4p(1 − p))).
T_975_DF1 = math.tan(math.pi * 0.475)  # 12.7062...
T_975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # 4.3027...


# --- the statistics


def test_three_pairs_by_hand():
    """d = 1, 2, 6: mean 3, deviations -2, -1, 3, sd = √(14/2) = √7, CI = 3 ± t(0.975, 2)·√7/√3."""
    diff = paired_difference([1.0, 2.0, 6.0])
    half = T_975_DF2 * math.sqrt(7) / math.sqrt(3)
    assert T_975_DF2 == pytest.approx(4.303, abs=5e-4)
    assert diff.n == 3 and abs(diff.mean - 3) < 1e-9 and abs(diff.sd - math.sqrt(7)) < 1e-9
    assert abs(diff.low - (3 - half)) < 1e-9 and abs(diff.high - (3 + half)) < 1e-9
    assert not diff.excludes_zero  # 3 − 6.57 < 0 < 3 + 6.57


def test_two_pairs_by_hand_and_an_interval_above_zero():
    diff = paired_difference([1.0, 3.0])  # mean 2, sd √2, CI 2 ± t(0.975, 1)·√2/√2
    assert abs(diff.low - (2 - T_975_DF1)) < 1e-9 and abs(diff.high - (2 + T_975_DF1)) < 1e-9
    tight = paired_difference([0.9, 1.0, 1.1])  # mean 1, sd 0.1, CI 1 ± 4.3027·0.1/√3 = [0.7516, 1.2484]
    assert abs(tight.low - (1 - T_975_DF2 * 0.1 / math.sqrt(3))) < 1e-9 and tight.excludes_zero
    below = paired_difference([-0.9, -1.0, -1.1])
    assert below.excludes_zero and below.high < 0


def test_one_pair_has_no_interval_and_none_has_nothing():
    one = paired_difference([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    assert not one.has_interval and not one.excludes_zero
    none = paired_difference([])
    assert none.n == 0 and math.isnan(none.mean) and not none.excludes_zero


def test_identical_differences_give_a_point_interval():
    same = paired_difference([0.2, 0.2, 0.2])
    assert same.low == pytest.approx(0.2) and same.high == pytest.approx(0.2) and same.excludes_zero
    zero = paired_difference([0.0, 0.0])
    assert not zero.excludes_zero  # identical runs: [0, 0] does not exclude 0


@pytest.mark.parametrize("bad", [[1.0, math.nan], [math.inf, 1.0]])
def test_non_finite_differences_are_refused(bad):
    with pytest.raises(ValueError, match="must be finite"):
        paired_difference(bad)


# --- runs


def run(folder, seed, sharpening, metrics, extra=None):
    """A run folder: `metrics` maps `family/name` to its value per cycle ([cycle 0, cycle 1])."""
    folder.mkdir(parents=True)
    config = {"sharpening": {"type": sharpening}, "wandb": {"mode": "disabled"}, **(extra or {})}
    if seed is not None:
        config["seed"] = seed
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for cycle in (0, 1):
        families = {}
        for key, values in metrics.items():
            family, name = key.split("/")
            families.setdefault(family, {})[name] = values[cycle]
        write_json(folder / "results" / f"cycle_{cycle}.json", {"cycle": cycle, "metrics": families})
    return folder


@pytest.fixture
def sweep(tmp_path):
    """Baseline `per_class` and `random`, 3 seeds each; folder names shuffled so that pairing must go by seed.
    random − per_class at cycle 1: accuracy 0.01, 0.02, 0.06 (seeds 0, 1, 2); loss −0.1 each (better);
    change since cycle 0: accuracy (0.01 − 0.0), (0.02 − 0.01), (0.06 − 0.02) = 0.01, 0.01, 0.04."""
    base = {0: (0.50, 0.60, 1.0), 1: (0.50, 0.70, 1.1), 2: (0.50, 0.80, 1.2)}  # seed: acc0, acc1, loss1
    start = {0: 0.50, 1: 0.51, 2: 0.52}  # the random runs' cycle-0 accuracy
    gain = {0: 0.01, 1: 0.02, 2: 0.06}
    for name, seed in (("c", 0), ("a", 1), ("b", 2)):
        acc0, acc1, loss = base[seed]
        run(tmp_path / f"base_{name}", seed, "per_class",
            {"performance/accuracy": [acc0, acc1], "performance/loss": [2.0, loss],
             "monosemanticity_sae/csi_q50": [0.1, 0.2]})
    for name, seed in (("a", 2), ("b", 0), ("c", 1)):
        acc0, acc1, loss = base[seed]
        run(tmp_path / f"rand_{name}", seed, "random",
            {"performance/accuracy": [start[seed], acc1 + gain[seed]], "performance/loss": [2.0, loss - 0.1],
             "monosemanticity_sae/csi_q50": [0.1, 0.2]})
    return tmp_path


def paired_of(folder, baseline="per_class", **kwargs):
    comparison = compare(find_runs([folder]), **kwargs)
    return paired_comparison(comparison, select_baseline(comparison, baseline))


def row(paired, metric):
    return next(r for r in paired.rows if r.metric == metric)


def test_differences_are_paired_by_seed_with_the_hand_computed_interval(sweep):
    paired = paired_of(sweep)
    assert paired.groups == ["random"] and [seed for seed, _, _ in paired.pairs["random"]] == [0, 1, 2]
    cell = row(paired, "performance/accuracy").at_cycle["random"]
    # d = 0.01, 0.02, 0.06: a hundredth of 1, 2, 6, so mean 0.03, CI 0.03 ± t(0.975, 2)·0.01·√7/√3
    half = T_975_DF2 * 0.01 * math.sqrt(7) / math.sqrt(3)
    assert cell.diff.n == 3 and abs(cell.diff.mean - 0.03) < 1e-9
    assert abs(cell.diff.low - (0.03 - half)) < 1e-9 and abs(cell.diff.high - (0.03 + half)) < 1e-9
    assert abs(cell.baseline_mean - 0.70) < 1e-9 and abs(cell.group_mean - 0.73) < 1e-9
    assert not cell.diff.excludes_zero and cell.verdict == ""
    change = row(paired, "performance/accuracy").change["random"].diff  # d = 0.01, 0.01, 0.04: mean 0.02, sd √3/100
    assert abs(change.mean - 0.02) < 1e-9 and abs(change.sd - math.sqrt(3) / 100) < 1e-9
    assert abs(change.high - (0.02 + T_975_DF2 * 0.01)) < 1e-9  # sd/√n = 0.01


def test_an_interval_excluding_zero_is_marked_with_its_direction(sweep):
    paired = paired_of(sweep)
    loss = row(paired, "performance/loss").at_cycle["random"]  # −0.1 for every seed: lower loss, better
    assert loss.diff.excludes_zero and loss.verdict == "better"
    worse = paired_of(sweep, baseline="random")  # the other way round: per_class has the higher loss
    assert row(worse, "performance/loss").at_cycle["per_class"].verdict == "worse"
    text = format_paired(paired)
    assert "paired by seed, mean difference [95% CI], * = interval excludes 0" in text
    line = lambda t, m: next(li for li in t.splitlines() if li.startswith(m))  # noqa: E731
    assert line(text, "performance/loss").endswith("-0.1 [-0.1, -0.1]* ok")
    assert "*" not in line(text, "performance/accuracy") and "+0.03 [" in line(text, "performance/accuracy")
    assert line(format_paired(worse), "performance/loss").endswith("+0.1 [+0.1, +0.1]* bad")


def test_quantiles_only_with_all(sweep):
    paired = paired_of(sweep)
    assert "csi_q50" not in format_paired(paired) and "csi_q50" not in paired_csv(paired)
    assert "csi_q50" in format_paired(paired, skip_quantiles=False)


def test_unpaired_seeds_are_noted_and_left_out(sweep):
    run(sweep / "rand_d", 7, "random", {"performance/accuracy": [0.5, 0.9], "performance/loss": [2, 1]})
    run(sweep / "base_d", 8, "per_class", {"performance/accuracy": [0.5, 0.9], "performance/loss": [2, 1]})
    paired = paired_of(sweep)
    assert [seed for seed, _, _ in paired.pairs["random"]] == [0, 1, 2]
    assert row(paired, "performance/accuracy").at_cycle["random"].diff.n == 3
    assert paired.notes == ["'random' vs 'per_class': only 'random' has seed 7; only 'per_class' has seed 8: "
                            "unpaired runs, left out of the paired differences"]
    assert f"note: {paired.notes[0]}" in format_paired(paired)


@pytest.mark.parametrize("where", ["rand", "base"])
def test_a_repeated_seed_is_ambiguous_noted_and_left_out(sweep, where):
    group = "random" if where == "rand" else "per_class"
    run(sweep / f"{where}_dup", 1, group, {"performance/accuracy": [0.5, 0.99], "performance/loss": [2, 1]})
    paired = paired_of(sweep)
    assert [seed for seed, _, _ in paired.pairs["random"]] == [0, 2]
    assert any(note.startswith(f"seed 1 is repeated in group '{group}' (") and "ambiguous pairing" in note
               and str(sweep / f"{where}_dup") in note for note in paired.notes)
    assert not any("only" in note for note in paired.notes)  # seed 1 is not "missing" from either side
    cell = row(paired, "performance/accuracy").at_cycle["random"]
    assert cell.diff.n == 2 and abs(cell.diff.mean - 0.035) < 1e-9  # seeds 0 and 2: 0.01, 0.06
    assert "(n=2)" in format_paired(paired)


def test_runs_without_a_seed_are_noted(sweep):
    run(sweep / "rand_none", None, "random", {"performance/accuracy": [0.5, 0.9], "performance/loss": [2, 1]})
    paired = paired_of(sweep)
    assert paired.notes == [f"1 run has no seed setting in group 'random', so no pair: {sweep / 'rand_none'}; "
                            "left out of the paired differences"]
    assert len(paired.pairs["random"]) == 3


def test_a_group_with_no_pair_and_a_single_pair(tmp_path):
    run(tmp_path / "a", 0, "per_class", {"performance/accuracy": [0.5, 0.6]})
    run(tmp_path / "b", 0, "random", {"performance/accuracy": [0.5, 0.65]})
    run(tmp_path / "c", 5, "none", {"performance/accuracy": [0.5, 0.7]})
    paired = paired_of(tmp_path)
    assert row(paired, "performance/accuracy").at_cycle["random"].diff.n == 1
    assert row(paired, "performance/accuracy").at_cycle["none"].diff.n == 0
    assert "no run of 'none' pairs with a run of 'per_class' by seed: its cells are n/a" in paired.notes
    text = format_paired(paired)
    accuracy = next(li for li in text.splitlines() if li.startswith("performance/accuracy"))
    assert [c.strip() for c in accuracy.split("|")[1:]] == ["+0.05 (no CI)", "n/a"]


# --- choosing the baseline


@pytest.fixture
def two_keys_folder(tmp_path):
    """Groups by two keys: (random, 0.1), (random, 0.2), (per_class, 0.1), seeds 0 and 1."""
    for i, (kind, pct) in enumerate([("random", 0.1), ("random", 0.2), ("per_class", 0.1)]):
        for seed in (0, 1):
            run(tmp_path / f"{i}_{seed}", seed, kind, {"performance/accuracy": [0.5, 0.6 + 0.01 * i]},
                extra={"sharpening": {"type": kind, "top_k_pct": pct}})
    return tmp_path


@pytest.fixture
def two_keys(two_keys_folder):
    return compare(find_runs([two_keys_folder]))


@pytest.mark.parametrize("selector, label", [
    ("0.1, random", "0.1, random"),  # the labels follow the sorted grouping keys: top_k_pct first
    ("sharpening.type=per_class", "0.1, per_class"),
    ("sharpening.type=random,sharpening.top_k_pct=0.2", "0.2, random"),
    ("sharpening.top_k_pct=0.20, sharpening.type=random", "0.2, random"),  # read as YAML: 0.20 is 0.2
])
def test_a_baseline_by_label_or_selector(two_keys, selector, label):
    assert select_baseline(two_keys, selector) == label


@pytest.mark.parametrize("selector, what", [
    ("nope", "no group matches"), ("random, 0.1", "no group matches"), ("sharpening.type=class_mean", "no group matches"),
    ("sharpening.type=random", "2 groups match ('0.1, random', '0.2, random')"), ("=x", "no group matches"),
])
def test_a_baseline_that_names_no_single_group_is_one_line_naming_the_groups(two_keys, selector, what):
    with pytest.raises(ConfigError) as caught:
        select_baseline(two_keys, selector)
    message = str(caught.value)
    assert message.startswith(f"--baseline {selector}: {what}; the groups (by sharpening.top_k_pct, "
                              "sharpening.type) are '0.1, random', '0.2, random', '0.1, per_class'")
    assert "\n" not in message and "e.g. sharpening.top_k_pct=0.1" in message


@pytest.mark.parametrize("selector", ["cycle.aux_loss_weight=[0.1,1.0]", "cycle.aux_loss_weight=[0.1, 1.0]",
                                      "[0.1, 1.0]", "sharpening.type=per_class,cycle.aux_loss_weight=[0.1,1.0]"])
def test_a_list_valued_setting_is_labelled_and_selected_as_on_the_command_line(tmp_path, selector):
    for i, weights in enumerate([[0.1, 1.0], [0.1], 0.1]):
        for seed in (0, 1):
            run(tmp_path / f"{i}_{seed}", seed, "per_class", {"performance/accuracy": [0.5, 0.6 + 0.01 * i]},
                extra={"cycle": {"aux_loss_weight": weights}})
    comparison = compare(find_runs([tmp_path]))
    assert set(comparison.groups) == {"[0.1, 1.0]", "[0.1]", "0.1"}
    assert select_baseline(comparison, selector) == "[0.1, 1.0]"
    assert select_baseline(comparison, "cycle.aux_loss_weight=[0.1]") == "[0.1]"


def test_the_only_group_cannot_be_a_baseline(tmp_path):
    run(tmp_path / "a", 0, "per_class", {"performance/accuracy": [0.5, 0.6]})
    comparison = compare(find_runs([tmp_path]))
    with pytest.raises(ConfigError, match=r"^--baseline all runs: it is the only group"):
        select_baseline(comparison, "all runs")


def test_slugs_are_file_names():
    assert slug("0.1, random") == "0.1_random" and slug("0.1") == "0.1"
    assert slug("a/b c").startswith("a_b_c-") and slug("//").startswith("baseline-")
    assert slug("[0.1]") != slug("0.1") and slug("[0.1]").startswith("0.1-")  # a list never shares a file name


# --- the CSV and the PNG


def test_csv_has_one_row_per_group_metric_and_quantity(sweep):
    paired = paired_of(sweep)
    rows = list(csv.DictReader(io.StringIO(paired_csv(paired))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert CSV_COLUMNS[:9] == ("group", "metric", "n", "mean_diff", "ci_low", "ci_high", "excludes_zero",
                               "baseline_mean", "group_mean")
    assert [(r["group"], r["metric"], r["quantity"]) for r in rows] == [
        ("random", m, q) for m in ("performance/accuracy", "performance/loss")
        for q in ("at_cycle", "change_since_cycle_0")]
    accuracy, loss = rows[0], rows[2]
    half = T_975_DF2 * 0.01 * math.sqrt(7) / math.sqrt(3)
    assert accuracy["n"] == "3" and abs(float(accuracy["mean_diff"]) - 0.03) < 1e-9
    assert abs(float(accuracy["ci_low"]) - (0.03 - half)) < 1e-9 and abs(float(accuracy["ci_high"]) - (0.03 + half)) < 1e-9
    assert accuracy["excludes_zero"] == "False" and accuracy["verdict"] == ""
    assert abs(float(accuracy["baseline_mean"]) - 0.70) < 1e-9 and abs(float(accuracy["group_mean"]) - 0.73) < 1e-9
    assert loss["excludes_zero"] == "True" and loss["verdict"] == "better"


def test_csv_leaves_undefined_numbers_empty(tmp_path):
    run(tmp_path / "a", 0, "per_class", {"performance/accuracy": [0.5, 0.6]})
    run(tmp_path / "b", 0, "random", {"performance/accuracy": [0.5, 0.65]})
    first = next(csv.DictReader(io.StringIO(paired_csv(paired_of(tmp_path)))))
    assert first["n"] == "1" and first["ci_low"] == "" and first["ci_high"] == "" and first["excludes_zero"] == "False"


def test_the_png_and_csv_are_written_under_the_baselines_slug(sweep, tmp_path):
    paired = paired_of(sweep)
    out = tmp_path / "out" / "figs"
    written = write_paired(paired, out, figure_metrics(paired))
    assert written == [out / "paired_vs_per_class.csv", out / "paired_vs_per_class.png"]
    assert written[0].read_text() == paired_csv(paired)
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(written[1]) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert sorted(p.name for p in out.iterdir()) == ["paired_vs_per_class.csv", "paired_vs_per_class.png"]  # no temp files


def test_figure_metrics_default_to_the_headline_ones_the_runs_have(sweep):
    paired = paired_of(sweep)
    assert figure_metrics(paired) == ["performance/accuracy"]
    assert figure_metrics(paired, ["performance/loss", "monosemanticity_sae/csi_q50"]) == [
        "performance/loss", "monosemanticity_sae/csi_q50"]
    with pytest.raises(ConfigError, match=r"^--metrics performance/los: not a metric of these runs; the closest are "
                                          r"performance/loss"):
        figure_metrics(paired, ["performance/los"])


# --- --where: compare a slice of a larger sweep


def test_where_keeps_the_runs_with_those_settings(two_keys_folder):
    from sae_ception.evaluation.compare import where

    runs = find_runs([two_keys_folder])
    kept = where(runs, ["sharpening.type=random", "sharpening.top_k_pct=0.20"])  # 0.20 read as YAML: 0.2
    assert len(kept) == 2 and {r.settings["sharpening.top_k_pct"] for r in kept} == {0.2}
    assert where(runs, []) == runs


@pytest.mark.parametrize("conditions, message", [
    (["sharpening.type"], "--where sharpening.type: give key=value"),
    (["sharpening.typ=random"], "--where sharpening.typ=random: sharpening.typ is not a setting of any run; the closest are sharpening.type"),
    (["sharpening.type=class_mean"], "--where sharpening.type=class_mean: no run matches"),
])
def test_where_that_cannot_be_met_is_one_line(two_keys_folder, conditions, message):
    from sae_ception.evaluation.compare import where

    with pytest.raises(ConfigError) as caught:
        where(find_runs([two_keys_folder]), conditions)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
