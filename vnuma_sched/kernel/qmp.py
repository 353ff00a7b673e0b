"""Pin a starting guest's vCPU threads through QMP (the qemu.qmp client).

QEMU starts stopped (-S) with a QMP socket; ``Pinner`` waits for the socket, asks
``query-cpus-fast`` for each vCPU's host thread, pins it to its host CPU with
sched_setaffinity(2), checks it, reads the memory backends back
(``query-memdev``), and only then lets the guest run (``cont``): no guest
instruction runs unpinned. On any failure it stops QEMU (``quit``) and keeps
the reason, so a run fails at once with it instead of running unplaced.

``execute`` runs QMP commands on a running guest's socket (the host coordinator
reads vCPU threads and memory backends with it, share/host_guests.py).
"""

import asyncio
import os
import threading
import time

from qemu.qmp import ConnectError, QMPClient, QMPError

from vnuma_sched.kernel import layout

CONNECT_POLL_S = 0.05


class PinError(Exception):
    pass


def pin_threads(cpus, hosts, setaffinity=os.sched_setaffinity, getaffinity=os.sched_getaffinity):
    """Pin each vCPU thread of ``cpus`` (query-cpus-fast's answer) to its host CPU
    (``hosts``: {vCPU index: host CPU}); return [{"vcpu", "thread", "host_cpu"}]."""
    by_index = {c["cpu-index"]: c for c in cpus}
    if set(by_index) != set(hosts):
        raise PinError(f"QEMU reports vCPUs {sorted(by_index)}, the layout has "
                       f"{sorted(hosts)}")
    done = []
    for vcpu in sorted(hosts):
        tid, cpu = by_index[vcpu]["thread-id"], hosts[vcpu]
        try:
            setaffinity(tid, {cpu})
            got = getaffinity(tid)
        except OSError as err:
            raise PinError(f"pinning vCPU {vcpu} (thread {tid}) to host CPU {cpu}: "
                           f"{err.strerror}") from err
        if got != {cpu}:
            raise PinError(f"vCPU {vcpu} (thread {tid}) allowed on {sorted(got)} "
                           f"after pinning to host CPU {cpu}")
        done.append({"vcpu": vcpu, "thread": tid, "host_cpu": cpu})
    return done


def check_backends(memdevs, topo):
    """[{"node", "id", "host_nodes", "policy", "size_mb"}] from query-memdev; PinError
    if a guest node's backend is not bound as the layout says."""
    by_id = {m["id"]: m for m in memdevs}
    out = []
    for i, node in enumerate(topo.nodes):
        name = layout.BACKEND_ID.format(i)
        dev = by_id.get(name)
        if dev is None:
            raise PinError(f"QEMU has no memory backend {name} for guest node {i}")
        want = ([node.host_node], "bind") if node.host_node is not None else ([], "default")
        got = (dev.get("host-nodes", []), dev.get("policy", "default"))
        if list(got) != list(want):
            raise PinError(f"guest node {i}'s memory is {got[1]} {got[0]}, "
                           f"expected {want[1]} {want[0]}")
        out.append({"node": i, "id": name, "host_nodes": got[0], "policy": got[1],
                    "size_mb": dev["size"] >> 20})
    return out


async def _place(sock, topo, deadline, stopped):
    qmp = QMPClient("vnuma-sched")
    while True:
        # the socket file exists from QEMU's bind(), a moment before it listens
        try:
            await qmp.connect(sock)
            break
        except (FileNotFoundError, ConnectionRefusedError, ConnectError):
            if stopped.is_set() or time.monotonic() > deadline:
                raise PinError("QEMU's QMP socket never answered") from None
            await asyncio.sleep(CONNECT_POLL_S)
    try:
        try:
            vcpus = pin_threads(await qmp.execute("query-cpus-fast"),
                                layout.vcpu_hosts(topo))
            memory = check_backends(await qmp.execute("query-memdev"), topo)
        except Exception:   # noqa: BLE001 - whatever failed, never leave QEMU stopped
            try:
                await qmp.execute("quit")
            except (EOFError, OSError, QMPError):
                pass
            raise
        await qmp.execute("cont")
    finally:
        try:
            await qmp.disconnect()
        except (EOFError, OSError, QMPError):
            pass    # QEMU may close first (after 'quit'); the outcome is known already
    return {"vcpus": vcpus, "memory": memory}


class Pinner:
    """Places a starting guest from a background thread (see the module doc)."""

    def __init__(self, sock, topo, timeout):
        self.sock, self.topo, self.timeout = str(sock), topo, timeout
        self.result, self.error = None, ""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vnuma-pin", daemon=True)

    def _run(self):
        try:
            self.result = asyncio.run(_place(self.sock, self.topo,
                                             time.monotonic() + self.timeout, self._stopped))
        except PinError as err:
            self.error = str(err)
        except Exception as err:  # noqa: BLE001 - QMP/connection failures end the run
            self.error = f"QMP on {self.sock}: {type(err).__name__}: {err}"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopped.set()
        self._thread.join(timeout=5)


def execute(sock, commands, timeout):
    """Run QMP ``commands`` ([(name, arguments or None)]) on a running QEMU's socket;
    their answers in order. PinError on no connection or no answer in ``timeout`` s,
    on a refused command, or when the connection breaks."""
    async def session():
        qmp = QMPClient("vnuma-sched")
        await qmp.connect(str(sock))
        try:
            return [await qmp.execute(name, args) for name, args in commands]
        finally:
            try:
                await qmp.disconnect()
            except (EOFError, OSError, QMPError):
                pass
    try:
        return asyncio.run(asyncio.wait_for(session(), timeout))
    except asyncio.TimeoutError:
        raise PinError(f"QMP on {sock}: no answer within {timeout:g} s") from None
    except (QMPError, OSError, EOFError) as err:
        raise PinError(f"QMP on {sock}: {type(err).__name__}: {err}") from err
