"""How the host coordinator reaches its guests (the ``io`` of share/coordinator.py).

- What a guest is: read from its QEMU through QMP. ``query-cpus-fast`` gives each
  vCPU's thread, whose CPU affinity ('vm run' pins it) is the vCPU's host CPU;
  ``query-memdev`` gives each guest node's memory backend ('vm run' names guest node
  i's ``vnode<i>``, layout.BACKEND_ID) with its size and host node.
- What a guest does: ``vnuma-sched --json share status|apply|revert`` run inside it
  through its guest agent (kernel/qga.py). A step is confirmed when the guest's own
  'share status' afterwards shows exactly the vCPUs of the new share in use.
- Halted: a step that parks vCPUs is confirmed only when their QEMU threads have
  stopped running (``halted``): over HALT_WINDOW_S, each used at most HALT_BUSY_MAX
  of a host CPU (utime + stime of the thread in the host's /proc). A parked vCPU
  idles in HLT, which blocks its thread; it still wakes one to two times a second
  (README, residual wake-ups), far below the bound.
- Fencing: once a guest confirms a step, the thread of each vCPU it parked is
  confined to the host CPU of its boot vCPU (which it always holds), and each vCPU
  it uses runs on its own host CPU; a vCPU it takes goes back to its host CPU before
  the guest unparks it. So even a guest that wakes a parked vCPU (or unparks
  everything for a moment: 'share apply --replace' reverts first) only ever runs on
  host CPUs it holds.
"""

import json
import os
import time
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.kernel import layout, qga, qmp
from vnuma_sched.share import host_plan as H
from vnuma_sched.share.coordinator import GuestBehind
from vnuma_sched.system import tasks
from vnuma_sched.system.topology import format_cpulist, parse_cpulist

QMP_TIMEOUT_S = 10
HALT_WINDOW_S = 0.5
HALT_BUSY_MAX = 0.25        # of one host CPU


