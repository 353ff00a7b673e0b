"""A/B results from per-run records: statistics per metric and arm, each arm against
the reference (the first), the spread between and within boots, the plot."""

from pathlib import Path

from vnuma_sched.errors import DataError
from vnuma_sched.experiments import arms, stats
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


def _check_run(rec, sizes):
    """ValueError unless a run record has what the statistics read; records its
    matrix size in ``sizes`` (per arm: arms may boot guests with different nodes)."""
    if not isinstance(rec.get("arm"), str) or not arms.NAME.fullmatch(rec["arm"]) \
            or "score" not in rec:
        raise ValueError("run without an arm name or score")
    boot = rec.get("boot", 0)
    if not isinstance(boot, int) or isinstance(boot, bool) or boot < 0:
        raise ValueError(f"boot {boot!r:.40} is not a boot index")
    if rec["score"] is not None and not is_number(rec["score"]):
        raise ValueError(f"score {rec['score']!r:.40} is not a number")
    mets = rec.get("metrics", {})
    if not isinstance(mets, dict) or not all(map(is_number, mets.values())):
        raise ValueError("metrics is not an object of numbers")
    if "matrix" in rec:
        try:
            sizes[rec["arm"]] = _check_matrix(rec["matrix"], sizes.get(rec["arm"]))
        except ValueError as err:
            raise ValueError(f"{err} (arm {rec['arm']})") from None


def read_runs(path):
    """(guest records, run records) of a runs.jsonl; DataError naming the line."""
    guests, runs, sizes = [], [], {}
    for n, rec in iter_jsonl(path, "runs file"):
        if not isinstance(rec, dict):
            raise DataError(str(path), f"line {n}: not a record")
        if rec.get("type") == "guest":
            guests.append(rec)
        elif rec.get("type") == "run":
            try:
                _check_run(rec, sizes)
            except ValueError as err:
                raise DataError(str(path), f"line {n}: {err}") from err
            runs.append(rec)
    if not runs:
        raise DataError(str(path), "no runs recorded")
    return guests, runs


def arm_names(runs, planned=()):
    """The arms in order: those of the plan, then any other in order of appearance;
    the first is the reference."""
    names = list(planned)
    for r in runs:
        if r["arm"] not in names:
            names.append(r["arm"])
    return names


def values(runs, arm, metric, boot=None):
    """An arm's values of a metric in run order (of one boot when ``boot`` is given)."""
    out = []
    for r in runs:
        if r["arm"] != arm or (boot is not None and r.get("boot", 0) != boot):
            continue
        v = r["score"] if metric == "workload_score" else r.get("metrics", {}).get(metric)
        if v is not None:
            out.append(v)
    return out


def boots(runs):
    """The boot indices of the runs, sorted (runs without one are of boot 0)."""
    return sorted({r.get("boot", 0) for r in runs})


def _measured(runs, arm):
    names = {k for r in runs if r["arm"] == arm for k in r.get("metrics", {})}
    return sorted(names) + (["workload_score"] if values(runs, arm, "workload_score") else [])


COMPARED = ("ratio", "ci95", "p", "u", "inconclusive")   # of stats.compare, per arm


def _metric(runs, name, names, boot_ids):
    """{arm: spread [+ comparison with the reference]}; None unless the reference and
    another arm have at least 2 values."""
    ref = values(runs, names[0], name)
    out = {}
    for arm in names:
        vals = values(runs, arm, name)
        if len(vals) < 2 or len(ref) < 2:
            continue
        out[arm] = stats.spread([values(runs, arm, name, b) for b in boot_ids])
        if arm != names[0]:
            cmp = stats.compare(ref, vals)
            out[arm].update({k: cmp[k] for k in COMPARED})
    return out if len(out) >= 2 else None


def metrics(runs, source, names=None):
    """Per metric, per arm (the reference first): median, n, spread between and within
    boots; the other arms also ratio to the reference, 95% CI, Mann-Whitney p. A metric
    needs at least 2 values in the reference and in another arm; DataError (naming
    ``source``) when none has: there is nothing to compare."""
    names = names or arm_names(runs)
    boot_ids = boots(runs)
    out = {}
    for name in ["workload_score"] + sorted({k for r in runs for k in r.get("metrics", {})}):
        entry = _metric(runs, name, names, boot_ids) if len(names) >= 2 else None
        if entry:
            out[name] = entry
    if not out:
        seen = "; ".join(f"{arm}: " + (", ".join(map(printable, _measured(runs, arm)[:3]))
                                       or "none") for arm in names)
        which = "both arms" if len(names) == 2 else "the reference and another arm"
        raise DataError(str(source), f"no metric has at least 2 values in {which}, "
                                     f"nothing to compare ({seen})")
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


def plot(runs, mets, names, mats, path, title):
    """One panel per primary metric with every arm's runs (the reference first, a
    colour per boot, a bar at each median), then each arm's migration matrix."""
    import matplotlib  # noqa: PLC0415 - heavy, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = [n for n in PRIMARY if n in mets]
    cols = min(4, max(len(panels), len(mats), 1))
    rows_m, rows_h = -(-len(panels) // cols), -(-len(mats) // cols)
    fig = plt.figure(figsize=(3.6 * cols, 3.2 * (rows_m + rows_h) + 0.6))
    fig.suptitle(f"{title}: runs per arm, colour = boot")
    for i, metric in enumerate(panels):
        _runs_panel(fig.add_subplot(rows_m + rows_h, cols, i + 1), runs, metric,
                    names, mets[metric])
    for i, arm in enumerate(a for a in names if a in mats):
        _matrix_panel(fig, fig.add_subplot(rows_m + rows_h, cols, rows_m * cols + i + 1),
                      arm, mats[arm])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _runs_panel(ax, runs, metric, names, entry):
    colours = "tab:blue tab:orange tab:green tab:red tab:purple tab:brown".split()
    shown = [a for a in names if a in entry]
    for x, arm in enumerate(shown):
        for k, boot in enumerate(boots(runs)):
            ys = values(runs, arm, metric, boot)
            xs = [x + 0.25 * ((j % 5) / 4 - 0.5) for j in range(len(ys))]
            ax.scatter(xs, ys, s=14, color=colours[k % len(colours)], alpha=0.8)
        ax.hlines(entry[arm]["median"], x - 0.3, x + 0.3, color="black")
    ax.set_xticks(range(len(shown)), [arm if i == 0 or entry[arm]["ratio"] is None
                                      else f"{arm}\n{entry[arm]['ratio']:.3g}x"
                                      for i, arm in enumerate(shown)])
    ax.set_title(metric, fontsize=9)


def _matrix_panel(fig, hx, arm, mx):
    im = hx.imshow(mx, cmap="viridis")
    labels = [f"node{n}" for n in range(len(mx))]
    hx.set_xticks(range(len(mx)), labels)
    hx.set_yticks(range(len(mx)), labels)
    hx.set_xlabel("to")
    hx.set_ylabel("from")
    for s_, row in enumerate(mx):
        for d, v in enumerate(row):
            hx.text(d, s_, str(v), ha="center", va="center", color="white")
    hx.set_title(f"arm {arm}: migrations, all runs", fontsize=9)
    fig.colorbar(im, ax=hx)


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
