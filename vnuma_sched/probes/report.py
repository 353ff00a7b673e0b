"""Totals, rates, migration matrices by cause and histograms from a recording.
Pure: works on the parsed records."""

from vnuma_sched.probes import classify
from vnuma_sched.probes.events import CAUSE_NAMES


def _sum_lists(a, b):
    if a is None:
        return b
    if isinstance(b, list):
        return [_sum_lists(x, y) for x, y in zip(a, b)] if isinstance(a, list) else b
    if isinstance(b, dict):
        return {k: _sum_lists(a.get(k), v) for k, v in b.items()}
    return a + b if isinstance(b, (int, float)) else b


def totals(intervals):
    """Per-probe sums over all intervals (same shapes as one interval)."""
    out = {}
    for rec in intervals:
        for name, data in rec["probes"].items():
            if name == "ipi" and "sent" in data:
                data = {k: v for k, v in data.items() if k != "sent"}
            if name == "hltexit":
                data = {k: v for k, v in data.items() if k != "hlt"}
            out[name] = _sum_lists(out.get(name), data)
    return out


def metrics(tot):
    """Flat named metrics (the names A/B comparisons use)."""
    m = {}
    if "ipi" in tot:
        cols = list(zip(*tot["ipi"]["per_cpu"])) or [[]] * 4
        m["ipi_resched"], m["ipi_call_single"], m["ipi_call_func"], m["wake_without_ipi"] = (
            sum(c) for c in cols)
        m["wake_ipis"] = m["ipi_resched"] + m["ipi_call_single"]
    if "halt" in tot:
        m["halts"] = sum(map(sum, tot["halt"]["count"]))
        m["idle_ms"] = round(sum(map(sum, tot["halt"]["ns"])) / 1e6, 3)
        m["pv_spin_halts"] = sum(r[0] for r in tot["halt"]["pvspin"])
        m["pv_kicks"] = sum(r[1] for r in tot["halt"]["pvspin"])
    if "migrate" in tot:
        mx = tot["migrate"]["matrix"]
        m["cross_node_migrations"] = classify.cross_node(mx)
        m["same_node_migrations"] = classify.same_node(mx)
        if "wake_place" in tot["migrate"]:
            m["wakeups"], m["wakeups_busy_idle_llc"] = tot["migrate"]["wake_place"]
        for cause, c in classify.by_cause(mx).items():
            m[f"cross_node_migrations.{cause}"] = c["cross"]
            m[f"migrations.{cause}"] = c["cross"] + c["same"]
            m[f"migrations_to_idle.{cause}"] = c["to_idle"]
    if "preempt" in tot:
        m["idle_rejected_preempted"] = sum(tot["preempt"]["rejected"])
        m["idle_checked"] = sum(tot["preempt"]["checked"])
    if "steal" in tot:
        m["steal_ms"] = sum(tot["steal"]["ms"])
    if "hltexit" in tot:
        m["hlt_exits_polled"], m["hlt_exits_blocked"] = tot["hltexit"]["wakeups"]
        m["pv_kick_hypercalls"] = tot["hltexit"]["kicks"]
    return m


def summarize(meta, intervals, events, end):
    tot = totals(intervals)
    seconds = sum(r["dt"] for r in intervals)
    mets = metrics(tot)
    doc = {"kernel": meta.get("kernel"), "seconds": round(seconds, 3),
           "intervals": len(intervals), "lost_events": (end or {}).get("lost", 0),
           "complete": end is not None, "exit_code": (end or {}).get("exit_code"),
           "probes": meta.get("probes", {}), "gates": meta.get("gates", {}),
           "metrics": {k: {"total": v, "rate": round(v / seconds, 3) if seconds else None}
                       for k, v in mets.items()},
           "events": len(events)}
    if "migrate" in tot:
        doc["matrix"] = {c: classify.matrix_total(tot["migrate"]["matrix"], [c])
                         for c in CAUSE_NAMES}
    if "halt" in tot:
        doc["idle_hist_us"] = tot["halt"]["hist"]
    return doc


# Which probe produces each metric (workload_score needs none); the names
# 'ab', 'compare' and 'bisect' accept.
_BY_PROBE = {
    "ipi": ("ipi_resched", "ipi_call_single", "ipi_call_func", "wake_without_ipi",
            "wake_ipis"),
    "halt": ("halts", "idle_ms", "pv_spin_halts", "pv_kicks"),
    "migrate": ("cross_node_migrations", "same_node_migrations", "wakeups",
                "wakeups_busy_idle_llc",
                *(f"{kind}.{cause}" for kind in ("cross_node_migrations", "migrations",
                                                 "migrations_to_idle")
                  for cause in CAUSE_NAMES)),
    "preempt": ("idle_rejected_preempted", "idle_checked"),
    "steal": ("steal_ms",),
    "hltexit": ("hlt_exits_polled", "hlt_exits_blocked", "pv_kick_hypercalls"),
}
METRIC_PROBE = {"workload_score": None,
                **{m: probe for probe, names in _BY_PROBE.items() for m in names}}
# Metrics where a lower value is the regression; for the others, higher is.
LOWER_IS_WORSE = frozenset({"workload_score"})
