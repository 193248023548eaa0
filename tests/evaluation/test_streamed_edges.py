"""Bounded-memory evaluation at its edges (found in review): empty splits, the dense probe's centring, ties among
the strongest examples across chunk sizes, damaged code stores, and a failure of the main process's encoding
reaching every process."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sae_ception.errors import ArtifactError
from sae_ception.evaluation.features import streamed_feature_statistics
from sae_ception.evaluation.probes import probe_accuracy
from sae_ception.evaluation.representations import in_memory, representation_metrics
from sae_ception.evaluation.rows import DenseRows, SparseCodes, write_codes
from sae_ception.evaluation.unit_stats import unit_stats
from tests.evaluation.test_streamed_metrics import Stored


def test_an_empty_test_split_gives_undefined_metrics_not_an_error():
    train_labels = torch.arange(20) % 3
    families, per_unit = representation_metrics(
        {"dense": in_memory(torch.rand(20, 6), torch.zeros(0, 6))}, train_labels,
        torch.zeros(0, dtype=torch.long), seed=0)
    assert math.isnan(families["monosemanticity_dense"]["csi_mean"])
    assert math.isnan(families["probe"]["dense_accuracy"])
    assert per_unit["dense_pca_2d"].shape == (0, 2)


def test_the_dense_probe_equals_the_centred_probe_it_replaced():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    y = (x @ rng.normal(size=(20, 3)) + rng.normal(size=(600, 3))).argmax(1)
    x = x * 0.1 + rng.normal(size=20) * 50  # a layer whose units have large means and small spread
    train, test = slice(0, 400), slice(400, 600)
    centred = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = centred.fit(x[train], y[train]).score(x[test], y[test])
    got = probe_accuracy(x[train], torch.from_numpy(y[train]), DenseRows(x[test].astype(np.float32)),
                         torch.from_numpy(y[test]), seed=0)
    assert got == pytest.approx(expected, abs=1e-9)


def test_the_strongest_examples_do_not_depend_on_the_chunk_size(tmp_path):
    n = 40
    codes = torch.zeros(n, 2)
    codes[:, 0] = 1.0  # a latent at the same value on every row: every row ties
    codes[::3, 1] = 0.5
    labels = torch.arange(n) % 3
    store = write_codes(Stored(2), codes, tmp_path / "codes", batch_size=7)
    stats = unit_stats(store, labels, chunk_rows=7)
    features = torch.tensor([0, 1])

    def top_rows(chunk_rows):
        report = streamed_feature_statistics(store, labels, stats, features, 3, top_k=4, chunk_rows=chunk_rows)
        return [[example["index"] for example in entry["top_examples"]] for entry in report]

    by_chunk = {chunk_rows: top_rows(chunk_rows) for chunk_rows in (1, 7, 13, 1000)}
    assert all(rows == by_chunk[1000] for rows in by_chunk.values()), by_chunk


def _damage(store: SparseCodes, how: str) -> None:
    if how == "indptr not monotone":
        indptr = np.array(store.indptr)
        indptr[1], indptr[2] = indptr[2], indptr[1]
        np.save(store.folder / "indptr.npy", indptr)
    else:  # a latent index outside [0, d_sae)
        indices = np.array(store.indices)
        indices[0] = store.shape[1] + 5
        np.save(store.folder / "indices.npy", indices)


@pytest.mark.parametrize("how", ["indptr not monotone", "index out of range"])
def test_a_store_whose_structure_is_damaged_is_refused(tmp_path, how):
    codes = torch.tensor([[1.0, 0, 0], [0, 2.0, 3.0], [0, 0, 0], [4.0, 0, 5.0]])
    store = write_codes(Stored(3), codes, tmp_path / "codes", batch_size=2)
    _damage(store, how)
    with pytest.raises(ArtifactError):
        SparseCodes(store.folder)


def test_the_main_process_tells_the_others_when_encoding_fails(tmp_path, monkeypatch):
    import accelerate.utils

    from sae_ception.stages import codes as codes_stage

    broadcasts = []

    def broadcast(objects, from_process=0):
        broadcasts.append(list(objects))
        return objects

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    monkeypatch.setattr(codes_stage, "write_codes", disk_full)
    monkeypatch.setattr(codes_stage, "activations_for_cycle",
                        lambda ctx, cycle: {"test": SimpleNamespace(acts_ND=torch.ones(4, 3))})
    (tmp_path / "test.acts.npy").write_bytes(b"rows")
    ctx = SimpleNamespace(
        layout=SimpleNamespace(codes=lambda cycle, split: tmp_path / "codes" / f"cycle_{cycle}" / split,
                               activations=lambda cycle: tmp_path),
        accelerator=SimpleNamespace(is_main_process=True, num_processes=2),
        cfg=SimpleNamespace(eval_batch_size=4))
    with pytest.raises(Exception):
        codes_stage.codes_for_split(ctx, 0, "test", Stored(3))
    assert broadcasts, "the other processes were never told: they wait in broadcast_object_list"
