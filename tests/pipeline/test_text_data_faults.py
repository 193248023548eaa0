"""Whole runs on text files with the faults real files have: empty texts (with a tokenizer that adds no BOS, so
they give no token), unlabelled (-1) rows, spreadsheet CSVs with a byte-order mark; and broken labels, which
stop the run in one line before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sae_ception.stages.cycle import run_cycles
from tests.conftest import TEXT_TINY
from tests.data.test_data_text import word_tokenizer_folder, write_tsv
from tests.models.tiny_transformers import save_tiny
from tests.pipeline.helpers import expect_one_line_error, run_in_process

pytestmark = pytest.mark.slow

WORDS = ["good", "bad", "film", "plot", "great", "awful", "the", "a"]


def sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(WORDS, size=rng.integers(2, 7))), int(rng.integers(0, 2))) for _ in range(n)]


@pytest.fixture
def tiny_decoder(tmp_path):
    """A tiny random GPT-2 whose word-level tokenizer adds no BOS: an empty text gives no token at all."""
    model = save_tiny("gpt2", tmp_path / "gpt2")
    word_tokenizer_folder(model, WORDS)
    return model


def decoder_base(data, model):
    return [*TEXT_TINY, "model=gpt2_small", f"dataset.path={data}", f"model.pretrained={model}"]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_empty_texts_and_unlabelled_rows_run_a_cycle(tiny_decoder, tmp_path, caplog, pooling):
    """Length-grouped batches of only empty texts, token-level SAE, activations and top tokens all work."""
    data = tmp_path / "data"
    data.mkdir()
    empties = [("", i % 2) for i in range(24)] + [("   ", i % 2) for i in range(6)]
    write_tsv(data / "train.tsv", sentences(100) + empties + [(text, -1) for text, _ in sentences(10, seed=1)])
    write_tsv(data / "dev.tsv", sentences(20, seed=2) + [("", 0), ("", 1), ("unlabelled", -1)])
    caplog.set_level("WARNING")
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [f"model.pooling={pooling}", "model.group_by_length=true", "model.batch_size=8",
                                          "sae.token_level=true", "cycle.max_cycles=1", "analysis.enabled=true",
                                          "analysis.num_features=4", "analysis.top_k=3"],
                   base=decoder_base(data, tiny_decoder))
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "dropped 10 unlabelled rows (label -1) of 140" in messages and "dropped 1 unlabelled rows" in messages
    assert "30 of 130 texts are empty or whitespace only" in messages
    assert "texts give no token" in messages
    for cycle in (0, 1):
        result = json.loads((run_dir / "results" / f"cycle_{cycle}.json").read_text())
        assert result["num_examples"] == 22  # the dev file's labelled rows, its two empty texts included
        assert 0 <= result["metrics"]["performance"]["accuracy"] <= 1
    folder = run_dir / "activations" / "cycle_1"
    labels = np.load(folder / "test.labels.npy")
    assert set(labels.tolist()) <= {0, 1} and len(np.load(folder / "test.tokens.npy")) >= len(labels)
    assert np.isfinite(np.load(folder / "train.acts.npy")).all()
    assert (run_dir / "analysis" / "cycle_1" / "feature_report.json").is_file()


def test_minilm_reads_a_spreadsheet_csv_with_bom_crlf_unlabelled_rows_and_empty_texts(minilm, shared_sst2, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [line.split("\t") for line in (shared_sst2 / "train.tsv").read_text().splitlines()[1:201]]
    rows += [["", "0"], ["", "1"], ["  ", "1"], [rows[0][0], "-1"]]
    dev = [line.split("\t") for line in (shared_sst2 / "dev.tsv").read_text().splitlines()[1:41]]

    def csv_text(table):  # as a spreadsheet writes it: CRLF, a padded column name (and a BOM, below)
        import csv
        import io

        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows([["Sentence ", "label"], *table])
        return out.getvalue()

    (data / "train.csv").write_text(csv_text(rows), encoding="utf-8-sig")
    (data / "dev.csv").write_text(csv_text(dev), encoding="utf-8-sig")
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, ["dataset.text_column=Sentence", "cycle.max_cycles=0", "sae.token_level=true"],
                   base=[*TEXT_TINY, f"dataset.path={data}"])
    assert json.loads((run_dir / "results" / "cycle_0.json").read_text())["num_examples"] == 40


@pytest.mark.parametrize("bad,reason", [("-2", "is -2, a negative class"), ("1.5", "is '1.5', not an integer"),
                                        ("", "is empty"), ("pos", "is 'pos', not an integer")])
@pytest.mark.parametrize("stem", ["train", "dev"])
def test_a_broken_label_stops_the_run_in_one_line_before_anything_is_written(tiny_decoder, tmp_path, caplog, bad,
                                                                            reason, stem):
    data = tmp_path / "data"
    data.mkdir()
    tables = {"train": sentences(60), "dev": sentences(10, seed=3)}
    tables[stem][4] = ("the broken row", bad)
    for name, table in tables.items():
        write_tsv(data / f"{name}.tsv", table)
    run_dir = tmp_path / "run"
    message = expect_one_line_error(caplog, run_dir, [], f"{stem}.tsv line 6: the 'label' value {reason}",
                                    base=decoder_base(data, tiny_decoder))
    assert message.startswith("error: dataset.path: ") or "dataset.path: " in message
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "cache").exists()
