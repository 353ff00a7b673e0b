"""Rows -> text tables (tabulate) or JSON. Pure: returns strings."""

import json

from tabulate import tabulate

from vnuma_sched.system.topology import format_cpulist


def table(rows, headers, title=None, widths=None):
    """A plain table; ``widths`` wraps long columns to stay within 80 columns."""
    text = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    maxcolwidths=widths)
    return f"{title}\n{text}" if title else text


def to_json(obj):
    return json.dumps(obj, indent=2, sort_keys=False)


def human_kb(kb):
    """1024-based size: 24610448 -> '23.5 GiB'; 0 -> '0'."""
    if kb == 0:
        return "0"
    size, unit = float(kb), "KiB"
    for nxt in ("MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, nxt
    return f"{size:.1f} {unit}"


def topology_text(topo):
    rows = []
    for n in topo.nodes:
        cpus = format_cpulist(n.cpus) if n.cpus else "(no CPUs)"
        mem = "(memoryless)" if n.memoryless else human_kb(n.mem_kb)
        rows.append([f"node{n.id}", cpus, len(n.cpus), mem])
    out = [table(rows, ["node", "cpus", "ncpu", "memory"])]
    if topo.numa:
        ids = [f"node{n.id}" for n in topo.nodes]
        dist = [[f"node{n.id}", *n.distances] for n in topo.nodes]
        out.append(table(dist, ["distance", *ids]))
    else:
        out.append("kernel without CONFIG_NUMA: one pseudo-node")
    return "\n\n".join(out)


def doctor_text(checks, verdict):
    rows = [[c.name, c.status, c.detail] for c in checks]
    out = [table(rows, ["check", "status", "detail"], widths=[None, None, 54])]
    vrows = [[v["problem"], v["exposure"], "\n".join(v["mitigations"])] for v in verdict]
    out.append(table(vrows, ["problem", "exposure", "mitigations available"],
                     title="Verdict", widths=[18, 28, 28]))
    return "\n\n".join(out)


def build_text(result):
    rows = [[s.name, s.status, f"{s.seconds:.1f}s", s.detail] for s in result.steps]
    out = [table(rows, ["step", "status", "time", "detail"], widths=[None, None, None, 50])]
    if result.metadata:
        out.append(f"image: {result.image}\nreproducer: {result.metadata['reproducer']}")
    return "\n".join(out)


def patches_text(all_series):
    out = []
    for series in all_series:
        rows = [[p.number, p.subject, p.problem, "\n".join(p.gates) or "-"]
                for p in series.patches]
        title = f"Series {series.version} (base {series.base_commit[:12] or 'unknown'})"
        out.append(table(rows, ["#", "subject", "problem", "gates"], title=title,
                         widths=[None, 44, None, 30]))
    return "\n\n".join(out)


def status_text(statuses):
    rows = [[s.patch.number, s.patch.subject, s.state, s.detail] for s in statuses]
    return table(rows, ["#", "subject", "status", "detail"], widths=[None, 40, None, 30])


def matrix_text(cells, w1_new):
    names = list(dict.fromkeys(c.variant for c in cells))
    patches = sorted({c.patch for c in cells})
    grid = {(c.patch, c.variant): c for c in cells}
    rows = [[p, *[grid[(p, n)].status if (p, n) in grid else "-" for n in names]]
            for p in patches]
    out = [table(rows, ["patch", *names])]
    notes = [f"patch {c.patch} [{c.variant}]: {c.detail}" for c in cells
             if c.status == "FAIL" or (c.detail and c.detail.startswith(tuple("0123456789")))]
    out += notes
    out.append("W=1: no new warnings in the touched files" if not w1_new else
               "W=1 new warnings:\n" + "\n".join(f"  {f}: {m}" for f, m in w1_new))
    return "\n".join(out)


def pipeline_text(res):
    rows = [[name, f"{secs:.0f} s", detail] for name, secs, detail in res.steps]
    out = [table(rows, ["step", "time", "what"], widths=[None, None, 60])]
    if res.vm is not None:
        out.append("--- guest output ---\n" + res.vm.stdout.rstrip())
        if res.vm.stderr.strip():
            out.append("--- guest stderr ---\n" + res.vm.stderr.rstrip())
        if res.vm.status != "exited":
            out.append(f"guest {res.vm.status}: " + (res.vm.panic or
                                                     "\n".join(res.vm.console_tail[-8:])))
    return "\n\n".join(out)


def plan_text(rows):
    def shown(paths):
        if not paths:
            return "-"
        return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})"

    data = [[r.knob, shown(r.paths), r.current, r.target, r.action +
             (f": {r.reason}" if r.reason else "")] for r in rows]
    return table(data, ["knob", "path", "current", "target", "action"],
                 widths=[30, 30, 10, 10, 28])


def _col(per_cpu, index):
    return [row[index] for row in per_cpu]


