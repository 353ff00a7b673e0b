"""Hypothesis over the files the probes, compare and bisect commands read: a recording,
a runs file, a bisect log header. For arbitrary bytes, arbitrary JSON lines, and
well-formed files with one field replaced or removed, each parser either gives a
result that the next steps (report, statistics, the step command line) can use, or
raises the right VnumaError: exit 2 or 3, one line, naming the file once."""

import copy
import json
import math

from click.testing import CliRunner
from helpers import DATA, interval, write_recording
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnuma_sched.bisect import drive, state
from vnuma_sched.bisect.options import Options
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError, VnumaError
from vnuma_sched.experiments import compare
from vnuma_sched.probes import recording, report
from vnuma_sched.probes.spec import PRIMARY
from vnuma_sched.render import ab_text, report_text

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats()
           | st.text(max_size=12) | st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 64 + 1]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
TYPES = st.sampled_from(["meta", "interval", "event", "end", "run", "guest", "x"])
RECORD = st.builds(lambda kind, extra: {"type": kind, **extra}, TYPES,
                   st.dictionaries(st.sampled_from(["version", "probes", "dt", "lost", "arm",
                                                    "score", "metrics", "matrix", "command",
                                                    "exit_code", "duration_s", "gates"]),
                                   JSON, max_size=5))


def refused(err, path, classes=(DataError,)):
    """The error a user sees: the right class, exit 2 or 3, one line, the path once."""
    assert isinstance(err, classes), f"{type(err).__name__}: {err}"
    assert err.exit_code in (2, 3)
    message = str(err)
    assert message and len(message.splitlines()) == 1, message
    assert message.count(str(path)) == 1, message


