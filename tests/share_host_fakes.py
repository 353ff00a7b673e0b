"""Fakes for the host coordinator's tests: hosts, Full-vNUMA guest layouts, guests
that obey (or go silent)."""

import asyncio
import base64
import json
import threading

from vnuma_sched.share import host_plan as H
from vnuma_sched.share.coordinator import GuestBehind
from vnuma_sched.system.topology import Node, Topology, format_cpulist, parse_cpulist


def host_of(cpus_per_node, mem_mb=4096):
    nodes, cpu = [], 0
    count = len(cpus_per_node)
    for i, n in enumerate(cpus_per_node):
        nodes.append(Node(i, tuple(range(cpu, cpu + n)), mem_mb * 1024,
                          tuple(10 if i == j else 21 for j in range(count))))
        cpu += n
    return Topology(tuple(nodes))


HOST = host_of([4, 4])


def mirror(name, host=HOST, first=0, mem=1024, mem_max=None):
    """A Full-vNUMA guest of ``host``: vCPU k of node i on the k-th host CPU of node i,
    node 0 turned by ``first`` so that its vCPU 0 runs on another host CPU."""
    pairs, v = [], 0
    for i, node in enumerate(host.nodes):
        cpus = list(node.cpus)
        if i == 0:
            cpus = cpus[first:] + cpus[:first]
        for cpu in cpus:
            pairs.append((v, cpu))
            v += 1
    return H.GuestLayout(name, tuple(pairs),
                         tuple(H.MemNode(n.id, n.id, mem, mem_max or mem) for n in host.nodes))


class Killed(BaseException):
    """The coordinator process dies here (nothing after it runs, no handler sees it)."""


class FakeGuests:
    """Guests that do what they are told, remember what they use (vCPUs, memory per
    guest node), and can go silent. ``host``: each apply checks that no host node
    then holds more guest memory than it has."""

    def __init__(self, layouts, host=None):
        self.layouts, self.host = layouts, host
        self.now = {n: set(g.vcpus) for n, g in layouts.items()}   # fresh: everything
        self.mem = {n: dict(g.whole().mem) for n, g in layouts.items()}   # boot memory
        self.calls, self.silent, self.die_after_apply = [], set(), False
        self.mem_calls = []             # (guest, {node: MiB}) of each step that resized

    def used(self, name, record):
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        return sorted(self.now[name])

    def memory(self, name, record):
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        return {m.node: {"plugged_mb": self.mem[name][m.node] - m.min_mb, "guest_mb": None}
                for m in self.layouts[name].mem_bounds}

    def apply(self, name, record, before, after):
        self.calls.append((name, tuple(after.used)))
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        self.now[name] = set(after.used)
        if dict(after.mem) != self.mem[name]:
            self.mem_calls.append((name, dict(after.mem)))
            self.mem[name] = dict(after.mem)
            assert not self.overcommitted(), self.overcommitted()
        if self.die_after_apply:
            raise Killed()

    def overcommitted(self):
        """Host nodes holding more guest memory than they have (with ``host``)."""
        out = []
        for node in self.host.nodes if self.host else ():
            total = sum(mb for name, mem in self.mem.items() for m in self.layouts[name].mem_bounds
                        for n, mb in mem.items() if n == m.node and m.host_node == node.id)
            if total > node.mem_kb // 1024:
                out.append(node.id)
        return out

    def overlaps(self):
        seen, out = {}, []
        for name, used in self.now.items():
            for v in used:
                cpu = self.layouts[name].hosts[v]
                if cpu in seen:
                    out.append(cpu)
                seen[cpu] = name
        return out




class FakeVmem:
    """QEMU's side of 'vm run --mem-hotplug': a virtio-mem device per resizable guest
    node of ``layout``. After a qom-set of requested-size, the guest has plugged it by
    the ``lag``-th query-memory-devices; nodes in ``stuck`` never get there."""

    def __init__(self, layout, lag=2, stuck=()):
        self.lag, self.stuck, self.sets, self._wait = lag, set(stuck), [], 0
        self.dev = {m.node: {"size": 0, "requested-size": 0,
                             "max-size": (m.max_mb - m.min_mb) << 20}
                    for m in layout.mem_bounds if m.max_mb > m.min_mb}

    def execute(self, name, args):
        if name == "qom-set":
            node = int(args["path"].rsplit("vnuma-vmem", 1)[1])
            assert args["property"] == "requested-size", args
            self.dev[node]["requested-size"] = args["value"]
            self.sets.append((node, args["value"] >> 20))
            self._wait = self.lag
            return {}
        assert name == "query-memory-devices", name
        self._wait -= 1
        if self._wait <= 0:
            for node, d in self.dev.items():
                if node not in self.stuck:
                    d["size"] = d["requested-size"]
        return [{"type": "virtio-mem", "data": {**d, "node": n, "id": f"vnuma-vmem{n}",
                                                "block-size": 2 << 20}}
                for n, d in sorted(self.dev.items())]


