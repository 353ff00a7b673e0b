"""The host's half of sharing (pure): which vCPUs and how much memory per node each
Full-vNUMA guest uses, and the order in which a change is applied.

Every guest sees the whole host layout: its vCPUs are pinned 1:1 (``vm run
--topology host``: vCPU k of guest node i on the k-th host CPU of node i,
layout.vcpu_hosts). A guest's *share* is the set of vCPUs it uses (the others are
parked inside it by 'vnuma-sched share apply') and its memory per guest node (each
guest node's memory is bound to one host node; 'vm run --mem-hotplug' makes it
resizable through a virtio-mem device). An assignment gives every guest a share
such that

- no host CPU runs two active vCPUs (of two guests);
- no host node holds more guest memory than it has;
- every guest keeps the vCPUs it cannot park (its boot vCPU, share/target.py), and
  its memory per node stays within what the guest can have there.

A change names vCPU counts per host node (``node0=2,node1=1``) and memory per guest
node (in a Full-vNUMA guest that mirrors the host, guest node N is host node N). The
vCPUs chosen: a shrinking node keeps the vCPUs that cannot be parked, then the
lowest-numbered ones in use; a growing node adds the lowest-numbered vCPUs whose
host CPU no other guest uses. Nothing is taken from a guest that is not named: a
host CPU in use elsewhere is a refusal naming its holder.

Steps: every guest that gives anything back goes first (its share becomes the part
of the old one it keeps), then the guests that grow take theirs. When the old and
the new assignment are valid, so is the state after every step: the gives only
remove, and each take adds only what the new assignment gives that guest.
"""

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel.layout import VMEM_BLOCK_MB, vcpu_hosts
from vnuma_sched.kernel.vm import parse_size_mb
from vnuma_sched.share.target import BOOT_CPU
from vnuma_sched.system.topology import format_cpulist

GIVE, TAKE = "give", "take"
_ITEM = re.compile(r"node([0-9]{1,4})=(.{1,12})")
_COUNT = re.compile(r"[0-9]{1,5}")


class Refused(BadInput):
    """A change (or a starting assignment) the rules do not allow; one line."""


class MemNode(NamedTuple):
    """A guest node's memory: the host node that holds it, the least (its boot memory)
    and the most it can have (MiB)."""

    node: int                           # guest node
    host_node: int
    min_mb: int
    max_mb: int


@dataclass(frozen=True)
class GuestLayout:
    """What a guest is: its vCPUs' host CPUs, the vCPUs it cannot park, and per guest
    node the host node of its memory and the least and most it can have there."""

    name: str
    vcpu_host: tuple                    # ((vcpu, host CPU), ...) in vCPU order
    mem_bounds: tuple = ()              # (MemNode, ...) by guest node
    fixed: frozenset = frozenset({BOOT_CPU})

    @property
    def hosts(self):
        return dict(self.vcpu_host)

    @property
    def vcpus(self):
        return tuple(v for v, _ in self.vcpu_host)

    def bounds(self, node):
        """(min MiB, max MiB) of guest node ``node``, None when it has no bound memory."""
        return next(((m.min_mb, m.max_mb) for m in self.mem_bounds if m.node == node), None)

    def mem_on(self, share_, host_node):
        """MiB of ``share_`` that host node ``host_node`` holds for this guest."""
        return sum(share_.mem_of(m.node) for m in self.mem_bounds if m.host_node == host_node)

    def on_node(self, host, node):
        """This guest's vCPUs that run on host ``node``, ascending."""
        return tuple(v for v, h in self.vcpu_host if host.cpu_node.get(h) == node)

    def whole(self):
        """The share of a guest that uses everything it has (its Full-vNUMA layout)."""
        return GuestShare(self.vcpus, tuple((m.node, m.min_mb) for m in self.mem_bounds))

    def to_dict(self):
        return {"name": self.name,
                "vcpus": [{"vcpu": v, "host_cpu": h} for v, h in self.vcpu_host],
                "fixed": sorted(self.fixed),
                "memory": [m._asdict() for m in self.mem_bounds]}


