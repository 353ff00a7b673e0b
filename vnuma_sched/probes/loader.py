"""The only module that imports bcc (Debian's python3-bpfcc)."""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from vnuma_sched.probes import spec
from vnuma_sched.probes.classify import unflatten_cause_matrix, unflatten_matrix
from vnuma_sched.probes.kheaders import kernel_source

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


def read_prog_stats(fd, fdinfo_dir="/proc/self/fdinfo"):
    """(run_time_ns, run_cnt) of the BPF program open as ``fd`` (its fdinfo lines)."""
    fields = dict(line.split(":", 1) for line in
                  Path(fdinfo_dir, str(fd)).read_text().splitlines() if ":" in line)
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


class LoadedProbe:
    """One probe compiled and attached with bcc, as its spec entry says;
    snapshot() returns plain data keyed like the spec's maps."""

    def __init__(self, probe, avail, cflags, context, bpf_dir, on_event=None, headers=None):
        from bcc import BPF  # noqa: PLC0415 - bcc is optional and heavy

        self.probe, self.context = probe, context
        self.flags = {f[2:].split("=")[0]: int(f.split("=")[1]) for f in cflags}
        self.max_nodes, self.max_cpus = self.flags["MAX_NODES"], self.flags["MAX_CPUS"]
        self.lost = 0
        failure = None
        with captured_output() as errors:
            try:
                with kernel_source(headers):
                    self.bpf = BPF(src_file=str(bpf_dir / probe.bpf),
                                   cflags=[*cflags, f"-I{bpf_dir}", "-Wno-macro-redefined"])
            except Exception as err:  # bcc raises bare Exception
                failure = err
        if failure is not None:  # the compiler's message is complete only now
            raise RuntimeError(_first_error(errors, str(failure))) from failure
        try:
            for map_name, key in probe.fills:   # before attaching: no event sees them empty
                self._fill(map_name, context.get(key) or {})
            self._attach(avail)
        except Exception:  # bcc raises bare Exception; nothing stays attached
            self.bpf.cleanup()
            raise
        self.events = bool(probe.events and on_event is not None and self.flags.get("WITH_EVENTS"))
        if self.events:
            self.bpf[probe.events].open_perf_buffer(on_event, page_cnt=64, lost_cb=self._lost)

    def _fill(self, name, mapping):
        table = self.bpf[name]
        for index, value in mapping.items():
            if 0 <= index < table.max_entries:
                table[table.Key(index)] = table.Leaf(value)

    def _lost(self, count):
        self.lost += count

    def _attach(self, avail):
        for a in self.probe.attach:
            symbols = avail.attach.get(a.symbol[1:]) if a.symbol.startswith("@") else a.symbol
            if symbols is None:  # a role this kernel does not offer (see the catalog's notes)
                continue
            if a.kind == "raw_tracepoint":
                self.bpf.attach_raw_tracepoint(tp=symbols, fn_name=a.fn)
                continue
            attach = self.bpf.attach_kprobe if a.kind == "kprobe" else self.bpf.attach_kretprobe
            for symbol in (symbols,) if isinstance(symbols, str) else symbols:
                attach(event=symbol, fn_name=a.fn)

    def poll(self, timeout_ms=0):
        if self.events:
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

    def _pairs(self, m):
        return sorted([*(int(getattr(k, f)) for f in m.keys), int(v.value)]
                      for k, v in self.bpf[m.name].items())

    def _read(self, m):
        size = spec.map_size(m, self.max_cpus, self.max_nodes)
        if m.shape == "percpu":
            return self._percpu(m.name, size)
        if m.shape == "sum":
            return self._summed(m.name, size)
        if m.shape == "scalar":
            return self._summed(m.name, 1)[0]
        if m.shape == "cpu_pairs":
            return [[cpu, i, v] for cpu, row in enumerate(self._percpu(m.name, size))
                    for i, v in enumerate(row) if v]
        return self._pairs(m)

    def snapshot(self, listings=True):
        """The maps' contents; ``listings=False`` leaves out the listing maps (hash-map
        rows, not counters), which cost the most to read and serve does not export."""
        out = {}
        for m in self.probe.maps:
            if (m.when_flag and not self.flags.get(m.when_flag)) or (m.listing and not listings):
                continue
            out[m.key] = self._read(m)
            nodes = len(self.context["topology"].nodes)
            if m.matrix:
                out[m.key] = unflatten_matrix(out[m.key], self.max_nodes, nodes)
            elif m.cause_matrix:
                out[m.key] = unflatten_cause_matrix(out[m.key], self.max_nodes, nodes)
        return out

    def program_stats(self):
        """{program name: (run_time_ns, run_cnt)} of this probe's loaded programs, as
        the kernel counts them while kernel.bpf_stats_enabled=1 (zeros otherwise)."""
        return {name.decode(): read_prog_stats(fn.fd) for name, fn in self.bpf.funcs.items()}

    def close(self):
        self.bpf.cleanup()
