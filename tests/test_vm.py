"""vm tier: the project's guest kernel booted as a 2-node guest under QEMU."""

import json
import subprocess

import pytest
from helpers import VNUMA, debian_source_version

pytestmark = pytest.mark.vm


def vm_run(build, *cmd, timeout=240, extra=()):
    argv = [VNUMA, "vm", "run", "--kernel", str(build), "--topology", "2x2", "--mem", "2G",
            "--timeout", str(timeout), *extra, "--", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60)


def qemu_pids():
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_guest_sees_two_nodes(guest_build):
    res = vm_run(guest_build, VNUMA, "--json", "topology")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [n["cpus"] for n in doc["nodes"]] == [[0, 1], [2, 3]]
    assert [n["distances"] for n in doc["nodes"]] == [[10, 21], [21, 10]]
    assert all(n["mem_kb"] > 900 * 1024 for n in doc["nodes"])


def test_doctor_inside_the_guest(guest_build):
    res = vm_run(guest_build, VNUMA, "--json", "doctor")
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["vnuma"]["status"] == "ok" and "2 nodes" in checks["vnuma"]["detail"]
    assert checks["kernel"]["detail"].startswith(debian_source_version("6.12"))
    # TCG exposes no KVM leaf: the guest must not be reported as a KVM guest
    assert checks["hypervisor"]["status"] != "ok"
    assert checks["kprobes"]["status"] == "ok"  # CONFIG_KPROBES=y in the fragment
    # Full vNUMA as a guest sees it: two nodes with memory, pinning unknown (no KVM leaf)
    assert checks["vnuma:memory"]["status"] == "ok"
    assert checks["vnuma:pinned"]["status"] == "warn"
    assert "cannot see host pinning" in checks["vnuma:pinned"]["detail"]


def test_exit_code_comes_back(guest_build):
    res = vm_run(guest_build, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert res.returncode == 7
    assert res.stdout == "out\n" and "err" in res.stderr


def test_timeout_kills_the_guest(guest_build):
    before = qemu_pids()
    res = vm_run(guest_build, "sleep", "600", timeout=20)
    assert res.returncode == 124
    assert "guest timeout" in res.stderr
    assert qemu_pids() <= before
