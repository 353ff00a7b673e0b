"""The probes' cumulative counters as Prometheus metric families: the one home of
the exported metric names (``serve``, the dashboard and the alert rules use them).

Pure: ``families()`` turns one Session.sample() snapshot (the same data `record`
writes as interval deltas) into prometheus_client metric families; nothing here
touches bcc or the system. Counters are cumulative since the probes were loaded
(steal: since boot), in base units (seconds, not ms or ns).
"""

from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from vnuma_sched.probes import classify
from vnuma_sched.probes import events as E
from vnuma_sched.system import schedstat

PREFIX = "vnuma_sched_"


@dataclass(frozen=True)
class Family:
    """One exported family. ``labels``: its label names with per-CPU series; without
    them (--no-per-cpu) the "cpu" label is dropped and the values are summed per node."""

    name: str
    kind: str                   # counter | gauge | histogram
    doc: str
    labels: tuple = ()
    probe: str = None           # None: served whatever the probes


def _per_cpu(name, doc, probe, *extra):
    return Family(PREFIX + name, "counter", doc, ("cpu", "node", *extra), probe)


def _matrix(name, doc):
    return Family(PREFIX + name, "counter", doc, ("src_node", "dst_node", "cause"), "migrate")


FAMILIES = {f.name: f for f in (
    _per_cpu("ipis_received_total", "IPIs received, by receiving CPU and type", "ipi", "type"),
    _per_cpu("wakeups_without_ipi_total", "wake-ups of polling idle CPUs that needed no IPI",
             "ipi"),
    _per_cpu("idle_entries_total", "idle periods ended (all idle states)", "halt"),
    _per_cpu("idle_seconds_total", "time spent idle (all idle states)", "halt"),
    Family(PREFIX + "idle_residency_seconds", "histogram",
           "idle period lengths, all CPUs (log2 buckets)", (), "halt"),
    _per_cpu("pv_spin_halts_total", "PV spinlock halts (kvm_wait)", "halt"),
    _per_cpu("pv_kicks_total", "PV spinlock kicks sent (kvm_kick_cpu)", "halt"),
    Family(PREFIX + "hlt_exits_total", "counter",
           "host: HLT exits ended by halt polling (polled) or that blocked the vCPU",
           ("type",), "hltexit"),
    Family(PREFIX + "pv_kick_hypercalls_total", "counter", "host: KVM_HC_KICK_CPU hypercalls",
           (), "hltexit"),
    _matrix("migrations_total", "task migrations by source and destination node and cause"),
    _matrix("migrations_to_idle_total", "task migrations onto an idle CPU"),
    Family(PREFIX + "cross_node_migrations_total", "counter",
           "task migrations between nodes, by cause (the off-diagonal of "
           "vnuma_sched_migrations_total, which PromQL cannot select)", ("cause",), "migrate"),
    _matrix("cross_node_avoidable_migrations_total",
            "migrations to another node while the source node had an idle CPU (other than "
            "the destination) the task was allowed on"),
    Family(PREFIX + "cross_node_unchecked_migrations_total", "counter",
           "cross-node migrations not checked for avoidability (when > 0, the avoidable "
           "count is a lower bound)", (), "migrate"),
    Family(PREFIX + "wakeups_total", "counter", "wake-ups seen", (), "migrate"),
    Family(PREFIX + "wakeups_busy_idle_llc_total", "counter",
           "wake-ups placed on a busy CPU while its LLC had an idle one", (), "migrate"),
    _per_cpu("idle_checked_total", "idle CPUs asked about by available_idle_cpu()", "preempt"),
    _per_cpu("idle_rejected_preempted_total",
             "idle CPUs available_idle_cpu() rejected because vcpu_is_preempted() said so",
             "preempt"),
    _per_cpu("steal_seconds_total", "steal time since boot (/proc/stat)", "steal"),
    Family(PREFIX + "wake_affine_moves_total", "counter",
           "wake-ups wake_affine() moved to the waker's side of a scheduling domain "
           "(schedstat ttwu_move_affine; since boot), by scope: cross_node at domains "
           "spanning nodes, in_node below", ("scope",), "schedstat"),
    Family(PREFIX + "wake_remote_total", "counter",
           "wake-ups with waker and wakee on different CPUs of a domain (schedstat "
           "ttwu_wake_remote; since boot), by scope", ("scope",), "schedstat"),
    Family(PREFIX + "probe_up", "gauge",
           "1 when the probe is loaded and counting, 0 when not (reason says why)",
           ("probe", "reason")),
    Family(PREFIX + "info", "gauge",
           "kernel release, the series' patch gates and their values (absent: not in "
           "this kernel), the applied tunables profile", ("kernel", "profile")),
)}
METRIC_NAMES = tuple(FAMILIES)
IPI_TYPES = E.IPI_NAMES[:E.IPI_IDLE_NO_IPI]     # idle_no_ipi is not an IPI
HLT_EXIT_TYPES = ("polled", "blocked")
GATE_ABSENT = "absent"


