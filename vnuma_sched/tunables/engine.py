"""Plan, apply, verify and revert a profile. plan() is pure (reads only); apply()
writes through the journal and restores everything already written if any
write fails; revert() walks the journal backwards."""

import time
from dataclasses import dataclass

from vnuma_sched.errors import BadInput, DataError, VnumaError
from vnuma_sched.system import facts
from vnuma_sched.tunables import journal as J
from vnuma_sched.tunables import knobs as K

SET, UNCHANGED, UNSUPPORTED, BOOT_ONLY = "set", "unchanged", "unsupported", "boot"
SYSCTL_D = "/etc/sysctl.d/90-vnuma_sched.conf"
MODPROBE_D = "/etc/modprobe.d/vnuma_sched.conf"
GRUB_D = "/etc/default/grub.d/90-vnuma_sched.cfg"


class ApplyError(VnumaError):
    exit_code = 1


@dataclass
class Row:
    knob: str
    kind: str
    paths: tuple
    current: str
    target: str
    action: str
    reason: str = ""

    def to_dict(self):
        return {"knob": self.knob, "path": list(self.paths), "current": self.current,
                "target": self.target, "action": self.action, "reason": self.reason}


def _feature_state(sysroot, path, name):
    tokens = sysroot.read(path).split()
    if name in tokens:
        return "1"
    if f"NO_{name}" in tokens:
        return "0"
    return None


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
        return _feature_state(sysroot, path, knob.name.split(".", 1)[1])
    if knob.kind == K.BOOT:
        return _boot_value(knob, sysroot.read(path))
    return knob.decode(sysroot.read(path).strip())


def write(knob, path, value, sysroot):
    """One write of the value as the kernel prints it (newline-terminated)."""
    if knob.kind == K.FEATURE:
        name = knob.name.split(".", 1)[1]
        sysroot.write(path, name if value == "1" else f"NO_{name}")
    else:
        sysroot.write(path, f"{knob.encode(value)}\n")


kernel_version = facts.version      # (major, minor); kept for callers of the engine


def plan(profile, sysroot):
    """One row per knob of the profile: current, target, and what apply would do."""
    version = facts.version(sysroot)
    rows = []
    for name, target in profile.settings.items():
        knob = K.REGISTRY[name]
        res = K.resolve(knob, sysroot, version)
        if not res.paths:
            rows.append(Row(name, knob.kind, (), "-", target, UNSUPPORTED, res.reason))
            continue
        try:
            values = [read(knob, p, sysroot) for p in res.paths]
        except DataError as err:
            why = (K.debugfs_read_problem(sysroot, err) if err.path.startswith(K.DEBUGFS)
                   else f"cannot read: {err.reason}")
            rows.append(Row(name, knob.kind, res.paths, "-", target, UNSUPPORTED, why))
            continue
        if any(v is None for v in values):
            rows.append(Row(name, knob.kind, res.paths, "-", target, UNSUPPORTED,
                            "feature not in this kernel"))
            continue
        current = ",".join(sorted(set(values)))
        if knob.kind == K.BOOT:
            action = UNCHANGED if current == target else BOOT_ONLY
            reason = "" if action == UNCHANGED else "boot parameter: --persist-boot, then reboot"
        else:
            action = UNCHANGED if set(values) == {target} else SET
            reason = "decays: re-assert with 'tune hold'" if knob.decays else ""
        rows.append(Row(name, knob.kind, res.paths, current, target, action, reason))
    return rows


def _restore(entries, sysroot):
    failures = []
    for entry in reversed(entries):
        knob = K.REGISTRY.get(entry["knob"])
        try:
            if knob is None:
                raise BadInput(f"unknown knob {entry['knob']!r} in journal")
            write(knob, entry["path"], entry["old"], sysroot)
        except VnumaError as err:
            failures.append(f"{entry['path']}: {err}")
    return failures


