"""vnuma-sched topology and doctor: what this system is and what it exposes."""

import functools
import os
import time

import click

from vnuma_sched.cli.common import emit, json_option, merge_json
from vnuma_sched.probes.loader import compile_check
from vnuma_sched.render import doctor_text, topology_text
from vnuma_sched.system import cpuid
from vnuma_sched.system import doctor as doc
from vnuma_sched.system.doctor_vnuma import sample_cpu_ticks
from vnuma_sched.system.topology import read_topology


@click.command()
@json_option
@click.pass_obj
def topology(settings, as_json):
    """NUMA nodes with their CPUs, memory and distances.

    \b
    Read from /sys/devices/system/node. Memoryless and CPU-less nodes are
    shown as such.
    \b
    Example:
      vnuma-sched topology --json
    """

    settings = merge_json(settings, as_json)
    topo = read_topology(settings.sysroot())
    emit(settings, topo.to_dict(), topology_text(topo))


@click.command()
@click.option("--steal-interval", type=click.FloatRange(0, 60), default=0.2, show_default=True,
              metavar="SECONDS", help="Sample per-CPU steal time this long (0: since boot).")
@json_option
@click.pass_obj
def doctor(settings, steal_interval, as_json):
    """Check what this guest exposes before trusting the other commands.

    \b
    Kernel, KVM paravirt features (CPUID 0x40000001, or dmesg evidence),
    PV spinlocks, steal time, cpuidle, vNUMA layout, bcc, BTF, tracefs,
    debugfs, kprobes, lockdown, and whether this project's patches are in the
    running kernel. Ends with which of the two vNUMA problems this guest can
    be exposed to and what is available against each.
    \b
    Whether the guest is Full vNUMA, as far as a guest can tell: more than
    one node with distances (vnuma), evidence of 1:1 pinning (vnuma:pinned:
    the KVM_HINTS_REALTIME hint, steal time near zero over a short sample,
    sockets that follow the nodes), memory on every node (vnuma:memory), and
    the answer (vnuma:full). Host pinning itself shows on the host only.
    \b
    Examples:
      sudo vnuma-sched doctor --json
      vnuma-sched doctor --steal-interval 2
    """

    settings = merge_json(settings, as_json)
    sysroot = settings.sysroot()
    env = doc.DoctorEnv(sysroot=sysroot, euid=os.geteuid(),
                        cpuid=cpuid.device_reader(sysroot), bcc_check=compile_check,
                        steal_sample=functools.partial(sample_cpu_ticks, sysroot,
                                                       steal_interval, time.sleep))
    checks = doc.run_checks(env)
    verdict = doc.verdict(checks)
    emit(settings, {"checks": [c.to_dict() for c in checks], "verdict": verdict},
         doctor_text(checks, verdict))
