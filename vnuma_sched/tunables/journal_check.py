"""Parse and check a journal's text: a journal is data, never trusted as it is.

Every write record must name a registry knob, one of that knob's paths, and
values of the knob's type; every file record one of the drop-in files that
'tune apply --persist' creates. Anything else raises Corrupt naming the line.
Pure: bytes in, plain data out.
"""

import json
import re

from vnuma_sched.tunables import knobs as K

_PROFILE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_TEXT = re.compile(r"[\x20-\x7e]{0,256}")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_FILE = 1 << 20


class Corrupt(Exception):
    """What is wrong, and where ("line 3: ...")."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _need(cond, why):
    if not cond:
        raise Corrupt(why)


def _decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Corrupt(f"not UTF-8 text (byte {err.start})") from err


def _json(line):
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as err:
        raise Corrupt(f"not JSON ({str(err)[:60]})") from err
    _need(isinstance(rec, dict), "not a JSON object")
    return rec


def header(rec):
    _need(rec.get("version") == 2, "unknown version")
    _need(isinstance(rec.get("profile"), str) and _PROFILE.fullmatch(rec["profile"]),
          "profile is not a profile name")
    for key in ("kernel", "created"):
        _need(isinstance(rec.get(key), str) and _TEXT.fullmatch(rec[key]),
              f"{key} is not a short text")
    boot = rec.get("boot_id")
    _need(boot is None or (isinstance(boot, str) and _TEXT.fullmatch(boot)),
          "boot_id is not a short text")
    return {"profile": rec["profile"], "kernel": rec["kernel"], "created": rec["created"],
            "boot_id": boot}


def entry(rec):
    """The checked fields of a write record."""
    for key in ("knob", "kind", "path", "old", "new"):
        _need(isinstance(rec.get(key), str), f"{key} is not a string")
    knob = K.known(rec["knob"])
    _need(knob is not None, f"unknown knob {rec['knob'][:60]!r}")
    _need(rec["kind"] == knob.kind and knob.kind not in (K.BOOT, K.DOMAIN_BOOT),
          f"{knob.name} is not a {rec['kind'][:20]!r} knob written at run time")
    _need(knob.allows_path(rec["path"]),
          f"{rec['path'][:100]!r} is not a path of {knob.name}")
    for key in ("old", "new"):
        _need(knob.valid_stored(rec[key]), f"{key} {rec[key][:40]!r} is not a {knob.name} value")
    return {k: rec[k] for k in ("knob", "kind", "path", "old", "new")}


def file_record(rec):
    _need(rec.get("path") in K.PERSIST_FILES,
          f"{str(rec.get('path'))[:100]!r} is not a file this tool writes")
    old, mode, sha = rec.get("old"), rec.get("mode"), rec.get("sha256")
    _need(old is None or (isinstance(old, str) and len(old) <= MAX_FILE),
          "old is not the text of a file")
    _need(mode is None or (_is_int(mode) and 0 <= mode <= 0o7777), "mode is not a file mode")
    _need((isinstance(sha, str) and _SHA.fullmatch(sha)) or (sha is None and old is None),
          "sha256 is not a SHA-256")   # None: from the previous format, content unknown
    return {"path": rec["path"], "old": old, "mode": mode, "sha256": sha}


def _record(rec, doc):
    kind = rec.get("t")
    if kind == "write":
        _need(rec.get("seq") == len(doc["entries"]) and _is_int(rec.get("seq")),
              "seq out of order")
        doc["entries"].append({**entry(rec), "state": "pending"})
    elif kind == "done":
        seq = rec.get("seq")
        _need(_is_int(seq) and 0 <= seq < len(doc["entries"]), "done for an unknown seq")
        doc["entries"][seq]["state"] = "written"
    elif kind == "file":
        doc["files"].append(file_record(rec))
    else:
        raise Corrupt(f"unknown record type {str(kind)[:20]!r}")


def parse_lines(raw):
    """Doc fields from the JSON-lines format (a torn last line is ignored)."""
    lines = _decode(raw).split("\n")
    lines.pop()           # "" after the last newline, or a torn last record
    if not lines:
        raise Corrupt("line 1: no header")
    for n, line in enumerate(lines, 1):
        try:
            rec = _json(line)
            if n == 1:
                _need(rec.get("t") == "header", "not a header")
                doc = {**header(rec), "entries": [], "files": []}
            else:
                _record(rec, doc)
        except Corrupt as err:
            raise Corrupt(f"line {n}: {err}") from err
    return doc


def parse_legacy(raw):
    """Doc fields from the previous format: one JSON document."""
    doc = _json(_decode(raw))
    _need(doc.get("version") == 1, "unknown version")
    out = header({**doc, "version": 2})
    entries, files = doc.get("entries"), doc.get("files", [])
    _need(isinstance(entries, list) and isinstance(files, list), "entries is not a list")
    out["entries"] = []
    for n, rec in enumerate(entries):
        _need(isinstance(rec, dict), f"entry {n} is not an object")
        try:
            state = "written" if rec.get("state") == "written" else "pending"
            out["entries"].append({**entry(rec), "state": state})
        except Corrupt as err:
            raise Corrupt(f"entry {n}: {err}") from err
    for path in files:
        _need(path in K.PERSIST_FILES, f"{str(path)[:100]!r} is not a file this tool writes")
    out["files"] = [{"path": p, "old": None, "mode": None, "sha256": None} for p in files]
    return {**out, "legacy": True}
