"""The guest kernel's headers, extracted once on the host and handed to the guest
(bcc in a TCG guest otherwise spends about a minute of every boot extracting
/sys/kernel/kheaders.tar.xz)."""

import io
import json
import os
import tarfile
from pathlib import Path

from test_ab import THREE, FakeGuest, _arms

from vnuma_sched.experiments import ab, guest_agent
from vnuma_sched.kernel import kbuild, vm
from vnuma_sched.probes import kheaders
from vnuma_sched.system.sysroot import SysRoot


def _build_dir(root, archive=True):
    """A build directory with its bzImage and (``archive``) kernel/kheaders_data.tar.xz
    holding include/linux/sched.h."""
    image = root / kbuild.IMAGE
    image.parent.mkdir(parents=True)
    image.write_bytes(b"bzImage")
    if archive:
        (root / "kernel").mkdir()
        with tarfile.open(root / kbuild.HEADERS_ARCHIVE, "w:xz") as tar:
            data = b"struct task_struct;\n"
            info = tarfile.TarInfo("include/linux/sched.h")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return image


def test_the_archive_is_found_beside_an_image_in_its_build_directory(tmp_path):
    image = _build_dir(tmp_path / "build")
    assert kbuild.headers_archive(image) == tmp_path / "build" / kbuild.HEADERS_ARCHIVE
    assert kbuild.headers_archive(_build_dir(tmp_path / "bare", archive=False)) is None
    (tmp_path / "bzImage").write_bytes(b"x")       # an image outside a build directory
    assert kbuild.headers_archive(tmp_path / "bzImage") is None


def test_extracted_headers_live_as_long_as_the_block(tmp_path):
    archive = kbuild.headers_archive(_build_dir(tmp_path / "build"))
    with kheaders.extracted(archive, tmp_path) as path:
        assert (path / "include" / "linux" / "sched.h").read_text() == "struct task_struct;\n"
        assert path.parent == tmp_path and oct(path.stat().st_mode & 0o777) == "0o700"
    assert not path.exists()
    with kheaders.extracted(None, tmp_path) as path:
        assert path is None
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not xz")
    with kheaders.extracted(broken, tmp_path) as path:   # the guest extracts its own
        assert path is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kheaders-")] == []


def test_the_guest_agent_points_bcc_at_the_host_s_headers(tmp_path):
    env = {}
    assert not guest_agent.use_headers({"kernel_headers": None}, env) and env == {}
    assert not guest_agent.use_headers({"kernel_headers": str(tmp_path)}, env) and env == {}
    (tmp_path / "include").mkdir()
    assert guest_agent.use_headers({"kernel_headers": str(tmp_path)}, env)
    assert env == {kheaders.KERNEL_SOURCE_VAR: str(tmp_path)}
    # and then the guest extracts nothing of its own
    os.environ[kheaders.KERNEL_SOURCE_VAR] = str(tmp_path)
    try:
        assert kheaders.ensure_kernel_headers(SysRoot(tmp_path), "6.12.117+") is None
    finally:
        del os.environ[kheaders.KERNEL_SOURCE_VAR]


def test_ab_extracts_once_for_all_boots_and_cleans_up(tmp_path, monkeypatch):
    image = _build_dir(tmp_path / "build")
    fake, seen = FakeGuest(), []

    def guest(image, topo, cmd, *args, **kw):
        plan = json.loads(Path(cmd[-1]).read_text())
        seen.append(plan["kernel_headers"])
        assert seen[-1] is None or (Path(seen[-1]) / "include/linux/sched.h").is_file()
        return fake(image, topo, cmd, *args, **kw)

    monkeypatch.setattr(vm, "run", guest)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    out = tmp_path / "out"
    ab.run(image, None, wl, _arms(*THREE), 4, 2, out, None, lambda m: None, "tcg", 60, [])
    assert len(seen) == 2 and seen[0] == seen[1] and Path(seen[0]).parent == out.resolve()
    assert not Path(seen[0]).exists()
    # an image without its build directory: the guests extract their own
    seen.clear()
    ab.run(_build_dir(tmp_path / "bare", archive=False), None, wl, _arms(*THREE), 2, 1, out,
           None, lambda m: None, "tcg", 60, [])
    assert seen == [None]
