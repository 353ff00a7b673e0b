"""Apply, revert, verify and hold a profile. apply() journals every write before
doing it and, on any exception or SIGINT/SIGTERM/SIGHUP, restores everything it
wrote; revert() walks the journal backwards. Neither acts on what it did not
journal: a journal is checked before it is trusted (journal_check)."""

import contextlib
import time
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput, DataError, Interrupted, VnumaError
from vnuma_sched.system import facts
from vnuma_sched.tunables import interrupt, persist
from vnuma_sched.tunables import journal as J
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables.planner import (  # noqa: F401 - the engine's public names
    BOOT_ONLY,
    SET,
    UNCHANGED,
    UNSUPPORTED,
    Row,
    boot_args,
    plan,
    read,
    write,
)

SYSCTL_D, MODPROBE_D, GRUB_D = K.SYSCTL_D, K.MODPROBE_D, K.GRUB_D
OK, DRIFT, DIFF, PENDING, NOT_HERE = "OK", "DRIFT", "DIFF", "pending reboot", \
    "not applicable here"
VANISHED = "no longer exists (CPU offline?): skipped"
SHOWN = 5          # unrestored entries named in one message

kernel_version = facts.version      # (major, minor); kept for callers of the engine


class ApplyError(VnumaError):
    exit_code = 1


class ApplyInterrupted(Interrupted):
    """SIGINT/SIGTERM/SIGHUP during apply, after the rollback."""


@dataclass
class Reverted:
    doc: object
    restored: int = 0
    skipped: list = field(default_factory=list)      # vanished paths, earlier-boot values
    dropped: list = field(default_factory=list)      # unrestorable, dropped by --force


def _nowarn(msg):
    return None


def _store(sysroot, store):
    return store if store is not None else J.Store(sysroot)


def _value_now(knob, path, sysroot):
    try:
        return read(knob, path, sysroot)
    except VnumaError:
        return None


def _vanished(knob, path, sysroot):
    return knob.kind != K.CGROUP_DIR and not sysroot.exists(path)


def restore_entry(entry, sysroot):
    """Put one journaled value back: None when it is back (or never changed), VANISHED,
    or the reason it could not be restored. A write journaled as made ("written") is
    undone at once, with a look at the path only when that fails; a pending one (made
    or not: apply was interrupted, or the kernel refused it) is read first and left
    alone when it holds the old value."""
    knob, path, old = K.known(entry["knob"]), entry["path"], entry["old"]
    try:
        if entry.get("state") != J.WRITTEN:
            if _vanished(knob, path, sysroot):
                return VANISHED
            if _value_now(knob, path, sysroot) == old:
                return None
        try:
            write(knob, path, old, sysroot)
        except DataError as err:
            if _vanished(knob, path, sysroot):
                return VANISHED
            return None if _value_now(knob, path, sysroot) == old else err.reason
    except VnumaError as err:
        return _reason(err, path)
    return None


def _reason(err, path):
    """The message of ``err`` without a leading "path: " (the listing names the path)."""
    msg = err.reason if isinstance(err, DataError) else str(err)
    return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg


def _restore_file(rec, sysroot):
    try:
        return persist.restore(sysroot, rec)
    except VnumaError as err:
        return _reason(err, rec["path"])


def _still_ours(entry, sysroot):
    """Does the path still hold the value apply wrote (after a reboot: put there again
    by a persisted file, not reset)?"""
    try:
        return _value_now(K.known(entry["knob"]), entry["path"], sysroot) == entry["new"]
    except VnumaError:
        return False


def _restore(doc, sysroot, warn, earlier_boot=False):
    """Restore the entries (newest first) and files of ``doc``; returns the entries and
    files left, each with its "why", and how many were restored. The values journaled
    in an earlier boot are restored only where they still hold what apply wrote."""
    left_e, left_f, done = [], [], 0
    entries = doc.entries
    if earlier_boot:
        entries = [e for e in entries if _still_ours(e, sysroot)]
        if len(entries) < len(doc.entries):
            warn(f"{len(doc.entries) - len(entries)} value(s) journaled in an earlier boot "
                 "no longer hold what apply wrote (the reboot reset them): not restored")
    for entry in reversed(entries):
        why = restore_entry(entry, sysroot)
        if why == VANISHED:
            warn(f"{entry['path']} (old value {entry['old']}): {VANISHED}")
        elif why:
            left_e.insert(0, {**entry, "why": why})
        else:
            done += 1
    for rec in reversed(doc.files):
        why = _restore_file(rec, sysroot)
        if why:
            left_f.insert(0, {**rec, "why": why})
        else:
            done += 1
    return left_e, left_f, done


