"""Full-vNUMA layout: the host CPU that runs each vCPU and the host node that holds
each guest node's memory (pure; kernel/qmp.py applies it to a running QEMU).

A guest topology is *placed* when its nodes carry ``host_cpus`` and ``host_node``
(GuestNode fields): ``--topology host`` mirrors the host and is placed, a topology
JSON file may name them, and an NxM grid is placed on request (``pin_in_order``).
"""

from dataclasses import replace

from vnuma_sched.errors import BadInput

BACKEND_ID = "vnode{}"   # QEMU memory backend of guest node N (ours, not virtme-ng's)
# Resizable memory ('vm run --mem-hotplug'): guest node N's virtio-mem device (QOM
# path /machine/peripheral/<id>) and the backend it plugs from
VMEM_ID = "vnuma-vmem{}"
VMEM_BACKEND_ID = "vnode{}-vmem"
VMEM_BLOCK_MB = 2       # virtio-mem's default block size on x86 (the THP size)
# plugged memory comes online by itself, in ZONE_MOVABLE: removable again
# (kconfig/vnuma-guest.config says why a boot parameter, not a Kconfig default)
ONLINE_MOVABLE = "memhp_default_state=online_movable"


def _ints(value):
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def json_placement(nodes, cpus, what):
    """(host_cpus, host_node) per node of a topology JSON document: every node names
    both ("host_cpus" beside "cpus", "host_node") or none does."""
    named = ["host_cpus" in n or "host_node" in n for n in nodes]
    if not any(named):
        return [((), None)] * len(nodes)
    out = []
    for i, (node, vcpus) in enumerate(zip(nodes, cpus)):
        if not named[i]:
            raise BadInput(f"--topology {what}: nodes[{i}] has no host_cpus/host_node "
                           "(name them for every node or for none)")
        host_cpus, host_node = node.get("host_cpus"), node.get("host_node")
        if not _ints(host_cpus) or len(host_cpus) != len(vcpus):
            raise BadInput(f"--topology {what}: nodes[{i}].host_cpus must list one host "
                           f"CPU per vCPU ({len(vcpus)} integers)")
        if host_node is not None and not (type(host_node) is int and host_node >= 0):
            raise BadInput(f"--topology {what}: nodes[{i}].host_node must be a node "
                           "number or null")
        out.append((tuple(host_cpus), host_node))
    return out


def check_on_host(topo, host, what):
    """Refuse a placement the host cannot give: unknown or repeated host CPUs (1:1),
    an unknown host node, or memory bound to a node without memory."""
    if not topo.pinned:
        return topo
    seen = set()
    node_ids = {n.id: n for n in host.nodes}
    for i, node in enumerate(topo.nodes):
        for cpu in node.host_cpus:
            if cpu not in host.cpu_node:
                raise BadInput(f"--topology {what}: guest node {i} names host CPU {cpu}, "
                               f"which this host does not have (it has "
                               f"{_cpulist(host.cpus)})")
            if cpu in seen:
                raise BadInput(f"--topology {what}: host CPU {cpu} is named twice "
                               "(Full vNUMA pins vCPUs 1:1)")
            seen.add(cpu)
        if node.host_node is None:
            continue
        if node.host_node not in node_ids:
            raise BadInput(f"--topology {what}: guest node {i} names host node "
                           f"{node.host_node}, which this host does not have")
        if node_ids[node.host_node].memoryless:
            raise BadInput(f"--topology {what}: guest node {i}'s memory cannot be bound "
                           f"to host node {node.host_node}: it has no memory")
    return topo


def _cpulist(cpus):
    return ",".join(map(str, cpus)) if len(cpus) < 9 else f"{cpus[0]}..{cpus[-1]}"


def host_order(host):
    """The host's CPUs node by node, each node's in ascending order."""
    return [c for n in host.nodes for c in sorted(n.cpus)]


