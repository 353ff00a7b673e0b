"""How the host coordinator reaches its guests (the ``io`` of share/coordinator.py).

- What a guest is: read from its QEMU through QMP. ``query-cpus-fast`` gives each
  vCPU's thread, whose CPU affinity ('vm run' pins it) is the vCPU's host CPU;
  ``query-memdev`` gives each guest node's memory backend ('vm run' names guest node
  i's ``vnode<i>``, layout.BACKEND_ID) with its size and host node;
  ``query-memory-devices`` its virtio-mem device ('vm run --mem-hotplug',
  layout.VMEM_ID) with the most it can plug (``max-size``) and what it has plugged
  (``size``). Boot memory is a node's least, boot memory plus max-size its most.
- What a guest does: ``vnuma-sched --json share status|apply|revert`` run inside it
  through its guest agent (kernel/qga.py). A step is confirmed when the guest's own
  'share status' afterwards shows exactly the vCPUs of the new share in use.
- Halted: a step that parks vCPUs is confirmed only when their QEMU threads have
  stopped running (``halted``): within the guest's timeout, a window of
  HALT_WINDOW_S in which each used at most HALT_BUSY_MAX of a host CPU (the
  thread's run time in the host's /proc). A parked vCPU
  idles in HLT, which blocks its thread; it still wakes one to two times a second
  (README, residual wake-ups), far below the bound.
- Fencing: once a guest confirms a step, the thread of each vCPU it parked is
  confined to the host CPU of its boot vCPU (which it always holds), and each vCPU
  it uses runs on its own host CPU; a vCPU it takes goes back to its host CPU before
  the guest unparks it. So even a guest that wakes a parked vCPU (or unparks
  everything for a moment: 'share apply --replace' reverts first) only ever runs on
  host CPUs it holds.
- Memory: a step sets each changed node's virtio-mem ``requested-size`` (QMP
  ``qom-set``) and is confirmed when the device's ``size`` (what the guest has
  plugged) reaches it. A guest that does not get there in time is asked back to its
  last share's size and is behind, as for vCPUs.
"""

import json
import os
import re
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
PLUG_POLL_S = 0.2       # between two looks at what a guest has plugged
_BACKEND = re.compile(re.escape(layout.BACKEND_ID).replace(r"\{\}", "([0-9]+)"))


def run_seconds(sysroot, tid):
    """How long thread ``tid`` has run: /proc/TID/schedstat's nanoseconds, else the
    utime + stime ticks of /proc/TID/stat (sampled at the tick: a thread that wakes
    briefly but often is charged whole ticks)."""
    text = sysroot.read_optional(f"/proc/{tid}/schedstat")
    if text and text.split()[0].isdigit():
        return int(text.split()[0]) / 1e9
    return tasks.stat(sysroot, tid).cpu_ticks / os.sysconf("SC_CLK_TCK")


def busy_share(sysroot, threads, window, sleep=time.sleep, clock=time.monotonic):
    """{vCPU: share of one host CPU its thread used over ``window`` seconds};
    ``threads``: {vCPU: thread id} (their run time from the host's /proc)."""
    before = {v: run_seconds(sysroot, t) for v, t in threads.items()}
    start = clock()
    sleep(window)
    took = max(clock() - start, window)
    return {v: (run_seconds(sysroot, t) - before[v]) / took for v, t in threads.items()}


def vmem_devices(devices):
    """{guest node: virtio-mem data} of query-memory-devices' answer: 'vm run'
    --mem-hotplug's devices only (layout.VMEM_ID of their node)."""
    return {d["data"]["node"]: d["data"] for d in devices
            if d.get("type") == "virtio-mem"
            and d["data"].get("id") == layout.VMEM_ID.format(d["data"].get("node"))}


