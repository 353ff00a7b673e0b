"""The bisect's own files: a state file beside git's BISECT_* files (options,
endpoints, one entry per step) and a log that is 'git bisect log' with a
header line carrying the options, so 'bisect replay LOG' can go on from it
('git bisect replay' ignores '#' lines). Both are data: every field is checked
before anything acts on it."""

import json
import os
import re
from pathlib import Path

from vnuma_sched.bisect.options import Options, is_number, show
from vnuma_sched.errors import BadInput, DataError

STATE_FILE = "vnuma-sched-bisect.json"
HEADER = "# vnuma-sched bisect: "
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
START = re.compile(r"^git bisect start (.*)$", re.M)


def path(git_dir):
    return Path(git_dir) / STATE_FILE


def load(git_dir):
    """The state document, or None when there is none (or it is not an object)."""
    try:
        doc = json.loads(path(git_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def save(git_dir, doc):
    tmp = path(git_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path(git_dir))


def add_step(git_dir, entry):
    """Record a step in a state that 'bisect run' started; no state: nothing to do."""
    doc = load(git_dir)
    if doc is None or doc.get("status") != "bisecting":
        return None
    doc["steps"] = [s for s in steps(doc) if s["commit"] != entry["commit"]]
    doc["steps"].append(entry)
    save(git_dir, doc)
    return doc


def in_progress(git_dir):
    return (Path(git_dir) / "BISECT_START").exists()


def ours(git_dir, doc):
    """Is the bisect in progress the one this state describes?"""
    if not doc or doc.get("status") != "bisecting" or not in_progress(git_dir):
        return False
    if not all(isinstance(doc.get(k), str) and doc[k] for k in ("good", "bad")):
        return False
    try:
        log = (Path(git_dir) / "BISECT_LOG").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return doc["good"] in log and doc["bad"] in log


def _numbers(v):
    return isinstance(v, list) and bool(v) and all(map(is_number, v))


def _check_endpoints(ep):
    if ep is None:
        return
    if not isinstance(ep, dict):
        raise ValueError("endpoints: expected an object")
    for key in ("good", "bad"):
        if not _numbers(ep.get(key)):
            raise ValueError(f"endpoints: {key} is not a list of numbers")
    for key in ("good_median", "bad_median", "threshold"):
        if not is_number(ep.get(key)):
            raise ValueError(f"endpoints: {key} is not a number")
    if not isinstance(ep.get("bad_above"), bool):
        raise ValueError("endpoints: bad_above is not true or false")


def _check_step(entry):
    if not isinstance(entry, dict) or not isinstance(entry.get("commit"), str) \
            or not isinstance(entry.get("verdict"), str):
        raise ValueError("steps: an entry without commit and verdict")
    if "median" in entry:
        iv = entry.get("interval")
        if not (is_number(entry["median"]) and isinstance(iv, list) and len(iv) == 2
                and all(map(is_number, iv)) and isinstance(entry.get("n"), int)):
            raise ValueError(f"steps: {entry['commit'][:12]}: malformed median/interval/n")


def steps(doc):
    """The state's step entries (none when they are malformed)."""
    try:
        for entry in doc.get("steps", []):
            _check_step(entry)
    except (ValueError, TypeError):
        return []
    return list(doc.get("steps", []))


def check_commits(doc):
    for key in ("good", "bad"):
        if not isinstance(doc.get(key), str) or not COMMIT.fullmatch(doc[key]):
            raise ValueError(f"{key}: expected a full commit id, got {show(doc.get(key))}")


def check(git_dir, doc):
    """Options (complete), commits, endpoints and steps of a state document; DataError
    naming the state file."""
    try:
        opts = Options.from_dict(doc.get("options"))
        check_commits(doc)
        _check_endpoints(doc.get("endpoints"))
        if not isinstance(doc.get("steps", []), list):
            raise ValueError("steps: expected a list")
        for entry in doc.get("steps", []):
            _check_step(entry)
    except (BadInput, ValueError) as err:
        raise DataError(str(path(git_dir)), f"malformed bisect state: {err}") from err
    return opts


def log_text(doc, git_log):
    header = {"options": doc["options"], "good": doc["good"], "bad": doc["bad"],
              "endpoints": doc.get("endpoints")}
    return HEADER + json.dumps(header, separators=(",", ":")) + "\n" + git_log


def _text(log_path):
    try:
        data = Path(log_path).read_bytes()
    except OSError as err:
        raise BadInput(f"{log_path}: {err.strerror or err}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(str(log_path), f"not a text file (no UTF-8 at byte {err.start})") \
            from err


def _header(log_path, first):
    try:
        header = json.loads(first[len(HEADER):])
        if not isinstance(header, dict):
            raise ValueError("expected an object")
        opts = Options.from_dict(header.get("options"))
        check_commits(header)
        _check_endpoints(header.get("endpoints"))
    except (ValueError, RecursionError, BadInput) as err:
        raise DataError(str(log_path), f"malformed header line: {err}") from err
    return header, opts


def read_log(log_path):
    """(header, options, text) of a log written by 'bisect run'; BadInput when it is not
    one, DataError when it is one whose header or text is malformed."""
    text = _text(log_path)
    first = text.splitlines()[0] if text else ""
    if not first.startswith(HEADER):
        raise BadInput(f"{log_path}: not a vnuma-sched bisect log (no '{HEADER.strip()}' "
                       "header line)")
    header, opts = _header(log_path, first)
    start = START.search(text)
    if start is None:
        raise DataError(str(log_path), "no 'git bisect start' line")
    if "--no-checkout" not in start.group(1):
        raise DataError(str(log_path), "its 'git bisect start' line lacks --no-checkout: "
                                       "replaying it would check out commits in the tree")
    return header, opts, text
