"""Text classification datasets: from the Hugging Face hub via `datasets`, or from local TSV/CSV files.

A split comes back as raw strings; the model's tokenizer turns them into tokens later (models/tokenize.py),
so one dataset serves every architecture. Sources whose test split has no labels (GLUE's SST-2) use their
labelled validation split as the test split and carve validation out of train.

What a row may hold, checked while loading (before a run writes anything):
- a label is an integer in [0, dataset.num_classes), or -1: GLUE's "unlabelled". Unlabelled rows are dropped
  (the count is logged); a file (or hub split) with only unlabelled rows is not a labelled split (GLUE's test
  files are skipped as the test split; a train file like that is an error). Any other value (-2, 1.5, an empty
  cell, text) is one line naming the file and line (or hub split and row);
- an empty or whitespace-only text is still an example (the count is logged): the model reads it as the
  special tokens its tokenizer adds, or as one padding token if it adds none (models/transformer.py);
- files are UTF-8, with or without a byte-order mark (UTF-16/32 with one too); header names are taken without
  surrounding whitespace; CRLF line ends and blank trailing rows are fine; a .csv whose header has no comma
  but semicolons (or tabs) is read with that separator, as spreadsheet programs write it in many locales.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional

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


# --- labels -------------------------------------------------------------------------------------------------
UNLABELLED = -1  # GLUE's (and the hub's) label for a row without one, e.g. every row of GLUE's test splits


class BadLabel(ValueError):
    """A label value that is neither a class index nor -1; the message says what is wrong with it."""


def label_value(value) -> int:
    """The class index a label cell or hub value stands for (UNLABELLED for -1). Integers and integral
    numbers ("1", " 1 ", "1.0", 1.0) are accepted; anything else raises BadLabel with the reason."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise BadLabel("is missing")
    if isinstance(value, (bool, np.bool_, int, np.integer)):  # a hub column of booleans: False = 0, True = 1
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or value != int(value):
            raise BadLabel(f"is {value!r}, not an integer")
        number = int(value)
    else:
        cell = str(value).strip()
        if not cell:
            raise BadLabel("is empty")
        try:
            number = int(cell)
        except ValueError:
            try:
                as_float = float(cell)
            except ValueError:
                raise BadLabel(f"is {cell!r}, not an integer") from None
            if not np.isfinite(as_float) or as_float != int(as_float):
                raise BadLabel(f"is {cell!r}, not an integer") from None
            number = int(as_float)
    if number < UNLABELLED:
        raise BadLabel(f"is {number}, a negative class")
    if number > np.iinfo(np.int64).max:
        raise BadLabel(f"is {number}, too large for a class index")
    return number


def parse_labels(values, cfg: TextDatasetConfig, where: Callable[[int], str], setting: str = "dataset.path") -> np.ndarray:
    """int64 labels of a column (UNLABELLED kept). A value that is not a label raises ArtifactError naming
    `setting` and `where(i)` (the file and line, or the hub split and row); labels >= dataset.num_classes
    raise ConfigError."""
    labels = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        try:
            labels[i] = label_value(value)
        except BadLabel as ex:
            raise ArtifactError(
                f"{setting}: {where(i)}: the {cfg.label_column!r} value {ex}; labels must be integers in "
                f"[0, {cfg.num_classes}) (dataset.num_classes), or -1 for an unlabelled row"
            ) from None
    too_big = np.flatnonzero(labels >= cfg.num_classes)
    if len(too_big):
        top = int(labels.max())
        raise ConfigError(
            f"dataset.num_classes={cfg.num_classes} but {cfg.name}'s labels go up to {top} ({where(int(too_big[0]))} "
            f"has {cfg.label_column} {int(labels[too_big[0]])}); set it to >= {top + 1}"
        )
    return labels


def drop_unlabelled(texts: list[str], labels: np.ndarray, what: str) -> Table:
    """The labelled rows only; how many were dropped is logged."""
    keep = labels != UNLABELLED
    if keep.all():
        return texts, labels
    log.warning("%s: dropped %d unlabelled rows (label %d) of %d; %d labelled rows remain",
                what, int((~keep).sum()), UNLABELLED, len(labels), int(keep.sum()))
    return [t for t, k in zip(texts, keep) if k], labels[keep]


def log_empty_texts(texts: list[str], what: str) -> None:
    """Empty texts stay examples: the model reads them as its special tokens only (models/transformer.py)."""
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        log.warning("%s: %d of %d texts are empty or whitespace only; they are kept as examples (a model reads "
                    "such a text as its special tokens only, or as one padding token if its tokenizer adds none)",
                    what, empty, len(texts))


# --- local files --------------------------------------------------------------------------------------------
def load_from_folder(cfg: TextDatasetConfig, folder: Path) -> tuple[Table, Optional[Table], str]:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ArtifactError(f"dataset.path={folder} {what}; give a folder with train.tsv (or .csv) and a labelled dev/test file")
    train_file = _find(folder, ("train",))
    if train_file is None:
        raise ArtifactError(f"dataset.path={folder} has no train.tsv or train.csv")
    raw = read_table(train_file, cfg)
    if not (raw[1] != UNLABELLED).any():
        what = f"all {len(raw[1])} rows are unlabelled (label -1)" if len(raw[1]) else "it has a header but no rows"
        raise ArtifactError(f"dataset.path: {train_file} holds no labelled rows ({what}); the train file needs labels")
    train = drop_unlabelled(*raw, what=str(train_file))
    log_empty_texts(train[0], str(train_file))
    for stem in TEST_FILE_STEMS:
        path = _find(folder, (stem,))
        if path is None:
            continue
        if cfg.label_column not in read_header(path):
            log.info("%s has no %r column (unlabelled, like GLUE's test file): not used as the test split", path, cfg.label_column)
            continue
        raw = read_table(path, cfg)
        if not (raw[1] != UNLABELLED).any():
            log.info("%s holds no labelled rows (unlabelled, like GLUE's test file): not used as the test split", path)
            continue
        test = drop_unlabelled(*raw, what=str(path))
        log_empty_texts(test[0], str(path))
        return train, test, f"{folder.name}/{train_file.name} + {path.name}"
    return train, None, f"{folder.name}/{train_file.name} (no labelled test file)"


