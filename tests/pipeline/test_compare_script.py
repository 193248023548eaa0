"""scripts/compare.py as a user runs it: every bad input is one line on stderr with exit status 2 (no traceback),
and a reader that stops early (`| head`) ends it quietly."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, run_script
from tests.evaluation.test_compare import make_run
from sae_ception.utils.io import write_json

SCRIPT = PROJECT_ROOT / "scripts" / "compare.py"


@pytest.fixture
def sweep(tmp_path):
    make_run(tmp_path / "0", 0, "per_class", [0.90, 0.94])
    make_run(tmp_path / "1", 1, "per_class", [0.90, 0.96])
    make_run(tmp_path / "2", 0, "random", [0.90, 0.88])
    return tmp_path


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The script's main in this interpreter (a fresh one per case would cost seconds each)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    code = 0
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def damage_results(sweep):
    (sweep / "2" / "results" / "cycle_1.json").write_text('{"cycle": 1, "metrics": {"performance": {"accur')


def damage_config(sweep):
    (sweep / "1" / "config.yaml").write_bytes(b"\x00\xff garbage")


def empty_config(sweep):
    (sweep / "1" / "config.yaml").write_text("")


def wrong_shape(sweep):
    write_json(sweep / "0" / "results" / "cycle_0.json", {"cycle": 0, "metrics": {"performance": [0.9]}})


@pytest.mark.parametrize("damage, args, match", [
    (damage_results, ["SWEEP"], "2/results/cycle_1.json is damaged (not valid JSON"),
    (wrong_shape, ["SWEEP"], "0/results/cycle_0.json is damaged (metric family 'performance' is not a map of numbers)"),
    (damage_config, ["SWEEP"], "1/config.yaml is damaged (not valid YAML"),
    (empty_config, ["SWEEP"], "1/config.yaml is damaged (empty)"),
    (None, ["SWEEP", "--by", "sharpening.typo"], "--by sharpening.typo: not a setting of any run; the closest are sharpening.type"),
    (None, ["SWEEP", "--cycle", "2"], "--cycle 2: no results for cycle 2 in 3 of 3 runs"),
    (None, ["SWEEP", "--cycle", "-1"], "--cycle -1: cycles are numbered from 0"),
    (None, ["SWEEP", "SWEEP/nowhere"], "nowhere does not exist"),
    (None, ["SWEEP", "--baseline", "class_mean"],
     "--baseline class_mean: no group matches; the groups (by sharpening.type) are 'per_class', 'random'"),
    (None, ["SWEEP", "--baseline", "sharpening.type=class_mean"], "--baseline sharpening.type=class_mean: no group"),
    (None, ["SWEEP", "--baseline", "per_class", "--metrics", "performance/acc"],
     "--metrics performance/acc: not a metric of these runs; the closest are performance/accuracy"),
    (None, ["SWEEP", "--out", "SWEEP/figs"], "--out: only with --baseline GROUP"),
])
def test_each_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, sweep, damage, args, match):
    if damage is not None:
        damage(sweep)
    code, out, err = run_main(monkeypatch, capsys, *(a.replace("SWEEP", str(sweep)) for a in args))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    if damage in (damage_results, wrong_shape):
        assert "scripts/evaluate.py run_dir=" in err  # what to do about it


def test_the_table_in_a_fresh_interpreter_and_an_error_without_traceback(sweep):
    done = run_script("compare.py", str(sweep))
    assert done.returncode == 0 and done.stderr == ""
    assert "per_class (n=2)" in done.stdout and "random (n=1)" in done.stdout and "± 0 " not in done.stdout
    damage_results(sweep)
    failed = run_script("compare.py", str(sweep))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1


def big_sweep(folder, metrics: int = 2500):
    """One run whose table is far larger than a pipe's buffer (64 KiB), so `head` closes it mid-write."""
    make_run(folder / "0", 0, "per_class", [0.9, 0.95])
    family = {f"metric_{i}": i / metrics for i in range(metrics)}
    for cycle in (0, 1):
        write_json(folder / "0" / "results" / f"cycle_{cycle}.json", {"cycle": cycle, "metrics": {"wide": family}})


