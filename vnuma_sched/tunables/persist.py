"""The drop-in files of 'tune apply --persist' / '--persist-boot' (sysctl.d,
modprobe.d, a GRUB drop-in). The previous content of each file (or its absence)
is journaled before the file is written, with the SHA-256 of the new content;
revert puts back exactly what was there, and leaves a file that changed since."""

import hashlib
import os

from vnuma_sched.errors import DataError
from vnuma_sched.tunables import knobs as K

HEADER = "# written by vnuma-sched; 'vnuma-sched tune revert' puts back what was here\n"
LEGACY_MARK = "# written by vnuma-sched"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def sysctl_text(rows, kept):
    lines = [f"{r.knob} = {r.target}\n" for r in rows if r.kind == K.SYSCTL and r.action in kept]
    return HEADER + "".join(lines) if lines else None


def modprobe_text(rows, kept):
    mods = {}
    for r in rows:
        if r.kind == K.MODULE and r.action in kept:
            mod, param = r.knob.split(".", 1)
            mods.setdefault(mod, []).append(f"{param}={K.REGISTRY[r.knob].encode(r.target)}")
    return HEADER + "".join(f"options {m} {' '.join(p)}\n" for m, p in mods.items()) \
        if mods else None


def grub_text(args):
    return (HEADER + 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
            + " ".join(args) + '"\n') if args else None


def _current(sysroot, path):
    """(bytes, mode) of a drop-in file, (None, None) when it does not exist."""
    try:
        real = sysroot.path(path)
        with open(real, "rb") as f:
            return f.read(), os.stat(real).st_mode & 0o7777
    except FileNotFoundError:
        return None, None
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror}") from err


def write(sysroot, journal, path, text):
    """Journal what ``path`` holds, then write ``text`` there (same mode). False when
    the file already holds exactly that."""
    old, mode = _current(sysroot, path)
    new = text.encode()
    if old == new:
        return False
    journal.add_file(path, None if old is None else old.decode("utf-8", "surrogateescape"),
                     mode, sha256(new))
    try:
        _write_bytes(sysroot, path, new, mode)
    except OSError as err:
        raise DataError(path, f"write failed: {err.strerror}") from err
    return True


def _write_bytes(sysroot, path, data, mode):
    """Replace a file atomically (temp file, fsync, rename), creating its folder."""
    target = sysroot.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def restore(sysroot, rec):
    """Put back a journaled file. None when done (or nothing to do), else the reason."""
    cur, _mode = _current(sysroot, rec["path"])
    old = None if rec["old"] is None else rec["old"].encode("utf-8", "surrogateescape")
    if cur == old:
        return None                   # never replaced (killed before), or already back
    if rec["sha256"] is None:         # the previous journal format kept no content
        return _restore_legacy(sysroot, rec["path"], cur)
    if cur is None or sha256(cur) != rec["sha256"]:
        return "changed since apply: left as it is"
    try:
        if old is None:
            sysroot.remove(rec["path"])
        else:
            _write_bytes(sysroot, rec["path"], old, rec["mode"])
    except OSError as err:
        return f"cannot restore: {err.strerror}"
    return None


def _restore_legacy(sysroot, path, cur):
    if cur is None:
        return None
    if not cur.decode("utf-8", "replace").startswith(LEGACY_MARK):
        return "not written by this tool (no header line): left as it is"
    try:
        sysroot.remove(path)
    except OSError as err:
        return f"cannot remove: {err.strerror}"
    return None