def busy_share(sysroot, threads, window, sleep=time.sleep, hz=None):
    """{vCPU: share of one host CPU its thread used over ``window`` seconds};
    ``threads``: {vCPU: thread id} (tasks' CPU time from the host's /proc)."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    before = {v: tasks.stat(sysroot, t).cpu_ticks for v, t in threads.items()}
    start = time.monotonic()
    sleep(window)
    took = max(time.monotonic() - start, window)
    return {v: (tasks.stat(sysroot, t).cpu_ticks - before[v]) / hz / took
            for v, t in threads.items()}


def layout_from_qmp(name, cpus, memdevs, affinity):
    """A GuestLayout from query-cpus-fast and query-memdev answers; ``affinity(tid)``:
    the set of host CPUs a thread may run on. BadInput when a vCPU is not pinned to
    one host CPU (not a Full-vNUMA guest)."""
    pairs = []
    for c in sorted(cpus, key=lambda c: c["cpu-index"]):
        allowed = affinity(c["thread-id"])
        if len(allowed) != 1:
            raise BadInput(f"guest {name}: vCPU {c['cpu-index']} may run on host CPUs "
                           f"{format_cpulist(allowed)}, not one: boot it Full vNUMA "
                           "('vm run --topology host')")
        pairs.append((c["cpu-index"], next(iter(allowed))))
    ours = {layout.BACKEND_ID.format(i) for i in range(len(memdevs))}
    mem = {}
    for dev in memdevs:
        nodes = dev.get("host-nodes", [])
        if dev.get("id") in ours and len(nodes) == 1:
            mem[nodes[0]] = mem.get(nodes[0], 0) + (dev["size"] >> 20)
    return H.GuestLayout(name, tuple(pairs), tuple((n, mb, mb) for n, mb in sorted(mem.items())))


def read_layout(name, sock, timeout=QMP_TIMEOUT_S, affinity=os.sched_getaffinity):
    """The GuestLayout of the running guest whose QMP socket is ``sock``."""
    try:
        cpus, memdevs = qmp.execute(sock, [("query-cpus-fast", None), ("query-memdev", None)],
                                    timeout)
    except qmp.PinError as err:
        raise BadInput(f"guest {name}: {err}") from err
    return layout_from_qmp(name, cpus, memdevs, affinity)


def used_vcpus(status):
    """The vCPUs a guest uses, from its 'share status --json' document."""
    return sorted(c for n in status["nodes"] for c in parse_cpulist(n["used"]))


@dataclass
class AgentGuests:
    """Guests reached through their agents (commands) and QMP (vCPU threads)."""

    command: tuple = ("vnuma-sched",)       # how vnuma-sched is started in the guests
    timeout: float = 60                     # per command in a guest, seconds
    run: object = qga.run
    query: object = qmp.execute
    setaffinity: object = os.sched_setaffinity
    getaffinity: object = os.sched_getaffinity
    sysroot: object = None                  # the host's, for the vCPU threads' CPU time
    sleep: object = time.sleep
    pinned: dict = field(default_factory=dict)      # {guest: {vCPU: host CPU}}, last set

    def _share(self, name, record, *args):
        argv = [*self.command, "--json", "share", *args]
        try:
            res = self.run(record.agent, argv, self.timeout)
        except qga.AgentError as err:
            raise GuestBehind(name, str(err)) from err
        if res.exitcode != 0:
            why = (res.stderr.strip().splitlines() or [f"exit code {res.exitcode}"])[-1]
            raise GuestBehind(name, f"'share {args[0]}' failed in the guest: {why[:300]}")
        try:
            return json.loads(res.stdout) if res.stdout.strip() else {}
        except ValueError as err:
            raise GuestBehind(name, f"'share {args[0]}' printed no JSON ({err})") from err

    def _status(self, name, record):
        doc = self._share(name, record, "status")
        try:
            return used_vcpus(doc), doc.get("parked", "")
        except (KeyError, TypeError, ValueError) as err:
            raise GuestBehind(name, f"'share status' answered an unknown shape ({err})") \
                from err

    def used(self, name, record):
        return self._status(name, record)[0]

    def apply(self, name, record, before, after):
        if dict(before.mem) != dict(after.mem):
            raise GuestBehind(name, "memory per node cannot be resized yet")
        g = record.layout
        self._pin(name, record, {v: g.hosts[v] for v in set(after.used) - set(before.used)})
        if set(after.used) == set(g.vcpus):
            if self._status(name, record)[1]:
                self._share(name, record, "revert")
        else:
            self._share(name, record, "apply", "--use", format_cpulist(after.used),
                        "--allow-empty-node", "--replace")
        used, _ = self._status(name, record)
        if used != list(after.used):
            raise GuestBehind(name, f"after the step it uses vCPUs {format_cpulist(used)}, "
                                    f"not {format_cpulist(after.used)}")
        self._pin(name, record, fenced(g, after))
        self._halted(name, record, sorted(set(g.vcpus) - set(after.used)))

    def _threads(self, name, record, doing):
        """QEMU's vCPU threads: query-cpus-fast's answer."""
        try:
            (cpus,) = self.query(record.qmp, [("query-cpus-fast", None)], QMP_TIMEOUT_S)
        except qmp.PinError as err:
            raise GuestBehind(name, f"{doing} its vCPU threads: {err}") from err
        return cpus

    def _pin(self, name, record, want):
        """Move vCPU threads (``want``: {vCPU: host CPU}) through QMP's thread ids."""
        if not want:
            return
        cpus = self._threads(name, record, "pinning")
        try:
            qmp.pin_threads([c for c in cpus if c["cpu-index"] in want], want,
                            self.setaffinity, self.getaffinity)
        except qmp.PinError as err:
            raise GuestBehind(name, f"pinning its vCPU threads: {err}") from err
        self.pinned.setdefault(name, {}).update(want)

    def _halted(self, name, record, parked):
        """GuestBehind unless the threads of the ``parked`` vCPUs have stopped running."""
        if not parked:
            return
        threads = {c["cpu-index"]: c["thread-id"] for c in self._threads(name, record, "reading")
                   if c["cpu-index"] in parked}
        try:
            busy = busy_share(self.sysroot, threads, HALT_WINDOW_S, self.sleep)
        except (OSError, DataError) as err:
            raise GuestBehind(name, f"reading its vCPU threads' CPU time: {err}") from err
        running = {v: b for v, b in sorted(busy.items()) if b > HALT_BUSY_MAX}
        if running:
            shown = ", ".join(f"vCPU {v} {b:.0%}" for v, b in running.items())
            raise GuestBehind(name, f"parked vCPUs still run ({shown} of a host CPU over "
                                    f"{HALT_WINDOW_S:g} s; a halted one uses at most "
                                    f"{HALT_BUSY_MAX:.0%})")


def fenced(layout_, share):
    """{vCPU: host CPU} once ``share`` is confirmed: a used vCPU on its own host CPU, a
    parked one on the host CPU of the guest's boot vCPU."""
    hosts = layout_.hosts
    fence = hosts[min(layout_.fixed & set(hosts))]
    return {v: hosts[v] if v in share.used else fence for v in layout_.vcpus}