def test_piping_into_head_ends_quietly(tmp_path):
    big_sweep(tmp_path)
    done = subprocess.run(f'"{sys.executable}" "{SCRIPT}" "{tmp_path}" | head -3', shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert done.stdout.count("\n") == 3 and done.stdout.startswith("grouped by:")
    assert done.stderr == ""


def test_a_reader_that_closes_at_once_ends_it_quietly_with_status_0(tmp_path):
    big_sweep(tmp_path, metrics=50)  # even a short table: the pipe is closed before anything is written
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert err.decode() == "" and process.returncode == 0


def test_baseline_prints_the_paired_table_and_writes_csv_and_png(monkeypatch, capsys, sweep, tmp_path):
    make_run(sweep / "3", 1, "random", [0.90, 0.91])
    code, out, err = run_main(monkeypatch, capsys, sweep, "--baseline", "sharpening.type=per_class",
                              "--out", tmp_path / "figs")
    assert code == 0 and err == ""
    plain, paired = out.split("\n\n")
    assert plain.startswith("grouped by: sharpening.type")  # the plain table first, the paired one below
    assert paired.startswith("difference from the baseline group 'per_class', paired by seed, "
                             "mean difference [95% CI], * = interval excludes 0")
    accuracy = next(line for line in paired.splitlines() if line.startswith("performance/accuracy"))
    assert accuracy.endswith("| -0.055 [-0.119, +0.00853]")  # d = -0.06, -0.05: ± 12.706·0.00707/√2 = 0.0635
    csv_path, png_path = tmp_path / "figs" / "paired_vs_per_class.csv", tmp_path / "figs" / "paired_vs_per_class.png"
    assert paired.splitlines()[-2:] == [f"wrote {csv_path}", f"wrote {png_path}"]
    assert csv_path.read_text().startswith("group,metric,n,mean_diff,ci_low,ci_high,excludes_zero,baseline_mean,"
                                           "group_mean,")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_files_go_to_the_first_folder_by_default(monkeypatch, capsys, sweep):
    code, out, _ = run_main(monkeypatch, capsys, sweep, "--baseline", "random")
    assert code == 0 and f"wrote {sweep / 'paired_vs_random.csv'}" in out and (sweep / "paired_vs_random.png").is_file()
    assert "note: 'per_class' vs 'random': only 'per_class' has seed 1: unpaired runs" in out


# --- --wandb: the table as a wandb run in the compared runs' project and group
from sae_ception.evaluation.compare_wandb import TABLE_COLUMNS  # noqa: E402
from sae_ception.utils.tracking import GROUP_FILE  # noqa: E402
from tests.fake_wandb import wandb_calls  # noqa: E402


def logged_sweep(folder, project="proj", group="multirun/a_sweep"):
    """The `sweep` runs as made with wandb offline in `project`, each recording the sweep's group."""
    for name, seed, sharpening, accuracies in (("0", 0, "per_class", [0.90, 0.94]), ("1", 1, "per_class", [0.90, 0.96]),
                                              ("2", 0, "random", [0.90, 0.88])):
        make_run(folder / name, seed, sharpening, accuracies,
                 extra={"wandb": {"mode": "offline", "project": project, "entity": None, "group": None}})
        (folder / name / GROUP_FILE).write_text(group + "\n")
    return folder


def other_project(sweep):
    make_run(sweep / "3", 1, "random", [0.9, 0.9], extra={"wandb": {"mode": "offline", "project": "elsewhere"}})


@pytest.mark.parametrize("damage, args, match", [
    (None, ["SWEEP", "--wandb"], "--wandb: these runs were made with wandb.mode=disabled, so nothing would be logged; "
                                 "give --wandb-mode offline"),
    (None, ["SWEEP", "--wandb-mode", "offline"], "--wandb-mode offline: only with --wandb"),
    (None, ["SWEEP", "--wandb", "--wandb-mode", "onlin"], "--wandb-mode onlin: not a wandb mode; use one of offline, "
                                                          "online, disabled"),
    (other_project, ["SWEEP", "--wandb", "--wandb-mode", "offline"],
     "--wandb: the runs log to different wandb projects (sae-ception: 3 runs; elsewhere: 1 run)"),
])
def test_a_wandb_comparison_that_cannot_be_logged_is_refused_before_the_table(monkeypatch, capsys, sweep, damage,
                                                                              args, match, fake_wandb):
    test_each_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, sweep, damage, args, match)
    assert not fake_wandb.exists(), "wandb must not be started"


