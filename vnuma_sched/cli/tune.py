"""The 'tune' commands: scheduler tunables profiles."""

import os

import click

from vnuma_sched.cli.common import (
    emit,
    json_option,
    merge_json,
    need_root,
    progress,
    settings_exit,
)
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.render import plan_text, table
from vnuma_sched.tunables import engine, export, journal, lock
from vnuma_sched.tunables import profile as prof
from vnuma_sched.tunables.knobs import REGISTRY


@click.group()
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False), default=None,
              help="Extra profile directory (searched before ~/.config and the shipped ones).")
@click.pass_obj
def tune(settings, profiles_dir):
    """Scheduler tunables for kernels you cannot rebuild (profiles, plan, apply, revert).

    \b
    Examples:
      vnuma-sched tune plan vnuma-guest-dedicated
      sudo vnuma-sched tune apply vnuma-guest-dedicated && sudo vnuma-sched tune revert
    """
    settings.profiles_dir = profiles_dir


def _warn(msg):
    click.echo(f"vnuma-sched: warning: {msg}", err=True)


def _profile_dirs(settings):
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return prof.search_path(getattr(settings, "profiles_dir", None), home, warn=_warn)


def _load_profile(settings, name):
    return prof.load(name, _profile_dirs(settings))


def _store(settings):
    """The journal of --root, named under the root as the user gave it."""
    return journal.Store(settings.sysroot(), settings.root)


def _locked(settings, *words):
    """The exclusive lock of the root for a command that writes, naming that command."""
    return lock.held(_store(settings), " ".join(["vnuma-sched", "tune", *words]))


def _list_item(name, path, dirs):
    try:
        return {"name": name, "summary": prof.load(name, dirs).summary, "file": str(path),
                "error": None}
    except VnumaError as err:
        return {"name": name, "summary": "", "file": str(path), "error": str(err)}


@tune.command("list")
@json_option
@click.pass_obj
def tune_list(settings, as_json):
    """Profiles that can be applied, with their summaries."""

    settings = merge_json(settings, as_json)
    dirs = _profile_dirs(settings)
    items = [_list_item(n, p, dirs) for n, p in prof.available(dirs).items()]
    emit(settings, {"profiles": items},
         table([[i["name"], f"BROKEN: {i['error']}" if i["error"] else i["summary"]]
                for i in items], ["profile", "summary"], prose=[1]))


@tune.command("knobs")
@json_option
@click.pass_obj
def tune_knobs(settings, as_json):
    """Every knob a profile may name, with its type and what it does."""

    settings = merge_json(settings, as_json)
    rows = [{"knob": k.name, "kind": k.kind, "type": k.vtype, "series_only": k.patch_gate,
             "decays": k.decays, "doc": k.doc} for k in REGISTRY.values()]
    emit(settings, {"knobs": rows}, table(
        [[r["knob"], r["kind"], r["type"], r["doc"]] for r in rows],
        ["knob", "kind", "type", "notes"], prose=[3]))


@tune.command("show")
@click.argument("profile")
@json_option
@click.pass_obj
def tune_show(settings, profile, as_json):
    """The profile's settings with includes merged, and where each comes from."""

    settings = merge_json(settings, as_json)
    prof = _load_profile(settings, profile)
    emit(settings, {"name": prof.name, "summary": prof.summary, "includes": prof.includes,
                    "settings": prof.settings},
         f"{prof.name}: {prof.summary}\n" + table(
             [[k, v, prof.origin[k]] for k, v in prof.settings.items()],
             ["knob", "value", "from"]))


def _plan_rows(settings, profile):
    prof = _load_profile(settings, profile)
    return prof, engine.plan(prof, settings.sysroot())


@tune.command("plan")
@click.argument("profile")
@json_option
@click.pass_obj
def tune_plan(settings, profile, as_json):
    """What apply would do, knob by knob (reads only)."""

    settings = merge_json(settings, as_json)
    prof, rows = _plan_rows(settings, profile)
    emit(settings, {"profile": prof.name, "plan": [r.to_dict() for r in rows]},
         plan_text(rows))


@tune.command("apply")
@click.argument("profile")
@click.option("--replace", is_flag=True, help="Revert the applied profile first.")
@click.option("--persist", is_flag=True,
              help="Also write /etc/sysctl.d and /etc/modprobe.d files (revert puts back "
                   "what was there).")
@click.option("--persist-boot", is_flag=True,
              help="Also write the boot parameters to a GRUB drop-in (revert puts back "
                   "what was there).")
