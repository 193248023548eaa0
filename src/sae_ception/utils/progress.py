"""Progress of a long loop: a tqdm bar on a terminal; in a redirected log, a plain line now and then.

A bar redrawn with carriage returns fills a log file with hundreds of kilobytes of partial lines, so when
stderr is not a terminal the same calls write one ordinary log line every `interval` seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

from tqdm.auto import tqdm

log = logging.getLogger("sae_ception.progress")

LOG_INTERVAL_S = 30.0  # seconds between plain progress lines in a redirected log


class LogProgress:
    """The part of tqdm's interface the trainers use, as periodic log lines: `desc: 120/400 steps (30%), 31 s
    elapsed, about 72 s left, mse=0.012`."""

    def __init__(self, total: int, desc: str, unit: str, interval: float = LOG_INTERVAL_S):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count, self.postfix = 0, ""
        self.started = self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last_line >= self.interval and self.count < self.total:
            self.last_line = now
            elapsed = now - self.started
            left = elapsed * (self.total - self.count) / self.count if self.count else float("nan")
            log.info("%s: %d/%d %s (%.0f%%), %.0f s elapsed, about %.0f s left%s", self.desc, self.count, self.total,
                     self.unit, 100 * self.count / max(self.total, 1), elapsed, left,
                     f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


class NoProgress(LogProgress):
    def update(self, n: int = 1) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "steps", stream=None, interval: Optional[float] = None):
    """A tqdm bar when `enabled` and `stream` (stderr) is a terminal; periodic log lines when enabled and it is
    not; nothing when disabled. The result has tqdm's `update`, `set_postfix` and `close`."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return NoProgress(total, desc, unit)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=f" {unit}", leave=False, file=stream)
    return LogProgress(total, desc, unit, interval if interval is not None else LOG_INTERVAL_S)
