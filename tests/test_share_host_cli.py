"""'vnuma-sched share host' end to end on a recorded 2-node host (qemu-2node) with two
guests behind fake agents (their 'share' commands emulated) and fake QMP layouts and
vCPU threads: start, set, status, a silent guest, resume, stop; bad input is one line
with exit 2."""

import functools
import json
import os
import shutil

import pytest
from click.testing import CliRunner
from helpers import DATA, golden
from share_host_fakes import FakeAgent, FakeGuestShare, mirror
from test_share_host_guests import Threads

from vnuma_sched import render
from vnuma_sched.cli import share_host
from vnuma_sched.cli.main import main
from vnuma_sched.kernel import guests
from vnuma_sched.share.host_guests import AgentGuests
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology

STATE = "run/vnuma_sched/share-host/state.json"


@pytest.fixture
def world(tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(DATA / "sysfs" / "qemu-2node", root)
    host = read_topology(SysRoot(root))
    layouts = {"a": mirror("a", host, mem=256), "b": mirror("b", host, first=1, mem=256)}
    threads = {n: Threads(g, root, base) for (n, g), base in zip(layouts.items(), (100, 200))}
    by_sock = {f"{tmp_path}/{n}-qmp.sock": threads[n] for n in layouts}
    of = lambda tid: threads["a" if tid < 200 else "b"]     # noqa: E731
    monkeypatch.setattr(share_host, "read_layout", lambda name, sock: layouts[name])
    monkeypatch.setattr(share_host, "AgentGuests", functools.partial(
        AgentGuests, query=lambda sock, cmds, t: by_sock[sock].query(sock, cmds, t),
        setaffinity=lambda tid, cpus: of(tid).setaffinity(tid, cpus),
        getaffinity=lambda tid: of(tid).affinity[tid],
        sleep=lambda s: [th.sleep(s) for th in threads.values()],
        clock=lambda: threads["a"].now))
    shells = {n: FakeGuestShare([[0, 1], [2, 3]]) for n in layouts}
    agents = [FakeAgent(tmp_path / f"{n}-qga.sock", shells[n], polls=1) for n in layouts]
    for agent in agents:
        agent.__enter__()
    yield root, tmp_path, shells, agents, threads
    for agent in agents:
        agent.__exit__(None, None, None)


def cli(root, *args):
    return CliRunner().invoke(main, ["--root", str(root), *args])


def start(root, tmp, *extra):
    return cli(root, "share", "host", "start",
               "--guest", f"a={tmp}/a-qmp.sock,{tmp}/a-qga.sock",
               "--guest", f"b={tmp}/b-qmp.sock,{tmp}/b-qga.sock", "--timeout", "5", *extra)


def test_start_set_status_stop(world):
    root, tmp, shells, _, threads = world
    res = start(root, tmp)
    assert res.exit_code == 0, res.output
    assert "start: 2 of 2 step(s) done" in res.output
    assert (shells["a"].parked, shells["b"].parked) == ({1}, {1, 2, 3})
    # parked vCPUs' threads on the host CPU of their guest's boot vCPU: no host CPU runs
    # vCPUs of both guests
    homes = {n: {min(a) for t, a in th.affinity.items()} for n, th in threads.items()}
    assert homes == {"a": {0, 2, 3}, "b": {1}}
    res = cli(root, "share", "host", "set", "a", "node1=0", "b", "node1=2", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [(s["guest"], s["phase"], s["state"]) for s in doc["steps"]] == [
        ("a", "give", "done"), ("b", "take", "done")]
    assert (shells["a"].parked, shells["b"].parked) == ({1, 2, 3}, {1})
    res = cli(root, "share", "host", "status", "--json")
    report = json.loads(res.output)
    assert [(g["name"], g["used"], g["guest_says"], g["agrees"]) for g in report["guests"]] \
        == [("a", "0", "0", True), ("b", "0,2-3", "0,2-3", True)]
    assert report["guests"][1]["nodes"][0]["host_cpus"] == "1"     # b's vCPU 0
    text = cli(root, "share", "host", "status").output
    assert "guest says" in text and "0,2-3 (agrees)" in text
    res = cli(root, "share", "host", "stop")
    assert res.exit_code == 0, res.output
    assert shells["a"].parked == shells["b"].parked == set()
    assert not (root / STATE).exists()


def test_a_silent_guest_is_named_and_the_move_resumes(world):
    root, tmp, shells, agents, _ = world
    assert start(root, tmp).exit_code == 0
    agents[1].silent = True
    res = cli(root, "share", "host", "set", "a", "node1=0", "b", "node1=2", "--timeout", "0.5")
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith(
        "vnuma-sched: error: guest b did not confirm step 2 (no answer from the guest agent")
    assert "it keeps its last share; the move is pending" in res.output
    status = cli(root, "share", "host", "status", "--timeout", "0.5").output
    assert "behind: b keeps its last share: no answer" in status
    assert "pending set move" in status
    res = cli(root, "share", "host", "set", "a", "node1=1")
    assert res.exit_code == 2 and "a set move is pending" in res.output
    agents[1].silent = False
    res = cli(root, "share", "host", "resume")
    assert res.exit_code == 0, res.output
    assert shells["b"].parked == {1}


@pytest.mark.parametrize("args, needle", [
    (["set", "a"], "expected NAME SPEC pairs"),
    (["set", "a", "node1=x"], "a vCPU count is a whole number"),
    (["set", "c", "node1=1"], "unknown guest 'c'"),
    (["set", "b", "node1=1"], "none free (a on host CPU 2-3)"),
    (["set", "a", "node0=0"], "never parked"),
    (["set", "a", "node1=2", "b", "node0=1", "--mem", "node1=1G"], "name the guest"),
    (["set", "a", "node1=2", "--mem", "node1=512M"], "fixed at 256 MiB"),
])
def test_bad_changes_are_one_line_exit_2(world, args, needle):
    root, tmp, _, _, _ = world
    assert start(root, tmp).exit_code == 0
    before = (root / STATE).read_text()
    res = cli(root, "share", "host", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert (root / STATE).read_text() == before


def test_start_refuses_bad_guests(world):
    root, tmp, _, _, _ = world
    res = cli(root, "share", "host", "start", "--guest", "a=/x")
    assert res.exit_code == 2 and "expected NAME or NAME=QMP_SOCKET,AGENT_SOCKET" in res.output
    res = cli(root, "share", "host", "start", "--guest", f"a={tmp}/a-qmp.sock,{tmp}/a-qga.sock",
              "--guest", f"a={tmp}/a-qmp.sock,{tmp}/a-qga.sock")
    assert res.exit_code == 2 and "given twice" in res.output


def test_nothing_started(world):
    root = world[0]
    res = cli(root, "share", "host", "status")
    assert res.exit_code == 2 and "no coordinator state" in res.output


def test_status_text_golden(monkeypatch):
    monkeypatch.setattr(render, "terminal_width", lambda stream=None: 100)
    step = {"guest": "b", "phase": "take", "state": "failed",
            "reason": "no answer from the guest agent on /tmp/b-qga.sock within 60 s",
            "before": {"used": [0], "mem_mb": {}}, "after": {"used": [0, 2, 3], "mem_mb": {}}}
    give = {**step, "guest": "a", "phase": "give", "state": "done", "reason": "",
            "before": {"used": [0, 2, 3], "mem_mb": {}}, "after": {"used": [0], "mem_mb": {}}}
    node = lambda n, used, cpus: {"node": n, "used": used, "host_cpus": cpus,  # noqa: E731
                                  "mem_mb": 512}
    report = {"state": "/run/vnuma_sched/share-host/state.json", "move": {
        "kind": "set", "request": "a node1=0 b node1=2", "steps": [give, step]},
        "guests": [
            {"name": "a", "used": "0", "nodes": [node(0, "0", "0"), node(1, "", "")],
             "behind": None, "guest_says": "0", "agrees": True, "mem_agrees": True,
             "memory": [{"node": n, "host_node": n, "mem_mb": 512 + 256 * n, "boot_mb": 512,
                         "max_mb": 1024, "plugged_mb": 256 * n, "guest_mb": 490 + 256 * n}
                        for n in (0, 1)]},
            {"name": "b", "used": "0", "nodes": [node(0, "0", "1"), node(1, "", "")],
             "behind": step["reason"], "guest_says": None, "agrees": None,
             "no_answer": step["reason"]}]}
    golden("share-host-status.txt", render.share_host_text(report) + "\n")


def record_guest(root, tmp, name, pid, qmp=True):
    """What 'vm run --name' records for a running guest."""
    guests.add(SysRoot(root), guests.Guest(name, pid, f"{tmp}/{name}-qga.sock",
                                           f"{tmp}/{name}-qmp.sock" if qmp else None,
                                           "bzImage", "2 nodes"), lambda pid: True)


def test_start_finds_guests_that_vm_run_named(world):
    root, tmp, shells, _, _ = world
    record_guest(root, tmp, "a", os.getpid())
    record_guest(root, tmp, "b", os.getpid())
    res = cli(root, "share", "host", "start", "--guest", "a", "--guest", "b", "--timeout", "5")
    assert res.exit_code == 0, res.output
    assert (shells["a"].parked, shells["b"].parked) == ({1}, {1, 2, 3})
    listed = json.loads(cli(root, "vm", "list", "--json").output)["guests"]
    assert [(g["name"], g["running"], g["qmp"]) for g in listed] == [
        ("a", True, f"{tmp}/a-qmp.sock"), ("b", True, f"{tmp}/b-qmp.sock")]


@pytest.mark.parametrize("setup, needle", [
    (None, "--guest a: no guest of that name is running"),
    ("dead", "--guest a: its 'vm run' (pid 999999999) is gone; the record is stale"),
    ("flat", "--guest a: not booted as a placed guest with an agent"),
])
def test_start_refuses_guests_it_cannot_find(world, setup, needle):
    root, tmp, _, _, _ = world
    if setup:
        record_guest(root, tmp, "a", 999999999 if setup == "dead" else os.getpid(),
                     qmp=setup != "flat")
    res = cli(root, "share", "host", "start", "--guest", "a")
    assert res.exit_code == 2 and needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (root / STATE).exists()
    if setup == "dead":
        assert "stale (vm run gone)" in cli(root, "vm", "list").output
