"""Boot a kernel as a vNUMA guest through virtme-ng and run one command in it.

The guest command's output and exit code come back through a host directory
shared read-write (--rwdir): it works whatever the guest's console setup is.
A guest panic and a timeout are results of their own.
"""

import json
import os
import platform
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.kernel import kconfig, layout, qga, qmp
from vnuma_sched.kernel.kbuild import IMAGE
from vnuma_sched.runner import find_tool, path_with

DEFAULT_DISTANCE = 21
LOCAL_DISTANCE = 10
# ACPI SLIT: 10 is local, a remote node is further (Linux refuses <= 10 off the
# diagonal), 255 means unreachable.
REMOTE_DISTANCES = range(11, 255)
# virtme-ng boots x86 guests on QEMU's q35 machine and adds no interrupt-remapping
# IOMMU, so vCPUs need xAPIC IDs 0-254 (q35's 288 needs x2APIC with IOMMU EIM; TCG
# in QEMU 7.2 has no x2APIC at all). QEMU's MAX_NODES is 128.
QEMU_MAX_VCPUS, QEMU_MAX_NODES = 255, 128
PANIC = re.compile(r"Kernel panic - not syncing.*")
_SIZE = re.compile(r"^([0-9]{1,7})([MG])$", re.I)
_GRID = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")


@dataclass(frozen=True)
class GuestNode:
    cpus: tuple
    mem_mb: int
    # Full vNUMA: the host CPU that runs each of ``cpus`` (same order) and the host
    # node that holds this node's memory; () / None when the node is not placed.
    host_cpus: tuple = ()
    host_node: int | None = None


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

    def summary(self):
        """'4 vCPUs, 2 nodes[, pinned]' for progress lines."""
        return f"{self.ncpus} vCPUs, {len(self.nodes)} nodes{', pinned' if self.pinned else ''}"

    @property
    def pinned(self):
        """True when every vCPU has a host CPU (a Full-vNUMA layout)."""
        return all(n.host_cpus or not n.cpus for n in self.nodes) and \
            any(n.host_cpus for n in self.nodes)

    def to_dict(self):
        """The topology JSON shape ``--topology FILE`` reads back."""
        out = []
        for i, (n, d) in enumerate(zip(self.nodes, self.distances)):
            node = {"id": i, "cpus": list(n.cpus), "distances": list(d)}
            if self.pinned:
                node.update(host_cpus=list(n.host_cpus), host_node=n.host_node)
            out.append(node)
        return {"nodes": out}


@dataclass(frozen=True)
class GuestLimits:
    """The largest guest QEMU and the guest kernel take, each with where it comes from."""

    max_cpus: int = QEMU_MAX_VCPUS
    cpus_why: str = "QEMU's q35 machine without an interrupt-remapping IOMMU"
    max_nodes: int = QEMU_MAX_NODES
    nodes_why: str = "QEMU (MAX_NODES)"


def image_config(image):
    """The .config a kernel image was built with (beside it, or at the top of its
    build directory), else None (then only QEMU's limits are known)."""
    image = Path(image)
    candidates = [image.parent / ".config"]
    if image.as_posix().endswith("/" + IMAGE):
        candidates.append(image.parents[len(Path(IMAGE).parts) - 1] / ".config")
    return next((c for c in candidates if c.is_file()), None)


def guest_limits(configs=None):
    """GuestLimits from QEMU's and from the kernel configuration ``configs`` (files
    merged in order, later ones win; none: QEMU's limits only)."""
    configs = [c for c in configs or () if c is not None]
    values, where = {}, {}
    for path in configs:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for sym, val in kconfig.parse(text, strict=False).items():
            values[sym], where[sym] = val, path
    limits = GuestLimits()
    nr = values.get("CONFIG_NR_CPUS", "")
    if nr.isascii() and nr.isdigit() and int(nr) < limits.max_cpus:
        limits = GuestLimits(int(nr), f"the guest kernel (CONFIG_NR_CPUS={nr} in "
                                      f"{where['CONFIG_NR_CPUS']})")
    shift = values.get("CONFIG_NODES_SHIFT", "")
    if shift.isascii() and shift.isdigit() and int(shift) < 16 and \
            2 ** int(shift) < limits.max_nodes:
        limits = GuestLimits(limits.max_cpus, limits.cpus_why, 2 ** int(shift),
                             f"the guest kernel (CONFIG_NODES_SHIFT={shift} in "
                             f"{where['CONFIG_NODES_SHIFT']})")
    return limits


