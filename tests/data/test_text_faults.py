"""Text files as people really have them: spreadsheet encodings and headers, unlabelled (-1) rows, broken
labels, empty texts; from local folders and from the hub. Every fault is caught while loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sae_ception.data import load_splits
from sae_ception.data.text import TextDatasetConfig
from sae_ception.errors import ArtifactError, ConfigError

SENTENCES = [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(40)]


def config(path, **overrides) -> TextDatasetConfig:
    return TextDatasetConfig(**{"name": "sst2", "path": None if path is None else str(path), "num_classes": 2,
                                "val_fraction": 0.25, **overrides})


def write(path, header, rows, sep=None, encoding="utf-8", newline="\n"):
    sep = sep or ("\t" if path.suffix == ".tsv" else ",")
    lines = [sep.join(header)] + [sep.join(map(str, row)) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode(encoding))  # one encode: one BOM, at the start
    return path


def labelled(n=40, start=0):
    return [(SENTENCES[i % len(SENTENCES)], i % 2) for i in range(start, start + n)]


# --- encodings and headers as spreadsheet programs write them ------------------------------------------------
SPREADSHEET_VARIANTS = {
    "utf-8 BOM": {"encoding": "utf-8-sig"},
    "utf-8 BOM, CRLF": {"encoding": "utf-8-sig", "newline": "\r\n"},
    "utf-16 BOM (Excel 'Unicode Text')": {"encoding": "utf-16"},
    "utf-16-be BOM": {"encoding": "utf-16", "header": ("\ufeffsentence", "label"), "raw_encoding": "utf-16-be"},
    "spaces around column names": {"header": (" sentence ", "label  ")},
    "BOM, spaces and CRLF": {"encoding": "utf-8-sig", "header": ("sentence ", " label"), "newline": "\r\n"},
    "blank trailing rows": {"trailing": True},
    "semicolons (a spreadsheet in a comma-decimal locale)": {"sep": ";", "encoding": "utf-8-sig", "newline": "\r\n"},
}


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@pytest.mark.parametrize("variant", list(SPREADSHEET_VARIANTS))
def test_spreadsheet_encodings_and_headers_are_read(tmp_path, suffix, variant):
    spec = SPREADSHEET_VARIANTS[variant]
    header = spec.get("header", ("sentence", "label"))
    encoding = spec.get("raw_encoding", spec.get("encoding", "utf-8"))
    newline = spec.get("newline", "\n")
    train_rows, dev_rows = labelled(40), labelled(10, start=3)
    if spec.get("trailing"):
        train_rows = train_rows + [("", "")] * 3  # ",,"-style rows a spreadsheet exports below the data
    sep = spec.get("sep") if suffix == ".csv" else None
    write(tmp_path / f"train{suffix}", header, train_rows, sep=sep, encoding=encoding, newline=newline)
    write(tmp_path / f"dev{suffix}", header, dev_rows, sep=sep, encoding=encoding, newline=newline)
    splits = load_splits(config(tmp_path), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert splits.test.x[0] == dev_rows[0][0]  # no BOM, no \r left in the text
    assert splits.test.y.tolist() == [label for _, label in dev_rows]
    assert all("\r" not in t and "\ufeff" not in t for t in splits.train.x + splits.val.x + splits.test.x)


def test_a_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path):
    rows = labelled(5) + [("un film très réussi", 1)] + labelled(5)
    write(tmp_path / "train.csv", ("sentence", "label"), rows, encoding="cp1252")  # Excel's plain "CSV" on Windows
    with pytest.raises(ArtifactError, match=r"dataset.path: .*train.csv line 7 is not UTF-8 text \(byte 0xe8\); "
                                            r"save the file as UTF-8"):
        load_splits(config(tmp_path), seed=0)


def test_a_column_name_differing_in_case_gets_a_hint(tmp_path):
    write(tmp_path / "train.csv", ("Sentence", "label"), labelled())
    with pytest.raises(ConfigError, match=r"dataset.text_column='sentence' is not a column .* did you mean 'Sentence'"):
        load_splits(config(tmp_path), seed=0)


def test_an_unreadable_csv_row_is_one_line(tmp_path):
    """An unbalanced quote swallows the rest of the file into one cell, beyond the csv module's field limit."""
    (tmp_path / "train.csv").write_text("sentence,label\nfine,0\n\"an open quote,1\n" + "more text,0\n" * 15_000)
    with pytest.raises(ArtifactError, match=r"dataset.path: .*train.csv line 3 cannot be read as CSV \(field larger"):
        load_splits(config(tmp_path), seed=0)


def test_a_short_row_names_its_line(tmp_path):
    write(tmp_path / "train.tsv", ("sentence", "label"), labelled(5) + [("no label column here",)] + labelled(5))
    with pytest.raises(ArtifactError, match=r"train.tsv line 7 has 1 column\(s\) but its 'sentence' and 'label' columns"):
        load_splits(config(tmp_path), seed=0)


