"""Fakes for the host coordinator's tests: hosts, Full-vNUMA guest layouts, guests
that obey (or go silent)."""

from vnuma_sched.share import host_plan as H
from vnuma_sched.share.coordinator import GuestBehind
from vnuma_sched.system.topology import Node, Topology


def host_of(cpus_per_node, mem_mb=4096):
    nodes, cpu = [], 0
    count = len(cpus_per_node)
    for i, n in enumerate(cpus_per_node):
        nodes.append(Node(i, tuple(range(cpu, cpu + n)), mem_mb * 1024,
                          tuple(10 if i == j else 21 for j in range(count))))
        cpu += n
    return Topology(tuple(nodes))


HOST = host_of([4, 4])


def mirror(name, host=HOST, first=0, mem=1024, mem_max=None):
    """A Full-vNUMA guest of ``host``: vCPU k of node i on the k-th host CPU of node i,
    node 0 turned by ``first`` so that its vCPU 0 runs on another host CPU."""
    pairs, v = [], 0
    for i, node in enumerate(host.nodes):
        cpus = list(node.cpus)
        if i == 0:
            cpus = cpus[first:] + cpus[:first]
        for cpu in cpus:
            pairs.append((v, cpu))
            v += 1
    return H.GuestLayout(name, tuple(pairs),
                         tuple((n.id, mem, mem_max or mem) for n in host.nodes))


class Killed(BaseException):
    """The coordinator process dies here (nothing after it runs, no handler sees it)."""


class FakeGuests:
    """Guests that do what they are told, remember what they use, and can go silent."""

    def __init__(self, layouts):
        self.layouts = layouts
        self.now = {n: set(g.vcpus) for n, g in layouts.items()}   # fresh: everything
        self.calls, self.silent, self.die_after_apply = [], set(), False

    def used(self, name, record):
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        return sorted(self.now[name])

    def apply(self, name, record, before, after):
        self.calls.append((name, tuple(after.used)))
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        self.now[name] = set(after.used)
        if self.die_after_apply:
            raise Killed()

    def overlaps(self):
        seen, out = {}, []
        for name, used in self.now.items():
            for v in used:
                cpu = self.layouts[name].hosts[v]
                if cpu in seen:
                    out.append(cpu)
                seen[cpu] = name
        return out


