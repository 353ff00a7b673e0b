"""system/facts.py: each kernel fact read from a recorded tree through a SysRoot."""

import shutil

import pytest

from vnuma_sched.errors import DataError
from vnuma_sched.probes.session import steal_ms
from vnuma_sched.system import facts
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables.knobs import REGISTRY


@pytest.fixture
def guest(fixture_root):
    return SysRoot(fixture_root / "kvm-guest-1node")


@pytest.fixture
def tree(tmp_path, fixture_root):
    """A writable copy of the qemu-2node recording."""
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "qemu-2node", root)
    return root


def write(root, abspath, text):
    path = root / abspath.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("name,release,version", [
    ("kvm-guest-1node", "6.18.44-fc-v657", (6, 18)),
    ("qemu-2node", "6.12.117", (6, 12)),
    ("xeon-8160-2s", "6.1.0-26-amd64", (6, 1)),
])
def test_release_and_version(fixture_root, name, release, version):
    root = SysRoot(fixture_root / name)
    assert facts.release(root) == release
    assert facts.version(root) == version


def test_release_missing(tmp_path):
    root = SysRoot(tmp_path)
    assert facts.release(root, "") == ""
    with pytest.raises(DataError):
        facts.release(root)


@pytest.mark.parametrize("text,version", [
    ("6.12.117", (6, 12)), ("5.4.0-150-generic", (5, 4)), ("10.0-rc1", (10, 0)),
    ("", None), ("six.twelve", None), ("6", None),
])
def test_parse_version(text, version):
    assert facts.parse_version(text) == version


def test_version_unparseable_names_the_file(tree):
    write(tree, facts.OSRELEASE, "weird\n")
    with pytest.raises(DataError, match="osrelease"):
        facts.version(SysRoot(tree))


def test_lockdown_absent_is_none(guest):
    assert facts.read_lockdown(guest) is None
    assert facts.lockdown(guest) == "none"


@pytest.mark.parametrize("text,mode", [
    ("[none] integrity confidentiality\n", "none"),
    ("none [integrity] confidentiality\n", "integrity"),
    ("none integrity [confidentiality]\n", "confidentiality"),
    ("\n", "unknown"),
])
def test_lockdown_modes(tmp_path, text, mode):
    write(tmp_path, facts.LOCKDOWN, text)
    root = SysRoot(tmp_path)
    assert facts.read_lockdown(root) == mode
    assert facts.lockdown(root) == mode


def test_steal_from_recorded_guest(guest):
    assert facts.steal_ticks(guest) == 37
    assert facts.steal_ticks_per_cpu(guest) == [18, 19]


def test_steal_short_lines_and_gaps(tmp_path):
    write(tmp_path, facts.PROC_STAT, "cpu  1 2 3\ncpu0 1 0 0 0 0 0 0 5\ncpu2 1 0 0 0 0 0 0 7 0\n"
                                     "intr 1 2 3\n")
    root = SysRoot(tmp_path)
    assert facts.steal_ticks(root) == 0
    assert facts.steal_ticks_per_cpu(root) == [5, 0, 7]


def test_steal_without_cpu_lines(tmp_path):
    write(tmp_path, facts.PROC_STAT, "intr 1\n")
    root = SysRoot(tmp_path)
    assert facts.steal_ticks(root) == 0
    assert facts.steal_ticks_per_cpu(root) == []


def test_cpu_ticks_of_recorded_guest(guest, fixture_root):
    ticks = facts.cpu_ticks(guest)
    assert [ticks[c][0] for c in sorted(ticks)] == facts.steal_ticks_per_cpu(guest)
    line = (fixture_root / "kvm-guest-1node/proc/stat").read_text().splitlines()[1].split()
    assert line[0] == "cpu0"
    # user .. steal; guest and guest_nice are already in user and nice
    assert ticks[0][1] == sum(int(x) for x in line[1:9])


def test_cpu_ticks_short_lines():
    assert facts.parse_cpu_ticks("cpu  1 2\ncpu3 4 5 6\nintr 7\n") == {3: (0, 15)}


@pytest.mark.parametrize("name,guest_flag", [("kvm-guest-1node", True), ("qemu-2node", True),
                                             ("xeon-8160-2s", False)])
def test_hypervisor_flag(fixture_root, name, guest_flag):
    assert facts.hypervisor_flag(SysRoot(fixture_root / name)) is guest_flag


def test_steal_needs_proc_stat(tmp_path):
    with pytest.raises(DataError):
        facts.steal_ticks(SysRoot(tmp_path))


def test_mounts_first_mount_point_wins(tree):
    write(tree, facts.MOUNTS, "proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\n"
                              "nodev /sys/kernel/debug/tracing tracefs rw 0 0\nshort line\n")
    assert facts.mounts(SysRoot(tree)) == {"proc": "/proc", "tracefs": "/sys/kernel/tracing"}


def test_tracefs_candidates(tree):
    root = SysRoot(tree)
    assert facts.tracefs(root) is None
    write(tree, "/sys/kernel/debug/tracing/events/sched/sched_switch/format", "")
    assert facts.tracefs(root) == "/sys/kernel/debug/tracing"
    write(tree, "/sys/kernel/tracing/events/sched/sched_switch/format", "")
    assert facts.tracefs(root) == "/sys/kernel/tracing"


def test_symbols(guest, tmp_path):
    assert facts.symbols(guest) == {"kvm_wait", "kvm_kick_cpu"}
    assert facts.symbols(SysRoot(tmp_path)) == set()