def pin_in_order(topo, host, what):
    """``topo`` placed on the host's CPUs in node order (vCPU i on the i-th), each
    guest node's memory on the host node of its vCPUs; a guest node whose vCPUs span
    host nodes (a flat guest on a NUMA host) keeps unbound memory."""
    order = host_order(host)
    if topo.ncpus > len(order):
        raise BadInput(f"--topology {what}: {topo.ncpus} vCPUs cannot be pinned 1:1 on "
                       f"this host's {len(order)} CPUs")
    with_memory = {n.id for n in host.nodes if not n.memoryless}
    nodes = []
    for node in topo.nodes:
        host_cpus = tuple(order[c] for c in node.cpus)
        homes = {host.node_of(c) for c in host_cpus}
        home = homes.pop() if len(homes) == 1 else None
        nodes.append(replace(node, host_cpus=host_cpus,
                             host_node=home if home in with_memory else None))
    return replace(topo, nodes=tuple(nodes))


def settle(topo, pin, host, what):
    """The layout a run boots: ``pin`` None keeps what the topology names (checked
    on ``host``), True places an unplaced topology in host order, False drops it."""
    if pin is False:
        return unpinned(topo)
    if pin and not topo.pinned:
        if host is None:
            raise BadInput(f"--topology {what}: pinning needs the host's topology")
        topo = pin_in_order(topo, host, what)
    if topo.pinned:
        if host is None:
            raise BadInput(f"--topology {what}: names host CPUs, but the host's topology "
                           "is not available")
        check_on_host(topo, host, what)
    return topo


def unpinned(topo):
    """``topo`` without a placement (``--no-pin``)."""
    return replace(topo, nodes=tuple(replace(n, host_cpus=(), host_node=None)
                                     for n in topo.nodes))


def vcpu_hosts(topo):
    """{vCPU index: host CPU} of a placed topology."""
    return {v: h for n in topo.nodes for v, h in zip(n.cpus, n.host_cpus)}


def _backend(backend_id, size_mb, node):
    value = f"memory-backend-memfd,id={backend_id},size={size_mb}M,share=on"
    if node.host_node is not None:
        value += f",host-nodes={node.host_node},policy=bind"
    return value


def backend_object(index, node):
    """QEMU's -object value for guest node ``index``'s memory: bound to its host node
    (policy=bind: the kernel never falls back to another node), else unbound."""
    return _backend(BACKEND_ID.format(index), node.mem_mb, node)


def check_hotplug(topo, size_mb):
    """``size_mb`` (MiB per guest node that can be plugged on top of its boot memory)
    if this guest can have it, else BadInput."""
    if not size_mb:
        return 0
    if not topo.pinned:
        raise BadInput("--mem-hotplug: only a placed (Full-vNUMA) guest gets resizable "
                       "memory; use --topology host or --pin")
    if size_mb < 0 or size_mb % VMEM_BLOCK_MB:
        raise BadInput(f"--mem-hotplug {size_mb}M: not a multiple of virtio-mem's "
                       f"{VMEM_BLOCK_MB} MiB block size (x86)")
    return size_mb


def vmem_objects(index, node, size_mb):
    """QEMU's -object and -device values of guest node ``index``'s virtio-mem device:
    up to ``size_mb`` plugged from a backend bound where the node's boot memory is,
    nothing plugged at boot."""
    backend = VMEM_BACKEND_ID.format(index)
    return (_backend(backend, size_mb, node),
            f"virtio-mem-pci,id={VMEM_ID.format(index)},node={index},memdev={backend},"
            "requested-size=0")


def record(topo):
    """The placement for a run's metadata (None when the topology is not placed)."""
    if not topo.pinned:
        return None
    return {"vcpus": [{"vcpu": v, "node": i, "host_cpu": h}
                      for i, n in enumerate(topo.nodes) for v, h in zip(n.cpus, n.host_cpus)],
            "memory": [{"node": i, "mem_mb": n.mem_mb, "host_node": n.host_node,
                        "policy": "bind" if n.host_node is not None else "default"}
                       for i, n in enumerate(topo.nodes)]}
