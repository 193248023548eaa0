"""scikit-learn's bundled 8x8 digits: a real image task that needs no download, for smoke runs and tests."""

from sklearn.datasets import load_digits

from sae_ception.data.base import DATASETS, DatasetConfig, DataSplits, DatasetSource
from sae_ception.data.splitting import build_splits
from sae_ception.errors import ConfigError


@DATASETS.register("digits")
class Digits(DatasetSource):
    def load(self, cfg: DatasetConfig, seed: int) -> DataSplits:
        if cfg.path is not None:
            raise ConfigError(f"dataset.path={cfg.path!r} is not used by digits (bundled with scikit-learn); set it to null")
        bunch = load_digits()
        images, labels = bunch.images, bunch.target  # (1797, 8, 8) floats in 0..16
        origin = f"scikit-learn load_digits ({len(labels)} 8x8 images, pixels / 16)"
        return build_splits(cfg, seed, (images, labels), None, scale=16.0, origin=origin)
