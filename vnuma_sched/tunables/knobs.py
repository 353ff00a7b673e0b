"""The registry of knobs the toolkit may touch, and how each resolves to paths on a
given kernel. Pure: resolution reads through a SysRoot passed in; nothing here
hard-codes the live system.

A knob the kernel lacks resolves to "unsupported" with the reason, never an error.
Values are ASCII only: "٣" is not a digit here, and an integer has at most 20 digits.
"""

import errno
import re
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput
from vnuma_sched.system import facts

SYSCTL, SCHED, FEATURE, DOMAIN, MODULE, BOOT = (
    "sysctl", "sched", "feature", "domain", "module", "boot")
# The kinds 'share' writes (parking vCPUs): cgroup v2 files, a cgroup directory (written
# "1" = mkdir, "0" = rmdir), a controller in cgroup.subtree_control ("+name"/"-name"),
# IRQ affinities, the unbound workqueue mask, and a kernel thread's CPU affinity.
CGROUP, CGROUP_DIR, CGROUP_CTL, IRQ, WORKQUEUE, AFFINITY = (
    "cgroup", "cgroup-dir", "cgroup-controller", "irq", "workqueue", "affinity")
DOMAIN_BOOT = "domain-boot"     # a domain setting that only a boot parameter can make
DEBUGFS = facts.DEBUGFS
DOMAIN_LEVELS = ("SMT", "CLS", "MC", "PKG", "DIE", "NUMA")
DOMAIN_PARAMS = ("imbalance_pct", "cache_nice_tries", "max_newidle_lb_cost")
DOMAIN_PATH = re.compile(rf"{DEBUGFS}/sched/domains/cpu[0-9]+/domain[0-9]+/([a-z_]+)")
MAX_DIGITS = 20
_INT = re.compile(r"-?[0-9]{1,%d}" % MAX_DIGITS)
_TOKEN = re.compile(r"[A-Za-z0-9_.,=:+-]{0,64}")
# cpulists and hex CPU masks as the kernel prints them, for up to 8192 CPUs
_STORED = {"cpulist": re.compile(r"[0-9,:/-]{0,8192}"),
           "cpumask": re.compile(r"[0-9a-f,]{1,2304}")}
# The files 'tune apply --persist/--persist-boot' may create or replace: no others.
SYSCTL_D = "/etc/sysctl.d/90-vnuma_sched.conf"
MODPROBE_D = "/etc/modprobe.d/vnuma_sched.conf"
GRUB_D = "/etc/default/grub.d/90-vnuma_sched.cfg"
PERSIST_FILES = (SYSCTL_D, MODPROBE_D, GRUB_D)
DECAY_DOC = ("decays: the kernel lowers it ~1%/s (update_newidle_cost(): *253/256) and "
             "raises it to the measured cost; needs 'tune hold'")
SCHED_FEATURES = ("WA_IDLE", "WA_WEIGHT", "WA_BIAS", "NI_RANDOM", "DELAY_DEQUEUE",
                  "NONTASK_CAPACITY", "TTWU_QUEUE", "SIS_UTIL", "NEXT_BUDDY")
# The features the series adds (its "feature." gates): only on patched kernels.
SERIES_FEATURES = tuple(g[len(facts.FEATURE_GATE):] for g in facts.PATCH_GATES
                        if g.startswith(facts.FEATURE_GATE))
