"""A stand-in wandb module that records, as JSON lines, every call the product makes of wandb: for tests of
the wandb integration itself (the product's other tests run with wandb.mode=disabled). The `fake_wandb`
fixture (tests/conftest.py) imports it as `wandb` in the test's process; `write_fake_wandb` puts it on disk for
subprocesses (first on PYTHONPATH)."""

from __future__ import annotations

import json
from pathlib import Path

FAKE_WANDB = '''
"""A stand-in for wandb: each call the product makes is one JSON line in $FAKE_WANDB_LOG."""
import json
import os


def _record(call, **fields):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as out:
        out.write(json.dumps({"call": call, "pid": os.getpid(), **fields}, default=str) + "\\n")


class errors:
    class Error(Exception):
        pass


class Table:
    def __init__(self, columns, data):
        self.columns, self.data = list(columns), [list(row) for row in data]


class Image:
    def __init__(self, path, caption=None):
        self.path = str(path)


class _Summary(dict):
    def update(self, values):
        super().update(values)
        _record("summary", values=values)


class _Run:
    def __init__(self, folder):
        self.summary, self.url = _Summary(), None
        self.step = int(os.environ.get("FAKE_WANDB_STEP", "0"))  # wandb's next step (online resume: the server's)
        self.dir = os.path.join(folder, "wandb", "offline-run-fake", "files")

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, data, step=None):
        _record("log", data={k: vars(v) if isinstance(v, (Table, Image)) else v for k, v in data.items()}, step=step)

    def finish(self, exit_code=0):
        _record("finish", exit_code=exit_code)


def init(**kwargs):
    import torch

    _record("init", kwargs=kwargs, threads=torch.get_num_threads())
    return _Run(kwargs.get("dir") or ".")
'''


def write_fake_wandb(folder: Path) -> Path:
    """The stand-in as `folder/wandb/__init__.py` (put `folder` first on PYTHONPATH for other processes)."""
    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    (folder / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    return folder


def wandb_calls(log: Path, call: str) -> list[dict]:
    return [entry for entry in map(json.loads, log.read_text().splitlines()) if entry["call"] == call]