def test_wandb_gets_the_table_in_the_runs_project_and_sweep_group(monkeypatch, capsys, tmp_path, fake_wandb):
    sweep = logged_sweep(tmp_path / "a_sweep")
    code, out, err = run_main(monkeypatch, capsys, sweep, "--wandb")
    assert code == 0 and err == ""
    table, line = out.rstrip("\n").rsplit("\n", 1)
    assert table.startswith("grouped by: sharpening.type")
    assert line == (f"wandb: logged the comparison as compare-a_sweep to proj (offline, group multirun/a_sweep) at "
                    f"{sweep}/wandb/offline-run-fake")
    (init,) = wandb_calls(fake_wandb, "init")
    assert {k: init["kwargs"][k] for k in ("project", "entity", "group", "name", "job_type", "mode", "dir")} == {
        "project": "proj", "entity": None, "group": "multirun/a_sweep", "name": "compare-a_sweep",
        "job_type": "compare", "mode": "offline", "dir": str(sweep)}
    (log,) = wandb_calls(fake_wandb, "log")
    logged = log["data"]["compare/table"]
    assert logged["columns"] == TABLE_COLUMNS
    rows = {(r[0], r[1], r[2]): r[3:] for r in logged["data"]}
    mean, std, n, runs = rows[("per_class", "performance/accuracy", "at_cycle")]
    assert (mean, n, runs) == (pytest.approx(0.95), 2, 2) and std == pytest.approx(0.0141421, rel=1e-4)
    assert rows[("random", "performance/accuracy", "change_since_cycle_0")] == [pytest.approx(-0.02), None, 1, 1]
    assert rows[("random", "clustering_sae/ari_kmeans", "at_cycle")] == [None, None, 0, 1]  # undefined stays undefined
    assert wandb_calls(fake_wandb, "finish") != []


def test_wandb_with_a_baseline_also_gets_the_paired_rows_and_figure(monkeypatch, capsys, tmp_path, fake_wandb):
    sweep = logged_sweep(tmp_path / "a_sweep")
    make_run(sweep / "3", 1, "random", [0.90, 0.91], extra={"wandb": {"mode": "offline", "project": "proj"}})
    code, out, _ = run_main(monkeypatch, capsys, sweep, "--baseline", "per_class", "--wandb")
    assert code == 0 and "group" not in out.splitlines()[-1]  # run 3 recorded no group: the runs share none
    data = wandb_calls(fake_wandb, "log")[0]["data"]
    paired = data["compare/paired"]
    row = next(r for r in paired["data"] if r[1] == "performance/accuracy" and r[9] == "at_cycle")
    assert row[0] == "random" and row[2] == 2 and row[3] == pytest.approx(-0.055) and row[6] is False
    assert data["compare/paired_figure"]["path"] == str(sweep / "paired_vs_per_class.png")


def test_wandb_offline_writes_a_local_run_the_next_comparison_ignores(monkeypatch, capsys, sweep):
    code, out, err = run_main(monkeypatch, capsys, sweep, "--wandb", "--wandb-mode", "offline")
    assert code == 0 and err == "" and f"(offline) at {sweep}/wandb/offline-run-" in out
    assert len(list(sweep.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    again, out_again, _ = run_main(monkeypatch, capsys, sweep)
    assert again == 0 and out_again == out.rsplit("\n", 2)[0] + "\n"  # the same table: wandb's files are no run
