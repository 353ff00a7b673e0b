"""The Grafana dashboard, the Prometheus alert rules and the systemd unit shipped for
`serve`: they name only metrics serve exports, and the rules fire on the two problems."""

import json
import re
import shlex
import shutil
import subprocess

import pytest

from vnuma_sched import resources
from vnuma_sched.cli.serve import check_args
from vnuma_sched.probes.exposition import FAMILIES, METRIC_NAMES

CONTRIB = resources.contrib_dir()
DASHBOARD = CONTRIB / "grafana" / "vnuma_sched.json"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
UNIT = CONTRIB / "systemd" / "vnuma-sched-serve.service"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported(name):
    """The family a sample name belongs to (histogram series carry a suffix)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[:-len(suffix)]
        if name.endswith(suffix) and FAMILIES.get(base, None) and \
                FAMILIES[base].kind == "histogram":
            return base
    return name


def metric_names(text):
    return {exported(m) for m in re.findall(r"\bvnuma_sched_[a-z0-9_]+", text)}


def dashboard_exprs():
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return doc, exprs


def test_dashboard_names_only_exported_metrics():
    doc, exprs = dashboard_exprs()
    used = set().union(*map(metric_names, exprs))
    assert used and used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    # what the dashboard is for: the matrix, the two problems, steal, IPIs, the info
    assert {"vnuma_sched_migrations_total", "vnuma_sched_cross_node_avoidable_migrations_total",
            "vnuma_sched_idle_rejected_preempted_total", "vnuma_sched_steal_seconds_total",
            "vnuma_sched_ipis_received_total", "vnuma_sched_info"} <= used
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_groups_only_by_labels_the_metrics_have():
    _, exprs = dashboard_exprs()
    for expr in exprs:
        for group in re.findall(r"by \(([^)]*)\)", expr):
            names = metric_names(expr)
            have = set().union(*(FAMILIES[n].labels for n in names)) | {"instance", "job"}
            assert {g.strip() for g in group.split(",")} <= have, expr


def test_alert_rules_name_only_exported_metrics():
    used = metric_names(ALERTS.read_text())
    assert used and used <= set(METRIC_NAMES), used - set(METRIC_NAMES)


def promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return tool


def test_promtool_accepts_the_alert_rules():
    res = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# Two guests over 30 minutes, one sample a minute: "sick" shows both problems (half of
# the idle CPUs asked about rejected as preempted, 10 avoidable cross-node moves/s out
# of 15), "healthy" the same load without them.
SERIES = {
    'vnuma_sched_idle_checked_total{instance="%s",cpu="0",node="0"}': ("0+6000x30",) * 2,
    'vnuma_sched_idle_rejected_preempted_total{instance="%s",cpu="0",node="0"}':
        ("0+3000x30", "0+0x30"),
    'vnuma_sched_cross_node_migrations_total{instance="%s",cause="newidle"}':
        ("0+900x30",) * 2,
    'vnuma_sched_cross_node_avoidable_migrations_total'
    '{instance="%s",cause="newidle",src_node="0",dst_node="1"}': ("0+600x30", "0+6x30"),
}


def rule_test(tmp_path, alert, labels):
    """A promtool rules test: ``alert`` fires for the sick guest only, after its `for`."""
    rules = tmp_path / "rules.yml"
    # the expressions and thresholds under test; the annotation texts are not
    text = re.sub(r"\n        annotations:\n(?:          .*\n|            .*\n)*", "\n",
                  ALERTS.read_text())
    rules.write_text(text)
    series = [{"series": s % guest, "values": values[i]}
              for s, values in SERIES.items() for i, guest in enumerate(("sick", "healthy"))]
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "8m", "alertname": alert, "exp_alerts": []},
            {"eval_time": "25m", "alertname": alert,
             "exp_alerts": [{"exp_labels": {"instance": "sick", **labels}}]}]}]}
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(test))     # JSON is YAML
    return path


@pytest.mark.parametrize("alert, problem", [
    ("VnumaIdleCpusRejectedAsPreempted", "halted-idle-looks-preempted"),
    ("VnumaAvoidableCrossNodeMigrations", "avoidable-cross-node-migrations")])
def test_the_rules_fire_on_each_problem_and_not_on_a_healthy_guest(tmp_path, alert, problem):
    path = rule_test(tmp_path, alert, {"severity": "warning", "problem": problem})
    res = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_systemd_unit_runs_serve_with_options_it_accepts():
    lines = UNIT.read_text().splitlines()
    [exec_start] = [ln.split("=", 1)[1] for ln in lines if ln.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/vnuma-sched") and argv[1] == "serve"
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert check_args(opts.get("--listen"), opts.get("--textfile"), None, []) is not None
    assert "KillSignal=SIGTERM" in lines and "[Install]" in lines
