"""One command that writes (tune, share) at a time per root: an exclusive flock on a lock
file beside the journal, which records who holds it (pid and command line)."""

import fcntl
import json
import os
import time
from contextlib import contextmanager

from vnuma_sched.errors import DataError, VnumaError

LOCK = "/run/vnuma_sched/lock"      # beside the run-time journal; per boot, as locks are


class Busy(VnumaError):
    """Another command holds the lock."""

    exit_code = 1


def _holder(fd, tries=50, pause=0.01):
    """Who holds the lock; the holder records itself right after taking it, so wait a
    moment for the record before saying it is unknown."""
    for _ in range(tries):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            return f"pid {int(info['pid'])} ({str(info['command'])[:200]})"
        except (OSError, ValueError, TypeError, KeyError):
            time.sleep(pause)
    return "another process (not recorded yet)"


def _open(path, shown):
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise DataError(shown, err.strerror or type(err).__name__) from err


def _same_file(fd, path):
    try:
        mine, now = os.fstat(fd), os.stat(path)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
    except FileNotFoundError:
        return False


def _acquire(path, shown):
    """The locked fd. The holder removes the file when done: a file locked after its
    removal is not the lock any more, so check the inode and try again."""
    while True:
        fd = _open(path, shown)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise Busy(f"another command that writes is running: {holder} holds "
                       f"{shown}") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)


def held(store, command):
    """Hold the lock of ``store``'s root for the block; Busy naming the holder if taken.
    The lock file exists only while it is held."""
    return held_at(store.sysroot.path(LOCK), command, store.shown(LOCK))


@contextmanager
def held_at(path, command, shown=None):
    """Hold the lock file ``path`` (a Path; ``shown``: its name in messages) for the
    block, as held() does."""
    shown = shown or str(path)
    fd = _acquire(path, shown)
    try:
        os.ftruncate(fd, 0)     # a lock file left by a killed holder may hold more
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "command": command}) + "\n").encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