def paths(doc, prefix=()):
    """Every place in a JSON document: (path of keys/indexes)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def mutate(doc, data):
    """``doc`` with one place replaced by any JSON value, or removed."""
    doc = copy.deepcopy(doc)
    where = data.draw(st.sampled_from(paths(doc)))
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(JSON)
    return doc


def write_lines(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


# --- recordings ------------------------------------------------------------------------

def use_recording(path):
    """read -> report -> text -> a compare run record; DataError is the only refusal."""
    try:
        parts = recording.read(path)
    except VnumaError as err:
        refused(err, path)
        return None
    doc = report.summarize(*parts)
    report_text(doc)
    json.dumps(doc)
    runs = compare.runs_from_recordings([path], [path])
    compare.matrices(runs)
    return doc


def check_report_cli(path):
    res = CliRunner().invoke(main, ["report", str(path)])
    assert res.exit_code in (0, 3), res.output
    if res.exit_code:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "internal error" not in lines[0], res.stderr


def _valid_recording(tmp_path):
    path = write_recording(tmp_path / "valid.jsonl", [interval(2), interval(2, dt=2.0)])
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@FUZZ
@given(data=st.binary(max_size=300))
def test_recording_from_any_bytes(tmp_path, data):
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    use_recording(path)


@FUZZ
@given(recs=st.lists(RECORD | JSON, max_size=6))
def test_recording_from_any_json_lines(tmp_path, recs):
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(r).encode() for r in recs])
    use_recording(path)
    check_report_cli(path)


@FUZZ
@given(data=st.data())
def test_recording_with_one_field_wrong(tmp_path, data):
    recs = mutate(_valid_recording(tmp_path), data)
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(r).encode() for r in recs])
    doc = use_recording(path)
    if doc is not None:
        assert all(isinstance(v["total"], (int, float)) for v in doc["metrics"].values())
    check_report_cli(path)


# --- runs files ----------------------------------------------------------------------

def _few_metrics(rec, keep=("cross_node_migrations", "halts", "wake_ipis")):
    """A run record with three metrics (the statistics of forty are slow to repeat)."""
    if "metrics" in rec:
        rec["metrics"] = {k: rec["metrics"][k] for k in keep}
    return rec


RUNS = [_few_metrics(json.loads(ln))
        for ln in (DATA / "ab" / "runs.jsonl").read_text().splitlines()]


def use_runs(path):
    """read_runs -> statistics -> matrices -> the table; DataError is the only refusal."""
    try:
        _, runs = compare.read_runs(path)
        mets = compare.metrics(runs, path)
    except VnumaError as err:
        refused(err, path)
        return None
    compare.matrices(runs)
    ab_text({"arms": {}, "metrics": mets, "runs": len(runs)}, PRIMARY)
    for m in mets.values():   # per arm; the reference has no p
        assert all(e.get("p") is None or 0 <= e["p"] <= 1 for e in m.values())
    return mets


@FUZZ
@given(data=st.binary(max_size=300))
def test_runs_from_any_bytes(tmp_path, data):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(data)
    use_runs(path)


@FUZZ
@given(recs=st.lists(RECORD | JSON, max_size=6))
def test_runs_from_any_json_lines(tmp_path, recs):
    use_runs(write_lines(tmp_path / "runs.jsonl", [json.dumps(r).encode() for r in recs]))


@FUZZ
@given(data=st.data())
def test_runs_with_one_field_wrong(tmp_path, data):
    recs = mutate(RUNS, data)
    use_runs(write_lines(tmp_path / "runs.jsonl", [json.dumps(r).encode() for r in recs]))


# --- bisect log headers --------------------------------------------------------------

GOOD, BAD = "1" * 40, "2" * 40
HEADER = {"options": Options(metric="cross_node_migrations", threshold=125.0, bad_above=True,
                             measure_cmd="lab-measure --fast",
                             fragments=["/tmp/guest.config"]).to_dict(),
          "good": GOOD, "bad": BAD,
          "endpoints": {"good_median": 100, "bad_median": 150, "ratio": 1.5,
                        "ci95": [1.4, 1.6], "p": 0.008, "bad_above": True,
                        "threshold": 125.0, "good": [100, 99, 101, 100, 98],
                        "bad": [150, 149, 151, 150, 152]}}
GIT_LOG = f"git bisect start '--no-checkout' '{BAD}' '{GOOD}'\n# good: [{GOOD}] base\n"


def use_header(path):
    """read_log -> options that make a complete step command; BadInput or DataError."""
    try:
        header, opts, _ = state.read_log(path)
    except VnumaError as err:
        refused(err, path, (BadInput, DataError))
        return None
    assert math.isfinite(opts.threshold) and isinstance(opts.bad_above, bool)
    assert not header["good"].startswith("-") and not header["bad"].startswith("-")
    opts.step_args()
    assert Options.from_dict(opts.to_dict()) == opts
    try:
        drive.trusted(opts, path)
    except BadInput as err:   # a command in the header: refused unless confirmed
        refused(err, path, (BadInput,))
    drive.trusted(opts, path, trust_log=True)
    return opts


@FUZZ
@given(data=st.binary(max_size=300))
def test_bisect_log_from_any_bytes(tmp_path, data):
    path = tmp_path / "x.log"
    path.write_bytes(state.HEADER.encode() + data + b"\n" + GIT_LOG.encode())
    use_header(path)


@FUZZ
@given(header=JSON)
def test_bisect_log_with_any_json_header(tmp_path, header):
    path = tmp_path / "x.log"
    path.write_text(state.HEADER + json.dumps(header) + "\n" + GIT_LOG)
    use_header(path)


@FUZZ
@given(data=st.data())
def test_bisect_log_with_one_header_field_wrong(tmp_path, data):
    header = mutate(HEADER, data)
    path = tmp_path / "x.log"
    path.write_text(state.HEADER + json.dumps(header) + "\n" + GIT_LOG)
    use_header(path)


STATE = {"status": "bisecting", "tree": "/src/linux", "start": "main", **HEADER,
         "candidates": 8, "estimate": 3,
         "steps": [{"commit": "3" * 40, "subject": "s", "verdict": "bad", "median": 150,
                    "interval": [148, 152], "coverage": 0.94, "n": 5, "values": [150] * 5}]}


@FUZZ
@given(data=st.data())
def test_bisect_state_with_one_field_wrong(tmp_path, data):
    """The state 'bisect resume' goes on from: options that make a step command, or a
    DataError naming the state file."""
    doc = mutate(STATE, data)
    try:
        opts = state.check(tmp_path, doc)
    except VnumaError as err:
        refused(err, state.path(tmp_path))
        return
    opts.step_args()
    for entry in state.steps(doc):
        assert isinstance(entry["commit"], str)


def test_the_unchanged_header_is_accepted(tmp_path):
    path = tmp_path / "x.log"
    path.write_text(state.HEADER + json.dumps(HEADER) + "\n" + GIT_LOG)
    opts = use_header(path)
    assert opts.threshold == 125.0 and opts.measure_cmd == "lab-measure --fast"


def test_the_unchanged_files_are_accepted(tmp_path):
    path = write_lines(tmp_path / "r.jsonl",
                       [json.dumps(r).encode() for r in _valid_recording(tmp_path)])
    assert use_recording(path)["metrics"]["cross_node_migrations"]["total"] == 10
    runs = write_lines(tmp_path / "runs.jsonl", [json.dumps(r).encode() for r in RUNS])
    assert "cross_node_migrations" in use_runs(runs)
