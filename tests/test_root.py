"""root tier: doctor on the live machine, checked against independent reads."""

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import VNUMA

from vnuma_sched.system import cpuid
from vnuma_sched.system.doctor import DoctorEnv, check_steal, run_checks
from vnuma_sched.system.sysroot import SysRoot

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def live_env(tracefs):
    root = SysRoot("/")
    return DoctorEnv(sysroot=root, euid=os.geteuid(), cpuid=cpuid.device_reader(root))


@pytest.fixture(scope="module")
def live(live_env):
    return {c.name: c for c in run_checks(live_env)}


def raw_cpuid(leaf):
    fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY)
    try:
        return struct.unpack("<4I", os.pread(fd, 16, leaf))
    finally:
        os.close(fd)


def kernel_log():
    return "\n".join(SysRoot("/").kernel_log())


def proc_stat_steal():
    """Steal ticks of all CPUs since boot: the 8th value of /proc/stat's "cpu" line."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    assert fields[0] == "cpu", fields
    return int(fields[8])


def test_hypervisor_and_pv_bits_match_raw_cpuid(live):
    if not Path("/dev/cpu/0/cpuid").exists():
        pytest.fail("this tier expects /dev/cpu/0/cpuid (CONFIG_X86_CPUID) on the test machine")
    _, b, c, d = raw_cpuid(0x40000000)
    is_kvm = struct.pack("<3I", b, c, d) == b"KVMKVMKVM\0\0\0"
    assert (live["hypervisor"].status == "ok") == is_kvm
    if is_kvm:
        eax, _, _, edx = raw_cpuid(0x40000001)
        assert live["pv:steal_time"].data["exposed"] == bool(eax & (1 << 5))
        assert live["pv:pv_unhalt"].data["exposed"] == bool(eax & (1 << 7))
        assert live["pv:realtime_hint"].data["exposed"] == bool(edx & 1)
        assert "CPUID" in live["pv:steal_time"].detail


def test_pv_spinlocks_match_dmesg(live):
    log = kernel_log()
    if "PV spinlocks enabled" in log:
        assert live["pv_spinlocks"].status == "ok"
    elif "PV spinlocks disabled" in log:
        assert live["pv_spinlocks"].status == "missing"
    else:
        assert live["pv_spinlocks"].status == "warn"


def test_cpuidle_btf_kprobes_match_the_system(live):
    driver = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    if driver.exists() and driver.read_text().strip() != "none":
        assert live["cpuidle"].data["driver"] == driver.read_text().strip()
    assert (live["btf"].status == "ok") == Path("/sys/kernel/btf/vmlinux").exists()
    has_kprobes = Path("/sys/kernel/tracing/kprobe_events").exists()
    assert (live["kprobes"].status == "ok") == has_kprobes
    assert live["tracefs"].status == "ok" and live["debugfs"].status == "ok"


def test_steal_matches_proc_stat(live_env):
    before = proc_stat_steal()
    check = check_steal(live_env)
    after = proc_stat_steal()
    ticks = check.data["ticks"]
    assert before <= ticks <= after  # steal only grows: the check read it in between
    if before > 0:
        assert check.status == "ok" and f"{ticks} ticks" in check.detail
    if after == 0:
        assert check.status == "warn" and ticks == 0


def test_topology_matches_sysfs(live):
    nodes = [p for p in Path("/sys/devices/system/node").glob("node*")
             if re.fullmatch(r"node\d+", p.name)]
    assert live["vnuma"].data["nodes"] == max(1, len(nodes))


def test_kmsg_reader_returns_messages():
    lines = SysRoot("/").kernel_log()
    assert lines and not any(re.match(r"^\d+,\d+,\d+", ln) for ln in lines[:20])


def test_doctor_cli_says_what_a_guest_can_tell_of_full_vnuma():
    """`vnuma-sched doctor --json` here: the Full-vNUMA rows, each with a valid status and
    a one-line reason, agreeing with the node files and CPUID read independently."""
    res = subprocess.run([VNUMA, "doctor", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    rows = [checks[n] for n in ("vnuma", "vnuma:pinned", "vnuma:memory", "vnuma:full")]
    for row in rows:
        assert row["status"] in {"ok", "warn", "fail", "unsupported"}, row
        assert row["detail"].strip() and "\n" not in row["detail"], row
    nodes = [p for p in Path("/sys/devices/system/node").glob("node*")
             if re.fullmatch(r"node\d+", p.name)]
    mem = [int(re.search(r"MemTotal:\s+(\d+) kB", (p / "meminfo").read_text())[1])
           for p in nodes]
    memory = checks["vnuma:memory"]["status"]
    if len(nodes) == 1:
        assert checks["vnuma"]["status"] == "warn" and memory == "warn"
    elif nodes:
        assert memory == ("fail" if 0 in mem else "ok")
    pinned = checks["vnuma:pinned"]
    assert "a guest cannot see host pinning directly" in pinned["detail"]
    _, b, c, d = raw_cpuid(0x40000000)
    if struct.pack("<3I", b, c, d) == b"KVMKVMKVM\0\0\0":
        eax, _, _, edx = raw_cpuid(0x40000001)
        if not edx & 1:            # no KVM_HINTS_REALTIME: never "consistent with pinning"
            assert pinned["status"] in {"warn", "fail"}
        if eax & (1 << 5):         # steal time: sampled live, over the CLI's default 0.2 s
            assert "over 0.2 s" in pinned["detail"]
    else:
        assert pinned["status"] in {"warn", "unsupported"}
    if any(r["status"] == "fail" for r in rows[:3]):
        assert checks["vnuma:full"]["status"] in {"fail", "unsupported"}
