"""The coordinator's channel to its guests (share/host_guests.py) against fake agents:
'share' commands run in the guest and confirmed by its own status, vCPU threads
pinned home before the guest takes a vCPU and fenced after it parks one, a guest
that does not answer (or answers wrongly) is behind; layouts from QMP answers."""

import os

import pytest
from share_host_fakes import HOST, FakeAgent, FakeGuestShare, FakeVmem, mirror

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import qmp
from vnuma_sched.kernel.qga import ExecResult
from vnuma_sched.share import coordinator as co
from vnuma_sched.share import host_plan as H
from vnuma_sched.share import host_state as S
from vnuma_sched.share.coordinator import GuestBehind
from vnuma_sched.share.host_guests import AgentGuests, fenced, layout_from_qmp, vmem_devices
from vnuma_sched.system.sysroot import SysRoot

LAYOUT = mirror("a", first=1)       # vCPU 0 on host CPU 1


class Threads:
    """QEMU's vCPU threads (thread id ``base`` + vCPU), their affinities, and their CPU
    time in a /proc under ``root``: ``sleep`` lets the vCPUs in ``running`` run for
    the whole time (100 ticks a second), the others not at all; and its virtio-mem
    devices (``vmem``, a FakeVmem)."""

    def __init__(self, layout, root, base=100, vmem=None):
        self.base, self.root, self.vmem = base, root, vmem or FakeVmem(layout)
        self.affinity = {base + v: {h} for v, h in layout.vcpu_host}
        self.moves = []
        self.ticks = dict.fromkeys(self.affinity, 0)
        self.running = set()
        self.now = 0.0          # the clock ``sleep`` advances
        self._write()

    def _write(self):
        for tid, ticks in self.ticks.items():
            fields = ["S", *["0"] * 49]
            fields[11], fields[12] = str(ticks // 2), str(ticks - ticks // 2)   # utime, stime
            (self.root / "proc" / str(tid)).mkdir(parents=True, exist_ok=True)
            (self.root / "proc" / str(tid) / "stat").write_text(
                f"{tid} (CPU {tid - self.base}/TCG) {' '.join(fields)}\n")

    def sleep(self, seconds):
        self.now += seconds
        for v in self.running:
            self.ticks[self.base + v] += round(seconds * os.sysconf("SC_CLK_TCK"))
        self._write()

    def query(self, sock, commands, timeout):
        return [[{"cpu-index": t - self.base, "thread-id": t} for t in sorted(self.affinity)]
                if name == "query-cpus-fast" else self.vmem.execute(name, args)
                for name, args in commands]

    def setaffinity(self, tid, cpus):
        self.moves.append((tid - self.base, min(cpus)))
        self.affinity[tid] = set(cpus)


def runs(fn):
    """A qga.run that answers with ``fn(argv)`` = (exit code, stdout, stderr)."""
    return lambda sock, argv, timeout: ExecResult(*fn(argv))


@pytest.fixture
def guest(tmp_path):
    shell = FakeGuestShare([[0, 1, 2, 3], [4, 5, 6, 7]])
    threads = Threads(LAYOUT, tmp_path / "host")
    record = S.GuestRecord(LAYOUT, "/run/a-qmp.sock", str(tmp_path / "qga.sock"))
    io = AgentGuests(command=("vnuma-sched",), timeout=10, query=threads.query,
                     setaffinity=threads.setaffinity,
                     getaffinity=lambda tid: threads.affinity[tid],
                     sysroot=SysRoot(tmp_path / "host"), sleep=threads.sleep,
                     clock=lambda: threads.now)
    with FakeAgent(record.agent, shell, polls=1) as agent:
        yield io, record, shell, threads, agent


def test_used_is_what_the_guest_says(guest):
    io, record, shell, _, _ = guest
    shell.parked = {5, 6, 7}
    assert io.used("a", record) == [0, 1, 2, 3, 4]


def test_a_give_parks_in_the_guest_then_fences_the_threads(guest):
    io, record, shell, threads, _ = guest
    io.apply("a", record, LAYOUT.whole(), H.share([0, 1, 4], LAYOUT.whole().mem))
    assert shell.commands == [["apply", "--use", "0-1,4", "--allow-empty-node", "--replace"],
                              ["status"]]
    assert shell.parked == {2, 3, 5, 6, 7}
    # parked vCPUs' threads now run on vCPU 0's host CPU (1), the others stay home
    assert {t - 100: min(a) for t, a in threads.affinity.items()} == {
        0: 1, 1: 2, 2: 1, 3: 1, 4: 4, 5: 1, 6: 1, 7: 1}


def test_a_take_pins_home_before_the_guest_unparks(guest):
    io, record, shell, threads, _ = guest
    small = H.share([0, 4], LAYOUT.whole().mem)
    io.apply("a", record, LAYOUT.whole(), small)
    threads.moves.clear()
    shell.commands.clear()
    io.apply("a", record, small, H.share([0, 4, 5], LAYOUT.whole().mem))
    assert threads.moves[0] == (5, 5)          # home first, then the guest unparks it
    assert shell.commands[0][0] == "apply" and shell.parked == {1, 2, 3, 6, 7}


def test_the_whole_layout_back_is_a_revert(guest):
    io, record, shell, threads, _ = guest
    small = H.share([0, 4], LAYOUT.whole().mem)
    io.apply("a", record, LAYOUT.whole(), small)
    shell.commands.clear()
    io.apply("a", record, small, LAYOUT.whole())
    assert shell.commands == [["status"], ["revert"], ["status"]]
    assert {t - 100: min(a) for t, a in threads.affinity.items()} == LAYOUT.hosts


def test_a_guest_whose_status_disagrees_is_behind(guest):
    io, record, shell, _, _ = guest
    shell.parked = set()
    io.run = runs(lambda argv: (0, "{}", "") if argv[3] == "apply" else shell(argv))
    with pytest.raises(GuestBehind, match=r"guest a: after the step it uses vCPUs 0-7, not 0,4"):
        io.apply("a", record, LAYOUT.whole(), H.share([0, 4], LAYOUT.whole().mem))


def test_a_failing_guest_command_is_behind_with_its_error(guest):
    io, record, shell, _, _ = guest
    io.run = runs(lambda argv: (3, "", "vnuma-sched: error: /proc/irq/9: write failed\n"))
    with pytest.raises(GuestBehind, match="'share status' failed in the guest: vnuma-sched: "
                                          "error: /proc/irq/9: write failed"):
        io.used("a", record)


def test_a_silent_agent_is_behind(tmp_path):
    record = S.GuestRecord(LAYOUT, "/run/a-qmp.sock", str(tmp_path / "qga.sock"))
    with FakeAgent(record.agent, FakeGuestShare([[0]]), silent=True):
        with pytest.raises(GuestBehind, match="no answer from the guest agent .* within 0.3 s"):
            AgentGuests(timeout=0.3).used("a", record)


GROWS = mirror("a", first=1, mem=512, mem_max=1024)   # 512 MiB per node, up to 1 GiB


@pytest.fixture
def growing(tmp_path):
    """A guest whose nodes can grow (virtio-mem), its QEMU, its agent."""
    threads = Threads(GROWS, tmp_path / "host")
    plugged = lambda node: threads.vmem.dev[node]["size"] >> 10     # noqa: E731
    shell = FakeGuestShare([[0, 1, 2, 3], [4, 5, 6, 7]], lambda n: 500_000 + plugged(n))
    record = S.GuestRecord(GROWS, "/run/a-qmp.sock", str(tmp_path / "qga.sock"))
    io = AgentGuests(command=("vnuma-sched",), timeout=10, query=threads.query,
                     setaffinity=threads.setaffinity,
                     getaffinity=lambda tid: threads.affinity[tid],
                     sysroot=SysRoot(tmp_path / "host"), sleep=threads.sleep)
    with FakeAgent(record.agent, shell, polls=1):
        yield io, record, shell, threads


def test_memory_is_resized_through_qmp_and_confirmed_by_the_plugged_size(growing):
    io, record, shell, threads = growing
    whole = GROWS.whole()
    more = H.share(whole.used, {0: 512, 1: 768})
    io.apply("a", record, whole, more)
    assert threads.vmem.sets == [(1, 256)]                  # node 1 only: +256 MiB
    assert threads.vmem.dev[1]["size"] == 256 << 20          # waited until plugged
    assert shell.commands == [] and threads.moves == []     # memory only: no vCPU step
    assert io.memory("a", record) == {0: {"plugged_mb": 0, "guest_mb": 500_000 >> 10},
                                      1: {"plugged_mb": 256,
                                          "guest_mb": (500_000 + (256 << 10)) >> 10}}
    io.apply("a", record, more, whole)
    assert threads.vmem.sets[-1] == (1, 0) and threads.vmem.dev[1]["size"] == 0


def test_a_guest_that_does_not_plug_in_time_is_behind_and_asked_back(growing):
    io, record, _, threads = growing
    threads.vmem.stuck = {1}
    clock = iter(range(0, 1000, 3))
    io.clock = lambda: next(clock)
    whole = GROWS.whole()
    with pytest.raises(GuestBehind, match=r"node 1 has 0 MiB plugged, not 256 MiB, after "
                                          r"10 s \(asked back to 0 MiB\)"):
        io.apply("a", record, whole, H.share(whole.used, {0: 512, 1: 768}))
    assert threads.vmem.sets == [(1, 256), (1, 0)]


def test_memory_read_from_qmp_is_boot_plus_plugged(growing):
    io, record, _, threads = growing
    threads.vmem.dev[0].update({"size": 128 << 20, "requested-size": 128 << 20})
    got = io.memory("a", record)
    assert co.mem_now(GROWS, got) == {0: 640, 1: 512}


def test_fenced_puts_parked_vcpus_on_the_boot_vcpus_host_cpu():
    assert fenced(LAYOUT, H.share([0, 4])) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 4, 5: 1, 6: 1, 7: 1}