def _listing(left_e, left_f):
    items = [f"{e['path']} (old value {e['old']}): {e['why']}" for e in left_e]
    items += [f"{f['path']} (old content in the journal): {f['why']}" for f in left_f]
    more = f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


def _keep(store, doc, left_e, left_f):
    """Leave only the unrestored entries in the journal (none: remove it). A problem
    doing so is returned as text for the message."""
    try:
        if left_e or left_f:
            J.rewrite(store, J.Doc(doc.profile, doc.kernel, doc.created, doc.boot_id,
                                   left_e, left_f, doc.legacy, doc.path))
        else:
            J.remove(store)
    except Exception as err:  # noqa: BLE001 - the restore outcome must still be told
        return f"; the journal could not be updated ({err})"
    return ""


def _cause(err):
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, VnumaError):
        return f"apply failed ({err})"
    return f"apply failed ({type(err).__name__}: {err})"


def _rollback(store, journal, sysroot, err, warn):
    """Restore everything the journal lists (nothing when it could not be started);
    raise the error that says how it went. Signals wait until this is done."""
    with interrupt.deferred() as signals:
        if journal is None:
            left_e, left_f, problem = [], [], _keep(store, None, [], [])
        else:
            journal.close()
            left_e, left_f, _ = _restore(journal.doc, sysroot, warn)
            problem = _keep(store, journal.doc, left_e, left_f)
    msg = _cause(err) if not signals else "interrupted"
    if left_e or left_f:
        msg += (f"; not restored: {_listing(left_e, left_f)}; kept in "
                f"{store.shown(journal.doc.path)}: fix the cause, then run 'vnuma-sched "
                f"{store.command} revert'")
    else:
        msg += "; every earlier write was restored"
    msg += problem
    if isinstance(err, KeyboardInterrupt) or signals:
        raise ApplyInterrupted(msg) from err
    if not isinstance(err, Exception):     # SystemExit and the like: rolled back, go on
        raise err
    raise ApplyError(msg) from err


def _journaled_olds(row, knob, sysroot):
    """The values to journal for ``row``: those its plan read (Row.olds), else read
    now; checked as a journal's values are."""
    olds = row.olds if row.olds is not None else [read(knob, p, sysroot) for p in row.paths]
    for path, old in zip(row.paths, olds, strict=True):
        if not knob.valid_stored(old):
            raise DataError(path, f"current value {str(old)[:40]!r} is not a {knob.name} "
                                  "value the journal can keep")
    return olds


def _write(knob, path, row, old, sysroot, refused):
    """One write; False when the kernel refused it, the knob allows that (an IRQ that
    cannot move) and the value is unchanged: ``refused(row, path, reason)`` is told."""
    try:
        write(knob, path, row.target, sysroot)
    except DataError as err:
        if refused is None or not knob.may_refuse or _value_now(knob, path, sysroot) != old:
            raise
        refused(row, path, _reason(err, path))
        return False
    return True


def _batches(rows):
    """The 'set' rows in batches: a batch ends after a row that creates or removes a
    directory (the next rows may be files in it, readable only after that write)."""
    batch = []
    for row in rows:
        if row.action != SET:
            continue
        batch.append(row)
        if row.kind == K.CGROUP_DIR:
            yield batch
            batch = []
    if batch:
        yield batch


def _held(row):
    return contextlib.nullcontext()


def _write_batch(rows, sysroot, journal, between, refused, count, around=_held):
    """Journal every write of ``rows`` (one fsync), then make them, then mark the ones
    made "done" (one append, no fsync: an entry left pending is checked on revert).
    ``around(row)``: a context manager held while that row is written."""
    todo = []
    for row in rows:
        knob = K.known(row.knob)
        todo += [(row, knob, p, old) for p, old in
                 zip(row.paths, _journaled_olds(row, knob, sysroot), strict=True)]
    seqs = journal.begin([(row.knob, knob.kind, p, old, row.target)
                          for row, knob, p, old in todo])
    made = []
    for seq, (row, knob, path, old) in zip(seqs, todo, strict=True):
        with around(row):
            made_it = _write(knob, path, row, old, sysroot, refused)
        if not made_it:
            continue        # still journaled (pending): its revert is a no-op
        made.append(seq)
        count += 1
        if between is not None:
            between(count)
    journal.done(made)
    return count


def _write_rows(rows, sysroot, journal, between, refused=None, around=_held):
    count = 0
    for batch in _batches(rows):
        count = _write_batch(batch, sysroot, journal, between, refused, count, around)
    return count


def _persist(rows, sysroot, journal, files, boot):
    kept = (SET, UNCHANGED)
    texts = {SYSCTL_D: persist.sysctl_text(rows, kept) if files else None,
             MODPROBE_D: persist.modprobe_text(rows, kept) if files else None,
             GRUB_D: persist.grub_text(boot_args(rows)) if boot else None}
    for path, text in texts.items():
        if text is not None:
            persist.write(sysroot, journal, path, text)