def layout_of(name, topo, hotplug_mb=0):
    """The GuestLayout of a placed guest topology (kernel/vm.py GuestTopology): each
    bound guest node from its boot memory up to ``hotplug_mb`` more ('vm run
    --mem-hotplug')."""
    mem = tuple(MemNode(i, n.host_node, n.mem_mb, n.mem_mb + hotplug_mb)
                for i, n in enumerate(topo.nodes) if n.host_node is not None)
    return GuestLayout(name, tuple(sorted(vcpu_hosts(topo).items())), mem)


@dataclass(frozen=True)
class GuestShare:
    used: tuple                         # vCPUs in use, ascending
    mem: tuple = ()                     # ((guest node, MiB), ...) ascending by node

    def mem_of(self, node):
        return dict(self.mem).get(node, 0)

    def to_dict(self):
        return {"used": list(self.used), "mem_mb": {str(n): mb for n, mb in self.mem}}


def share(used, mem=()):
    """A GuestShare from any iterables (sorted, deduplicated)."""
    return GuestShare(tuple(sorted(set(used))), tuple(sorted(dict(mem).items())))


@dataclass(frozen=True)
class Request:
    guest: str
    cpus: tuple = ()                    # ((host node, count), ...)
    mem: tuple = ()                     # ((guest node, MiB), ...)


@dataclass(frozen=True)
class Step:
    guest: str
    phase: str                          # GIVE or TAKE
    before: GuestShare
    after: GuestShare

    def to_dict(self):
        return {"guest": self.guest, "phase": self.phase, "before": self.before.to_dict(),
                "after": self.after.to_dict()}


@dataclass(frozen=True)
class Move:
    before: dict                        # {guest: GuestShare}
    after: dict
    steps: tuple = field(default_factory=tuple)


def _items(text, what, value):
    if not text or not text.strip():
        raise BadInput(f"{what}: empty (expected node0=N,node1=M)")
    out = {}
    for part in text.split(","):
        m = _ITEM.fullmatch(part.strip())
        if not m:
            raise BadInput(f"{what} {text[:60]!r}: {part[:30]!r} is not nodeN=VALUE")
        node = int(m.group(1))
        if node in out:
            raise BadInput(f"{what} {text[:60]!r}: node{node} given twice")
        out[node] = value(m.group(2), part)
    return tuple(sorted(out.items()))


def _count(text, part):
    if not _COUNT.fullmatch(text):
        raise BadInput(f"{part!r}: a vCPU count is a whole number")
    return int(text)


def parse_request(guest, cpus=None, mem=None):
    """A Request from 'node0=2,node1=1' (vCPUs) and 'node1=512M' (memory)."""
    return Request(guest, _items(cpus, f"share of {guest}", _count) if cpus else (),
                   _items(mem, f"--mem of {guest}", lambda v, _p: parse_size_mb(v))
                   if mem else ())


def holders(guests, assignment):
    """{host CPU: [(guest, vCPU), ...]} of every active vCPU."""
    out = {}
    for name, sh in assignment.items():
        hosts = guests[name].hosts
        for v in sh.used:
            out.setdefault(hosts[v], []).append((name, v))
    return out


def problems(host, guests, assignment):
    """What makes ``assignment`` invalid, one line each (empty when it is valid)."""
    out = []
    for name, sh in assignment.items():
        g = guests.get(name)
        if g is None:
            out.append(f"unknown guest {name!r}")
            continue
        unknown = sorted(set(sh.used) - set(g.vcpus))
        if unknown:
            out.append(f"guest {name} has no vCPU {format_cpulist(unknown)}")
        missing = sorted(set(g.fixed) & set(g.vcpus) - set(sh.used))
        if missing:
            out.append(f"guest {name} must keep vCPU {format_cpulist(missing)} "
                       "(never parked: the boot vCPU)")
        for node, mb in sh.mem:
            why = _mem_problem(g, node, mb)
            if why:
                out.append(f"guest {name}: {mb} MiB on node {node}: {why}")
    if out:
        return out
    for cpu, users in sorted(holders(guests, assignment).items()):
        if len(users) > 1:
            out.append(f"host CPU {cpu} would run two active vCPUs: " +
                       " and ".join(f"vCPU {v} of {n}" for n, v in users))
    for node in host.nodes:
        total = sum(guests[n].mem_on(sh, node.id) for n, sh in assignment.items())
        if total > node.mem_kb // 1024:
            out.append(f"node {node.id} overcommitted: {total} MiB of guest memory, "
                       f"{node.mem_kb // 1024} MiB there")
    return out


