"""Write-ahead journal of tunable writes: append-only JSON lines, one file.

An apply that only writes run-time values journals to <root>/run/vnuma_sched/
journal.jsonl (tmpfs: the values and their journal end with the boot); one that
also writes drop-in files (--persist, --persist-boot) to <root>/var/lib/
vnuma_sched/journal.jsonl, on persistent storage, since those files and their
previous content outlive a reboot. There is one journal at a time. Line 1 is the
header, then records:

  {"t": "write", "seq": 0, "knob": K, "kind": k, "path": P, "old": v, "new": v}
  {"t": "done", "seq": 0}                                 that write happened
  {"t": "file", "path": P, "old": text|null, "mode": m|null, "sha256": of new text}

The write records of a batch are on disk, fsync'd once, before any of its writes
happens: an apply journals all its writes as one batch, or two when a write creates
a directory whose files the next ones write (tunables.engine). The "done" records of
a batch follow its writes in one append, without fsync: revert restores a pending
entry too, after a read (a no-op if its write never happened), and a "done" entry at
once. A torn last line (killed mid-append) is ignored: its writes had not started. Reading a journal trusts
nothing: every record is checked against the knob registry and the drop-in files
(journal_check) before revert may act on it. The previous format (one JSON
document in /run/vnuma_sched/journal.json) is still read.
"""

import json
import os
import time
from dataclasses import dataclass, field

from vnuma_sched.errors import DataError
from vnuma_sched.tunables import journal_check as C

RUNTIME = "/run/vnuma_sched/journal.jsonl"
PERSISTENT = "/var/lib/vnuma_sched/journal.jsonl"
LEGACY = "/run/vnuma_sched/journal.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
VERSION = 2
PENDING, WRITTEN = "pending", "written"


@dataclass(frozen=True)
class Store:
    """Where the journal is, and how to name its files to the user: under the
    --root as given (``shown_root``), not as resolved. ``area`` "" is the tune
    profiles' journal; another area ("share") has a run-time journal of its own in
    /run/vnuma_sched/<area>/, so that a profile and parked vCPUs are reverted apart."""

    sysroot: object
    shown_root: str = None
    area: str = ""

    @property
    def runtime(self):
        return f"/run/vnuma_sched/{self.area}/journal.jsonl" if self.area else RUNTIME

    @property
    def command(self):
        """The command group that reverts this journal."""
        return self.area or "tune"

    def locations(self):
        """(path, parser) of every place the journal may be, in the order load() looks."""
        if self.area:
            return ((self.runtime, C.parse_lines),)
        return ((PERSISTENT, C.parse_lines), (RUNTIME, C.parse_lines),
                (LEGACY, C.parse_legacy))

    def shown(self, abspath):
        root = self.shown_root if self.shown_root is not None else str(self.sysroot.root)
        return abspath if root in ("", "/") else os.path.join(root, abspath.lstrip("/"))

    def boot_id(self):
        return (self.sysroot.read_optional(BOOT_ID) or "").strip() or None


@dataclass
class Doc:
    """A loaded journal. entries: dicts with a "state"; files: file records."""

    profile: str
    kernel: str
    created: str
    boot_id: str = None
    entries: list = field(default_factory=list)
    files: list = field(default_factory=list)
    legacy: bool = False
    path: str = RUNTIME         # where it lives (system path)

    def to_dict(self):
        return {"version": VERSION, "profile": self.profile, "kernel": self.kernel,
                "created": self.created, "boot_id": self.boot_id,
                "entries": self.entries, "files": [f["path"] for f in self.files]}

    def header(self):
        return {"t": "header", "version": VERSION, "profile": self.profile,
                "kernel": self.kernel, "created": self.created, "boot_id": self.boot_id}


