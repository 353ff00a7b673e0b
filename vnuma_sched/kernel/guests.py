"""The guests 'vm run --name NAME' is running, recorded so that other commands find
them by name ('share host start --guest NAME', 'vm list').

One JSON file per guest, REGISTRY/NAME.json: its QMP and guest-agent sockets (by
default REGISTRY/NAME-qmp.sock and NAME-qga.sock), the pid of the 'vm run' that owns
it, the kernel and the topology. The owner removes it when the guest ends; a record
whose owner is gone (killed) is stale: listed as such, replaced by the next run of
that name, never used. Reads and writes go through the SysRoot passed in; whether a
pid is alive is asked of ``alive(pid)``."""

import json
import re
from dataclasses import asdict, dataclass

from vnuma_sched.errors import BadInput, DataError

REGISTRY = "/run/vnuma_sched/guests"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
NAME_RULE = "NAME: up to 32 letters, digits, _ . -, starting with a letter or digit"


@dataclass(frozen=True)
class Guest:
    name: str
    pid: int                    # the 'vm run' that owns the record
    agent: str = None           # guest-agent socket
    qmp: str = None             # QMP socket (placed guests only)
    kernel: str = ""
    topology: str = ""

    def to_dict(self):
        return asdict(self)


def check_name(name, what="--name"):
    if not NAME.fullmatch(name or ""):
        raise BadInput(f"{what} {name[:40]!r}: {NAME_RULE}")
    return name


def _path(name):
    return f"{REGISTRY}/{name}.json"


def socket_path(sysroot, name, kind):
    """The default socket ``kind`` ('qmp' or 'qga') of guest ``name``, as a real path."""
    return str(sysroot.path(f"{REGISTRY}/{name}-{kind}.sock"))


def _load(sysroot, name):
    text = sysroot.read_optional(_path(name))
    if text is None:
        return None
    try:
        doc = json.loads(text)
        return Guest(**{k: doc[k] for k in Guest.__dataclass_fields__ if k in doc})
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(_path(name), f"not a guest record ({err})") from err


def add(sysroot, guest, alive):
    """Record ``guest``; BadInput if a live 'vm run' already holds the name."""
    old = _load(sysroot, guest.name)
    if old is not None and old.pid != guest.pid and alive(old.pid):
        raise BadInput(f"--name {guest.name}: a guest of that name is running "
                       f"('vm run' pid {old.pid}); see 'vnuma-sched vm list'")
    try:
        sysroot.write_atomic(_path(guest.name), json.dumps(guest.to_dict(), indent=1) + "\n")
    except OSError as err:
        raise DataError(_path(guest.name), f"cannot record the guest ({err.strerror or err}; "
                        "--name needs root)", err.errno) from err


def remove(sysroot, name, pid):
    """Remove the record of ``name`` if ``pid`` owns it (never another run's)."""
    try:
        old = _load(sysroot, name)
    except DataError:
        return
    if old is not None and old.pid == pid:
        sysroot.remove(_path(name))


def find(sysroot, name, alive):
    """The running guest ``name``; BadInput when none is, or its 'vm run' is gone."""
    check_name(name, "--guest")
    guest = _load(sysroot, name)
    if guest is None:
        raise BadInput(f"--guest {name}: no guest of that name is running (boot it with "
                       f"'vnuma-sched vm run --name {name}', or give NAME=QMP,AGENT)")
    if not alive(guest.pid):
        raise BadInput(f"--guest {name}: its 'vm run' (pid {guest.pid}) is gone; the "
                       "record is stale")
    return guest


def listing(sysroot, alive):
    """[(Guest, running?)] of every record, by name; unreadable records are skipped."""
    out = []
    if not sysroot.is_dir(REGISTRY):
        return out
    for entry in sorted(sysroot.listdir(REGISTRY)):
        name, dot, ext = entry.rpartition(".")
        if ext != "json" or not dot or not NAME.fullmatch(name):
            continue
        try:
            guest = _load(sysroot, name)
        except DataError:
            continue
        if guest is not None:
            out.append((guest, alive(guest.pid)))
    return out