def _clear(store, sysroot, replace, warn):
    """An applied profile must be reverted first (--replace does it). A journal from
    an earlier boot that lists no files is obsolete: the reboot reset its values."""
    doc = J.load(store)
    if doc is None:
        return
    if _earlier_boot(store, doc) and not doc.files:
        warn(f"dropping the journal of {doc.profile!r} from an earlier boot")
        J.remove(store)
        return
    if not replace:
        raise BadInput(f"profile {doc.profile!r} is applied (journal {store.shown(doc.path)}); "
                       "revert it first or use --replace")
    revert(sysroot, store=store, warn=warn)


def apply(rows, sysroot, profile, replace=False, persist=False, persist_boot=False,
          between=None, store=None, warn=_nowarn, refused=None, around=_held):
    """Write every 'set' row, journal first; the number of writes. Hold the lock.
    With ``refused`` (a callback), a write that the kernel refuses to a knob that may
    refuse it is reported there instead of failing the apply. ``around(row)``: a
    context manager held while that row is written."""
    store = _store(sysroot, store)
    _clear(store, sysroot, replace, warn)
    journal = None
    with interrupt.stops():
        try:
            journal = J.Writer(store, profile.name, facts.release(sysroot),
                               persistent=persist or persist_boot)
            count = _write_rows(rows, sysroot, journal, between, refused, around)
            _persist(rows, sysroot, journal, persist, persist_boot)
            journal.close()
            if count == 0 and not journal.doc.files:
                J.remove(store)
        except BaseException as err:  # noqa: B036 - every way out rolls back
            _rollback(store, journal, sysroot, err, warn)
    return count


def _earlier_boot(store, doc):
    now = store.boot_id()
    return doc.boot_id is not None and now is not None and doc.boot_id != now


def revert(sysroot, store=None, force=False, warn=_nowarn):
    """Restore every journaled value (newest first) and file; drop the journal.
    Vanished paths are skipped with a warning; an entry that cannot be restored
    stays in the journal (ApplyError) unless ``force`` drops it."""
    store = _store(sysroot, store)
    doc = J.load(store)
    if doc is None:
        raise BadInput("nothing to revert: no journal (no profile applied)")
    left_e, left_f, done = _restore(doc, sysroot, warn, _earlier_boot(store, doc))
    result = Reverted(doc, done)
    if (left_e or left_f) and not force:
        problem = _keep(store, doc, left_e, left_f)
        raise ApplyError(f"revert incomplete: {_listing(left_e, left_f)}; kept in "
                         f"{store.shown(doc.path)} (fix the cause and run revert again, or drop "
                         f"them with '{store.command} revert --force'){problem}")
    for entry in left_e:
        warn(f"dropped from the journal, not restored: {_listing([entry], [])}")
    for rec in left_f:
        warn(f"dropped from the journal, not restored: {_listing([], [rec])}")
    result.dropped = left_e + left_f
    J.remove(store)
    return result


def verify(profile, sysroot, store=None):
    """(row, status) per knob: OK, DRIFT (the applied profile's value changed since),
    DIFF (differs; the profile is not the applied one), pending reboot, not applicable
    here."""
    doc = J.load(_store(sysroot, store))
    applied = doc is not None and doc.profile == profile.name
    out = []
    for row in plan(profile, sysroot):
        status = {UNCHANGED: OK, BOOT_ONLY: PENDING, UNSUPPORTED: NOT_HERE}.get(
            row.action, DRIFT if applied else DIFF)
        out.append((row, status))
    return out


def hold(profile, sysroot, interval, count, progress, sleep=None, store=None):
    """Re-assert the decaying knobs of an applied profile every ``interval`` seconds."""

    doc = J.load(_store(sysroot, store))
    if doc is None or doc.profile != profile.name:
        raise BadInput(f"apply {profile.name!r} first: hold only re-asserts an applied "
                       "profile (so that revert can restore the original values)")
    sleep = sleep or time.sleep
    rounds = 0
    try:
        with interrupt.stops():
            while count is None or rounds < count:
                _reassert(profile, sysroot, progress)
                rounds += 1
                if count is None or rounds < count:
                    sleep(interval)
    except KeyboardInterrupt:
        pass
    return rounds


def _reassert(profile, sysroot, progress):
    for row in plan(profile, sysroot):
        if K.REGISTRY[row.knob].decays and row.action == SET:
            for path in row.paths:
                write(K.REGISTRY[row.knob], path, row.target, sysroot)
            progress(f"re-asserted {row.knob}={row.target} (was {row.current})")
