"""Totals, rates, migration matrices by cause and histograms from a recording.
Pure: works on the parsed records."""

from vnuma_sched.probes import classify
from vnuma_sched.probes.events import CAUSE_NAMES
from vnuma_sched.probes.spec import PROBES


def _sum_lists(a, b):
    if a is None:
        return b
    if isinstance(b, list):
        return [_sum_lists(x, y) for x, y in zip(a, b)] if isinstance(a, list) else b
    if isinstance(b, dict):
        return {k: _sum_lists(a.get(k), v) for k, v in b.items()}
    return a + b if isinstance(b, (int, float)) else b


def counters(name, data):
    """One probe's interval data without its listings (hash-map rows are not summed)."""
    probe = PROBES.get(name)
    listings = {m.key for m in probe.maps if m.listing} if probe else set()
    return {k: v for k, v in data.items() if k not in listings}


def totals(intervals):
    """Per-probe sums over all intervals (same shapes as one interval)."""
    out = {}
    for rec in intervals:
        for name, data in rec["probes"].items():
            out[name] = _sum_lists(out.get(name), counters(name, data))
    return out


def metrics(tot):
    """Flat named metrics (the names A/B comparisons use), as each probe's spec derives them."""
    m = {}
    for name, probe in PROBES.items():
        if name in tot and probe.derive is not None:
            m.update(probe.derive(tot[name]))
    return m


def _numbers(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _check_probe(name, data):
    """What summarize() reads of one probe's data: its metrics, the migration matrix
    per cause, the idle histogram. Raises on anything else."""
    probe = PROBES[name]
    if probe.derive is not None and not _numbers(probe.derive(data).values()):
        raise ValueError("a metric is not a number")
    if name == "migrate":
        for cause in CAUSE_NAMES:
            classify.matrix_total(data["matrix"], [cause])
            if "avoidable" in data:
                classify.cause_matrix_total(data["avoidable"], [cause])
    if name == "halt" and not (isinstance(data["hist"], list) and _numbers(data["hist"])):
        raise ValueError("hist is not a list of numbers")


def check_interval(probes):
    """ValueError naming the probe whose data (one interval of counters) is not what its
    spec entry records; probes the spec does not know are left alone."""
    for name, data in probes.items():
        if name not in PROBES:
            continue
        try:
            _check_probe(name, data)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError,
                StopIteration) as err:
            raise ValueError(f"probe {name!r}: not what this probe records "
                             f"({type(err).__name__}: {err})") from err


def top_view(rec, topology, per_cpu=False):
    """What `top` shows of one interval: a row per node (or CPU) of the probes'
    columns, migrations into each node, and migrations by cause."""
    probes = rec["probes"]
    columns = {}
    for name, probe in PROBES.items():
        if name in probes and probe.columns is not None:
            columns.update(probe.columns(probes[name]))
    cols, rows = classify.node_rows(topology, columns, per_cpu)
    causes = None
    if "migrate" in probes:
        matrix = probes["migrate"]["matrix"]
        if not per_cpu:
            mx = classify.matrix_total(matrix)
            cols += ["migin", "xnodein"]
            for i, row in enumerate(rows):
                row += [sum(mx[s][i] for s in range(len(mx))),
                        sum(mx[s][i] for s in range(len(mx)) if s != i)]
        causes = [(c, v["cross"], v["cross"] + v["same"])
                  for c, v in classify.by_cause(matrix).items() if v["cross"] + v["same"]]
    avoidable = None
    if "migrate" in probes and "avoidable" in probes["migrate"]:
        avoidable = [(c, classify.off_diagonal(mx))
                     for c, mx in probes["migrate"]["avoidable"].items()]
    return {"t": rec["t"], "dt": rec["dt"], "label": "cpu" if per_cpu else "node",
            "columns": cols, "rows": rows, "causes": causes, "avoidable": avoidable}


def unsupported_metrics(meta_probes):
    """Metric name -> why it was not measured, from a recording's probe statuses."""
    out = {}
    for p in meta_probes.values():
        out.update(p.get("unsupported") or {})
    return out


def summarize(meta, intervals, events, end):
    tot = totals(intervals)
    seconds = sum(r["dt"] for r in intervals)
    mets = metrics(tot)
    doc = {"kernel": meta.get("kernel"), "seconds": round(seconds, 3),
           "intervals": len(intervals), "lost_events": (end or {}).get("lost", 0),
           "complete": end is not None, "exit_code": (end or {}).get("exit_code"),
           "probes": meta.get("probes", {}), "gates": meta.get("gates", {}),
           "unsupported_metrics": unsupported_metrics(meta.get("probes", {})),
           "metrics": {k: {"total": v, "rate": round(v / seconds, 3) if seconds else None}
                       for k, v in mets.items()},
           "events": len(events)}
    if "migrate" in tot:
        doc["matrix"] = {c: classify.matrix_total(tot["migrate"]["matrix"], [c])
                         for c in CAUSE_NAMES}
        if "avoidable" in tot["migrate"]:
            doc["avoidable_matrix"] = tot["migrate"]["avoidable"]
    if "halt" in tot:
        doc["idle_hist_us"] = tot["halt"]["hist"]
    return doc
