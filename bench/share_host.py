#!/usr/bin/env python3
"""Time from 'share host set' to capacity usable in the receiving guest, against CPU
hotplug of the same vCPU through the same channel (issue 15). Runs as root on the host:

    sudo PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/share_host.py \\
        --kernel /var/cache/vnuma_sched/builds/test-linux-6.12 [--runs 10] [--json FILE]

Boots one placed 2-node guest (one vCPU per node on the host's first two CPUs, 1:1,
memory bound; the vm tier's guest) with its guest agent and QMP socket, takes it under
the coordinator (in this process, the library 'share host' runs), then per run:

- give: 'set' the guest to one vCPU. The coordinator has the guest park the other
  one ('vnuma-sched share apply' through qemu-ga), waits for the guest's own status to
  confirm it and fences the parked vCPU's thread onto the boot vCPU's host CPU;
- take: 'set' it back to two vCPUs: the thread is pinned to its own host CPU again, the
  guest unparks the vCPU and confirms that it uses it. This is the receiving guest's
  half of a move: when it returns, the capacity is usable there;
- offline / online: the same vCPU through /sys/devices/system/cpu/cpu1/online, written
  by 'sh' through the same guest agent, returning when the write has returned;
- the agent's round trip alone ('true' through guest-exec): the channel's floor.

A move between two guests is a give in one and a take in the other; a second guest
needs a boot vCPU on a host CPU of its own, so on a 2-CPU host the two halves are
timed in one guest. Prints medians, hotplug/share ratios with their 95% bootstrap
intervals and Mann-Whitney p. Under QEMU TCG these are not hardware timings: the
guest's own Python start-up over 9p dominates each 'share' step.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vnuma_sched.experiments import stats  # noqa: E402
from vnuma_sched.kernel import layout, qga, vm  # noqa: E402
from vnuma_sched.share import host_plan as H  # noqa: E402
from vnuma_sched.share import host_state as S  # noqa: E402
from vnuma_sched.share.coordinator import Coordinator  # noqa: E402
from vnuma_sched.share.host_guests import AgentGuests, read_layout  # noqa: E402
from vnuma_sched.system.sysroot import SysRoot  # noqa: E402
from vnuma_sched.system.topology import read_topology  # noqa: E402

VNUMA = str(Path(sys.executable).parent / "vnuma-sched")
DONE = "/run/vnuma-bench.done"
TIMEOUT = 120.0
ONLINE = "/sys/devices/system/cpu/cpu1/online"


def placement(tmp, host):
    """The vm tier's placed guest: one vCPU per guest node on the host's first CPUs."""
    cpus = layout.host_order(host)
    if len(cpus) < 2:
        sys.exit("needs a host with 2 CPUs")
    nodes = [{"cpus": [i], "distances": [10, 21] if i == 0 else [21, 10],
              "host_cpus": [cpus[i]], "host_node": host.node_of(cpus[i])} for i in range(2)]
    spec = tmp / "placed.json"
    spec.write_text(json.dumps({"nodes": nodes}))
    vm.parse_topology(str(spec), 1024, host)        # refuses a bad placement here
    return spec


def boot(kernel, spec, agent, qmp_sock):
    script = ("grep -q cgroup2 /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup; "
              f"while [ ! -e {DONE} ]; do sleep 0.2; done")
    proc = subprocess.Popen([VNUMA, "vm", "run", "--kernel", kernel, "--topology", str(spec),
                             "--mem", "1G", "--timeout", "3600", "--agent-socket", str(agent),
                             "--qmp-socket", str(qmp_sock), "--", "sh", "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            qga.run(agent, [VNUMA, "share", "status"], 30)
            return proc
        except qga.NoAnswer:
            time.sleep(1)
    proc.kill()
    sys.exit(f"the guest agent did not answer (vm run: {proc.communicate()[1][-500:]})")


def timed(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def agent_sh(agent, text):
    res = qga.run(agent, ["sh", "-c", text], TIMEOUT)
    if res.exitcode != 0:
        sys.exit(f"in the guest, {text!r} failed: {res.stderr[-300:]}")


def one_set(coord, node, count):
    outcome = coord.set([H.parse_request("g", f"node{node}={count}")], f"g node{node}={count}")
    if not outcome.finished:
        sys.exit(f"set node{node}={count} was not confirmed: {outcome.failed.reason}")


def measure(coord, agent, node, runs):
    out = {k: [] for k in ("give", "take", "offline", "online", "agent")}
    for i in range(runs):
        out["give"].append(timed(lambda: one_set(coord, node, 1)))
        out["take"].append(timed(lambda: one_set(coord, node, 2)))
        out["offline"].append(timed(lambda: agent_sh(agent, f"echo 0 > {ONLINE}")))
        out["online"].append(timed(lambda: agent_sh(agent, f"echo 1 > {ONLINE}")))
        out["agent"].append(timed(lambda: agent_sh(agent, "true")))
        print(f"run {i + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in out.items()),
              file=sys.stderr)
    return out


def report(out, runs):
    med = {k: stats.median(v) for k, v in out.items()}
    print(f"{'step':<34}{'median ms':>10}")
    for k, label in (("give", "give back (set to 1 vCPU)"), ("take", "take (set to 2 vCPUs)"),
                     ("offline", "offline through the agent"),
                     ("online", "online through the agent"), ("agent", "agent round trip")):
        print(f"{label:<34}{med[k]:>10.1f}")
    for share_k, plug_k in (("take", "online"), ("give", "offline")):
        lo, hi = stats.bootstrap_ratio_ci(out[share_k], out[plug_k])
        p = stats.mann_whitney(out[share_k], out[plug_k])[1]
        print(f"hotplug/share, {share_k} vs {plug_k}: {med[plug_k] / med[share_k]:.3f}x "
              f"(95% CI {lo:.3f}-{hi:.3f}, p = {p:.2g})")
    print(f"{runs} runs, one 2-node placed guest under this host's accelerator; "
          "TCG timings are not hardware timings")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", required=True, help="a guest kernel (vm run --kernel)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", metavar="FILE", help="every run's figures")
    args = ap.parse_args()
    host = read_topology(SysRoot("/"))
    tmp = Path(tempfile.mkdtemp(prefix="vnuma-bench-share-host-"))
    agent, qmp_sock = tmp / "qga.sock", tmp / "qmp.sock"
    proc = boot(args.kernel, placement(tmp, host), agent, qmp_sock)
    coord = Coordinator(S.StateDir(tmp / "state"), host,
                        AgentGuests((VNUMA,), TIMEOUT, sysroot=SysRoot("/")))
    try:
        record = S.GuestRecord(read_layout("g", qmp_sock), str(qmp_sock), str(agent))
        node = host.node_of(layout.host_order(host)[0])
        start = coord.start({"g": record}, (), "", (VNUMA,), TIMEOUT)
        if not start.finished:
            sys.exit(f"start was not confirmed: {start.failed.reason}")
        out = measure(coord, agent, node, args.runs)
        coord.stop()
    finally:
        try:
            qga.run(agent, ["touch", DONE], 30)
            proc.wait(timeout=120)
        except (qga.AgentError, subprocess.TimeoutExpired):
            proc.kill()
    report(out, args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
