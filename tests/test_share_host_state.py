"""The coordinator's journaled state: start, set, stop through fake guests; a
coordinator killed between any two steps (or inside one) restarts into a consistent
assignment by resuming or rolling back; a guest that does not answer keeps its share
and is named; the state file is data, checked field by field."""

import json

import pytest
from share_host_fakes import HOST, FakeGuests, Killed, host_of, mirror

from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.share import host_plan as H
from vnuma_sched.share import host_state as S
from vnuma_sched.share.coordinator import Coordinator, GuestBehind
from vnuma_sched.tunables.lock import Busy

LAYOUTS = {"a": mirror("a"), "b": mirror("b", first=1)}
RECORDS = {n: S.GuestRecord(g, f"/run/{n}-qmp.sock", f"/run/{n}-qga.sock")
           for n, g in LAYOUTS.items()}


@pytest.fixture
def world(tmp_path):
    guests = FakeGuests(LAYOUTS)
    coord = Coordinator(S.StateDir(tmp_path / "state"), HOST, guests)
    coord.start(RECORDS)
    return coord, guests


def reopen(coord, guests, between=None):
    """A new coordinator process on the same state directory."""
    return Coordinator(S.StateDir(coord.dir.path), HOST, guests, between)


def current(coord):
    return {n: list(s.used) for n, s in coord.load().assignment.items()}


def test_start_leaves_guests_exclusive_and_journaled(world):
    coord, guests = world
    state = coord.load()
    assert state.move is None and not state.behind
    assert current(coord) == {"a": [0, 2, 3, 4, 5, 6, 7], "b": [0]}
    assert {n: sorted(u) for n, u in guests.now.items()} == current(coord)
    assert guests.overlaps() == []
    assert json.loads(coord.dir.file.read_text())["guests"]["b"]["agent"] == "/run/b-qga.sock"


def test_start_twice_is_refused(world):
    coord, _ = world
    with pytest.raises(BadInput, match="a coordinator state exists"):
        coord.start(RECORDS)


def test_a_guest_that_does_not_answer_at_start_changes_nothing(tmp_path):
    guests = FakeGuests(LAYOUTS)
    guests.silent.add("b")
    coord = Coordinator(S.StateDir(tmp_path / "state"), HOST, guests)
    with pytest.raises(GuestBehind, match="guest b: no answer"):
        coord.start(RECORDS)
    assert guests.calls == [] and coord.dir.load() is None


def test_set_gives_back_before_the_receiver_takes(world):
    coord, guests = world
    guests.calls.clear()
    out = coord.set([H.parse_request("a", "node1=2"), H.parse_request("b", "node1=2")])
    assert out.finished
    assert guests.calls == [("a", (0, 2, 3, 4, 5)), ("b", (0, 6, 7))]
    assert current(coord) == {"a": [0, 2, 3, 4, 5], "b": [0, 6, 7]}
    assert guests.overlaps() == []


def test_memory_moves_giver_first_and_never_overcommits_the_host_node(tmp_path):
    host = host_of([4, 4], mem_mb=2048)
    layouts = {"a": mirror("a", host, mem=512, mem_max=1536),
               "b": mirror("b", host, first=1, mem=512, mem_max=1536)}
    records = {n: S.GuestRecord(g, f"/run/{n}-qmp.sock", f"/run/{n}-qga.sock")
               for n, g in layouts.items()}
    guests = FakeGuests(layouts, host)      # every apply checks the host nodes
    coord = Coordinator(S.StateDir(tmp_path / "state"), host, guests)
    coord.start(records)
    assert coord.set([H.parse_request("a", None, "node1=1536M")]).finished
    guests.calls.clear()
    out = coord.set([H.parse_request("b", None, "node1=1536M"),
                     H.parse_request("a", None, "node1=512M")])
    assert out.finished and [c[0] for c in guests.calls] == ["a", "b"]   # a gives first
    assert guests.mem_calls[-2:] == [("a", {0: 512, 1: 512}), ("b", {0: 512, 1: 1536})]
    report = coord.report()
    assert [[m["mem_mb"] for m in g["memory"]] for g in report["guests"]] == [[512, 512],
                                                                               [512, 1536]]
    assert all(g["mem_agrees"] for g in report["guests"])
    coord.stop()                            # everyone back to the memory it booted with
    assert guests.mem == {"a": {0: 512, 1: 512}, "b": {0: 512, 1: 512}}


def swap(coord):
    """A move with four steps: both guests give, then both take."""
    coord.set([H.parse_request("a", "node0=1,node1=2"), H.parse_request("b", "node0=3,node1=2")])
    return [H.parse_request("a", "node0=3,node1=0"), H.parse_request("b", "node0=1,node1=4")]


def killed_at(coord, guests, k, requests):
    def stop(i):
        assert guests.overlaps() == []
        if i == k:
            raise Killed()
    with pytest.raises(Killed):
        reopen(coord, guests, stop).set(requests)


SWAPPED = {"a": [0, 2, 3], "b": [0, 4, 5, 6, 7]}


def exclusive(guests):
    """A between-steps hook that checks no host CPU runs two active vCPUs."""
    return lambda i: None if not guests.overlaps() else pytest.fail("overlap")