def test_layout_from_qmp_answers():
    cpus = [{"cpu-index": v, "thread-id": 100 + v} for v in range(8)]
    memdevs = [{"id": "vnode0", "size": 1024 << 20, "host-nodes": [0]},
               {"id": "vnode1", "size": 512 << 20, "host-nodes": [1]},
               {"id": "other", "size": 64 << 20, "host-nodes": [1]}]
    lay = layout_from_qmp("a", cpus, memdevs, lambda tid: {LAYOUT.hosts[tid - 100]})
    assert lay.vcpu_host == LAYOUT.vcpu_host
    assert lay.mem_bounds == ((0, 0, 1024, 1024), (1, 1, 512, 512))   # fixed: no virtio-mem
    with pytest.raises(BadInput, match="vCPU 0 may run on host CPUs 0-7, not one"):
        layout_from_qmp("a", cpus, memdevs, lambda tid: set(HOST.cpus))


def test_a_give_is_confirmed_only_when_the_parked_threads_halt(guest):
    io, record, shell, threads, _ = guest
    threads.running = {7}          # the guest says it parked 7, its thread still runs
    with pytest.raises(GuestBehind, match=r"parked vCPUs still run \(vCPU 7 100% of a host "
                                          r"CPU over 0.5 s, for 10 s; a halted one uses at "
                                          r"most 25%\)"):
        io.apply("a", record, LAYOUT.whole(), H.share([0, 1, 4], LAYOUT.whole().mem))
    threads.running = {4}          # a used vCPU may run; parked 2, 3, 5, 6, 7 halted
    io.apply("a", record, LAYOUT.whole(), H.share([0, 1, 4], LAYOUT.whole().mem))


