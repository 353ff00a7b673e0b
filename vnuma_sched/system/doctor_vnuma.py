"""doctor's Full-vNUMA checks: is this guest Full vNUMA, as far as a guest can tell?

A Full-vNUMA guest mirrors its host: the host's nodes with their distances,
every vCPU pinned 1:1 to the host CPU it mirrors, each node's memory bound to
the matching host node. A guest sees the layout (SRAT/SLIT) and the memory per
node. Pinning it sees only through evidence: the host's KVM_HINTS_REALTIME hint,
steal time near zero, sockets that follow the nodes. Where its vCPU threads run,
where its memory comes from and whether the host polls before halting are seen
on the host only.
"""

from typing import NamedTuple, Optional

from vnuma_sched.render import human_kb
from vnuma_sched.system import facts
from vnuma_sched.system.checks import FAIL, OK, UNSUPPORTED, WARN, Check, by_name, guarded
from vnuma_sched.system.topology import format_cpulist, packages_of_cpus, read_topology

# Steal "near zero": at most this share of a CPU's elapsed ticks, or one tick (the
# rounding of /proc/stat's USER_HZ counters in a short sample).
STEAL_NEAR_ZERO = 0.01
NO_HOST_VIEW = "a guest cannot see host pinning directly"
HOST_MEMORY = "binding to host nodes shows on the host only"
HOST_ONLY = "vCPU placement, memory binding and halt polling show on the host only"
PARTS = ("vnuma", "vnuma:pinned", "vnuma:memory")


class TickSample(NamedTuple):
    """Two facts.cpu_ticks() snapshots; seconds None: ``before`` is boot (all zero)."""
    before: dict
    after: dict
    seconds: Optional[float]

    @property
    def span(self):
        return "since boot" if self.seconds is None else f"over {self.seconds:g} s"


def sample_cpu_ticks(sysroot, seconds, sleep):
    """Per-CPU ticks ``seconds`` apart (``sleep`` waits); since boot when seconds is 0
    or the tree is a recording (it does not change)."""
    if not seconds or not sysroot.is_live:
        return TickSample({}, facts.cpu_ticks(sysroot), None)
    before = facts.cpu_ticks(sysroot)
    sleep(seconds)
    return TickSample(before, facts.cpu_ticks(sysroot), seconds)


def stolen_cpus(sample):
    """({cpu: steal share} above near zero, {cpu: share} of every CPU with elapsed
    ticks) between the sample's snapshots."""
    shares = {}
    for cpu, (steal, total) in sample.after.items():
        steal0, total0 = sample.before.get(cpu, (0, 0))
        if total > total0:
            shares[cpu] = (max(steal - steal0, 0), total - total0)
    stolen = {c: s / t for c, (s, t) in shares.items() if s > max(1, STEAL_NEAR_ZERO * t)}
    return stolen, {c: s / t for c, (s, t) in shares.items()}


def check_layout(env):
    """More than one node, each with CPUs, and distances from firmware (a SLIT)."""
    topo = read_topology(env.sysroot)
    with_cpus = [n for n in topo.nodes if n.cpus]
    data = {"nodes": len(topo.nodes), "nodes_with_cpus": len(with_cpus)}
    if not topo.numa:
        return Check("vnuma", UNSUPPORTED, "kernel without CONFIG_NUMA: the guest sees no "
                     "NUMA layout", data)
    if len(topo.nodes) < 2:
        return Check("vnuma", WARN, "1 node: the guest sees no NUMA layout (a Full-vNUMA "
                     "guest of a one-node host looks the same)", data)
    if len(with_cpus) < 2:
        where = ", ".join(f"node{n.id}" for n in with_cpus) or "no node"
        return Check("vnuma", FAIL, f"{len(topo.nodes)} nodes, CPUs on {where} only: the "
                     "scheduler sees one CPU node, not a host's layout", data)
    remote = topo.remote_distances()
    detail = f"{len(topo.nodes)} nodes, remote distances {','.join(map(str, remote))}"
    if remote == [20]:
        detail += " (uniform 20: the kernel default when firmware gives no SLIT)"
        return Check("vnuma", WARN, detail, data)
    return Check("vnuma", OK, detail, data)


def _steal_evidence(env, prior):
    """(True: near zero, False: stolen, None: says nothing; the words). Stolen ticks are
    evidence on their own; their absence only where the host gives steal time."""
    steal = prior.get("pv:steal_time")
    exposed = steal.data.get("exposed") if steal is not None else None
    if exposed is False:
        return None, "no KVM steal time: steal cannot show sharing"
    sample = (env.steal_sample() if env.steal_sample is not None
              else sample_cpu_ticks(env.sysroot, 0, None))
    stolen, shares = stolen_cpus(sample)
    if not shares:
        return None, f"no CPU ticks elapsed {sample.span} (/proc/stat)"
    if stolen:
        return False, (f"steal on CPU {format_cpulist(stolen)} {sample.span} (max "
                       f"{max(stolen.values()):.1%}, /proc/stat)")
    words = (f"steal near zero on {len(shares)} CPUs {sample.span} (max "
             f"{max(shares.values()):.1%}, /proc/stat)")
    if exposed is None:
        return None, f"{words}, but KVM steal time is not confirmed"
    return True, words


