"""Park and unpark through the tunables engine: every write journaled first (in the
share journal, apart from tune's), all or nothing, rolled back on any error and on
SIGINT/SIGTERM/SIGHUP; revert restores exactly, newest first."""

from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput
from vnuma_sched.share import busy
from vnuma_sched.share import plan as SP
from vnuma_sched.tunables import engine
from vnuma_sched.tunables import journal as J

AREA = "share"


@dataclass(frozen=True)
class _Name:
    name: str = AREA     # the journal header's "profile"


@dataclass
class Applied:
    writes: int
    rows: list
    refused: list = field(default_factory=list)    # {"path", "what", "why"}


def store(sysroot, shown_root=None):
    return J.Store(sysroot, shown_root, area=AREA)


def _nowarn(msg):
    return None


def apply(sysroot, target, shown_root=None, replace=False, warn=_nowarn, between=None):
    """Park ``target.parked``: plan, journal, write. Hold the tunables lock."""
    st = store(sysroot, shown_root)
    doc = J.load(st)
    if doc is not None and not replace:
        raise BadInput(f"vCPUs are parked already (journal {st.shown(doc.path)}): run "
                       "'vnuma-sched share revert' first, or give --replace")
    if doc is not None:
        engine.revert(sysroot, store=st, warn=warn)
    rows = SP.plan(sysroot, target)
    refused = []

    def note(row, path, why):
        refused.append({"path": path, "what": row.reason, "why": why})

    count = engine.apply(rows, sysroot, _Name(), store=st, warn=warn, refused=note,
                         between=between, around=busy.around(sysroot, target))
    return Applied(count, rows, refused)


def revert(sysroot, shown_root=None, force=False, warn=_nowarn):
    """Give every parked vCPU back: the journal's values restored, newest first."""
    st = store(sysroot, shown_root)
    if not J.present(st):           # revert loads and checks it
        raise BadInput("nothing to revert: no vCPUs parked by vnuma-sched (no share journal)")
    return engine.revert(sysroot, store=st, force=force, warn=warn)
