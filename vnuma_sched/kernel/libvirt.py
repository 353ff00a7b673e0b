"""A guest topology as a libvirt domain (pure; ``vm libvirt-xml`` prints it).

The document is the smallest ``<domain type='kvm'>`` libvirt validates, carrying
the layout ``vm run`` boots with QEMU (vm.vng_argv):

- ``<cpu><numa>``: one cell per guest node with its vCPUs, its memory and its
  distances to every node (QEMU's ``--numa``/``--numa-distance``);
- ``<cputune>`` (placed topologies): one ``<vcpupin>`` per vCPU, the host CPU its
  thread is pinned to (kernel/qmp.py pins the same threads);
- ``<numatune>`` (placed topologies): one strict ``<memnode>`` per guest node bound
  to a host node (QEMU's ``host-nodes=N,policy=bind`` backends), and the strict
  domain-wide ``<memory>`` when every node is bound. libvirt gives a cell without
  a memnode the domain-wide nodeset, so that element is left out when a guest node
  mirrors a memoryless host node: its memory stays unbound, as in the QEMU boot.
"""

import re
import xml.etree.ElementTree as ET

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import layout
from vnuma_sched.kernel.vm import GUEST_NAME
from vnuma_sched.system.topology import format_cpulist

# virtme-ng boots x86 guests on q35 (the vCPU limits in kernel/vm.py assume it)
ARCH, MACHINE = "x86_64", "q35"
STRICT = "strict"   # libvirt's name for the kernel's MPOL_BIND (QEMU policy=bind)
# libvirt refuses a "/" in a domain name; XML 1.0 cannot carry control characters
_NAME = re.compile(r"[^/\x00-\x1f\x7f]+")


def check_name(name):
    """``name`` if libvirt takes it as a domain name, else BadInput."""
    if not _NAME.fullmatch(name or "") or name != name.strip():
        raise BadInput(f"--name {name!r}: a domain name is one line of printable "
                       "characters without '/' or surrounding spaces")
    return name


def _cputune(dom, topo):
    tune = ET.SubElement(dom, "cputune")
    for node in topo.nodes:
        for vcpu, host_cpu in zip(node.cpus, node.host_cpus):
            ET.SubElement(tune, "vcpupin", vcpu=str(vcpu), cpuset=str(host_cpu))


def _numatune(dom, topo):
    bound = {i: n.host_node for i, n in enumerate(topo.nodes) if n.host_node is not None}
    if not bound:
        return
    tune = ET.SubElement(dom, "numatune")
    if len(bound) == len(topo.nodes):
        ET.SubElement(tune, "memory", mode=STRICT, nodeset=format_cpulist(bound.values()))
    for cell, host_node in bound.items():
        ET.SubElement(tune, "memnode", cellid=str(cell), mode=STRICT, nodeset=str(host_node))


def _numa(dom, topo):
    numa = ET.SubElement(ET.SubElement(dom, "cpu"), "numa")
    for i, (node, row) in enumerate(zip(topo.nodes, topo.distances)):
        cell = ET.SubElement(numa, "cell", id=str(i))
        if node.cpus:   # a CPU-less node is a memory-only cell
            cell.set("cpus", format_cpulist(node.cpus))
        cell.set("memory", str(node.mem_mb))
        cell.set("unit", "MiB")
        distances = ET.SubElement(cell, "distances")
        for j, value in enumerate(row):
            ET.SubElement(distances, "sibling", id=str(j), value=str(value))


def _virtio_mem(dom, topo, hotplug_mb):
    """One ``<memory model='virtio-mem'>`` per guest node, as 'vm run --mem-hotplug'
    adds them: up to ``hotplug_mb`` from the node's host node, nothing plugged at boot."""
    devices = ET.SubElement(dom, "devices")
    for i, node in enumerate(topo.nodes):
        mem = ET.SubElement(devices, "memory", model="virtio-mem")
        if node.host_node is not None:
            ET.SubElement(ET.SubElement(mem, "source"), "nodemask").text = str(node.host_node)
        target = ET.SubElement(mem, "target")
        ET.SubElement(target, "size", unit="MiB").text = str(hotplug_mb)
        ET.SubElement(target, "node").text = str(i)
        ET.SubElement(target, "block", unit="MiB").text = str(layout.VMEM_BLOCK_MB)
        ET.SubElement(target, "requested", unit="MiB").text = "0"


def domain(topo, name=GUEST_NAME, hotplug_mb=0):
    """The ``<domain>`` element of a vm.GuestTopology (placed or not); ``hotplug_mb``:
    resizable memory per guest node (layout.check_hotplug: placed guests only)."""
    hotplug_mb = layout.check_hotplug(topo, hotplug_mb)
    dom = ET.Element("domain", type="kvm")
    ET.SubElement(dom, "name").text = check_name(name)
    if hotplug_mb:      # libvirt's schema wants slots; virtio-mem devices take none
        ET.SubElement(dom, "maxMemory", slots="1", unit="MiB").text = str(
            topo.mem_mb + hotplug_mb * len(topo.nodes))
    ET.SubElement(dom, "memory", unit="MiB").text = str(topo.mem_mb)
    ET.SubElement(dom, "vcpu", placement="static").text = str(topo.ncpus)
    if topo.pinned:
        _cputune(dom, topo)
        _numatune(dom, topo)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch=ARCH, machine=MACHINE).text = "hvm"
    _numa(dom, topo)
    if hotplug_mb:
        _virtio_mem(dom, topo, hotplug_mb)
    return dom


def to_xml(topo, name=GUEST_NAME, hotplug_mb=0):
    """The domain document as text, indented, ending with a newline."""
    dom = domain(topo, name, hotplug_mb)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"
