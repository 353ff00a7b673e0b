"""vm tier: the coordinator's channel to a real guest. A placed 2-node guest (one vCPU
per node, pinned 1:1) booted by 'vm run --agent-socket --qmp-socket' runs qemu-ga on
its virtio-serial port; from the host, the guest agent runs 'share status' in it, the
layout is read back through QMP, and a step parks vCPU 1 (the guest's own status
confirms it, its thread is fenced onto vCPU 0's host CPU) and gives it back. Then 'share host' itself: start, set, status, stop on that guest. The guest has a
virtio-mem device per node ('vm run --mem-hotplug'): 'share host set --mem' grows
guest node 1 by 256 MiB and gives it back, the guest's own MemTotal follows."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from helpers import VNUMA
from test_vm_pin import QEMU, _exe, children, two_node_placement, vcpu_threads

from vnuma_sched.kernel import qga
from vnuma_sched.share import host_plan as H
from vnuma_sched.share import host_state as S
from vnuma_sched.share.host_guests import AgentGuests, read_layout
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology

pytestmark = pytest.mark.vm

DONE = "/run/vnuma-agent-test.done"     # guest-local: made through the agent at the end
NAME = "vnuma-vm-tier"                  # vm run --name: the record 'share host start' finds
RECORD = f"/run/vnuma_sched/guests/{NAME}.json"
BOOT_S = 240
HOTPLUG_MB = 256                        # per guest node, on top of its boot memory


def wait_for_agent(sock, proc):
    """The first answer of the guest agent (it starts with the guest's command)."""
    deadline = time.monotonic() + BOOT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            return qga.run(sock, [VNUMA, "--json", "share", "status"], 20)
        except qga.NoAnswer:
            time.sleep(1)
    pytest.fail(f"no answer from the guest agent (vm run exited {proc.poll()})")


@pytest.fixture(scope="module")
def guest(guest_build, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("agent")
    spec, topo = two_node_placement(tmp_path)
    agent, qmp_sock = tmp_path / "qga.sock", tmp_path / "qmp.sock"
    script = (f"grep -q cgroup2 /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup; "
              f"while [ ! -e {DONE} ]; do sleep 0.2; done; echo bye")
    proc = subprocess.Popen([VNUMA, "vm", "run", "--kernel", str(guest_build), "--topology",
                             str(spec), "--mem", "1G", "--mem-hotplug", f"{HOTPLUG_MB}M",
                             "--timeout", "900", "--json",
                             "--agent-socket", str(agent), "--qmp-socket", str(qmp_sock),
                             "--name", NAME, "--", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = wait_for_agent(agent, proc)
        yield proc, topo, agent, qmp_sock, first
        qga.run(agent, ["touch", DONE], 30)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert json.loads(out)["stdout"] == "bye\n"     # the guest's command ended well
        assert not Path(RECORD).exists()                # vm run removed its record
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def qemu_of(proc):
    qemus = [p for p in children(proc.pid) if _exe(p) == QEMU]
    assert len(qemus) == 1
    return qemus[0]


def test_the_agent_channel_to_a_real_guest(guest):
    proc, topo, agent, qmp_sock, first = guest
    assert first.exitcode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert [(n["node"], n["used"], n["parked"]) for n in doc["nodes"]] == [(0, "0", ""),
                                                                          (1, "1", "")]
    # the layout QEMU has, read through QMP, is the placement vm run made
    lay = read_layout("g", qmp_sock)
    assert lay.hosts == {v: h for n in topo.nodes for v, h in zip(n.cpus, n.host_cpus)}
    # per guest node: its host node, its boot memory up to HOTPLUG_MB more (virtio-mem)
    assert lay.mem_bounds == tuple((i, n.host_node, n.mem_mb, n.mem_mb + HOTPLUG_MB)
                                   for i, n in enumerate(topo.nodes))
    record = S.GuestRecord(lay, str(qmp_sock), str(agent))
    io = AgentGuests(command=(VNUMA,), timeout=120, sysroot=SysRoot("/"))
    assert io.used("g", record) == [0, 1]
    whole, one = lay.whole(), H.share([0], lay.whole().mem)
    io.apply("g", record, whole, one)       # confirmed by the guest's own status
    status = json.loads(qga.run(agent, [VNUMA, "--json", "share", "status"], 60).stdout)
    assert (status["partition"], status["parked"]) == ("isolated", "1")
    assert vcpu_threads(qemu_of(proc)) == {0: str(lay.hosts[0]), 1: str(lay.hosts[0])}
    io.apply("g", record, one, whole)
    assert io.used("g", record) == [0, 1]
    assert vcpu_threads(qemu_of(proc)) == {v: str(h) for v, h in lay.hosts.items()}


def host_cli(*args):
    res = subprocess.run([VNUMA, "share", "host", *args], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_share_host_commands_on_a_real_guest(guest, tmp_path):
    proc, topo, agent, qmp_sock, _ = guest
    state = ["--state-dir", str(tmp_path / "state")]
    host_node = read_topology(SysRoot("/")).node_of(topo.nodes[0].host_cpus[0])
    listed = json.loads(subprocess.run([VNUMA, "vm", "list", "--json"], capture_output=True,
                                       text=True, check=True).stdout)["guests"]
    assert {"name": NAME, "running": True, "qmp": str(qmp_sock), "agent": str(agent),
            "pid": proc.pid} in [{k: g[k] for k in ("name", "running", "qmp", "agent", "pid")}
                                 for g in listed]
    # by the name vm run recorded: the same sockets
    out = json.loads(host_cli("start", "--guest", NAME, "--guest-command",
                              VNUMA, "--timeout", "120", "--json", *state))
    assert out["finished"] and out["steps"] == []      # alone, it keeps everything
    out = json.loads(host_cli("set", NAME, f"node{host_node}=1", "--json", *state))
    assert [(s["phase"], s["after"]["used"], s["state"]) for s in out["steps"]] == [
        ("give", [0], "done")]
    report = json.loads(host_cli("status", "--json", *state))
    (g,) = report["guests"]
    assert (g["used"], g["guest_says"], g["agrees"], g["behind"]) == ("0", "0", True, None)
    assert report["move"] is None
    host_cli("stop", *state)
    assert not (tmp_path / "state" / "state.json").exists()
    status = json.loads(qga.run(agent, [VNUMA, "--json", "share", "status"], 60).stdout)
    assert status["parked"] == ""


def node_mem_kb(agent, node):
    """MemTotal of guest node ``node``, read in the guest through its agent."""
    res = qga.run(agent, ["cat", f"/sys/devices/system/node/node{node}/meminfo"], 60)
    return int(re.search(r"MemTotal:\s+(\d+) kB", res.stdout).group(1))


def memory_status(state):
    """Guest node 1's memory as 'share host status' shows it."""
    (g,) = json.loads(host_cli("status", "--json", *state))["guests"]
    assert g["mem_agrees"] and g["agrees"], g
    return g["memory"][1]


def test_share_host_moves_memory_on_a_real_guest(guest, tmp_path):
    proc, topo, agent, qmp_sock, _ = guest
    state = ["--state-dir", str(tmp_path / "state")]
    boot = topo.nodes[1].mem_mb
    host_cli("start", "--guest", f"g={qmp_sock},{agent}", "--guest-command", VNUMA,
             "--timeout", "120", *state)
    before = node_mem_kb(agent, 1)
    assert memory_status(state)["plugged_mb"] == 0
    out = json.loads(host_cli("set", "--mem", f"g:node1={boot + 256}M", "--json", *state))
    assert [(s["phase"], s["after"]["mem_mb"]["1"], s["state"]) for s in out["steps"]] == [
        ("take", boot + 256, "done")]
    grown = node_mem_kb(agent, 1)
    assert grown - before >= 250 * 1024
    m = memory_status(state)
    assert (m["mem_mb"], m["plugged_mb"], m["guest_mb"]) == (boot + 256, 256, grown >> 10)
    out = json.loads(host_cli("set", "--mem", f"g:node1={boot}M", "--json", *state))
    assert [(s["phase"], s["after"]["mem_mb"]["1"], s["state"]) for s in out["steps"]] == [
        ("give", boot, "done")]
    back = node_mem_kb(agent, 1)
    assert abs(back - before) <= 4 * 1024
    m = memory_status(state)
    assert (m["mem_mb"], m["plugged_mb"], m["guest_mb"]) == (boot, 0, back >> 10)
    host_cli("stop", *state)