# --- unlabelled rows (-1, the GLUE convention) -------------------------------------------------------------------
def test_unlabelled_train_rows_are_dropped_and_counted(tmp_path, caplog):
    write(tmp_path / "train.tsv", ("sentence", "label"), labelled(40) + [(s, -1) for s in SENTENCES[:7]])
    write(tmp_path / "dev.tsv", ("sentence", "label"), labelled(10))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(config(tmp_path), seed=0)
    assert len(splits.train) + len(splits.val) == 40 and len(splits.test) == 10
    assert min(int(s.y.min()) for s in (splits.train, splits.val, splits.test)) == 0
    assert any("train.tsv: dropped 7 unlabelled rows (label -1) of 47" in r.getMessage() for r in caplog.records)


def test_a_partly_unlabelled_dev_file_is_the_test_split_without_those_rows(tmp_path, caplog):
    write(tmp_path / "train.tsv", ("sentence", "label"), labelled(40))
    write(tmp_path / "dev.tsv", ("sentence", "label"), labelled(10) + [("no label", -1), ("nor here", "-1")])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(config(tmp_path), seed=0)
    assert len(splits.test) == 10 and (splits.test.y >= 0).all()
    assert any("dev.tsv: dropped 2 unlabelled rows" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("unlabelled_file", [
    ("test.tsv", ("index", "sentence"), [(i, f"unlabelled {i}") for i in range(5)]),  # GLUE: no label column
    ("test.tsv", ("sentence", "label"), [(f"unlabelled {i}", -1) for i in range(5)]),  # the hub's export: all -1
    ("dev.csv", ("sentence", "label"), [(f"unlabelled {i}", -1) for i in range(5)]),
])
def test_a_file_with_only_unlabelled_rows_is_not_a_labelled_split(tmp_path, unlabelled_file):
    name, header, rows = unlabelled_file
    write(tmp_path / "train.tsv", ("sentence", "label"), labelled(40))
    write(tmp_path / name, header, rows)
    splits = load_splits(config(tmp_path, test_fraction=0.25), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)  # test carved from train
    assert not any(t.startswith("unlabelled") for t in splits.test.x)


@pytest.mark.parametrize("rows", [[(s, -1) for s in SENTENCES], []])
def test_a_train_file_without_labelled_rows_is_one_line(tmp_path, rows):
    write(tmp_path / "train.tsv", ("sentence", "label"), rows)
    with pytest.raises(ArtifactError, match=r"dataset.path: .*train.tsv holds no labelled rows"):
        load_splits(config(tmp_path), seed=0)


# --- labels that are not labels ------------------------------------------------------------------------------------
BAD_LABELS = {"-2": "is -2, a negative class", "1.5": "is '1.5', not an integer", "": "is empty",
              "  ": "is empty", "positive": "is 'positive', not an integer", "nan": "is 'nan', not an integer",
              "inf": "is 'inf', not an integer", "-1.5": "is '-1.5', not an integer",
              "99999999999999999999999": "is 99999999999999999999999, too large for a class index",
              "-99999999999999999999999": "is -99999999999999999999999, a negative class"}


@pytest.mark.parametrize("bad", list(BAD_LABELS))
@pytest.mark.parametrize("where", ["train.tsv", "dev.tsv", "train.csv"])
def test_an_invalid_label_is_one_line_naming_file_and_line(tmp_path, bad, where):
    suffix = where[-4:]
    rows = {"train": labelled(40), "dev": labelled(10)}
    stem = where[:-4]
    rows[stem] = rows[stem][:4] + [("the odd one", bad)] + rows[stem][4:]
    write(tmp_path / f"train{suffix}", ("sentence", "label"), rows["train"])
    write(tmp_path / f"dev{suffix}", ("sentence", "label"), rows["dev"])
    reason = BAD_LABELS[bad]
    with pytest.raises(ArtifactError) as raised:
        load_splits(config(tmp_path), seed=0)
    message = str(raised.value)
    assert message.startswith("dataset.path: ") and f"{where} line 6: the 'label' value {reason}; " in message
    assert "labels must be integers in [0, 2) (dataset.num_classes), or -1 for an unlabelled row" in message
    assert "\n" not in message


@pytest.mark.parametrize("stem", ["train", "dev"])
def test_a_label_beyond_num_classes_names_the_setting_file_and_line(tmp_path, stem):
    rows = {"train": labelled(40), "dev": labelled(10)}
    rows[stem] = rows[stem][:2] + [("a third class", 2), ("a fourth", 3)] + rows[stem][2:]
    for name, content in rows.items():
        write(tmp_path / f"{name}.tsv", ("sentence", "label"), content)
    with pytest.raises(ConfigError, match=rf"dataset.num_classes=2 but sst2's labels go up to 3 \(.*{stem}.tsv line 4 "
                                          r"has label 2\); set it to >= 4"):
        load_splits(config(tmp_path), seed=0)


def test_integral_numbers_are_labels(tmp_path):
    """pandas writes an integer column holding a gap as floats ("1.0"); spreadsheets may pad cells."""
    rows = [(s, f"{label}.0" if i % 3 else f" {label} ") for i, (s, label) in enumerate(labelled(40))]
    write(tmp_path / "train.csv", ("sentence", "label"), rows)
    splits = load_splits(config(tmp_path, test_fraction=0.25), seed=0)
    assert sorted(np.concatenate([s.y.numpy() for s in (splits.train, splits.val, splits.test)]).tolist()) == [0] * 20 + [1] * 20


# --- empty texts -------------------------------------------------------------------------------------------------
def test_empty_texts_are_kept_as_examples_and_counted(tmp_path, caplog):
    rows = labelled(30) + [("", 0), ("   ", 1), ("", 1), ("\t".strip(), 0)] * 2 + [("", 0), ("", 1)]
    write(tmp_path / "train.csv", ("sentence", "label"), rows)
    write(tmp_path / "dev.csv", ("sentence", "label"), [("", 0), ("", 1), ("fine", 1)])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(config(tmp_path), seed=0)
    assert len(splits.train) + len(splits.val) == 40 and len(splits.test) == 3
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "train.csv: 10 of 40 texts are empty or whitespace only; they are kept as examples" in messages
    assert "dev.csv: 2 of 3 texts are empty" in messages


# --- the hub: the same rules ----------------------------------------------------------------------------------------
def fake_hub(monkeypatch, **splits):
    import datasets

    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(columns) for name, columns in splits.items()})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dd)