def gate_label(gate):
    """The info metric's label for a patch gate: "kvm_guest.idle_halt_hint" ->
    "gate_kvm_guest_idle_halt_hint" (label names allow [a-zA-Z0-9_] only)."""
    return "gate_" + "".join(ch if ch.isalnum() else "_" for ch in gate)


@dataclass
class Context:
    """What turns arrays indexed by CPU into labelled samples."""

    cpu_node: dict              # cpu -> node, the CPUs to show
    per_cpu: bool = True


def _cpu_samples(values, ctx):
    """([cpu, node] or [node], value) per CPU, or summed per node without per-CPU series."""
    if ctx.per_cpu:
        return [([str(c), str(n)], values[c] if c < len(values) else 0)
                for c, n in sorted(ctx.cpu_node.items())]
    per_node = {}
    for c, n in ctx.cpu_node.items():
        per_node[n] = per_node.get(n, 0) + (values[c] if c < len(values) else 0)
    return [([str(n)], v) for n, v in sorted(per_node.items())]


def _family(name, ctx):
    fam = FAMILIES[name]
    labels = [x for x in fam.labels if ctx.per_cpu or x != "cpu"]
    cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
    return cls(name, fam.doc, labels=labels)


def _cpu_family(name, values, ctx, scale=1, extra=()):
    """A per-CPU family from one value per CPU (``extra``: further label values)."""
    out = _family(name, ctx)
    for labels, v in _cpu_samples(values, ctx):
        out.add_metric([*labels, *extra], v * scale)
    return out


def _typed_cpu_family(name, per_cpu, types, ctx):
    """A per-CPU family with a type label, from [cpu][type index] rows."""
    out = _family(name, ctx)
    for i, kind in enumerate(types):
        for labels, v in _cpu_samples([row[i] for row in per_cpu], ctx):
            out.add_metric([*labels, kind], v)
    return out


def _ipi(d, ctx):
    yield _typed_cpu_family(PREFIX + "ipis_received_total", d["per_cpu"], IPI_TYPES, ctx)
    yield _cpu_family(PREFIX + "wakeups_without_ipi_total",
                      [row[E.IPI_IDLE_NO_IPI] for row in d["per_cpu"]], ctx)


def _residency(hist, idle_ns):
    """Cumulative log2 buckets: slot 0 is < 1 us, slot k in [2^(k-1), 2^k) us, the last
    slot is everything longer (+Inf)."""
    buckets, total = [], 0
    for k, n in enumerate(hist[:-1]):
        total += n
        buckets.append((repr(2 ** k / 1e6), total))
    buckets.append(("+Inf", total + hist[-1]))
    return HistogramMetricFamily(PREFIX + "idle_residency_seconds",
                                 FAMILIES[PREFIX + "idle_residency_seconds"].doc,
                                 buckets=buckets, sum_value=idle_ns / 1e9)


def _halt(d, ctx):
    yield _cpu_family(PREFIX + "idle_entries_total", [sum(r) for r in d["count"]], ctx)
    yield _cpu_family(PREFIX + "idle_seconds_total", [sum(r) for r in d["ns"]], ctx, 1e-9)
    yield _residency(d["hist"], sum(map(sum, d["ns"])))
    yield _cpu_family(PREFIX + "pv_spin_halts_total", [r[0] for r in d["pvspin"]], ctx)
    yield _cpu_family(PREFIX + "pv_kicks_total", [r[1] for r in d["pvspin"]], ctx)


