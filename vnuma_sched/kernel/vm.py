"""Boot a kernel as a vNUMA guest through virtme-ng and run one command in it.

The guest command's output and exit code come back through a host directory
shared read-write (--rwdir): it works whatever the guest's console setup is.
A guest panic and a timeout are results of their own.
"""

import json
import platform
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.kernel.kbuild import IMAGE

DEFAULT_DISTANCE = 21
PANIC = re.compile(r"Kernel panic - not syncing.*")
_SIZE = re.compile(r"^(\d+)([MG])$", re.I)


@dataclass(frozen=True)
class GuestNode:
    cpus: tuple
    mem_mb: int


@dataclass(frozen=True)
class GuestTopology:
    nodes: tuple
    distances: tuple  # square matrix

    @property
    def ncpus(self):
        return sum(len(n.cpus) for n in self.nodes)

    @property
    def mem_mb(self):
        return sum(n.mem_mb for n in self.nodes)


def parse_size_mb(text):
    m = _SIZE.match(text.strip())
    if not m:
        raise BadInput(f"--mem {text!r}: expected a size like 2G or 1536M")
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


def _split_mem(total_mb, count, what):
    if total_mb % count:
        raise BadInput(f"{what}: {total_mb} MiB does not split evenly across {count} nodes")
    return total_mb // count


def grid_topology(nodes, cpus_per_node, mem_mb, distance=DEFAULT_DISTANCE):
    """N nodes of M consecutive CPUs each, memory split evenly."""
    if nodes < 1 or cpus_per_node < 1:
        raise BadInput(f"--topology {nodes}x{cpus_per_node}: need at least 1x1")
    per = _split_mem(mem_mb, nodes, f"--mem {mem_mb}M")
    gnodes = tuple(GuestNode(tuple(range(i * cpus_per_node, (i + 1) * cpus_per_node)), per)
                   for i in range(nodes))
    dist = tuple(tuple(10 if i == j else distance for j in range(nodes)) for i in range(nodes))
    return GuestTopology(gnodes, dist)


def from_host(topo, mem_mb):
    """Mirror a host Topology (nodes, CPU counts, distances), CPUs renumbered densely."""
    gnodes, next_cpu = [], 0
    per = _split_mem(mem_mb, len(topo.nodes), f"--mem {mem_mb}M")
    for n in topo.nodes:
        cpus = tuple(range(next_cpu, next_cpu + len(n.cpus)))
        next_cpu += len(n.cpus)
        gnodes.append(GuestNode(cpus, per))
    return GuestTopology(tuple(gnodes), tuple(tuple(n.distances) for n in topo.nodes))


def from_json(path, mem_mb):
    """A ``vnuma-sched topology --json`` document (or the same shape written by hand)."""
    try:
        doc = json.loads(Path(path).read_text())
        nodes = doc["nodes"]
        cpus = [tuple(int(c) for c in n["cpus"]) for n in nodes]
        dist = tuple(tuple(int(d) for d in n["distances"]) for n in nodes)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(f"--topology {path}: not a topology JSON document ({err})") from err
    per = _split_mem(mem_mb, len(nodes), f"--mem {mem_mb}M")
    return validate(GuestTopology(tuple(GuestNode(c, per) for c in cpus), dist), str(path))


def validate(topo, what):
    seen = set()
    for n in topo.nodes:
        if seen & set(n.cpus):
            raise BadInput(f"--topology {what}: CPU lists overlap ({sorted(seen & set(n.cpus))})")
        seen |= set(n.cpus)
    if seen != set(range(len(seen))):
        raise BadInput(f"--topology {what}: CPUs must be 0..{len(seen) - 1} without gaps")
    size = len(topo.nodes)
    if len(topo.distances) != size or any(len(r) != size for r in topo.distances):
        raise BadInput(f"--topology {what}: distance matrix is not {size}x{size}")
    return topo


def parse_topology(spec, mem_mb, host_topology=None):
    """SPEC: NxM, 'host', or a path to a topology JSON file."""
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if m:
        return validate(grid_topology(int(m[1]), int(m[2]), mem_mb), spec)
    if spec == "host":
        if host_topology is None:
            raise BadInput("--topology host: the host topology is not available")
        return validate(from_host(host_topology, mem_mb), spec)
    if Path(spec).is_file():
        return from_json(spec, mem_mb)
    raise BadInput(f"--topology {spec!r}: expected NxM (e.g. 2x2), 'host', or a JSON file")


def _cpurange(cpus):
    return f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else f"{cpus[0]}"


