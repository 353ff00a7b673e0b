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
                         tuple((n.id, mem, mem_max or mem) for n in host.nodes))


class Killed(BaseException):
    """The coordinator process dies here (nothing after it runs, no handler sees it)."""


class FakeGuests:
    """Guests that do what they are told, remember what they use, and can go silent."""

    def __init__(self, layouts):
        self.layouts = layouts
        self.now = {n: set(g.vcpus) for n, g in layouts.items()}   # fresh: everything
        self.calls, self.silent, self.die_after_apply = [], set(), False

    def used(self, name, record):
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        return sorted(self.now[name])

    def apply(self, name, record, before, after):
        self.calls.append((name, tuple(after.used)))
        if name in self.silent:
            raise GuestBehind(name, "no answer from its agent within 5 s")
        self.now[name] = set(after.used)
        if self.die_after_apply:
            raise Killed()

    def overlaps(self):
        seen, out = {}, []
        for name, used in self.now.items():
            for v in used:
                cpu = self.layouts[name].hosts[v]
                if cpu in seen:
                    out.append(cpu)
                seen[cpu] = name
        return out




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

    def __init__(self, nodes):
        self.nodes, self.parked, self.commands = nodes, set(), []

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
                                         "parked": format_cpulist(set(n) & self.parked)}
                                        for i, n in enumerate(self.nodes)]}), ""
