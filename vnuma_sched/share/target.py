"""Which vCPUs a guest uses and which it parks: pure, from the topology and the
online CPUs.

Rules (the same for --use and --per-node):
- a CPU list is parsed strictly (the kernel's cpulist syntax, nothing else), and
  every CPU in it must be online here; an unknown CPU is refused, naming it;
- every node with online CPUs keeps at least one used CPU, unless the user allows
  empty nodes (then its memory is still there, but only remote CPUs use it);
- CPU 0 is never parked. On x86 it cannot be taken offline (since 6.5 there is no
  cpu0/online), so there is no hotplug baseline to compare with, and the boot CPU
  keeps the legacy IRQs that user space cannot move (IRQ 0, the timer). --per-node
  keeps the lowest-numbered CPUs of each node, so CPU 0 always stays in use; a
  --use list without CPU 0 is refused;
- at least one CPU must be parked (otherwise there is nothing to do: 'share
  revert' gives every CPU back).
"""

from dataclasses import dataclass

from vnuma_sched.errors import BadInput
from vnuma_sched.system.topology import format_cpulist, parse_cpulist

BOOT_CPU = 0


@dataclass(frozen=True)
class NodeShare:
    node: int
    used: tuple
    parked: tuple

    def to_dict(self):
        return {"node": self.node, "used": list(self.used), "parked": list(self.parked)}


@dataclass(frozen=True)
class Target:
    used: tuple
    parked: tuple
    nodes: tuple            # NodeShare per node with online CPUs

    @property
    def used_list(self):
        return format_cpulist(self.used)

    @property
    def parked_list(self):
        return format_cpulist(self.parked)

    def to_dict(self):
        return {"used": self.used_list, "parked": self.parked_list,
                "nodes": [n.to_dict() for n in self.nodes]}


def parse_use(text):
    """--use CPULIST: the kernel's cpulist syntax ("0-1,4"); BadInput naming it."""
    if not text.strip():
        raise BadInput("--use: empty CPU list")
    try:
        return set(parse_cpulist(text))
    except ValueError as err:
        raise BadInput(f"--use {text[:40]!r}: {err}") from err


def _online_nodes(topology, online):
    return [(n.id, tuple(c for c in n.cpus if c in online)) for n in topology.nodes
            if any(c in online for c in n.cpus)]


def choose(topology, online, use=None, per_node=None, allow_empty_node=False):
    """The Target for ``use`` (a CPU list text) or ``per_node`` (N CPUs of every node,
    the lowest-numbered); BadInput on anything the rules refuse."""
    if (use is None) == (per_node is None):
        raise BadInput("give exactly one of --use CPULIST and --per-node N")
    online = set(online)
    nodes = _online_nodes(topology, online)
    if use is not None:
        wanted = parse_use(use)
        unknown = sorted(wanted - online)
        if unknown:
            raise BadInput(f"--use: CPU {format_cpulist(unknown)} not online here "
                           f"(online: {format_cpulist(online)})")
    else:
        if per_node < 1:
            raise BadInput(f"--per-node {per_node}: at least 1 CPU per node")
        wanted = {c for _, cpus in nodes for c in cpus[:per_node]}
    return _target(nodes, online, wanted, allow_empty_node)


def _target(nodes, online, used, allow_empty_node):
    if BOOT_CPU in online and BOOT_CPU not in used:
        raise BadInput("CPU 0 cannot be parked (the boot CPU keeps the IRQs that cannot "
                       "move): add it to --use")
    shares = tuple(NodeShare(n, tuple(c for c in cpus if c in used),
                             tuple(c for c in cpus if c not in used)) for n, cpus in nodes)
    empty = [s.node for s in shares if not s.used]
    if empty and not allow_empty_node:
        raise BadInput(f"node {','.join(map(str, empty))} would have no CPU in use "
                       "(--allow-empty-node allows it)")
    parked = tuple(sorted(online - used))
    if not parked:
        raise BadInput("nothing to park: every online CPU is in use "
                       "('share revert' gives parked CPUs back)")
    return Target(tuple(sorted(used)), parked, shares)
