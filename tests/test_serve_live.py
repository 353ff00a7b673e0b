"""bpf tier: `vnuma-sched serve` scraped by Debian's real Prometheus on the loopback,
compared with `record` of the same run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import VNUMA

from vnuma_sched.probes import recording

pytestmark = pytest.mark.bpf

WORKLOAD = [sys.executable, str(Path(__file__).parent / "workloads" / "sleepwake.py")]
PROBES = ["ipi", "migrate", "preempt"]
STARTUP_S = 300                            # bcc compiles on a shared 2-core machine


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def wait_until(what, check, proc, log, timeout=STARTUP_S):
    """check() until it returns something true; fails when ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: exited {proc.returncode}: {Path(log).read_text()[-2000:]}")
        try:
            got = check()
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            got = None
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"{what}: not ready in {timeout} s: {Path(log).read_text()[-2000:]}")


def start(argv, log):
    """A process in its own process group, output to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc):
    """SIGTERM to the process group, SIGKILL when it does not go; its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@pytest.fixture(scope="module")
def serve(tracefs, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start([VNUMA, "serve", "--listen", f"127.0.0.1:{port}", *PROBES], log)
    try:
        wait_until("serve", lambda: get(f"http://127.0.0.1:{port}/metrics")[0] == 200,
                   proc, log)
        yield port, proc, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(serve, tmp_path_factory):
    """Prometheus scraping serve every second, and a loopback port nothing listens on."""
    tmp = tmp_path_factory.mktemp("prometheus")
    port, dead = free_port(), free_port()
    (tmp / "prometheus.yml").write_text(f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: vnuma_sched
    static_configs: [{{targets: ["127.0.0.1:{serve[0]}"]}}]
  - job_name: unreachable
    static_configs: [{{targets: ["127.0.0.1:{dead}"]}}]
""")
    log = tmp / "prometheus.log"
    proc = start(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp / 'data'}", "--log.level=warn",
                  f"--web.listen-address=127.0.0.1:{port}"], log)
    try:
        api = f"http://127.0.0.1:{port}"
        wait_until("prometheus", lambda: get(f"{api}/-/ready")[0] == 200, proc, log)
        yield api, dead, proc, log
    finally:
        stop(proc)


def query(api, expr, at=None):
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    _, body = get(f"{api}/api/v1/query?{urllib.parse.urlencode(params)}")
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def summed_samples(api, expr, at):
    """{timestamp: sum over the series of ``expr``} of every raw sample up to ``at``."""
    out = {}
    for series in query(api, f"{expr}[15m]", at):
        for ts, value in series["values"]:
            out[ts] = out.get(ts, 0) + float(value)
    return dict(sorted(out.items()))


def record_counts(path, pick):
    """(start, end, per interval (t0, t1, count)) of a recording; ``pick`` sums a probe
    interval's data into one count."""
    _, intervals, _, _ = recording.read(path)
    rows = [(r["t"] - r["dt"], r["t"], pick(r["probes"])) for r in intervals]
    return rows[0][0], rows[-1][1], rows


def in_window(rows, t0, t1):
    """The recorded count between t0 and t1, an interval cut by the window pro rata, and
    how far off the cut can be: the counts of the intervals the edges fall in (the
    counts inside an interval are not spread evenly over it)."""
    total, edges = 0.0, 0
    for a, b, n in rows:
        overlap = min(b, t1) - max(a, t0)
        if overlap > 0 and b > a:
            total += n * overlap / (b - a)
            if overlap < b - a:
                edges += n
    return total, edges


def ipi_probe_total(probes):
    """Every count of the ipi probe: IPIs by type and wake-ups without one."""
    return sum(map(sum, probes["ipi"]["per_cpu"]))


def wakeups(probes):
    return probes["migrate"]["wake_place"][0]


# The same counts as Prometheus series (a selector over both families of the ipi probe).
IPI_PROBE_SERIES = ('{__name__=~"vnuma_sched_ipis_received_total|'
                    'vnuma_sched_wakeups_without_ipi_total"}')


def served_and_recorded(api, expr, rows, start_t, end_t):
    """The growth of ``expr`` (summed) between the first and the last scrape inside the
    recording, and what the recording counted between those two scrapes."""
    samples = summed_samples(api, expr, time.time())
    inside = [(ts, v) for ts, v in samples.items() if start_t <= ts <= end_t]
    assert len(inside) >= 3, (start_t, end_t, list(samples))
    values = [v for _, v in inside]
    assert values == sorted(values) and values[-1] > values[0]        # they grow
    (t0, v0), (t1, v1) = inside[0], inside[-1]
    return (v1 - v0, *in_window(rows, t0, t1))


def test_prometheus_series_grow_and_agree_with_record(prometheus, tmp_path):
    """serve and record count the same run with their own copies of the probes; the
    growth Prometheus saw between two scrapes is compared with what record counted
    between the same two instants (its 0.1 s intervals cut pro rata at the edges)."""
    api, _, prom, prom_log = prometheus
    wait_until("first scrape", lambda: query(api, "vnuma_sched_wakeups_total"),
               prom, prom_log)
    rec = tmp_path / "rec.jsonl"
    res = subprocess.run([VNUMA, "record", "-o", str(rec), "--interval", "0.1", "ipi",
                          "migrate", "--", *WORKLOAD, "2", "50000"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    for expr, pick, least in ((IPI_PROBE_SERIES, ipi_probe_total, 300),
                              ("vnuma_sched_wakeups_total", wakeups, 10000)):
        start_t, end_t, rows = record_counts(rec, pick)
        wait_until("a scrape after the run", lambda: any(
            ts > end_t for ts in summed_samples(api, expr, time.time())), prom, prom_log)
        served, recorded, edges = served_and_recorded(api, expr, rows, start_t, end_t)
        assert recorded >= least, f"{expr}: too few counts in the run to compare"
        assert abs(served - recorded) <= 0.05 * recorded + edges, (expr, served, recorded,
                                                                  edges)


def test_every_cpu_has_its_series_with_its_node(prometheus):
    api = prometheus[0]
    topo = json.loads(subprocess.run([VNUMA, "topology", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    want = {(str(c), str(n["id"])) for n in topo["nodes"] for c in n["cpus"]}
    for type_ in ("resched", "call_single", "call_func"):
        got = {(s["metric"]["cpu"], s["metric"]["node"]) for s in query(
            api, f'vnuma_sched_ipis_received_total{{type="{type_}"}}')}
        assert got == want


def test_probe_up_says_what_vnuma_sched_probes_says(prometheus):
    api = prometheus[0]
    rows = {r["probe"]: r for r in json.loads(subprocess.run(
        [VNUMA, "probes", "--json"], capture_output=True, text=True, check=True).stdout)
        ["probes"]}
    up = {s["metric"]["probe"]: (s["metric"].get("reason", ""), s["value"][1])
          for s in query(api, "vnuma_sched_probe_up")}
    assert set(up) == set(PROBES)
    for name in PROBES:
        available = rows[name]["available"]
        assert up[name] == ("" if available else rows[name]["reason"], str(int(available)))
    # a probe that cannot load leaves the others served
    assert query(api, "vnuma_sched_migrations_total") and up["ipi"][1] == "1"


def test_unreachable_target_is_down_with_the_reason(prometheus):
    api, dead, prom, prom_log = prometheus

    def targets():
        doc = json.loads(get(f"{api}/api/v1/targets")[1])["data"]["activeTargets"]
        by_port = {t["scrapeUrl"].split(":")[2].split("/")[0]: t for t in doc}
        ours = by_port[str(dead)]
        return by_port if ours["health"] != "unknown" else None

    by_port = wait_until("a scrape of the unreachable port", targets, prom, prom_log)
    assert by_port[str(dead)]["health"] == "down"
    assert "connection refused" in by_port[str(dead)]["lastError"]
    assert [t["health"] for p, t in by_port.items() if p != str(dead)] == ["up"]


def test_serve_stops_cleanly_on_sigterm(serve, prometheus):
    """Last: SIGTERM detaches the probes and exits 0 (Prometheus then sees it down)."""
    port, proc, log = serve
    assert stop(proc) == 0, Path(log).read_text()[-2000:]
