"""plan(): the writes that park ``target.parked`` and keep ``target.used``, as rows of
the tunables engine (knob, path, current, target, action), in the order apply makes
them: timer migration, the unbound kernel threads, the unbound workqueue mask, the
IRQs, and last the cpuset partition. Revert undoes them newest first: the partition
goes first. Pure: reads only. Each row carries the value it read (Row.olds): apply,
under the same lock, journals it without reading every path a second time.

The partition comes last because the kernel itself changes two of the other values
when a partition appears or goes (6.12): every task of the root cgroup without
PF_NO_SETAFFINITY is set to all CPUs but the partitions' (cpuset_update_tasks_cpumask(),
intersected with a mask sched_setaffinity() gave it), and the unbound workqueue mask
becomes the requested one minus the isolated CPUs (workqueue_unbound_exclude_cpumask()).
Written before it, the journal holds the values as they were (a node's CPUs for kswapd
and kcompactd, the whole workqueue mask) and revert ends with them."""

from vnuma_sched.errors import DataError, Missing
from vnuma_sched.share import kernel as KS
from vnuma_sched.system.topology import format_cpulist, parse_cpulist
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import planner as P

NEW_GROUP = {"share.group.cpus": "", "share.group.partition": "member"}  # a new cgroup's
NO_SETAFFINITY = "PF_NO_SETAFFINITY: the kernel keeps its affinity"
KWORKER = "a workqueue worker: follows share.wq_cpumask"


def cpumask_hex(cpus, like=""):
    """The kernel's hex CPU mask ("f", "ffffffff,ffffffff") of ``cpus``, as wide as
    ``like`` (a mask the kernel printed) when that is wider."""
    value = sum(1 << c for c in cpus)
    digits = max(len(like.replace(",", "")), len(f"{value:x}"))
    text = f"{value:0{digits}x}"
    groups = [text[max(0, i - 8):i] for i in range(len(text), 0, -8)]
    return ",".join(reversed(groups))


def mask_cpus(text):
    """The CPUs of a hex mask ("f" -> [0, 1, 2, 3])."""
    value = int(text.replace(",", "") or "0", 16)
    return [c for c in range(value.bit_length()) if value >> c & 1]


def _row(name, path, current, target, reason="", read=True):
    """``read``: ``current`` was read from ``path`` now (apply journals it as the old
    value, without reading it again)."""
    knob = K.SHARE[name]
    action = P.UNCHANGED if current == target else P.SET
    return P.Row(name, knob.kind, (path,), current, target, action, reason,
                 olds=(current,) if read else None)


def _unsupported(name, path, why):
    return P.Row(name, K.SHARE[name].kind, (), "-", "-", P.UNSUPPORTED, f"{path}: {why}")


def _simple(name, sysroot, target_of):
    """A row for a one-path knob, or unsupported when the kernel lacks the file."""
    knob = K.SHARE[name]
    path = knob.paths[0][2]
    if knob.kind != K.CGROUP_DIR and not sysroot.exists(path):
        return _unsupported(name, path, "absent on this kernel")
    try:
        current = P.read(knob, path, sysroot)
    except DataError as err:
        return _unsupported(name, path, f"cannot read: {err.reason}")
    return _row(name, path, current, target_of(current))


def _group_rows(sysroot, target):
    rows = [_simple("share.subtree.cpuset", sysroot, lambda cur: "1"),
            _simple("share.group", sysroot, lambda cur: "1")]
    exists = sysroot.is_dir(K.PARKED)
    for name, value in (("share.group.cpus", target.parked_list),
                        ("share.group.partition", "isolated")):
        path = K.SHARE[name].paths[0][2]
        current = P.read(K.SHARE[name], path, sysroot) if exists else NEW_GROUP[name]
        if name == "share.group.cpus":
            current = _normal(current, path)
        rows.append(_row(name, path, current, value, read=exists))  # else: after mkdir
    return rows


def _normal(cpulist, path):
    try:
        return format_cpulist(parse_cpulist(cpulist))
    except ValueError as err:
        raise DataError(path, f"malformed cpulist: {err}") from err


def _moved(cpus, used):
    """Where something allowed on ``cpus`` goes: the used CPUs among them, else all."""
    kept = [c for c in cpus if c in used]
    return format_cpulist(kept or used)


def _irq_rows(sysroot, used):
    rows = [_simple("share.irq_default", sysroot,
                    lambda cur: cpumask_hex(used, cur))]
    for irq in KS.irqs(sysroot):
        current, target = format_cpulist(irq.cpus), _moved(irq.cpus, used)
        name = KS.irq_name(sysroot, irq.number) if current != target else ""
        reason = f"irq {irq.number}" + (f" ({name})" if name else "")
        rows.append(_row("share.irq", irq.path, current, target, reason))
    return rows


def _kthread_rows(sysroot, target):
    rows = []
    parked = set(target.parked)
    for kt in KS.kthreads(sysroot, parked):
        if kt.per_cpu:                  # per-CPU ones stay: see status
            continue
        current = format_cpulist(kt.cpus)
        if kt.fixed:
            why = KWORKER if kt.comm.startswith("kworker/") else NO_SETAFFINITY
            rows.append(P.Row("share.kthread", K.AFFINITY, (kt.path,), current, "-",
                              P.UNSUPPORTED, f"{kt.comm}: {why}"))
            continue
        rows.append(_row("share.kthread", kt.path, current, _moved(kt.cpus, target.used),
                         kt.comm))
    return rows


def plan(sysroot, target):
    """The rows that park ``target``; Missing when this kernel cannot park at all."""
    why = KS.cgroup_problem(sysroot)
    if why:
        raise Missing(f"cannot park vCPUs here: {why}")
    used = list(target.used)
    return [_simple("share.timer_migration", sysroot, lambda cur: "1"),
            *_kthread_rows(sysroot, target),
            _simple("share.wq_cpumask", sysroot, lambda cur: cpumask_hex(used, cur)),
            *_irq_rows(sysroot, used),
            *_group_rows(sysroot, target)]