def parse_size_mb(text, what="--mem"):
    m = _SIZE.match(text.strip())
    if not m:
        raise BadInput(f"{what} {text!r}: expected a size like 2G or 1536M")
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


def _split_mem(total_mb, count, what):
    if total_mb % count:
        raise BadInput(f"{what}: {total_mb} MiB does not split evenly across {count} nodes")
    return total_mb // count


def check_size(nodes, cpus, what, limits):
    """Refuse a guest larger than ``limits`` before anything is built for it."""
    if nodes > limits.max_nodes:
        raise BadInput(f"--topology {what}: {nodes} nodes, more than {limits.nodes_why} "
                       f"supports ({limits.max_nodes})")
    if cpus > limits.max_cpus:
        raise BadInput(f"--topology {what}: {cpus} vCPUs, more than {limits.cpus_why} "
                       f"supports ({limits.max_cpus})")


def grid_topology(nodes, cpus_per_node, mem_mb, distance=DEFAULT_DISTANCE, limits=None):
    """N nodes of M consecutive CPUs each, memory split evenly."""
    what = f"{nodes}x{cpus_per_node}"
    if nodes < 1 or cpus_per_node < 1:
        raise BadInput(f"--topology {what}: need at least 1x1")
    check_size(nodes, nodes * cpus_per_node, what, limits or GuestLimits())
    per = _split_mem(mem_mb, nodes, f"--mem {mem_mb}M")
    gnodes = tuple(GuestNode(tuple(range(i * cpus_per_node, (i + 1) * cpus_per_node)), per)
                   for i in range(nodes))
    dist = tuple(tuple(10 if i == j else distance for j in range(nodes)) for i in range(nodes))
    return GuestTopology(gnodes, dist)


def from_host(topo, mem_mb, limits=None):
    """Mirror a host Topology (nodes, CPU counts, distances), CPUs renumbered densely."""
    check_size(len(topo.nodes), len(topo.cpus), "host", limits or GuestLimits())
    gnodes, next_cpu = [], 0
    per = _split_mem(mem_mb, len(topo.nodes), f"--mem {mem_mb}M")
    for n in topo.nodes:
        cpus = tuple(range(next_cpu, next_cpu + len(n.cpus)))
        next_cpu += len(n.cpus)
        # vCPU k of this node mirrors the node's k-th host CPU; a memoryless host
        # node has nothing to bind its guest node's memory to
        gnodes.append(GuestNode(cpus, per, tuple(sorted(n.cpus)),
                                None if n.memoryless else n.id))
    return GuestTopology(tuple(gnodes), tuple(tuple(n.distances) for n in topo.nodes))


def _int_list(node, key, what, index):
    value = node.get(key)
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise BadInput(f"--topology {what}: nodes[{index}].{key} must be a list of integers")
    return tuple(value)


def _json_nodes(path):
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadInput(f"--topology {path}: not a topology JSON document ({err})") from err
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not nodes or \
            not all(isinstance(n, dict) for n in nodes):
        raise BadInput(f"--topology {path}: \"nodes\" must be a non-empty list of objects")
    return nodes


def from_json(path, mem_mb, limits=None):
    """A ``vnuma-sched topology --json`` document (or the same shape written by hand)."""
    limits = limits or guest_limits()
    nodes = _json_nodes(path)
    cpus = [_int_list(n, "cpus", path, i) for i, n in enumerate(nodes)]
    dist = tuple(_int_list(n, "distances", path, i) for i, n in enumerate(nodes))
    check_size(len(nodes), sum(map(len, cpus)), str(path), limits)
    per = _split_mem(mem_mb, len(nodes), f"--mem {mem_mb}M")
    placed = layout.json_placement(nodes, cpus, str(path))
    return validate(GuestTopology(tuple(GuestNode(c, per, *p) for c, p in zip(cpus, placed)),
                                  dist), str(path), limits)


