"""doctor's Full-vNUMA checks on fixture trees: layout, pinning evidence, memory, the answer."""

import shutil

import pytest
from helpers import DATA, checks_for, fake_cpuid, write

from vnuma_sched.system import facts
from vnuma_sched.system.doctor_vnuma import TickSample, sample_cpu_ticks, stolen_cpus
from vnuma_sched.system.sysroot import SysRoot

NODE = "/sys/devices/system/node"
STEAL, REALTIME = 1 << 5, 1
NO_HOST_VIEW = "a guest cannot see host pinning directly"


def snapshots(t0, t1, seconds=0.2):
    """A steal sample of two recorded /proc/stat snapshots (tests/data/procstat)."""
    def read(name):
        return facts.parse_cpu_ticks((DATA / "procstat" / name).read_text())
    return lambda: TickSample(read(t0), read(t1), seconds)


IDLE = snapshots("kvm-2cpu-t0", "kvm-2cpu-t1")
STOLEN = snapshots("kvm-2cpu-t0", "kvm-2cpu-t1-stolen")


@pytest.fixture
def copy(tmp_path, fixture_root):
    """A writable copy of a fixture tree."""
    def make(name):
        root = tmp_path / name
        shutil.copytree(fixture_root / name, root)
        return root
    return make


def vnuma_rows(root, **kw):
    c = checks_for(root, **kw)
    return {n: c[n] for n in ("vnuma", "vnuma:pinned", "vnuma:memory", "vnuma:full")}


def test_stolen_cpus_between_snapshots():
    assert stolen_cpus(IDLE())[0] == {}
    stolen, shares = stolen_cpus(STOLEN())
    assert stolen == {1: 0.5} and shares[0] == 0.0


def test_one_tick_of_rounding_is_near_zero():
    sample = TickSample({0: (10, 1000)}, {0: (11, 1020)}, 0.2)   # 1 of 20 ticks
    assert stolen_cpus(sample)[0] == {}
    sample = TickSample({0: (10, 1000)}, {0: (12, 1020)}, 0.2)   # 2 of 20 ticks
    assert stolen_cpus(sample)[0] == {0: 0.1}


def test_recorded_tree_is_sampled_since_boot(fixture_root):
    def no_sleep(seconds):
        raise AssertionError("a recorded tree does not change: nothing to wait for")
    sample = sample_cpu_ticks(SysRoot(fixture_root / "kvm-guest-1node"), 0.2, no_sleep)
    assert sample.seconds is None and sample.before == {} and sorted(sample.after) == [0, 1]


# --- vnuma: more than one node, with distances

def test_layout_ok_with_a_slit(fixture_root):
    row = vnuma_rows(fixture_root / "xeon-8160-2s")["vnuma"]
    assert row.status == "ok" and row.detail == "2 nodes, remote distances 21"


def test_layout_one_node_warns(fixture_root):
    row = vnuma_rows(fixture_root / "kvm-guest-1node")["vnuma"]
    assert row.status == "warn" and row.detail.startswith("1 node: the guest sees no NUMA")


def test_layout_cpus_on_one_node_fails(copy):
    root = copy("qemu-2node")
    write(root, f"{NODE}/node1/cpulist", "\n")
    write(root, f"{NODE}/node0/cpulist", "0-3\n")
    row = vnuma_rows(root)["vnuma"]
    assert row.status == "fail" and "CPUs on node0 only" in row.detail


def test_layout_without_config_numa_is_unsupported(copy):
    root = copy("kvm-guest-1node")
    shutil.rmtree(root / NODE.lstrip("/"))
    rows = vnuma_rows(root)
    assert rows["vnuma"].status == "unsupported" and "CONFIG_NUMA" in rows["vnuma"].detail
    assert rows["vnuma:memory"].status == "unsupported"
    assert rows["vnuma:full"].status == "unsupported"


# --- vnuma:pinned: what a guest can see of 1:1 pinning

def test_pinned_ok_on_a_dedicated_full_vnuma_guest(fixture_root):
    rows = vnuma_rows(fixture_root / "kvm-2node-dedicated", steal_sample=IDLE)
    pinned = rows["vnuma:pinned"]
    assert pinned.status == "ok" and pinned.detail.startswith("consistent with 1:1 pinning")
    assert "KVM_HINTS_REALTIME exposed (dmesg" in pinned.detail
    assert "steal near zero on 2 CPUs over 0.2 s" in pinned.detail
    assert "one package per node (2 nodes)" in pinned.detail
    assert pinned.detail.endswith(NO_HOST_VIEW)
    assert rows["vnuma:full"].status == "ok"
    assert "halt polling show on the host only" in rows["vnuma:full"].detail


def test_pinned_from_cpuid(fixture_root):
    rows = vnuma_rows(fixture_root / "kvm-2node-dedicated", steal_sample=IDLE,
                      cpuid=fake_cpuid(STEAL, edx_hints=REALTIME))
    assert rows["vnuma:pinned"].status == "ok"
    assert "KVM_HINTS_REALTIME exposed (CPUID 0x40000001)" in rows["vnuma:pinned"].detail


def test_steal_fails_pinning(fixture_root):
    rows = vnuma_rows(fixture_root / "kvm-2node-dedicated", steal_sample=STOLEN)
    pinned = rows["vnuma:pinned"]
    assert pinned.status == "fail" and pinned.detail.startswith("not dedicated")
    assert "steal on CPU 1 over 0.2 s (max 50.0%" in pinned.detail
    assert pinned.detail.endswith(NO_HOST_VIEW)
    assert rows["vnuma:full"].status == "fail"
    assert rows["vnuma:full"].detail == "not Full vNUMA: vnuma:pinned failed"