def apply(rows, sysroot, profile, replace=False, persist=False, persist_boot=False,
          between=None):
    """Write every 'set' row; journal first. Returns the number of writes."""
    existing = J.load(sysroot)
    if existing is not None:
        if not replace:
            raise BadInput(f"profile {existing['profile']!r} is applied (journal "
                           f"{J.JOURNAL}); revert it first or use --replace")
        revert(sysroot)
    journal = J.Journal(sysroot, profile.name, facts.release(sysroot))
    count = 0
    try:
        for row in rows:
            if row.action != SET:
                continue
            knob = K.REGISTRY[row.knob]
            for path in row.paths:
                old = read(knob, path, sysroot)
                index = journal.begin(row.knob, row.kind, path, old, row.target)
                write(knob, path, row.target, sysroot)
                journal.done(index)
                count += 1
                if between is not None:
                    between(count)
        if persist:
            _persist(rows, sysroot, journal)
        if persist_boot:
            _persist_boot(rows, sysroot, journal)
    except VnumaError as err:
        failures = _restore(journal.doc["entries"], sysroot)
        _remove_files(journal.doc["files"], sysroot)
        journal.remove()
        msg = f"apply failed ({err}); every earlier write was restored"
        if failures:
            msg = f"apply failed ({err}); restore also failed for: " + "; ".join(failures)
        raise ApplyError(msg) from err
    if count == 0 and not journal.doc["files"]:
        journal.remove()
    return count


def _persist(rows, sysroot, journal):
    sysctls = [r for r in rows if r.kind == K.SYSCTL and r.action in (SET, UNCHANGED)]
    if sysctls:
        journal.add_file(SYSCTL_D)
        sysroot.write_atomic(SYSCTL_D, "# written by vnuma-sched; removed by 'tune revert'\n"
                             + "".join(f"{r.knob} = {r.target}\n" for r in sysctls))
    mods = {}
    for r in rows:
        if r.kind == K.MODULE and r.action in (SET, UNCHANGED):
            mod, param = r.knob.split(".", 1)
            mods.setdefault(mod, []).append(f"{param}={K.REGISTRY[r.knob].encode(r.target)}")
    if mods:
        journal.add_file(MODPROBE_D)
        sysroot.write_atomic(MODPROBE_D, "# written by vnuma-sched; removed by 'tune revert'\n"
                             + "".join(f"options {m} {' '.join(p)}\n" for m, p in mods.items()))


def boot_args(rows):
    out = []
    for r in rows:
        if r.kind == K.BOOT and r.action in (BOOT_ONLY, UNCHANGED):
            name = r.knob[len("boot."):]
            if K.REGISTRY[r.knob].vtype == "bool":
                if r.target == "1":
                    out.append(name)
            else:
                out.append(f"{name}={r.target}")
    return out


def _persist_boot(rows, sysroot, journal):
    args = boot_args(rows)
    if args:
        journal.add_file(GRUB_D)
        sysroot.write_atomic(GRUB_D, "# written by vnuma-sched; removed by 'tune revert'\n"
                             'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
                             + " ".join(args) + '"\n')


def _remove_files(files, sysroot):
    for path in files:
        sysroot.remove(path)


def revert(sysroot):
    """Restore every journaled value in reverse order, then drop the journal."""
    doc = J.load(sysroot)
    if doc is None:
        raise BadInput("nothing to revert: no journal (no profile applied)")
    failures = _restore(doc["entries"], sysroot)
    if failures:
        raise ApplyError("revert incomplete, journal kept: " + "; ".join(failures))
    _remove_files(doc.get("files", []), sysroot)
    sysroot.remove(J.JOURNAL)
    return doc


def verify(profile, sysroot):
    """OK / DIFF / MISSING per knob of the profile."""
    out = []
    for row in plan(profile, sysroot):
        status = {UNCHANGED: "OK", SET: "DIFF", BOOT_ONLY: "DIFF"}.get(row.action, "MISSING")
        out.append((row, status))
    return out


def hold(profile, sysroot, interval, count, progress, sleep=None):
    """Re-assert the decaying knobs of an applied profile every ``interval`` seconds."""

    doc = J.load(sysroot)
    if doc is None or doc["profile"] != profile.name:
        raise BadInput(f"apply {profile.name!r} first: hold only re-asserts an applied "
                       "profile (so that revert can restore the original values)")
    sleep = sleep or time.sleep
    rounds = 0
    try:
        while count is None or rounds < count:
            for row in plan(profile, sysroot):
                if K.REGISTRY[row.knob].decays and row.action == SET:
                    for path in row.paths:
                        write(K.REGISTRY[row.knob], path, row.target, sysroot)
                    progress(f"re-asserted {row.knob}={row.target} (was {row.current})")
            rounds += 1
            if count is None or rounds < count:
                sleep(interval)
    except KeyboardInterrupt:
        pass
    return rounds
