"""Rows -> text tables (tabulate) or JSON. A leaf: it imports no domain module;
callers hand it plain rows, dicts and objects with plain attributes.

Tables never split an identifier (a knob name, a path, a metric): only the
columns named as prose wrap, and only to fit the terminal; piped output is
never wrapped.
"""

import json
import shutil
import sys
import textwrap
import time

from tabulate import tabulate

MIN_PROSE = 20      # a prose column never gets narrower than this
GAP = 2             # tabulate's "simple" format puts two spaces between columns


def terminal_width(stream=None):
    """Columns of the terminal ``stream`` writes to; None when it is not a terminal."""
    stream = stream or sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((80, 24)).columns


def _cell_width(value):
    return max((len(line) for line in str(value).split("\n")), default=0)


def _prose_widths(rows, headers, prose, width):
    """maxcolwidths for tabulate: None (never wrap) except for prose columns, which
    share what the other columns leave of ``width``."""
    ncols = len(headers)
    natural = [max([_cell_width(h) for h in headers[i:i + 1]] +
                   [_cell_width(r[i]) for r in rows if i < len(r)]) for i in range(ncols)]
    fixed = sum(natural[i] for i in range(ncols) if i not in prose) + GAP * (ncols - 1)
    share = max(MIN_PROSE, (width - fixed) // max(len(prose), 1))
    return [min(natural[i], share) if i in prose else None for i in range(ncols)]


def table(rows, headers, title=None, prose=(), width=None):
    """A plain table. Columns whose index is in ``prose`` wrap to fit ``width``
    (default: the terminal's; no wrapping when output is not a terminal)."""
    width = width if width is not None else terminal_width()
    widths = _prose_widths(rows, headers, set(prose), width) if prose and width else None
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
        cpus = n.cpulist if n.cpus else "(no CPUs)"
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
    out = [table(rows, ["check", "status", "detail"], prose=[2])]
    vrows = [[v["problem"], v["exposure"], "\n".join(v["mitigations"])] for v in verdict]
    out.append(table(vrows, ["problem", "exposure", "mitigations available"],
                     title="Verdict", prose=[0, 1, 2]))
    return "\n\n".join(out)


def build_text(result):
    rows = [[s.name, s.status, f"{s.seconds:.1f}s", s.detail] for s in result.steps]
    out = [table(rows, ["step", "status", "time", "detail"], prose=[3])]
    if result.metadata:
        out.append(f"image: {result.image}\nreproducer: {result.metadata['reproducer']}")
    return "\n".join(out)


def patches_text(all_series, cover_subjects):
    """Per version: the cover letter's subject (``cover_subjects``: version -> subject or
    None), the series, then its debug patches in a table of their own."""
    out = []
    for series in all_series:
        base = series.base_commit[:12] or "unknown"
        groups = (("", [p for p in series.patches if not p.debug]),
                  ("Debug series ", [p for p in series.patches if p.debug]))
        cover = cover_subjects.get(series.version)
        parts = [f"Cover letter: {cover}" if cover else "Cover letter: none"]
        for label, members in groups:
            if not members:
                continue
            rows = [[p.number, p.subject, p.problem, "\n".join(p.gates) or "-"]
                    for p in members]
            title = (f"{label}{series.version} (test aids on top of the series, never "
                     "for bare metal; apply with --debug)" if label else
                     f"Series {series.version} (base {base})")
            parts.append(table(rows, ["#", "subject", "problem", "gates"], title=title,
                               prose=[1]))
        out.append("\n".join(parts))
    return "\n\n".join(out)


def status_text(statuses):
    rows = [[s.patch.number, s.patch.subject, s.state, s.detail] for s in statuses]
    return table(rows, ["#", "subject", "status", "detail"], prose=[1, 3])


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
    out = [table(rows, ["step", "time", "what"], prose=[2])]
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
    return table(data, ["knob", "path", "current", "target", "action"], prose=[4])


def top_text(view):
    """One interval of `top`: a row per node or CPU, then migrations by cause."""
    stamp = time.strftime("%H:%M:%S", time.localtime(view["t"]))
    head = [view["label"], *view["columns"]]
    out = [f"{stamp}  interval {view['dt']:.2f} s",
           " ".join(f"{h:<6}" if i == 0 else f"{h:>7}" for i, h in enumerate(head))]
    out += [" ".join(f"{v:<6}" if i == 0 else f"{v:>7}" for i, v in enumerate(row))
            for row in view["rows"]]
    if view["causes"] is not None:
        parts = [f"{c} {cross}/{total}" for c, cross, total in view["causes"]]
        out.append("migrations cross-node/all: " + (", ".join(parts) or "none"))
    if view.get("avoidable") is not None:
        parts = [f"{c} {n}" for c, n in view["avoidable"] if n]
        total = sum(n for _, n in view["avoidable"])
        out.append(f"cross-node avoidable: {total}" + (f" ({', '.join(parts)})" if parts
                                                       else ""))
    return "\n".join(out)


def log2_hist_lines(slots, unit="us", width=30):
    """bcc-style log2 histogram text."""
    last = max((i for i, v in enumerate(slots) if v), default=-1)
    if last < 0:
        return ["(no samples)"]
    peak = max(slots)
    lines = [f"{unit + ' range':>21} : count     distribution"]
    for i in range(last + 1):
        lo, hi = (0, 0) if i == 0 else (1 << (i - 1), (1 << i) - 1)
        bar = "*" * (slots[i] * width // peak if peak else 0)
        lines.append(f"{lo:>10} -> {hi:<10}: {slots[i]:<9} |{bar:<{width}}|")
    return lines


def report_text(doc):
    head = (f"kernel {doc['kernel']}, {doc['seconds']} s in {doc['intervals']} intervals, "
            f"lost events {doc['lost_events']}"
            + ("" if doc["complete"] else " (no end record: recording was interrupted)"))
    rows = [[k, v["total"], "-" if v["rate"] is None else v["rate"]]
            for k, v in doc["metrics"].items() if not k.startswith(("migrations.",
                                                                    "migrations_to_idle."))]
    out = [head, table(rows, ["metric", "total", "per second"])]
    for cause, mx in doc.get("matrix", {}).items():
        if any(map(any, mx)):
            out.append(_node_table(mx, f"{cause} migrations"))
    avoidable = doc.get("avoidable_matrix") or {}
    if any(any(map(any, mx)) for mx in avoidable.values()):
        first = next(iter(avoidable.values()))
        total = [[sum(mx[s][d] for mx in avoidable.values()) for d in range(len(first))]
                 for s in range(len(first))]
        out.append(_node_table(total, "avoidable cross-node"))
    if "idle_hist_us" in doc:
        out.append("idle residency (log2 us)\n" +
                   "\n".join(log2_hist_lines(doc["idle_hist_us"])))
    skipped = [f"{n}: {p['reason']}" for n, p in doc.get("probes", {}).items()
               if not p.get("available")]
    skipped += [f"{m}: {why}" for m, why in doc.get("unsupported_metrics", {}).items()
                if "." not in m]      # a family's per-cause names share its reason
    if skipped:
        out.append("not recorded: " + "; ".join(skipped))
    return "\n\n".join(out)


def _node_table(mx, title):
    return table([[f"from node{s}", *row] for s, row in enumerate(mx)],
                 [title, *[f"to node{d}" for d in range(len(mx))]])


def _num(x):
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _metric_order(mets, first):
    """The ``first`` metrics in their order, then the rest (without the per-cause
    migrations_to_idle counts)."""
    return [n for n in first if n in mets] + [n for n in mets if n not in first
                                              and not n.startswith("migrations_to")]


def _ci(m):
    return "-" if not m["ci95"] else f"{m['ci95'][0]:.2f}..{m['ci95'][1]:.2f}"


def compare_rows(mets, names, first=()):
    """Two arms: a row per metric, B (names[1]) against A (names[0])."""
    rows = []
    for name in _metric_order(mets, first):
        a, b = mets[name].get(names[0]), mets[name].get(names[1])
        if a is None or b is None:
            continue
        rows.append([name, _num(a["median"]), _num(b["median"]), _num(b["ratio"]), _ci(b),
                     f"{b['p']:.3g}", "noisy" if b["inconclusive"] else ""])
    return rows


def arm_rows(mets, names, first=()):
    """More arms: per metric the reference's median, then a row per other arm."""
    rows = []
    for name in _metric_order(mets, first):
        for arm in (a for a in names if a in mets[name]):
            m = mets[name][arm]
            label = name if arm == names[0] else ""
            rows.append([label, arm, _num(m["median"])] + (["", "", "", ""] if arm == names[0]
                        else [_num(m["ratio"]), _ci(m), f"{m['p']:.3g}",
                              "noisy" if m["inconclusive"] else ""]))
    return rows


def spread_rows(mets, names, first):
    """Per ``first`` metric and arm: spread between boots and within a boot."""
    return [[name if arm == names[0] else "", arm, _num(m["between_boots_iqr"]),
             _num(m["within_boot_iqr"]), "boots dominate" if m["boots_dominate"] else ""]
            for name in (n for n in first if n in mets)
            for arm, m in ((a, mets[name][a]) for a in names if a in mets[name])]


def _arm_names(doc):
    names = list(doc.get("arms") or {})
    for entry in doc["metrics"].values():
        names += [a for a in entry if a not in names]
    ref = doc.get("reference")
    return [ref] + [n for n in names if n != ref] if ref in names else names


def ab_text(doc, first=()):
    """Two arms: B against A, a row per metric; more: a row per metric and arm, each
    against the reference; with several boots, the spread between and within them."""
    arms, names = doc.get("arms", {}), _arm_names(doc)
    tail = f"kernel {doc.get('kernel')}, {doc.get('runs')} runs, {doc.get('mode') or ''}"
    if len(names) == 2:
        head = ["   ".join(f"{letter}{'' if arm == letter.lower() else f' ({arm})'}: "
                           f"{arms.get(arm, {}).get('spec', '?')}"
                           for letter, arm in zip("AB", names)), tail,
                table(compare_rows(doc["metrics"], names, first),
                      ["metric", "A med", "B med", "B/A", "95% CI", "p", ""])]
    else:
        head = [f"arms, each against the reference {names[0] if names else '?'}:"]
        head += [f"  {arm}: {arms.get(arm, {}).get('spec', '?')}" for arm in names]
        head += [tail, table(arm_rows(doc["metrics"], names, first),
                             ["metric", "arm", "median", "ratio", "95% CI", "p", ""])]
    if (doc.get("boots") or 1) > 1:
        head.append(table(spread_rows(doc["metrics"], names, first),
                          ["metric", "arm", "between boots", "within a boot", ""],
                          title="spread (IQR) of the per-boot medians and within a boot"))
    head.append(textwrap.fill(doc.get("note", ""), 99))
    return "\n".join(head)


def ab_markdown(doc, first, title):
    """A GitHub-markdown table of the ``first`` metrics, every arm against the
    reference (the cover letter's and the README's results tables); with several
    boots, each row also gives the IQR of the per-boot medians and within a boot."""
    names = _arm_names(doc)
    primary = {k: doc["metrics"][k] for k in first if k in doc["metrics"]}
    rows = [[f"`{r[0]}`" if r[0] else "", r[1], *r[2:6]]
            for r in arm_rows(primary, names, first)]
    headers = ["metric", "arm", "median", "vs ref", "95% CI", "p"]
    if (doc.get("boots") or 1) > 1:
        rows = [row + spread[2:4] for row, spread in
                zip(rows, spread_rows(primary, names, _metric_order(primary, first)))]
        headers += ["IQR between boots", "IQR within a boot"]
    specs = "; ".join(f"{arm}: `{doc.get('arms', {}).get(arm, {}).get('spec', '?')}`"
                      for arm in names)
    head = (f"**{title}** ({doc.get('runs')} runs, {doc.get('mode') or ''}, kernel "
            f"{doc.get('kernel')}; reference {names[0] if names else '?'}). Arms: {specs}")
    return head + "\n\n" + tabulate(rows, headers=headers, tablefmt="github",
                                    disable_numparse=True) + "\n"


def _at(entry):
    if not entry or "median" not in entry:
        return "not measured here"
    lo, hi = entry["interval"]
    return f"median {entry['median']:g} [{lo:g}, {hi:g}] (n={entry['n']})"


def bisect_step_line(entry, metric):
    """One line: a bisect step's metric summary and verdict."""
    if "median" not in entry:
        return f"{entry['verdict']} ({entry.get('reason', '')})"
    lo, hi = entry["interval"]
    note = f", same image as {entry['reused_from'][:12]}" if entry.get("reused_from") else ""
    why = f" ({entry['reason']})" if entry.get("reason") else ""
    return (f"{metric} median {entry['median']:g} [{lo:g}, {hi:g}] "
            f"n={entry['n']}{note} -> {entry['verdict']}{why}")


def bisect_text(doc):
    """Steps, the first bad commit with the metric at it and at its parent, the log."""
    ep = doc.get("endpoints") or {}
    out = [f"{doc['metric']}: good {doc['good'][:12]} median {ep.get('good_median', '?'):g}, "
           f"bad {doc['bad'][:12]} median {ep.get('bad_median', '?'):g}; bad when "
           f"{doc['bad_when']} {doc['threshold']:g}" if ep else
           f"{doc['metric']}: bad when {doc['bad_when']} {doc['threshold']:g}"]
    rows = [[i + 1, s["commit"][:12], (s.get("subject") or "")[:38],
             bisect_step_line(s, "").strip()] for i, s in enumerate(doc["steps"])]
    if rows:
        out.append(table(rows, ["step", "commit", "subject", "median [interval] -> verdict"],
                         prose=[2, 3]))
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


def share_status_text(status):
    """'share status': the partition, a row per node, then what still uses parked CPUs."""
    if not status.partition:
        head = f"no parked vCPUs (no {status.group})"
    else:
        head = f"partition: {status.partition} ({status.group})"
    j = status.journal
    head += (f"\nparked by vnuma-sched at {j['created']} ({j['writes']} journaled writes)"
             if j else "\nnot parked by vnuma-sched (no share journal)")
    out = [head, table([[n["node"], n["used"] or "-", n["parked"] or "-"]
                        for n in status.nodes], ["node", "used", "parked"])]
    if status.not_moved:
        out.append(table([[m["kind"], m["name"], m["cpus"], m["why"]] for m in
                          status.not_moved], ["kind", "name", "cpus", "why"],
                         title=f"Still on parked vCPUs ({len(status.not_moved)})",
                         prose=[3]))
    return "\n\n".join(out)


def guest_list_text(rows):
    """'vm list': a row per recorded guest."""
    if not rows:
        return "no guests recorded ('vm run --name NAME' records one)"
    return table([[r["name"], r["pid"], "running" if r["running"] else "stale (vm run gone)",
                   r["topology"], r["qmp"] or "-", r["agent"] or "-"] for r in rows],
                 ["guest", "pid", "state", "topology", "QMP", "agent"], prose=[4, 5])


def share_host_steps_text(move):
    """The steps of a coordinator move, one line each: number, phase, guest, the vCPUs
    the guest uses after it, its state (and why it failed)."""
    out = []
    for i, s in enumerate(move["steps"], 1):
        used = ",".join(map(str, s["after"]["used"]))
        why = f": {s['reason']}" if s.get("reason") else ""
        out.append(f"  {i} {s['phase']:4} {s['guest']:12} -> vCPUs {used:14} {s['state']}{why}")
    return "\n".join(out)


def _share_host_memory(report):
    """The guest nodes whose memory can be resized: the share, its range, what QEMU has
    plugged and the MemTotal the guest reports."""
    rows = []
    for g in report["guests"]:
        for m in g.get("memory", ()):
            if m["max_mb"] > m["boot_mb"]:
                said = m.get("guest_mb")
                rows.append([g["name"], m["node"], m["host_node"], m["mem_mb"],
                             f"{m['boot_mb']}..{m['max_mb']}", m.get("plugged_mb", "-"),
                             "-" if said is None else said])
    return table(rows, ["guest", "node", "host node", "MiB", "range", "plugged",
                        "guest MemTotal"]) if rows else ""


def share_host_text(report):
    """'share host status': a row per guest and node, who is behind, the pending move."""
    rows = []
    for g in report["guests"]:
        said = ""
        if "guest_says" in g:
            said = (f"{g['guest_says'] or '-'} ({'agrees' if g['agrees'] else 'differs'})"
                    if g["guest_says"] is not None else "no answer")
        for i, n in enumerate(g["nodes"]):
            rows.append([g["name"] if i == 0 else "", n["node"], n["used"] or "-",
                         n["host_cpus"] or "-", n["mem_mb"], said if i == 0 else ""])
    out = [f"state: {report['state']}",
           table(rows, ["guest", "node", "vCPUs", "host CPUs", "MiB", "guest says"])]
    mem = _share_host_memory(report)
    if mem:
        out += ["resizable memory per guest node (MiB):", mem]
    for g in report["guests"]:
        if g.get("mem_agrees") is False:
            out.append(f"memory differs: {g['name']}: QEMU has not plugged what its "
                       "share says")
        if g["behind"]:
            out.append(f"behind: {g['name']} keeps its last share: {g['behind']}")
        if g.get("no_answer") and g["no_answer"] != g["behind"]:
            out.append(f"no answer now: {g['name']}: {g['no_answer']}")
    move = report["move"]
    if move:
        out += [f"pending {move['kind']} move {move['request']!r}:",
                share_host_steps_text(move),
                "next: 'vnuma-sched share host resume' or 'vnuma-sched share host rollback'"]
    return "\n".join(out)
