"""serve: exposition from recorded counters, names and labels, cardinality, the text
file, the HTTP endpoint and --listen errors (unit tier: no bcc, no root)."""

import os
import re
import shutil
import socket
import threading
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from helpers import interval, one_line
from prometheus_client.parser import text_string_to_metric_families

from vnuma_sched.cli import serve as cli_serve
from vnuma_sched.cli.main import main
from vnuma_sched.probes import exposition as X
from vnuma_sched.probes import report
from vnuma_sched.probes import serve as srv
from vnuma_sched.probes.catalog import Availability
from vnuma_sched.probes.spec import PROBES
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology

LABELS = {"cpu", "node", "type", "cause", "src_node", "dst_node", "probe", "reason", "le", "scope",
          "kernel", "profile"}


def topology(nodes, cpus_per_node):
    return Topology(tuple(Node(n, tuple(range(n * cpus_per_node, (n + 1) * cpus_per_node)),
                               1 << 20, tuple(10 if m == n else 21 for m in range(nodes)))
                          for n in range(nodes)))


class FakeSession:
    """What the collector reads of a Session: cumulative snapshots, status, topology."""

    def __init__(self, snapshot, topo, status=None):
        self.snapshot, self.topology = snapshot, topo
        self.status = status or {name: Availability(True) for name in snapshot}
        self.samples = 0

    def sample(self, listings=True):
        self.samples += 1
        self.listings = listings
        return self.snapshot

    def close(self):
        self.snapshot = None


def reg_of(session, root, per_cpu=True):
    return srv.registry(srv.SessionCollector(session, SysRoot(root), per_cpu))


def exposition_text(session, root, per_cpu=True):
    return srv.generate_latest(reg_of(session, root, per_cpu)).decode()