def vng_argv(image, topo, io_dir, accel, append=(), vng="vng"):
    """The virtme-ng command line (a list, never a shell string)."""
    argv = [vng, "--run", str(image), "--verbose", "--cpus", str(topo.ncpus),
            "--memory", f"{topo.mem_mb}M", "--rwdir", str(io_dir)]
    if accel == "tcg":
        argv.append("--disable-kvm")
    for node in topo.nodes:
        # virtme-ng accepts one contiguous range per cpus=; node CPUs are contiguous here
        argv += ["--numa", f"{node.mem_mb}M,cpus={_cpurange(node.cpus)}"]
    for i, row in enumerate(topo.distances):
        for j, d in enumerate(row):
            if i < j:
                argv += ["--numa-distance", f"{i},{j}={d}"]
    for arg in append:
        argv += ["--append", arg]
    return argv + ["--", "/bin/sh", str(io_dir / "run.sh")]


def guest_script(command, io_dir):
    """The script the guest runs: the command, its output and exit code into io_dir."""
    cmd = shlex.join(command)
    return (f"#!/bin/sh\ncd {shlex.quote(str(Path.cwd()))} 2>/dev/null || cd /\n"
            f"{cmd} >{io_dir}/stdout 2>{io_dir}/stderr </dev/null\n"
            f"echo $? >{io_dir}/rc.tmp && mv {io_dir}/rc.tmp {io_dir}/rc\n")


@dataclass
class VmResult:
    status: str          # "exited" | "timeout" | "panic" | "boot-failed"
    exit_code: int
    accel: str
    seconds: float
    stdout: str = ""
    stderr: str = ""
    console_tail: list = field(default_factory=list)
    panic: str = ""


def _tail(text, n=15):
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


def classify(io_dir, console, timed_out, accel, seconds):
    """Turn what came back from the guest into a VmResult."""
    rc_file = io_dir / "rc"
    read = lambda name: (io_dir / name).read_text(errors="replace") if (io_dir / name).exists() else ""  # noqa: E731
    panic = PANIC.search(console)
    if rc_file.exists():
        return VmResult("exited", int(rc_file.read_text().strip() or 255), accel, seconds,
                        read("stdout"), read("stderr"), _tail(console))
    if panic:
        return VmResult("panic", 255, accel, seconds, read("stdout"), read("stderr"),
                        _tail(console), panic.group(0))
    status = "timeout" if timed_out else "boot-failed"
    return VmResult(status, 124 if timed_out else 255, accel, seconds, read("stdout"),
                    read("stderr"), _tail(console))


def kernel_image(path):
    """A bzImage, or the one inside a build directory; BadInput if there is none."""

    image = Path(path)
    if image.is_dir():
        image = image / IMAGE
    if not image.is_file():
        raise BadInput(f"--kernel {path}: no kernel image there")
    return image


def find_vng():
    found = shutil.which("vng")
    if not found:
        raise Missing("vng (virtme-ng) not found on PATH; run 'make install'")
    return found


def run(image, topo, command, runner, accel, timeout, append=(), workdir=None):
    """Boot ``image`` with ``topo``, run ``command``; return a VmResult."""
    image = Path(image)
    if not image.is_file():
        raise BadInput(f"--kernel {image}: no such kernel image")
    vng = find_vng()
    io_dir = Path(tempfile.mkdtemp(prefix="vnuma-vm-", dir=workdir))
    (io_dir / "run.sh").write_text(guest_script(command, io_dir))
    argv = vng_argv(image, topo, io_dir, accel, append, vng=vng)
    t0 = time.monotonic()
    res = runner.run(argv, check=False, timeout=timeout)
    seconds = time.monotonic() - t0
    console = res.stdout + res.stderr
    (io_dir / "console.log").write_text(console)
    result = classify(io_dir, console, res.timed_out, accel, seconds)
    shutil.rmtree(io_dir, ignore_errors=True)
    return result


def probe_kvm(image, runner, timeout=25):
    """(usable, reason): boot ``image`` under -accel kvm and look for the kernel banner.

    Opening /dev/kvm proves nothing: some hosts expose one that cannot run a
    normal kernel (it hangs at "Booting from ROM").
    """
    if not Path("/dev/kvm").exists():
        return False, "no /dev/kvm"
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise Missing("qemu-system-x86_64 not found; run 'make install'")
    argv = [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(image),
            "-append", "console=ttyS0 panic=-1"]
    res = runner.run(argv, check=False, timeout=timeout)
    if "Linux version" in res.stdout + res.stderr:
        return True, "a test kernel booted under KVM"
    why = "timed out" if res.timed_out else f"qemu exited {res.returncode}"
    return False, f"KVM did not boot a test kernel ({why})"


def choose_accel(requested, image, runner, cache_file):
    """'kvm' or 'tcg' and why; 'auto' tries KVM once per host and caches the answer."""
    if requested in ("kvm", "tcg"):
        return requested, "requested"
    key = platform.release()
    try:
        cached = json.loads(Path(cache_file).read_text())
        if cached.get("host") == key:
            return cached["accel"], cached["reason"] + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    ok, reason = probe_kvm(image, runner)
    accel = "kvm" if ok else "tcg"
    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    Path(cache_file).write_text(json.dumps({"host": key, "accel": accel, "reason": reason}))
    return accel, reason
