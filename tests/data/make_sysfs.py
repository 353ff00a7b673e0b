#!/usr/bin/env python3
"""Write the synthetic sysfs fixture trees under tests/data/sysfs/ and record this machine.

Usage:
    python3 tests/data/make_sysfs.py            # rewrite the synthetic trees
    python3 tests/data/make_sysfs.py --record NAME   # record the live machine as NAME

The synthetic trees describe real machines (layouts from their vendors'
documentation and lscpu output); only the files the toolkit reads are written.
"""

import os
import shutil
import sys
from pathlib import Path

from vnuma_sched.system.topology import parse_cpulist

HERE = Path(__file__).resolve().parent / "sysfs"
GIB_KB = 1024 * 1024

# name: (osrelease, [(cpulist, mem_kb)], distance matrix, extra files)
SYNTHETIC = {
    "qemu-2node": ("6.12.117", [("0-1", GIB_KB - 65536), ("2-3", GIB_KB - 12288)],
                   [[10, 21], [21, 10]], "tcg"),
    "xeon-8160-2s": ("6.1.0-26-amd64", [("0-23,48-71", 191 * GIB_KB), ("24-47,72-95", 192 * GIB_KB)],
                     [[10, 21], [21, 10]], "metal"),
    "tr-2990wx": ("6.12.117", [("0-7,32-39", 64 * GIB_KB), ("16-23,48-55", 0),
                               ("8-15,40-47", 64 * GIB_KB), ("24-31,56-63", 0)],
                  [[10, 16, 16, 16], [16, 10, 16, 16], [16, 16, 10, 16], [16, 16, 16, 10]], "metal"),
    # a Full-vNUMA KVM guest of a 2-socket host, one vCPU per node, on dedicated host CPUs
    "kvm-2node-dedicated": ("6.12.117", [("0", GIB_KB - 65536), ("1", GIB_KB - 12288)],
                            [[10, 21], [21, 10]], "kvm"),
}

KMSG = {
    "tcg": ["Linux version {rel} (gcc) #1 SMP PREEMPT_DYNAMIC",
            "ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x3fffffff]",
            "NUMA: Node 0 [mem 0x00000000-0x3fffffff]"],
    "metal": ["Linux version {rel} (gcc) #1 SMP PREEMPT_DYNAMIC",
              "smpboot: CPU0: Intel(R) Xeon(R) CPU"],
    "kvm": ["Linux version {rel} (gcc) #1 SMP PREEMPT_DYNAMIC", "Hypervisor detected: KVM",
            "kvm-guest: setup PV IPIs",
            "kvm-guest: PV spinlocks disabled with KVM_HINTS_REALTIME hints"],
}
# the physical package of each node's CPUs: QEMU 7.2's q35 with a plain -smp N (what
# virtme-ng passes) makes one socket of N cores; a 2-socket Xeon has a package per node;
# a Threadripper 2990WX is one package of four dies (nodes)
PACKAGES = {"qemu-2node": [0, 0], "xeon-8160-2s": [0, 1], "tr-2990wx": [0, 0, 0, 0],
            "kvm-2node-dedicated": [0, 1]}
# cpuidle driver and governor (haltpoll loads by itself with KVM_HINTS_REALTIME)
CPUIDLE = {"tcg": ("none", "menu"), "metal": ("intel_idle", "menu"),
           "kvm": ("haltpoll", "haltpoll")}
FLAGS = {"tcg": "fpu vme de pse tsc msr pae hypervisor", "metal": "fpu vme de pse tsc msr pae",
         "kvm": "fpu vme de pse tsc msr pae hypervisor"}


def write(root, path, text):
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def ncpus(nodes):
    return sum(len(parse_cpulist(c)) for c, _ in nodes)


def proc_stat(kind, n):
    """/proc/stat: the "cpu" line; per-CPU lines too for a KVM guest (its steal sample)."""
    if kind != "kvm":
        return "cpu  100 0 50 10000 5 0 1 0 0 0\n"
    per_cpu = [50, 0, 25, 5000, 2, 0, 0, 1, 0, 0]   # a tick of steal: the host gives it
    lines = [("cpu ", [n * t for t in per_cpu])] + [(f"cpu{c}", per_cpu) for c in range(n)]
    return "".join(f"{name} {' '.join(map(str, ticks))}\n" for name, ticks in lines)


