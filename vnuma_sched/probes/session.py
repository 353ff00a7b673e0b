"""A set of probes loaded together and sampled as cumulative snapshots.

Only this module and loader.py touch bcc (loader imports it); everything it
returns is plain data for classify/report/render."""

import ctypes
import os

from vnuma_sched.errors import VnumaError
from vnuma_sched.probes import catalog, kheaders
from vnuma_sched.probes.classify import node_cpu_slots
from vnuma_sched.probes.events import BPF_DIR, MigrateEvent
from vnuma_sched.system import facts, schedstat
from vnuma_sched.system.topology import llc_of_cpus


def steal_ms(sysroot, ncpus=0):
    """Steal time per CPU (ms since boot) from /proc/stat, at least ``ncpus`` long: an
    offline CPU (absent from /proc/stat) reads 0, so every sample has the same shape."""
    hz = os.sysconf("SC_CLK_TCK")
    ms = [ticks * 1000 // hz for ticks in facts.steal_ticks_per_cpu(sysroot)]
    return ms + [0] * (ncpus - len(ms))


def map_sizes(topology):
    """(MAX_CPUS, MAX_NODES, MAX_NODE_CPUS) of the probes' maps for a topology."""
    return (max(topology.cpus, default=0) + 1, max(len(topology.nodes), 1),
            max((len(n.cpus) for n in topology.nodes), default=0) or 1)


class Session:
    def __init__(self, names, sysroot, euid, topology, with_events=False, log=None):
        self.sysroot, self.topology, self.log = sysroot, topology, log or (lambda m: None)
        self.facts = catalog.KernelFacts(sysroot, euid)
        self.probes = catalog.select(names)
        self.status = {p.name: catalog.availability(p, self.facts) for p in self.probes}
        self.with_events = with_events
        self.events = []
        self.loaded = {}

    def start(self):
        from vnuma_sched.probes import loader  # noqa: PLC0415 - bcc only when probing

        needs_bpf = [p for p in self.probes if p.bpf and self.status[p.name].ok]
        headers = self._headers() if needs_bpf else None
        needs_bpf = [p for p in needs_bpf if self.status[p.name].ok]
        sizes = map_sizes(self.topology)
        context = {"topology": self.topology, "cpu_node": self.topology.cpu_node,
                   "llc": llc_of_cpus(self.sysroot, self.topology),
                   "node_cpus": node_cpu_slots(self.topology, *sizes)}
        for probe in needs_bpf:
            self._load(loader, probe, context, sizes, headers)
        return self

    def _load(self, loader, probe, context, sizes, headers):
        """Compile and attach one probe; when that fails and the probe can do without an
        optional part (its spec's degrade), once more without it."""
        avail = self.status[probe.name]
        events = self.with_events and bool(probe.events)
        max_cpus, max_nodes, max_node_cpus = sizes
        for _ in range(2):
            flags = catalog.cflags(avail, max_cpus, max_nodes, events, max_node_cpus)
            try:
                self.loaded[probe.name] = loader.LoadedProbe(
                    probe, avail, flags, context, BPF_DIR,
                    on_event=self._event if events else None, headers=headers)
                return
            except Exception as err:  # a compile or attach failure: this probe only
                failure = err
                if not (probe.degrade and probe.degrade(avail, err)):
                    break
                self.log(f"{probe.name}: {avail.notes[-1]}; loading without it")
        self.status[probe.name] = catalog.Availability(False, f"load failed: {failure}")

    def _headers(self):
        """Kernel headers for bcc; when they cannot be had safely, the BPF probes are
        unsupported (with the reason) and the others still run."""
        release = facts.release(self.sysroot, os.uname().release)
        try:
            return kheaders.ensure_kernel_headers(self.sysroot, release, self.log)
        except VnumaError as err:
            for p in self.probes:
                if p.bpf and self.status[p.name].ok:
                    self.status[p.name] = catalog.Availability(False, f"kernel headers: {err}")
            return None

    def _event(self, cpu, data, size):
        ev = ctypes.cast(data, ctypes.POINTER(MigrateEvent)).contents
        self.events.append(ev.to_dict())

    def running(self):
        return [p.name for p in self.probes if self.status[p.name].ok]

    def sample(self, listings=True):
        """Cumulative counters per probe; ``listings=False``: without the listing maps
        (see LoadedProbe.snapshot)."""
        snap = {}
        for name, lp in self.loaded.items():
            lp.poll(0)
            snap[name] = lp.snapshot(listings)
        if "steal" in self.running():
            ncpus = max(self.topology.cpus, default=-1) + 1
            snap["steal"] = {"ms": steal_ms(self.sysroot, ncpus)}
        if "schedstat" in self.running():
            snap["schedstat"] = schedstat.read_wake_counts(self.sysroot, self.topology.cpu_node)
        return snap

    def program_stats(self):
        """{probe: {program: (run_time_ns, run_cnt)}} (kernel.bpf_stats_enabled=1)."""
        return {name: lp.program_stats() for name, lp in self.loaded.items()}

    def take_events(self):
        out, self.events = self.events, []
        return out

    @property
    def lost(self):
        return sum(lp.lost for lp in self.loaded.values())

    def close(self):
        for lp in self.loaded.values():
            lp.close()
        self.loaded = {}
