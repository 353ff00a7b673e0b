"""vm tier: Full-vNUMA placement for real. QEMU's vCPU threads are pinned through
QMP and guest memory is bound, checked from the host side (/proc of the QEMU
process), not from what the tool says it did."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers import VNUMA

from vnuma_sched.kernel import layout, qmp, vm
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology

pytestmark = pytest.mark.vm

QEMU = "qemu-system-x86_64"


def host():
    return read_topology(SysRoot("/"))


def two_node_placement(tmp_path):
    """A 2-node guest, one vCPU per node, on the host's first two CPUs (1:1), each
    node's memory bound to the host node of its CPU."""
    h = host()
    cpus = layout.host_order(h)
    assert len(cpus) >= 2, "the vm tier needs a host with 2 CPUs"
    nodes = [{"cpus": [i], "distances": [10, 21] if i == 0 else [21, 10],
              "host_cpus": [cpus[i]], "host_node": h.node_of(cpus[i])} for i in range(2)]
    spec = tmp_path / "placed.json"
    spec.write_text(json.dumps({"nodes": nodes}))
    return spec, vm.parse_topology(str(spec), 1024, h)


def vcpu_threads(pid):
    """{vCPU index: allowed host CPUs} of QEMU ``pid``'s 'CPU n/TCG' (or /KVM) threads."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        m = re.fullmatch(r"CPU (\d+)/\w+", (task / "comm").read_text().strip())
        if m:
            status = (task / "status").read_text()
            allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)
            out[int(m.group(1))] = allowed
    return out


def bound_nodes(pid):
    """The nodes of the 'bind:' policies on QEMU's memfd guest-memory mappings."""
    text = Path(f"/proc/{pid}/numa_maps").read_text()
    return [m.group(1) for m in re.finditer(r" bind:(\S+) file=/memfd:memory-backend", text)]


def qemu_stopped(tmp_path, topo):
    sock = tmp_path / "qmp.sock"
    argv = [QEMU, "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", str(topo.ncpus),
            "-m", f"{topo.mem_mb}M", "-display", "none", "-nodefaults", "-S",
            "-name", "vnuma-test,debug-threads=on",
            "-qmp", f"unix:{sock},server=on,wait=off"]
    for i, node in enumerate(topo.nodes):
        argv += ["-object", layout.backend_object(i, node),
                 "-numa", f"node,memdev={layout.BACKEND_ID.format(i)},cpus={node.cpus[0]}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), sock


def test_pinner_pins_qemus_vcpu_threads_then_lets_it_run(tmp_path):
    _, topo = two_node_placement(tmp_path)
    proc, sock = qemu_stopped(tmp_path, topo)
    try:
        pinner = qmp.Pinner(sock, topo, timeout=30).start()
        pinner._thread.join(30)
        assert pinner.error == "" and pinner.result
        want = {v: str(h) for v, h in layout.vcpu_hosts(topo).items()}
        assert vcpu_threads(proc.pid) == want
        assert bound_nodes(proc.pid) == [str(n.host_node) for n in topo.nodes]
        assert proc.poll() is None          # 'cont' sent, QEMU still running
    finally:
        proc.kill()
        proc.wait()


def test_pinner_stops_qemu_when_memory_is_not_bound_as_placed(tmp_path):
    _, topo = two_node_placement(tmp_path)
    proc, sock = qemu_stopped(tmp_path, layout.unpinned(topo))   # QEMU: unbound memory
    try:
        pinner = qmp.Pinner(sock, topo, timeout=30).start()
        pinner._thread.join(30)
        assert "memory is default" in pinner.error
        assert proc.wait(timeout=20) == 0   # QMP 'quit', not left running unplaced
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def children(pid):
    """Every descendant of ``pid`` (from /proc's parent links)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo += kids
    return out


def test_full_vnuma_guest_is_pinned_and_bound_seen_from_the_host(guest_build, tmp_path):
    spec, topo = two_node_placement(tmp_path)
    want = {v: str(h) for v, h in layout.vcpu_hosts(topo).items()}
    # the guest's root is an overlay: a file it writes never reaches the host, so
    # the host side polls QEMU while the guest sleeps
    argv = [VNUMA, "vm", "run", "--kernel", str(guest_build), "--topology", str(spec),
            "--mem", "1G", "--timeout", "240", "--json", "--", "sh", "-c",
            "cat /sys/devices/system/node/online; sleep 20"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_threads, seen_bind = {}, []
    deadline = time.monotonic() + 200
    while proc.poll() is None and time.monotonic() < deadline and seen_threads != want:
        time.sleep(0.2)
        qemus = [p for p in children(proc.pid) if _exe(p) == QEMU]
        if len(qemus) == 1:
            try:
                seen_threads, seen_bind = vcpu_threads(qemus[0]), bound_nodes(qemus[0])
            except OSError:
                pass
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert seen_threads == want
    assert seen_bind == [str(n.host_node) for n in topo.nodes]
    doc = json.loads(out)
    assert doc["stdout"].startswith("0-1")             # the guest has both nodes
    assert {(v["vcpu"], v["host_cpu"]) for v in doc["placement"]["vcpus"]} == \
        set(layout.vcpu_hosts(topo).items())
    assert [m["policy"] for m in doc["placement"]["memory"]] == ["bind", "bind"]


def _exe(pid):
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def test_no_pin_boots_the_same_topology_unplaced(guest_build, tmp_path):
    spec, _ = two_node_placement(tmp_path)
    res = subprocess.run([VNUMA, "vm", "run", "--kernel", str(guest_build), "--topology",
                          str(spec), "--mem", "1G", "--no-pin", "--timeout", "240", "--json",
                          "--", "cat", "/sys/devices/system/node/online"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["placement"] is None and doc["stdout"].startswith("0-1")
