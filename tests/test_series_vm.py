"""vm tier: the patched 6.12 kernel (with the debug emulation and lockdep) as a 2-node
guest: every gate exists with its default and switches at run time, a sleep/wake
workload with every gate on leaves dmesg clean, and the emulated old host rejects
idle CPUs as preempted with the hint off but not with it on."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import VNUMA

pytestmark = pytest.mark.vm

SCRIPT = Path(__file__).parent / "guest" / "gates_check.py"
SPLAT = re.compile(r"WARNING:|BUG:|possible circular locking|inconsistent lock state|"
                   r"sleeping function called from invalid context|Call Trace:")


@pytest.fixture(scope="module")
def guest_report(patched_build_612):
    res = subprocess.run([VNUMA, "vm", "run", "--kernel", str(patched_build_612),
                          "--topology", "2x2", "--mem", "2G", "--timeout", "400", "--",
                          "/usr/bin/python3", str(SCRIPT)],
                         capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_gate_defaults(guest_report):
    assert guest_report["defaults"] == {
        "kernel.sched_numa_idle_damp": "0",
        "kernel.sched_numa_newidle_min_ns": "500000",
        "kernel.sched_steal_idle_nocap": "0",
        "kvm_guest.idle_halt_hint": "auto",
        "kvm_guest.wait_poll_ns": "0",
        "vnuma_debug.emulate_halt_preempted": "N",
    }
    assert guest_report["read_only"]["kvm_guest.pvspin"] == {"value": "auto", "mode": "0o444"}


def test_gates_switch_at_run_time(guest_report):
    assert guest_report["switched"] == {
        "kernel.sched_numa_idle_damp": "3",
        "kernel.sched_numa_newidle_min_ns": "2000000",
        "kernel.sched_steal_idle_nocap": "1",
        "kvm_guest.idle_halt_hint": "on",
        "kvm_guest.wait_poll_ns": "50000",
        "vnuma_debug.emulate_halt_preempted": "Y",
    }


def test_emulated_old_host_is_corrected_by_the_hint(guest_report):
    assert guest_report["emulated_preempted_hint_off"] > 0
    assert guest_report["emulated_preempted_hint_on"] == 0


def test_clean_dmesg_with_every_gate_on(guest_report):
    dmesg = guest_report["dmesg"]
    assert "lockdep" not in dmesg.lower() or "Lock dependency validator" in dmesg
    splats = [ln for ln in dmesg.splitlines() if SPLAT.search(ln)]
    assert splats == [], "\n".join(splats[:20])
    assert guest_report["workload_seconds_all_gates_on"] > 0


def test_kunit_suites_passed_at_boot(guest_report):
    dmesg = guest_report["dmesg"]
    assert re.search(r"^(\[[ .0-9]+\] )?ok \d+ sched_numa_newidle_damp$", dmesg, re.M), \
        dmesg[-2000:]
    assert not re.search(r"not ok \d+", dmesg)


def test_dedicated_profile_switches_gates_and_revert_restores(patched_build_612):
    gates = ("/proc/sys/kernel/sched_numa_idle_damp /proc/sys/kernel/sched_steal_idle_nocap "
             "/sys/module/kvm_guest/parameters/idle_halt_hint")
    script = (f"{VNUMA} tune apply vnuma-guest-dedicated >&2 && cat {gates} && echo --- && "
              f"{VNUMA} tune revert >&2 && cat {gates}")
    res = subprocess.run([VNUMA, "vm", "run", "--kernel", str(patched_build_612),
                          "--topology", "2x2", "--timeout", "300", "--", "sh", "-c", script],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    applied, reverted = res.stdout.split("---\n")
    assert applied.split() == ["3", "1", "on"]
    assert reverted.split() == ["0", "0", "auto"]
