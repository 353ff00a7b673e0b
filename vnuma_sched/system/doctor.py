"""doctor: what a user must know about a guest before trusting the other commands.

Every check takes a DoctorEnv and returns a Check; one check that cannot run
reports why and the others still run. The verdict maps the checks onto the two
problems the project addresses. The rows on Full vNUMA (layout, pinning
evidence, memory per node) are in doctor_vnuma; the Check row is in checks.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from vnuma_sched.errors import VnumaError
from vnuma_sched.share import kernel as share_kernel
from vnuma_sched.system import cpuid as cpuid_mod
from vnuma_sched.system import facts
from vnuma_sched.system.checks import MISSING, NA, OK, WARN, Check, by_name, guarded
from vnuma_sched.system.doctor_vnuma import vnuma_checks

# dmesg lines that prove (True) or disprove (False) a PV feature when CPUID is unreadable
DMESG_EVIDENCE = {
    "pv_unhalt": [("PV spinlocks enabled", True), ("PV spinlocks disabled, no host support", False)],
    "pv_tlb_flush": [("setup pv remote TLB flush", True)],
    "pv_send_ipi": [("setup PV IPIs", True)],
    "sched_yield": [("setup PV sched yield", True)],
    "poll_control": [("host does not support poll control", False)],
    "realtime_hint": [("PV spinlocks disabled with KVM_HINTS_REALTIME", True)],
}


@dataclass
class DoctorEnv:
    sysroot: object
    euid: int
    cpuid: Optional[Callable] = None        # cpuid(leaf) -> (eax, ebx, ecx, edx)
    bcc_check: Optional[Callable] = None    # () -> (status, detail)
    steal_sample: Optional[Callable] = None  # () -> doctor_vnuma.TickSample (None: since boot)
    _log: Optional[list] = None

    def kernel_log(self):
        if self._log is None:
            try:
                self._log = self.sysroot.kernel_log()
            except VnumaError:
                self._log = []
        return self._log

    def log_has(self, text):
        return any(text in line for line in self.kernel_log())


def check_kernel(env):
    release = facts.release(env.sysroot)
    version = facts.parse_version(release)
    return Check("kernel", OK if version else WARN, release, {"version": version})


def _cpuid_pv(env):
    """(source, is_kvm, features) from CPUID, or None when CPUID is unreadable."""
    if env.cpuid is None:
        return None
    try:
        base = cpuid_mod.find_kvm_base(env.cpuid)
        if base is None:
            return ("CPUID", False, {})
        eax, _, _, edx = env.cpuid(base + 1)
    except OSError:
        return None
    return (f"CPUID {base + 1:#x}", True, cpuid_mod.decode_features(eax, edx))


def check_hypervisor(env):
    pv = _cpuid_pv(env)
    if pv is not None:
        src, is_kvm, feats = pv
        detail = "KVM guest" if is_kvm else "not a KVM guest"
        return Check("hypervisor", OK if is_kvm else NA, f"{detail} ({src})",
                     {"kvm": is_kvm, "features": feats, "source": src})
    if env.log_has("Hypervisor detected: KVM"):
        return Check("hypervisor", OK, "KVM guest (dmesg: 'Hypervisor detected: KVM')",
                     {"kvm": True, "features": None, "source": "dmesg"})
    if facts.hypervisor_flag(env.sysroot):
        return Check("hypervisor", WARN, "a guest of an unidentified hypervisor (cpuinfo flag)",
                     {"kvm": None, "features": None, "source": "cpuinfo"})
    return Check("hypervisor", NA, "no hypervisor seen (CPUID unreadable, no dmesg line)",
                 {"kvm": False, "features": None, "source": "none"})


def _dmesg_feature(env, name):
    for text, exposed in DMESG_EVIDENCE.get(name, []):
        if env.log_has(text):
            return exposed, f"dmesg: '{text}'"
    return None, None


def check_pv_features(env, hv):
    """One row per KVM PV feature and hint; CPUID first, then dmesg evidence."""
    checks = []
    names = list(cpuid_mod.KVM_FEATURES) + list(cpuid_mod.KVM_HINTS)
    labels = {**cpuid_mod.KVM_FEATURES, **cpuid_mod.KVM_HINTS}
    for name in names:
        label = labels[name][1]
        if hv.data.get("kvm") is False:
            checks.append(Check(f"pv:{name}", NA, f"{label}: not a KVM guest"))
            continue
        feats = hv.data.get("features")
        if feats is not None:
            exposed, src = feats[name], hv.data["source"]
        else:
            exposed, src = _dmesg_feature(env, name)
            if exposed is None and name == "steal_time" and facts.steal_ticks(env.sysroot) > 0:
                exposed, src = True, "/proc/stat: steal accrued"
        if exposed is None:
            checks.append(Check(f"pv:{name}", WARN, f"{label}: unknown (CPUID unreadable, "
                                "no dmesg evidence)", {"exposed": None}))
        else:
            checks.append(Check(f"pv:{name}", OK if exposed else MISSING,
                                f"{label} {'exposed' if exposed else 'not exposed'} ({src})",
                                {"exposed": exposed}))
    return checks


def check_pv_spinlocks(env):
    for line in env.kernel_log():
        if "PV spinlocks enabled" in line:
            return Check("pv_spinlocks", OK, "in use (dmesg)", {"in_use": True})
        if "PV spinlocks disabled" in line:
            return Check("pv_spinlocks", MISSING, line.split(": ", 1)[-1].strip(),
                         {"in_use": False})
    return Check("pv_spinlocks", WARN, "unknown: no 'PV spinlocks' line in dmesg",
                 {"in_use": None})


def check_steal(env):
    ticks = facts.steal_ticks(env.sysroot)
    if ticks > 0:
        return Check("steal_time", OK, f"accruing: {ticks} ticks since boot (/proc/stat)",
                     {"ticks": ticks})
    return Check("steal_time", WARN, "none accrued since boot (/proc/stat)", {"ticks": 0})


def check_cpuidle(env):
    base = "/sys/devices/system/cpu/cpuidle"
    driver = env.sysroot.read_optional(f"{base}/current_driver")
    if driver is None or driver.strip() in ("", "none"):
        return Check("cpuidle", MISSING, "no cpuidle driver: idle is default_idle() HLT",
                     {"driver": None})
    gov = (env.sysroot.read_optional(f"{base}/current_governor")
           or env.sysroot.read_optional(f"{base}/current_governor_ro") or "?")
    return Check("cpuidle", OK, f"driver {driver.strip()}, governor {gov.strip()}",
                 {"driver": driver.strip(), "governor": gov.strip()})


def check_bcc(env):
    if not env.sysroot.is_live:
        return Check("bcc", NA, "recorded tree: bcc is checked on live systems only")
    if env.euid != 0:
        return Check("bcc", WARN, "needs root (CAP_BPF/CAP_SYS_ADMIN) to compile and load")
    if env.bcc_check is None:
        return Check("bcc", NA, "not checked")
    status, detail = env.bcc_check()
    return Check("bcc", status, detail)


def check_btf(env):
    if env.sysroot.exists(facts.BTF_VMLINUX):
        return Check("btf", OK, facts.BTF_VMLINUX)
    return Check("btf", MISSING, f"no {facts.BTF_VMLINUX} (CONFIG_DEBUG_INFO_BTF=n)")


def check_fs(env, fstype, hint):
    where = facts.mounts(env.sysroot).get(fstype)
    if where:
        return Check(fstype, OK, f"mounted at {where}", {"path": where})
    return Check(fstype, MISSING, f"not mounted ({hint})")


def check_kprobes(env):
    tracefs = facts.mounts(env.sysroot).get("tracefs")
    evidence = facts.kprobes_evidence(env.sysroot, tracefs)
    if evidence:
        return Check("kprobes", OK, evidence)
    return Check("kprobes", MISSING, "kernel without CONFIG_KPROBES: kprobe-based probes "
                 "unsupported (tracepoints still work)")


def check_lockdown(env):
    mode = facts.read_lockdown(env.sysroot)
    if mode is None and "securityfs" not in facts.mounts(env.sysroot):
        # the file lives on securityfs: without it a locked-down kernel looks unlocked
        return Check("lockdown", WARN, "unknown: securityfs not mounted (mount -t securityfs "
                     "nodev /sys/kernel/security)", {"mode": "unknown"})
    if mode is None:
        return Check("lockdown", OK, f"none (no {facts.LOCKDOWN})", {"mode": "none"})
    if mode == "none":
        return Check("lockdown", OK, "none", {"mode": mode})
    why = {"integrity": "debugfs writes denied: debugfs knobs unsupported",
           "confidentiality": "kprobes and BPF reads denied: probes cannot run"}
    return Check("lockdown", WARN, f"{mode}: {why.get(mode, 'unknown mode')}", {"mode": mode})


def check_patches(env):
    """Patched: the kvm_guest parameter, or the series' features in debugfs (when it can
    be read); a feature gate that cannot be read is neither present nor missing."""
    states = facts.patch_gate_states(env.sysroot)
    present = [g for g, s in states.items() if s]
    missing = [g for g, s in states.items() if s is False]
    unknown = [g for g, s in states.items() if s is None]
    data = {"gates": present, "unknown": unknown}
    note = (f"; {', '.join(unknown)} not checked: {facts.SCHED_FEATURES} not readable"
            if unknown else "")
    if not present:
        return Check("vnuma_patches", MISSING, "unpatched kernel (no vnuma_sched gates; "
                     f"see 'vnuma-sched patches'){note}", data)
    if missing:
        return Check("vnuma_patches", WARN, "partly patched, missing: " + ", ".join(missing)
                     + note, data)
    return Check("vnuma_patches", OK, "patched: " + ", ".join(present) + note, data)


def check_parking(env):
    """Can vCPUs be parked here ('vnuma-sched share')? cgroup v2, the cpuset controller,
    isolated partitions, writable IRQ affinities; what is missing is unsupported, with
    the reason, never an error."""
    facts_ = share_kernel.cgroup_facts(env.sysroot) + [share_kernel.irq_writable(env.sysroot)]
    return [Check(f"parking:{f.name}", OK if f.ok else MISSING,
                  f.detail if f.ok else f"unsupported: {f.detail}", {"ok": f.ok})
            for f in facts_]


def run_checks(env):
    """All checks, in display order."""
    checks = guarded("kernel", check_kernel, env)
    hv = guarded("hypervisor", check_hypervisor, env)
    checks += hv
    checks += guarded("pv", check_pv_features, env, hv[0])
    for name, fn in (("pv_spinlocks", check_pv_spinlocks), ("steal_time", check_steal),
                     ("cpuidle", check_cpuidle)):
        checks += guarded(name, fn, env)
    checks += vnuma_checks(env, by_name(checks))
    for name, fn in (("bcc", check_bcc), ("btf", check_btf), ("kprobes", check_kprobes),
                     ("lockdown", check_lockdown), ("vnuma_patches", check_patches),
                     ("parking", check_parking)):
        checks += guarded(name, fn, env)
    checks += guarded("tracefs", check_fs, env, "tracefs",
                      "mount -t tracefs nodev /sys/kernel/tracing")
    checks += guarded("debugfs", check_fs, env, "debugfs",
                      "mount -t debugfs nodev /sys/kernel/debug")
    return checks


SERIES_FEATURES = [g for g in facts.PATCH_GATES if g.startswith(facts.FEATURE_GATE)]


def _gate_mitigation(c, gates, what):
    """The series' switches against a problem: here (patched), here as far as can be
    told (the features cannot be read), or a guest patch away."""
    data = c["vnuma_patches"].data
    if all(g in data.get("gates", []) for g in gates):
        return f"{what} (this kernel is patched)"
    if data.get("gates") and all(g in data.get("gates", []) + data.get("unknown", [])
                                 for g in gates):
        return f"{what} (this kernel is patched; its sched features cannot be read here)"
    return f"guest patch: {what} (vnuma-sched patches)"


def _problem1(c):
    hv, steal = c.get("hypervisor"), c.get("pv:steal_time")
    if hv is None or hv.data.get("kvm") is False:
        exposure = "no: not a KVM guest"
    elif hv.data.get("kvm") is None:
        exposure = "unknown: hypervisor not identified (CPUID is readable by root only)"
    elif steal is not None and steal.data.get("exposed") is False:
        exposure = "no: no steal time, vcpu_is_preempted() is always false"
    else:
        exposure = ("possible: KVM steal time exposes vcpu_is_preempted(); the host "
                    "decides (<= 5.18 flags halted vCPUs). Measure: idle CPUs rejected "
                    "as preempted")
    mit = [_gate_mitigation(c, ["kvm_guest.idle_halt_hint"],
                            "kvm_guest.idle_halt_hint=auto|on")]
    if c.get("cpuidle") is not None and c["cpuidle"].data.get("driver") == "haltpoll":
        mit.append("haltpoll cpuidle: guest polling before HLT (active)")
    mit.append("host: halt polling or QEMU -overcommit cpu-pm=on")
    return {"problem": "1: halted vCPU reported preempted", "exposure": exposure,
            "mitigations": mit}


def _problem2(c):
    vn = c.get("vnuma")
    with_cpus = vn.data.get("nodes_with_cpus") if vn is not None else None
    if with_cpus is None:   # the layout could not be read: cannot tell
        exposure = ("unknown: the NUMA layout could not be read"
                    + (f" ({vn.detail})" if vn is not None else ""))
    elif with_cpus >= 2:
        exposure = "yes: tasks can be pulled across nodes by newidle balance and wake_affine"
    else:
        exposure = "no: fewer than 2 nodes with CPUs"
    names = ", ".join(g[len(facts.FEATURE_GATE):] for g in SERIES_FEATURES)
    noun = "sched feature" if len(SERIES_FEATURES) == 1 else "sched features"
    mit = [_gate_mitigation(c, SERIES_FEATURES, f"{noun} {names} (wake-ups)")]
    mit.append("boot: relax_domain_level (no newidle balance across nodes)")
    lock = c["lockdown"].data.get("mode", "none")
    if c["debugfs"].status == OK and lock == "none":
        mit.append("debugfs: sched features (NO_WA_WEIGHT, NO_WA_IDLE, NI_RANDOM)")
    mit.append("sysctl kernel.numa_balancing=0 (no NUMA-balancing moves)")
    mit.append("application: OMP_PROC_BIND, GOMP_SPINCOUNT")
    return {"problem": "2: idle-time cross-node migration", "exposure": exposure,
            "mitigations": mit}


def verdict(checks):
    """Which of the two problems this guest can see, and what is available against it."""
    c = by_name(checks)
    return [_problem1(c), _problem2(c)]
