"""vnuma-sched command line: parse -> call core -> render -> exit code. No logic here.

Command groups live beside this module (kernel, probes, tune, experiments,
bisect); shared helpers in cli.common.
"""

import functools
import os
import sys
import time
import traceback

import click

from vnuma_sched import __version__
from vnuma_sched.cli import bisect, experiments, kernel, probes, serve, share, tune
from vnuma_sched.cli.common import Settings, emit, json_option, merge_json
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.probes.loader import compile_check
from vnuma_sched.render import doctor_text, topology_text
from vnuma_sched.system import cpuid
from vnuma_sched.system import doctor as doc
from vnuma_sched.system.doctor_vnuma import sample_cpu_ticks
from vnuma_sched.system.topology import read_topology

EPILOG = """\b
Exit codes: 0 ok, 1 operation failed, 2 bad input, 3 unreadable or malformed
system data, 4 needs root, 5 missing tool or kernel feature, 130 interrupted.

\b
Examples:
  vnuma-sched doctor                 what this guest exposes and risks
  vnuma-sched topology --json        nodes, CPUs, memory, distances
  vnuma-sched pipeline               fetch, patch, build, boot a 2x2 guest
  sudo vnuma-sched top migrate 1     cross-node migrations by cause, live
  vnuma-sched tune plan vnuma-guest-dedicated
  sudo vnuma-sched share apply --per-node 1   park the other vCPUs
  vnuma-sched bisect run --tree T --good G --bad B --metric cross_node_migrations
"""


class Group(click.Group):
    """Turns VnumaError into one line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VnumaError as err:
            self._report(ctx, str(err))
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            self._report(ctx, "interrupted")
            ctx.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except Exception as err:  # a bug: one line, the traceback with -v
            self._report(ctx, f"internal error: {type(err).__name__}: {err} "
                              "(run with -v for the traceback)")
            ctx.exit(1)

    @staticmethod
    def _report(ctx, message):
        settings = ctx.find_object(Settings)
        if settings is not None and settings.verbose:
            traceback.print_exc()
        click.echo(f"vnuma-sched: error: {message}", err=True)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="VNUMA_SCHED_ROOT", default="/", hidden=True,
              help="Resolve every system path and state file under DIR.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and more detail on errors.")
@click.version_option(__version__, prog_name="vnuma-sched")
@click.pass_context
def main(ctx, root, as_json, verbose):
    """Tools for Linux guests that run as virtual-NUMA (vNUMA) VMs."""
    if not os.path.isdir(root):
        raise BadInput(f"--root {root}: no such directory")
    ctx.obj = Settings(root=root, json=as_json, verbose=verbose)


@main.command()
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


@main.command()
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

for _command in (kernel.kernel, kernel.build, kernel.vm, kernel.patches, kernel.pipeline,
                 probes.probes_cmd, probes.top_cmd, probes.record_cmd, probes.report_cmd,
                 serve.serve_cmd, tune.tune, share.share, experiments.ab,
                 experiments.compare_cmd, bisect.bisect):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
