"""Which probes exist, what each needs, and whether this kernel has it. Pure:
availability is decided from files read through a SysRoot."""

import re
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
BALANCE_FNS = ("sched_balance_rq", "load_balance")          # 6.12+, older
PREEMPTED_FNS = ("__vnuma_emul_vcpu_is_preempted", "__raw_callee_save___kvm_vcpu_is_preempted",
                 "__kvm_vcpu_is_preempted")


@dataclass(frozen=True)
class Probe:
    name: str
    bpf: str            # file under bpf/, "" for user-space probes
    side: str           # guest | host | any
    tracepoints: tuple = ()
    kprobes: tuple = ()     # required kprobe targets
    doc: str = ""


PROBES = {p.name: p for p in [
    Probe("ipi", "ipi.bpf.c", "any",
          ("irq_vectors:reschedule_entry", "irq_vectors:call_function_single_entry",
           "irq_vectors:call_function_entry", "sched:sched_wake_idle_without_ipi"),
          doc="IPIs received per CPU by type; sent per CPU pair (6.3+)"),
    Probe("halt", "halt.bpf.c", "guest", ("power:cpu_idle",),
          doc="idle entries and residency per state; PV spinlock halts and kicks"),
    Probe("hltexit", "hltexit.bpf.c", "host",
          ("kvm:kvm_exit", "kvm:kvm_vcpu_wakeup", "kvm:kvm_hypercall"),
          doc="HLT exits per VM process and vCPU, halt-poll success, kicks"),
    Probe("migrate", "migrate.bpf.c", "any",
          ("sched:sched_migrate_task", "sched:sched_waking", "power:cpu_idle"),
          doc="migrations by node pair, cause and idle destination"),
    Probe("preempt", "preempt.bpf.c", "guest", (), ("available_idle_cpu",),
          doc="idle CPUs rejected because vcpu_is_preempted() said so"),
    Probe("steal", "", "guest", (), doc="steal time per CPU (/proc/stat)"),
]}


@dataclass
class Availability:
    ok: bool
    reason: str = ""
    flags: dict = field(default_factory=dict)     # -D NAME=int
    attach: dict = field(default_factory=dict)    # role -> kernel symbol
    notes: list = field(default_factory=list)     # degraded but usable


class KernelFacts:
    """What the running (or recorded) kernel offers, read once."""

    def __init__(self, sysroot, euid):
        self.sysroot, self.euid = sysroot, euid
        self.tracefs = next((t for t in TRACEFS_CANDIDATES
                             if sysroot.exists(f"{t}/events")), None)
        lock = sysroot.read_optional("/sys/kernel/security/lockdown", "")
        m = re.search(r"\[(\w+)\]", lock)
        self.lockdown = m.group(1) if m else "none"
        self._symbols = None

    def tracepoint(self, spec):
        cat, name = spec.split(":")
        return self.tracefs is not None and self.sysroot.exists(
            f"{self.tracefs}/events/{cat}/{name}")

    @property
    def kprobes(self):
        if self.tracefs and self.sysroot.exists(f"{self.tracefs}/kprobe_events"):
            return True
        return "register_kprobe" in self.symbols

    @property
    def symbols(self):
        if self._symbols is None:
            text = self.sysroot.read_optional("/proc/kallsyms", "")
            self._symbols = {line.split()[2] for line in text.splitlines()
                             if len(line.split()) >= 3}
        return self._symbols


def _first(symbols, names):
    return next((n for n in names if n in symbols), None)


def availability(probe, facts):
    """Availability of one probe on this kernel, with the -D flags to build it."""
    if probe.bpf and facts.euid != 0:
        return Availability(False, "not root (needs CAP_BPF/CAP_SYS_ADMIN)")
    if probe.bpf and facts.lockdown == "confidentiality":
        return Availability(False, "lockdown (confidentiality) denies BPF reads")
    if probe.name == "steal":
        ok = facts.sysroot.exists("/proc/stat")
        return Availability(ok, "" if ok else "no /proc/stat")
    if probe.tracepoints and facts.tracefs is None:
        return Availability(False, "tracefs not mounted (mount -t tracefs nodev "
                                   "/sys/kernel/tracing)")
    missing = [t for t in probe.tracepoints if not facts.tracepoint(t)]
    if missing:
        return Availability(False, f"missing tracepoint {missing[0]}")
    if probe.kprobes and not facts.kprobes:
        return Availability(False, "no kprobes (CONFIG_KPROBES unset)")
    for sym in probe.kprobes:
        if sym not in facts.symbols:
            return Availability(False, f"no kernel symbol {sym}")
    return _specifics(probe, facts)


def _specifics(probe, facts):
    avail = Availability(True)
    kp = facts.kprobes
    if probe.name == "ipi":
        avail.flags["HAVE_IPI_SEND_CPU"] = int(facts.tracepoint("ipi:ipi_send_cpu"))
        if not avail.flags["HAVE_IPI_SEND_CPU"]:
            avail.notes.append("no ipi:ipi_send_cpu (before 6.3): sent IPIs not counted")
    elif probe.name == "halt":
        has = kp and {"kvm_wait", "kvm_kick_cpu"} <= facts.symbols
        avail.flags["HAVE_KPROBES"] = int(has)
        if not has:
            avail.notes.append("PV spinlock halts/kicks not counted (no kprobes or no "
                               "kvm_wait)")
    elif probe.name == "migrate":
        fmt = facts.sysroot.read_optional(
            f"{facts.tracefs}/events/sched/sched_migrate_task/format", "")
        avail.flags["HAVE_MIGRATE_COMM"] = int("char comm[" in fmt)
        avail.flags["HAVE_NUMA_TP"] = int(facts.tracepoint("sched:sched_move_numa") and
                                          facts.tracepoint("sched:sched_swap_numa"))
        fn = _first(facts.symbols, BALANCE_FNS) if kp else None
        avail.flags["BALANCE_FN_KPROBE"] = int(fn is not None)
        if fn:
            avail.attach["balance"] = fn
        else:
            avail.notes.append("balance causes not separated (no kprobes): counted as other")
    elif probe.name == "preempt":
        fn = _first(facts.symbols, PREEMPTED_FNS)
        avail.flags["PREEMPTED_FN_KRETPROBE"] = int(fn is not None)
        if fn is None:
            return Availability(False, "no vcpu_is_preempted implementation installed "
                                       "(not a KVM guest with steal time)")
        avail.attach["preempted"] = fn
    return avail


def int_flag(name, value, lo=0, hi=1 << 20):
    """'-DNAME=value' for a validated integer; anything else is BadInput."""
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        raise BadInput(f"bad BPF parameter name {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"BPF parameter {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BadInput(f"BPF parameter {name}={value} outside {lo}..{hi}")
    return f"-D{name}={value}"


def cflags(avail, max_cpus, max_nodes, with_events=False):
    flags = {"MAX_CPUS": max_cpus, "MAX_NODES": max_nodes,
             "WITH_EVENTS": int(with_events), **avail.flags}
    return [int_flag(k, v) for k, v in sorted(flags.items())]


def select(names):
    """Probe objects for names (all when empty); BadInput for unknown names."""
    if not names:
        return list(PROBES.values())
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise BadInput(f"unknown probe {unknown[0]!r}: known are {', '.join(PROBES)}")
    return [PROBES[n] for n in names]
