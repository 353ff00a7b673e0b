"""'share status': read from the kernel, not from the journal: per node the used and
parked vCPUs, the partition's state, and what still runs on or points at a parked
vCPU (IRQs, kernel threads, the workqueue mask). Pure: reads through a SysRoot."""

from dataclasses import dataclass, field

from vnuma_sched.share import kernel as KS
from vnuma_sched.share.plan import mask_cpus
from vnuma_sched.system.topology import format_cpulist, parse_cpulist, read_topology
from vnuma_sched.tunables import journal as J
from vnuma_sched.tunables import knobs as K

PER_CPU = "per-CPU kernel thread: stays (the CPU is idle unless it is woken)"


@dataclass
class Status:
    group: str
    partition: str              # the kernel's text ("isolated", "isolated invalid (...)"),
    parked: tuple               # or "" when there is no group
    nodes: list                 # [{"node", "used", "parked", "mem_kb"}]
    not_moved: list = field(default_factory=list)   # [{"kind", "name", "path", "cpus", "why"}]
    journal: dict = None        # the share journal's header, when vCPUs were parked by us

    def to_dict(self):
        return {"group": self.group, "partition": self.partition,
                "parked": format_cpulist(self.parked),
                "nodes": self.nodes, "not_moved": self.not_moved,
                "applied": self.journal}


def _parked(sysroot):
    """(partition text, parked CPUs): CPUs count as parked only in a valid isolated
    partition."""
    if not sysroot.is_dir(K.PARKED):
        return "", ()
    part = sysroot.read_optional(f"{K.PARKED}/cpuset.cpus.partition", "").strip()
    if part != "isolated":
        return part, ()
    text = sysroot.read_optional(f"{K.PARKED}/cpuset.cpus.effective")
    if text is None:
        text = sysroot.read_optional(f"{K.PARKED}/cpuset.cpus", "")
    try:
        return part, tuple(parse_cpulist(text))
    except ValueError:
        return part, ()


def _not_moved(sysroot, parked):
    out = []
    wq = sysroot.read_optional(K.WQ_CPUMASK)
    if wq is not None and parked & set(mask_cpus(wq.strip())):
        out.append({"kind": "workqueue", "name": "unbound workqueues", "path": K.WQ_CPUMASK,
                    "cpus": format_cpulist(mask_cpus(wq.strip())),
                    "why": "the mask includes parked CPUs"})
    for irq in KS.irqs(sysroot, effective=True):
        if parked & set(irq.effective):
            name = KS.irq_name(sysroot, irq.number)
            out.append({"kind": "irq", "name": f"{irq.number}" + (f" {name}" if name else ""),
                        "path": irq.path, "cpus": format_cpulist(irq.effective),
                        "why": "effective affinity on a parked CPU (a managed or "
                               "unmovable IRQ)"})
    why = KS.tsc_watchdog(sysroot)
    if why is not None:
        out.append({"kind": "timer", "name": "clocksource_watchdog", "path": KS.CLOCKSOURCES,
                    "cpus": format_cpulist(KS.online(sysroot)),
                    "why": f"verifies the TSC ({why}) from each online CPU in turn, "
                           "parked ones too; boot with tsc=reliable where the host's "
                           "TSC is stable"})
    for kt in KS.kthreads(sysroot, parked):
        why = PER_CPU if kt.per_cpu else ("PF_NO_SETAFFINITY" if kt.fixed else
                                          "unbound, allowed on a parked CPU")
        out.append({"kind": "kthread", "name": kt.comm, "path": kt.path,
                    "cpus": format_cpulist(kt.cpus), "why": why})
    return out


def read_status(sysroot, store):
    """The Status of this guest; ``store``: the share journal's Store."""
    partition, parked = _parked(sysroot)
    online = set(KS.online(sysroot))
    nodes = []
    for node in read_topology(sysroot).nodes:
        cpus = [c for c in node.cpus if c in online]
        nodes.append({"node": node.id, "used": format_cpulist(c for c in cpus
                                                             if c not in parked),
                      "parked": format_cpulist(c for c in cpus if c in parked),
                      "mem_kb": node.mem_kb})      # MemTotal: what the node has now
    doc = J.load(store)
    header = None if doc is None else {"created": doc.created, "kernel": doc.kernel,
                                       "writes": len(doc.entries)}
    return Status(K.PARKED, partition, parked, nodes,
                  _not_moved(sysroot, set(parked)) if parked else [], header)