def _hltexit(d, ctx):
    out = _family(PREFIX + "hlt_exits_total", ctx)
    for kind, v in zip(HLT_EXIT_TYPES, d["wakeups"]):
        out.add_metric([kind], v)
    yield out
    kicks = _family(PREFIX + "pv_kick_hypercalls_total", ctx)
    kicks.add_metric([], d["kicks"])
    yield kicks


def _square_family(name, squares, ctx):
    """A node x node family from {cause: n x n}."""
    out = _family(name, ctx)
    for cause, square in squares.items():
        for s, row in enumerate(square):
            for t, v in enumerate(row):
                out.add_metric([str(s), str(t), cause], v)
    return out


def _scalar(name, value, ctx):
    out = _family(name, ctx)
    out.add_metric([], value)
    return out


def _migrate(d, ctx):
    mx = d["matrix"]
    yield _square_family(PREFIX + "migrations_total", {
        c: [[b + i for b, i in zip(br, ir)] for br, ir in zip(m["busy"], m["idle"])]
        for c, m in mx.items()}, ctx)
    yield _square_family(PREFIX + "migrations_to_idle_total",
                         {c: m["idle"] for c, m in mx.items()}, ctx)
    cross = _family(PREFIX + "cross_node_migrations_total", ctx)
    for cause in mx:
        cross.add_metric([cause], classify.cross_node(mx, [cause]))
    yield cross
    if "avoidable" in d:
        yield _square_family(PREFIX + "cross_node_avoidable_migrations_total",
                             d["avoidable"], ctx)
        seen = d["avoid_seen"]
        yield _scalar(PREFIX + "cross_node_unchecked_migrations_total",
                      seen[E.SEEN_CROSS_UNREADABLE] + seen[E.SEEN_TASK_UNREADABLE], ctx)
    if "wake_place" in d:
        yield _scalar(PREFIX + "wakeups_total", d["wake_place"][0], ctx)
        yield _scalar(PREFIX + "wakeups_busy_idle_llc_total", d["wake_place"][1], ctx)


def _preempt(d, ctx):
    yield _cpu_family(PREFIX + "idle_checked_total", d["checked"], ctx)
    yield _cpu_family(PREFIX + "idle_rejected_preempted_total", d["rejected"], ctx)


def _steal(d, ctx):
    yield _cpu_family(PREFIX + "steal_seconds_total", d["ms"], ctx, 1e-3)


def _schedstat(d, ctx):
    for name, index in (("wake_affine_moves_total", 1), ("wake_remote_total", 0)):
        out = _family(PREFIX + name, ctx)
        for scope in schedstat.SCOPES:
            out.add_metric([scope], d[scope][index])
        yield out


BUILDERS = {"ipi": _ipi, "halt": _halt, "hltexit": _hltexit, "migrate": _migrate,
            "preempt": _preempt, "steal": _steal, "schedstat": _schedstat}


def probe_up(status):
    """vnuma_sched_probe_up from {probe: Availability}."""
    out = GaugeMetricFamily(PREFIX + "probe_up", FAMILIES[PREFIX + "probe_up"].doc,
                            labels=["probe", "reason"])
    for name, avail in status.items():
        out.add_metric([name, "" if avail.ok else avail.reason], int(avail.ok))
    return out


def info(kernel, gates, profile):
    """vnuma_sched_info: ``gates`` {gate: value or None}, ``profile`` a name or ""."""
    names = ["kernel", "profile", *(gate_label(g) for g in gates)]
    out = GaugeMetricFamily(PREFIX + "info", FAMILIES[PREFIX + "info"].doc, labels=names)
    values = [GATE_ABSENT if v is None else v.strip() for v in gates.values()]
    out.add_metric([kernel, profile or "", *values], 1)
    return out


def families(snapshot, status, ctx):
    """Metric families of one cumulative snapshot ({probe: data}, as Session.sample()
    returns it) and the probes' availability; a probe without data has none."""
    out = [probe_up(status)]
    for name, data in snapshot.items():
        out.extend(BUILDERS[name](data, ctx))
    return out