FEATURE_DOCS = {
    "NUMA_WAKE_PREV": "series: wake_affine() never pulls a wakee across NUMA nodes by load "
                      "(WA_WEIGHT); idle and sync decisions (WA_IDLE) stay",
}


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str
    vtype: str = "int"            # int | bool | choice | text
    lo: int = None
    hi: int = None
    choices: tuple = ()
    patch_gate: bool = False      # only on kernels carrying the project's series
    decays: bool = False          # the kernel drifts it back (needs 'tune hold')
    doc: str = ""
    paths: tuple = field(default=(), compare=False)  # ((min_ver, max_ver, path), ...)
    path_re: str = ""             # the paths of a knob with one path per IRQ, task...
    may_refuse: bool = False      # a refused write is reported, not a failure
    readback: bool = False        # a write is checked by reading the value back

    def check_value(self, raw, where):
        """Normalised value or BadInput naming ``where`` (profile:line)."""
        value = raw.strip()
        if self.vtype == "int":
            if not _INT.fullmatch(value):
                raise BadInput(f"{where}: {self.name} needs an integer of at most "
                               f"{MAX_DIGITS} ASCII digits, got {_short(value)}")
            n = int(value)
            if (self.lo is not None and n < self.lo) or (self.hi is not None and n > self.hi):
                raise BadInput(f"{where}: {self.name}={n} outside {self.lo}..{self.hi}")
            return str(n)
        if self.vtype == "bool":
            if value.lower() in ("1", "y", "yes", "on", "true"):
                return "1"
            if value.lower() in ("0", "n", "no", "off", "false"):
                return "0"
            raise BadInput(f"{where}: {self.name} needs 0 or 1, got {_short(value)}")
        if self.vtype == "choice":
            if value not in self.choices:
                raise BadInput(f"{where}: {self.name} must be one of "
                               f"{', '.join(self.choices)}, got {_short(value)}")
            return value
        if not re.fullmatch(r"[A-Za-z0-9_.,=-]{1,64}", value):
            raise BadInput(f"{where}: {self.name}: unexpected characters in {_short(value)}")
        return value

    def valid_stored(self, value):
        """Could ``value`` (from a journal) be a value of this knob as read() gives it?"""
        if not isinstance(value, str):
            return False
        if self.vtype == "int":
            return bool(_INT.fullmatch(value))
        return bool(_STORED.get(self.vtype, _TOKEN).fullmatch(value))

    def allows_path(self, path):
        """Is ``path`` (from a journal) one that this knob resolves to on some kernel?"""
        if not isinstance(path, str):
            return False
        if self.kind == DOMAIN:
            m = DOMAIN_PATH.fullmatch(path)
            return bool(m) and m.group(1) == self.name.split(".")[2]
        if self.path_re:
            return bool(re.fullmatch(self.path_re, path))
        return path in {p for _lo, _hi, p in self.paths}

    def encode(self, value):
        """The text the kernel takes for a normalised value (bool module parameters: Y/N)."""
        if self.kind == MODULE and self.vtype == "bool":
            return "Y" if value == "1" else "N"
        if self.kind == CGROUP_CTL:
            return ("+" if value == "1" else "-") + self.name.rsplit(".", 1)[1]
        return value

    def decode(self, text):
        """The normalised value of the text the kernel prints (bools: Y/N -> 1/0)."""
        if self.kind == CGROUP_CTL:
            return "1" if self.name.rsplit(".", 1)[1] in text.split() else "0"
        if self.vtype == "bool":
            return {"Y": "1", "N": "0", "y": "1", "n": "0"}.get(text, text)
        return text


def _short(value):
    """repr() of a value for a one-line message, at most about 40 characters."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _sysctl(name, **kw):
    path = "/proc/sys/" + name.replace(".", "/")
    return Knob(name, SYSCTL, paths=((None, None, path),), **kw)


def _sched(name, old, new_paths, **kw):
    """Scheduler debug knobs: /proc/sys/kernel/sched_* before 5.13, debugfs after."""
    return Knob(f"sched.{name}", SCHED, paths=((None, (5, 13), old), *new_paths), **kw)


def _module(mod, param, **kw):
    return Knob(f"{mod}.{param}", MODULE,
                paths=((None, None, f"/sys/module/{mod}/parameters/{param}"),), **kw)


def _gate(name, kind, **kw):
    """A knob that is one of the series' patch gates: its path is facts.PATCH_GATES'."""
    return Knob(name, kind, patch_gate=True,
                paths=((None, None, facts.PATCH_GATES[name]),), **kw)


def _boot(name, **kw):
    return Knob(f"boot.{name}", BOOT, **kw)


def _feature(name):
    """A scheduler feature (NO_ prefix clears it); the series' own are patch gates."""
    return Knob(f"feature.{name}", FEATURE, vtype="bool", patch_gate=name in SERIES_FEATURES,
                paths=((None, (5, 13), f"{DEBUGFS}/sched_features"),
                       ((5, 13), None, facts.SCHED_FEATURES)),
                doc=FEATURE_DOCS.get(name, "sched feature (NO_ prefix clears it)"))


