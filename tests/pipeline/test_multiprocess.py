"""`experiment=smoke` with 2 processes through README's CPU command (`torchrun --standalone --nproc_per_node 2
scripts/train_cycle.py ...`) against the same run in one process: it finishes, says it ran 2 processes, writes each
log line and each file once, and its results match within README's stated tolerance (see RELATIVE). A warning every
process computes and an error found before the run starts are printed once. A tiny BERT (whose pooler the head never
reads: DDP stopped at the second step) trains with 2 processes and gradient accumulation as with one."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORD = re.compile(r"^\[[^\]]+\]\[([^\]]+)\]\[(\w+)\] - (.*)$")

# README "Several processes": batch sizes are global and each process's gradient is weighted by its rows, so two
# processes take the single-process steps up to floating-point order (sums over processes, 1 vs 2 threads). Measured
# on experiment=smoke, seeds 0-4: accuracies equal, SAE mse within 5.1e-7 relative, L0 equal, CSI within 9e-8; the
# bounds below leave a wide margin for other CPUs' kernels. An accuracy may move by one test example (a logit near
# a tie), as the probe's accuracy did for 2 seeds out of 5 (not compared here: a fitted classifier on the codes).
RELATIVE = 1e-4
CYCLE_METRICS = ("sae/mse", "sae/l0", "sae/explained_variance", "monosemanticity_sae/csi_mean",
                 "monosemanticity_sae/u_mean", "performance/loss")


def _launch(run_dir: Path, processes: int, *overrides: str, base=("experiment=smoke",)) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command = ([*launcher, "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable])
    return subprocess.run([*command, "scripts/train_cycle.py", *base, f"run_dir={run_dir}", *overrides], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    done = {n: (folder / f"p{n}", _launch(folder / f"p{n}", n)) for n in (1, 2)}
    for n, (_, result) in done.items():
        assert result.returncode == 0, f"{n} processes: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return done


def _records(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(RECORD.match, text.splitlines()) if m]


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        out |= _flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_the_run_says_it_has_two_processes(runs):
    for n, pattern in ((1, r"\(device cpu, processes: 1\)$"),
                       (2, r"\(device cpu:?\d*, processes: 2 \(MULTI_CPU, gloo\)\)$")):
        run_dir, result = runs[n]
        lines = [r[2] for r in _records((run_dir / "train_cycle.log").read_text()) if r[2].startswith("run folder:")]
        assert len(lines) == 1 and re.search(pattern, lines[0]), lines
        assert [r[2] for r in _records(result.stdout) if r[2].startswith("run folder:")] == lines


def test_every_log_line_is_written_once(runs):
    (one_dir, one), (two_dir, two) = runs[1], runs[2]
    one_log = _records((one_dir / "train_cycle.log").read_text())
    two_log = _records((two_dir / "train_cycle.log").read_text())
    assert [r[:2] for r in two_log] == [r[:2] for r in one_log]  # the same records, in order: none doubled
    console = _records(two.stdout)  # the main process's lines only, each once (as many as with one process)
    assert [r[:2] for r in console] == [r[:2] for r in _records(one.stdout)] and console[-len(two_log):] == two_log
    assert not [line for line in two.stdout.splitlines() if line.startswith("[rank ")]
    assert all(count == 1 for count in Counter(r[2] for r in two_log if "saved" in r[2]).values())


def test_the_run_folder_holds_one_of_each_artifact(runs):
    (one_dir, _), (two_dir, _) = runs[1], runs[2]
    assert _files(two_dir) == _files(one_dir)
    assert not [f for f in _files(two_dir) if f.endswith((".tmp", ".old"))]
    for cycle in (0, 1):  # global batches: the same number of optimiser steps as one process
        one = json.loads((one_dir / f"results/auxiliary_cycle_{cycle}.json").read_text())["budget"]
        two = json.loads((two_dir / f"results/auxiliary_cycle_{cycle}.json").read_text())["budget"]
        assert two == one


def test_results_match_one_process_within_the_stated_tolerance(runs):
    (one_dir, _), (two_dir, _) = runs[1], runs[2]
    for cycle in (0, 1, 2):
        one = json.loads((one_dir / f"results/cycle_{cycle}.json").read_text())
        two = json.loads((two_dir / f"results/cycle_{cycle}.json").read_text())
        a, b = _flat(one["metrics"]), _flat(two["metrics"])
        one_example = 1 / one["num_examples"]
        for key in ("performance/accuracy", "performance/spliced_accuracy"):
            assert abs(a[key] - b[key]) <= one_example + 1e-12, (cycle, key, a[key], b[key])
        for key in CYCLE_METRICS:
            assert b[key] == pytest.approx(a[key], rel=RELATIVE, abs=1e-9), (cycle, key, a[key], b[key])


# --- what every process computes alike is printed once ---------------------------------------------------------------
def test_a_warning_every_process_computes_is_printed_once(tmp_path):
    result = _launch(tmp_path / "run", 2, "sharpening=class_mean", "sharpening.top_k=3", "cycle.max_cycles=1",
                     "model.epochs=1", "sae.epochs=1", "cycle.epochs=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert both.count("sharpening.top_k=3 is not used by sharpening.type=class_mean") == 1, both[-3000:]
    assert "[rank 1]" not in both  # rank 1 printed no INFO line and no warning


def test_an_error_found_before_the_run_starts_is_printed_once(runs, tmp_path):
    one_dir, _ = runs[1]  # its SAE reads the 16-wide layer of model.hidden_sizes=[32,16]; this model's is 8 wide
    result = _launch(tmp_path / "run", 2, "model.hidden_sizes=[32,8]", f"inputs.sae={one_dir}/checkpoints/sae_cycle_0")
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error: " in line]
    assert len(errors) == 1 and "reads 16-dim activations but the model's target layer has 8" in errors[0], errors
    assert not errors[0].startswith("[rank ") and "terminate called" not in result.stderr  # a clean exit (code 2)
    # torchrun ends the slower process (SIGTERM, -15) once the first exits: no process may abort (-6)
    assert re.findall(r"exitcode\s+: (-?\d+)", result.stderr) in (["2", "2"], ["-15", "2"], ["2", "-15"])
    assert not (tmp_path / "run").exists()


def test_explicit_inputs_are_imported_by_every_process_without_a_deadlock(runs, tmp_path):
    """inputs.model and inputs.sae are copied in once by the main process while the others wait; the activations
    stage (main-only work) used to wait for that copy a second time, alone, and hang for good. The run finishes
    and uses the given SAE, as with one process."""
    one_dir, _ = runs[1]
    given = (f"inputs.model={one_dir}/checkpoints/model_cycle_1", f"inputs.sae={one_dir}/checkpoints/sae_cycle_1",
             "cycle.max_cycles=0")
    results = {}
    for n in (1, 2):
        result = _launch(tmp_path / f"p{n}", n, *given)
        assert result.returncode == 0, f"{n} processes: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        results[n] = _flat(json.loads((tmp_path / f"p{n}" / "results" / "cycle_0.json").read_text())["metrics"])
    reference = _flat(json.loads((one_dir / "results" / "cycle_1.json").read_text())["metrics"])
    for key in ("sae/mse", "sae/l0", "performance/accuracy"):  # the given model and SAE, not fresh ones
        assert results[2][key] == pytest.approx(results[1][key], rel=RELATIVE) == pytest.approx(reference[key], rel=RELATIVE)


# --- a transformer with a parameter off its forward path ---------------------------------------------------------------
TEXT_WORDS = ["good", "bad", "film", "plot", "great", "awful", "the", "a"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A local SST-2-like folder and a tiny random 2-block BERT (a MiniLM in small: a pooler the head does not read)
    without dropout, so 2 processes must give one process's numbers; no download, no ../shared."""
    import numpy as np
    import torch
    from transformers import AutoModel, BertConfig

    from tests.data.test_data_text import word_tokenizer_folder, write_tsv

    root = tmp_path_factory.mktemp("tiny_bert")
    rng = np.random.default_rng(0)
    rows = [(" ".join(rng.choice(TEXT_WORDS, size=rng.integers(2, 7))), int(rng.integers(0, 2))) for _ in range(120)]
    (root / "data").mkdir()
    write_tsv(root / "data" / "train.tsv", rows)
    write_tsv(root / "data" / "dev.tsv", rows[:40])
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, vocab_size=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    AutoModel.from_config(config).save_pretrained(root / "bert")
    word_tokenizer_folder(root / "bert", TEXT_WORDS)
    settings = ["model=minilm", f"model.pretrained={root / 'bert'}", "model.head_dropout=0", "dataset=sst2",
                f"dataset.path={root / 'data'}", "dataset.max_length=8", "model.epochs=2", "model.batch_size=16",
                "model.gradient_accumulation_steps=2", "sae.epochs=2", "sae.expansion_factor=2", "sae.batch_size=32",
                "cycle.max_cycles=1", "cycle.epochs=1", "wandb.mode=disabled", "progress=false", "device=cpu",
                "plots=false"]
    done = {n: (root / f"p{n}", _launch(root / f"p{n}", n, base=settings)) for n in (1, 2)}
    for n, (_, result) in done.items():
        assert result.returncode == 0, f"{n} processes: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return root / "bert", done


