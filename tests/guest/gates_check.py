#!/usr/bin/env python3
"""Runs inside a guest booted from the patched kernel; prints one JSON document.

Reads every gate of the series (its default), flips each at run time and reads
it back, counts how often the emulated old host reports a CPU halted in idle as
preempted with the idle-halt hint off, on, and auto (which must detect the old
host and then stop it), and runs a sleep/wake workload with every gate on
(kretprobe through tracefs, no bcc needed).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workloads"))
import sleepwake  # noqa: E402

MODULE_GATES = {
    "kvm_guest.idle_halt_hint": ("/sys/module/kvm_guest/parameters/idle_halt_hint", "on"),
    "vnuma_debug.emulate_halt_preempted": (
        "/sys/module/vnuma_debug/parameters/emulate_halt_preempted", "Y"),
}
FEATURES = ("NUMA_WAKE_PREV",)
FEATURES_FILE = "/sys/kernel/debug/sched/features"
HINT = MODULE_GATES["kvm_guest.idle_halt_hint"][0]
EMULATE = MODULE_GATES["vnuma_debug.emulate_halt_preempted"][0]
TRACING = "/sys/kernel/tracing"
PROBE = "vnuma/emul_preempted"
EMULATION_FN = "__kvm_debug_vcpu_is_preempted"
# "auto" decides per CPU after 256 flagged vCPUs; one workload round gives thousands,
# spread over the CPUs: a few rounds at most until one round sees none.
AUTO_ROUNDS = 4


def corrected_at_most(hint_off):
    """The flagged returns a corrected round may still have: 1 in 1000 of the hint-off
    count. A reader can load the marker set and, a moment later, see it cleared by the
    vCPU waking up; it then reports the (now running) vCPU preempted once."""
    return max(1, hint_off // 1000)


def dmesg():
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout


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


def ensure_mounted():
    if not os.path.exists(f"{TRACING}/kprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)
    if not os.path.exists(FEATURES_FILE):
        subprocess.run(["mount", "-t", "debugfs", "nodev", "/sys/kernel/debug"], check=True)


def feature(name):
    """"1" or "0" for a scheduler feature, as the features file shows it."""
    tokens = read(FEATURES_FILE).split()
    return "1" if name in tokens else "0" if f"NO_{name}" in tokens else "absent"


def set_feature(name, on):
    write(FEATURES_FILE, name if on else f"NO_{name}")


def count_emulated_preempted():
    """Returns of the emulation's vcpu_is_preempted() that said 'preempted' during a
    workload."""
    write(f"{TRACING}/trace", "")
    write(f"{TRACING}/events/{PROBE}/enable", "1")
    sleep_wake()
    write(f"{TRACING}/events/{PROBE}/enable", "0")
    with open(f"{TRACING}/trace") as f:
        return sum(1 for line in f if not line.startswith("#") and "emul_preempted" in line)


def main():
    ensure_mounted()
    out = {"defaults": {}, "switched": {}}
    for name, (path, _value) in MODULE_GATES.items():
        out["defaults"][name] = read(path)
    for name in FEATURES:
        out["defaults"][f"feature.{name}"] = feature(name)
    for name, (path, value) in MODULE_GATES.items():
        old = read(path)
        write(path, value)
        out["switched"][name] = read(path)
        write(path, old)
    for name in FEATURES:
        set_feature(name, True)
        out["switched"][f"feature.{name}"] = feature(name)
        set_feature(name, False)
    # os.open: Python's "a" mode seeks to the end, which tracefs refuses
    fd = os.open(f"{TRACING}/kprobe_events", os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"r:{PROBE} {EMULATION_FN} ret=$retval:u8\n".encode())
    os.close(fd)
    write(f"{TRACING}/events/{PROBE}/filter", "ret != 0")
    write(EMULATE, "Y")
    write(HINT, "off")
    out["emulated_preempted_hint_off"] = count_emulated_preempted()
    write(HINT, "on")
    out["emulated_preempted_hint_on"] = count_emulated_preempted()
    out["corrected_at_most"] = corrected_at_most(out["emulated_preempted_hint_off"])
    # "auto" detects the (emulated) old host after a sample of flagged vCPUs, then
    # stays on for the rest of the boot
    write(HINT, "auto")
    rounds, corrected = [], corrected_at_most(out["emulated_preempted_hint_off"])
    while len(rounds) < AUTO_ROUNDS and (not rounds or rounds[-1] > corrected):
        rounds.append(count_emulated_preempted())
    out["emulated_preempted_auto_rounds"] = rounds
    out["kvm_guest_log"] = [ln for ln in dmesg().splitlines() if "kvm-guest" in ln]
    for name, (path, value) in MODULE_GATES.items():
        write(path, value)
    for name in FEATURES:
        set_feature(name, True)
    out["workload_seconds_all_gates_on"] = sleep_wake()
    out["dmesg"] = dmesg()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
