"""SIGTERM inside `sigterm_stops_cleanly` unwinds like Ctrl-C (finally blocks run) and exits with 143."""

import os
import signal
import threading

import pytest

from sae_ception.utils.signals import SIGTERM_EXIT_CODE, Terminated, sigterm_stops_cleanly


def test_sigterm_raises_terminated_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Terminated) as info:
        with sigterm_stops_cleanly():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between Python instructions
                    pass
            finally:
                cleaned.append(True)
    assert info.value.code == SIGTERM_EXIT_CODE == 143
    assert isinstance(info.value, SystemExit) and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_it_changes_nothing():
    seen = []

    def worker():
        with sigterm_stops_cleanly():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]
