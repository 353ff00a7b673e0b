"""virtme-ng command lines, topology specs and result classification (no QEMU)."""

import json
import re
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from vnuma_sched import resources
from vnuma_sched import runner as runner_module
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.kernel import layout, vm
from vnuma_sched.runner import Runner, path_with
from vnuma_sched.system.sysroot import SysRoot

FRAGMENT_LIMITS = vm.guest_limits([resources.guest_fragment()])
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


# --- topology input: one-line exit 2 for what QEMU or the guest would not take --------

def write_json(tmp_path, doc, name="t.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def two_nodes(cpus0=(0, 1), cpus1=(2, 3), d01=21, d10=21, local=10):
    return {"nodes": [{"cpus": list(cpus0), "distances": [local, d01]},
                      {"cpus": list(cpus1), "distances": [d10, local]}]}


@pytest.mark.parametrize("doc,needle", [
    ({"nodes": []}, "non-empty list"),
    ({"nodes": {}}, "non-empty list"),
    ([], "non-empty list"),
    ({"nodes": [1, 2]}, "non-empty list"),
    (two_nodes(cpus0=(0, 0, 1), cpus1=(2,)), "node 0 lists CPU 0 more than once"),
    (two_nodes(cpus0=(0, 1), cpus1=(1, 2)), "overlap"),
    (two_nodes(d01=-21, d10=-21), "distance -21 from node 0 to node 1 is outside 11..254"),
    (two_nodes(d01=10, d10=10), "outside 11..254"),
    (two_nodes(d01=300, d10=300), "outside 11..254"),
    (two_nodes(local=0), "to itself is 0, must be 10"),
    (two_nodes(d01=21, d10=31), "differ (21 and 31)"),
    (two_nodes(cpus0=(0, 2), cpus1=(1, 3)), "not one contiguous range"),
    (two_nodes(cpus0=("0", 1)), "nodes[0].cpus must be a list of integers"),
    (two_nodes(cpus0=(0.5, 1)), "must be a list of integers"),
    (two_nodes(cpus0=(True, 1)), "must be a list of integers"),
    ({"nodes": [{"cpus": [0]}]}, "nodes[0].distances must be a list of integers"),
    ({"nodes": [{"cpus": [], "distances": [10]}]}, "no CPUs"),
    ({"nodes": [{"cpus": list(range(300)), "distances": [10]}]}, "300 vCPUs"),
])
def test_bad_topology_json_is_one_line_bad_input(tmp_path, doc, needle):
    p = write_json(tmp_path, doc)
    with pytest.raises(BadInput) as err:
        vm.parse_topology(str(p), 2048)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_binary_topology_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BadInput, match="not a topology JSON document"):
        vm.parse_topology(str(p), 2048)


def test_cpuless_node_boots_as_memory_only(tmp_path):
    doc = {"nodes": [{"cpus": [0, 1], "distances": [10, 21]},
                     {"cpus": [], "distances": [21, 10]}]}
    t = vm.parse_topology(str(write_json(tmp_path, doc)), 2048)
    argv = vm.vng_argv("/k", t, tmp_path, "kvm")
    i = argv.index("--numa")
    assert argv[i:i + 4] == ["--numa", "1024M,cpus=0-1", "--numa", "1024M"]


def fake_build(tmp_path, nr_cpus=64, extra=""):
    """A build directory: arch/x86/boot/bzImage and the .config it was built with."""
    image = tmp_path / "build" / "arch/x86/boot/bzImage"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"MZ fake")
    (tmp_path / "build" / ".config").write_text(f"CONFIG_SMP=y\nCONFIG_NR_CPUS={nr_cpus}\n"
                                                + extra)
    return tmp_path / "build"


