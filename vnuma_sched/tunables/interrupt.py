"""Signals around writes: SIGTERM and SIGHUP stop an apply the way Ctrl-C does (so
that it rolls back), and a rollback in progress finishes before any signal acts."""

import signal
import threading
from contextlib import contextmanager

STOP = (signal.SIGTERM, signal.SIGHUP)
ALL = (signal.SIGINT, *STOP)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _swap(signals, handler):
    """Install ``handler`` for ``signals`` (main thread only); the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in signals}


def _restore(old):
    for sig, handler in old.items():
        signal.signal(sig, handler)


@contextmanager
def stops():
    """Inside the block SIGTERM and SIGHUP raise KeyboardInterrupt, like SIGINT."""
    old = _swap(STOP, _raise_interrupt)
    try:
        yield
    finally:
        _restore(old)


@contextmanager
def deferred():
    """Inside the block SIGINT/SIGTERM/SIGHUP are only noted: yields the list of them."""
    got = []
    old = _swap(ALL, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        _restore(old)
