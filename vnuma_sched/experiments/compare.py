"""A/B results from per-run records: statistics per metric, the table, the plot."""

from pathlib import Path

from vnuma_sched.errors import DataError
from vnuma_sched.experiments import stats
from vnuma_sched.probes import recording, report
from vnuma_sched.probes.classify import matrix_total
from vnuma_sched.probes.recording import is_number, iter_jsonl, printable
from vnuma_sched.probes.spec import PRIMARY


def _check_matrix(mx, size):
    """A square list of lists of numbers, of ``size`` nodes when given; its size."""
    if not (isinstance(mx, list) and mx and all(
            isinstance(row, list) and len(row) == len(mx) and all(map(is_number, row))
            for row in mx)):
        raise ValueError("matrix is not a square table of numbers")
    if size is not None and len(mx) != size:
        raise ValueError(f"matrix of {len(mx)} nodes, earlier runs have {size}")
    return len(mx)


def _check_run(rec, size):
    """ValueError unless a run record has what the statistics read; the matrix size."""
    if rec.get("arm") not in ("a", "b") or "score" not in rec:
        raise ValueError("run without arm a/b or score")
    if rec["score"] is not None and not is_number(rec["score"]):
        raise ValueError(f"score {rec['score']!r:.40} is not a number")
    mets = rec.get("metrics", {})
    if not isinstance(mets, dict) or not all(map(is_number, mets.values())):
        raise ValueError("metrics is not an object of numbers")
    return _check_matrix(rec["matrix"], size) if "matrix" in rec else size


def read_runs(path):
    """(guest record, run records) of a runs.jsonl; DataError naming the line."""
    guest, runs, size = None, [], None
    for n, rec in iter_jsonl(path, "runs file"):
        if not isinstance(rec, dict):
            raise DataError(str(path), f"line {n}: not a record")
        if rec.get("type") == "guest":
            guest = guest or rec
        elif rec.get("type") == "run":
            try:
                size = _check_run(rec, size)
            except ValueError as err:
                raise DataError(str(path), f"line {n}: {err}") from err
            runs.append(rec)
    if not runs:
        raise DataError(str(path), "no runs recorded")
    return guest, runs


def values(runs, arm, metric):
    out = []
    for r in runs:
        if r["arm"] != arm:
            continue
        v = r["score"] if metric == "workload_score" else r.get("metrics", {}).get(metric)
        if v is not None:
            out.append(v)
    return out


def _measured(runs, arm):
    names = {k for r in runs if r["arm"] == arm for k in r.get("metrics", {})}
    return sorted(names) + (["workload_score"] if values(runs, arm, "workload_score") else [])


def metrics(runs, source):
    """Statistics per metric with at least 2 values in each arm; DataError (naming
    ``source``) when no metric has that: there is nothing to compare."""
    names = ["workload_score"] + sorted({k for r in runs for k in r.get("metrics", {})})
    out = {}
    for name in names:
        a, b = values(runs, "a", name), values(runs, "b", name)
        if len(a) >= 2 and len(b) >= 2:
            out[name] = stats.compare(a, b)
    if not out:
        a, b = (", ".join(map(printable, _measured(runs, arm)[:3])) or "none"
                for arm in ("a", "b"))
        raise DataError(str(source), "no metric has at least 2 values in both arms, "
                                     f"nothing to compare (A: {a}; B: {b})")
    return out


def matrices(runs):
    """Per arm: node x node migrations summed over runs."""
    out = {}
    for r in runs:
        mx = r.get("matrix")
        if mx is None:
            continue
        acc = out.setdefault(r["arm"], [[0] * len(mx) for _ in mx])
        if len(mx) != len(acc):
            raise DataError(str(r.get("source", "runs")), f"a {len(mx)}-node migration "
                            f"matrix where other runs have {len(acc)} nodes")
        for s, row in enumerate(mx):
            for d, v in enumerate(row):
                acc[s][d] += v
    return out


def plot(mets, mats, path, title):
    """Ratios with their intervals, and each arm's migration matrix as a heatmap."""
    import matplotlib  # noqa: PLC0415 - heavy, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [n for n in PRIMARY if n in mets and mets[n]["ratio"] is not None]
    fig = plt.figure(figsize=(11, 6))
    ax = fig.add_subplot(1, 2, 1) if mats else fig.add_subplot(1, 1, 1)
    ys = range(len(names))
    ratios = [mets[n]["ratio"] for n in names]
    lo = [r - (mets[n]["ci95"] or [r, r])[0] for n, r in zip(names, ratios)]
    hi = [(mets[n]["ci95"] or [r, r])[1] - r for n, r in zip(names, ratios)]
    ax.errorbar(ratios, list(ys), xerr=[lo, hi], fmt="o", capsize=4)
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_xscale("symlog", linthresh=0.1)  # ratios span 0 to >10; 0 stays visible
    ax.set_xlim(left=-0.02)
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("B median / A median (95% bootstrap CI, symlog)")
    ax.set_title(title)
    for i, arm in enumerate(sorted(mats)):
        mx = mats[arm]
        hx = fig.add_subplot(2, 2, 2 + 2 * i)
        im = hx.imshow(mx, cmap="viridis")
        labels = [f"node{n}" for n in range(len(mx))]
        hx.set_xticks(range(len(mx)), labels)
        hx.set_yticks(range(len(mx)), labels)
        hx.set_xlabel("to")
        hx.set_ylabel("from")
        for s_, row in enumerate(mx):
            for d, v in enumerate(row):
                hx.text(d, s_, str(v), ha="center", va="center", color="white")
        hx.set_title(f"arm {arm}: migrations, all runs")
        fig.colorbar(im, ax=hx)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def recording_files(path):
    """A recording file, or every *.jsonl in a directory (sorted)."""
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files:
        raise DataError(str(path), "no recordings (*.jsonl) here")
    return files


def runs_from_recordings(paths_a, paths_b):
    """Run records from 'vnuma-sched record' files: each recording is one run; the
    workload score is 1/duration when the recording ran a command."""

    runs = []
    for arm, paths in (("a", paths_a), ("b", paths_b)):
        for path in paths:
            meta, intervals, _, end = recording.read(path)
            tot = report.totals(intervals)
            duration = (end or {}).get("duration_s")
            rec = {"type": "run", "arm": arm, "source": str(path),
                   "score": (1.0 / duration) if meta.get("command") and duration else None,
                   "metrics": report.metrics(tot)}
            if "migrate" in tot:
                rec["matrix"] = matrix_total(tot["migrate"]["matrix"])
            runs.append(rec)
    return runs