async def _messages(reader):
    """JSON objects as they arrive (a client need not end them with a newline)."""
    buf, decoder = "", json.JSONDecoder()
    while chunk := await reader.read(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                msg, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            yield msg


class FakeAgent:
    """A guest agent on a unix socket, speaking QGA's JSON in a thread of its own:
    guest-sync, guest-exec and guest-exec-status. ``run(argv)`` gives (exit code,
    stdout, stderr) of a command. ``silent``: reads, never answers. ``stale``: the first
    request gets first a reply to a request an earlier client sent with the same id
    (as a channel left by a client that gave up holds), then its own. ``polls``: status calls before 'exited'."""

    def __init__(self, path, run, silent=False, stale=False, polls=2):
        self.path, self.run, self.silent, self.stale, self.polls = \
            str(path), run, silent, stale, polls
        self.seen, self._procs = [], {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self):
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_unix_server(self._client, self.path))
        self._ready.set()
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    async def _client(self, reader, writer):
        async for msg in _messages(reader):
            self.seen.append(msg["execute"])
            if self.silent:
                continue
            if self.stale and len(self.seen) == 1:     # an earlier client's reply, same id
                writer.write(json.dumps({"return": 0, "id": msg.get("id")}).encode() + b"\n")
            reply = {"return": self._answer(msg["execute"], msg.get("arguments", {})),
                     "id": msg.get("id")}
            if isinstance(reply["return"], Exception):
                reply = {"error": {"class": "GenericError", "desc": str(reply["return"])},
                         "id": msg.get("id")}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()

    def _answer(self, cmd, args):
        if cmd == "guest-sync":
            return args["id"]
        if cmd == "guest-exec":
            try:
                code, out, err = self.run([args["path"], *args.get("arg", [])])
            except FileNotFoundError as exc:
                return exc
            pid = 1000 + len(self._procs)
            self._procs[pid] = [self.polls, code, out, err]
            return {"pid": pid}
        if cmd == "guest-exec-status":
            proc = self._procs[args["pid"]]
            proc[0] -= 1
            if proc[0] > 0:
                return {"exited": False}
            return {"exited": True, "exitcode": proc[1],
                    "out-data": base64.b64encode(proc[2].encode()).decode(),
                    "err-data": base64.b64encode(proc[3].encode()).decode()}
        return RuntimeError(f"The command {cmd} has not been found")


class FakeGuestShare:
    """What 'vnuma-sched --json share status|apply|revert' does in a guest with
    ``nodes`` ([[CPU, ...], ...]), for a FakeAgent: parked CPUs remembered."""

    def __init__(self, nodes, mem_kb=None):
        self.nodes, self.parked, self.commands = nodes, set(), []
        self.mem_kb = mem_kb            # mem_kb(node): its MemTotal now, if given

    def __call__(self, argv):
        assert argv[1:3] == ["--json", "share"], argv
        cmd, args = argv[3], argv[4:]
        self.commands.append([cmd, *args])
        if cmd == "apply":
            use = set(parse_cpulist(args[args.index("--use") + 1]))
            self.parked = {c for n in self.nodes for c in n} - use
            return 0, json.dumps({"target": {"parked": format_cpulist(self.parked)}}), ""
        if cmd == "revert":
            if not self.parked:
                return 2, "", "vnuma-sched: error: nothing to revert\n"
            self.parked = set()
            return 0, json.dumps({"restored": 9}), ""
        return 0, json.dumps({"partition": "isolated" if self.parked else "",
                              "parked": format_cpulist(self.parked),
                              "nodes": [{"node": i, "used": format_cpulist(set(n) - self.parked),
                                         "parked": format_cpulist(set(n) & self.parked),
                                         **({"mem_kb": self.mem_kb(i)} if self.mem_kb else {})}
                                        for i, n in enumerate(self.nodes)]}), ""
