"""Write-ahead journal of tunable writes: every entry is on disk (fsync'd) before
its write happens, so a revert works even after the applying process was killed."""

import json
import time

from vnuma_sched.errors import DataError

JOURNAL = "/run/vnuma_sched/journal.json"
PENDING, WRITTEN = "pending", "written"


class Journal:
    def __init__(self, sysroot, profile, kernel, path=JOURNAL):
        self.sysroot, self.path = sysroot, path
        self.doc = {"version": 1, "profile": profile, "kernel": kernel,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "entries": [], "files": []}

    def _flush(self):
        self.sysroot.write_atomic(self.path, json.dumps(self.doc, indent=1) + "\n")

    def begin(self, knob, kind, path, old, new):
        self.doc["entries"].append({"knob": knob, "kind": kind, "path": path, "old": old,
                                    "new": new, "state": PENDING})
        self._flush()
        return len(self.doc["entries"]) - 1

    def done(self, index):
        self.doc["entries"][index]["state"] = WRITTEN
        self._flush()

    def add_file(self, path):
        self.doc["files"].append(path)
        self._flush()

    def remove(self):
        self.sysroot.remove(self.path)


def load(sysroot, path=JOURNAL):
    """The journal document, or None when there is none."""
    if not sysroot.exists(path):
        return None
    text = sysroot.read(path)
    try:
        doc = json.loads(text)
        doc["entries"], doc["profile"]  # noqa: B018 - shape check
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"corrupt journal ({err}); inspect it before removing") from err
    return doc
