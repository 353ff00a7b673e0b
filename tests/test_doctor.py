import shutil

import pytest
from helpers import checks_for, fake_cpuid, write

from vnuma_sched.system import cpuid as cpuid_mod
from vnuma_sched.system.doctor import DoctorEnv, check_bcc, verdict
from vnuma_sched.system.sysroot import SysRoot


def test_decode_dev_machine_bits():
    # EAX seen on the development machine's CPUID 0x40000001
    f = cpuid_mod.decode_features(0x1007EFB, 0)
    assert f == {"steal_time": True, "pv_unhalt": True, "pv_tlb_flush": True,
                 "pv_send_ipi": True, "poll_control": True, "sched_yield": True,
                 "realtime_hint": False}


@pytest.mark.parametrize("base", [0x40000000, 0x40000100])
def test_kvm_base_found_behind_hyperv_leaves(base):
    assert cpuid_mod.find_kvm_base(fake_cpuid(0, base=base)) == base


def test_no_hypervisor_bit_means_no_kvm():
    assert cpuid_mod.find_kvm_base(fake_cpuid(0xFFFF, hypervisor=False)) is None


def test_cpuid_evidence_wins(fixture_root):
    steal_only = 1 << 5
    c = checks_for(fixture_root / "qemu-2node", cpuid=fake_cpuid(steal_only, edx_hints=1))
    assert c["hypervisor"].status == "ok"
    assert c["pv:steal_time"].status == "ok" and "CPUID 0x40000001" in c["pv:steal_time"].detail
    assert c["pv:pv_unhalt"].status == "missing"
    assert c["pv:realtime_hint"].status == "ok"


def test_dmesg_evidence_when_cpuid_unreadable(fixture_root):
    c = checks_for(fixture_root / "kvm-guest-1node")
    assert c["hypervisor"].status == "ok" and "dmesg" in c["hypervisor"].detail
    assert c["pv:pv_unhalt"].status == "ok" and "PV spinlocks enabled" in c["pv:pv_unhalt"].detail
    assert c["pv:pv_tlb_flush"].status == "ok"
    assert c["pv:pv_send_ipi"].status == "ok"
    assert c["pv:sched_yield"].status == "ok"
    assert c["pv:realtime_hint"].status == "warn"  # nothing in dmesg proves either way
    assert c["pv_spinlocks"].status == "ok"
    assert c["cpuidle"].detail.startswith("driver haltpoll")
    assert c["btf"].status == "ok"
    assert c["kprobes"].status == "missing"
    assert c["bcc"].status == "n/a"
    assert c["vnuma_patches"].status == "missing"


def test_tcg_guest_is_not_kvm(fixture_root):
    c = checks_for(fixture_root / "qemu-2node")
    assert c["hypervisor"].status == "warn"  # cpuinfo says guest, nothing says KVM
    assert c["vnuma"].status == "ok" and "2 nodes" in c["vnuma"].detail
    assert c["cpuidle"].status == "missing"


def test_bare_metal_and_memoryless(fixture_root):
    c = checks_for(fixture_root / "tr-2990wx")
    assert c["hypervisor"].status == "n/a"
    assert all(c[f"pv:{n}"].status == "n/a" for n in cpuid_mod.KVM_FEATURES)
    v = verdict(list(c.values()))
    assert v[0]["exposure"].startswith("no: not a KVM guest")
    assert v[1]["exposure"].startswith("yes")


@pytest.fixture
def tree(tmp_path, fixture_root):
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "kvm-guest-1node", root)
    return root


@pytest.mark.parametrize("mode,status,needle", [
    ("[none] integrity confidentiality", "ok", "none"),
    ("none [integrity] confidentiality", "warn", "debugfs writes denied"),
    ("none integrity [confidentiality]", "warn", "probes cannot run"),
])
def test_lockdown_modes(tree, mode, status, needle):
    write(tree, "/sys/kernel/security/lockdown", mode + "\n")
    c = checks_for(tree)
    assert c["lockdown"].status == status and needle in c["lockdown"].detail


def test_lockdown_unknown_without_securityfs(tree):
    """This kind of machine: lockdown in integrity mode, securityfs not mounted, so there is
    no lockdown file to read; "none" would be a guess that hides it."""
    mounts = (tree / "proc/mounts").read_text()
    assert "securityfs" not in mounts and not (tree / "sys/kernel/security/lockdown").exists()
    c = checks_for(tree)
    assert c["lockdown"].status == "warn" and "securityfs not mounted" in c["lockdown"].detail
    write(tree, "/proc/mounts", mounts + "securityfs /sys/kernel/security securityfs rw 0 0\n")
    c = checks_for(tree)
    assert c["lockdown"].status == "ok" and c["lockdown"].detail.startswith("none")


