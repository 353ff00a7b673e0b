"""One declarative entry per probe: what it attaches to, which maps it keeps,
how a snapshot reads them, the metrics it yields and its columns in `top`.

Adding a probe is one bpf/<name>.bpf.c plus one entry in PROBES (and, when it
needs kernel-dependent -D flags, one ``configure`` function). The loader,
the catalog, report, compare, bisect and top all read these entries. Pure:
nothing here touches bcc or the system.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from vnuma_sched.probes import classify
from vnuma_sched.probes import events as E
from vnuma_sched.system import schedstat


@dataclass(frozen=True)
class Map:
    """One BPF map read into a snapshot under ``key``.

    shape: "percpu" -> [cpu][index]; "sum" -> [index] summed over CPUs;
    "scalar" -> the single summed value; "pairs" -> sorted [*keys, value] rows of
    a hash map; "cpu_pairs" -> the same rows, [cpu, index, value] with value > 0, of
    a per-CPU array (a pair counted without hashing). ``size`` is an int or a function of (max_cpus, max_nodes).
    """

    name: str
    key: str
    shape: str
    size: object = 1
    keys: tuple = ()
    when_flag: str = ""           # read only when this -D flag is 1
    listing: bool = False         # rows of a hash map, not counters: left out of totals
    matrix: bool = False          # flat [cause][dest idle][src][dst]: n x n per cause
    cause_matrix: bool = False    # flat [cause][src][dst]: n x n per cause


@dataclass(frozen=True)
class Attach:
    """A kprobe, kretprobe or raw_tracepoint; ``symbol`` "@role" is resolved per kernel
    (Availability.attach; a role the kernel does not offer is not attached)."""

    kind: str
    symbol: str
    fn: str


@dataclass(frozen=True)
class Metric:
    name: str
    probe: Optional[str]          # None: the workload's own figure
    doc: str
    lower_is_worse: bool = False


@dataclass(frozen=True)
class Probe:
    name: str
    bpf: str                      # file under bpf/, "" for user-space probes
    side: str                     # guest | host | any
    doc: str
    tracepoints: tuple = ()
    kprobes: tuple = ()           # required kprobe targets
    attach: tuple = ()            # Attach entries (tracepoints attach by themselves)
    maps: tuple = ()
    fills: tuple = ()             # (map name, context key) filled at load: cpu_node, llc
    events: str = ""              # perf buffer map of MigrateEvent records (--events)
    metrics: tuple = ()           # Metric entries this probe yields
    derive: Callable = None       # total -> {metric name: value}
    columns: Callable = None      # one interval's data -> {top column: [value per cpu]}
    files: tuple = ()             # system files it reads (user-space probes)
    configure: Callable = None    # (facts, Availability) -> why it cannot run, or None
    degrade: Callable = None      # (Availability, load error) -> True when an optional
    #                               part was turned off (a reload may succeed)


def _col(per_cpu, index):
    return [row[index] for row in per_cpu]


def _sum_cols(per_cpu, n):
    cols = list(zip(*per_cpu)) or [[]] * n
    return [sum(c) for c in cols]


# ---- ipi -----------------------------------------------------------------

def _ipi_derive(t):
    resched, call_single, call_func, no_ipi = _sum_cols(t["per_cpu"], E.NR_IPI)
    return {"ipi_resched": resched, "ipi_call_single": call_single,
            "ipi_call_func": call_func, "wake_without_ipi": no_ipi,
            "wake_ipis": resched + call_single}


def _ipi_columns(d):
    return {"resch": _col(d["per_cpu"], E.IPI_RESCHED),
            "csq": _col(d["per_cpu"], E.IPI_CALL_SINGLE),
            "noipi": _col(d["per_cpu"], E.IPI_IDLE_NO_IPI)}


def _ipi_configure(facts, avail):
    avail.flags["HAVE_IPI_SEND_CPU"] = int(facts.tracepoint("ipi:ipi_send_cpu"))
    if not avail.flags["HAVE_IPI_SEND_CPU"]:
        avail.notes.append("no ipi:ipi_send_cpu (before 6.3): sent IPIs not counted")
    return None


# ---- halt ----------------------------------------------------------------

def _halt_derive(t):
    return {"halts": sum(map(sum, t["count"])),
            "idle_ms": round(sum(map(sum, t["ns"])) / 1e6, 3),
            "pv_spin_halts": sum(r[0] for r in t["pvspin"]),
            "pv_kicks": sum(r[1] for r in t["pvspin"])}


def _halt_columns(d):
    return {"idle": [sum(r) for r in d["count"]],
            "idlems": [sum(r) // 1_000_000 for r in d["ns"]]}


def _halt_configure(facts, avail):
    has = facts.kprobes and {"kvm_wait", "kvm_kick_cpu"} <= facts.symbols
    avail.flags["HAVE_KPROBES"] = int(has)
    if not has:
        avail.notes.append("PV spinlock halts/kicks not counted (no kprobes or no kvm_wait)")
    return None


# ---- migrate -------------------------------------------------------------

BALANCE_FNS = ("sched_balance_rq", "load_balance")          # 6.12+, older


def _matrix_size(max_cpus, max_nodes):
    return E.NR_CAUSES * 2 * max_nodes * max_nodes


def _avoidable_size(max_cpus, max_nodes):
    return E.NR_CAUSES * max_nodes * max_nodes


def _migrate_derive(t):
    mx = t["matrix"]
    m = {"cross_node_migrations": classify.cross_node(mx),
         "same_node_migrations": classify.same_node(mx)}
    if "wake_place" in t:
        m["wakeups"], m["wakeups_busy_idle_llc"] = t["wake_place"]
    for cause, c in classify.by_cause(mx).items():
        m[f"cross_node_migrations.{cause}"] = c["cross"]
        m[f"migrations.{cause}"] = c["cross"] + c["same"]
        m[f"migrations_to_idle.{cause}"] = c["to_idle"]
    if "avoidable" in t:      # absent when unsupported (Availability.unsupported says why)
        m.update(classify.avoidable_metrics(t["avoidable"], t["avoid_seen"]))
    return m


def _avoidable_unsupported(avail, why):
    avail.flags["HAVE_AVOIDABLE"] = 0
    avail.attach.pop("migrate_raw", None)
    for name in AVOIDABLE_METRICS:
        avail.unsupported[name] = why
    avail.notes.append(f"cross_node_avoidable unsupported: {why}")


def _migrate_avoidable(facts, avail):
    """The raw tracepoint handler with the task_struct offsets from BTF, or the reason
    why cross_node_avoidable cannot be measured here."""
    offsets, why = facts.task_offsets
    if offsets is None:
        _avoidable_unsupported(avail, f"the task's allowed CPUs cannot be read: {why}")
        return
    avail.flags["HAVE_AVOIDABLE"] = 1
    avail.flags.update(offsets)
    avail.attach["migrate_raw"] = "sched_migrate_task"


def _migrate_degrade(avail, error):
    """After a failed load with the raw tracepoint: without it, the rest still runs."""
    if not avail.flags.get("HAVE_AVOIDABLE"):
        return False
    _avoidable_unsupported(avail, f"raw tracepoint sched_migrate_task failed: {error}")
    return True


def _migrate_configure(facts, avail):
    fmt = facts.sysroot.read_optional(
        f"{facts.tracefs}/events/sched/sched_migrate_task/format", "")
    avail.flags["HAVE_MIGRATE_COMM"] = int("char comm[" in fmt)
    avail.flags["HAVE_NUMA_TP"] = int(facts.tracepoint("sched:sched_move_numa") and
                                      facts.tracepoint("sched:sched_swap_numa"))
    fn = next((n for n in BALANCE_FNS if n in facts.symbols), None) if facts.kprobes else None
    avail.flags["BALANCE_FN_KPROBE"] = int(fn is not None)
    if fn:
        avail.attach["balance"] = fn
    else:
        avail.notes.append("balance causes not separated (no kprobes): counted as other")
    _migrate_avoidable(facts, avail)
    return None


AVOIDABLE_DOC = ("migrations to another node while the previous node had an idle CPU "
                 "(other than the destination) the task was allowed to run on")
AVOIDABLE_METRICS = ("cross_node_avoidable", "cross_node_unchecked",
                     *(f"cross_node_avoidable.{c}" for c in E.CAUSE_NAMES))


def _migrate_metrics():
    out = [Metric("cross_node_migrations", "migrate", "migrations between nodes"),
           Metric("same_node_migrations", "migrate", "migrations within a node"),
           Metric("cross_node_avoidable", "migrate", AVOIDABLE_DOC),
           Metric("cross_node_unchecked", "migrate",
                  "migrations not checked for cross_node_avoidable (task or affinity "
                  "unreadable): when > 0, cross_node_avoidable is a lower bound"),
           Metric("wakeups", "migrate", "wake-ups seen"),
           Metric("wakeups_busy_idle_llc", "migrate",
                  "wake-ups placed on a busy CPU while its LLC had an idle one")]
    for kind, what in (("cross_node_migrations", "cross-node migrations"),
                       ("migrations", "migrations"),
                       ("migrations_to_idle", "migrations onto an idle CPU"),
                       ("cross_node_avoidable", "avoidable cross-node migrations")):
        out += [Metric(f"{kind}.{cause}", "migrate", f"{what} caused by {cause}")
                for cause in E.CAUSE_NAMES]
    return tuple(out)


# ---- preempt -------------------------------------------------------------

# Every vcpu_is_preempted() implementation a guest kernel may install: the KVM
# one (x86-64 asm, or C elsewhere) and the series' debug emulation (v1 and v2
# names). Only the installed one is ever called, so the probe attaches to all.
PREEMPTED_FNS = ("__raw_callee_save___kvm_vcpu_is_preempted", "__kvm_vcpu_is_preempted",
                 "__kvm_debug_vcpu_is_preempted", "__vnuma_emul_vcpu_is_preempted")


def _preempt_configure(facts, avail):
    fns = tuple(n for n in PREEMPTED_FNS if n in facts.symbols)
    avail.flags["PREEMPTED_FN_KRETPROBE"] = int(bool(fns))
    if not fns:
        return "no vcpu_is_preempted implementation installed (not a KVM guest with steal time)"
    avail.attach["preempted"] = fns
    return None


def _cpus(max_cpus, max_nodes):
    return max_cpus


def _preempt_derive(t):
    return {"idle_rejected_preempted": sum(t["rejected"]), "idle_checked": sum(t["checked"])}


# ---- hltexit, steal ------------------------------------------------------

def _hltexit_derive(t):
    polled, blocked = t["wakeups"]
    return {"hlt_exits_polled": polled, "hlt_exits_blocked": blocked,
            "pv_kick_hypercalls": t["kicks"]}


# ---- schedstat -------------------------------------------------------------

def _schedstat_derive(t):
    cross, local = t["cross_node"], t["in_node"]
    return {"wake_affine_cross_node": cross[1], "wake_remote_cross_node": cross[0],
            "wake_affine_in_node": local[1]}


PROBES = {p.name: p for p in [
    Probe("ipi", "ipi.bpf.c", "any",
          "IPIs received per CPU by type; sent per CPU pair (6.3+)",
          tracepoints=("irq_vectors:reschedule_entry", "irq_vectors:call_function_single_entry",
                       "irq_vectors:call_function_entry", "sched:sched_wake_idle_without_ipi"),
          maps=(Map("ipi_recv", "per_cpu", "percpu", E.NR_IPI),
                Map("ipi_sent", "sent", "cpu_pairs", _cpus, keys=("src", "dst"),
                    when_flag="HAVE_IPI_SEND_CPU", listing=True)),
          metrics=(Metric("ipi_resched", "ipi", "reschedule IPIs received"),
                   Metric("ipi_call_single", "ipi", "call-function-single IPIs received"),
                   Metric("ipi_call_func", "ipi", "call-function IPIs received"),
                   Metric("wake_without_ipi", "ipi", "idle wake-ups without an IPI"),
                   Metric("wake_ipis", "ipi", "reschedule + call-function-single IPIs")),
          derive=_ipi_derive, columns=_ipi_columns, configure=_ipi_configure),
    Probe("halt", "halt.bpf.c", "guest",
          "idle entries and residency per state; PV spinlock halts and kicks",
          tracepoints=("power:cpu_idle",),
          maps=(Map("idle_count", "count", "percpu", E.MAX_IDLE_STATES),
                Map("idle_ns", "ns", "percpu", E.MAX_IDLE_STATES),
                Map("idle_hist", "hist", "sum", E.HIST_SLOTS),
                Map("pvspin", "pvspin", "percpu", 2)),
          metrics=(Metric("halts", "halt", "idle entries"),
                   Metric("idle_ms", "halt", "time in idle (ms)"),
                   Metric("pv_spin_halts", "halt", "PV spinlock halts (kvm_wait)"),
                   Metric("pv_kicks", "halt", "PV spinlock kicks (kvm_kick_cpu)")),
          derive=_halt_derive, columns=_halt_columns, configure=_halt_configure),
    Probe("hltexit", "hltexit.bpf.c", "host",
          "HLT exits per VM process and vCPU, halt-poll success, kicks",
          tracepoints=("kvm:kvm_exit", "kvm:kvm_vcpu_wakeup", "kvm:kvm_hypercall"),
          maps=(Map("hlt_exits", "hlt", "pairs", keys=("pid", "vcpu"), listing=True),
                Map("wakeups", "wakeups", "sum", 2),
                Map("kicks", "kicks", "scalar")),
          metrics=(Metric("hlt_exits_polled", "hltexit", "halts ended by halt polling"),
                   Metric("hlt_exits_blocked", "hltexit", "halts that blocked the vCPU"),
                   Metric("pv_kick_hypercalls", "hltexit", "KVM_HC_KICK_CPU hypercalls")),
          derive=_hltexit_derive),
    Probe("migrate", "migrate.bpf.c", "any",
          "migrations by node pair, cause and idle destination; avoidable ones",
          tracepoints=("sched:sched_migrate_task", "sched:sched_waking", "power:cpu_idle"),
          attach=(Attach("kprobe", "@balance", "on_balance_enter"),
                  Attach("kretprobe", "@balance", "on_balance_return"),
                  Attach("raw_tracepoint", "@migrate_raw", "on_migrate_raw")),
          maps=(Map("matrix", "matrix", "sum", _matrix_size, matrix=True),
                Map("wake_place", "wake_place", "sum", 2),
                Map("avoidable", "avoidable", "sum", _avoidable_size,
                    when_flag="HAVE_AVOIDABLE", cause_matrix=True),
                Map("avoid_seen", "avoid_seen", "sum", E.NR_SEEN,
                    when_flag="HAVE_AVOIDABLE")),
          fills=(("cpu_node", "cpu_node"), ("cpu_llc", "llc"), ("node_cpus", "node_cpus")),
          events="events", metrics=_migrate_metrics(),
          derive=_migrate_derive, configure=_migrate_configure, degrade=_migrate_degrade),
    Probe("preempt", "preempt.bpf.c", "guest",
          "idle CPUs rejected because vcpu_is_preempted() said so",
          kprobes=("available_idle_cpu",),
          attach=(Attach("kprobe", "available_idle_cpu", "on_aic_enter"),
                  Attach("kretprobe", "available_idle_cpu", "on_aic_return"),
                  Attach("kretprobe", "@preempted", "on_preempted_return")),
          maps=(Map("checked", "checked", "sum", _cpus),
                Map("rejected", "rejected", "sum", _cpus)),
          metrics=(Metric("idle_rejected_preempted", "preempt",
                          "idle CPUs rejected by available_idle_cpu() as preempted"),
                   Metric("idle_checked", "preempt", "idle CPUs asked about")),
          derive=_preempt_derive,
          columns=lambda d: {"rejpre": d["rejected"]}, configure=_preempt_configure),
    Probe("steal", "", "guest", "steal time per CPU (/proc/stat)", files=("/proc/stat",),
          metrics=(Metric("steal_ms", "steal", "steal time (ms)"),),
          derive=lambda t: {"steal_ms": sum(t["ms"])},
          columns=lambda d: {"stealms": d["ms"]}),
    Probe("schedstat", "", "guest",
          "the scheduler's wake-up placement counters (/proc/schedstat)",
          files=(schedstat.SCHEDSTAT,),
          metrics=(Metric("wake_affine_cross_node", "schedstat",
                          "wake-ups wake_affine() moved to the waker's node "
                          "(ttwu_move_affine at NUMA domains)"),
                   Metric("wake_remote_cross_node", "schedstat",
                          "wake-ups with waker and wakee on different nodes "
                          "(ttwu_wake_remote at NUMA domains)"),
                   Metric("wake_affine_in_node", "schedstat",
                          "wake-ups wake_affine() moved within a node")),
          derive=_schedstat_derive,
          configure=lambda facts, avail: schedstat.unsupported(facts.sysroot)),
]}

WORKLOAD_SCORE = Metric("workload_score", None, "the workload's own figure, higher is better",
                        lower_is_worse=True)
REMOTE_RUN_FRACTION = Metric(
    "remote_run_fraction", None,
    "omp-barrier: share of the threads' compute time on a node other than the one "
    "holding most of their memory (what becomes time on real NUMA hardware)")
WORKLOAD_METRICS = (WORKLOAD_SCORE, REMOTE_RUN_FRACTION)
METRICS = {m.name: m for m in (*WORKLOAD_METRICS,
                               *(m for p in PROBES.values() for m in p.metrics))}

# The metrics comparisons show first, in this order.
PRIMARY = ("workload_score", "remote_run_fraction", "cross_node_migrations",
           "cross_node_avoidable", "wake_affine_cross_node",
           "idle_rejected_preempted",
           "wakeups_busy_idle_llc", "wake_ipis", "halts", "migrations.wake", "migrations.newidle",
           "migrations.periodic", "migrations.nohz", "cross_node_migrations.wake",
           "cross_node_migrations.newidle", "cross_node_migrations.periodic")
# The results tables (compare --markdown, the cover letter): the problem metrics only.
HEADLINE = ("workload_score", "remote_run_fraction", "idle_rejected_preempted",
            "wakeups_busy_idle_llc", "cross_node_migrations", "cross_node_avoidable",
            "wake_affine_cross_node", "cross_node_migrations.wake",
            "cross_node_migrations.newidle", "cross_node_migrations.periodic")


def metric_probe(name):
    """The probe a metric needs (None for workload_score); KeyError when unknown."""
    return METRICS[name].probe


def map_size(m, max_cpus, max_nodes):
    return m.size(max_cpus, max_nodes) if callable(m.size) else m.size


def metrics_help():
    """The metric names, grouped by probe, for --help texts."""
    causes = " ".join(E.CAUSE_NAMES)
    lines = [f"{WORKLOAD_SCORE.name} (lower is worse), {REMOTE_RUN_FRACTION.name} (omp-barrier)"]
    for p in PROBES.values():
        names = [m.name for m in p.metrics if "." not in m.name]
        if p.name == "migrate":
            names += ["migrations.CAUSE", "cross_node_migrations.CAUSE",
                      "migrations_to_idle.CAUSE", "cross_node_avoidable.CAUSE"]
        lines.append(f"{p.name}: {', '.join(names)}")
    return "\b\nMetrics, by the probe that measures them:\n" + "\n".join(
        f"  {ln}" for ln in lines) + f"\n  (CAUSE: {causes})\n"
