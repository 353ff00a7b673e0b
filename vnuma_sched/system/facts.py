"""Kernel facts, each read and parsed in one place, through a SysRoot.

Kernel release and version, lockdown mode, steal time and CPU ticks, the
hypervisor CPU flag, mounts, tracefs, kprobes, kallsyms symbols, scheduler
features and the project's patch gates.
Pure: every function takes the SysRoot to read; nothing here points at the live
system.
"""

import errno
import re

from vnuma_sched.errors import DataError
from vnuma_sched.system import btf

OSRELEASE = "/proc/sys/kernel/osrelease"
LOCKDOWN = "/sys/kernel/security/lockdown"
PROC_STAT = "/proc/stat"
CPUINFO = "/proc/cpuinfo"
MOUNTS = "/proc/mounts"
KALLSYMS = "/proc/kallsyms"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
DEBUGFS = "/sys/kernel/debug"
# The scheduler features (5.13+; CONFIG_SCHED_DEBUG): "NAME" when set, "NO_NAME" when not.
SCHED_FEATURES = f"{DEBUGFS}/sched/features"
FEATURE_GATE = "feature."
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"

# The switches of the project's series (the gates= of patches/<version>/series), only on
# a kernel that carries it: gate name -> the file that shows it. A "feature.NAME" gate
# is a scheduler feature the series adds: the kernel has it when SCHED_FEATURES lists it.
PATCH_GATES = {
    "kvm_guest.idle_halt_hint": "/sys/module/kvm_guest/parameters/idle_halt_hint",
    "feature.NUMA_WAKE_PREV": SCHED_FEATURES,
}

# The debug series' module (old-host emulation, a test aid); not a gate of the postable
# series.
DEBUG_PARAMS_DIR = "/sys/module/vnuma_debug/parameters"

_STEAL_FIELD = 8    # cpuN user nice system idle iowait irq softirq steal ...


def release(sysroot, default=None):
    """The kernel release ("6.12.117"), stripped; ``default`` when unreadable,
    or DataError when no default is given."""
    if default is None:
        return sysroot.read(OSRELEASE).strip()
    return sysroot.read_optional(OSRELEASE, default).strip()


def parse_version(text):
    """(major, minor) of a release string, or None when it does not start with one."""
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


def version(sysroot):
    """(major, minor) of the kernel; DataError when the release cannot be parsed."""
    rel = release(sysroot)
    parsed = parse_version(rel)
    if parsed is None:
        raise DataError(OSRELEASE, f"cannot parse {rel!r}")
    return parsed


def read_lockdown(sysroot):
    """The lockdown mode in [brackets]; None when the kernel has no lockdown file,
    "unknown" when the file names no mode."""
    text = sysroot.read_optional(LOCKDOWN)
    if text is None:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "unknown"


def lockdown(sysroot):
    """The lockdown mode: "none", "integrity", "confidentiality" ("none" when absent)."""
    return read_lockdown(sysroot) or "none"


def _cpu_lines(text):
    """The fields of each "cpu"/"cpuN" line of /proc/stat's text, the name first."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("cpu"):
            yield parts


def _steal_lines(sysroot):
    """(name, ticks) per "cpu"/"cpuN" line of /proc/stat; DataError when unreadable."""
    for parts in _cpu_lines(sysroot.read(PROC_STAT)):
        yield parts[0], int(parts[_STEAL_FIELD]) if len(parts) > _STEAL_FIELD else 0


def parse_cpu_ticks(text):
    """{cpu number: (steal, total)} from the text of /proc/stat, in USER_HZ ticks since
    boot: total is user .. steal (guest time is already counted in user and nice)."""
    out = {}
    for parts in _cpu_lines(text):
        if parts[0] != "cpu":
            ticks = [int(x) for x in parts[1:_STEAL_FIELD + 1]]
            out[int(parts[0][3:])] = (ticks[-1] if len(ticks) == _STEAL_FIELD else 0,
                                      sum(ticks))
    return out


def cpu_ticks(sysroot):
    """parse_cpu_ticks() of this system's /proc/stat (online CPUs only)."""
    return parse_cpu_ticks(sysroot.read(PROC_STAT))


def hypervisor_flag(sysroot):
    """True when /proc/cpuinfo lists the "hypervisor" CPU flag (CPUID.1:ECX bit 31): the
    kernel runs in a guest, whichever hypervisor it is."""
    text = sysroot.read_optional(CPUINFO, "")
    return re.search(r"^flags\s*:.*\bhypervisor\b", text, re.M) is not None


def cpu_flags(sysroot):
    """The "flags" of the first CPU in /proc/cpuinfo (an empty set when unreadable)."""
    m = re.search(r"^flags\s*:(.*)$", sysroot.read_optional(CPUINFO, ""), re.M)
    return set(m.group(1).split()) if m else set()


def steal_ticks(sysroot):
    """Steal time of all CPUs since boot, in USER_HZ ticks (0 without a "cpu" line)."""
    return next((t for name, t in _steal_lines(sysroot) if name == "cpu"), 0)


