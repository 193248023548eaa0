"""Fixtures of the feature-alignment tests (test_align_features.py, test_align_features_errors.py): one finished
alignment and one train_cycle run per test module, copied by any test that changes them."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One QUICK alignment of two preset MLPs on digits (shared, never modified: tests copy it)."""
    from tests.pipeline.test_align_features import run_align

    run_dir = tmp_path_factory.mktemp("align") / "base"
    run_align(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def cycle_run(tmp_path_factory) -> Path:
    """A scripts/train_cycle.py run (digits, seed 0) holding the models and SAEs of cycles 0 and 1."""
    from tests.pipeline.test_align_features import train_cycle_run

    return train_cycle_run(tmp_path_factory.mktemp("cycle") / "run")