@click.pass_obj
def tune_apply(settings, profile, replace, persist, persist_boot):
    """Apply PROFILE: journal first; on any failure or SIGINT/SIGTERM restore everything."""

    need_root(settings, "writing scheduler tunables")
    with _locked(settings, "apply", profile):
        prof, rows = _plan_rows(settings, profile)
        n = engine.apply(rows, settings.sysroot(), prof, replace, persist, persist_boot,
                         store=_store(settings), warn=_warn)
    count = {a: sum(r.action == a for r in rows) for a in (engine.BOOT_ONLY, engine.UNSUPPORTED)}
    click.echo(f"{prof.name}: {n} value(s) written, {count[engine.BOOT_ONLY]} boot "
               f"parameter(s) pending a reboot, {count[engine.UNSUPPORTED]} knob(s) not "
               "applicable here (see 'tune plan')")


@tune.command("revert")
@click.option("--force", is_flag=True,
              help="Drop the entries that cannot be restored (they are listed).")
@click.pass_obj
def tune_revert(settings, force):
    """Restore every value and file the applied profile changed, newest first."""

    need_root(settings, "restoring scheduler tunables")
    with _locked(settings, "revert", *(["--force"] if force else [])):
        res = engine.revert(settings.sysroot(), store=_store(settings), force=force,
                            warn=_warn)
    dropped = f", {len(res.dropped)} dropped (--force)" if res.dropped else ""
    click.echo(f"{res.doc.profile}: {res.restored} value(s) and file(s) restored{dropped}")


@tune.command("verify")
@click.argument("profile", required=False)
@json_option
@click.pass_obj
def tune_verify(settings, profile, as_json):
    """Per knob: OK, DRIFT (changed since apply), DIFF (profile not applied), pending
    reboot, not applicable here. Default: the applied profile. Exit 1 on DRIFT/DIFF."""

    settings = merge_json(settings, as_json)
    if profile is None:
        doc = journal.load(_store(settings))
        if doc is None:
            raise BadInput("no profile applied: name one to verify")
        profile = doc.profile
    prof = _load_profile(settings, profile)
    results = engine.verify(prof, settings.sysroot(), store=_store(settings))
    emit(settings, {"profile": prof.name,
                    "knobs": [{**r.to_dict(), "status": st} for r, st in results]},
         table([[r.knob, r.current, r.target, st] for r, st in results],
               ["knob", "current", "target", "status"]))
    if any(st in (engine.DRIFT, engine.DIFF) for _, st in results):
        settings_exit(1)


@tune.command("status")
@json_option
@click.pass_obj
def tune_status(settings, as_json):
    """The applied profile (from the journal) and what it changed."""

    settings = merge_json(settings, as_json)
    doc = journal.load(_store(settings))
    if doc is None:
        emit(settings, {"applied": None}, "no profile applied")
        return
    files = "".join(f"\nfile: {f['path']} ({'created' if f['old'] is None else 'replaced'})"
                    for f in doc.files)
    emit(settings, {"applied": doc.to_dict()}, f"applied: {doc.profile} on {doc.kernel} "
         f"at {doc.created}\n" + table(
             [[e["knob"], e["path"], e["old"], e["new"], e["state"]] for e in doc.entries],
             ["knob", "path", "was", "now", "state"]) + files)


@tune.command("export")
@click.argument("profile")
@click.option("--format", "fmt", type=click.Choice(["tuned"]), default="tuned",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Directory for the tuned profile (tuned.conf inside).")
@click.pass_obj
def tune_export(settings, profile, fmt, out):
    """Write PROFILE as a tuned profile directory, for machines that run tuned."""

    prof = _load_profile(settings, profile)
    path = export.write_tuned(prof, settings.sysroot(), out)
    click.echo(str(path))


@tune.command("hold")
@click.argument("profile")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option("--count", type=click.IntRange(1), default=None,
              help="Stop after this many rounds [default: until Ctrl-C].")
@click.pass_obj
def tune_hold(settings, profile, interval, count):
    """Re-assert PROFILE's knobs that the kernel decays (max_newidle_lb_cost)."""

    need_root(settings, "writing scheduler tunables")
    prof = _load_profile(settings, profile)
    with _locked(settings, "hold", profile):
        rounds = engine.hold(prof, settings.sysroot(), interval, count, progress(settings),
                             store=_store(settings))
    click.echo(f"{prof.name}: held for {rounds} round(s)")