def test_a_parked_vcpu_may_settle_before_it_halts(guest):
    """Just parked, a vCPU may still run for a moment: confirmed at the first quiet
    window, not refused at the first busy one."""
    io, record, _, threads, _ = guest
    threads.running = {7}
    sleep = threads.sleep

    def settling(seconds):          # 7 runs for the first two windows, then halts
        sleep(seconds)
        if threads.now >= 1.0:
            threads.running = set()
    io.sleep = settling
    io.apply("a", record, LAYOUT.whole(), H.share([0, 1, 4], LAYOUT.whole().mem))
    assert threads.now == 1.5       # three windows of 0.5 s


def test_unreadable_thread_times_are_behind(guest, tmp_path):
    io, record, _, _, _ = guest
    (tmp_path / "host" / "proc" / "107" / "stat").unlink()     # the thread is gone
    with pytest.raises(GuestBehind, match="reading its vCPU threads' CPU time: "):
        io.apply("a", record, LAYOUT.whole(), H.share([0, 1, 4], LAYOUT.whole().mem))


def test_pin_failures_are_behind(guest):
    io, record, _, _, _ = guest

    def broken(sock, commands, timeout):
        raise qmp.PinError("QMP on /run/a-qmp.sock: ConnectError: refused")
    io.query = broken
    with pytest.raises(GuestBehind, match="pinning its vCPU threads: QMP on"):
        io.apply("a", record, LAYOUT.whole(), H.share([0, 4], LAYOUT.whole().mem))


