"""bpf tier: bcc compiles and loads programs on the live kernel."""

import json

import pytest
from click.testing import CliRunner

from vnuma_sched.cli.main import main
from vnuma_sched.probes.loader import compile_check

pytestmark = pytest.mark.bpf


def test_bcc_compiles_and_loads():
    status, detail = compile_check()
    assert status == "ok", detail
    assert "compiled and loaded" in detail


def test_doctor_reports_bcc_ok():
    res = CliRunner().invoke(main, ["--json", "doctor"])
    assert res.exit_code == 0
    bcc = [c for c in json.loads(res.output)["checks"] if c["name"] == "bcc"][0]
    # the tier runs as root (conftest): doctor must have really compiled and loaded
    assert bcc["status"] == "ok" and "compiled and loaded" in bcc["detail"], bcc
