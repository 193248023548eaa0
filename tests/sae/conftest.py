"""Shared SAE test fixture: one CPU accelerator for the session."""

import pytest
from accelerate import Accelerator


@pytest.fixture(scope="session")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)
