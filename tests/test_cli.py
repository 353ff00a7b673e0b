import json
import re
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from helpers import VNUMA, golden

from vnuma_sched.cli.main import main
from vnuma_sched.system.checks import STATUSES


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("name", ["qemu-2node", "xeon-8160-2s", "tr-2990wx", "kvm-guest-1node"])
def test_topology_json_matches_sysfs(fixture_root, name):
    res = invoke("--root", str(fixture_root / name), "topology", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.output)
    node_dir = fixture_root / name / "sys/devices/system/node"
    assert [n["id"] for n in doc["nodes"]] == sorted(
        int(p.name[4:]) for p in node_dir.glob("node*"))
    for n in doc["nodes"]:
        d = node_dir / f"node{n['id']}"
        assert " ".join(map(str, n["distances"])) == (d / "distance").read_text().strip()
        assert re.search(rf"MemTotal:\s+{n['mem_kb']} kB", (d / "meminfo").read_text())


def test_topology_text_golden(fixture_root):
    res = invoke("--root", str(fixture_root / "tr-2990wx"), "topology")
    assert res.exit_code == 0
    golden("topology-tr-2990wx.txt", res.output)


def test_doctor_text_golden(fixture_root):
    res = invoke("--root", str(fixture_root / "qemu-2node"), "doctor")
    assert res.exit_code == 0
    golden("doctor-qemu-2node.txt", res.output)


def test_root_from_environment(fixture_root):
    res = invoke("--json", "topology", env={"VNUMA_SCHED_ROOT": str(fixture_root / "qemu-2node")})
    assert len(json.loads(res.output)["nodes"]) == 2


def test_doctor_json_shape(fixture_root):
    res = invoke("--root", str(fixture_root / "kvm-guest-1node"), "--json", "doctor")
    doc = json.loads(res.output)
    assert {"name", "status", "detail"} == set(doc["checks"][0])
    assert all(c["status"] in STATUSES for c in doc["checks"])
    assert [v["problem"][0] for v in doc["verdict"]] == ["1", "2"]
    names = [c["name"] for c in doc["checks"]]
    assert names[names.index("vnuma"):][:4] == ["vnuma", "vnuma:pinned", "vnuma:memory",
                                                "vnuma:full"]


def test_doctor_steal_interval_is_checked(fixture_root):
    res = invoke("--root", str(fixture_root / "kvm-guest-1node"), "doctor",
                 "--steal-interval", "-1")
    assert res.exit_code == 2 and "--steal-interval" in res.output


def test_unknown_root_is_one_line_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["--root", str(tmp_path / "nope"), "topology"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "nope" in res.output


def test_malformed_file_is_one_line_exit_3(tmp_path, fixture_root):
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "qemu-2node", root)
    (root / "sys/devices/system/node/node1/cpulist").write_text("2-\n")
    res = CliRunner().invoke(main, ["--root", str(root), "topology"])
    assert res.exit_code == 3
    assert res.output.strip() == ("vnuma-sched: error: /sys/devices/system/node/node1/cpulist: "
                                  "malformed cpulist: bad cpulist element '2-'")
    assert "Traceback" not in res.output


def test_verbose_shows_traceback(tmp_path, fixture_root):
    root = tmp_path / "r"
    shutil.copytree(fixture_root / "qemu-2node", root)
    (root / "sys/devices/system/node/node1/cpulist").write_text("2-\n")
    res = subprocess.run([sys.executable, "-m", "vnuma_sched", "-v", "--root", str(root),
                          "topology"], capture_output=True, text=True)
    assert res.returncode == 3 and "Traceback" in res.stderr


def test_help_works_without_bcc():
    code = ("import sys; sys.modules['bcc'] = None; from vnuma_sched.cli.main import main; "
            "main(['doctor', '--help'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "Example" in res.stdout


def test_doctor_without_bcc_reports_it(fixture_root):
    code = ("import sys; sys.modules['bcc'] = None; "
            "from vnuma_sched.probes.loader import compile_check; print(compile_check())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "missing" in res.stdout and "python3-bpfcc" in res.stdout


def test_entry_point_installed():
    res = subprocess.run([VNUMA, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "vnuma-sched" in res.stdout


def test_ab_help_shows_named_arms_and_boots():
    res = invoke("ab", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for needle in ("--arm ref=vnuma_debug.emulate_halt_preempted=0,",
                   "--arm off=vnuma_debug.emulate_halt_preempted=1,kvm_guest.idle_halt_hint=off",
                   "kvm_guest.idle_halt_hint=on \\ --runs 6 --boots 3",
                   "--runs 10 --boots 5",
                   "--a SPEC", "Shorthand for --arm a=SPEC", "--boots INTEGER"):
        assert needle in text, needle


def test_every_command_is_found_by_its_name():
    from vnuma_sched.cli.main import COMMANDS  # noqa: PLC0415 - beside main
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
        assert invoke(name, "--help").exit_code == 0


def test_a_command_imports_only_its_own_modules():
    code = ("import sys; from vnuma_sched.cli.main import main\n"
            "try:\n    main(['share', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('vnuma_sched'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(res.stdout.split())
    assert "vnuma_sched.cli.share" in loaded, res.stderr
    assert not loaded & {"vnuma_sched.cli.bisect", "vnuma_sched.cli.probes",
                         "vnuma_sched.cli.kernel", "vnuma_sched.probes.loader",
                         "vnuma_sched.experiments.ab"}