def hub_config(**overrides):
    return config(None, hub_id="someone/reviews", hub_test_splits=["test", "validation"], **overrides)


def columns(rows):
    return {"sentence": [t for t, _ in rows], "label": [label for _, label in rows]}


def test_hub_unlabelled_rows_are_dropped_and_an_unlabelled_test_split_is_skipped(monkeypatch, caplog):
    fake_hub(monkeypatch, train=columns(labelled(40) + [("u", -1)] * 3),
             test=columns([(f"unlabelled {i}", -1) for i in range(6)]),
             validation=columns(labelled(10) + [("u", -1)]))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(hub_config(), seed=0)
    assert len(splits.train) + len(splits.val) == 40 and len(splits.test) == 10
    assert "(train + validation)" in splits.source
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "train: dropped 3 unlabelled rows" in messages and "validation: dropped 1 unlabelled rows" in messages


def test_hub_boolean_labels_are_0_and_1(monkeypatch):
    fake_hub(monkeypatch, train={"sentence": SENTENCES, "label": [bool(i % 2) for i in range(40)]})
    splits = load_splits(hub_config(test_fraction=0.25), seed=0)
    assert sorted(set(splits.train.y.tolist())) == [0, 1]


@pytest.mark.parametrize("bad,reason", [(-2, "is -2, a negative class"), (1.5, "is 1.5, not an integer"),
                                        (None, "is missing"), ("pos", "is 'pos', not an integer")])
def test_hub_invalid_label_is_one_line_naming_split_and_row(monkeypatch, bad, reason):
    rows = labelled(10)
    labels = [label for _, label in rows]
    labels[3] = bad
    train = {"sentence": [t for t, _ in rows], "label": [str(x) if isinstance(bad, str) else x for x in labels]}
    fake_hub(monkeypatch, train=train)
    with pytest.raises(ArtifactError, match=rf"dataset.hub_id: Hugging Face hub someone/reviews, split 'train', row 3: "
                                            rf"the 'label' value {reason}"):
        load_splits(hub_config(), seed=0)


def test_hub_train_split_without_labels_and_missing_texts(monkeypatch):
    fake_hub(monkeypatch, train=columns([(s, -1) for s in SENTENCES]))
    with pytest.raises(ArtifactError, match=r"its train split holds no labelled rows"):
        load_splits(hub_config(), seed=0)
    fake_hub(monkeypatch, train={"sentence": [None, *SENTENCES[1:]], "label": [i % 2 for i in range(40)]})
    splits = load_splits(hub_config(test_fraction=0.25), seed=0)
    assert "" in splits.train.x + splits.val.x + splits.test.x  # a missing text is an empty text


def test_hub_label_beyond_num_classes(monkeypatch):
    fake_hub(monkeypatch, train=columns(labelled(10) + [("x", 4)]))
    with pytest.raises(ConfigError, match=r"dataset.num_classes=2 but sst2's labels go up to 4 \(Hugging Face hub "
                                          r"someone/reviews, split 'train', row 10 has label 4\); set it to >= 5"):
        load_splits(hub_config(), seed=0)
