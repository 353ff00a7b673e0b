import shutil

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import (
    MAX_CPUS,
    format_cpulist,
    llc_of_cpus,
    packages_of_cpus,
    parse_cpulist,
    read_topology,
)


@pytest.mark.parametrize("text,cpus", [
    ("", []), ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,8,10-11", [0, 1, 8, 10, 11]),
    ("0-23,48-71\n", list(range(24)) + list(range(48, 72))), ("0-7:2/4", [0, 1, 4, 5]),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("bad", ["a", "1-", "-1", "3-1", "0,,1", "0-3:5/4", "1 2", "0-3:1/0"])
def test_parse_cpulist_rejects(bad):
    with pytest.raises(ValueError):
        parse_cpulist(bad)


@given(st.sets(st.integers(min_value=0, max_value=4095), max_size=200))
def test_cpulist_roundtrip(cpus):
    assert parse_cpulist(format_cpulist(cpus)) == sorted(cpus)


@given(st.text(alphabet="0123456789-,:/ x", max_size=30))
def test_parse_cpulist_never_crashes_otherwise(text):
    try:
        out = parse_cpulist(text)
    except ValueError:
        return
    assert out == sorted(set(out))


def topo(fixture_root, name):
    return read_topology(SysRoot(fixture_root / name))


def test_two_node_qemu_guest(fixture_root):
    t = topo(fixture_root, "qemu-2node")
    assert t.to_dict() == {"nodes": [
        {"id": 0, "cpus": [0, 1], "mem_kb": 983040, "distances": [10, 21]},
        {"id": 1, "cpus": [2, 3], "mem_kb": 1036288, "distances": [21, 10]},
    ]}
    assert t.node_of(3) == 1 and t.distance(0, 1) == 21


def test_xeon_8160_two_sockets_with_ht(fixture_root):
    t = topo(fixture_root, "xeon-8160-2s")
    assert [len(n.cpus) for n in t.nodes] == [48, 48]
    assert t.node_of(47) == 1 and t.node_of(48) == 0 and t.node_of(95) == 1
    assert t.remote_distances() == [21]


def test_threadripper_memoryless_nodes(fixture_root):
    t = topo(fixture_root, "tr-2990wx")
    assert [n.memoryless for n in t.nodes] == [False, True, False, True]
    assert all(len(n.cpus) == 16 for n in t.nodes)
    assert t.remote_distances() == [16]


def test_single_node_machine(fixture_root):
    t = topo(fixture_root, "kvm-guest-1node")
    assert len(t.nodes) == 1 and t.nodes[0].distances == (10,)


@pytest.fixture
def broken(tmp_path, fixture_root):
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "qemu-2node", root)
    return root


@pytest.mark.parametrize("file,text,needle", [
    ("node1/cpulist", "2-x\n", "node1/cpulist: malformed cpulist"),
    ("node0/distance", "10 21 30\n", "node0/distance: distance row has 3 entries for 2 nodes"),
    ("node1/distance", "21 ten\n", "node1/distance: malformed distance row"),
    ("node1/distance", "-21 10\n", "node1/distance: distance row '-21 10' has values outside"),
    ("node0/meminfo", "garbage\n", "node0/meminfo: no 'Node N MemTotal"),
    ("node1/cpulist", "1-2\n", "node1/cpulist: CPU 1 is also in node0"),
])
def test_malformed_files_name_the_file(broken, file, text, needle):
    (broken / "sys/devices/system/node" / file).write_text(text)
    with pytest.raises(DataError) as err:
        read_topology(SysRoot(broken))
    assert needle in str(err.value)


def test_unreadable_file_names_it(broken):
    (broken / "sys/devices/system/node/node0/meminfo").unlink()
    with pytest.raises(DataError, match="node0/meminfo"):
        read_topology(SysRoot(broken))


def test_kernel_without_numa(tmp_path):
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:  2048 kB\n")
    t = read_topology(SysRoot(tmp_path))
    assert not t.numa and t.to_dict()["nodes"] == [
        {"id": 0, "cpus": [0, 1, 2, 3], "mem_kb": 2048, "distances": [10]}]


def test_sysroot_refuses_escapes(tmp_path):
    with pytest.raises(BadInput):
        SysRoot(tmp_path).path("/sys/../../etc/passwd")
    with pytest.raises(BadInput):
        SysRoot(tmp_path / "missing")


def test_llc_from_cache_topology_or_node(tmp_path, fixture_root):
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "qemu-2node", root)
    for cpu in range(4):
        base = root / f"sys/devices/system/cpu/cpu{cpu}/cache"
        for index, level, shared in (("index0", "1", str(cpu)), ("index3", "3",
                                     "0-1" if cpu < 2 else "2-3")):
            (base / index).mkdir(parents=True)
            (base / index / "level").write_text(level + "\n")
            (base / index / "shared_cpu_list").write_text(shared + "\n")
    sysroot = SysRoot(root)
    assert llc_of_cpus(sysroot, read_topology(sysroot)) == {0: 0, 1: 0, 2: 2, 3: 2}
    plain = SysRoot(fixture_root / "tr-2990wx")
    llc = llc_of_cpus(plain, read_topology(plain))
    assert llc[16] == llc[48] == 16 and llc[8] == 8   # no cache info: the node


@pytest.mark.parametrize("bad", ["0-4294967295", "8192", "0-99999999999999999999",
                                 "0-15:1/4294967296", "٣", "0-3:٢/4"])
def test_parse_cpulist_refuses_what_no_kernel_prints(bad):
    with pytest.raises(ValueError) as err:
        parse_cpulist(bad)
    assert str(err.value)


def test_huge_cpulist_in_sysfs_is_bad_data_exit_3(broken):
    (broken / "sys/devices/system/node/node1/cpulist").write_text("0-4294967295\n")
    res = CliRunner().invoke(main, ["--root", str(broken), "topology"])
    assert res.exit_code == 3, res.output
    assert "node1/cpulist" in res.output and len(res.output.strip().splitlines()) == 1


_ELEMENT = st.one_of(
    st.integers(0, 2**40).map(str),
    st.tuples(st.integers(0, 2**34), st.integers(0, 2**34)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(st.integers(0, 9000), st.integers(0, 9000), st.integers(0, 70),
              st.integers(0, 70)).map(lambda t: f"{t[0]}-{t[1]}:{t[2]}/{t[3]}"),
    st.text(alphabet="0123456789-,:/ x", max_size=8))


@given(st.lists(_ELEMENT, max_size=6).map(",".join))
def test_cpulist_is_refused_with_a_message_or_round_trips(text):
    try:
        cpus = parse_cpulist(text)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert cpus == sorted(set(cpus)) and all(0 <= c < MAX_CPUS for c in cpus)
    assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_packages_of_cpus(tmp_path, fixture_root):
    root = SysRoot(fixture_root / "xeon-8160-2s")
    assert packages_of_cpus(root, [0, 24, 48, 72]) == {0: 0, 24: 1, 48: 0, 72: 1}
    assert packages_of_cpus(root, [0, 96]) is None          # no such CPU: cannot tell
    assert packages_of_cpus(SysRoot(tmp_path), []) == {}
