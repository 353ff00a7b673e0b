"""One exception family. Each maps to a one-line message and an exit code.

Exit codes (documented in the README and ``vnuma-sched --help``):

    0   success
    1   the operation failed (a build, a guest, a check that found a problem)
    2   bad input: an option, a file or a value the user gave is wrong
    3   system data unreadable or malformed (a sysfs/procfs file, a recording)
    4   needs privileges (root, CAP_BPF/CAP_SYS_ADMIN)
    5   a required tool or kernel feature is missing
    130 interrupted
"""


class VnumaError(Exception):
    """Base class: ``str(err)`` is the whole one-line message."""

    exit_code = 1


class BadInput(VnumaError):
    """Something the user gave (option, path, profile, spec) is wrong."""

    exit_code = 2


class DataError(VnumaError):
    """A file of the system or of a recording is unreadable or malformed."""

    exit_code = 3

    def __init__(self, path, reason, errno=None):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.errno = errno


class NeedsRoot(VnumaError):
    """The operation needs privileges the caller does not have."""

    exit_code = 4

    def __init__(self, what, caps="root"):
        super().__init__(f"needs {caps} for {what}")


class Missing(VnumaError):
    """A required tool or kernel feature is not available."""

    exit_code = 5


class Interrupted(VnumaError):
    """SIGINT or SIGTERM stopped the operation (after its rollback, if any)."""

    exit_code = 130
