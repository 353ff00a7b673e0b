"""plan(): one row per knob of a profile (current, target, what apply would do).
Pure: reads only, through the SysRoot passed in. Also the one read() and write()
of a knob's path that apply, revert and verify share."""

from dataclasses import dataclass

from vnuma_sched.errors import DataError
from vnuma_sched.system import facts, tasks
from vnuma_sched.system.topology import parse_cpulist
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import levels

SET, UNCHANGED, UNSUPPORTED, BOOT_ONLY = "set", "unchanged", "unsupported", "boot"
CMDLINE = "/proc/cmdline"
BOOT_HINT = "boot parameter: --persist-boot, then reboot"


@dataclass
class Row:
    knob: str
    kind: str
    paths: tuple
    current: str
    target: str
    action: str
    reason: str = ""
    boot: str = ""          # the kernel command-line word that sets the target, if any
    olds: tuple = None      # per path, the value as read() gives it, when the plan read
    #                         it under the lock apply holds (apply journals it as it is)

    def to_dict(self):
        return {"knob": self.knob, "path": list(self.paths), "current": self.current,
                "target": self.target, "action": self.action, "reason": self.reason,
                "boot": self.boot}


NO_FEATURE = "feature not in this kernel"
NO_SERIES_FEATURE = f"{NO_FEATURE}: {K.UNPATCHED}"


def _boot_value(knob, cmdline):
    name = knob.name[len("boot."):]
    for token in cmdline.split():
        key, _, value = token.partition("=")
        if key == name:
            return value if value else "1"
    return "0" if knob.vtype == "bool" else ("-1" if name == "relax_domain_level" else "")


def read(knob, path, sysroot):
    """Current normalised value of one path of a knob."""
    if knob.kind == K.FEATURE:
        return facts.feature_state(sysroot.read(path), knob.name.split(".", 1)[1])
    if knob.kind == K.BOOT:
        return _boot_value(knob, sysroot.read(path))
    if knob.kind == K.CGROUP_DIR:
        return "1" if sysroot.is_dir(path) else "0"
    if knob.kind == K.AFFINITY:
        pid = _kernel_thread(path, sysroot)
        return tasks.allowed_cpus(sysroot, pid)
    return knob.decode(sysroot.read(path).strip())


def _kernel_thread(path, sysroot):
    """The pid of a /proc/PID/... path, when it is still a kernel thread."""
    pid = tasks.pid_of(path)
    if not tasks.stat(sysroot, pid).flags & tasks.PF_KTHREAD:
        raise DataError(path, "not a kernel thread (the pid was reused)")
    return pid


def write(knob, path, value, sysroot):
    """One write of the value as the kernel prints it (newline-terminated); a knob with
    ``readback`` fails (DataError) when the kernel does not read back what was written."""
    if knob.kind == K.FEATURE:
        name = knob.name.split(".", 1)[1]
        sysroot.write(path, name if value == "1" else f"NO_{name}")
    elif knob.kind == K.CGROUP_DIR:
        (sysroot.mkdir if value == "1" else sysroot.rmdir)(path)
    elif knob.kind == K.AFFINITY:
        sysroot.set_affinity(_kernel_thread(path, sysroot), parse_cpulist(value))
    else:
        sysroot.write(path, f"{knob.encode(value)}\n")
    if knob.readback:
        now = read(knob, path, sysroot)
        if now != value:
            raise DataError(path, f"wrote {value!r}, the kernel reads back {now!r}")


def boot_word(knob, value):
    name = knob.name[len("boot."):]
    if knob.vtype == "bool":
        return name if value == "1" else ""
    return f"{name}={value}"


def boot_args(rows):
    """The command-line words of the boot rows that apply would plan or keep."""
    return [r.boot for r in rows if r.boot and r.action in (BOOT_ONLY, UNCHANGED)]


def _boot_row(name, knob, target, values, paths):
    current = ",".join(sorted(set(values)))
    action = UNCHANGED if current == target else BOOT_ONLY
    return Row(name, knob.kind, paths, current, target, action,
               "" if action == UNCHANGED else BOOT_HINT, boot_word(knob, target))


def _relax_row(name, knob, target, sysroot, version, profile):
    """domain.NUMA.newidle_balance: relax_domain_level=N for this kernel's levels."""
    def unsupported(why):
        return Row(name, knob.kind, (), "-", target, UNSUPPORTED, why)
    if "boot.relax_domain_level" in profile.settings:
        return unsupported("the profile sets boot.relax_domain_level itself")
    why = K.debugfs_problem(sysroot)
    if why:
        return unsupported(f"{why}: needed for the sched-domain levels")
    names = levels.domain_names(sysroot)
    if "NUMA" not in names:
        return unsupported("no NUMA sched domain here")
    relax = levels.numa_relax(sysroot, version, names)
    given = levels.cmdline_relax(sysroot.read(CMDLINE))
    current = "0" if 0 <= given <= relax.value else "1"
    word = f"relax_domain_level={relax.value if target == '0' else -1}"
    action = UNCHANGED if current == target else BOOT_ONLY
    reason = relax.explain() + ("" if action == UNCHANGED else f"; {BOOT_HINT}")
    return Row(name, knob.kind, (CMDLINE,), current, target, action, reason, word)


def _row(name, target, sysroot, version, profile):
    knob = K.REGISTRY[name]
    if knob.kind == K.DOMAIN_BOOT:
        return _relax_row(name, knob, target, sysroot, version, profile)
    res = K.resolve(knob, sysroot, version)
    if not res.paths:
        return Row(name, knob.kind, (), "-", target, UNSUPPORTED, res.reason)
    try:
        values = [read(knob, p, sysroot) for p in res.paths]
    except DataError as err:
        why = (K.debugfs_read_problem(sysroot, err) if err.path.startswith(K.DEBUGFS)
               else f"cannot read: {err.reason}")
        return Row(name, knob.kind, res.paths, "-", target, UNSUPPORTED, why)
    if any(v is None for v in values):
        return Row(name, knob.kind, res.paths, "-", target, UNSUPPORTED,
                   NO_SERIES_FEATURE if knob.patch_gate else NO_FEATURE)
    if knob.kind == K.BOOT:
        return _boot_row(name, knob, target, values, res.paths)
    action = UNCHANGED if set(values) == {target} else SET
    reason = "decays: re-assert with 'tune hold'" if knob.decays else ""
    return Row(name, knob.kind, res.paths, ",".join(sorted(set(values))), target, action,
               reason)


def plan(profile, sysroot):
    """One row per knob of the profile: current, target, and what apply would do."""
    version = facts.version(sysroot)
    return [_row(name, target, sysroot, version, profile)
            for name, target in profile.settings.items()]