REGISTRY = {k.name: k for k in [
    _sysctl("kernel.numa_balancing", lo=0, hi=3,
            doc="0 stops NUMA-balancing task and page moves"),
    _sysctl("kernel.sched_schedstats", vtype="bool", doc="scheduler statistics"),
    _sched("migration_cost_ns", "/proc/sys/kernel/sched_migration_cost_ns",
           (((5, 13), None, f"{DEBUGFS}/sched/migration_cost_ns"),), lo=0, hi=10**9,
           doc="task_hot() threshold"),
    _sched("base_slice_ns", "/proc/sys/kernel/sched_min_granularity_ns",
           (((5, 13), (6, 6), f"{DEBUGFS}/sched/min_granularity_ns"),
            ((6, 6), None, f"{DEBUGFS}/sched/base_slice_ns")), lo=100_000, hi=10**9,
           doc="min_granularity_ns before 6.6"),
    _sched("latency_ns", "/proc/sys/kernel/sched_latency_ns",
           (((5, 13), (6, 6), f"{DEBUGFS}/sched/latency_ns"),), lo=100_000, hi=10**9,
           doc="removed in 6.6 (EEVDF)"),
    _sched("wakeup_granularity_ns", "/proc/sys/kernel/sched_wakeup_granularity_ns",
           (((5, 13), (6, 6), f"{DEBUGFS}/sched/wakeup_granularity_ns"),), lo=0, hi=10**9,
           doc="removed in 6.6 (EEVDF)"),
    *[_feature(f) for f in SCHED_FEATURES + SERIES_FEATURES],
    *[Knob(f"domain.{lvl}.{p}", DOMAIN, lo=0, hi=10**9,
           decays=(p == "max_newidle_lb_cost"),
           doc=(DECAY_DOC if p == "max_newidle_lb_cost" else f"{p} of every {lvl} sched domain"))
      for lvl in DOMAIN_LEVELS for p in DOMAIN_PARAMS],
    Knob("domain.NUMA.newidle_balance", DOMAIN_BOOT, vtype="bool",
         doc="0: no newidle/wake balancing in NUMA domains: planned as boot "
             "relax_domain_level=N, N computed for this kernel's domain levels"),
    _module("haltpoll", "guest_halt_poll_ns", lo=0, hi=10**9, doc="guest poll before HLT"),
    _module("haltpoll", "guest_halt_poll_grow", lo=0, hi=100),
    _module("haltpoll", "guest_halt_poll_shrink", lo=0, hi=100),
    _module("haltpoll", "guest_halt_poll_allow_shrink", vtype="bool"),
    _gate("kvm_guest.idle_halt_hint", MODULE, vtype="choice", choices=("auto", "on", "off"),
          doc="series: report vCPUs halted in idle as not preempted (auto, the default: "
              "when it detects an old host at run time)"),
    _module("vnuma_debug", "emulate_halt_preempted", vtype="bool", patch_gate=True,
            doc="debug series (test aid, never on bare metal): emulate an old host"),
    _boot("relax_domain_level", lo=-1, hi=7,
          doc="no newidle/wake balancing in domains with sd->level >= N (every level of "
              "the topology table counts, not the debugfs domainN index)"),
    _boot("cpuidle_haltpoll.force", vtype="bool"),
    _boot("nopvspin", vtype="bool", doc="no PV spinlocks"),
    _boot("no-steal-acc", vtype="bool", doc="no steal time accounting"),
    _boot("kvm_guest.idle_halt_hint", vtype="choice", choices=("auto", "on", "off"),
          patch_gate=True),
    _boot("vnuma_debug.emulate_halt_preempted", vtype="bool", patch_gate=True,
          doc="debug series (test aid, never on bare metal): emulate an old host from boot"),
]}


# Parking vCPUs ('vnuma-sched share'): not in profiles, written by 'share apply' only.
CGROUP_FS = "/sys/fs/cgroup"
PARKED = f"{CGROUP_FS}/vnuma-parked"
IRQ_DIR = "/proc/irq"
WQ_CPUMASK = "/sys/devices/virtual/workqueue/cpumask"
PARTITIONS = ("member", "root", "isolated")


def _one(name, kind, path, **kw):
    return Knob(name, kind, paths=((None, None, path),), **kw)


SHARE = {k.name: k for k in [
    _one("share.timer_migration", SYSCTL, "/proc/sys/kernel/timer_migration", vtype="bool",
         doc="1: global timers of an idle CPU move to a busy one"),
    _one("share.subtree.cpuset", CGROUP_CTL, f"{CGROUP_FS}/cgroup.subtree_control",
         vtype="bool", doc="the cpuset controller for the root's children"),
    _one("share.group", CGROUP_DIR, PARKED, vtype="bool", doc="the parked CPUs' cgroup"),
    _one("share.group.cpus", CGROUP, f"{PARKED}/cpuset.cpus", vtype="cpulist"),
    _one("share.group.partition", CGROUP, f"{PARKED}/cpuset.cpus.partition",
         vtype="choice", choices=PARTITIONS, readback=True,
         doc="isolated: out of the parent's CPUs and of every sched domain"),
    _one("share.wq_cpumask", WORKQUEUE, WQ_CPUMASK, vtype="cpumask",
         doc="the CPUs unbound workqueues run on"),
    _one("share.irq_default", IRQ, f"{IRQ_DIR}/default_smp_affinity", vtype="cpumask",
         doc="the affinity new IRQs get"),
    Knob("share.irq", IRQ, vtype="cpulist", may_refuse=True,
         path_re=rf"{IRQ_DIR}/[0-9]{{1,7}}/smp_affinity_list",
         doc="an IRQ's affinity (managed IRQs refuse)"),
    Knob("share.kthread", AFFINITY, vtype="cpulist", may_refuse=True,
         path_re=r"/proc/[0-9]{1,10}/status", doc="an unbound kernel thread's affinity"),
]}