def _mem_nodes(name, memdevs, devices):
    """MemNodes from query-memdev and query-memory-devices answers."""
    backends = {m.get("id"): m for m in memdevs}
    vmem = vmem_devices(devices)
    out = []
    for bid, dev in sorted(backends.items(), key=lambda kv: str(kv[0])):
        m = _BACKEND.fullmatch(str(bid))
        nodes = dev.get("host-nodes", [])
        if not m or len(nodes) != 1:
            continue
        node, boot = int(m.group(1)), dev["size"] >> 20
        extra = vmem.get(node)
        if extra is None:
            out.append(H.MemNode(node, nodes[0], boot, boot))
            continue
        plug = backends.get(layout.VMEM_BACKEND_ID.format(node), {})
        if plug.get("host-nodes") != nodes:
            raise BadInput(f"guest {name}: node {node}'s virtio-mem memory is bound to host "
                           f"nodes {plug.get('host-nodes')}, its boot memory to {nodes}")
        out.append(H.MemNode(node, nodes[0], boot, boot + (extra["max-size"] >> 20)))
    return tuple(sorted(out))


def layout_from_qmp(name, cpus, memdevs, affinity, devices=()):
    """A GuestLayout from query-cpus-fast, query-memdev and query-memory-devices
    answers; ``affinity(tid)``: the set of host CPUs a thread may run on. BadInput
    when a vCPU is not pinned to one host CPU (not a Full-vNUMA guest)."""
    pairs = []
    for c in sorted(cpus, key=lambda c: c["cpu-index"]):
        allowed = affinity(c["thread-id"])
        if len(allowed) != 1:
            raise BadInput(f"guest {name}: vCPU {c['cpu-index']} may run on host CPUs "
                           f"{format_cpulist(allowed)}, not one: boot it Full vNUMA "
                           "('vm run --topology host')")
        pairs.append((c["cpu-index"], next(iter(allowed))))
    return H.GuestLayout(name, tuple(pairs), _mem_nodes(name, memdevs, devices))


def read_layout(name, sock, timeout=QMP_TIMEOUT_S, affinity=os.sched_getaffinity):
    """The GuestLayout of the running guest whose QMP socket is ``sock``."""
    try:
        cpus, memdevs, devices = qmp.execute(sock, [("query-cpus-fast", None),
                                                    ("query-memdev", None),
                                                    ("query-memory-devices", None)], timeout)
    except qmp.PinError as err:
        raise BadInput(f"guest {name}: {err}") from err
    return layout_from_qmp(name, cpus, memdevs, affinity, devices)


def used_vcpus(status):
    """The vCPUs a guest uses, from its 'share status --json' document."""
    return sorted(c for n in status["nodes"] for c in parse_cpulist(n["used"]))


