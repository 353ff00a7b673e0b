"""virtme-ng command lines, topology specs and result classification (no QEMU)."""

import json
import time

import pytest

from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.kernel import vm
from vnuma_sched.runner import Runner
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology


def test_grid_2x2():
    t = vm.parse_topology("2x2", 2048)
    assert [n.cpus for n in t.nodes] == [(0, 1), (2, 3)]
    assert [n.mem_mb for n in t.nodes] == [1024, 1024]
    assert t.distances == ((10, 21), (21, 10))


def test_vng_argv_is_a_list_with_numa(tmp_path):
    t = vm.parse_topology("2x2", 2048)
    argv = vm.vng_argv("/k/bzImage", t, tmp_path, "tcg", append=["quiet"], vng="vng")
    assert argv[:3] == ["vng", "--run", "/k/bzImage"]
    assert "--disable-kvm" in argv
    i = argv.index("--numa")
    assert argv[i:i + 4] == ["--numa", "1024M,cpus=0-1", "--numa", "1024M,cpus=2-3"]
    assert argv[argv.index("--numa-distance") + 1] == "0,1=21"
    assert argv[argv.index("--cpus") + 1] == "4" and argv[argv.index("--memory") + 1] == "2048M"
    assert argv[-3:] == ["--", "/bin/sh", str(tmp_path / "run.sh")]


def test_kvm_accel_has_no_disable_flag(tmp_path):
    argv = vm.vng_argv("/k", vm.parse_topology("1x1", 512), tmp_path, "kvm")
    assert "--disable-kvm" not in argv


def test_host_topology_mirrors_distances(fixture_root):
    host = read_topology(SysRoot(fixture_root / "tr-2990wx"))
    t = vm.parse_topology("host", 4096, host)
    assert len(t.nodes) == 4 and t.ncpus == 64 and t.distances[0] == (10, 16, 16, 16)


def test_topology_json_file(tmp_path):
    doc = {"nodes": [{"id": 0, "cpus": [0, 1, 2], "distances": [10, 30]},
                     {"id": 1, "cpus": [3], "distances": [30, 10]}]}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    t = vm.parse_topology(str(p), 2048)
    assert [n.cpus for n in t.nodes] == [(0, 1, 2), (3,)] and t.distances[0][1] == 30


@pytest.mark.parametrize("spec,mem,needle", [
    ("2y2", 2048, "expected NxM"),
    ("0x2", 2048, "at least 1x1"),
    ("3x1", 2048, "does not split evenly"),
])
def test_bad_specs(spec, mem, needle):
    with pytest.raises(BadInput, match=needle):
        vm.parse_topology(spec, mem)


@pytest.mark.parametrize("nodes,needle", [
    ([{"cpus": [0, 1], "distances": [10, 21]}, {"cpus": [1, 2], "distances": [21, 10]}],
     "overlap"),
    ([{"cpus": [0], "distances": [10, 21]}, {"cpus": [5], "distances": [21, 10]}],
     "without gaps"),
    ([{"cpus": [0], "distances": [10]}, {"cpus": [1], "distances": [21, 10]}], "not 2x2"),
])
def test_bad_json_topologies(tmp_path, nodes, needle):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"nodes": nodes}))
    with pytest.raises(BadInput, match=needle):
        vm.parse_topology(str(p), 2048)


def test_bad_mem():
    with pytest.raises(BadInput, match="--mem"):
        vm.parse_size_mb("2 gigs")
    assert vm.parse_size_mb("1536M") == 1536 and vm.parse_size_mb("2g") == 2048


def test_guest_script_quotes_arguments(tmp_path):
    s = vm.guest_script(["echo", "a b", "$(reboot)"], tmp_path)
    assert "echo 'a b' '$(reboot)'" in s and f"{tmp_path}/rc" in s


def test_classify(tmp_path):
    (tmp_path / "rc").write_text("7\n")
    (tmp_path / "stdout").write_text("hello\n")
    r = vm.classify(tmp_path, "boot...\n", False, "tcg", 3.0)
    assert (r.status, r.exit_code, r.stdout) == ("exited", 7, "hello\n")
    (tmp_path / "rc").unlink()
    r = vm.classify(tmp_path, "x\nKernel panic - not syncing: VFS: Unable to mount root\n",
                    False, "tcg", 3.0)
    assert r.status == "panic" and "Unable to mount root" in r.panic and r.exit_code == 255
    r = vm.classify(tmp_path, "Booting from ROM..\n", True, "tcg", 30.0)
    assert r.status == "timeout" and r.exit_code == 124
    assert vm.classify(tmp_path, "a\n", False, "tcg", 1.0).status == "boot-failed"


def test_runner_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pidfile}; sleep 300"
    t0 = time.monotonic()
    res = Runner().run(["sh", "-c", script], check=False, timeout=1)
    assert res.timed_out and time.monotonic() - t0 < 30
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(child)


def alive(pid):
    """True unless the process is gone or a zombie (killed, not yet reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_runner_missing_tool():
    with pytest.raises(Missing, match="no-such-tool-xyz: command not found"):
        Runner().run(["no-such-tool-xyz"])


def test_runner_dry_run_prints_and_runs_nothing(tmp_path):
    out = []
    Runner(dry_run=True, echo=out.append).run(["touch", str(tmp_path / "x")])
    assert out == [f"would run: touch {tmp_path / 'x'}"] and not (tmp_path / "x").exists()


def test_kernel_image_from_file_or_build_dir(tmp_path):
    image = tmp_path / "arch/x86/boot/bzImage"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    assert vm.kernel_image(tmp_path) == image and vm.kernel_image(image) == image
    with pytest.raises(BadInput, match="no kernel image there"):
        vm.kernel_image(tmp_path / "nope")