def parsed(text):
    """{sample name: [(labels, value)]}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples, name, **match):
    return sum(v for labels, v in samples.get(name, ())
               if all(labels.get(k) == w for k, w in match.items()))


@pytest.fixture
def recorded(fixture_root):
    """The recorded interval of helpers (4 CPUs on 2 nodes) as one cumulative snapshot."""
    snap = interval(2)["probes"]
    return FakeSession(snap, topology(2, 2)), fixture_root / "qemu-2node"


def test_exposition_agrees_with_what_record_derives(recorded):
    session, root = recorded
    got = parsed(exposition_text(session, root))
    want = report.metrics(report.totals([{"probes": session.snapshot}]))
    ipis = "vnuma_sched_ipis_received_total"
    assert total(got, ipis, type="resched") == want["ipi_resched"]
    assert total(got, ipis, type="call_single") == want["ipi_call_single"]
    assert total(got, ipis, type="call_func") == want["ipi_call_func"]
    assert total(got, "vnuma_sched_wakeups_without_ipi_total") == want["wake_without_ipi"]
    assert total(got, "vnuma_sched_idle_entries_total") == want["halts"]
    assert total(got, "vnuma_sched_idle_seconds_total") == pytest.approx(want["idle_ms"] / 1e3)
    cross = sum(v for labels, v in got["vnuma_sched_migrations_total"]
                if labels["src_node"] != labels["dst_node"])
    assert cross == want["cross_node_migrations"]
    assert total(got, "vnuma_sched_cross_node_migrations_total") == cross
    assert total(got, "vnuma_sched_cross_node_migrations_total", cause="wake") == \
        want["cross_node_migrations.wake"]
    for cause in ("wake", "newidle"):
        assert total(got, "vnuma_sched_migrations_total", cause=cause) == \
            want[f"migrations.{cause}"]
        assert total(got, "vnuma_sched_migrations_to_idle_total", cause=cause) == \
            want[f"migrations_to_idle.{cause}"]
    assert total(got, "vnuma_sched_cross_node_avoidable_migrations_total") == \
        want["cross_node_avoidable"]
    assert total(got, "vnuma_sched_wakeups_total") == want["wakeups"]
    assert total(got, "vnuma_sched_wakeups_busy_idle_llc_total") == \
        want["wakeups_busy_idle_llc"]
    assert total(got, "vnuma_sched_idle_rejected_preempted_total") == \
        want["idle_rejected_preempted"]
    assert total(got, "vnuma_sched_steal_seconds_total") == pytest.approx(
        want["steal_ms"] / 1e3)
    # the residency histogram: cumulative log2 buckets ending with every idle period
    buckets = got["vnuma_sched_idle_residency_seconds_bucket"]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == ({"le": "+Inf"}, sum(session.snapshot["halt"]["hist"]))


def test_cpu_series_carry_their_node(recorded):
    session, root = recorded
    got = parsed(exposition_text(session, root))
    for labels, _ in got["vnuma_sched_steal_seconds_total"]:
        assert int(labels["node"]) == session.topology.node_of(int(labels["cpu"]))
    steal = {labels["cpu"]: v for labels, v in got["vnuma_sched_steal_seconds_total"]}
    assert steal == {str(c): ms / 1e3 for c, ms in enumerate(session.snapshot["steal"]["ms"])}


def test_names_and_labels_follow_prometheus_conventions(recorded):
    session, root = recorded
    text = exposition_text(session, root)
    for fam in text_string_to_metric_families(text):
        exported = fam.name + ("_total" if fam.type == "counter" else "")
        assert exported in X.METRIC_NAMES, exported
        assert re.fullmatch(r"vnuma_sched_[a-z][a-z0-9_]*", exported)
        assert not re.search(r"_(ms|ns|us|milliseconds)(_|$)", exported)  # base units
        for s in fam.samples:
            assert set(s.labels) <= LABELS | {k for k in s.labels if k.startswith("gate_")}
    for name, fam in X.FAMILIES.items():
        assert name.endswith("_total") == (fam.kind == "counter"), name


def test_every_family_comes_from_a_probe_that_exists():
    assert {f.probe for f in X.FAMILIES.values()} - {None} <= set(PROBES)
    assert set(X.BUILDERS) == set(PROBES)


def series_count(nodes, cpus_per_node, per_cpu):
    ncpus = nodes * cpus_per_node
    snap = interval(nodes)["probes"]
    snap["ipi"]["per_cpu"] = [[1, 2, 3, 4]] * ncpus
    for key in ("count", "ns"):
        snap["halt"][key] = [[1] * 8] * ncpus
    snap["halt"]["pvspin"] = [[1, 1]] * ncpus
    snap["preempt"] = {"checked": [1] * ncpus, "rejected": [1] * ncpus}
    snap["steal"]["ms"] = [1] * ncpus
    reg = srv.CollectorRegistry()
    reg.register(_NoInfo(FakeSession(snap, topology(nodes, cpus_per_node)), per_cpu))
    return sum(len(f.samples) for f in reg.collect())


class _NoInfo(srv.SessionCollector):
    def __init__(self, session, per_cpu):
        super().__init__(session, None, per_cpu)

    def collect(self):
        yield from X.families(self.session.sample(), self.session.status, self.ctx)


def test_no_per_cpu_bounds_the_series_on_a_448_cpu_guest():
    big = series_count(8, 56, per_cpu=False)
    assert big == series_count(8, 2, per_cpu=False)         # independent of the CPU count
    assert series_count(8, 56, per_cpu=True) > 448 * 8 > big
    # what is left is mostly the node x node x cause matrices (3 x 8 x 8 x 6)
    assert big < 3 * 8 * 8 * 6 + 200


def test_a_probe_that_cannot_load_is_down_with_its_reason_and_the_rest_served(recorded):
    session, root = recorded
    session.status["preempt"] = Availability(False, "no kprobes (CONFIG_KPROBES unset)")
    del session.snapshot["preempt"]
    got = parsed(exposition_text(session, root))
    up = {labels["probe"]: (labels["reason"], v) for labels, v in got["vnuma_sched_probe_up"]}
    assert up["preempt"] == ("no kprobes (CONFIG_KPROBES unset)", 0)
    assert up["migrate"] == ("", 1)
    assert "vnuma_sched_idle_rejected_preempted_total" not in got
    assert total(got, "vnuma_sched_migrations_total") > 0


def test_info_names_kernel_gates_and_profile(tmp_path, fixture_root):
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "qemu-2node", root)
    param = root / "sys/module/kvm_guest/parameters/idle_halt_hint"
    param.parent.mkdir(parents=True)
    param.write_text("auto\n")
    journal = root / "run/vnuma_sched/journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"t": "header", "version": 2, "profile": "vnuma-guest-dedicated", '
                       '"kernel": "6.12.117", "created": "2026-11-27T00:00:00"}\n')
    session = FakeSession({}, topology(2, 2))
    [(labels, value)] = parsed(exposition_text(session, root))["vnuma_sched_info"]
    assert value == 1 and labels["kernel"] == "6.12.117"
    assert labels["gate_kvm_guest_idle_halt_hint"] == "auto"
    assert labels["gate_feature_NUMA_WAKE_PREV"] == X.GATE_ABSENT
    assert labels["profile"] == "vnuma-guest-dedicated"


# ---- the text file -------------------------------------------------------------

def test_textfile_is_replaced_whole_and_leaves_no_temporary(recorded, tmp_path):
    session, root = recorded
    reg = reg_of(session, root)
    target = srv.check_textfile_dir(tmp_path)
    target.write_text("old\n")
    seen = []
    real_replace = os.replace

    def replace(src, dst):      # at the rename, the new file is already complete
        seen.append((os.path.basename(src), open(src).read()))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(srv.os, "replace", replace)
        srv.write_textfile(target, reg)
    [(tmp_name, content)] = seen
    assert not tmp_name.endswith(".prom")          # node_exporter never reads it half-written
    assert content == target.read_text() and "vnuma_sched_probe_up" in content
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == [srv.TEXTFILE_NAME]


def test_textfile_keeps_the_old_file_when_reading_fails(tmp_path):
    class Broken(FakeSession):
        def sample(self, listings=True):
            raise RuntimeError("map read failed")

    target = tmp_path / srv.TEXTFILE_NAME
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        srv.write_textfile(target, reg_of(Broken({}, topology(1, 1)), tmp_path))
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == [srv.TEXTFILE_NAME]


def test_a_scrape_reads_the_counters_without_the_listings(recorded):
    """Listing maps (IPIs sent per CPU pair, HLT exits per vCPU) are not exported, so a
    scrape does not pay for reading them; the exposition is the same without them."""
    session, root = recorded
    with_listings = exposition_text(session, root)
    assert session.samples == 1 and session.listings is False
    session.snapshot = {probe: {k: v for k, v in data.items() if k not in ("sent", "hlt")}
                        for probe, data in session.snapshot.items()}
    assert exposition_text(session, root) == with_listings


def test_textfile_loop_writes_count_times_and_removes_the_file_when_stopped(recorded, tmp_path):
    session, root = recorded
    reg = reg_of(session, root)
    target = tmp_path / srv.TEXTFILE_NAME
    sleeps = []
    assert srv.textfile_loop(target, reg, 2.5, count=3, sleep=sleeps.append) == 3
    assert sleeps == [2.5, 2.5] and session.samples == 3 and target.exists()

    def interrupt(seconds):
        raise KeyboardInterrupt

    assert srv.textfile_loop(target, reg, 1, sleep=interrupt) == 1
    assert not target.exists()


def test_serve_textfile_command_on_a_recorded_tree(tmp_path, fixture_root):
    """The real command (the user-space steal probe needs no root) on a fixture tree."""
    root = tmp_path / "root"
    shutil.copytree(fixture_root / "qemu-2node", root)
    hz = os.sysconf("SC_CLK_TCK")
    lines = ["cpu  100 0 50 10000 5 0 1 70 0 0"] + [
        f"cpu{c} 25 0 12 2500 1 0 0 {10 * (c + 1)} 0 0" for c in range(4)]
    (root / "proc/stat").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    res = CliRunner().invoke(main, ["--root", str(root), "serve", "--textfile", str(out),
                                    "--count", "1", "--no-per-cpu", "steal"])
    assert res.exit_code == 0, res.output
    got = parsed((out / srv.TEXTFILE_NAME).read_text())
    steal = {labels["node"]: v for labels, v in got["vnuma_sched_steal_seconds_total"]}
    ticks = {"0": 10 + 20, "1": 30 + 40}     # the fixture's node0 = cpu0-1, node1 = cpu2-3
    assert steal == {n: pytest.approx(t * 1000 // hz / 1e3, abs=2e-3) for n, t in ticks.items()}
    assert got["vnuma_sched_probe_up"] == [({"probe": "steal", "reason": ""}, 1)]


# ---- HTTP ----------------------------------------------------------------------

@pytest.fixture
def http_server(recorded):
    session, root = recorded
    server = srv.bind("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_http,
                              args=(server, reg_of(session, root)))
    thread.start()
    yield server, session
    server.shutdown()
    thread.join()


def http(server, path, method="GET"):
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method),
                                    timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_http_serves_metrics_and_says_what_is_wrong(http_server):
    server, session = http_server
    code, body = http(server, "/metrics")
    assert code == 200 and "vnuma_sched_migrations_total" in body
    code, body = http(server, "/metric")
    assert code == 404 and "/metrics" in body
    assert http(server, "/metrics", "POST")[0] == 405
    with socket.create_connection(server.server_address, timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/one\r\n\r\n")
        answer = s.makefile("rb").read()
        assert b"400" in answer and b"Bad request version" in answer
    assert http(server, "/metrics")[0] == 200          # still serving


def test_a_closed_collector_reads_nothing(recorded):
    session, root = recorded
    collector = srv.SessionCollector(session, SysRoot(root))
    collector.close()
    assert list(collector.collect()) == [] and session.samples == 0


def test_http_read_failure_is_a_500_with_the_reason(http_server):
    server, session = http_server

    def broken(listings=True):
        raise RuntimeError("map read failed")

    session.sample = broken
    code, body = http(server, "/metrics")
    assert code == 500 and "map read failed" in body


# ---- --listen ------------------------------------------------------------------

@pytest.fixture
def no_probes(monkeypatch):
    """Fails the test if serve gets as far as loading a probe."""
    def refuse(*args, **kwargs):
        raise AssertionError("a probe session was started")

    monkeypatch.setattr(cli_serve, "_probe_session", refuse)


@pytest.mark.parametrize("listen, needle", [
    ("9478", "expected ADDR:PORT"), ("localhost", "expected ADDR:PORT"),
    ("127.0.0.1:", "expected ADDR:PORT"), ("[::1:9478", "expected ADDR:PORT"),
    ("127.0.0.1:0", "outside 1..65535"), (":65536", "outside 1..65535"),
    ("192.0.2.1:9478", "not an address of this machine"),
])
def test_bad_listen_is_one_line_exit_2_and_nothing_started(listen, needle, no_probes):
    res = CliRunner().invoke(main, ["serve", "--listen", listen, "steal"])
    one_line(res, 2, "--listen", needle)


def test_listen_name_that_does_not_resolve_is_exit_2(no_probes, monkeypatch):
    def unknown(*args, **kwargs):     # no DNS in tests: the resolver's answer, made up
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(srv.socket, "getaddrinfo", unknown)
    res = CliRunner().invoke(main, ["serve", "--listen", "metrics.example:9478", "steal"])
    one_line(res, 2, "metrics.example:9478", "cannot resolve")


def test_listen_address_in_use_is_exit_1_and_nothing_started(no_probes):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", "--listen", f"127.0.0.1:{port}", "steal"])
    one_line(res, 1, f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("args, needle", [
    ([], "exactly one of"), (["--listen", ":9478", "--textfile", "/tmp"], "exactly one of"),
    (["--listen", ":9478", "--count", "2"], "--count goes with --textfile"),
    (["--listen", ":9478", "migrat"], "did you mean 'migrate'"),
    (["--textfile", "/nonexistent/dir"], "not an existing directory"),
])
def test_bad_serve_options_are_one_line_exit_2(args, needle, no_probes):
    res = CliRunner().invoke(main, ["serve", *args])
    one_line(res, 2, needle)


def test_schedstat_counters_are_served_by_scope(fixture_root):
    snap = {"schedstat": {"cross_node": [12, 185, 0], "in_node": [40, 7, 0]}}
    samples = parsed(exposition_text(FakeSession(snap, topology(2, 2)),
                                     fixture_root / "qemu-2node"))
    assert total(samples, "vnuma_sched_wake_affine_moves_total", scope="cross_node") == 185
    assert total(samples, "vnuma_sched_wake_affine_moves_total", scope="in_node") == 7
    assert total(samples, "vnuma_sched_wake_remote_total", scope="cross_node") == 12