def test_kprobes_evidence(tree):
    root = SysRoot(tree)
    assert facts.kprobes_evidence(root, None) is None
    write(tree, facts.KALLSYMS, "ffffffff81000000 T register_kprobe\n")
    assert facts.kprobes_evidence(root, None) == "register_kprobe in /proc/kallsyms"
    write(tree, "/sys/kernel/tracing/kprobe_events", "")
    assert facts.kprobes_evidence(root, "/sys/kernel/tracing") == \
        "/sys/kernel/tracing/kprobe_events"


def test_kprobes_evidence_reads_symbols_only_when_needed(tree):
    write(tree, "/sys/kernel/tracing/kprobe_events", "")
    asked = []
    facts.kprobes_evidence(SysRoot(tree), "/sys/kernel/tracing", lambda: asked.append(1))
    assert asked == []


GATES = ("kvm_guest.idle_halt_hint", "feature.NUMA_WAKE_PREV")


def test_patch_gates_are_the_series_switches():
    assert tuple(facts.PATCH_GATES) == GATES


def test_patch_gates_unpatched(guest):
    assert facts.patch_gates_present(guest) == []
    assert facts.patch_gate_values(guest) == {g: None for g in facts.PATCH_GATES}
    # no debugfs in the recording: the features can be neither seen nor ruled out
    assert facts.patch_gate_states(guest) == dict(zip(GATES, (False, None)))


def test_patch_gates_from_the_parameter_and_the_features(tree):
    root = SysRoot(tree)
    write(tree, facts.PATCH_GATES["kvm_guest.idle_halt_hint"], "auto\n")
    assert facts.patch_gates_present(root) == ["kvm_guest.idle_halt_hint"]
    assert facts.patch_gate_states(root) == dict(zip(GATES, (True, None)))
    write(tree, facts.SCHED_FEATURES, "WA_IDLE NUMA_WAKE_PREV\n")
    assert facts.patch_gates_present(root) == list(GATES)
    assert facts.patch_gate_values(root) == dict(zip(GATES, ("auto", "1")))


def test_patch_gates_of_a_kernel_with_features_but_without_the_series(tree):
    write(tree, facts.SCHED_FEATURES, "WA_IDLE NO_NEXT_BUDDY NUMA_WAKE\n")
    root = SysRoot(tree)
    assert facts.patch_gate_states(root) == dict(zip(GATES, (False, False)))
    assert facts.patch_gate_values(root) == {g: None for g in GATES}


def test_no_features_file_with_debugfs_mounted_means_no_features(tree):
    (tree / "sys/kernel/debug/sched").mkdir(parents=True)
    root = SysRoot(tree)
    assert facts.patch_gate_states(root)["feature.NUMA_WAKE_PREV"] is None
    mounts = (tree / "proc/mounts").read_text()
    write(tree, facts.MOUNTS, mounts + "debugfs /sys/kernel/debug debugfs rw 0 0\n")
    assert facts.patch_gate_states(root)["feature.NUMA_WAKE_PREV"] is False


@pytest.mark.parametrize("name,state", [("WA_IDLE", "1"), ("NEXT_BUDDY", "0"),
                                        ("IDLE", None), ("NUMA", None), ("NO_WA_IDLE", None)])
def test_feature_state(name, state):
    assert facts.feature_state("WA_IDLE NO_NEXT_BUDDY NUMA_X\n", name) == state


def test_knob_registry_takes_gate_paths_from_facts():
    for gate, path in facts.PATCH_GATES.items():
        knob = REGISTRY[gate]
        assert knob.patch_gate
        if gate.startswith(facts.FEATURE_GATE):     # a feature: the file of this kernel
            assert knob.kind == "feature" and ((5, 13), None, path) in knob.paths
        else:
            assert knob.paths == ((None, None, path),)


def test_kernel_facts_reads_once_and_lazily(tmp_path):
    write(tmp_path, facts.LOCKDOWN, "none integrity [confidentiality]\n")
    write(tmp_path, "/sys/kernel/tracing/events/sched/sched_switch/format", "")
    write(tmp_path, facts.KALLSYMS, "ffffffff81000000 T register_kprobe\n")
    kf = facts.KernelFacts(SysRoot(tmp_path), euid=0)
    assert kf.lockdown == "confidentiality"
    assert kf.tracefs == "/sys/kernel/tracing"
    assert kf.tracepoint("sched:sched_switch") and not kf.tracepoint("sched:sched_waking")
    assert kf.kprobes
    (tmp_path / "proc/kallsyms").write_text("")
    assert "register_kprobe" in kf.symbols      # cached from the first read


def test_kernel_facts_without_tracefs(guest):
    kf = facts.KernelFacts(guest, euid=1000)
    assert kf.tracefs is None and not kf.tracepoint("sched:sched_switch")
    assert kf.lockdown == "none" and not kf.kprobes


def test_steal_samples_keep_their_shape_when_the_last_cpu_goes_offline(tmp_path):
    stat = "cpu  1 0 0 0 0 0 0 {t} 0 0\ncpu0 1 0 0 0 0 0 0 {t} 0 0\n"
    write(tmp_path, "/proc/stat", stat.format(t=100) + "cpu1 1 0 0 0 0 0 0 100 0 0\n")
    both = steal_ms(SysRoot(tmp_path), 2)
    write(tmp_path, "/proc/stat", stat.format(t=200))      # cpu1 offline: its line is gone
    one = steal_ms(SysRoot(tmp_path), 2)
    assert len(both) == len(one) == 2 and one[1] == 0 and one[0] > both[0]
