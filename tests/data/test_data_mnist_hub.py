import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sae_ception.data import DatasetConfig, load_splits
from sae_ception.errors import ArtifactError


def fake_split(n, offset):
    images = [Image.fromarray(np.full((28, 28), (i * 9 + offset) % 256, np.uint8)) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 10 for i in range(n)]}, features=features)


def test_offline_hub_names_dataset_path(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ylecun/mnist' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ArtifactError) as info:
        load_splits(DatasetConfig(name="mnist"), seed=0)
    message = str(info.value)
    assert "ConnectionError" in message and "dataset.path=" in message and "\n" not in message


@pytest.mark.parametrize("as_plain_dict", [False, True])
def test_hub_images_are_converted(monkeypatch, as_plain_dict):
    fake = datasets.DatasetDict(train=fake_split(100, 0), test=fake_split(20, 5))
    if as_plain_dict:  # a plain mapping of PIL images takes the per-image path
        fake = {k: {"image": list(v["image"]), "label": list(v["label"])} for k, v in fake.items()}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: calls.append(name) or fake)
    s = load_splits(DatasetConfig(name="mnist", val_fraction=0.2), seed=0)
    assert calls == ["ylecun/mnist"]
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
    assert s.input_shape == (28, 28) and s.test.x.shape == (20, 784) and s.test.x.dtype == torch.float32
    expected = torch.tensor([(i * 9 + 5) % 256 / 255 for i in range(20)], dtype=torch.float32)
    assert torch.allclose(s.test.x[:, 0], expected) and torch.equal(s.test.y, torch.arange(20) % 10)
    assert "ylecun/mnist" in s.source