HINT = "/sys/module/kvm_guest/parameters/idle_halt_hint"
FEATURES = "/sys/kernel/debug/sched/features"


def test_patched_kernel_gates(tree):
    write(tree, HINT, "auto\n")
    write(tree, FEATURES, "WA_IDLE NO_NUMA_WAKE_PREV\n")
    c = checks_for(tree)
    assert c["vnuma_patches"].status == "ok" and "not checked" not in c["vnuma_patches"].detail
    v = verdict(list(c.values()))
    assert "kvm_guest.idle_halt_hint=auto|on (this kernel is patched)" in v[0]["mitigations"]
    assert "sched feature NUMA_WAKE_PREV (wake-ups) (this kernel is patched)" \
        in v[1]["mitigations"]


def test_patched_kernel_seen_by_its_parameter_when_debugfs_is_unreadable(tree):
    write(tree, HINT, "auto\n")
    c = checks_for(tree)
    patches = c["vnuma_patches"]
    assert patches.status == "ok" and patches.data["gates"] == ["kvm_guest.idle_halt_hint"]
    assert ("feature.NUMA_WAKE_PREV not checked: "
            "/sys/kernel/debug/sched/features not readable") in patches.detail
    v = verdict(list(c.values()))
    assert v[1]["mitigations"][0].endswith(
        "(this kernel is patched; its sched features cannot be read here)")


def test_patched_kernel_seen_by_its_features(tree):
    write(tree, FEATURES, "WA_IDLE NO_NUMA_WAKE_PREV\n")
    c = checks_for(tree)           # no kvm_guest parameter (say CONFIG_KVM_GUEST=n)
    assert c["vnuma_patches"].status == "warn"
    assert c["vnuma_patches"].detail == "partly patched, missing: kvm_guest.idle_halt_hint"
    v = verdict(list(c.values()))
    assert v[0]["mitigations"][0] == ("guest patch: kvm_guest.idle_halt_hint=auto|on "
                                      "(vnuma-sched patches)")
    assert v[1]["mitigations"][0].endswith("(this kernel is patched)")


def test_unpatched_kernel_with_readable_features(tree):
    write(tree, FEATURES, "WA_IDLE NO_NEXT_BUDDY\n")
    c = checks_for(tree)
    assert c["vnuma_patches"].status == "missing"
    assert "not checked" not in c["vnuma_patches"].detail
    v = verdict(list(c.values()))
    assert v[1]["mitigations"][0].startswith("guest patch: sched feature NUMA_WAKE_PREV")


def test_kprobes_from_tracefs_and_mounts(tree):
    write(tree, "/proc/mounts", "tracefs /sys/kernel/tracing tracefs rw 0 0\n"
          "debugfs /sys/kernel/debug debugfs rw 0 0\n")
    write(tree, "/sys/kernel/tracing/kprobe_events", "")
    c = checks_for(tree)
    assert c["kprobes"].status == "ok"
    assert c["tracefs"].status == "ok" and c["debugfs"].status == "ok"


def test_one_broken_check_does_not_stop_the_others(tree):
    (tree / "proc/stat").write_text("cpu  1 2\n")
    (tree / "sys/devices/system/node/node0/cpulist").write_text("zz\n")
    c = checks_for(tree)
    assert c["vnuma"].status == "warn" and "could not run" in c["vnuma"].detail
    assert c["btf"].status == "ok"


def test_uniform_distance_20_is_flagged(tmp_path, fixture_root):
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "qemu-2node", root)
    for i, row in enumerate(("10 20", "20 10")):
        (root / f"sys/devices/system/node/node{i}/distance").write_text(row + "\n")
    c = checks_for(root)
    assert c["vnuma"].status == "warn" and "no SLIT" in c["vnuma"].detail


def test_not_root_bcc_warns():
    env = DoctorEnv(sysroot=SysRoot("/"), euid=1000, bcc_check=lambda: ("ok", "x"))

    assert check_bcc(env).status == "warn"


def test_unreadable_cpulist_makes_problem_2_unknown(tmp_path, fixture_root):
    """A 2-node guest whose node1 cpulist cannot be read: doctor cannot tell, it must
    not say that problem 2 cannot happen."""
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "qemu-2node", root)
    cpulist = root / "sys/devices/system/node/node1/cpulist"
    cpulist.unlink()
    cpulist.mkdir()   # read() fails (EISDIR) even for root
    c = checks_for(root)
    assert c["vnuma"].status == "warn" and "could not run" in c["vnuma"].detail
    p2 = verdict(list(c.values()))[1]
    assert p2["exposure"].startswith("unknown: the NUMA layout could not be read")
    assert "node1/cpulist" in p2["exposure"]