def test_no_realtime_hint_is_unproven(fixture_root):
    rows = vnuma_rows(fixture_root / "kvm-2node-dedicated", steal_sample=IDLE,
                      cpuid=fake_cpuid(STEAL))
    pinned = rows["vnuma:pinned"]
    assert pinned.status == "warn" and pinned.detail.startswith("unproven")
    assert "KVM_HINTS_REALTIME not exposed" in pinned.detail
    assert rows["vnuma:full"].status == "warn"


def test_hint_unknown_on_a_recorded_kvm_guest(fixture_root):
    pinned = vnuma_rows(fixture_root / "kvm-guest-1node")["vnuma:pinned"]
    assert pinned.status == "warn" and "KVM_HINTS_REALTIME: unknown" in pinned.detail
    assert "since boot" in pinned.detail


def test_steal_says_nothing_without_kvm_steal_time(fixture_root):
    pinned = vnuma_rows(fixture_root / "kvm-2node-dedicated", steal_sample=STOLEN,
                        cpuid=fake_cpuid(0, edx_hints=REALTIME))["vnuma:pinned"]
    assert pinned.status == "warn" and "no KVM steal time" in pinned.detail


def test_sockets_that_do_not_follow_nodes_warn(copy):
    root = copy("qemu-2node")
    for cpu in range(4):   # QEMU -smp 4,sockets=4: one socket per vCPU
        write(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id",
              f"{cpu}\n")
    pinned = vnuma_rows(root, steal_sample=IDLE,
                        cpuid=fake_cpuid(STEAL, edx_hints=REALTIME))["vnuma:pinned"]
    assert pinned.status == "warn" and "node0 spans packages 0,1" in pinned.detail


def test_nodes_inside_one_package_follow(fixture_root):
    pinned = vnuma_rows(fixture_root / "qemu-2node", steal_sample=IDLE,
                        cpuid=fake_cpuid(STEAL, edx_hints=REALTIME))["vnuma:pinned"]
    assert pinned.status == "ok"
    assert "every node inside one package (2 nodes, 1 package)" in pinned.detail


def test_unreadable_packages_are_not_evidence(copy):
    root = copy("kvm-2node-dedicated")
    shutil.rmtree(root / "sys/devices/system/cpu/cpu1/topology")
    pinned = vnuma_rows(root, steal_sample=IDLE)["vnuma:pinned"]
    assert pinned.status == "warn" and "CPU packages unreadable" in pinned.detail


@pytest.mark.parametrize("cpuid,why", [
    (None, "unknown: KVM not identified"),
    (fake_cpuid(0, hypervisor=False), "unknown: no KVM PV leaf (TCG or another hypervisor)"),
], ids=["cpuid-unreadable", "cpuid-without-kvm-leaf"])
def test_tcg_guest_pinning_is_unknown(fixture_root, cpuid, why):
    """No KVM PV leaf (TCG): no hint and no steal time to read, so "unknown", not a guess."""
    pinned = vnuma_rows(fixture_root / "qemu-2node", cpuid=cpuid)["vnuma:pinned"]
    assert pinned.status == "warn" and pinned.detail.startswith(why)
    assert pinned.detail.endswith(NO_HOST_VIEW)


def test_bare_metal_is_not_a_guest(fixture_root):
    rows = vnuma_rows(fixture_root / "xeon-8160-2s")
    assert rows["vnuma:pinned"].status == "unsupported"
    assert rows["vnuma:pinned"].detail.startswith("not a guest")
    assert rows["vnuma:full"].status == "unsupported"


# --- vnuma:memory: memory on every node

def test_memory_on_every_node(fixture_root):
    row = vnuma_rows(fixture_root / "qemu-2node")["vnuma:memory"]
    assert row.status == "ok"
    assert row.detail.startswith("every node has memory (2 nodes, least 960.0 MiB on node0)")
    assert "host nodes shows on the host only" in row.detail


def test_memoryless_nodes_fail(fixture_root):
    row = vnuma_rows(fixture_root / "tr-2990wx")["vnuma:memory"]
    assert row.status == "fail"
    assert row.detail.startswith("memoryless node1 (CPUs 16-23,48-55), node3 (CPUs 24-31,56-63)")
    assert row.data["memoryless"] == [1, 3]


def test_memory_of_one_node_warns(fixture_root):
    row = vnuma_rows(fixture_root / "kvm-guest-1node")["vnuma:memory"]
    assert row.status == "warn" and row.detail.startswith("1 node (")


def test_memoryless_guest_node_fails_the_answer(copy):
    root = copy("kvm-2node-dedicated")
    write(root, f"{NODE}/node1/meminfo", "Node 1 MemTotal:       0 kB\n")
    rows = vnuma_rows(root, steal_sample=IDLE)
    assert rows["vnuma:memory"].status == "fail" and "node1 (CPUs 1)" in rows["vnuma:memory"].detail
    assert rows["vnuma:full"].detail == "not Full vNUMA: vnuma:memory failed"


def test_a_broken_part_leaves_the_answer_unshown(copy):
    root = copy("kvm-2node-dedicated")
    write(root, f"{NODE}/node1/meminfo", "garbage\n")
    rows = vnuma_rows(root, steal_sample=IDLE)
    assert rows["vnuma:memory"].status == "warn" and "could not run" in rows["vnuma:memory"].detail
    assert rows["vnuma:full"].status == "warn"
