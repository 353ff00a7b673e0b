"""Per-interval samples as JSON-lines records, and reading them back.

A recording is: one "meta" line (kernel, topology, command line, the series'
gates, probe availability), "interval" lines (counter deltas), optional "event"
lines (individual migrations), and an "end" line (lost events, exit code).
"""

import json
import time

from vnuma_sched.errors import DataError
from vnuma_sched.probes import classify, report
from vnuma_sched.system import facts

VERSION = 1
SUPPORTED = (VERSION,)        # the recording versions read() understands
MAX_COUNTER = 2 ** 64         # counters are u64 in the kernel


def meta(session, sysroot, interval, command=None):
    return {"type": "meta", "version": VERSION,
            "kernel": facts.release(sysroot, ""),
            "cmdline": sysroot.read_optional("/proc/cmdline", ""),
            "topology": session.topology.to_dict(), "gates": facts.patch_gate_values(sysroot),
            "interval_s": interval, "command": command,
            "probes": {n: {"available": a.ok, "reason": a.reason, "notes": a.notes,
                           "unsupported": a.unsupported}
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
        fh = open(path, "rb")
    except OSError as err:
        raise DataError(str(path), err.strerror or type(err).__name__) from err
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(str(path), f"line {lineno}: not UTF-8 text; not a {what}") \
                    from err
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                why = getattr(err, "msg", None) or str(err)
                raise DataError(str(path), f"line {lineno}: not JSON ({why}); truncated or "
                                           f"corrupt {what}") from err
            except RecursionError as err:
                raise DataError(str(path), f"line {lineno}: nested too deeply") from err
            yield lineno, rec


def is_number(value, limit=MAX_COUNTER):
    """A finite int or float (not a bool) within +-limit."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and -limit <= value <= limit)   # False for nan and inf too


def is_counter(value):
    """An int (not a bool) that fits the kernel's 64-bit counters (deltas may be < 0)."""
    return isinstance(value, int) and not isinstance(value, bool) and \
        -MAX_COUNTER <= value <= MAX_COUNTER


def check_counters(value, where):
    """Nested objects and lists whose leaves are counters; ValueError naming where not."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_counters(item, f"{where}.{printable(key)}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_counters(item, f"{where}[{i}]")
    elif not is_counter(value):
        raise ValueError(f"{where} is {_short(value)}, not a counter")


def printable(key):
    """A name from a file as it can be shown in a one-line message."""
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def shape(value):
    """The structure of nested objects and lists, numbers as 0 (to compare intervals)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return 0


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_meta(rec):
    version = rec.get("version")
    if isinstance(version, bool) or version not in SUPPORTED:
        raise ValueError(f"recording version {_short(version)} is not supported (this "
                         f"vnuma-sched reads version {', '.join(map(str, SUPPORTED))})")
    probes = rec.get("probes", {})
    if not isinstance(probes, dict):
        raise ValueError("meta: probes is not an object")
    for name, p in probes.items():
        if not isinstance(p, dict) or not isinstance(p.get("available", False), bool) \
                or not (p.get("available") or isinstance(p.get("reason"), str)):
            raise ValueError(f"meta: probe {name!r}: expected available and a reason")
        unsupported = p.get("unsupported", {})
        if not (isinstance(unsupported, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in unsupported.items())):
            raise ValueError(f"meta: probe {name!r}: unsupported is not metric -> reason")
    if not isinstance(rec.get("gates", {}), dict):
        raise ValueError("meta: gates is not an object")
    command = rec.get("command")
    if command is not None and not (isinstance(command, list)
                                    and all(isinstance(w, str) for w in command)):
        raise ValueError("meta: command is not a list of words")


def _check_end(rec):
    if not (isinstance(rec.get("lost", 0), int) and is_number(rec.get("lost", 0))
            and rec.get("lost", 0) >= 0):
        raise ValueError("end: lost is not a count")
    code = rec.get("exit_code")
    if code is not None and not (isinstance(code, int) and is_number(code)):
        raise ValueError("end: exit_code is not an integer")
    duration = rec.get("duration_s", 0)
    if not (is_number(duration) and duration >= 0):
        raise ValueError("end: duration_s is not a number of seconds")


class _Intervals:
    """Interval records, checked one by one and against the first of each probe."""

    def __init__(self):
        self.records, self.shapes = [], {}

    def add(self, rec):
        probes = rec.get("probes")
        if not isinstance(probes, dict) or not is_number(rec.get("dt")) or rec["dt"] < 0:
            raise ValueError("interval without probes or a number of seconds (dt)")
        for name, data in probes.items():
            if not isinstance(data, dict):
                raise ValueError(f"probe {name!r}: not an object")
            check_counters(data, printable(name))
            sig = shape(report.counters(name, data))
            if self.shapes.setdefault(name, sig) != sig:
                raise ValueError(f"probe {name!r}: other fields or sizes than in the "
                                 "first interval")
        report.check_interval(probes)
        self.records.append(rec)


def _add(kind, rec, out):
    """File one record; ValueError when it is malformed."""
    if kind == "meta":
        if out["meta"] is not None:
            raise ValueError("a second meta record")
        _check_meta(rec)
        out["meta"] = rec
    elif kind == "interval":
        out["intervals"].add(rec)
    elif kind == "event":
        out["events"].append(rec)
    elif kind == "end":
        _check_end(rec)
        out["end"] = rec
    else:
        raise ValueError(f"unknown record type {_short(kind)}")


def read(path):
    """(meta, intervals, events, end) of a recording; DataError naming the line."""
    out = {"meta": None, "intervals": _Intervals(), "events": [], "end": None}
    for lineno, rec in iter_jsonl(path):
        kind = rec.get("type") if isinstance(rec, dict) else None
        if lineno == 1 and kind != "meta":
            raise DataError(str(path), "line 1: a recording starts with a meta record")
        try:
            _add(kind, rec, out)
        except (ValueError, RecursionError) as err:
            raise DataError(str(path), f"line {lineno}: {err}") from err
    if out["meta"] is None:
        raise DataError(str(path), "empty recording")
    return out["meta"], out["intervals"].records, out["events"], out["end"]
