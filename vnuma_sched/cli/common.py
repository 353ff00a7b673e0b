"""Shared pieces of the command line: settings, output, progress, exit codes."""

import os
from dataclasses import dataclass

import click

from vnuma_sched import resources
from vnuma_sched.errors import BadInput, NeedsRoot
from vnuma_sched.kernel.ktree import default_cache
from vnuma_sched.render import to_json
from vnuma_sched.system.sysroot import SysRoot


@dataclass

class Settings:
    root: str
    json: bool
    verbose: bool
    profiles_dir: str = None

    def sysroot(self):
        return SysRoot(self.root)


def emit(settings, obj, text):
    """Print ``obj`` as JSON with --json, else the rendered ``text``."""
    if settings.json:
        click.echo(to_json(obj))
    else:
        click.echo(text)


json_option = click.option("--json", "as_json", is_flag=True, help="JSON output.")
pin_option = click.option(
    "--pin/--no-pin", "pin", default=None,
    help="Pin vCPU threads 1:1 and bind node memory (default: when the topology names "
         "host CPUs, as 'host' does); --pin places an NxM grid on the host's CPUs in order.")


def merge_json(settings, as_json):
    if as_json:
        settings.json = True
    return settings


def progress(settings):
    """Progress lines go to stderr so --json stdout stays clean."""
    return lambda msg: click.echo(f"vnuma-sched: {msg}", err=True)


def cache_dir():
    return default_cache(os.environ)


def default_fragment():
    here = resources.guest_fragment()
    if not here.is_file():
        raise BadInput("kconfig/vnuma-guest.config not found: give --fragment")
    return here


def need_root(settings, what):
    if settings.sysroot().is_live and os.geteuid() != 0:
        raise NeedsRoot(what)


def pid_alive(pid):
    """Whether process ``pid`` exists (signal 0)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settings_exit(code):
    ctx = click.get_current_context()
    ctx.exit(code)
