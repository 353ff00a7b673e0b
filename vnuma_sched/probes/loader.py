"""The only module that imports bcc (Debian's python3-bpfcc)."""

import contextlib
import os
import sys
import tempfile

NOOP_PROGRAM = b"int vnuma_sched_noop(void *ctx) { return 0; }"


@contextlib.contextmanager
def captured_output():
    """Capture file descriptors 1 and 2 (bcc and clang print diagnostics on both)."""
    lines = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _first_error(lines, fallback):
    if any("kernel headers" in ln or "kheaders" in ln for ln in lines):
        return ("no kernel headers for the running kernel (install them, or link "
                "/lib/modules/$(uname -r)/build to a headers tree; CONFIG_IKHEADERS=y also works)")
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line.strip()
    return fallback


def compile_check():
    """(status, detail): can bcc compile and load a trivial program here?"""
    try:
        from bcc import BPF  # noqa: PLC0415 - bcc is optional and heavy
    except ImportError as err:
        return "missing", f"bcc not importable ({err}); install Debian's python3-bpfcc"
    try:
        with captured_output() as errors:
            bpf = BPF(text=NOOP_PROGRAM)
            bpf.load_func(b"vnuma_sched_noop", BPF.TRACEPOINT)
            bpf.cleanup()
    except Exception as err:  # bcc raises bare Exception on compile/load failure
        return "missing", "bcc cannot compile/load: " + _first_error(errors, str(err))
    import bcc  # noqa: PLC0415

    version = getattr(bcc, "__version__", "?")
    return "ok", f"bcc {version} compiled and loaded a program"


def ensure_kernel_headers(release, log=None):
    """Make bcc find headers for ``release``: /lib/modules/<r>/build, or the kernel's
    own /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS) extracted once."""
    if os.path.exists(f"/lib/modules/{release}/build") or os.environ.get("BCC_KERNEL_SOURCE"):
        return
    archive = "/sys/kernel/kheaders.tar.xz"
    if not os.path.exists(archive):
        return
    dest = os.path.join(tempfile.gettempdir(), f"vnuma-kheaders-{release}")
    if not os.path.exists(os.path.join(dest, "include")):
        import tarfile  # noqa: PLC0415

        os.makedirs(dest, exist_ok=True)
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python with extraction filters
                tar.extractall(dest, filter="fully_trusted")
            else:
                tar.extractall(dest)
        if log:
            log(f"kernel headers extracted from {archive} to {dest}")
    os.environ["BCC_KERNEL_SOURCE"] = dest


class LoadedProbe:
    """One probe compiled and attached with bcc; snapshot() returns plain data."""

    def __init__(self, probe, avail, cflags, topology, bpf_dir, on_event=None, llc=None):
        from bcc import BPF  # noqa: PLC0415

        self.probe, self.topology = probe, topology
        self.flags = {f[2:].split("=")[0]: int(f.split("=")[1]) for f in cflags}
        self.max_nodes, self.max_cpus = self.flags["MAX_NODES"], self.flags["MAX_CPUS"]
        self.lost = 0
        failure = None
        with captured_output() as errors:
            try:
                self.bpf = BPF(src_file=str(bpf_dir / probe.bpf),
                               cflags=[*cflags, f"-I{bpf_dir}", "-Wno-macro-redefined"])
            except Exception as err:  # bcc raises bare Exception
                failure = err
        if failure is not None:  # the compiler's message is complete only now
            raise RuntimeError(_first_error(errors, str(failure))) from failure
        self._attach(avail)
        if probe.name == "migrate":
            self._fill("cpu_node", topology.cpu_node)
            self._fill("cpu_llc", llc or {})
            if on_event is not None and self.flags.get("WITH_EVENTS"):
                self.bpf["events"].open_perf_buffer(on_event, page_cnt=64,
                                                    lost_cb=self._lost)

    def _fill(self, name, mapping):
        table = self.bpf[name]
        for cpu, value in mapping.items():
            if cpu < self.max_cpus:
                table[table.Key(cpu)] = table.Leaf(value)

    def _lost(self, count):
        self.lost += count

    def _attach(self, avail):
        b = self.bpf
        if "balance" in avail.attach:
            b.attach_kprobe(event=avail.attach["balance"], fn_name="on_balance_enter")
            b.attach_kretprobe(event=avail.attach["balance"], fn_name="on_balance_return")
        if self.probe.name == "preempt":
            b.attach_kprobe(event="available_idle_cpu", fn_name="on_aic_enter")
            b.attach_kretprobe(event="available_idle_cpu", fn_name="on_aic_return")
            b.attach_kretprobe(event=avail.attach["preempted"], fn_name="on_preempted_return")

    def poll(self, timeout_ms=0):
        if self.probe.name == "migrate" and self.flags.get("WITH_EVENTS"):
            self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def _percpu(self, name, size):
        """[cpu][index] for a per-CPU array of ``size`` entries."""
        table = self.bpf[name]
        per_index = [list(table.getvalue(table.Key(i))) for i in range(size)]
        ncpu = len(per_index[0]) if per_index else 0
        return [[int(per_index[i][c]) for i in range(size)] for c in range(ncpu)]

    def _summed(self, name, size):
        rows = self._percpu(name, size)
        return [sum(r[i] for r in rows) for i in range(size)]

    def snapshot(self):
        name = self.probe.name
        if name == "ipi":
            out = {"per_cpu": self._percpu("ipi_recv", 4)}
            if self.flags.get("HAVE_IPI_SEND_CPU"):
                out["sent"] = sorted([int(k.src), int(k.dst), int(v.value)]
                                     for k, v in self.bpf["ipi_sent"].items())
            return out
        if name == "halt":
            return {"count": self._percpu("idle_count", 8), "ns": self._percpu("idle_ns", 8),
                    "hist": self._summed("idle_hist", 32), "pvspin": self._percpu("pvspin", 2)}
        if name == "migrate":
            from vnuma_sched.probes.classify import unflatten_matrix  # noqa: PLC0415

            size = 6 * 2 * self.max_nodes * self.max_nodes
            return {"matrix": unflatten_matrix(self._summed("matrix", size), self.max_nodes,
                                               len(self.topology.nodes)),
                    "wake_place": self._summed("wake_place", 2)}
        if name == "preempt":
            return {"checked": self._summed("checked", self.max_cpus),
                    "rejected": self._summed("rejected", self.max_cpus)}
        if name == "hltexit":
            return {"hlt": sorted([int(k.pid), int(k.vcpu), int(v.value)]
                                  for k, v in self.bpf["hlt_exits"].items()),
                    "wakeups": self._summed("wakeups", 2), "kicks": self._summed("kicks", 1)[0]}
        return {}

    def close(self):
        self.bpf.cleanup()
