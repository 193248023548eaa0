import pytest
from omegaconf import OmegaConf

from sae_ception.data import DATASETS, DatasetConfig, load_splits
from sae_ception.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"val_fraction": 1.5}, "dataset.val_fraction=1.5 must be in [0, 1)"),
        ({"val_fraction": -0.1}, "dataset.val_fraction=-0.1"),
        ({"test_fraction": 1.0}, "dataset.test_fraction=1.0 must be in [0, 1)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"max_train_examples": 0}, "dataset.max_train_examples=0 must be a positive integer"),
        ({"num_classes": 1}, "dataset.num_classes=1"),
    ],
)
def test_invalid_settings_fail_in_one_line(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        DatasetConfig(name="digits", **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_structured_config_round_trip():
    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "mnist", "path": "x", "max_train_examples": 5})
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, DatasetConfig) and cfg.path == "x" and cfg.max_train_examples == 5


def test_registry_names_and_unknown_name():
    assert {"digits", "mnist"} <= set(DATASETS.names())
    assert all(DATASETS.get(n).config_class is DatasetConfig or issubclass(DATASETS.get(n).config_class, DatasetConfig) for n in DATASETS.names())
    with pytest.raises(ConfigError, match="dataset.name='nope'"):
        load_splits(DatasetConfig(name="nope"), seed=0)


def test_num_classes_too_small_for_labels():
    with pytest.raises(ConfigError, match="dataset.num_classes=5"):
        load_splits(DatasetConfig(name="digits", num_classes=5), seed=0)