def steal_ticks_per_cpu(sysroot):
    """Steal ticks indexed by CPU number (0 for CPUs /proc/stat leaves out)."""
    out = {int(name[3:]): t for name, t in _steal_lines(sysroot) if name != "cpu"}
    return [out.get(c, 0) for c in range(max(out) + 1)] if out else []


def mounts(sysroot):
    """Filesystem type -> first mount point listed in /proc/mounts."""
    out = {}
    for line in sysroot.read_optional(MOUNTS, "").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.setdefault(parts[2], parts[1])
    return out


def tracefs(sysroot):
    """Where tracefs is (the first candidate with events/), or None."""
    return next((t for t in TRACEFS_CANDIDATES if sysroot.exists(f"{t}/events")), None)


def symbols(sysroot):
    """The set of symbol names in /proc/kallsyms (empty when unreadable)."""
    text = sysroot.read_optional(KALLSYMS, "")
    return {parts[2] for parts in map(str.split, text.splitlines()) if len(parts) >= 3}


def kprobes_evidence(sysroot, tracefs_dir, syms=None):
    """Why kprobes are available ("<tracefs>/kprobe_events" or "register_kprobe in
    /proc/kallsyms"), or None when they are not. ``syms``: a callable returning the
    kallsyms set, called only when tracefs does not settle it (default: read it)."""
    if tracefs_dir and sysroot.exists(f"{tracefs_dir}/kprobe_events"):
        return f"{tracefs_dir}/kprobe_events"
    if "register_kprobe" in (syms() if syms else symbols(sysroot)):
        return f"register_kprobe in {KALLSYMS}"
    return None


def feature_state(text, name):
    """"1" or "0" for scheduler feature ``name`` in the text of the features file
    (NAME or NO_NAME), None when the kernel has no such feature."""
    tokens = text.split()
    if name in tokens:
        return "1"
    if f"NO_{name}" in tokens:
        return "0"
    return None


def _features_text(sysroot):
    """SCHED_FEATURES' text; "" when this kernel has no features file (debugfs is
    mounted and readable without it: no CONFIG_SCHED_DEBUG); None when that cannot be
    told (debugfs not mounted, readable by root only, or lockdown)."""
    try:
        return sysroot.read(SCHED_FEATURES)
    except DataError as err:
        known = (err.errno == errno.ENOENT and "debugfs" in mounts(sysroot)
                 and sysroot.readable(DEBUGFS))
        return "" if known else None


def patch_gate_states(sysroot):
    """Gate name -> True (this kernel has it), False (it has not) or None (cannot tell:
    a feature gate while the scheduler features cannot be read), in PATCH_GATES order."""
    features = _features_text(sysroot)
    out = {}
    for gate, path in PATCH_GATES.items():
        if not gate.startswith(FEATURE_GATE):
            out[gate] = sysroot.exists(path)
        elif features is None:
            out[gate] = None
        else:
            out[gate] = feature_state(features, gate[len(FEATURE_GATE):]) is not None
    return out


def task_offsets(sysroot):
    """({-D name: byte offset} of the task_struct fields the migrate probe reads, None),
    or (None, why not), from the running kernel's BTF."""
    if not sysroot.exists(BTF_VMLINUX):
        return None, f"no {BTF_VMLINUX} (CONFIG_DEBUG_INFO_BTF=n)"
    try:
        with sysroot.open_binary(BTF_VMLINUX) as f:
            blob = f.read()
        return btf.task_offsets(blob)
    except OSError as err:
        return None, f"{BTF_VMLINUX}: {err.strerror or err}"
    except DataError as err:
        return None, f"{BTF_VMLINUX}: {err.reason}"


def patch_gates_present(sysroot):
    """Names of the patch gates this kernel is seen to have, in PATCH_GATES order."""
    return [g for g, present in patch_gate_states(sysroot).items() if present]


def patch_gate_values(sysroot):
    """Gate name -> its current text ("1"/"0" for a feature), None when the gate is
    absent or cannot be read."""
    features = sysroot.read_optional(SCHED_FEATURES)
    out = {}
    for gate, path in PATCH_GATES.items():
        if not gate.startswith(FEATURE_GATE):
            out[gate] = sysroot.read_optional(path)
        else:
            out[gate] = (None if features is None
                         else feature_state(features, gate[len(FEATURE_GATE):]))
    return out


class KernelFacts:
    """What the running (or recorded) kernel offers, read once (symbols lazily)."""

    def __init__(self, sysroot, euid):
        self.sysroot, self.euid = sysroot, euid
        self.tracefs = tracefs(sysroot)
        self.lockdown = lockdown(sysroot)
        self._symbols = None
        self._task_offsets = None

    def tracepoint(self, spec):
        cat, name = spec.split(":")
        return self.tracefs is not None and self.sysroot.exists(
            f"{self.tracefs}/events/{cat}/{name}")

    @property
    def kprobes(self):
        return kprobes_evidence(self.sysroot, self.tracefs, lambda: self.symbols) is not None

    @property
    def symbols(self):
        if self._symbols is None:
            self._symbols = symbols(self.sysroot)
        return self._symbols

    @property
    def task_offsets(self):
        """(offsets, None) or (None, why): see task_offsets(); read once."""
        if self._task_offsets is None:
            self._task_offsets = task_offsets(self.sysroot)
        return self._task_offsets