# recorded from QEMU 7.2 (query-memdev, query-memory-devices) with the backends and
# devices 'vm run --mem 1G --mem-hotplug 256M' gives a 2-node guest placed on a 1-node
# host (both guest nodes on host node 0); node 1 edited to show 256 MiB plugged (a
# stopped QEMU plugs nothing: its size stays 0 after the qom-set)
MEMDEVS_2ON1 = [
    {"share": True, "reserve": True, "prealloc": False, "host-nodes": [0],
     "size": 536870912, "merge": True, "dump": True, "policy": "bind", "id": "vnode0"},
    {"share": True, "reserve": True, "prealloc": False, "host-nodes": [0],
     "size": 268435456, "merge": True, "dump": True, "policy": "bind", "id": "vnode0-vmem"},
    {"share": True, "reserve": True, "prealloc": False, "host-nodes": [0],
     "size": 536870912, "merge": True, "dump": True, "policy": "bind", "id": "vnode1"},
    {"share": True, "reserve": True, "prealloc": False, "host-nodes": [0],
     "size": 268435456, "merge": True, "dump": True, "policy": "bind", "id": "vnode1-vmem"}]
DEVICES_2ON1 = [
    {"type": "virtio-mem", "data": {"memdev": "/objects/vnode0-vmem", "memaddr": 4294967296,
                                    "block-size": 2097152, "size": 0, "node": 0,
                                    "max-size": 268435456, "requested-size": 0,
                                    "id": "vnuma-vmem0"}},
    {"type": "virtio-mem", "data": {"memdev": "/objects/vnode1-vmem", "memaddr": 4563402752,
                                    "block-size": 2097152, "size": 268435456, "node": 1,
                                    "max-size": 268435456, "requested-size": 268435456,
                                    "id": "vnuma-vmem1"}}]


def test_layout_from_qmp_reads_virtio_mem_per_guest_node():
    cpus = [{"cpu-index": v, "thread-id": 100 + v} for v in range(2)]
    lay = layout_from_qmp("g", cpus, MEMDEVS_2ON1, lambda tid: {tid - 100}, DEVICES_2ON1)
    assert lay.mem_bounds == ((0, 0, 512, 768), (1, 0, 512, 768))
    assert lay.whole().mem == ((0, 512), (1, 512))      # boot memory: the least
    # what it has now: node 1 has 256 MiB plugged
    now = {n: {"plugged_mb": d["size"] >> 20} for n, d in vmem_devices(DEVICES_2ON1).items()}
    assert co.mem_now(lay, now) == {0: 512, 1: 768}


def test_virtio_mem_bound_elsewhere_than_the_boot_memory_is_refused():
    memdevs = [dict(m) for m in MEMDEVS_2ON1]
    memdevs[3]["host-nodes"] = [1]          # vnode1-vmem
    with pytest.raises(BadInput, match="node 1's virtio-mem memory is bound to host nodes "
                                       r"\[1\], its boot memory to \[0\]"):
        layout_from_qmp("g", [{"cpu-index": 0, "thread-id": 100}], memdevs,
                        lambda tid: {0}, DEVICES_2ON1)
