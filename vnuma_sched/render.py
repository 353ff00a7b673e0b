"""Rows -> text tables (tabulate) or JSON. Pure: returns strings."""

import json

from tabulate import tabulate

from vnuma_sched.topology import format_cpulist


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