@dataclass
class AgentGuests:
    """Guests reached through their agents (commands) and QMP (vCPU threads, memory)."""

    command: tuple = ("vnuma-sched",)       # how vnuma-sched is started in the guests
    timeout: float = 60                     # per command in a guest, seconds
    run: object = qga.run
    query: object = qmp.execute
    setaffinity: object = os.sched_setaffinity
    getaffinity: object = os.sched_getaffinity
    sysroot: object = None                  # the host's, for the vCPU threads' CPU time
    clock: object = time.monotonic
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

    def memory(self, name, record):
        """{guest node: {"plugged_mb": what QEMU's virtio-mem device has plugged,
        "guest_mb": the node's MemTotal as the guest's 'share status' reports it}}."""
        plugged = {n: d["size"] >> 20 for n, d in self._vmem(name, record).items()}
        doc = self._share(name, record, "status")
        said = {n.get("node"): n["mem_kb"] >> 10 for n in doc.get("nodes", ())
                if isinstance(n, dict) and type(n.get("mem_kb")) is int}
        return {m.node: {"plugged_mb": plugged.get(m.node, 0), "guest_mb": said.get(m.node)}
                for m in record.layout.mem_bounds}

    def apply(self, name, record, before, after):
        """One step: vCPUs (unless only memory changes), then memory. A step that
        changes nothing asserts the whole share again (stop does that for a guest
        whose step did not finish)."""
        again = before == after
        if again or before.used != after.used:
            self._vcpus(name, record, before, after)
        mem = {n: mb for n, mb in after.mem if again or before.mem_of(n) != mb}
        self._resize(name, record, mem, before)

    def _vcpus(self, name, record, before, after):
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

    def _vmem(self, name, record):
        try:
            (devices,) = self.query(record.qmp, [("query-memory-devices", None)],
                                    QMP_TIMEOUT_S)
        except qmp.PinError as err:
            raise GuestBehind(name, f"reading its virtio-mem devices: {err}") from err
        return vmem_devices(devices)

    def _request(self, name, record, sizes):
        """Set the virtio-mem requested-size of each node of ``sizes`` ({node: bytes})."""
        cmds = [("qom-set", {"path": f"/machine/peripheral/{layout.VMEM_ID.format(n)}",
                             "property": "requested-size", "value": b})
                for n, b in sorted(sizes.items())]
        try:
            self.query(record.qmp, cmds, QMP_TIMEOUT_S)
        except qmp.PinError as err:
            raise GuestBehind(name, f"resizing its memory: {err}") from err

    def _resize(self, name, record, mem, before):
        """Plug or unplug until each node of ``mem`` ({guest node: MiB}) has that much;
        on a timeout, ask for ``before``'s sizes again and raise GuestBehind."""
        boot = {m.node: m.min_mb for m in record.layout.mem_bounds
                if m.max_mb > m.min_mb}
        want = {n: (mb - boot[n]) << 20 for n, mb in mem.items() if n in boot}
        if not want:
            return
        self._request(name, record, want)
        deadline = self.clock() + self.timeout
        while True:
            have = self._vmem(name, record)
            late = {n: have.get(n, {}).get("size", 0) for n, b in want.items()
                    if have.get(n, {}).get("size") != b}
            if not late:
                return
            if self.clock() > deadline:
                break
            self.sleep(PLUG_POLL_S)
        self._request(name, record, {n: (before.mem_of(n) - boot[n]) << 20 for n in want})
        n = min(late)
        raise GuestBehind(name, f"node {n} has {late[n] >> 20} MiB plugged, not "
                                f"{want[n] >> 20} MiB, after {self.timeout:g} s (asked back "
                                f"to {before.mem_of(n) - boot[n]} MiB)")

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
        """GuestBehind unless the threads of the ``parked`` vCPUs stop running: a
        window in which each used at most HALT_BUSY_MAX, within the guest's timeout
        (a vCPU just parked may still finish what it was doing)."""
        if not parked:
            return
        threads = {c["cpu-index"]: c["thread-id"] for c in self._threads(name, record, "reading")
                   if c["cpu-index"] in parked}
        deadline = self.clock() + self.timeout
        while True:
            try:
                busy = busy_share(self.sysroot, threads, HALT_WINDOW_S, self.sleep, self.clock)
            except (OSError, DataError) as err:
                raise GuestBehind(name, f"reading its vCPU threads' CPU time: {err}") from err
            running = {v: b for v, b in sorted(busy.items()) if b > HALT_BUSY_MAX}
            if not running:
                return
            if self.clock() > deadline:
                break
        shown = ", ".join(f"vCPU {v} {b:.0%}" for v, b in running.items())
        raise GuestBehind(name, f"parked vCPUs still run ({shown} of a host CPU over "
                                f"{HALT_WINDOW_S:g} s, for {self.timeout:g} s; a halted one "
                                f"uses at most {HALT_BUSY_MAX:.0%})")


def fenced(layout_, share):
    """{vCPU: host CPU} once ``share`` is confirmed: a used vCPU on its own host CPU, a
    parked one on the host CPU of the guest's boot vCPU."""
    hosts = layout_.hosts
    fence = hosts[min(layout_.fixed & set(hosts))]
    return {v: hosts[v] if v in share.used else fence for v in layout_.vcpus}