@pytest.mark.parametrize("then", ["resume", "rollback"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_killed_between_steps_then_restarted(world, k, then):
    coord, guests = world
    requests = swap(coord)
    before = current(coord)
    killed_at(coord, guests, k, requests)
    state = coord.load()
    assert [ss.state for ss in state.move.steps] == ["done"] * k + ["todo"] * (4 - k)
    assert guests.overlaps() == []
    assert {n: sorted(u) for n, u in guests.now.items()} == current(coord)
    assert getattr(reopen(coord, guests, exclusive(guests)), then)().finished
    want = SWAPPED if then == "resume" else before
    assert coord.load().move is None and current(coord) == want
    assert {n: sorted(u) for n, u in guests.now.items()} == want


@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_killed_inside_a_step_after_the_guest_applied_it(world, then):
    coord, guests = world
    requests = swap(coord)
    before = current(coord)
    guests.die_after_apply = True
    with pytest.raises(Killed):
        reopen(coord, guests).set(requests)
    guests.die_after_apply = False
    steps = coord.load().move.steps
    assert [ss.state for ss in steps] == ["started", "todo", "todo", "todo"]
    assert getattr(reopen(coord, guests), then)().finished
    want = SWAPPED if then == "resume" else before
    assert current(coord) == want
    assert {n: sorted(u) for n, u in guests.now.items()} == want


def test_a_silent_receiver_keeps_its_share_and_is_named(world):
    coord, guests = world
    guests.silent.add("b")
    out = coord.set([H.parse_request("a", "node1=2"), H.parse_request("b", "node1=2")])
    assert not out.finished and out.failed.step.guest == "b"
    state = coord.load()
    assert state.behind == {"b": "no answer from its agent within 5 s"}
    assert current(coord)["b"] == [0]           # what it last confirmed
    assert guests.overlaps() == []
    with pytest.raises(BadInput, match=r"a set move is pending: step 2 of 2 \(b, no answer"):
        coord.set([H.parse_request("a", "node1=1")])
    guests.silent.clear()
    assert coord.resume().finished
    assert coord.load().behind == {} and current(coord)["b"] == [0, 6, 7]


def test_a_silent_giver_stops_the_move_before_anyone_takes(world):
    coord, guests = world
    guests.silent.add("a")
    guests.calls.clear()
    out = coord.set([H.parse_request("a", "node1=2"), H.parse_request("b", "node1=2")])
    assert out.failed.step.guest == "a"
    assert [c[0] for c in guests.calls] == ["a"]      # b never took
    guests.silent.clear()
    assert coord.rollback().finished
    assert current(coord) == {"a": [0, 2, 3, 4, 5, 6, 7], "b": [0]}


def test_stop_gives_every_guest_its_whole_layout_and_ends(world):
    coord, guests = world
    coord.set([H.parse_request("a", "node1=2"), H.parse_request("b", "node1=2")])
    assert coord.stop().finished
    assert guests.now == {n: set(range(8)) for n in LAYOUTS}
    assert coord.dir.load() is None
    with pytest.raises(BadInput, match="no coordinator state"):
        coord.set([H.parse_request("a", "node1=1")])


def test_stop_also_reaches_a_guest_whose_step_did_not_finish(world):
    coord, guests = world
    guests.silent.add("b")
    coord.set([H.parse_request("a", "node1=2"), H.parse_request("b", "node1=2")])
    guests.silent.clear()
    assert coord.stop().finished
    assert guests.now == {n: set(range(8)) for n in LAYOUTS}


def test_a_second_command_meanwhile_is_refused(world):
    coord, guests = world

    def meanwhile(i):
        with pytest.raises(Busy, match="another command that writes is running"):
            reopen(coord, guests).set([H.parse_request("a", "node1=1")])
    reopen(coord, guests, meanwhile).set(swap(coord))


def test_nothing_to_resume_or_roll_back(world):
    coord, _ = world
    with pytest.raises(BadInput, match="nothing to resume"):
        coord.resume()
    with pytest.raises(BadInput, match="nothing to roll back"):
        coord.rollback()


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(version=7), "version 7"),
    (lambda d: d["assignment"]["a"].update(used="0-3"), "assignment.a.used"),
    (lambda d: d["assignment"].pop("b"), "does not name exactly the guests"),
    (lambda d: d["guests"]["a"].update(qmp=3), "socket paths"),
    (lambda d: d.update(behind={"z": "x"}), "behind"),
    (lambda d: d.update(move={"kind": "exec", "request": "", "steps": []}), "unknown kind"),
    (lambda d: d.update(command="rm -rf /"), "command is not a list of words"),
    (lambda d: d.update(timeout=-1), "timeout is not seconds"),
])
def test_a_malformed_state_is_refused_naming_the_file(world, edit, needle):
    coord, _ = world
    doc = json.loads(coord.dir.file.read_text())
    edit(doc)
    coord.dir.file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=needle) as err:
        coord.load()
    assert err.value.exit_code == 3 and str(coord.dir.file) in str(err.value)


def test_a_state_that_is_not_json(world):
    coord, _ = world
    coord.dir.file.write_text("{")
    with pytest.raises(DataError, match="not a coordinator state"):
        coord.load()
