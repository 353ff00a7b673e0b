#!/usr/bin/env python3
"""Runs inside a guest booted from the patched kernel; prints one JSON document.

Reads every gate of the series (its default), flips each at run time and reads
it back, runs a sleep/wake workload with every gate on, and counts how often
the emulated old host reports a CPU halted in idle as preempted, with the
idle-halt hint off and then on (kretprobe through tracefs, no bcc needed).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workloads"))
import sleepwake  # noqa: E402

GATES = {
    "kernel.sched_numa_idle_damp": ("/proc/sys/kernel/sched_numa_idle_damp", "3"),
    "kernel.sched_numa_newidle_min_ns": ("/proc/sys/kernel/sched_numa_newidle_min_ns",
                                         "2000000"),
    "kernel.sched_steal_idle_nocap": ("/proc/sys/kernel/sched_steal_idle_nocap", "1"),
    "kvm_guest.idle_halt_hint": ("/sys/module/kvm_guest/parameters/idle_halt_hint", "on"),
    "kvm_guest.wait_poll_ns": ("/sys/module/kvm_guest/parameters/wait_poll_ns", "50000"),
    "vnuma_debug.emulate_halt_preempted": (
        "/sys/module/vnuma_debug/parameters/emulate_halt_preempted", "Y"),
}
READ_ONLY = {"kvm_guest.pvspin": "/sys/module/kvm_guest/parameters/pvspin"}
TRACING = "/sys/kernel/tracing"
PROBE = "vnuma/emul_preempted"


def read(path):
    with open(path) as f:
        return f.read().strip()


def write(path, value):
    with open(path, "w") as f:
        f.write(value)


def sleep_wake(pairs=3, rounds=1500):
    """tests/workloads/sleepwake.py, timed."""
    t0 = time.monotonic()
    sleepwake.main(pairs, rounds)
    return round(time.monotonic() - t0, 2)


def ensure_tracefs():
    if not os.path.exists(f"{TRACING}/kprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)


def count_emulated_preempted():
    """Returns of __vnuma_emul_vcpu_is_preempted() that said 'preempted' during a workload."""
    write(f"{TRACING}/trace", "")
    write(f"{TRACING}/events/{PROBE}/enable", "1")
    sleep_wake()
    write(f"{TRACING}/events/{PROBE}/enable", "0")
    with open(f"{TRACING}/trace") as f:
        return sum(1 for line in f if not line.startswith("#") and "emul_preempted" in line)


def main():
    out = {"defaults": {}, "switched": {}, "read_only": {}}
    for name, (path, value) in GATES.items():
        out["defaults"][name] = read(path)
    for name, path in READ_ONLY.items():
        out["read_only"][name] = {"value": read(path), "mode": oct(os.stat(path).st_mode & 0o777)}
    for name, (path, value) in GATES.items():
        old = read(path)
        write(path, value)
        out["switched"][name] = read(path)
        write(path, old)
    ensure_tracefs()
    # os.open: Python's "a" mode seeks to the end, which tracefs refuses
    fd = os.open(f"{TRACING}/kprobe_events", os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"r:{PROBE} __vnuma_emul_vcpu_is_preempted ret=$retval:u8\n".encode())
    os.close(fd)
    write(f"{TRACING}/events/{PROBE}/filter", "ret != 0")
    write(GATES["vnuma_debug.emulate_halt_preempted"][0], "Y")
    write(GATES["kvm_guest.idle_halt_hint"][0], "off")
    out["emulated_preempted_hint_off"] = count_emulated_preempted()
    write(GATES["kvm_guest.idle_halt_hint"][0], "on")
    out["emulated_preempted_hint_on"] = count_emulated_preempted()
    for name, (path, value) in GATES.items():
        write(path, value)
    out["workload_seconds_all_gates_on"] = sleep_wake()
    out["dmesg"] = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