def _check_cpus(topo, what):
    seen = set()
    for i, n in enumerate(topo.nodes):
        if len(set(n.cpus)) != len(n.cpus):
            dup = sorted(c for c in set(n.cpus) if n.cpus.count(c) > 1)
            raise BadInput(f"--topology {what}: node {i} lists CPU {dup[0]} more than once")
        if seen & set(n.cpus):
            raise BadInput(f"--topology {what}: CPU lists overlap ({sorted(seen & set(n.cpus))})")
        seen |= set(n.cpus)
    if not seen:
        raise BadInput(f"--topology {what}: no CPUs")
    if seen != set(range(len(seen))):
        raise BadInput(f"--topology {what}: CPUs must be 0..{len(seen) - 1} without gaps")
    for i, n in enumerate(topo.nodes):
        if n.cpus and sorted(n.cpus) != list(range(min(n.cpus), max(n.cpus) + 1)):
            raise BadInput(f"--topology {what}: node {i}'s CPUs are not one contiguous range "
                           "(virtme-ng takes one range per node; '--topology host' "
                           "renumbers a host's CPUs)")


def _check_distances(topo, what):
    size = len(topo.nodes)
    rows = topo.distances
    if len(rows) != size or any(len(r) != size for r in rows):
        raise BadInput(f"--topology {what}: distance matrix is not {size}x{size}")
    for i in range(size):
        if rows[i][i] != LOCAL_DISTANCE:
            raise BadInput(f"--topology {what}: distance from node {i} to itself is "
                           f"{rows[i][i]}, must be {LOCAL_DISTANCE}")
        for j in range(size):
            if i != j and rows[i][j] not in REMOTE_DISTANCES:
                raise BadInput(f"--topology {what}: distance {rows[i][j]} from node {i} to "
                               f"node {j} is outside {REMOTE_DISTANCES.start}.."
                               f"{REMOTE_DISTANCES.stop - 1}")
            if rows[i][j] != rows[j][i]:
                raise BadInput(f"--topology {what}: distances between nodes {i} and {j} "
                               f"differ ({rows[i][j]} and {rows[j][i]})")


def validate(topo, what, limits=None):
    """Refuse what QEMU or the guest would reject or silently change."""
    check_size(len(topo.nodes), topo.ncpus, what, limits or guest_limits())
    if not topo.nodes:
        raise BadInput(f"--topology {what}: no nodes")
    _check_cpus(topo, what)
    _check_distances(topo, what)
    return topo


def parse_topology(spec, mem_mb, host_topology=None, limits=None, pin=None):
    """SPEC: NxM, 'host', or a path to a topology JSON file.

    ``limits``: what QEMU and the guest kernel take (default: guest_limits()).
    ``pin``: None places the guest where the topology names host CPUs ('host' and
    files with host_cpus), True places a grid in host order, False places nothing
    (layout.settle); placing needs ``host_topology``.
    """
    limits = limits or guest_limits()
    m = _GRID.fullmatch(spec)
    if m:
        topo = validate(grid_topology(int(m[1]), int(m[2]), mem_mb, limits=limits), spec,
                        limits)
    elif spec == "host":
        if host_topology is None:
            raise BadInput("--topology host: the host topology is not available")
        topo = validate(from_host(host_topology, mem_mb, limits), spec, limits)
    elif Path(spec).is_file():
        topo = from_json(spec, mem_mb, limits)
    else:
        raise BadInput(f"--topology {spec!r}: expected NxM (e.g. 2x2), 'host', or a JSON file")
    return layout.settle(topo, pin, host_topology, spec)


# What virtme-ng's guest init mounts over with a fresh tmpfs (or its own
# filesystem): a host path under one of these is not what the guest sees.
GUEST_HIDDEN = ("/run", "/dev", "/proc", "/sys", "/var/log", "/var/tmp", "/var/cache",
                "/var/spool/rsyslog", "/var/lib/apt", "/var/lib/sudo", "/var/lib/snapd",
                "/var/lib/portables", "/var/lib/machines", "/var/lib/private", "/lib/modules")