def test_a_transformer_with_an_unused_pooler_trains_with_two_processes_as_with_one(tiny_bert):
    import torch
    from safetensors.torch import load_file

    pretrained, runs = tiny_bert
    (one_dir, _), (two_dir, two) = runs[1], runs[2]
    assert "processes: 2 (MULTI_CPU, gloo)" in two.stdout
    log = (two_dir / "train_cycle.log").read_text()
    assert log.count("are not trained (backbone.pooler.dense.bias, backbone.pooler.dense.weight)") == 2  # 2 trainings
    original = load_file(pretrained / "model.safetensors")
    for run_dir in (one_dir, two_dir):
        models = [load_file(run_dir / f"checkpoints/model_cycle_{c}/weights.safetensors") for c in (0, 1)]
        for weights in models:
            for name in ("pooler.dense.weight", "pooler.dense.bias"):  # the pooler as it was, the rest trained
                assert torch.equal(weights[f"backbone.{name}"], original[name])
            assert not torch.equal(weights["backbone.embeddings.word_embeddings.weight"],
                                   original["embeddings.word_embeddings.weight"])
        assert not torch.equal(models[0]["head.weight"], models[1]["head.weight"])
    for cycle in (0, 1):
        one = json.loads((one_dir / f"results/cycle_{cycle}.json").read_text())
        two = json.loads((two_dir / f"results/cycle_{cycle}.json").read_text())
        a, b = _flat(one["metrics"]), _flat(two["metrics"])
        assert abs(a["performance/accuracy"] - b["performance/accuracy"]) <= 1 / one["num_examples"] + 1e-12
        for key in CYCLE_METRICS:
            assert b[key] == pytest.approx(a[key], rel=RELATIVE, abs=1e-9), (cycle, key, a[key], b[key])

