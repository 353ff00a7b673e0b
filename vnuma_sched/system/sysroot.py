"""SysRoot: the only door to /sys, /proc, /dev and debugfs.

Every path the toolkit reads or writes on the system is an absolute path
("/sys/devices/system/node") resolved under a root directory: "/" on a live
system, a recorded tree in tests or with ``--root``.
"""

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath

from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.system.topology import format_cpulist

# What pathlib's exists() and is_dir() take for "not there"; other errors are raised.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _stat(path):
    try:
        return os.stat(path)
    except OSError as err:
        if err.errno not in _ABSENT:
            raise
    except ValueError:
        pass
    return None


class SysRoot:
    """Read and write system files under ``root``."""

    def __init__(self, root):
        root = Path(root)
        if not root.is_dir():
            raise BadInput(f"--root {root}: not a directory")
        self.root = root.resolve()
        self._live = self.root == Path("/")

    @property
    def is_live(self):
        return self._live

    def path(self, abspath):
        """Map an absolute system path to the file under the root. Under a root other
        than "/", symlinks are resolved and a path that leads out of the root is refused."""
        p = PurePosixPath(abspath)
        if not p.is_absolute() or ".." in p.parts:
            raise BadInput(f"{abspath}: system paths must be absolute, without '..'")
        joined = self.root.joinpath(*p.parts[1:])
        return joined if self._live else self._inside(abspath, joined)

    def _os(self, abspath):
        """path() as a string for the os calls. On the live system the same checks
        without pathlib: a plan reads a few hundred /proc and /sys files, and building
        a Path for each was most of what reading them cost."""
        if not self._live:
            return str(self.path(abspath))
        abspath = os.fspath(abspath)
        if not abspath.startswith("/") or ".." in abspath.split("/"):
            raise BadInput(f"{abspath}: system paths must be absolute, without '..'")
        return abspath

    def _inside(self, abspath, joined):
        """``joined`` with every symlink resolved; BadInput when that leaves the root."""
        real = Path(os.path.realpath(joined))
        if not real.is_relative_to(self.root):
            raise BadInput(f"{abspath}: resolves to {real}, outside the root {self.root}")
        return real

    def exists(self, abspath):
        return _stat(self._os(abspath)) is not None

    def readable(self, abspath):
        """Can this process read (and, for a directory, enter) the path?"""
        path = self.path(abspath)
        return os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))

    def writable(self, abspath):
        return os.access(self._os(abspath), os.W_OK)

    def is_dir(self, abspath):
        st = _stat(self._os(abspath))
        return st is not None and stat.S_ISDIR(st.st_mode)

    def listdir(self, abspath):
        """Sorted entry names of a directory; [] if it does not exist."""
        try:
            return sorted(os.listdir(self._os(abspath)))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise DataError(abspath, err.strerror) from err

    def subdirs(self, abspath):
        """Sorted names of the directories in a directory (not following symlinks);
        [] if it does not exist. One readdir: no stat per entry."""
        try:
            with os.scandir(self._os(abspath)) as found:
                return sorted(e.name for e in found if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise DataError(abspath, err.strerror) from err

    def read(self, abspath):
        """The file's text with the trailing newline removed."""
        try:
            with open(self._os(abspath), encoding="utf-8", errors="replace") as f:
                return f.read().rstrip("\n")
        except OSError as err:
            raise DataError(abspath, err.strerror or str(err), err.errno) from err

    def read_optional(self, abspath, default=None):
        """Like read(), but ``default`` when the file is absent or unreadable."""
        try:
            return self.read(abspath)
        except DataError:
            return default

    def read_int(self, abspath):
        text = self.read(abspath).strip()
        try:
            return int(text)
        except ValueError as err:
            raise DataError(abspath, f"expected an integer, got {text[:40]!r}") from err

    def write(self, abspath, value):
        """Write ``value`` as sysfs expects it: one write() of the text."""
        try:
            with open(self._os(abspath), "w", encoding="utf-8") as f:
                f.write(str(value))
        except OSError as err:
            raise DataError(abspath, f"write failed: {err.strerror or err}") from err

    def mkdir(self, abspath):
        """Create one directory (a cgroup: the kernel fills it with its files)."""
        try:
            os.mkdir(self._os(abspath))
        except OSError as err:
            raise DataError(abspath, f"mkdir failed: {err.strerror or err}", err.errno) from err

    def rmdir(self, abspath):
        """Remove one empty directory (a cgroup without tasks or children)."""
        try:
            os.rmdir(self._os(abspath))
        except OSError as err:
            raise DataError(abspath, f"rmdir failed: {err.strerror or err}", err.errno) from err

    def set_affinity(self, pid, cpus):
        """sched_setaffinity() of a task; under a recorded tree, its status file's
        Cpus_allowed_list line is the state and is rewritten."""
        status = f"/proc/{int(pid)}/status"
        if not self.is_live:
            text = re.sub(r"^Cpus_allowed_list:.*$", "Cpus_allowed_list:\t"
                          + format_cpulist(cpus), self.read(status), flags=re.M)
            self.write(status, text + "\n")
            return
        try:
            os.sched_setaffinity(int(pid), cpus)
        except OSError as err:
            raise DataError(status, f"sched_setaffinity failed: {err.strerror or err}",
                            err.errno) from err

    def open_binary(self, abspath):
        """An unbuffered binary file object (e.g. /dev/cpu/0/cpuid)."""
        return open(self.path(abspath), "rb", buffering=0)

    def kernel_log(self):
        """Kernel log messages from /dev/kmsg (a plain file in recorded trees).

        Each record is "prio,seq,usec,flags;text"; only the text is returned.
        Raises DataError when the log cannot be read (e.g. dmesg_restrict).
        """
        path = self.path("/dev/kmsg")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise DataError("/dev/kmsg", err.strerror or str(err)) from err
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:  # a record was overwritten while reading
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        records = b"".join(chunks).decode("utf-8", "replace").splitlines()
        return [r.split(";", 1)[1] for r in records if ";" in r]

    def write_atomic(self, abspath, text):
        """Replace a state file atomically (temp file, fsync, rename), creating parents."""
        target = self.path(abspath)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def remove(self, abspath):
        try:
            self.path(abspath).unlink()
        except FileNotFoundError:
            pass
