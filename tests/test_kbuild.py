"""Build logic against a fake kernel Makefile (fast; no real kernel)."""

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import FAKE_KERNEL, FAKE_VERSION, REPO, git

from vnuma_sched import runner as runner_module
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import kbuild, kconfig
from vnuma_sched.runner import Runner


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "linux"
    shutil.copytree(FAKE_KERNEL, t)
    git(t, "init", "-q")
    git(t, "add", "-A")
    git(t, "commit", "-q", "-m", "base")
    git(t, "tag", "vnuma-base")
    (t / "kernel" / "sched.c").write_text("/* patched */\n")
    git(t, "add", "-A")
    git(t, "commit", "-q", "-m", "sched/fair: a patch")
    return t


def fragment(tmp_path, text, name="f.config"):
    p = tmp_path / name
    p.write_text(text)
    return p


def request(tree, tmp_path, frags, **kw):
    return kbuild.BuildRequest(tree, tmp_path / "out", frags, jobs=2, **kw)


def test_build_writes_image_and_metadata(tree, tmp_path):
    frag = fragment(tmp_path, "# why: test\nCONFIG_SMP=y\nCONFIG_NR_CPUS=64\n")
    msgs = []
    res = kbuild.build(request(tree, tmp_path, [frag]), Runner(), msgs.append)
    assert [s.status for s in res.steps] == ["PASS", "PASS", "PASS"]
    cfg = kconfig.parse((tmp_path / "out/.config").read_text(), strict=False)
    assert cfg["CONFIG_SMP"] == "y" and cfg["CONFIG_KVM_GUEST"] == "y"
    meta = json.loads((tmp_path / "out/metadata.json").read_text())
    assert meta["kernel_version"] == FAKE_VERSION
    assert meta["base_commit"] != meta["head_commit"]
    assert [p["subject"] for p in meta["patches"]] == ["sched/fair: a patch"]
    assert len(meta["patches"][0]["patch_id"]) == 40
    assert meta["fragments"][0]["path"] == str(frag)
    assert meta["reproducer"].startswith("vnuma-sched build --tree ")
    assert meta["image_sha256"] == kbuild.sha256_file(tmp_path / "out/arch/x86/boot/bzImage")
    assert any("configure" in m for m in msgs)


def test_dropped_option_fails_and_names_it(tree, tmp_path):
    frag = fragment(tmp_path, "CONFIG_DROPME=y\nCONFIG_SMP=y\n")
    with pytest.raises(kbuild.BuildFailed) as err:
        kbuild.build(request(tree, tmp_path, [frag]), Runner(), lambda m: None)
    assert "CONFIG_DROPME: requested y, got n" in str(err.value)
    e = err.value
    assert (e.step, e.returncode, e.log, e.exit_code) == ("configure", None, None, 1)
    assert e.errors == ["CONFIG_DROPME: requested y, got n"]
    assert [(s.name, s.status) for s in e.result.steps] == [("configure", "FAIL")]
    assert not (tmp_path / "out/arch/x86/boot/bzImage").exists()


def test_allow_dropped_goes_on(tree, tmp_path):
    frag = fragment(tmp_path, "CONFIG_DROPME=y\n")
    res = kbuild.build(request(tree, tmp_path, [frag], allow_dropped=True), Runner(),
                       lambda m: None)
    assert res.ok and [str(d) for d in res.dropped] == ["CONFIG_DROPME: requested y, got n"]