def check_guest_visible(path, what):
    """BadInput unless the guest sees ``path`` (resolved, symlinks too) as the host does."""
    real = Path(path).resolve()
    for hidden in GUEST_HIDDEN:
        if real == Path(hidden) or Path(hidden) in real.parents:
            raise BadInput(f"{what} {path}: a guest cannot see {hidden} (its init mounts a "
                           "tmpfs there); use a directory under /tmp or the project")
    return real


def _cpurange(cpus):
    return f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else f"{cpus[0]}"


def _numa_node(node):
    return f"{node.mem_mb}M,cpus={_cpurange(node.cpus)}" if node.cpus else f"{node.mem_mb}M"


QMP_SOCKET = "qmp.sock"   # in the run's io_dir
GUEST_NAME = "vnuma-guest"   # QEMU's -name (thread names) and the libvirt domain's


def _hotplug_args(topo, hotplug_mb):
    """One virtio-mem device per guest node, and QEMU's room for them: a second -m
    that QEMU merges into virtme-ng's (whose --memory takes a size only)."""
    argv = []
    for i, node in enumerate(topo.nodes):
        backend, device = layout.vmem_objects(i, node, hotplug_mb)
        argv += [f"--qemu-opts=-object {backend}", f"--qemu-opts=-device {device}"]
    maxmem = topo.mem_mb + hotplug_mb * len(topo.nodes)
    return argv + [f"--qemu-opts=-m {topo.mem_mb}M,maxmem={maxmem}M"]


def _placed_args(topo, qmp_sock, hotplug_mb=0):
    """virtme-ng arguments of a placed (Full-vNUMA) guest: our own memory backends
    bound to host nodes (virtme-ng's "--numa 0,..." adds none), resizable memory per
    node when ``hotplug_mb``, a QMP socket, and QEMU stopped until the vCPU threads
    are pinned (kernel/qmp.py)."""
    argv = []
    for i, node in enumerate(topo.nodes):
        cpus = f",cpus={_cpurange(node.cpus)}" if node.cpus else ""
        argv += ["--numa", f"0,memdev={layout.BACKEND_ID.format(i)}{cpus}",
                 f"--qemu-opts=-object {layout.backend_object(i, node)}"]
    if hotplug_mb:
        argv += _hotplug_args(topo, hotplug_mb)
    # "=": a value starting with "-" stays a value; virtme-ng joins these into
    # its QEMU command line, the names make thread names "CPU n/TCG" (or /KVM)
    return argv + [f"--qemu-opts=-qmp unix:{qmp_sock},server=on,wait=off",
                   "--qemu-opts=-S", f"--qemu-opts=-name {GUEST_NAME},debug-threads=on"]


def _agent_args(sock):
    """A virtio-serial port named as qemu-ga expects (kernel/qga.py), on a unix socket
    QEMU listens on: the host's channel to the guest agent."""
    return ["--qemu-opts=-device virtio-serial-pci,id=vnuma-vser",
            f"--qemu-opts=-chardev socket,path={sock},server=on,wait=off,id=vnuma-qga",
            "--qemu-opts=-device virtserialport,bus=vnuma-vser.0,chardev=vnuma-qga,"
            f"name={qga.PORT_NAME}"]


def vng_argv(image, topo, io_dir, accel, append=(), vng="vng", agent_socket=None,
             qmp_socket=None, hotplug_mb=0):
    """The virtme-ng command line (a list, never a shell string); a placed guest's QMP
    socket is ``qmp_socket`` or the run's io_dir/qmp.sock; ``hotplug_mb``: MiB per
    guest node a virtio-mem device can plug (placed guests only)."""
    argv = [vng, "--run", str(image), "--verbose", "--cpus", str(topo.ncpus),
            "--memory", f"{topo.mem_mb}M", "--rwdir", str(io_dir)]
    if accel == "tcg":
        argv.append("--disable-kvm")
    if agent_socket:
        argv += _agent_args(agent_socket)
    if topo.pinned:
        argv += _placed_args(topo, qmp_socket or io_dir / QMP_SOCKET, hotplug_mb)
    else:
        for node in topo.nodes:
            # virtme-ng accepts one contiguous range per cpus=; node CPUs are contiguous
            argv += ["--numa", _numa_node(node)]
    for i, row in enumerate(topo.distances):
        for j, d in enumerate(row):
            if i < j:
                argv += ["--numa-distance", f"{i},{j}={d}"]
    for arg in [*append, *([layout.ONLINE_MOVABLE] if hotplug_mb else [])]:
        argv.append(f"--append={arg}")  # "=": a value starting with "-" stays a value
    return argv + ["--", "/bin/sh", str(io_dir / "run.sh")]


