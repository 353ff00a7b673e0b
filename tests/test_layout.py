"""Full-vNUMA layouts: placement from 'host', topology files and grids; QEMU
arguments; the pinning and backend checks with fake QMP answers (the real QMP
path is tests/test_vm_pin.py)."""

import json

import pytest
from click.testing import CliRunner

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import layout, qmp, vm
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology, read_topology


def host2x2():
    """A 2-node host whose CPUs are interleaved (node 0: 0,2; node 1: 1,3)."""
    return Topology((Node(0, (0, 2), 1 << 20, (10, 21)), Node(1, (1, 3), 1 << 20, (21, 10))))


def write_json(tmp_path, nodes):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"nodes": nodes}))
    return str(p)


def test_host_topology_is_placed_node_by_node():
    t = vm.parse_topology("host", 2048, host2x2())
    assert t.pinned
    assert layout.vcpu_hosts(t) == {0: 0, 1: 2, 2: 1, 3: 3}
    assert [n.host_node for n in t.nodes] == [0, 1]


def test_host_topology_on_the_tr_fixture(fixture_root):
    host = read_topology(SysRoot(fixture_root / "tr-2990wx"))
    t = vm.parse_topology("host", 4096, host)
    hosts = layout.vcpu_hosts(t)
    assert sorted(hosts.values()) == host.cpus            # every host CPU once
    assert all(host.node_of(hosts[v]) == i for i, n in enumerate(t.nodes) for v in n.cpus)


def test_no_pin_drops_the_placement_and_grids_stay_unplaced():
    assert not vm.parse_topology("host", 2048, host2x2(), pin=False).pinned
    assert not vm.parse_topology("2x2", 2048, host2x2()).pinned


def test_pin_places_a_grid_in_host_node_order():
    t = vm.parse_topology("2x2", 2048, host2x2(), pin=True)
    assert layout.vcpu_hosts(t) == {0: 0, 1: 2, 2: 1, 3: 3}
    assert [n.host_node for n in t.nodes] == [0, 1]


def test_pin_refuses_more_vcpus_than_host_cpus():
    with pytest.raises(BadInput, match="8 vCPUs cannot be pinned 1:1 on this host's 4 CPUs"):
        vm.parse_topology("2x4", 2048, host2x2(), pin=True)


def test_a_flat_guest_pinned_on_a_numa_host_keeps_unbound_memory():
    t = vm.parse_topology("1x4", 2048, host2x2(), pin=True)
    assert layout.vcpu_hosts(t) == {0: 0, 1: 2, 2: 1, 3: 3}
    assert t.nodes[0].host_node is None
    assert ",host-nodes" not in layout.backend_object(0, t.nodes[0])


def test_topology_file_names_the_placement(tmp_path):
    spec = write_json(tmp_path, [
        {"cpus": [0], "distances": [10, 21], "host_cpus": [3], "host_node": 1},
        {"cpus": [1], "distances": [21, 10], "host_cpus": [0], "host_node": 0}])
    t = vm.parse_topology(spec, 1024, host2x2())
    assert layout.vcpu_hosts(t) == {0: 3, 1: 0} and [n.host_node for n in t.nodes] == [1, 0]
    assert t.to_dict()["nodes"][0]["host_cpus"] == [3]
    # what to_dict() writes reads back the same
    again = write_json(tmp_path, t.to_dict()["nodes"])
    assert vm.parse_topology(again, 1024, host2x2()) == t


@pytest.mark.parametrize("nodes,msg", [
    ([{"cpus": [0], "distances": [10, 21], "host_cpus": [0], "host_node": 0},
      {"cpus": [1], "distances": [21, 10]}], "for every node or for none"),
    ([{"cpus": [0, 1], "distances": [10], "host_cpus": [0], "host_node": 0}],
     "one host CPU per vCPU"),
    ([{"cpus": [0, 1], "distances": [10], "host_cpus": [0, 0], "host_node": 0}],
     "named twice"),
    ([{"cpus": [0], "distances": [10], "host_cpus": [9], "host_node": 0}],
     "host CPU 9, which this host does not have"),
    ([{"cpus": [0], "distances": [10], "host_cpus": [0], "host_node": 7}],
     "host node 7, which this host does not have"),
    ([{"cpus": [0], "distances": [10], "host_cpus": [0], "host_node": "0"}],
     "host_node must be a node number"),
])
def test_bad_placements_are_one_line_errors(tmp_path, nodes, msg):
    with pytest.raises(BadInput, match=msg):
        vm.parse_topology(write_json(tmp_path, nodes), 1024, host2x2())


