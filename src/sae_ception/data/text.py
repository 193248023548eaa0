"""Text classification datasets: from the Hugging Face hub via `datasets`, or from local TSV/CSV files.

A split comes back as raw strings; the model's tokenizer turns them into tokens later (models/tokenize.py),
so one dataset serves every architecture. Sources whose test split has no labels (GLUE's SST-2) use their
labelled validation split as the test split and carve validation out of train.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from sae_ception.data.base import DATASETS, DatasetConfig, DataSplits, DatasetSource, Split
from sae_ception.data.splitting import carve
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.utils.io import user_path

log = logging.getLogger(__name__)

TEST_FILE_STEMS = ("test", "dev", "validation", "val")  # first labelled one found is the test split
FILE_SUFFIXES = (".tsv", ".csv")


@dataclass
class TextDatasetConfig(DatasetConfig):
    hub_id: str = ""  # Hugging Face dataset id, used when path is null
    hub_config: Optional[str] = None  # the dataset's configuration name (e.g. sst2 inside glue)
    hub_test_splits: List[str] = field(default_factory=lambda: ["test", "validation"])  # first labelled one = test
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 128  # tokens per example after truncation
    max_val_examples: Optional[int] = None  # cap the validation split carved from train; None = all
    max_test_examples: Optional[int] = None  # subsample the test split (stratified) for quick runs; None = all

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length <= 0:
            raise ConfigError(f"dataset.max_length={self.max_length} must be a positive number of tokens")
        for setting in ("max_val_examples", "max_test_examples"):
            value = getattr(self, setting)
            if value is not None and value <= 0:
                raise ConfigError(f"dataset.{setting}={value} must be a positive integer (or null for all)")


Table = tuple[list[str], np.ndarray]  # (texts, int64 labels)


class TextDataset(DatasetSource):
    """Base of the registered text datasets; each subclass only names its defaults in its YAML file."""

    config_class = TextDatasetConfig

    def load(self, cfg: TextDatasetConfig, seed: int) -> DataSplits:
        if cfg.path is None:
            train, test, origin = load_from_hub(cfg)
        else:
            train, test, origin = load_from_folder(cfg, user_path(cfg.path))
        return text_splits(cfg, seed, train, test, origin)


@DATASETS.register("sst2")
class SST2(TextDataset):
    """GLUE SST-2: binary sentiment of movie-review sentences (test = the 872 labelled dev sentences)."""


@DATASETS.register("ag_news")
class AGNews(TextDataset):
    """AG News: 4-way topic classification of news articles."""


def text_splits(cfg: TextDatasetConfig, seed: int, train: Table, test: Optional[Table], origin: str) -> DataSplits:
    """Carve validation (and test, when the source has none with labels) from train; subsample as asked."""
    texts, labels = train
    rng = np.random.RandomState(seed % 2**32)
    n = len(labels)
    rest = np.arange(n)
    if test is None:
        rest, test_idx = carve(rest, labels, round(cfg.test_fraction * n), rng)
        test = ([texts[i] for i in test_idx], labels[test_idx])
        how = f"test = {len(test_idx)} carved from its {n} train examples, "
    else:
        how = f"test = its labelled {len(test[1])}, "
    n_val = round(cfg.val_fraction * n)
    rest, val_idx = carve(rest, labels, min(n_val, cfg.max_val_examples or n_val), rng)
    how += f"val = {len(val_idx)} carved from train"
    if len(rest) == 0 or len(test[1]) == 0:
        raise ConfigError(f"dataset.val_fraction={cfg.val_fraction} / test_fraction={cfg.test_fraction} leave no "
                          f"training or test examples out of {n}; lower them")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(rest):
        _, rest = carve(rest, labels, cfg.max_train_examples, rng)
        how += f", train subsampled to {len(rest)}"
    test_texts, test_labels = test
    if cfg.max_test_examples is not None and cfg.max_test_examples < len(test_labels):
        _, keep = carve(np.arange(len(test_labels)), test_labels, cfg.max_test_examples, rng)
        test_texts, test_labels = [test_texts[i] for i in keep], test_labels[keep]
        how += f", test subsampled to {len(keep)}"

    def split(rows: np.ndarray) -> Split:
        return Split(x=[texts[i] for i in rows], y=torch.from_numpy(labels[rows]))

    return DataSplits(
        train=split(rest), val=split(val_idx), test=Split(x=list(test_texts), y=torch.from_numpy(test_labels)),
        num_classes=cfg.num_classes, input_shape=(), source=f"{origin}; {how} (stratified, seed {seed})",
    )


# --- local files --------------------------------------------------------------------------------------------
def load_from_folder(cfg: TextDatasetConfig, folder: Path) -> tuple[Table, Optional[Table], str]:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ArtifactError(f"dataset.path={folder} {what}; give a folder with train.tsv (or .csv) and a labelled dev/test file")
    train_file = _find(folder, ("train",))
    if train_file is None:
        raise ArtifactError(f"dataset.path={folder} has no train.tsv or train.csv")
    train = read_table(train_file, cfg)
    for stem in TEST_FILE_STEMS:
        path = _find(folder, (stem,))
        if path is not None and _has_labels(path, cfg):
            return train, read_table(path, cfg), f"{folder.name}/{train_file.name} + {path.name}"
    return train, None, f"{folder.name}/{train_file.name} (no labelled test file)"


def _find(folder: Path, stems) -> Optional[Path]:
    return next((folder / f"{s}{x}" for s in stems for x in FILE_SUFFIXES if (folder / f"{s}{x}").is_file()), None)


def _reader(handle, path: Path):
    if path.suffix == ".tsv":  # GLUE TSVs are unquoted: a " inside a sentence is just a character
        return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(handle)


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(_reader(handle, path), [])


def _has_labels(path: Path, cfg: TextDatasetConfig) -> bool:
    """GLUE test files have no label column (or -1 labels); such a file cannot be a test split."""
    if cfg.label_column not in _header(path):
        return False
    _, labels = read_table(path, cfg)
    return len(labels) > 0 and bool((labels >= 0).all())


def read_table(path: Path, cfg: TextDatasetConfig) -> Table:
    """(texts, labels) of a TSV/CSV file with a header row naming the text and label columns."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = _reader(handle, path)
        header = next(rows, [])
        for setting, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
            if column not in header:
                raise ConfigError(f"dataset.{setting}={column!r} is not a column of {path} (columns: {', '.join(header)})")
        text_at, label_at = header.index(cfg.text_column), header.index(cfg.label_column)
        texts, labels = [], []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                labels.append(int(row[label_at]))
                texts.append(row[text_at])
            except (IndexError, ValueError):
                raise ArtifactError(f"dataset.path: {path} line {line} has no integer {cfg.label_column!r} value") from None
    return texts, np.asarray(labels, dtype=np.int64)


