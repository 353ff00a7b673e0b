"""`vm libvirt-xml`: the layout `vm run` boots, as a libvirt domain document."""

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import layout, vm
from vnuma_sched.kernel import libvirt as lv
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import parse_cpulist, read_topology


def host_of(fixture_root, name):
    return read_topology(SysRoot(fixture_root / name))


def cells(dom):
    """[(vCPUs, MiB, {sibling: distance})] per <cell>, in id order."""
    out = []
    for i, cell in enumerate(dom.findall("cpu/numa/cell")):
        assert cell.get("id") == str(i)
        per_mib = {"MiB": 1, "KiB": 1024}[cell.get("unit", "KiB")]   # libvirt's default
        out.append((parse_cpulist(cell.get("cpus", "")), int(cell.get("memory")) // per_mib,
                    {int(s.get("id")): int(s.get("value"))
                     for s in cell.findall("distances/sibling")}))
    return out


def pins(dom):
    return {int(p.get("vcpu")): int(p.get("cpuset")) for p in dom.findall("cputune/vcpupin")}


def memnodes(dom):
    """{cell: (mode, host nodes)} of <numatune>'s memnodes."""
    return {int(m.get("cellid")): (m.get("mode"), parse_cpulist(m.get("nodeset")))
            for m in dom.findall("numatune/memnode")}


def test_grid_unplaced_has_cells_only():
    topo = vm.parse_topology("2x2", 2048)
    dom = ET.fromstring(lv.to_xml(topo))
    assert dom.tag == "domain" and dom.get("type") == "kvm"
    assert dom.findtext("name") == vm.GUEST_NAME
    assert dom.find("memory").get("unit") == "MiB" and dom.findtext("memory") == "2048"
    assert dom.findtext("vcpu") == "4" and dom.findtext("os/type") == "hvm"
    assert {c.get("unit") for c in dom.findall("cpu/numa/cell")} == {"MiB"}
    assert dom.find("cputune") is None and dom.find("numatune") is None
    assert cells(dom) == [([0, 1], 1024, {0: 10, 1: 21}), ([2, 3], 1024, {0: 21, 1: 10})]


def test_host_mirror_pins_every_vcpu_and_binds_nodes_with_memory(fixture_root):
    host = host_of(fixture_root, "tr-2990wx")     # nodes 1 and 3 have no memory
    topo = vm.parse_topology("host", 4096, host)
    dom = ET.fromstring(lv.to_xml(topo))
    assert pins(dom) == layout.vcpu_hosts(topo) and len(pins(dom)) == len(host.cpus) == 64
    got = cells(dom)
    assert len(got) == len(host.nodes)
    for (vcpus, mem, dist), hnode in zip(got, host.nodes):
        # guest node i runs on host node i's CPUs, at the host's distances
        assert sorted(pins(dom)[v] for v in vcpus) == sorted(hnode.cpus)
        assert mem == 1024
        assert [dist[j] for j in range(len(host.nodes))] == list(hnode.distances)
    assert [list(d.values()) for *_, d in got] == [list(r) for r in topo.distances]
    bound = {i: ("strict", [n.id]) for i, n in enumerate(host.nodes) if not n.memoryless}
    assert memnodes(dom) == bound and sorted(bound) == [0, 2]
    # libvirt gives a cell without a memnode the domain-wide nodeset: none here, so
    # the memoryless nodes' memory stays unbound as in the QEMU boot
    assert dom.find("numatune/memory") is None


def test_fully_bound_host_gets_the_domain_wide_strict_nodeset(fixture_root):
    host = host_of(fixture_root, "xeon-8160-2s")
    dom = ET.fromstring(lv.to_xml(vm.parse_topology("host", 2048, host)))
    whole = dom.find("numatune/memory")
    assert whole.get("mode") == "strict" and whole.get("nodeset") == "0-1"
    assert memnodes(dom) == {0: ("strict", [0]), 1: ("strict", [1])}


def test_no_pin_drops_cputune_and_numatune(fixture_root):
    host = host_of(fixture_root, "xeon-8160-2s")
    dom = ET.fromstring(lv.to_xml(vm.parse_topology("host", 2048, host, pin=False)))
    assert dom.find("cputune") is None and dom.find("numatune") is None
    assert [len(c[0]) for c in cells(dom)] == [len(n.cpus) for n in host.nodes]


