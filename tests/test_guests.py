"""The guests 'vm run --name' records (kernel/guests.py): one record per name, owned
by its 'vm run'; a live owner keeps the name, a dead one leaves a stale record that
the next run replaces and nothing uses; a run removes only its own record."""

import pytest

from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.kernel import guests as G
from vnuma_sched.system.sysroot import SysRoot

LIVE = {100, 200}


def alive(pid):
    return pid in LIVE


def guest(name="g1", pid=100):
    return G.Guest(name, pid, "/run/x-qga.sock", "/run/x-qmp.sock", "bzImage", "2 nodes")


def test_a_record_is_found_until_its_run_removes_it(tmp_path):
    root = SysRoot(tmp_path)
    G.add(root, guest(), alive)
    assert G.find(root, "g1", alive) == guest()
    G.remove(root, "g1", 200)                   # not the owner: kept
    assert G.find(root, "g1", alive) == guest()
    G.remove(root, "g1", 100)
    with pytest.raises(BadInput, match="no guest of that name is running"):
        G.find(root, "g1", alive)
    assert G.listing(root, alive) == []


def test_a_live_owner_keeps_its_name_a_dead_one_does_not(tmp_path):
    root, live = SysRoot(tmp_path), {100, 200}
    G.add(root, guest(), live.__contains__)
    with pytest.raises(BadInput, match=r"a guest of that name is running \('vm run' pid 100\)"):
        G.add(root, guest(pid=200), live.__contains__)
    live.discard(100)                           # its vm run was killed: the record is stale
    with pytest.raises(BadInput, match=r"its 'vm run' \(pid 100\) is gone"):
        G.find(root, "g1", live.__contains__)
    assert G.listing(root, live.__contains__) == [(guest(), False)]
    G.add(root, guest(pid=200), live.__contains__)      # the next run takes the name
    assert G.find(root, "g1", live.__contains__).pid == 200


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../../etc/passwd", "x" * 33, "a b"])
def test_bad_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(BadInput, match="letters, digits"):
        G.check_name(name)
    with pytest.raises(BadInput, match="letters, digits"):
        G.find(SysRoot(tmp_path), name, alive)
    assert not (tmp_path / "run").exists()


def test_a_malformed_record_is_data_error_and_not_listed(tmp_path):
    root = SysRoot(tmp_path)
    G.add(root, guest(), alive)
    G.add(root, guest("g2"), alive)
    (tmp_path / "run/vnuma_sched/guests/g2.json").write_text("{not json")
    with pytest.raises(DataError, match="not a guest record"):
        G.find(root, "g2", alive)
    assert [g.name for g, _ in G.listing(root, alive)] == ["g1"]


def test_default_sockets_live_beside_the_records(tmp_path):
    assert G.socket_path(SysRoot(tmp_path), "g1", "qmp") == \
        f"{tmp_path}/run/vnuma_sched/guests/g1-qmp.sock"


def test_an_unwritable_registry_is_one_error_naming_it(tmp_path):
    (tmp_path / "run").write_text("not a directory")      # /run cannot hold the records
    with pytest.raises(DataError, match=r"guests/g1.json: cannot record the guest"):
        G.add(SysRoot(tmp_path), guest(), alive)