def _range(bounds):
    if bounds is None:
        return "it has no memory there"
    lo, hi = bounds
    return (f"fixed at {lo} MiB: no resizable memory there ('vm run --mem-hotplug')"
            if lo == hi else f"{lo}..{hi} MiB")


def _mem_problem(g, node, mb):
    """Why guest ``g`` cannot have ``mb`` MiB on guest node ``node`` (None if it can)."""
    b = g.bounds(node)
    if b is None or not b[0] <= mb <= b[1]:
        return _range(b)
    if (mb - b[0]) % VMEM_BLOCK_MB:
        return (f"{mb - b[0]} MiB above its {b[0]} MiB boot memory is not a multiple of "
                f"virtio-mem's {VMEM_BLOCK_MB} MiB block")
    return None


def check(host, guests, assignment):
    """Refused with the first problem of ``assignment``."""
    found = problems(host, guests, assignment)
    if found:
        raise Refused(found[0])


def check_layouts(host, guests):
    """Refused unless every guest runs on this host's CPUs 1:1 and names memory only on
    its nodes."""
    for g in guests.values():
        seen = set()
        for v, cpu in g.vcpu_host:
            if cpu not in host.cpu_node:
                raise Refused(f"guest {g.name}: vCPU {v} runs on host CPU {cpu}, which this "
                              "host does not have")
            if cpu in seen:
                raise Refused(f"guest {g.name}: two vCPUs on host CPU {cpu} (a Full-vNUMA "
                              "guest is pinned 1:1)")
            seen.add(cpu)
        for m in g.mem_bounds:
            if m.host_node not in _node_ids(host) or not 0 <= m.min_mb <= m.max_mb:
                raise Refused(f"guest {g.name}: node {m.node}'s memory ({m.min_mb}.."
                              f"{m.max_mb} MiB on host node {m.host_node}) does not fit "
                              "this host")


def _node_ids(host):
    return [n.id for n in host.nodes]


def _check_request(host, g, req):
    for node, count in req.cpus:
        if node not in _node_ids(host):
            raise Refused(f"guest {g.name}: node{node}: the host has nodes "
                          f"{format_cpulist(_node_ids(host))}")
        have = g.on_node(host, node)
        if count > len(have):
            raise Refused(f"guest {g.name}: node{node}={count}, but it has {len(have)} "
                          f"vCPU(s) on node {node}")
        keep = sorted(set(g.fixed) & set(have))
        if count < len(keep):
            raise Refused(f"guest {g.name}: node{node}={count}, but vCPU "
                          f"{format_cpulist(keep)} runs there and is never parked "
                          "(the boot vCPU)")
    for node, mb in req.mem:
        why = _mem_problem(g, node, mb)
        if why:
            raise Refused(f"guest {g.name}: --mem node{node}={mb}M: {why}")


def _shrink(g, used, node_vcpus, count):
    """``used`` with at most ``count`` of ``node_vcpus``: never-parked ones first, then
    the lowest-numbered in use."""
    inside = [v for v in node_vcpus if v in used]
    if count >= len(inside):
        return set(used)
    keep = [v for v in inside if v in g.fixed]
    keep += [v for v in inside if v not in g.fixed][:count - len(keep)]
    return (set(used) - set(inside)) | set(keep)


def _others(guests, assignment, name):
    """{host CPU: guest} of the active vCPUs of every guest but ``name``."""
    return {cpu: n for cpu, users in holders(guests, assignment).items()
            for n, _ in users if n != name}