def test_compile_error_shows_compiler_line_not_whole_log(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    frag = fragment(tmp_path, "CONFIG_SMP=y\n")
    with pytest.raises(kbuild.BuildFailed) as err:
        kbuild.build(request(tree, tmp_path, [frag]), Runner(), lambda m: None)
    msg = str(err.value)
    assert msg.startswith("bzImage: make exited")
    assert "kernel/sched/fair.c:42:7: error: 'sd_numa' undeclared" in msg
    assert "kernel/file3.o" not in msg
    assert "build.log" in msg
    e = err.value  # the same facts as fields, for callers (no message parsing)
    assert e.step == "bzImage" and e.returncode == 2  # the fake Makefile's "exit 2"
    assert e.exit_code == 1  # the CLI's exit code stays the family's "operation failed"
    assert e.errors[0] == ("kernel/sched/fair.c:42:7: error: 'sd_numa' undeclared "
                           "(first use in this function)")
    assert e.errors[1].startswith("make[4]: *** ")
    assert e.log == tmp_path / "out/build.log" and e.log.is_file()
    assert e.errors[0] in e.log.read_text()
    assert [(s.name, s.status) for s in e.result.steps] == [("configure", "PASS"),
                                                           ("bzImage", "FAIL")]


@pytest.mark.parametrize("fail,text", [
    (True, "CONFIG_SMP=y\n"),      # make fails
    (False, "CONFIG_DROPME=y\n"),  # configure fails, no command did
])
def test_cli_build_failure_exits_1_with_the_message(tree, tmp_path, monkeypatch, fail, text):
    if fail:
        monkeypatch.setenv("FAIL", "1")
    res = CliRunner().invoke(main, ["build", "--tree", str(tree), "--out", str(tmp_path / "out"),
                                    "--fragment", str(fragment(tmp_path, text))])
    assert res.exit_code == 1, res.output
    assert ("bzImage: make exited 2; first errors:" if fail else
            "configure: requested options did not survive olddefconfig") in res.stderr


def test_unchanged_rebuild_keeps_config_and_image(tree, tmp_path):
    frag = fragment(tmp_path, "CONFIG_SMP=y\n")
    req = request(tree, tmp_path, [frag])
    kbuild.build(req, Runner(), lambda m: None)
    cfg, img = tmp_path / "out/.config", tmp_path / "out/arch/x86/boot/bzImage"
    before = (cfg.stat().st_mtime_ns, img.stat().st_mtime_ns)
    kbuild.build(req, Runner(), lambda m: None)
    assert (cfg.stat().st_mtime_ns, img.stat().st_mtime_ns) == before
    assert "CC" not in (tmp_path / "out/build.log").read_text()


def test_changed_fragment_rebuilds(tree, tmp_path):
    frag = fragment(tmp_path, "CONFIG_SMP=y\n")
    req = request(tree, tmp_path, [frag])
    kbuild.build(req, Runner(), lambda m: None)
    frag.write_text("CONFIG_SMP=y\nCONFIG_NUMA=y\n")
    kbuild.build(req, Runner(), lambda m: None)
    assert "CONFIG_NUMA=y" in (tmp_path / "out/arch/x86/boot/bzImage").read_text()


def test_reproducible_env_from_commit(tree):
    env = kbuild.build_env(tree, Runner())
    assert env["KBUILD_BUILD_TIMESTAMP"] == "Tue Nov 14 22:13:20 UTC 2023"
    assert env["KBUILD_BUILD_USER"] == "vnuma" and env["KBUILD_BUILD_HOST"] == "vnuma-sched"


@pytest.mark.parametrize("text,needle", [
    ("CONFIG_X=maybe\n", "f.config:1: bad value 'maybe' for CONFIG_X"),
    ("# ok\nCONFIG_Y=y\nSMP=y\n", "f.config:3: not a Kconfig assignment"),
    ('CONFIG_S="unterminated\n', "f.config:1: bad value"),
])
def test_fragment_syntax_errors_name_file_and_line(tmp_path, text, needle):
    with pytest.raises(BadInput) as err:
        kconfig.read_fragment(fragment(tmp_path, text))
    assert needle in str(err.value)


def test_kconfig_merge_and_render_roundtrip():
    base = kconfig.parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=2\n")
    merged, req = kconfig.merge(base, [{"CONFIG_B": "y"}, {"CONFIG_C": "64", "CONFIG_D": '"x"'}])
    assert req == {"CONFIG_B": "y", "CONFIG_C": "64", "CONFIG_D": '"x"'}
    assert kconfig.parse(kconfig.render(merged)) == merged
    assert kconfig.dropped(req, {"CONFIG_B": "y", "CONFIG_C": "64"}) == [
        kconfig.Dropped("CONFIG_D", '"x"', "n")]


def test_shipped_fragment_parses_with_one_why_per_group():
    path = REPO / "kconfig" / "vnuma-guest.config"
    frag = kconfig.read_fragment(path)
    assert frag["CONFIG_NR_CPUS"] == "64" and frag["CONFIG_KVM_GUEST"] == "y"
    groups = path.read_text().split("\n\n")[1:]
    assert all(g.lstrip().startswith("# why:") for g in groups if "CONFIG_" in g)


def test_object_targets_build_without_image(tree, tmp_path):
    frag = fragment(tmp_path, "CONFIG_SMP=y\n")
    req = request(tree, tmp_path, [frag], targets=("tinyconfig",))
    res = kbuild.build(req, Runner(), lambda m: None)
    assert [s.name for s in res.steps] == ["configure", "objects"] and res.image is None
    assert "--target tinyconfig" in req.reproducer()


def test_warnings_are_summarised(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("WARN", "1")
    res = kbuild.build(request(tree, tmp_path, [fragment(tmp_path, "CONFIG_SMP=y\n")]),
                       Runner(), lambda m: None)
    assert res.steps[1].detail.startswith("1 warning(s): kernel/sched/core.c:10:5: warning")


# --- bad input: nothing built, nothing run -------------------------------------------

def refuse_subprocesses(monkeypatch):
    started = []

    def refuse(argv, *args, **kwargs):
        started.append(argv)
        raise AssertionError(f"started {argv}")
    monkeypatch.setattr(runner_module.subprocess, "Popen", refuse)
    return started


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,                      # not UTF-8
    b"CONFIG_SMP=y\n\x00\x00\x7fELF\x02\x01\n",  # UTF-8, but binary
])
def test_binary_fragment_is_refused_before_anything_runs(tree, tmp_path, monkeypatch, content):
    frag = tmp_path / "vmlinux.o"
    frag.write_bytes(content)
    started = refuse_subprocesses(monkeypatch)
    res = CliRunner().invoke(main, ["build", "--tree", str(tree), "--out",
                                    str(tmp_path / "out"), "--fragment", str(frag)])
    assert res.exit_code == 2, res.output
    assert str(frag) in res.output and "not a text file" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "internal error" not in res.output
    assert started == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", [
    "--eval=$(shell touch {marker})", "-j1000", "CC=touch {marker}", "../../etc/passwd", "",
])
def test_make_targets_that_make_would_obey_are_refused(tree, tmp_path, monkeypatch, target):
    marker = tmp_path / "marker"
    started = refuse_subprocesses(monkeypatch)
    res = CliRunner().invoke(main, ["build", "--tree", str(tree), "--out",
                                    str(tmp_path / "out"), "--target",
                                    target.format(marker=marker)])
    assert res.exit_code == 2 and "--target" in res.output, res.output
    assert started == [] and not marker.exists() and not (tmp_path / "out").exists()


def test_plain_targets_pass_the_check():
    assert kbuild.check_targets(["bzImage", "kernel/sched/fair.o", "kernel/sched/",
                                 "arch/x86/kvm/kvm-intel.o"])