def _start_agent(qemu_ga):
    """Shell lines that start qemu-ga on the port named for it. The guest has no udev
    links under /dev/virtio-ports: the port is found by its name in sysfs."""
    return (f"for p in /sys/class/virtio-ports/*; do\n"
            f"  [ \"$(cat \"$p/name\" 2>/dev/null)\" = {qga.PORT_NAME} ] && "
            f"{shlex.quote(str(qemu_ga))} -m virtio-serial -p \"/dev/${{p##*/}}\" -d\n"
            "done\n")


def guest_script(command, io_dir, qemu_ga=None):
    """The script the guest runs: the command, its output and exit code into io_dir;
    with ``qemu_ga`` (its path), the guest agent started first."""
    cmd = shlex.join(command)
    io = shlex.quote(str(io_dir))
    return (f"#!/bin/sh\ncd {shlex.quote(str(Path.cwd()))} 2>/dev/null || cd /\n"
            + (_start_agent(qemu_ga) if qemu_ga else "") +
            f"{cmd} >{io}/stdout 2>{io}/stderr </dev/null\n"
            f"echo $? >{io}/rc.tmp && mv {io}/rc.tmp {io}/rc\n")


@dataclass
class VmResult:
    status: str          # "exited" | "timeout" | "panic" | "boot-failed" | "pin-failed"
    exit_code: int
    accel: str
    seconds: float
    stdout: str = ""
    stderr: str = ""
    console_tail: list = field(default_factory=list)
    panic: str = ""
    console: str = field(default="", repr=False)    # the whole console, for the record
    placement: dict | None = None   # Full vNUMA: pinned threads and bound memory, as seen


def _tail(text, n=15):
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


def classify(io_dir, console, timed_out, accel, seconds):
    """Turn what came back from the guest into a VmResult."""
    rc_file = io_dir / "rc"
    read = lambda name: (io_dir / name).read_text(errors="replace") if (io_dir / name).exists() else ""  # noqa: E731
    panic = PANIC.search(console)
    if rc_file.exists():
        res = VmResult("exited", int(rc_file.read_text().strip() or 255), accel, seconds,
                       read("stdout"), read("stderr"), _tail(console))
    elif panic:
        res = VmResult("panic", 255, accel, seconds, read("stdout"), read("stderr"),
                       _tail(console), panic.group(0))
    else:
        res = VmResult("timeout" if timed_out else "boot-failed", 124 if timed_out else 255,
                       accel, seconds, read("stdout"), read("stderr"), _tail(console))
    res.console = console
    return res


def kernel_image(path):
    """A bzImage, or the one inside a build directory (absolute); BadInput if there is none."""

    image = Path(path).absolute()
    if image.is_dir():
        image = image / IMAGE
    if not image.is_file():
        raise BadInput(f"--kernel {path}: no kernel image there")
    return image


def find_vng(environ=None, executable=None):
    """virtme-ng's vng: beside the running interpreter (the venv's bin/), then $PATH."""
    found = find_tool("vng", environ, executable)
    if not found:
        raise Missing("vng (virtme-ng) not found beside the Python interpreter or on PATH; "
                      "run 'make install'")
    return found


def shell_safe(value):
    """True when a shell reads ``value`` as one word unchanged (virtme-ng builds a
    shell command line out of some of its arguments)."""
    return shlex.quote(str(value)) == str(value)


