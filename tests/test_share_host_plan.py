"""The host coordinator's assignment (pure): which vCPUs and memory per node each
Full-vNUMA guest uses, refusals, and the order of the steps. Hypothesis: no plan the
rules accept ever puts two active vCPUs on one host CPU or more memory on a node than
it has, before, after or between any two steps."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from share_host_fakes import HOST, host_of, mirror

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import vm
from vnuma_sched.share import host_plan as H


def two_guests(**kw):
    guests = {"a": mirror("a", **kw), "b": mirror("b", first=1, **kw)}
    start = H.plan_start(HOST, guests, {n: g.whole() for n, g in guests.items()})
    return guests, start.after


def used(move, name):
    return list(move.after[name].used)


# --- parsing ---------------------------------------------------------------------------

def test_a_request_reads_counts_and_sizes():
    req = H.parse_request("a", "node1=1,node0=2", "node1=512M,node0=1G")
    assert req == H.Request("a", ((0, 2), (1, 1)), ((0, 1024), (1, 512)))


@pytest.mark.parametrize("cpus, mem, needle", [
    ("node0=x", None, "a vCPU count is a whole number"),
    ("node0", None, "is not nodeN=VALUE"),
    ("node0=1,node0=2", None, "node0 given twice"),
    ("cpu0=1", None, "is not nodeN=VALUE"),
    ("node0=1", "node1=5T", "expected a size like 2G"),
    (" ", None, "empty"),
])
def test_a_malformed_request_is_one_line(cpus, mem, needle):
    with pytest.raises(BadInput, match=needle) as err:
        H.parse_request("a", cpus, mem)
    assert "\n" not in str(err.value)


def test_layout_of_a_placed_topology_is_the_mirror():
    topo = vm.from_host(HOST, 2048)
    g = H.layout_of("a", topo)
    assert g.hosts == {v: v for v in range(8)}
    assert g.mem_bounds == ((0, 0, 1024, 1024), (1, 1, 1024, 1024))   # node, host node
    assert g.on_node(HOST, 1) == (4, 5, 6, 7)
    # 'vm run --mem-hotplug 512M': each node can grow by that much
    assert H.layout_of("a", topo, 512).bounds(1) == (1024, 1536)


def test_memory_is_per_guest_node_and_counted_on_its_host_node():
    """Two guest nodes on one host node (a 2-node guest on a 1-node host): each is
    resized on its own, the host node holds both."""
    host = host_of([2], mem_mb=2048)
    g = H.GuestLayout("a", ((0, 0), (1, 1)), (H.MemNode(0, 0, 512, 1024),
                                               H.MemNode(1, 0, 512, 1024)))
    start = H.plan_start(host, {"a": g}, {"a": g.whole()}).after
    move = H.plan_change(host, {"a": g}, start, [H.parse_request("a", None, "node1=768M")])
    assert move.after["a"].mem == ((0, 512), (1, 768))
    assert g.mem_on(move.after["a"], 0) == 1280
    with pytest.raises(H.Refused, match="node 0 overcommitted: 2048 MiB of guest memory"
                                        ", 1536 MiB there"):
        H.plan_change(host_of([2], mem_mb=1536), {"a": g}, start,
                      [H.parse_request("a", None, "node0=1024M,node1=1024M")])


def test_memory_off_the_virtio_mem_block_is_refused():
    host = host_of([2, 2], mem_mb=2048)
    guests = {"a": mirror("a", host, mem=512, mem_max=1024)}
    start = H.plan_start(host, guests, {"a": guests["a"].whole()}).after
    with pytest.raises(H.Refused, match="--mem node1=515M: 3 MiB above its 512 MiB boot "
                                        "memory is not a multiple of virtio-mem's 2 MiB"):
        H.plan_change(host, guests, start, [H.parse_request("a", None, "node1=515M")])


# --- the first assignment --------------------------------------------------------------

def test_start_gives_each_guest_its_boot_vcpu_and_the_first_the_rest():
    guests, after = two_guests()
    assert list(after["a"].used) == [0, 2, 3, 4, 5, 6, 7]     # host CPU 1 is b's vCPU 0
    assert list(after["b"].used) == [0]
    assert H.problems(HOST, guests, after) == []


def test_start_with_shares_named():
    guests = {"a": mirror("a"), "b": mirror("b", first=1)}
    move = H.plan_start(HOST, guests, {n: g.whole() for n, g in guests.items()},
                        [H.parse_request("b", "node0=2,node1=2")])
    assert used(move, "b") == [0, 1, 4, 5]       # host CPUs 1, 2, 4, 5
    assert used(move, "a") == [0, 3, 6, 7]       # host CPUs 0, 3, 6, 7


def test_start_refuses_two_guests_whose_boot_vcpus_share_a_host_cpu():
    guests = {"a": mirror("a"), "b": mirror("b")}
    with pytest.raises(H.Refused, match="guests a and b both keep a never-parked vCPU"):
        H.plan_start(HOST, guests, {n: g.whole() for n, g in guests.items()})


def test_start_refuses_a_guest_on_cpus_the_host_does_not_have():
    g = H.GuestLayout("a", ((0, 0), (1, 9)))
    with pytest.raises(H.Refused, match="host CPU 9, which this host does not have"):
        H.plan_start(HOST, {"a": g}, {"a": g.whole()})


def test_start_steps_only_give():
    guests = {"a": mirror("a"), "b": mirror("b", first=1)}
    move = H.plan_start(HOST, guests, {n: g.whole() for n, g in guests.items()})
    assert [(s.guest, s.phase) for s in move.steps] == [("a", "give"), ("b", "give")]


# --- changes ---------------------------------------------------------------------------

def test_giver_goes_first_then_the_receiver():
    guests, start = two_guests()
    move = H.plan_change(HOST, guests, start, [H.parse_request("b", "node1=2"),
                                               H.parse_request("a", "node1=2")])
    assert [(s.guest, s.phase) for s in move.steps] == [("a", "give"), ("b", "take")]
    assert used(move, "a") == [0, 2, 3, 4, 5]    # the highest-numbered are parked
    assert used(move, "b") == [0, 6, 7]          # the lowest-numbered free ones added
    assert move.steps[0].after.used == move.after["a"].used


def test_a_guest_that_gives_and_takes_has_two_steps():
    guests, start = two_guests()
    first = H.plan_change(HOST, guests, start, [H.parse_request("a", "node0=1,node1=2"),
                                                H.parse_request("b", "node0=3,node1=2")]).after
    move = H.plan_change(HOST, guests, first, [H.parse_request("a", "node0=3,node1=0"),
                                               H.parse_request("b", "node0=1,node1=4")])
    assert [(s.guest, s.phase) for s in move.steps] == [
        ("a", "give"), ("b", "give"), ("a", "take"), ("b", "take")]
    assert H.problems(HOST, guests, move.after) == []


def test_taking_what_another_guest_uses_is_refused_naming_it():
    guests, start = two_guests()
    with pytest.raises(H.Refused, match=r"needs 1 more host CPU\(s\) on node 1, none free "
                                        r"\(a on host CPU 4-7\)"):
        H.plan_change(HOST, guests, start, [H.parse_request("b", "node1=1")])


@pytest.mark.parametrize("spec, mem, needle", [
    ("node1=5", None, "node1=5, but it has 4 vCPU"),
    ("node0=0", None, "vCPU 0 runs there and is never parked"),
    ("node3=1", None, "node3: the host has nodes 0-1"),
    ("node1=4", "node1=512M", "fixed at 1024 MiB"),
    ("node1=4", "node2=512M", "--mem node2"),
])
def test_refusals_are_one_line(spec, mem, needle):
    guests, start = two_guests()
    with pytest.raises(H.Refused, match=needle) as err:
        H.plan_change(HOST, guests, start, [H.parse_request("a", spec, mem)])
    assert "\n" not in str(err.value)


def test_unknown_or_repeated_guest_is_refused():
    guests, start = two_guests()
    with pytest.raises(H.Refused, match="unknown guest 'c'"):
        H.plan_change(HOST, guests, start, [H.parse_request("c", "node0=1")])
    with pytest.raises(H.Refused, match="named twice"):
        H.plan_change(HOST, guests, start, [H.parse_request("a", "node0=1"),
                                            H.parse_request("a", "node0=2")])


def test_memory_moves_between_guests_within_the_node():
    host = host_of([2, 2], mem_mb=2048)
    guests = {"a": mirror("a", host, mem=512, mem_max=1536),
              "b": mirror("b", host, first=1, mem=512, mem_max=1536)}
    start = H.plan_start(host, guests, {n: g.whole() for n, g in guests.items()}).after
    grown = H.plan_change(host, guests, start, [H.parse_request("a", None, "node1=1536M")])
    assert [(s.guest, s.phase) for s in grown.steps] == [("a", "take")]
    with pytest.raises(H.Refused, match="node 1 overcommitted: 2560 MiB of guest memory, "
                                        "2048 MiB there"):
        H.plan_change(host, guests, grown.after, [H.parse_request("b", None, "node1=1G")])
    move = H.plan_change(host, guests, grown.after, [
        H.parse_request("b", None, "node1=1536M"), H.parse_request("a", None, "node1=512M")])
    assert (move.after["a"].mem_of(1), move.after["b"].mem_of(1)) == (512, 1536)
    assert [(s.guest, s.phase) for s in move.steps] == [("a", "give"), ("b", "take")]
    assert move.steps[0].after.used == start["a"].used     # memory only: CPUs stay


def test_memory_below_what_the_guest_booted_with_is_refused():
    host = host_of([2, 2], mem_mb=2048)
    guests = {"a": mirror("a", host, mem=512, mem_max=1536)}
    start = H.plan_start(host, guests, {"a": guests["a"].whole()}).after
    with pytest.raises(H.Refused, match=r"--mem node1=256M: 512\.\.1536 MiB"):
        H.plan_change(host, guests, start, [H.parse_request("a", None, "node1=256M")])


def test_stop_gives_everyone_the_whole_layout():
    guests, start = two_guests()
    move = H.plan_stop(guests, start)
    assert {n: s.used for n, s in move.after.items()} == {"a": tuple(range(8)),
                                                         "b": tuple(range(8))}
    assert all(s.phase == "take" for s in move.steps)


# --- the invariant ---------------------------------------------------------------------

@st.composite
def worlds(draw):
    """A host, guests mirroring it (each with its boot vCPU on its own host CPU when
    node 0 has room), resizable memory, and a sequence of changes, each naming some of
    the guests with counts and sizes in range (what is out of range is refused above)."""
    cpus = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    host = host_of(cpus, mem_mb=draw(st.integers(512, 4096)))
    guests = {}
    for i in range(draw(st.integers(1, min(3, cpus[0])))):
        lo = draw(st.integers(0, 512))
        guests[f"g{i}"] = mirror(f"g{i}", host, first=i, mem=lo,
                                 mem_max=lo + draw(st.integers(0, 2048)))
    nodes = st.integers(0, len(cpus) - 1)
    changes = []
    for _ in range(draw(st.integers(1, 5))):
        change = []
        for name in draw(st.lists(st.sampled_from(sorted(guests)), min_size=1, unique=True)):
            g = guests[name]
            counts = draw(st.dictionaries(nodes, st.integers(0, 4), max_size=3))
            mem = {n: draw(st.integers(g.bounds(n)[0], g.bounds(n)[1]))
                   for n in draw(st.lists(nodes, max_size=2, unique=True))}
            change.append(H.Request(name, tuple(sorted(counts.items())),
                                    tuple(sorted(mem.items()))))
        changes.append(change)
    return host, guests, changes


def states(move):
    """Every state a move passes through, and for each step also the state where that
    guest may be either before or after it (a step cut short): its vCPUs and memory
    are the union of both."""
    cur = dict(move.before)
    yield cur
    for step in move.steps:
        both = H.share(set(step.before.used) | set(step.after.used),
                       {n: max(step.before.mem_of(n), step.after.mem_of(n))
                        for n in dict(step.before.mem).keys() | dict(step.after.mem).keys()})
        yield {**cur, step.guest: both}
        cur = {**cur, step.guest: step.after}
        yield cur
    assert cur == move.after


@given(worlds())
def test_no_accepted_plan_overlaps_or_overcommits(world):
    host, guests, changes = world
    try:
        current = H.plan_start(host, guests, {n: g.whole() for n, g in guests.items()}).after
    except H.Refused:
        assume(False)
    assert H.problems(host, guests, current) == []
    for reqs in changes:
        try:
            move = H.plan_change(host, guests, current, reqs)
        except H.Refused as err:
            assert "\n" not in str(err)
            continue
        for state in states(move):
            assert H.problems(host, guests, state) == []
        named = {r.guest for r in reqs}
        assert all(move.after[n] == current[n] for n in guests if n not in named)
        gives = [i for i, s in enumerate(move.steps) if s.phase == "give"]
        takes = [i for i, s in enumerate(move.steps) if s.phase == "take"]
        assert not gives or not takes or max(gives) < min(takes)
        current = move.after
    assert H.problems(host, guests, H.plan_stop(guests, current).before) == []