# --- the hub ------------------------------------------------------------------------------------------------
def load_from_hub(cfg: TextDatasetConfig) -> tuple[Table, Optional[Table], str]:
    try:
        import datasets

        dd = datasets.load_dataset(cfg.hub_id, cfg.hub_config)
    except Exception as ex:  # offline, hub down, changed id: all fixable with local files
        reason = f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"[:200]
        raise ArtifactError(
            f"could not load {cfg.hub_id}{'/' + cfg.hub_config if cfg.hub_config else ''} from the Hugging Face hub "
            f"({reason}); set dataset.path=/folder/with/train.tsv to read local files"
        ) from ex
    for setting, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if column not in dd["train"].column_names:
            raise ConfigError(f"dataset.{setting}={column!r} is not a column of {cfg.hub_id} "
                              f"(columns: {', '.join(dd['train'].column_names)})")

    def table(split) -> Table:
        return list(split[cfg.text_column]), np.asarray(split[cfg.label_column], dtype=np.int64)

    train = table(dd["train"])
    for name in cfg.hub_test_splits:
        if name in dd:
            candidate = table(dd[name])
            if len(candidate[1]) and (candidate[1] >= 0).all():
                return train, candidate, f"Hugging Face hub {cfg.hub_id} (train + {name})"
    return train, None, f"Hugging Face hub {cfg.hub_id} (train only)"