class Writer:
    """Appends to a new journal; every OSError becomes a DataError naming it."""

    def __init__(self, store, profile, kernel, persistent=False):
        self.store = store
        self.doc = Doc(profile, _printable(kernel),
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       store.boot_id(), path=PERSISTENT if persistent else store.runtime)
        self.fd = None
        self._guard(self._open)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            raise DataError(self.store.shown(self.doc.path), err.strerror or
                            type(err).__name__, err.errno) from err

    def _open(self):
        path = self.store.sysroot.path(self.doc.path)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                          | os.O_CLOEXEC, 0o644)
        self._append([self.doc.header()], sync=True)
        dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def _append(self, records, sync):
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        while data:
            data = data[os.write(self.fd, data):]
        if sync:
            os.fsync(self.fd)

    def begin(self, batch):
        """Journal (knob, kind, path, old, new) tuples, fsync'd; their seq numbers."""
        first = len(self.doc.entries)
        records = [{"t": "write", "seq": first + i, "knob": knob, "kind": kind, "path": path,
                    "old": old, "new": new} for i, (knob, kind, path, old, new)
                   in enumerate(batch)]
        self._guard(self._append, records, True)
        for rec in records:
            self.doc.entries.append({**_entry_fields(rec), "state": PENDING})
        return list(range(first, first + len(records)))

    def done(self, seqs):
        """Mark these writes made: one append, no fsync."""
        if not seqs:
            return
        self._guard(self._append, [{"t": "done", "seq": seq} for seq in seqs], False)
        for seq in seqs:
            self.doc.entries[seq]["state"] = WRITTEN

    def add_file(self, path, old, mode, sha256):
        """Journal the previous content of a file before it is created or replaced."""
        rec = {"t": "file", "path": path, "old": old, "mode": mode, "sha256": sha256}
        self._guard(self._append, [rec], True)
        self.doc.files.append(rec)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _printable(text):
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:256]


def _entry_fields(rec):
    return {k: rec[k] for k in ("knob", "kind", "path", "old", "new")}


def rewrite(store, doc):
    """Replace the journal with ``doc`` (what is left after a partial restore)."""
    lines = [doc.header()]
    for seq, e in enumerate(doc.entries):
        lines.append({"t": "write", "seq": seq, **_entry_fields(e)})
        if e.get("state") == WRITTEN:
            lines.append({"t": "done", "seq": seq})
    lines += [{"t": "file", **{k: f.get(k) for k in ("path", "old", "mode", "sha256")}}
              for f in doc.files]
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)
    path = store.runtime if doc.legacy else doc.path
    try:
        store.sysroot.write_atomic(path, text)
        if doc.legacy:
            store.sysroot.remove(LEGACY)
    except OSError as err:
        raise DataError(store.shown(path), err.strerror or type(err).__name__) from err


def remove(store):
    """Drop the journal, wherever it is."""
    for path, _parse in store.locations():
        try:
            store.sysroot.remove(path)
        except OSError as err:
            raise DataError(store.shown(path), f"cannot remove: {err.strerror}") from err


def present(store):
    """Is there a journal (not checked: load() checks it)?"""
    return any(store.sysroot.exists(path) for path, _parse in store.locations())


def load(store):
    """The checked journal (a Doc), or None when there is none; DataError naming it.
    ``store``: a Store, or a SysRoot."""
    store = store if isinstance(store, Store) else Store(store)
    for abspath, parse in store.locations():
        try:
            present = store.sysroot.exists(abspath)
        except PermissionError as err:
            raise DataError(store.shown(abspath), "not readable by this user (run as root)") from err
        if present:
            raw = _read(store, abspath)
            try:
                return Doc(**parse(raw), path=abspath)
            except C.Corrupt as err:
                raise DataError(store.shown(abspath), f"corrupt journal, {err}; not "
                                "trusted: inspect it, then remove it by hand") from err
    return None


def _read(store, abspath):
    try:
        with open(store.sysroot.path(abspath), "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(store.shown(abspath), err.strerror or type(err).__name__) from err