def test_cpuless_node_is_a_memory_only_cell(tmp_path):
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"nodes": [{"cpus": [0, 1], "distances": [10, 20]},
                                          {"cpus": [], "distances": [20, 10]}]}))
    dom = ET.fromstring(lv.to_xml(vm.parse_topology(str(spec), 1024)))
    assert dom.findall("cpu/numa/cell")[1].get("cpus") is None
    assert cells(dom)[1] == ([], 512, {0: 20, 1: 10})


@pytest.mark.parametrize("name", ["", "a/b", "two\nlines", " padded", "tab\there"])
def test_bad_domain_names(name):
    with pytest.raises(BadInput, match="--name"):
        lv.to_xml(vm.parse_topology("1x1", 512), name)


def test_name_is_escaped_not_spliced():
    dom = ET.fromstring(lv.to_xml(vm.parse_topology("1x1", 512), "db <1> & 'x'"))
    assert dom.findtext("name") == "db <1> & 'x'"


# --- the same layout as the QEMU command line vm.vng_argv builds --------------------

def qemu_layout(argv):
    """From vng's argv: ([(vCPUs, MiB, host nodes, policy)] per node, {(i, j): d}, vCPUs,
    MiB), the nodes' memory from --numa or, placed, from our -object backends."""
    objects = {}
    for arg in argv:
        if arg.startswith("--qemu-opts=-object "):
            _, *props = arg.split(" ", 1)[1].split(",")
            kv = dict(p.split("=", 1) for p in props)
            objects[kv["id"]] = kv
    nodes, dist = [], {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "--numa":
            head, *props = value.split(",")
            kv = dict(p.split("=", 1) for p in props)
            cpus = parse_cpulist(kv.get("cpus", ""))
            if "memdev" in kv:
                obj = objects[kv["memdev"]]
                nodes.append((cpus, int(obj["size"].rstrip("M")),
                              parse_cpulist(obj.get("host-nodes", "")),
                              obj.get("policy", "default")))
            else:
                nodes.append((cpus, int(head.rstrip("M")), [], "default"))
        elif flag == "--numa-distance":
            pair, d = value.split("=")
            i, j = map(int, pair.split(","))
            dist[(i, j)] = int(d)
    return nodes, dist, int(argv[argv.index("--cpus") + 1]), \
        int(argv[argv.index("--memory") + 1].rstrip("M"))


def xml_layout(dom):
    """The same shape as qemu_layout, as libvirt applies the document: a cell without
    a <memnode> takes <numatune>'s domain-wide <memory>, if there is one."""
    tuned, whole = memnodes(dom), dom.find("numatune/memory")
    default = ("strict", parse_cpulist(whole.get("nodeset"))) if whole is not None else None
    policy = {"strict": "bind"}
    nodes = []
    for i, (vcpus, mem, _) in enumerate(cells(dom)):
        mode, nodeset = tuned.get(i) or default or ("default", [])
        nodes.append((vcpus, mem, nodeset, policy.get(mode, mode)))
    dist = {(i, j): d for i, (*_, row) in enumerate(cells(dom)) for j, d in row.items()
            if i < j}
    return nodes, dist, int(dom.findtext("vcpu")), int(dom.findtext("memory"))


def placed_file(tmp_path):
    spec = tmp_path / "placed.json"
    spec.write_text(json.dumps({"nodes": [
        {"cpus": [0, 1], "host_cpus": [40, 2], "host_node": 0, "distances": [10, 32]},
        {"cpus": [2, 3, 4], "host_cpus": [30, 31, 70], "host_node": 1,
         "distances": [32, 10]}]}))
    return str(spec)


@pytest.mark.parametrize("sysfs,spec,mem,pin", [
    ("xeon-8160-2s", "2x2", 2048, None),
    ("xeon-8160-2s", "2x4", 4096, True),
    ("xeon-8160-2s", "host", 2048, None),
    ("xeon-8160-2s", "file", 3072, None),
    ("tr-2990wx", "host", 4096, None),
    ("tr-2990wx", "host", 4096, False),
])
def test_xml_matches_the_qemu_command_line(fixture_root, tmp_path, sysfs, spec, mem, pin):
    host = host_of(fixture_root, sysfs)
    spec = placed_file(tmp_path) if spec == "file" else spec
    topo = vm.parse_topology(spec, mem, host, pin=pin)
    argv = vm.vng_argv("/k/bzImage", topo, tmp_path, "kvm")
    want = qemu_layout(argv)
    got = xml_layout(ET.fromstring(lv.to_xml(topo)))
    assert got == want
    assert len(got[0]) == len(topo.nodes) and got[3] == mem
    # the vCPU threads QMP pins (kernel/qmp.py) are the <vcpupin>s
    assert pins(ET.fromstring(lv.to_xml(topo))) == \
        (layout.vcpu_hosts(topo) if topo.pinned else {})


# --- the command ---------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_prints_the_document_and_json_carries_the_placement(fixture_root):
    root = str(fixture_root / "tr-2990wx")
    topo = vm.parse_topology("host", 4096, host_of(fixture_root, "tr-2990wx"))
    text = invoke("--root", root, "vm", "libvirt-xml", "--topology", "host", "--mem", "4G",
                  "--name", "db1")
    assert text.exit_code == 0, text.output
    assert text.output == lv.to_xml(topo, "db1")
    res = invoke("--root", root, "vm", "libvirt-xml", "--topology", "host", "--mem", "4G",
                 "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc == {"xml": lv.to_xml(topo), "placement": layout.record(topo)}


def test_cli_unplaced_grid_has_no_placement(fixture_root):
    res = invoke("--root", str(fixture_root / "qemu-2node"), "vm", "libvirt-xml",
                 "--topology", "2x2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["placement"] is None


@pytest.mark.parametrize("args,code,needle", [
    (["--topology", "2y2"], 2, "expected NxM"),
    (["--topology", "3x1"], 2, "does not split evenly"),
    (["--topology", "4x4", "--pin"], 2, "cannot be pinned"),
    (["--topology", "1x1", "--name", "a/b"], 2, "--name"),
    (["--topology", "1x1", "--mem", "lots"], 2, "--mem"),
])
def test_cli_bad_input_is_one_line(fixture_root, args, code, needle):
    res = invoke("--root", str(fixture_root / "qemu-2node"), "vm", "libvirt-xml", *args)
    assert res.exit_code == code
    assert needle in res.output and res.output.count("\n") == 1


def test_cli_malformed_host_topology_is_bad_data(tmp_path):
    node = tmp_path / "sys/devices/system/node/node0"
    node.mkdir(parents=True)
    (node / "cpulist").write_text("garbage\n")
    res = invoke("--root", str(tmp_path), "vm", "libvirt-xml", "--topology", "host")
    assert res.exit_code == 3 and "cpulist" in res.output


# --- libvirt's own checks: the schema (virt-xml-validate) and its parser -------------

def libvirt_tool(name, package):
    """A libvirt tool; missing: a skip, but a failure under VNUMA_SCHED_REQUIRE_ALL=1."""
    tool = shutil.which(name)
    if tool is None:
        why = f"{name} not installed (Debian package {package})"
        if os.environ.get("VNUMA_SCHED_REQUIRE_ALL") == "1":
            pytest.fail(f"required (VNUMA_SCHED_REQUIRE_ALL=1) but {why}")
        pytest.skip(why)
    return tool


def validate(path):
    # virt-xml-validate is a script around xmllint, which its package does not pull in
    libvirt_tool("xmllint", "libxml2-utils")
    return subprocess.run([libvirt_tool("virt-xml-validate", "libvirt-clients"), str(path),
                           "domain"], capture_output=True, text=True)


def define(path, tmp_path):
    """Define the domain in libvirt's test driver (in-process, no daemon): its XML
    parser's checks (cells, memnodes, modes), then the document as libvirt reads it."""
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path),
               XDG_CACHE_HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    return subprocess.run([libvirt_tool("virsh", "libvirt-clients"), "-q", "-c",
                           "test:///default", f"define {path}; dumpxml {vm.GUEST_NAME}"],
                          capture_output=True, text=True, env=env)


def sample_topologies(fixture_root):
    live = read_topology(SysRoot("/"))
    return {"grid 2x2": vm.parse_topology("2x2", 2048),
            "host (this machine)": vm.parse_topology("host", 1024 * len(live.nodes), live),
            "host (tr-2990wx)": vm.parse_topology("host", 4096,
                                                  host_of(fixture_root, "tr-2990wx")),
            "host (xeon-8160-2s)": vm.parse_topology("host", 2048,
                                                     host_of(fixture_root, "xeon-8160-2s"))}


def test_libvirt_accepts_the_documents(fixture_root, tmp_path):
    for what, topo in sample_topologies(fixture_root).items():
        path = tmp_path / "domain.xml"
        path.write_text(lv.to_xml(topo))
        res = validate(path)
        assert res.returncode == 0, f"{what}: {res.stdout}{res.stderr}"
        res = define(path, tmp_path)
        assert res.returncode == 0, f"{what}: {res.stdout}{res.stderr}"
        # what libvirt read back is the layout we wrote
        read, ours = ET.fromstring(res.stdout[res.stdout.index("<domain"):]), \
            ET.fromstring(lv.to_xml(topo))
        assert pins(read) == pins(ours) == layout.vcpu_hosts(topo), what
        assert memnodes(read) == memnodes(ours), what
        assert cells(read) == cells(ours) and len(cells(ours)) == len(topo.nodes), what


def test_libvirt_checks_are_not_vacuous(fixture_root, tmp_path):
    """The same tools refuse a document one attribute away from ours."""
    text = lv.to_xml(vm.parse_topology("host", 2048, host_of(fixture_root, "xeon-8160-2s")))
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace('mode="strict"', 'mode="bind"'))
    assert validate(bad).returncode != 0
    wrong_cell = tmp_path / "cell.xml"
    wrong_cell.write_text(text.replace('cellid="0"', 'cellid="9"'))
    assert validate(wrong_cell).returncode == 0     # the schema cannot see it ...
    assert define(wrong_cell, tmp_path).returncode != 0   # ... libvirt's parser does


# --- resizable memory: the virtio-mem devices 'vm run --mem-hotplug' adds ------------

def vmem_xml(dom):
    """[(guest node, host nodes, size MiB, block MiB, requested MiB)] per virtio-mem."""
    per_mib = {"MiB": 1, "KiB": 1024, "B": 1 << 20, "bytes": 1 << 20}

    def mib(el):
        return int(el.text) // per_mib[el.get("unit", "KiB")]
    out = []
    for mem in dom.findall("devices/memory[@model='virtio-mem']"):
        t = mem.find("target")
        nodemask = mem.findtext("source/nodemask")
        out.append((int(t.findtext("node")), parse_cpulist(nodemask or ""), mib(t.find("size")),
                    mib(t.find("block")), mib(t.find("requested"))))
    return out


def vmem_qemu(argv):
    """The same from vng's argv: virtio-mem-pci devices and their backends."""
    objects, out = {}, []
    for arg in argv:
        if arg.startswith("--qemu-opts=-object "):
            _, *props = arg.split(" ", 1)[1].split(",")
            kv = dict(p.split("=", 1) for p in props)
            objects[kv["id"]] = kv
    for arg in argv:
        if arg.startswith("--qemu-opts=-device virtio-mem-pci,"):
            kv = dict(p.split("=", 1) for p in arg.split(" ", 1)[1].split(",")[1:])
            backend = objects[kv["memdev"]]
            out.append((int(kv["node"]), parse_cpulist(backend.get("host-nodes", "")),
                        int(backend["size"].rstrip("M")), layout.VMEM_BLOCK_MB,
                        int(kv["requested-size"])))
    return out


def test_mem_hotplug_matches_the_qemu_devices_and_libvirt_accepts_it(fixture_root, tmp_path):
    host = host_of(fixture_root, "xeon-8160-2s")
    topo = vm.parse_topology("host", 2048, host)
    dom = ET.fromstring(lv.to_xml(topo, hotplug_mb=512))
    assert dom.find("maxMemory").get("unit") == "MiB"
    assert int(dom.findtext("maxMemory")) == 2048 + 512 * len(topo.nodes)
    argv = vm.vng_argv("/k/bzImage", topo, tmp_path, "kvm", hotplug_mb=512)
    assert vmem_xml(dom) == vmem_qemu(argv) == [
        (i, [n.host_node], 512, 2, 0) for i, n in enumerate(topo.nodes)]
    path = tmp_path / "vmem.xml"
    path.write_text(lv.to_xml(topo, hotplug_mb=512))
    res = validate(path)
    assert res.returncode == 0, res.stdout + res.stderr
    res = define(path, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    read = ET.fromstring(res.stdout[res.stdout.index("<domain"):])
    assert vmem_xml(read) == vmem_xml(dom)      # what libvirt read back


@pytest.mark.parametrize("args,needle", [
    (["--topology", "2x1", "--mem-hotplug", "256M"], "only a placed (Full-vNUMA) guest"),
    (["--topology", "host", "--mem-hotplug", "3M"], "not a multiple of virtio-mem's 2 MiB"),
    (["--topology", "host", "--mem-hotplug", "lots"], "--mem-hotplug"),
])
def test_cli_mem_hotplug_bad_input_is_one_line(fixture_root, args, needle):
    res = invoke("--root", str(fixture_root / "qemu-2node"), "vm", "libvirt-xml", *args)
    assert res.exit_code == 2 and needle in res.output and res.output.count("\n") == 1
