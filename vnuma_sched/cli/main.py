"""vnuma-sched command line: parse -> call core -> render -> exit code. No logic here.

Command groups live beside this module (system, kernel, probes, tune, share,
experiments, bisect), named in COMMANDS; shared helpers in cli.common.
"""

import importlib
import os
import sys
import traceback

import click

from vnuma_sched import __version__
from vnuma_sched.cli.common import Settings
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.runner import sigterm_as_interrupt

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


# Each command's module, imported when that command runs (or --help lists them all):
# 'share apply' loads the modules it needs, not every command group's. In a TCG guest
# with its root over 9p, importing all of them took seconds.
COMMANDS = {
    "topology": ("system", "topology"), "doctor": ("system", "doctor"),
    "kernel": ("kernel", "kernel"), "build": ("kernel", "build"), "vm": ("kernel", "vm"),
    "patches": ("kernel", "patches"), "pipeline": ("kernel", "pipeline"),
    "probes": ("probes", "probes_cmd"), "top": ("probes", "top_cmd"),
    "record": ("probes", "record_cmd"), "report": ("probes", "report_cmd"),
    "serve": ("serve", "serve_cmd"), "tune": ("tune", "tune"), "share": ("share", "share"),
    "ab": ("experiments", "ab"), "compare": ("experiments", "compare_cmd"),
    "bisect": ("bisect", "bisect"),
}


class Group(click.Group):
    """Turns VnumaError into one line on stderr and its exit code; finds its commands
    in COMMANDS, importing each one's module when it is asked for."""

    def list_commands(self, ctx):
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            module, attr = COMMANDS[name]
            found = importlib.import_module(f"vnuma_sched.cli.{module}")
            self.add_command(getattr(found, attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            # SIGTERM is Ctrl-C for every command: rollbacks run, and the runner stops
            # the process trees it started (a guest's QEMU would outlive us otherwise)
            with sigterm_as_interrupt():
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



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