def known(name):
    """A knob of the tunables registry or of 'share'; None when neither has it."""
    return REGISTRY.get(name) or SHARE.get(name)


def lookup(name, where):
    knob = REGISTRY.get(name)
    if knob is None:
        raise BadInput(f"{where}: unknown knob {name!r} (see 'vnuma-sched tune knobs')")
    return knob


def _version_ok(version, lo, hi):
    return (lo is None or version >= lo) and (hi is None or version < hi)


@dataclass(frozen=True)
class Resolved:
    paths: tuple          # () when unsupported
    reason: str = ""      # why unsupported


DEBUGFS_MOUNT_HINT = f"mount -t debugfs nodev {DEBUGFS}"
UNPATCHED = "unpatched kernel (no vnuma_sched series)"


def _has_sched_files(sysroot):
    return sysroot.exists(f"{DEBUGFS}/sched") or sysroot.exists(f"{DEBUGFS}/sched_features")


def debugfs_problem(sysroot):
    """Why debugfs cannot be read here ("" when it can): not mounted, or root only."""
    if facts.mounts(sysroot).get("debugfs") is None and not _has_sched_files(sysroot):
        return f"debugfs not mounted ({DEBUGFS_MOUNT_HINT})"
    if not sysroot.readable(DEBUGFS):
        return f"{DEBUGFS} is readable by root only (run as root)"
    return ""


def debugfs_read_problem(sysroot, err):
    """A user's reason for a failed read of a debugfs file (a DataError)."""
    why = debugfs_problem(sysroot)
    if why:
        return why
    if err.errno == errno.EPERM:
        return ("debugfs refuses reads (Operation not permitted): the kernel is locked "
                "down (see /sys/kernel/security/lockdown; mount -t securityfs nodev "
                "/sys/kernel/security if it is absent)")
    return f"cannot read: {err.reason}"


def _debugfs_ok(sysroot):
    why = debugfs_problem(sysroot)
    if why:
        return why
    if not _has_sched_files(sysroot):
        return f"debugfs not mounted ({DEBUGFS_MOUNT_HINT})"
    mode = facts.lockdown(sysroot)
    if mode != "none":
        return f"lockdown ({mode}): debugfs writes are denied"
    return ""


def domain_paths(sysroot, level, param):
    """Every cpuN/domainM/<param> whose domain name is ``level`` (by name, not index)."""
    base = f"{DEBUGFS}/sched/domains"
    out = []
    for cpu in sysroot.listdir(base):
        for dom in sysroot.listdir(f"{base}/{cpu}"):
            name = sysroot.read_optional(f"{base}/{cpu}/{dom}/name", "")
            if name.strip() == level and sysroot.exists(f"{base}/{cpu}/{dom}/{param}"):
                out.append(f"{base}/{cpu}/{dom}/{param}")
    return tuple(sorted(out, key=lambda p: [int(x) if x.isdigit() else x
                                            for x in re.split(r"(\d+)", p)]))


def resolve(knob, sysroot, version):
    """Paths for ``knob`` on this kernel (version is (major, minor)), or the reason why not."""
    if knob.kind == BOOT:
        return Resolved(("/proc/cmdline",))
    candidates = [p for lo, hi, p in knob.paths if _version_ok(version, lo, hi)]
    if knob.kind == DOMAIN or any(p.startswith(DEBUGFS) for p in candidates):
        why = _debugfs_ok(sysroot)
        if why:
            return Resolved((), why)
    if knob.kind == DOMAIN:
        _, level, param = knob.name.split(".")
        paths = domain_paths(sysroot, level, param)
        return Resolved(paths) if paths else Resolved((), f"no {level} sched domain here")
    if not candidates:
        return Resolved((), f"not in kernel {version[0]}.{version[1]}")
    path = candidates[0]
    if sysroot.exists(path):
        return Resolved((path,))
    if knob.patch_gate:
        return Resolved((), UNPATCHED)
    if knob.kind == MODULE:
        return Resolved((), f"module {knob.name.split('.')[0]} not loaded or built in")
    return Resolved((), f"{path} absent on this kernel")