def _find(folder: Path, stems) -> Optional[Path]:
    return next((folder / f"{s}{x}" for s in stems for x in FILE_SUFFIXES if (folder / f"{s}{x}").is_file()), None)


# Byte-order marks a spreadsheet program may write first (Excel: UTF-8 for "CSV UTF-8", UTF-16 for "Unicode Text").
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text_file(path: Path) -> str:
    """The file's text: UTF-8, or UTF-8/16/32 with a byte-order mark (which is removed). Anything else is
    one line naming the file and the line of the first byte that is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as ex:
        raise ArtifactError(f"dataset.path: cannot read {path} ({type(ex).__name__}: {ex})") from None
    encoding = next((name for bom, name in BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as ex:
        line = raw[:ex.start].count(b"\n") + 1
        raise ArtifactError(
            f"dataset.path: {path} line {line} is not {encoding.upper().replace('-SIG', '')} text (byte "
            f"0x{raw[ex.start]:02x}); save the file as UTF-8 (a spreadsheet's 'CSV UTF-8' format)"
        ) from None


def _reader(text: str, path: Path):
    handle = io.StringIO(text, newline="")
    if path.suffix == ".tsv":  # GLUE TSVs are unquoted: a " inside a sentence is just a character
        return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(handle, delimiter=csv_delimiter(text.partition("\n")[0], path))


def csv_delimiter(header_line: str, path: Path) -> str:
    """`,`; or `;` (what spreadsheet programs write in locales whose decimal mark is a comma) or a tab, when
    the header line has one of those and no comma."""
    if "," not in header_line:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs")):
            if delimiter in header_line:
                log.info("%s: its header has no comma but %s; reading it as separated by %s", path, name, name)
                return delimiter
    return ","


def column_name(cell: str) -> str:
    """A header cell as a name: without surrounding whitespace or a stray byte-order mark."""
    return cell.strip().strip("\ufeff").strip()


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every row, the header first; csv errors become one line naming the line."""
    reader = _reader(read_text_file(path), path)
    while True:
        starts = reader.line_num + 1  # a quoted cell may span lines: name the line where the row starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as ex:
            hint = " (an unclosed quote?)" if "field larger" in str(ex) else ""
            raise ArtifactError(f"dataset.path: {path} line {starts} cannot be read as {path.suffix[1:].upper()} "
                                f"({ex}){hint}") from None
        yield starts, row


def read_header(path: Path) -> list[str]:
    return [column_name(cell) for cell in next(_rows(path), (0, []))[1]]


def read_table(path: Path, cfg: TextDatasetConfig) -> Table:
    """(texts, labels) of a TSV/CSV file with a header row naming the text and label columns. Unlabelled
    rows (-1) are kept here (callers drop them); blank rows are skipped."""
    rows = _rows(path)
    header = [column_name(cell) for cell in next(rows, (0, []))[1]]
    for setting, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if column not in header:
            near = [h for h in header if h.lower() == column.lower()]
            hint = f"; names are case-sensitive, did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"dataset.{setting}={column!r} is not a column of {path} "
                              f"(columns: {', '.join(header)}){hint}")
    text_at, label_at = header.index(cfg.text_column), header.index(cfg.label_column)
    texts, cells, lines = [], [], []
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue  # a blank line, or a row of empty cells as spreadsheets export trailing rows
        if len(row) <= max(text_at, label_at):
            raise ArtifactError(f"dataset.path: {path} line {line} has {len(row)} column(s) but its "
                                f"{cfg.text_column!r} and {cfg.label_column!r} columns are number "
                                f"{text_at + 1} and {label_at + 1} of the header")
        texts.append(row[text_at])
        cells.append(row[label_at])
        lines.append(line)
    labels = parse_labels(cells, cfg, lambda i: f"{path} line {lines[i]}")
    return texts, labels


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
    name = f"{cfg.hub_id}{'/' + cfg.hub_config if cfg.hub_config else ''}"

    def table(split_name: str) -> Table:
        """Every row of one hub split (unlabelled ones too); a missing text is an empty text."""
        split = dd[split_name]
        texts = ["" if t is None else str(t) for t in split[cfg.text_column]]
        labels = parse_labels(list(split[cfg.label_column]), cfg,
                              lambda i: f"Hugging Face hub {name}, split {split_name!r}, row {i}", "dataset.hub_id")
        return texts, labels

    raw = table("train")
    if not (raw[1] != UNLABELLED).any():
        raise ArtifactError(f"Hugging Face hub {name}: its train split holds no labelled rows (all {len(raw[1])} are "
                            "-1, unlabelled); set dataset.path=/folder/with/train.tsv to read labelled local files")
    train = drop_unlabelled(*raw, what=f"hub {name} train")
    log_empty_texts(train[0], f"hub {name} train")
    for split_name in cfg.hub_test_splits:
        if split_name in dd and cfg.label_column in dd[split_name].column_names:
            candidate = table(split_name)
            if (candidate[1] != UNLABELLED).any():
                test = drop_unlabelled(*candidate, what=f"hub {name} {split_name}")
                log_empty_texts(test[0], f"hub {name} {split_name}")
                return train, test, f"Hugging Face hub {cfg.hub_id} (train + {split_name})"
    return train, None, f"Hugging Face hub {cfg.hub_id} (train only)"
