"""Whether this kernel can run each probe of the spec, and the -D flags to build it.
Pure: availability is decided from facts read through a SysRoot."""

import difflib
import re
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput
from vnuma_sched.probes.spec import PROBES
from vnuma_sched.system.facts import KernelFacts  # noqa: F401  (re-exported)


@dataclass
class Availability:
    ok: bool
    reason: str = ""
    flags: dict = field(default_factory=dict)     # -D NAME=int
    attach: dict = field(default_factory=dict)    # role -> kernel symbol
    notes: list = field(default_factory=list)     # degraded but usable
    unsupported: dict = field(default_factory=dict)   # metric name -> why not measured


def availability(probe, facts):
    """Availability of one probe on this kernel, with the -D flags to build it."""
    if probe.bpf and facts.euid != 0:
        return Availability(False, "not root (needs CAP_BPF/CAP_SYS_ADMIN)")
    if probe.bpf and facts.lockdown == "confidentiality":
        return Availability(False, "lockdown (confidentiality) denies BPF reads")
    missing = [f for f in probe.files if not facts.sysroot.exists(f)]
    if missing:
        return Availability(False, f"no {missing[0]}")
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
    avail = Availability(True)
    why_not = probe.configure(facts, avail) if probe.configure else None
    return Availability(False, why_not) if why_not else avail


def unsupported_lines(status):
    """One line per probe that cannot run and per metric a running probe cannot measure
    (a metric family once: its per-cause names share the reason)."""
    lines = []
    for name, a in status.items():
        if not a.ok:
            lines.append(f"{name}: unsupported: {a.reason}")
            continue
        lines += [f"{name}: {metric} unsupported: {why}"
                  for metric, why in a.unsupported.items() if "." not in metric]
    return lines


def int_flag(name, value, lo=0, hi=1 << 20):
    """'-DNAME=value' for a validated integer; anything else is BadInput."""
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
        raise BadInput(f"bad BPF parameter name {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"BPF parameter {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BadInput(f"BPF parameter {name}={value} outside {lo}..{hi}")
    return f"-D{name}={value}"


def cflags(avail, max_cpus, max_nodes, with_events=False, max_node_cpus=None):
    """The -D flags of one probe: the sizes (MAX_NODE_CPUS, the CPUs of the largest
    node, defaults to MAX_CPUS), WITH_EVENTS and what the probe's configure decided."""
    flags = {"MAX_CPUS": max_cpus, "MAX_NODES": max_nodes,
             "MAX_NODE_CPUS": max_node_cpus or max_cpus,
             "WITH_EVENTS": int(with_events), **avail.flags}
    return [int_flag(k, v) for k, v in sorted(flags.items())]


def unknown_probe(name, hint=""):
    """BadInput for a word that is not a probe name: the known names, a close match."""
    near = difflib.get_close_matches(name, list(PROBES), n=1)
    maybe = f"; did you mean {near[0]!r}?" if near else ""
    return BadInput(f"unknown probe {name!r}: known are {', '.join(PROBES)}{maybe}{hint}")


def select(names):
    """Probe objects for names (all when empty); BadInput for unknown names."""
    if not names:
        return list(PROBES.values())
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise unknown_probe(unknown[0])
    return [PROBES[n] for n in names]


def needs_bpf(names):
    """Does any of these probes (all when empty) load an eBPF program?"""
    return any(p.bpf for p in select(names))