def top_columns(probes):
    """{column: [value per cpu]} from one interval's probe deltas."""
    cols = {}
    if "ipi" in probes:
        cols["resch"] = _col(probes["ipi"]["per_cpu"], 0)
        cols["csq"] = _col(probes["ipi"]["per_cpu"], 1)
        cols["noipi"] = _col(probes["ipi"]["per_cpu"], 3)
    if "halt" in probes:
        cols["idle"] = [sum(r) for r in probes["halt"]["count"]]
        cols["idlems"] = [sum(r) // 1_000_000 for r in probes["halt"]["ns"]]
    if "preempt" in probes:
        cols["rejpre"] = probes["preempt"]["rejected"]
    if "steal" in probes:
        cols["stealms"] = probes["steal"]["ms"]
    return cols


def top_text(rec, topology, per_cpu=False):
    from vnuma_sched.probes import classify

    probes = rec["probes"]
    cols, rows = classify.node_rows(topology, top_columns(probes), per_cpu)
    if "migrate" in probes and not per_cpu:
        mx = classify.matrix_total(probes["migrate"]["matrix"])
        cols += ["migin", "xnodein"]
        for i, row in enumerate(rows):
            row += [sum(mx[s][i] for s in range(len(mx))),
                    sum(mx[s][i] for s in range(len(mx)) if s != i)]
    import time as _t

    head = ["node" if not per_cpu else "cpu", *cols]
    out = [f"{_t.strftime('%H:%M:%S', _t.localtime(rec['t']))}  "
           f"interval {rec['dt']:.2f} s",
           " ".join(f"{h:<6}" if i == 0 else f"{h:>7}" for i, h in enumerate(head))]
    out += [" ".join(f"{v:<6}" if i == 0 else f"{v:>7}" for i, v in enumerate(row))
            for row in rows]
    if "migrate" in probes:
        by = classify.by_cause(probes["migrate"]["matrix"])
        parts = [f"{c} {v['cross']}/{v['cross'] + v['same']}" for c, v in by.items()
                 if v["cross"] + v["same"]]
        out.append("migrations cross-node/all: " + (", ".join(parts) or "none"))
    return "\n".join(out)


def report_text(doc):
    from vnuma_sched.probes import classify

    head = (f"kernel {doc['kernel']}, {doc['seconds']} s in {doc['intervals']} intervals, "
            f"lost events {doc['lost_events']}"
            + ("" if doc["complete"] else " (no end record: recording was interrupted)"))
    rows = [[k, v["total"], "-" if v["rate"] is None else v["rate"]]
            for k, v in doc["metrics"].items() if not k.startswith(("migrations.",
                                                                    "migrations_to_idle."))]
    out = [head, table(rows, ["metric", "total", "per second"])]
    for cause, mx in doc.get("matrix", {}).items():
        if any(map(any, mx)):
            ids = [f"node{i}" for i in range(len(mx))]
            out.append(table([[f"from node{s}", *row] for s, row in enumerate(mx)],
                             [f"{cause} migrations", *[f"to {i}" for i in ids]]))
    if "idle_hist_us" in doc:
        out.append("idle residency (log2 us)\n" +
                   "\n".join(classify.log2_hist_lines(doc["idle_hist_us"])))
    skipped = [f"{n}: {p['reason']}" for n, p in doc.get("probes", {}).items()
               if not p.get("available")]
    if skipped:
        out.append("not recorded: " + "; ".join(skipped))
    return "\n\n".join(out)


def ab_text(doc):
    from vnuma_sched.experiments.compare import table_rows

    arms = doc.get("arms", {})
    head = [f"A: {arms.get('a', {}).get('spec', '?')}   B: {arms.get('b', {}).get('spec', '?')}",
            f"kernel {doc.get('kernel')}, {doc.get('runs')} runs, {doc.get('mode') or ''}"]
    rows = table_rows(doc["metrics"])
    head.append(table(rows, ["metric", "A med", "B med", "B/A", "95% CI", "p", ""],
                      widths=[30, None, None, None, None, None, None]))
    head.append(doc.get("note", ""))
    return "\n".join(head)


def _at(entry):
    if not entry or "median" not in entry:
        return "not measured here"
    lo, hi = entry["interval"]
    return f"median {entry['median']:g} [{lo:g}, {hi:g}] (n={entry['n']})"


def bisect_text(doc):
    """Steps, the first bad commit with the metric at it and at its parent, the log."""
    from vnuma_sched.bisect.step import describe

    ep = doc.get("endpoints") or {}
    out = [f"{doc['metric']}: good {doc['good'][:12]} median {ep.get('good_median', '?'):g}, "
           f"bad {doc['bad'][:12]} median {ep.get('bad_median', '?'):g}; bad when "
           f"{doc['bad_when']} {doc['threshold']:g}" if ep else
           f"{doc['metric']}: bad when {doc['bad_when']} {doc['threshold']:g}"]
    rows = [[i + 1, s["commit"][:12], (s.get("subject") or "")[:38],
             describe(s, "").strip()] for i, s in enumerate(doc["steps"])]
    if rows:
        out.append(table(rows, ["step", "commit", "subject", "median [interval] -> verdict"],
                         widths=[None, None, 38, 44]))
    fb = doc.get("first_bad")
    if fb:
        out += [f"first bad commit: {fb['commit']} {fb['subject']}",
                f"  {doc['metric']} at it:         {_at(fb['at'])}",
                f"  at its parent {fb['parent'][:12]}: {_at(fb['at_parent'])}"]
    else:
        out.append(f"no first bad commit: {doc.get('error')}")
        out += [f"  could be {c}" for c in doc.get("candidates", [])]
    out += ["", "git bisect log:", doc["git_log"].rstrip(), f"(saved as {doc['log_file']})"]
    return "\n".join(out)