def _package_evidence(env):
    """(True: every node inside one package, False: a node spans packages, None)."""
    topo = read_topology(env.sysroot)
    packages = packages_of_cpus(env.sysroot, topo.cpus)
    if packages is None:
        return None, "CPU packages unreadable (cpuN/topology/physical_package_id)"
    per_node = {n.id: sorted({packages[c] for c in n.cpus}) for n in topo.nodes if n.cpus}
    spread = next((n for n, p in per_node.items() if len(p) > 1), None)
    if spread is not None:
        return False, (f"node{spread} spans packages {','.join(map(str, per_node[spread]))}: "
                       "sockets do not follow nodes")
    count = len({p[0] for p in per_node.values()})
    if count == len(per_node):
        return True, f"one package per node ({_many(count, 'node')})"
    return True, (f"every node inside one package ({_many(len(per_node), 'node')}, "
                  f"{_many(count, 'package')})")


def _many(count, noun):
    return f"{count} {noun}{'s' * (count != 1)}"


def check_pinned(env, prior):
    """Evidence of 1:1 pinning on dedicated host CPUs; ``prior``: earlier checks by name
    (hypervisor and the PV features: CPUID is read once)."""
    hv = prior.get("hypervisor")
    kvm = hv.data.get("kvm") if hv is not None else None
    if kvm is not True:
        if kvm is False and not facts.hypervisor_flag(env.sysroot):
            return Check("vnuma:pinned", UNSUPPORTED, "not a guest: no 'hypervisor' CPU flag, "
                         "no KVM leaf")
        why = ("no KVM PV leaf (TCG or another hypervisor)" if kvm is False else
               "KVM not identified (CPUID is readable by root only, no dmesg evidence)")
        return Check("vnuma:pinned", WARN, f"unknown: {why}, so no hint and no steal "
                     f"time to read; {NO_HOST_VIEW}")
    hint = prior.get("pv:realtime_hint")
    dedicated = hint.data.get("exposed") if hint is not None else None
    hint_words = hint.detail if hint is not None else "KVM_HINTS_REALTIME: unknown"
    quiet, steal_words = _steal_evidence(env, prior)
    follows, package_words = _package_evidence(env)
    evidence = f"{hint_words}; {steal_words}; {package_words}; {NO_HOST_VIEW}"
    data = {"realtime_hint": dedicated, "steal_near_zero": quiet, "packages_follow": follows}
    if quiet is False:
        return Check("vnuma:pinned", FAIL, f"not dedicated: {evidence}", data)
    if dedicated and quiet and follows:
        return Check("vnuma:pinned", OK, f"consistent with 1:1 pinning: {evidence}", data)
    return Check("vnuma:pinned", WARN, f"unproven: {evidence}", data)


def check_memory(env):
    """Memory on every node (MemTotal of nodeN/meminfo): no memoryless nodes."""
    topo = read_topology(env.sysroot)
    if not topo.numa:
        return Check("vnuma:memory", UNSUPPORTED, "kernel without CONFIG_NUMA: no memory "
                     "per node")
    empty = [n for n in topo.nodes if n.memoryless]
    if empty:
        names = ", ".join(f"node{n.id} ({'CPUs ' + n.cpulist if n.cpus else 'no CPUs'})"
                          for n in empty)
        return Check("vnuma:memory", FAIL, f"memoryless {names}: a Full-vNUMA mirror of a "
                     "host has memory on every node", {"memoryless": [n.id for n in empty]})
    if len(topo.nodes) < 2:
        return Check("vnuma:memory", WARN, f"1 node ({human_kb(topo.nodes[0].mem_kb)}): "
                     f"nothing per node to check; {HOST_MEMORY}")
    least = min(topo.nodes, key=lambda n: n.mem_kb)
    return Check("vnuma:memory", OK, f"every node has memory ({len(topo.nodes)} nodes, least "
                 f"{human_kb(least.mem_kb)} on node{least.id}); {HOST_MEMORY}")


def check_full(parts):
    """The answer from the three checks above (``parts``: by name)."""
    rows = [parts[n] for n in PARTS if n in parts]
    named = {s: ", ".join(c.name for c in rows if c.status == s)
             for s in (UNSUPPORTED, FAIL, WARN)}
    if named[UNSUPPORTED]:
        return Check("vnuma:full", UNSUPPORTED, f"cannot be told here: {named[UNSUPPORTED]} "
                     "unsupported")
    if named[FAIL]:
        return Check("vnuma:full", FAIL, f"not Full vNUMA: {named[FAIL]} failed")
    if named[WARN] or len(rows) < len(PARTS):
        return Check("vnuma:full", WARN, f"not shown: {named[WARN] or 'a check'} did not "
                     f"pass; {HOST_ONLY}")
    return Check("vnuma:full", OK, f"Full vNUMA as far as a guest can tell; {HOST_ONLY}")


def vnuma_checks(env, prior):
    """The Full-vNUMA rows in display order; ``prior``: the checks run before, by name."""
    rows = guarded("vnuma", check_layout, env)
    rows += guarded("vnuma:pinned", check_pinned, env, prior)
    rows += guarded("vnuma:memory", check_memory, env)
    return rows + guarded("vnuma:full", check_full, by_name(rows))
