"""The bisect's own files: a state file beside git's BISECT_* files (options,
endpoints, one entry per step) and a log that is 'git bisect log' with a
header line carrying the options, so 'bisect replay LOG' can go on from it
('git bisect replay' ignores '#' lines)."""

import json
import os
from pathlib import Path

from vnuma_sched.bisect.options import Options
from vnuma_sched.errors import BadInput

STATE_FILE = "vnuma-sched-bisect.json"
HEADER = "# vnuma-sched bisect: "


def path(git_dir):
    return Path(git_dir) / STATE_FILE


def load(git_dir):
    try:
        return json.loads(path(git_dir).read_text())
    except (OSError, ValueError):
        return None


def save(git_dir, doc):
    tmp = path(git_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path(git_dir))


def add_step(git_dir, entry):
    """Record a step in a state that 'bisect run' started; no state: nothing to do."""
    doc = load(git_dir)
    if doc is None or doc.get("status") != "bisecting":
        return None
    doc["steps"] = [s for s in doc.get("steps", []) if s["commit"] != entry["commit"]]
    doc["steps"].append(entry)
    save(git_dir, doc)
    return doc


def in_progress(git_dir):
    return (Path(git_dir) / "BISECT_START").exists()


def ours(git_dir, doc):
    """Is the bisect in progress the one this state describes?"""
    if not doc or doc.get("status") != "bisecting" or not in_progress(git_dir):
        return False
    try:
        log = (Path(git_dir) / "BISECT_LOG").read_text()
    except OSError:
        return False
    return doc["good"] in log and doc["bad"] in log


def log_text(doc, git_log):
    header = {"options": doc["options"], "good": doc["good"], "bad": doc["bad"],
              "endpoints": doc.get("endpoints")}
    return HEADER + json.dumps(header, separators=(",", ":")) + "\n" + git_log


def read_log(log_path):
    """(header, text) of a log written by 'bisect run'; BadInput when it is not one."""
    try:
        text = Path(log_path).read_text()
    except OSError as err:
        raise BadInput(f"{log_path}: {err.strerror}") from err
    first = text.splitlines()[0] if text else ""
    if not first.startswith(HEADER):
        raise BadInput(f"{log_path}: not a vnuma-sched bisect log (no '{HEADER.strip()}' "
                       "header line)")
    try:
        header = json.loads(first[len(HEADER):])
        Options.from_dict(header["options"])
        header["good"], header["bad"]  # noqa: B018 - both must be there
    except (ValueError, KeyError, TypeError) as err:
        raise BadInput(f"{log_path}: malformed header line: {err}") from err
    if "git bisect start" not in text:
        raise BadInput(f"{log_path}: no 'git bisect start' line")
    return header, text
