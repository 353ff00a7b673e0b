"""NUMA topology from <root>/sys/devices/system/node (nodes, CPUs, memory, distances)."""

import re
from dataclasses import dataclass, field

from vnuma_sched.errors import DataError

NODE_DIR = "/sys/devices/system/node"
CPU_DIR = "/sys/devices/system/cpu"
CPU_ONLINE = f"{CPU_DIR}/online"
LOCAL_DISTANCE = 10

# The largest NR_CPUS any Linux architecture allows (x86 MAXSMP, powerpc): a CPU
# number at or above it is not something the kernel prints.
MAX_CPUS = 8192

_RANGE = re.compile(r"^([0-9]+)(?:-([0-9]+)(?::([0-9]+)/([0-9]+))?)?$")
_MEMTOTAL = re.compile(r"^Node\s+\d+\s+MemTotal:\s+(\d+)\s+kB$", re.M)


def _number(text, part):
    """An element of a cpulist, below MAX_CPUS (checked before any set is built)."""
    if len(text) > len(str(MAX_CPUS)) or int(text) >= MAX_CPUS:
        raise ValueError(f"cpulist element {part!r}: CPU numbers stop below {MAX_CPUS}")
    return int(text)


def parse_cpulist(text):
    """Parse a kernel cpulist ("0-3,8,10-11", "0-15:2/4") into a sorted list.

    Raises ValueError on anything the kernel would not print, including CPU
    numbers at or above MAX_CPUS.
    """
    text = text.strip()
    if not text:
        return []
    cpus = set()
    for part in text.split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"bad cpulist element {part!r}")
        lo = _number(m.group(1), part)
        hi = _number(m.group(2), part) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad cpulist range {part!r}")
        if m.group(3) is None:
            cpus.update(range(lo, hi + 1))
            continue
        used, group = _number(m.group(3), part), _number(m.group(4), part)
        if group == 0 or used == 0 or used > group:
            raise ValueError(f"bad cpulist stride {part!r}")
        for start in range(lo, hi + 1, group):
            cpus.update(range(start, min(start + used, hi + 1)))
    return sorted(cpus)


def format_cpulist(cpus):
    """The kernel's compact form of a CPU set: [0,1,2,3,8] -> "0-3,8"."""
    out = []
    cpus = sorted(set(cpus))
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class Node:
    id: int
    cpus: tuple
    mem_kb: int
    distances: tuple

    @property
    def memoryless(self):
        return self.mem_kb == 0

    @property
    def cpuless(self):
        return not self.cpus

    @property
    def cpulist(self):
        """The CPUs in the kernel's list format ("0-3,8")."""
        return format_cpulist(self.cpus)

    def to_dict(self):
        return {"id": self.id, "cpus": list(self.cpus), "mem_kb": self.mem_kb,
                "distances": list(self.distances)}


@dataclass(frozen=True)
class Topology:
    nodes: tuple
    numa: bool = True  # False when the kernel has no node directory (CONFIG_NUMA=n)
    cpu_node: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "cpu_node",
                           {c: n.id for n in self.nodes for c in n.cpus})

    @property
    def cpus(self):
        return sorted(self.cpu_node)

    def node_of(self, cpu):
        return self.cpu_node[cpu]

    def distance(self, a, b):
        ids = [n.id for n in self.nodes]
        return self.nodes[ids.index(a)].distances[ids.index(b)]

    def remote_distances(self):
        """The set of distinct off-diagonal distances."""
        return sorted({d for n in self.nodes for i, d in enumerate(n.distances)
                       if self.nodes[i].id != n.id})

    def to_dict(self):
        return {"nodes": [n.to_dict() for n in self.nodes]}


def _node_ids(sysroot):
    ids = []
    for name in sysroot.listdir(NODE_DIR):
        m = re.fullmatch(r"node(\d+)", name)
        if m and sysroot.is_dir(f"{NODE_DIR}/{name}"):
            ids.append(int(m.group(1)))
    return sorted(ids)


def _read_cpulist(sysroot, path):
    try:
        return tuple(parse_cpulist(sysroot.read(path)))
    except ValueError as err:
        raise DataError(path, f"malformed cpulist: {err}") from err


def _read_mem_kb(sysroot, path):
    m = _MEMTOTAL.search(sysroot.read(path))
    if not m:
        raise DataError(path, "no 'Node N MemTotal: X kB' line")
    return int(m.group(1))


def _read_distances(sysroot, path, count):
    text = sysroot.read(path).split()
    try:
        row = tuple(int(x) for x in text)
    except ValueError as err:
        raise DataError(path, f"malformed distance row {' '.join(text)!r}") from err
    if len(row) != count:
        raise DataError(path, f"distance row has {len(row)} entries for {count} nodes")
    if any(not 0 <= d <= 255 for d in row):
        raise DataError(path, f"distance row {' '.join(text)!r} has values outside 0..255")
    return row


def _without_numa(sysroot):
    """A kernel built without CONFIG_NUMA: one pseudo-node with every online CPU."""
    cpus = _read_cpulist(sysroot, CPU_ONLINE)
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB$", sysroot.read("/proc/meminfo"), re.M)
    if not m:
        raise DataError("/proc/meminfo", "no 'MemTotal: X kB' line")
    return Topology(nodes=(Node(0, cpus, int(m.group(1)), (LOCAL_DISTANCE,)),), numa=False)


def read_topology(sysroot):
    """Read the node layout. Raises DataError naming the first bad file."""
    ids = _node_ids(sysroot)
    if not ids:
        return _without_numa(sysroot)
    nodes = []
    for nid in ids:
        base = f"{NODE_DIR}/node{nid}"
        nodes.append(Node(
            id=nid,
            cpus=_read_cpulist(sysroot, f"{base}/cpulist"),
            mem_kb=_read_mem_kb(sysroot, f"{base}/meminfo"),
            distances=_read_distances(sysroot, f"{base}/distance", len(ids)),
        ))
    seen = {}
    for n in nodes:
        for c in n.cpus:
            if c in seen:
                raise DataError(f"{NODE_DIR}/node{n.id}/cpulist",
                                f"CPU {c} is also in node{seen[c]}")
            seen[c] = n.id
    return Topology(nodes=tuple(nodes))


def packages_of_cpus(sysroot, cpus):
    """{cpu: physical package (socket) id}; None when one of them cannot be read (no
    topology directory: a recorded tree, an offline CPU)."""
    out = {}
    for cpu in cpus:
        text = sysroot.read_optional(f"{CPU_DIR}/cpu{cpu}/topology/physical_package_id")
        if text is None or not text.strip().lstrip("-").isdigit():
            return None
        out[cpu] = int(text)
    return out


def llc_of_cpus(sysroot, topology):
    """{cpu: id of its last-level cache} (the first CPU sharing it); the node when
    the kernel shows no cache topology (some virtual CPUs)."""
    out = {}
    for cpu in topology.cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/cache"
        best = None
        for index in sysroot.listdir(base):
            if not index.startswith("index"):
                continue
            level = sysroot.read_optional(f"{base}/{index}/level", "0").strip()
            shared = sysroot.read_optional(f"{base}/{index}/shared_cpu_list")
            if shared and level.isdigit() and (best is None or int(level) > best[0]):
                try:
                    best = (int(level), parse_cpulist(shared))
                except ValueError:
                    continue
        out[cpu] = min(best[1]) if best and best[1] else \
            min(topology.nodes[[n.id for n in topology.nodes].index(topology.node_of(cpu))].cpus)
    return out