def _safe_image(image, io_dir):
    """``image``, or a symlink to it in ``io_dir`` when its path is not shell-safe."""
    if shell_safe(image):
        return image
    link = io_dir / "bzImage"
    link.symlink_to(image)
    return link


def find_qemu_ga(environ=None):
    """qemu-ga's path (the guest runs it from the host's root file system)."""
    environ = os.environ if environ is None else environ
    found = find_tool("qemu-ga", {"PATH": f"{environ.get('PATH', '')}:/usr/sbin:/sbin"})
    if not found:
        raise Missing("qemu-ga not found: apt-get install qemu-guest-agent")
    return found


def _socket(path, what):
    """A socket path QEMU can be given (absolute), or None."""
    if path is None:
        return None
    sock = Path(path).absolute()
    if not shell_safe(sock) or "," in str(sock):
        raise BadInput(f"{what} {path}: virtme-ng passes it through a shell and QEMU "
                       "splits options at commas; use a path without either")
    if not sock.parent.is_dir():
        raise BadInput(f"{what} {path}: no directory {sock.parent}")
    return sock


def run(image, topo, command, runner, accel, timeout, append=(), workdir=None,
        agent_socket=None, qmp_socket=None, hotplug_mb=0):
    """Boot ``image`` with ``topo``, run ``command``; return a VmResult. With
    ``agent_socket`` (a path), the guest runs qemu-ga on a virtio-serial port that
    QEMU serves on that unix socket (kernel/qga.py speaks to it); ``qmp_socket``: where
    a placed guest's QEMU serves QMP (by default inside the run's own directory);
    ``hotplug_mb``: resizable memory per guest node (layout.check_hotplug)."""
    image = Path(image).absolute()
    if not image.is_file():
        raise BadInput(f"--kernel {image}: no such kernel image")
    if qmp_socket is not None and not topo.pinned:
        raise BadInput("--qmp-socket: only a placed (Full-vNUMA) guest has a QMP socket; "
                       "use --topology host or --pin")
    hotplug_mb = layout.check_hotplug(topo, hotplug_mb)
    vng = find_vng()
    qemu_ga = find_qemu_ga() if agent_socket else None
    agent_socket = _socket(agent_socket, "--agent-socket")
    qmp_socket = _socket(qmp_socket, "--qmp-socket")
    io_dir = Path(tempfile.mkdtemp(prefix="vnuma-vm-", dir=workdir)).absolute()
    try:
        if not shell_safe(io_dir):
            raise BadInput(f"{io_dir}: virtme-ng passes this directory through a shell; "
                           "use a temporary directory without spaces or shell characters")
        (io_dir / "run.sh").write_text(guest_script(command, io_dir, qemu_ga))
        argv = vng_argv(_safe_image(image, io_dir), topo, io_dir, accel, append, vng=vng,
                        agent_socket=agent_socket, qmp_socket=qmp_socket,
                        hotplug_mb=hotplug_mb)
        sock = qmp_socket or io_dir / QMP_SOCKET
        pinner = qmp.Pinner(sock, topo, timeout).start() if topo.pinned else None
        t0 = time.monotonic()
        try:
            res = runner.run(argv, check=False, timeout=timeout, env=path_with(vng))
        finally:
            if pinner:
                pinner.stop()
        seconds = time.monotonic() - t0
        console = res.stdout + res.stderr
        (io_dir / "console.log").write_text(console)
        if pinner and pinner.error:
            return VmResult("pin-failed", 255, accel, seconds, console_tail=_tail(console),
                            panic=pinner.error, console=console)
        out = classify(io_dir, console, res.timed_out, accel, seconds)
        out.placement = pinner.result if pinner else None
        return out
    finally:
        shutil.rmtree(io_dir, ignore_errors=True)


def probe_kvm(image, runner, timeout=25):
    """(usable, reason): boot ``image`` under -accel kvm and look for the kernel banner.

    Opening /dev/kvm proves nothing: some hosts expose one that cannot run a
    normal kernel (it hangs at "Booting from ROM").
    """
    if not Path("/dev/kvm").exists():
        return False, "no /dev/kvm"
    qemu = find_tool("qemu-system-x86_64")
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