def synth(name, rel, nodes, dist, kind):
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    for i, (cpus, mem) in enumerate(nodes):
        base = f"/sys/devices/system/node/node{i}"
        write(root, f"{base}/cpulist", cpus + "\n")
        write(root, f"{base}/meminfo", f"Node {i} MemTotal:       {mem} kB\n"
              f"Node {i} MemFree:        {mem // 2} kB\n")
        write(root, f"{base}/distance", " ".join(map(str, dist[i])) + "\n")
        for cpu in parse_cpulist(cpus):
            write(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id",
                  f"{PACKAGES[name][i]}\n")
    n = ncpus(nodes)
    write(root, "/sys/devices/system/cpu/online", f"0-{n - 1}\n")
    write(root, "/sys/devices/system/cpu/cpuidle/current_driver", CPUIDLE[kind][0] + "\n")
    write(root, "/sys/devices/system/cpu/cpuidle/current_governor", CPUIDLE[kind][1] + "\n")
    write(root, "/proc/sys/kernel/osrelease", rel + "\n")
    write(root, "/proc/meminfo", f"MemTotal:       {sum(m for _, m in nodes)} kB\n")
    write(root, "/proc/stat", proc_stat(kind, n))
    write(root, "/proc/cpuinfo", f"processor\t: 0\nflags\t\t: {FLAGS[kind]}\n")
    write(root, "/proc/mounts", "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    write(root, "/dev/kmsg", "".join(f"6,{i},{i * 1000},-;{line.format(rel=rel)}\n"
                                     for i, line in enumerate(KMSG[kind])))


RECORD_FILES = [
    "/proc/sys/kernel/osrelease", "/proc/meminfo", "/proc/stat", "/proc/cpuinfo",
    "/proc/mounts", "/sys/devices/system/cpu/online",
    "/sys/devices/system/cpu/cpuidle/current_driver",
    "/sys/devices/system/cpu/cpuidle/current_governor",
    "/sys/kernel/security/lockdown",
]


KEEP_FS = {"proc", "sysfs", "tracefs", "debugfs", "securityfs", "devtmpfs"}
KEEP_LOG = ("Hypervisor detected", "kvm-guest", "PV spinlocks", "kvm-clock", "haltpoll",
            "stealtime", "poll control", "NUMA", "smpboot")


def record(name):
    """Copy what the toolkit reads from the live machine (kallsyms reduced to kprobe symbols)."""
    sys.path.insert(0, str(HERE.parent.parent.parent))
    from vnuma_sched.system.sysroot import SysRoot  # noqa: PLC0415 - after the sys.path insert

    live, root = SysRoot("/"), HERE / name
    shutil.rmtree(root, ignore_errors=True)
    for path in RECORD_FILES:
        text = live.read_optional(path)
        if text is not None and path == "/proc/mounts":
            text = "\n".join(ln for ln in text.splitlines() if ln.split()[2] in KEEP_FS)
        if text is not None:
            write(root, path, text + "\n")
    for node in live.listdir("/sys/devices/system/node"):
        if node.startswith("node") and node[4:].isdigit():
            for f in ("cpulist", "meminfo", "distance"):
                p = f"/sys/devices/system/node/{node}/{f}"
                write(root, p, live.read(p) + "\n")
    for cpu in live.listdir("/sys/devices/system/cpu"):
        p = f"/sys/devices/system/cpu/{cpu}/topology/physical_package_id"
        if cpu[3:].isdigit() and live.exists(p):
            write(root, p, live.read(p) + "\n")
    if live.exists("/sys/kernel/btf/vmlinux"):
        write(root, "/sys/kernel/btf/vmlinux", "")  # presence only
    syms = [ln for ln in live.read("/proc/kallsyms").splitlines()
            if ln.endswith((" register_kprobe", " kvm_wait", " kvm_kick_cpu"))]
    write(root, "/proc/kallsyms", "".join(s + "\n" for s in syms))
    log = [m for m in live.kernel_log()
           if any(k in m for k in KEEP_LOG) and "command line" not in m.lower()]
    write(root, "/dev/kmsg", "".join(f"6,{i},0,-;{m}\n" for i, m in enumerate(log)))


def main(argv):
    sys.path.insert(0, str(HERE.parent.parent.parent))
    if argv[:1] == ["--record"]:
        record(argv[1])
        return
    for name, spec in SYNTHETIC.items():
        synth(name, *spec)


if __name__ == "__main__":
    os.umask(0o022)
    main(sys.argv[1:])
