"""Who owns a run folder: one live process at a time, and a fresh folder for every run that did not name one.

Two kinds of collision corrupt results silently, so both are prevented here:
- Runs and sweeps that did not name their folder get a timestamped one (`outputs/<date>/<time>`,
  `multirun/<date>/<time>`); two started in the same second would share it. Such a folder is created
  exclusively (`mkdir` without `exist_ok`); when it exists, the next free `<time>-1`, `<time>-2`, ... is taken.
- Any process writing into a run folder holds an exclusive lock on `<run>/.lock` (`filelock`: `flock` on
  POSIX), so a second live process on the same folder stops with one line. The operating system drops the
  lock when its process dies, so a killed run never blocks its own resume.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.utils.io import WRITE_ERRNOS

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"  # who holds the lock (pid, host, start time), for the refusal message
MAX_SUFFIX = 1000


def claim_new_folder(path: Path) -> Path:
    """Create `path`, or the first free `path-1`, `path-2`, ..., exclusively, and return the one created.
    Two processes racing for one name each get their own folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(MAX_SUFFIX):
        candidate = path if suffix == 0 else path.with_name(f"{path.name}-{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ArtifactError(f"{path} and {MAX_SUFFIX - 1} numbered variants already exist; give run_dir=... explicitly")


class RunFolderLock:
    """An exclusive, non-blocking lock on a run folder, held while this process writes into it.

    `acquire` raises ConfigError (one line, naming the holder) when another live process holds it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock: Optional[FileLock] = None

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            owner = (self.root / OWNER_FILE).read_text().strip() if (self.root / OWNER_FILE).is_file() else "unknown"
            raise ConfigError(f"run_dir={self.root} is in use by another running process ({owner}); wait for it "
                              "to finish, or give another run_dir") from None
        self._lock = lock
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        (self.root / OWNER_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")

    def release(self) -> None:
        if self._lock is not None:
            (self.root / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunFolderClaim:
    """This process's hold on its run folder: created (a new one when `fresh`), locked, and — if the run is
    refused or fails before its task starts — removed again when this invocation created it."""

    def __init__(self, folder: Path, fresh: bool):
        self.folder, self.fresh = folder, fresh
        self.created = False
        self.lock: Optional[RunFolderLock] = None

    def acquire(self) -> Path:
        try:
            if self.fresh:
                self.folder = claim_new_folder(self.folder)
                self.created = True
            else:
                self.created = not self.folder.exists()
            self.lock = RunFolderLock(self.folder)
            self.lock.acquire()
        except OSError as ex:
            why = WRITE_ERRNOS.get(ex.errno, "")
            raise ArtifactError(f"run_dir={self.folder} cannot be written: {why + ' ' if why else ''}({ex.strerror or ex}); "
                                "give a writable run_dir") from None
        return self.folder

    def abandon(self) -> None:
        """Undo the claim of a refused run: nothing written by a run that never started survives."""
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _quote(value: str) -> str:
    """A Hydra override value that stays one literal string (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClaimSweepFolder(Callback):
    """Hydra callback: a `--multirun` sweep whose folder was not given (`hydra.sweep.dir=...`) gets a new one,
    created exclusively, so two sweeps started in the same second never share job folders. A given sweep folder
    is used as it is (rerunning a sweep resumes its jobs; each job's lock keeps two live sweeps apart)."""

    claimed: list[tuple[Path, Path]] = []  # per sweep claimed in this process: (its folder, the outermost folder
    #                                        the claim created: the folder itself or an ancestor)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_overrides = list(config.hydra.overrides.hydra)
        if any(o.lstrip("+~").startswith("hydra.sweep.dir=") for o in hydra_overrides):
            return
        wanted = Path(str(config.hydra.sweep.dir)).resolve()
        created = next((p for p in reversed([wanted, *wanted.parents]) if not p.exists()), wanted)
        try:
            claimed = claim_new_folder(wanted).resolve()
        except OSError:  # Hydra turns a callback's error into a warning: let its own mkdir fail, in one line
            return
        ClaimSweepFolder.claimed.append((claimed, created))
        if claimed.name != wanted.name:
            log.info("%s is taken (another sweep started in the same second): this sweep writes to %s", wanted, claimed)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(claimed)
            # each job's config is composed again from these overrides: they must carry the claimed folder
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quote(str(claimed))}")

    @classmethod
    def release_unused(cls) -> None:
        """Remove the sweep folders this process claimed that hold no job's output (a sweep refused before its
        first job: only Hydra's multirun.yaml, and job folders Hydra made that stayed empty), and the parent
        folders the claim created, as long as they are empty (another sweep may be using them)."""
        for folder, created in cls.claimed:
            entries = list(folder.rglob("*")) if folder.is_dir() else []
            if not all(p.name in ("multirun.yaml", LOCK_FILE) or p.is_dir() for p in entries):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            for parent in folder.parents:
                if parent == created.parent:
                    break
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break
        cls.claimed.clear()
