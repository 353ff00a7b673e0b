"""Per-interval samples as JSON-lines records, and reading them back.

A recording is: one "meta" line (kernel, topology, command line, the series'
gates, probe availability), "interval" lines (counter deltas), optional "event"
lines (individual migrations), and an "end" line (lost events, exit code).
"""

import json
import time

from vnuma_sched.errors import DataError
from vnuma_sched.probes import classify
from vnuma_sched.system import facts

VERSION = 1


def meta(session, sysroot, interval, command=None):
    return {"type": "meta", "version": VERSION,
            "kernel": facts.release(sysroot, ""),
            "cmdline": sysroot.read_optional("/proc/cmdline", ""),
            "topology": session.topology.to_dict(), "gates": facts.patch_gate_values(sysroot),
            "interval_s": interval, "command": command,
            "probes": {n: {"available": a.ok, "reason": a.reason, "notes": a.notes}
                       for n, a in session.status.items()},
            "started": time.time()}


class Sampler:
    """Turns cumulative snapshots into interval records."""

    def __init__(self, session):
        self.session = session
        self.prev = session.sample()
        self.t_prev = time.monotonic()

    def interval(self):
        cur = self.session.sample()
        now = time.monotonic()
        rec = {"type": "interval", "t": time.time(), "dt": round(now - self.t_prev, 6),
               "probes": classify.delta(self.prev, cur)}
        self.prev, self.t_prev = cur, now
        return rec


def iter_jsonl(path, what="recording"):
    """(line number, record) of a JSON-lines file; DataError naming the line."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as err:
        raise DataError(str(path), err.strerror or str(err)) from err
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise DataError(str(path), f"line {lineno}: not JSON ({err.msg}); "
                                           f"truncated or corrupt {what}") from err
            yield lineno, rec


def read(path):
    """(meta, intervals, events, end) of a recording; DataError naming the line."""
    meta_rec, intervals, evs, end = None, [], [], None
    for lineno, rec in iter_jsonl(path):
        kind = rec.get("type") if isinstance(rec, dict) else None
        if lineno == 1 and kind != "meta":
            raise DataError(path, "line 1: a recording starts with a meta record")
        if kind == "meta":
            meta_rec = rec
        elif kind == "interval":
            if not isinstance(rec.get("probes"), dict) or "dt" not in rec:
                raise DataError(path, f"line {lineno}: interval without probes/dt")
            intervals.append(rec)
        elif kind == "event":
            evs.append(rec)
        elif kind == "end":
            end = rec
        else:
            raise DataError(path, f"line {lineno}: unknown record type {kind!r}")
    if meta_rec is None:
        raise DataError(path, "empty recording")
    return meta_rec, intervals, evs, end