def test_memory_is_not_bound_to_a_memoryless_node():
    host = Topology((Node(0, (0,), 1 << 20, (10, 21)), Node(1, (1,), 0, (21, 10))))
    t = vm.parse_topology("host", 2048, host)
    assert [n.host_node for n in t.nodes] == [0, None]
    assert layout.record(t)["memory"][1]["policy"] == "default"


def test_placed_vng_argv_binds_memory_and_starts_stopped(tmp_path):
    t = vm.parse_topology("host", 2048, host2x2())
    argv = vm.vng_argv("/k", t, tmp_path, "tcg")
    numa = [argv[i + 1] for i, a in enumerate(argv) if a == "--numa"]
    assert numa == ["0,memdev=vnode0,cpus=0-1", "0,memdev=vnode1,cpus=2-3"]
    opts = [a.split("=", 1)[1] for a in argv if a.startswith("--qemu-opts=")]
    assert "-object memory-backend-memfd,id=vnode1,size=1024M,share=on,host-nodes=1," \
           "policy=bind" in opts
    assert "-S" in opts and f"-qmp unix:{tmp_path}/qmp.sock,server=on,wait=off" in opts
    assert all(vm.shell_safe(w) for o in opts for w in o.split())  # vng re-splits them
    assert argv[-3:] == ["--", "/bin/sh", str(tmp_path / "run.sh")]
    assert not any(a.startswith("--qemu-opts") for a in
                   vm.vng_argv("/k", vm.parse_topology("2x2", 2048), tmp_path, "tcg"))


CPUS = [{"cpu-index": 0, "thread-id": 100}, {"cpu-index": 1, "thread-id": 101}]


def test_pin_threads_pins_and_reads_back():
    affinity = {}
    done = qmp.pin_threads(CPUS, {0: 5, 1: 7}, affinity.__setitem__, affinity.__getitem__)
    assert affinity == {100: {5}, 101: {7}}
    assert done == [{"vcpu": 0, "thread": 100, "host_cpu": 5},
                    {"vcpu": 1, "thread": 101, "host_cpu": 7}]


def test_pin_threads_refuses_a_mismatch_and_a_failed_pin():
    with pytest.raises(qmp.PinError, match=r"QEMU reports vCPUs \[0, 1\]"):
        qmp.pin_threads(CPUS, {0: 5}, lambda *a: None, lambda t: {5})
    with pytest.raises(qmp.PinError, match="allowed on \\[0, 1\\]"):
        qmp.pin_threads(CPUS, {0: 5, 1: 7}, lambda *a: None, lambda t: {0, 1})

    def eperm(tid, cpus):
        raise PermissionError(1, "Operation not permitted")
    with pytest.raises(qmp.PinError, match="Operation not permitted"):
        qmp.pin_threads(CPUS, {0: 5, 1: 7}, eperm, lambda t: set())


def test_check_backends():
    t = vm.parse_topology("host", 2048, host2x2())
    devs = [{"id": "vnode0", "host-nodes": [0], "policy": "bind", "size": 1 << 30},
            {"id": "vnode1", "host-nodes": [1], "policy": "bind", "size": 1 << 30}]
    assert [d["size_mb"] for d in qmp.check_backends(devs, t)] == [1024, 1024]
    devs[1] = {"id": "vnode1", "host-nodes": [], "policy": "default", "size": 1 << 30}
    with pytest.raises(qmp.PinError, match="guest node 1's memory is default"):
        qmp.check_backends(devs, t)
    with pytest.raises(qmp.PinError, match="no memory backend vnode1"):
        qmp.check_backends(devs[:1], t)


def test_vm_run_refuses_a_bad_placement_before_booting(tmp_path):
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    spec = write_json(tmp_path, [{"cpus": [0], "distances": [10], "host_cpus": [4096],
                                  "host_node": 0}])
    res = CliRunner().invoke(main, ["vm", "run", "--kernel", str(image), "--topology", spec,
                                    "--accel", "tcg", "--", "true"])
    assert res.exit_code == 2 and "host CPU 4096" in res.output
    assert "Traceback" not in res.output