@pytest.mark.parametrize("spec,needle", [
    ("64x64", "4096 vCPUs, more than the guest kernel (CONFIG_NR_CPUS=64"),
    ("999x999", "999 nodes, more than QEMU (MAX_NODES) supports (128)"),
    ("2x33", "66 vCPUs, more than the guest kernel (CONFIG_NR_CPUS=64"),
    ("99999999x99999999", "expected NxM"),
    ("２x２", "expected NxM"),
    ("0x0", "at least 1x1"),
])
def test_vm_run_refuses_what_qemu_or_the_guest_cannot_take(tmp_path, monkeypatch, spec,
                                                           needle):
    build = fake_build(tmp_path)
    started = []
    monkeypatch.setattr(runner_module.subprocess, "Popen",
                        lambda argv, *a, **k: started.append(argv) or 1 / 0)
    res = CliRunner().invoke(main, ["vm", "run", "--kernel", str(build), "--accel", "tcg",
                                    "--topology", spec, "--", "true"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert started == []
    if "CONFIG_NR_CPUS" in needle:
        assert str(build / ".config") in res.output


def test_guest_limits_come_from_the_image_config(tmp_path):
    build = fake_build(tmp_path, nr_cpus=8, extra="CONFIG_NODES_SHIFT=1\n")
    image = vm.kernel_image(build)
    assert vm.image_config(image) == build / ".config"
    limits = vm.guest_limits([vm.image_config(image)])
    assert (limits.max_cpus, limits.max_nodes) == (8, 2)
    assert vm.parse_topology("2x4", 2048, limits=limits).ncpus == 8
    with pytest.raises(BadInput, match="3 nodes, more than the guest kernel "
                                       r"\(CONFIG_NODES_SHIFT=1"):
        vm.parse_topology("3x1", 3072, limits=limits)
    kept = tmp_path / "kept"           # a bisect step's kept build: bzImage beside .config
    kept.mkdir()
    (kept / "bzImage").write_bytes(b"x")
    (kept / ".config").write_text("CONFIG_NR_CPUS=4\n")
    assert vm.guest_limits([vm.image_config(kept / "bzImage")]).max_cpus == 4
    (tmp_path / "lone").write_bytes(b"x")    # no .config anywhere: only QEMU's limits
    assert vm.image_config(tmp_path / "lone") is None
    assert vm.guest_limits([None]).max_cpus == vm.QEMU_MAX_VCPUS
    assert vm.guest_limits().max_cpus == vm.QEMU_MAX_VCPUS
    assert vm.guest_limits([resources.guest_fragment()]).max_cpus == 64


def test_qemu_limit_without_a_kernel_limit():
    with pytest.raises(BadInput, match="256 vCPUs, more than QEMU's q35"):
        vm.parse_topology("16x16", 4096, limits=vm.guest_limits([]))
    assert vm.parse_topology("5x51", 5120, limits=vm.guest_limits([])).ncpus == 255


# --- hypothesis: exit 2 with a message, or a topology that round-trips --------------

def _roundtrip(topo, mem):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "t.json"
        p.write_text(json.dumps(topo.to_dict()))
        assert vm.parse_topology(str(p), mem) == topo


def _bad_input(err):
    msg = str(err)
    assert err.exit_code == 2 and msg and "\n" not in msg and msg.startswith(("--topology",
                                                                              "--mem"))


MEMS = st.sampled_from([512, 1000, 2048, 3072, 4096])


@given(st.one_of(st.from_regex(r"[0-9]{1,3}x[0-9]{1,3}", fullmatch=True),
                 st.text(alphabet="0123456789x-+ ,.٣", max_size=10)), MEMS)
def test_topology_spec_is_bad_input_or_round_trips(spec, mem):
    try:
        topo = vm.parse_topology(spec, mem, limits=FRAGMENT_LIMITS)
    except BadInput as err:
        _bad_input(err)
        return
    n, m = (int(x) for x in spec.split("x"))
    assert len(topo.nodes) == n and topo.ncpus == n * m <= 64 and topo.mem_mb == mem
    _roundtrip(topo, mem)


_INT = st.one_of(st.integers(-3, 40), st.integers(-2**70, 2**70), st.booleans(),
                 st.floats(allow_nan=False), st.text(max_size=2), st.none())
_NODE = st.fixed_dictionaries({"cpus": st.one_of(st.lists(st.integers(-1, 9), max_size=5),
                                                 st.lists(_INT, max_size=3), _INT),
                               "distances": st.one_of(
                                   st.lists(st.sampled_from([10, 21, 21, 31, 0, -1, 255]),
                                            max_size=4), _INT)})


@given(st.one_of(st.fixed_dictionaries({"nodes": st.lists(_NODE, max_size=4)}),
                 st.fixed_dictionaries({"nodes": _INT}), _INT, st.lists(_NODE, max_size=2)),
       MEMS)
def test_topology_json_is_bad_input_or_round_trips(doc, mem):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "t.json"
        p.write_text(json.dumps(doc))
        try:
            topo = vm.parse_topology(str(p), mem)
        except BadInput as err:
            _bad_input(err)
            return
    cpus = [c for n in topo.nodes for c in n.cpus]
    assert sorted(cpus) == list(range(len(cpus))) and 1 <= len(cpus) <= 64
    assert all(d[i] == 10 for i, d in enumerate(topo.distances))
    _roundtrip(topo, mem)


# --- tools beside the interpreter, shell-safe arguments for virtme-ng ----------------

def fake_tool(directory, name="vng"):
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return tool


def test_vng_is_found_beside_the_interpreter_without_path(tmp_path):
    venv_vng = fake_tool(tmp_path / "venv" / "bin")
    path_vng = fake_tool(tmp_path / "usr" / "bin")
    exe = str(tmp_path / "venv" / "bin" / "python")
    assert vm.find_vng({"PATH": "/usr/bin:/bin"}, exe) == str(venv_vng)
    assert vm.find_vng({"PATH": str(path_vng.parent)}, exe) == str(venv_vng)
    assert vm.find_vng({"PATH": str(path_vng.parent)}, str(tmp_path / "py")) == str(path_vng)
    with pytest.raises(Missing, match="vng"):
        vm.find_vng({"PATH": str(tmp_path / "nowhere")}, str(tmp_path / "py"))
    assert path_with(str(venv_vng), {"PATH": "/usr/bin:/bin"}) == {
        "PATH": f"{venv_vng.parent}:/usr/bin:/bin"}


def test_append_values_stay_values(tmp_path):
    argv = vm.vng_argv("/k", vm.parse_topology("1x1", 512), tmp_path, "kvm",
                       append=["-x", "quiet"])
    assert "--append=-x" in argv and "--append=quiet" in argv and "-x" not in argv


def test_image_path_with_shell_characters_goes_through_a_link(tmp_path):
    image = tmp_path / "my kernel; touch pwned" / "bzImage"
    image.parent.mkdir()
    image.write_bytes(b"x")
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    safe = vm._safe_image(image, io_dir)
    assert vm.shell_safe(safe) and safe.resolve() == image
    plain = tmp_path / "bzImage"
    assert vm._safe_image(plain, io_dir) == plain


def test_agent_socket_adds_a_named_virtio_serial_port(tmp_path):
    argv = vm.vng_argv("/k", vm.parse_topology("1x1", 512), tmp_path, "tcg",
                       agent_socket=tmp_path / "qga.sock")
    opts = [a.split("=", 1)[1] for a in argv if a.startswith("--qemu-opts=")]
    assert "-device virtio-serial-pci,id=vnuma-vser" in opts
    assert f"-chardev socket,path={tmp_path}/qga.sock,server=on,wait=off,id=vnuma-qga" in opts
    assert ("-device virtserialport,bus=vnuma-vser.0,chardev=vnuma-qga,"
            "name=org.qemu.guest_agent.0") in opts


def test_guest_script_starts_the_agent_on_its_port_first(tmp_path):
    s = vm.guest_script(["sleep", "1"], tmp_path, "/usr/sbin/qemu-ga")
    agent = s.index("/usr/sbin/qemu-ga -m virtio-serial")
    assert "org.qemu.guest_agent.0" in s and agent < s.index("sleep 1")
    assert "qemu-ga" not in vm.guest_script(["sleep", "1"], tmp_path)


def test_qmp_socket_of_a_placed_guest(tmp_path, fixture_root):
    host = read_topology(SysRoot(fixture_root / "qemu-2node"))
    t = vm.parse_topology("host", 1024, host)
    argv = vm.vng_argv("/k", t, tmp_path, "tcg", qmp_socket=tmp_path / "q.sock")
    assert f"--qemu-opts=-qmp unix:{tmp_path}/q.sock,server=on,wait=off" in argv


@pytest.mark.parametrize("kw, needle", [
    ({"agent_socket": "/tmp/a b.sock"}, "--agent-socket /tmp/a b.sock: virtme-ng passes it"),
    ({"agent_socket": "/tmp/a,b.sock"}, "splits options at commas"),
    ({"agent_socket": "/nonexistent/dir/a.sock"}, "no directory /nonexistent/dir"),
    ({"qmp_socket": "/tmp/q.sock"}, "--qmp-socket: only a placed"),
])
def test_bad_sockets_are_refused_before_booting(tmp_path, monkeypatch, kw, needle):
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    monkeypatch.setattr(vm, "find_vng", lambda: "/bin/false")
    monkeypatch.setattr(vm, "find_qemu_ga", lambda: "/usr/sbin/qemu-ga")
    with pytest.raises(BadInput, match=re.escape(needle)):
        vm.run(image, vm.parse_topology("1x1", 512), ["true"], None, "tcg", 10, **kw)


def _qemu_opts(argv, flag):
    """The values of ``--qemu-opts=<flag> ...`` in a vng argv."""
    return [a.split(" ", 1)[1] for a in argv if a.startswith(f"--qemu-opts={flag} ")]


def test_mem_hotplug_gives_each_node_a_virtio_mem_device_bound_like_its_memory(
        tmp_path, fixture_root):
    host = read_topology(SysRoot(fixture_root / "qemu-2node"))
    t = vm.parse_topology("host", 2048, host)
    argv = vm.vng_argv("/k", t, tmp_path, "tcg", hotplug_mb=512)
    objects, devices = _qemu_opts(argv, "-object"), _qemu_opts(argv, "-device")
    for i, node in enumerate(t.nodes):
        bind = f"host-nodes={node.host_node},policy=bind"
        assert f"memory-backend-memfd,id=vnode{i}-vmem,size=512M,share=on,{bind}" in objects
        assert bind in layout.backend_object(i, node)      # the same host node as boot
        assert (f"virtio-mem-pci,id=vnuma-vmem{i},node={i},memdev=vnode{i}-vmem,"
                "requested-size=0") in devices
    # QEMU's room for the devices: a -m that it merges into virtme-ng's size
    assert _qemu_opts(argv, "-m") == [f"2048M,maxmem={2048 + 2 * 512}M"]
    assert argv[argv.index("--memory") + 1] == "2048M"
    assert "--append=memhp_default_state=online_movable" in argv
    plain = vm.vng_argv("/k", t, tmp_path, "tcg")
    assert not _qemu_opts(plain, "-m") and "vmem" not in " ".join(plain)
    assert not any("memhp" in a for a in plain)


@pytest.mark.parametrize("spec, size, needle", [
    ("1x1", 512, "--mem-hotplug: only a placed (Full-vNUMA) guest"),
    ("host", 511, "--mem-hotplug 511M: not a multiple of virtio-mem's 2 MiB block size"),
])
def test_mem_hotplug_is_refused_before_booting(tmp_path, monkeypatch, fixture_root, spec,
                                               size, needle):
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    monkeypatch.setattr(vm, "find_vng", lambda: pytest.fail("booted"))
    host = read_topology(SysRoot(fixture_root / "qemu-2node"))
    with pytest.raises(BadInput, match=re.escape(needle)):
        vm.run(image, vm.parse_topology(spec, 1024, host), ["true"], None, "tcg", 10,
               hotplug_mb=size)


def test_vm_run_names_mem_hotplug_in_a_bad_size(tmp_path):
    image = tmp_path / "bzImage"
    image.write_bytes(b"x")
    res = CliRunner().invoke(main, ["vm", "run", "--kernel", str(image), "--mem-hotplug",
                                    "lots", "--", "true"])
    assert res.exit_code == 2 and "--mem-hotplug 'lots': expected a size" in res.output
