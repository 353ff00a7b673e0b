"""The 'share' commands: park and unpark vCPUs inside a guest without hotplug."""

import click

from vnuma_sched.cli.common import emit, json_option, merge_json, need_root
from vnuma_sched.cli.share_host import host
from vnuma_sched.render import plan_text, share_status_text, table
from vnuma_sched.share import kernel as KS
from vnuma_sched.share import park
from vnuma_sched.share import target as T
from vnuma_sched.share.plan import plan as share_plan
from vnuma_sched.share.status import read_status
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import lock


@click.group()
def share():
    """Park vCPUs (no hotplug): a cpuset partition, IRQs, workqueues, kthreads.

    \b
    Parked vCPUs stop being used: they go to an isolated cgroup v2 cpuset
    partition (/sys/fs/cgroup/vnuma-parked), IRQ affinities, the unbound
    workqueue mask and unbound kernel threads move to the used vCPUs. Every
    write is journaled first: apply is all or nothing, and revert restores
    exactly. CPU 0 is never parked; every node keeps a used vCPU unless
    --allow-empty-node.
    \b
    Examples:
      vnuma-sched share plan --per-node 1
      sudo vnuma-sched share apply --use 0,2 && vnuma-sched share status
      sudo vnuma-sched share revert
    \b
    On the host, 'share host' coordinates several guests (see its --help).
    """


def _warn(msg):
    click.echo(f"vnuma-sched: warning: {msg}", err=True)


def _choice(f):
    for deco in reversed([
            click.option("--use", metavar="CPULIST",
                         help="The vCPUs to keep using (kernel cpulist: 0-1,4); the "
                              "other online vCPUs are parked."),
            click.option("--per-node", type=int, metavar="N",
                         help="Keep the N lowest-numbered vCPUs of every node."),
            click.option("--allow-empty-node", is_flag=True,
                         help="Allow a node with no vCPU in use.")]):
        f = deco(f)
    return f


def _target(settings, use, per_node, allow_empty_node):
    sysroot = settings.sysroot()
    return T.choose(read_topology(sysroot), KS.online(sysroot), use, per_node,
                    allow_empty_node)


@share.command("plan")
@_choice
@json_option
@click.pass_obj
def share_plan_cmd(settings, use, per_node, allow_empty_node, as_json):
    """What apply would write, path by path (reads only).

    \b
    Example:
      vnuma-sched share plan --per-node 1 --json
    """
    settings = merge_json(settings, as_json)
    target = _target(settings, use, per_node, allow_empty_node)
    rows = share_plan(settings.sysroot(), target)
    emit(settings, {"target": target.to_dict(), "plan": [r.to_dict() for r in rows]},
         f"use {target.used_list}, park {target.parked_list}\n" + plan_text(rows))


@share.command("apply")
@_choice
@click.option("--replace", is_flag=True, help="Give parked vCPUs back first.")
@json_option
@click.pass_obj
def share_apply(settings, use, per_node, allow_empty_node, replace, as_json):
    """Park the vCPUs not in use; on any failure or SIGINT/SIGTERM restore everything.

    \b
    IRQs that refuse to move (managed IRQs) are reported, not fatal.
    Example:
      sudo vnuma-sched share apply --per-node 1
    """
    settings = merge_json(settings, as_json)
    need_root(settings, "parking vCPUs")
    target = _target(settings, use, per_node, allow_empty_node)
    st = park.store(settings.sysroot(), settings.root)
    words = ["vnuma-sched", "share", "apply", *(["--use", use] if use else []),
             *(["--per-node", str(per_node)] if per_node else [])]
    with lock.held(st, " ".join(words)):
        res = park.apply(settings.sysroot(), target, settings.root, replace, warn=_warn)
    refused = table([[r["what"], r["path"], r["why"]] for r in res.refused],
                    ["refused", "path", "why"], prose=[2]) if res.refused else ""
    emit(settings, {"target": target.to_dict(), "writes": res.writes,
                    "refused": res.refused},
         f"parked {target.parked_list}, using {target.used_list}: {res.writes} value(s) "
         f"written, {len(res.refused)} refused" + (f"\n{refused}" if refused else ""))


@share.command("revert")
@click.option("--force", is_flag=True,
              help="Drop the entries that cannot be restored (they are listed).")
@json_option
@click.pass_obj
def share_revert(settings, force, as_json):
    """Give the parked vCPUs back: restore every value apply changed, newest first.

    \b
    Example:
      sudo vnuma-sched share revert
    """
    settings = merge_json(settings, as_json)
    need_root(settings, "unparking vCPUs")
    st = park.store(settings.sysroot(), settings.root)
    with lock.held(st, "vnuma-sched share revert" + (" --force" if force else "")):
        res = park.revert(settings.sysroot(), settings.root, force, warn=_warn)
    emit(settings, {"restored": res.restored, "dropped": len(res.dropped)},
         f"{res.restored} value(s) restored"
         + (f", {len(res.dropped)} dropped (--force)" if res.dropped else ""))


@share.command("status")
@json_option
@click.pass_obj
def share_status(settings, as_json):
    """Per node the used and parked vCPUs, the partition, what was not moved.

    \b
    Read from the kernel (the cpuset partition, IRQs, kernel threads).
    Example:
      vnuma-sched share status --json
    """
    settings = merge_json(settings, as_json)
    sysroot = settings.sysroot()
    status = read_status(sysroot, park.store(sysroot, settings.root))
    emit(settings, status.to_dict(), share_status_text(status))


share.add_command(host)