def _grow(host, g, used, node, count, taken):
    """``used`` plus the lowest-numbered vCPUs of ``node`` whose host CPU is not
    ``taken`` until ``count`` of them are in use; Refused naming who holds the host
    CPUs it lacks."""
    node_vcpus, hosts, used = g.on_node(host, node), g.hosts, set(used)
    for v in node_vcpus:
        if len(used & set(node_vcpus)) >= count:
            break
        if hosts[v] not in taken:
            used.add(v)
    lack = count - len(used & set(node_vcpus))
    if lack > 0:
        held = {}
        for v in node_vcpus:
            if hosts[v] in taken:
                held.setdefault(taken[hosts[v]], []).append(hosts[v])
        who = ", ".join(f"{n} on host CPU {format_cpulist(c)}" for n, c in sorted(held.items()))
        raise Refused(f"guest {g.name}: node{node}={count} needs {lack} more host CPU(s) "
                      f"on node {node}, none free ({who}): name the guest that gives "
                      "them back in the same change")
    return used


def _steps(before, after, order):
    gives, takes = [], []
    for name in order:
        old, new = before[name], after[name]
        mid = share(set(old.used) & set(new.used),
                    {n: min(old.mem_of(n), new.mem_of(n))
                     for n in dict(old.mem).keys() | dict(new.mem).keys()})
        if mid != old:
            gives.append(Step(name, GIVE, old, mid))
        if new != mid:
            takes.append(Step(name, TAKE, mid, new))
    return tuple(gives + takes)


def plan_change(host, guests, current, requests):
    """The Move that applies ``requests`` (Request per guest) to the assignment
    ``current``; Refused (one line) if the rules do not allow it."""
    seen = set()
    for req in requests:
        if req.guest not in guests or req.guest not in current:
            raise Refused(f"unknown guest {req.guest!r} (guests: {', '.join(current)})")
        if req.guest in seen:
            raise Refused(f"guest {req.guest} is named twice")
        seen.add(req.guest)
        _check_request(host, guests[req.guest], req)
    new = dict(current)
    for req in requests:            # every shrink first: what they free can be taken
        g, used = guests[req.guest], set(current[req.guest].used)
        for node, count in req.cpus:
            used = _shrink(g, used, g.on_node(host, node), count)
        new[req.guest] = share(used, current[req.guest].mem)
    for req in requests:
        g, used = guests[req.guest], set(new[req.guest].used)
        taken = _others(guests, new, g.name)
        for node, count in req.cpus:
            used = _grow(host, g, used, node, count, taken)
        new[req.guest] = share(used, {**dict(new[req.guest].mem), **dict(req.mem)})
    check(host, guests, new)
    return Move(dict(current), new, _steps(current, new, [r.guest for r in requests]))


def plan_start(host, guests, actual, requests=()):
    """The first assignment and the steps from ``actual`` (what each guest uses now,
    overlapping as Full-vNUMA guests boot): every guest keeps its never-parked vCPUs,
    the guests named in ``requests`` get their counts, the others, in order, every
    vCPU whose host CPU is still free; memory as the guests have it now (``actual``)
    unless a request names it."""
    check_layouts(host, guests)
    new = {name: share(g.fixed & set(g.vcpus), actual[name].mem) for name, g in guests.items()}
    for cpu, users in sorted(holders(guests, new).items()):
        if len(users) > 1:
            (a, va), (b, vb) = users[:2]
            raise Refused(f"guests {a} and {b} both keep a never-parked vCPU (the boot vCPU) "
                          f"on host CPU {cpu}: boot {b} with a topology file whose vCPU {vb} "
                          "runs on another host CPU of its node")
    check(host, guests, new)
    if requests:
        new = plan_change(host, guests, new, requests).after
    named = {r.guest for r in requests}
    for name, g in guests.items():
        if name not in named:
            taken = _others(guests, new, name)
            new[name] = share(set(new[name].used) | {v for v in g.vcpus
                                                     if g.hosts[v] not in taken},
                              new[name].mem)
    check(host, guests, new)
    return Move(dict(actual), new, _steps(actual, new, list(guests)))


def plan_stop(guests, current):
    """Every guest back to its whole Full-vNUMA layout (overlapping again): takes only."""
    after = {name: guests[name].whole() for name in current}
    return Move(dict(current), after,
                tuple(Step(n, TAKE, current[n], after[n]) for n in current
                      if current[n] != after[n]))
