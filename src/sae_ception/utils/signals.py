"""SIGTERM as an orderly stop: what a scheduler's preemption, `kill` or a job's time limit sends first."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM; exits with SIGTERM_EXIT_CODE once every `finally` has run."""


@contextlib.contextmanager
def sigterm_stops_cleanly() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (at its next Python instruction), so the
    run unwinds as after Ctrl-C: wandb is finished, its rows written to the `.wandb` file (a SIGKILL loses those
    of the last `wandb.flush_seconds`), and half-written files are removed; rerunning the command resumes.
    The previous handler is restored after the block. Outside the main thread (where Python cannot install a
    handler) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        log.warning("stopped by SIGTERM: rerun the same command to resume")
        raise Terminated(SIGTERM_EXIT_CODE)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
