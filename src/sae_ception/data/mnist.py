"""MNIST from the Hugging Face hub, or from local IDX files so runs work offline (e.g. a torchvision download)."""

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from sae_ception.data.base import DATASETS, DatasetConfig, DataSplits, DatasetSource
from sae_ception.data.idx import read_idx
from sae_ception.data.splitting import Arrays, build_splits
from sae_ception.errors import ArtifactError
from sae_ception.utils.io import user_path

log = logging.getLogger(__name__)

HUB_ID = "ylecun/mnist"
PREFIXES = ("train", "t10k")
SUBFOLDERS = (".", "MNIST/raw", "raw")  # the folder itself, torchvision's root, or the MNIST folder
EXPECTED = "train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] and/or t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]"


@DATASETS.register("mnist")
class MNIST(DatasetSource):
    def load(self, cfg: DatasetConfig, seed: int) -> DataSplits:
        if cfg.path is None:
            train, test = load_from_hub()
            origin = f"Hugging Face hub {HUB_ID} (train {len(train[1])}, test {len(test[1])})"
            return build_splits(cfg, seed, train, test, scale=255.0, origin=origin)
        folder = user_path(cfg.path)
        pairs = read_pairs(folder)
        if len(pairs) == 2:
            shapes = {p: arrays[0].shape[1:] for p, arrays in pairs.items()}
            if shapes["train"] != shapes["t10k"]:
                raise ArtifactError(f"dataset.path={folder}: train images are {shapes['train']} but t10k images {shapes['t10k']}; they must match")
            origin = f"MNIST IDX files in {folder}"
            return build_splits(cfg, seed, pairs["train"], pairs["t10k"], scale=255.0, origin=origin)
        (prefix, arrays), = pairs.items()
        origin = f"MNIST IDX files in {folder} (only the {prefix} pair)"
        splits = build_splits(cfg, seed, arrays, None, scale=255.0, origin=origin)
        n, n_val, n_test = len(arrays[1]), len(splits.val), len(splits.test)
        log.warning(
            "only the %s pair found in %s: carving train/val/test = %d/%d/%d from its %d images",
            prefix, folder, n - n_val - n_test, n_val, n_test, n,
        )
        return splits


def read_pairs(folder: Path) -> dict[str, Arrays]:
    """The complete (images, labels) IDX pairs in `folder`, keyed by prefix ("train", "t10k")."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ArtifactError(f"dataset.path={folder} {what}; give a folder holding MNIST IDX files ({EXPECTED})")
    for sub in SUBFOLDERS:
        found = {p: files for p in PREFIXES if (files := _pair_files(folder / sub, p))}
        if found:
            return {p: _read_pair(*files) for p, files in found.items()}
    raise ArtifactError(
        f"dataset.path={folder} holds no complete MNIST IDX pair (looked in it, MNIST/raw/ and raw/); expected {EXPECTED}"
    )


def _pair_files(folder: Path, prefix: str) -> Optional[tuple[Path, Path]]:
    images = _first_existing(folder, f"{prefix}-images-idx3-ubyte")
    labels = _first_existing(folder, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images and labels else None


def _first_existing(folder: Path, name: str) -> Optional[Path]:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _read_pair(images_path: Path, labels_path: Path) -> Arrays:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ArtifactError(
            f"dataset.path: {images_path} has shape {images.shape} and {labels_path} {labels.shape}; "
            "expected images (N, height, width) and labels (N,)"
        )
    if len(images) != len(labels):
        raise ArtifactError(
            f"dataset.path: {images_path.name} holds {len(images)} images but {labels_path.name} "
            f"holds {len(labels)} labels; each images file needs its matching labels file"
        )
    return images, labels.astype(np.int64)


def load_from_hub() -> tuple[Arrays, Arrays]:
    """(train, test) arrays of ylecun/mnist; any failure says how to use local files instead."""
    try:
        import datasets

        dd = datasets.load_dataset(HUB_ID)
        return _image_arrays(dd["train"]), _image_arrays(dd["test"])
    except Exception as ex:  # offline, hub down, missing package, changed schema: all fixable with local files
        reason = f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"[:200]
        raise ArtifactError(
            f"could not load {HUB_ID} from the Hugging Face hub ({reason}); "
            "set dataset.path=/folder/with/idx/files to load local MNIST IDX files"
        ) from ex


def _image_arrays(split) -> Arrays:
    """Decode a hub split's PIL images into one (N, H, W) uint8 array in a single Arrow-backed call."""
    if hasattr(split, "with_format"):
        split = split.with_format("numpy")[:]
    images = split["image"]
    if not isinstance(images, np.ndarray) or images.ndim != 3:
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return images, np.asarray(split["label"], dtype=np.int64)
