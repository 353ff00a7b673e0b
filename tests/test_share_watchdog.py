"""The clocksource watchdog as a waker of parked vCPUs (share/kernel.py tsc_watchdog):
it runs while the kernel verifies the TSC, and 'share status' names it among what
still reaches parked vCPUs; a boot parameter or a TSC the kernel trusts removes it."""

import pytest
from share_trees import _w, build

from vnuma_sched.share import kernel as KS
from vnuma_sched.share import status as ST
from vnuma_sched.system.sysroot import SysRoot

TRUSTED = "fpu tsc constant_tsc nonstop_tsc tsc_adjust hypervisor"


def guest(tmp_path, flags="fpu tsc hypervisor", cmdline="console=ttyS0", release="6.12.117",
          clocksources="tsc acpi_pm", packages=(0, 0, 1, 1)):
    build(tmp_path)
    _w(tmp_path, "/proc/cpuinfo", f"processor\t: 0\nflags\t\t: {flags}\n")
    _w(tmp_path, "/proc/cmdline", cmdline + "\n")
    _w(tmp_path, "/proc/sys/kernel/osrelease", release + "\n")
    _w(tmp_path, KS.CLOCKSOURCES, clocksources + " \n")
    for cpu, pkg in enumerate(packages):
        _w(tmp_path, f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id",
           f"{pkg}\n")
    return SysRoot(tmp_path)


def test_an_unverified_tsc_is_named(tmp_path):
    assert KS.tsc_watchdog(guest(tmp_path)) == \
        "the TSC lacks constant_tsc, nonstop_tsc, tsc_adjust"


@pytest.mark.parametrize("kw", [
    {"cmdline": "console=ttyS0 tsc=reliable"},
    {"cmdline": "tsc=nowatchdog quiet"},
    {"flags": "fpu tsc tsc_reliable"},
    {"clocksources": "kvm-clock acpi_pm"},          # no TSC registered (or unstable)
    {"flags": TRUSTED},                             # 2 packages on 6.12
    {"flags": TRUSTED, "release": "6.1.192"},       # 2 nodes on 6.1
])
def test_no_watchdog(tmp_path, kw):
    assert KS.tsc_watchdog(guest(tmp_path, **kw)) is None


def test_a_trusted_tsc_on_a_large_guest_is_still_verified(tmp_path):
    sysroot = guest(tmp_path, flags=TRUSTED, packages=(0, 1, 2, 3))
    assert KS.tsc_watchdog(sysroot) is None         # 4 packages: 6.12 trusts it
    # a fifth package: 6.12 verifies the TSC again
    _w(tmp_path, "/sys/devices/system/cpu/online", "0-4\n")
    _w(tmp_path, "/sys/devices/system/cpu/cpu4/topology/physical_package_id", "4\n")
    assert KS.tsc_watchdog(sysroot) == "5 CPU packages (the kernel trusts the TSC up to 4)"


def test_share_status_names_it_while_vcpus_are_parked(tmp_path):
    sysroot = guest(tmp_path)
    _w(tmp_path, "/sys/fs/cgroup/vnuma-parked/cpuset.cpus.partition", "isolated\n")
    _w(tmp_path, "/sys/fs/cgroup/vnuma-parked/cpuset.cpus.effective", "1,3\n")
    st = ST.read_status(sysroot, sysroot)
    (timer,) = [m for m in st.not_moved if m["kind"] == "timer"]
    assert timer["name"] == "clocksource_watchdog" and timer["cpus"] == "0-3"
    assert "tsc=reliable" in timer["why"] and "constant_tsc" in timer["why"]


def test_6_1_verifies_a_trusted_tsc_beyond_two_nodes(tmp_path):
    sysroot = guest(tmp_path, flags=TRUSTED, release="6.1.192")
    _w(tmp_path, "/sys/devices/system/node/node2/cpulist", "\n")
    for node, row in enumerate(("10 21 21", "21 10 21", "21 21 10")):
        _w(tmp_path, f"/sys/devices/system/node/node{node}/distance", row + "\n")
    _w(tmp_path, "/sys/devices/system/node/node2/meminfo", "Node 2 MemTotal: 0 kB\n")
    assert KS.tsc_watchdog(sysroot) == "3 NUMA nodes (this kernel trusts the TSC up to 2)"
