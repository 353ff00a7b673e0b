"""The wheel, installed (not editable) in a fresh venv and run outside the source tree,
finds the data it ships: the patch series, the BPF programs, the kconfig fragments and
the tunables profiles. Built from a copy of the repository's files (tracked, or new and
not ignored), so no build/ or *.egg-info lands in the checkout and nothing ignored
(.venv, caches) can stand in for a missing file. Needs no network: pip uses the
configured local indexes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAKE_KERNEL, REPO, git

from vnuma_sched.kernel import patches as P

SHIPPED = ("bpf", "kconfig", "patches")
# A made-up version folder with every part of a series' layout, added to the copy the
# wheel is built from: the package_data globs must ship all of it, whatever the real
# series hold today (notes.txt is no part of a series and stays out).
PROBE = "patches/0.0-layout-probe"
PROBE_FILES = {f"{PROBE}/series": "0001-a.patch\n",
               f"{PROBE}/0000-cover-letter.patch": "Subject: [PATCH 0/1] probe\n",
               f"{PROBE}/0001-a.patch": "Subject: [PATCH 1/1] a\n",
               f"{PROBE}/debug/series": "0001-b.patch\n",
               f"{PROBE}/debug/0001-b.patch": "Subject: [PATCH] b\n"}
UNSHIPPED = f"{PROBE}/notes.txt"
# Variables that would let the new venv see this checkout or its venv instead.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VNUMA_SCHED_ROOT")


def source_files():
    """The repository's files: tracked ones and new ones not ignored (not yet added)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(argv, cwd, timeout=600):
    res = subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, argv))}: exit {res.returncode}\n" \
                                f"{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the project's wheel installed."""
    tmp = tmp_path_factory.mktemp("package")
    had_build_dir = (REPO / "build").exists()
    src = tmp / "src"
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for name, text in {**PROBE_FILES, UNSHIPPED: "x\n"}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "wheels", src],
        cwd=tmp)
    wheel, = (tmp / "wheels").glob("vnuma_sched-*.whl")
    env = tmp / "venv"
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", env], cwd=tmp)
    run([env / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp)
    assert (REPO / "build").exists() == had_build_dir  # pip built in the copy
    return env


def vnuma(venv, cwd, *args):
    return run([venv / "bin" / "vnuma-sched", *args], cwd=cwd, timeout=120)


def first_words(text):
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def test_installed_package_ships_its_data(venv, tmp_path):
    code = ("import json, vnuma_sched; from vnuma_sched import resources as r; "
            "print(json.dumps({'package': vnuma_sched.__file__, "
            "'fragment': str(r.guest_fragment()), 'profiles': str(r.profiles_dir()), "
            "**{n: str(r.shipped_dir(n)) for n in r.SHIPPED}}))")
    paths = {k: Path(v) for k, v in json.loads(run([venv / "bin" / "python", "-c", code],
                                                   cwd=tmp_path)).items()}
    for key, path in paths.items():  # the venv's copy, not this checkout's
        assert path.is_relative_to(venv) and path.exists(), (key, path)
    assert paths["fragment"].is_file()
    files = [*source_files(), *PROBE_FILES]
    for name in SHIPPED:  # every file of bpf/, kconfig/, patches/ is in the wheel
        expected = sorted(f[len(name) + 1:] for f in files if f.startswith(name + "/"))
        shipped = sorted(str(p.relative_to(paths[name])) for p in paths[name].rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        assert shipped == expected, name


def test_the_wheel_ships_cover_letters_and_debug_series(venv, tmp_path):
    code = "from vnuma_sched import resources as r; print(r.patches_dir())"
    patches = Path(run([venv / "bin" / "python", "-c", code], cwd=tmp_path).strip())
    for name in PROBE_FILES:
        assert (patches.parent / name).is_file(), name
    assert not (patches.parent / UNSHIPPED).exists()


def test_patches_list_shows_the_shipped_series(venv, tmp_path):
    out = vnuma(venv, tmp_path, "patches", "list")
    for series in P.all_series(REPO / "patches", debug=True):
        assert f"Series {series.version} (base {series.base_commit[:12]})" in out
        if series.cover:
            assert f"Cover letter: {P.subject(series.cover, prefix=True)}" in out
        for patch in series.patches:
            assert patch.subject in out, patch.filename


def test_probes_lists_every_probe(venv, tmp_path):
    out = vnuma(venv, tmp_path, "probes")
    # one probe per shipped BPF program, and steal (read from /proc/stat, no BPF)
    expected = {p.name.removesuffix(".bpf.c") for p in (REPO / "bpf").glob("*.bpf.c")}
    assert expected | {"steal"} <= first_words(out)


def test_tune_list_shows_the_shipped_profiles(venv, tmp_path):
    out = vnuma(venv, tmp_path, "tune", "list")
    profiles = {p.stem for p in (REPO / "vnuma_sched" / "tunables" / "profiles").glob("*.ini")}
    assert profiles and profiles <= first_words(out)


def test_build_uses_the_shipped_guest_fragment(venv, tmp_path):
    assert "--fragment" in vnuma(venv, tmp_path, "build", "--help")
    tree = tmp_path / "linux"
    shutil.copytree(FAKE_KERNEL, tree)
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    vnuma(venv, tmp_path, "build", "--tree", tree, "--out", tmp_path / "out", "--jobs", "1")
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    fragment = Path(meta["fragments"][0]["path"])
    assert fragment.name == "vnuma-guest.config" and fragment.is_relative_to(venv)


def test_the_wheel_ships_the_serve_contrib_files(venv, tmp_path):
    code = "from vnuma_sched import resources as r; print(r.contrib_dir())"
    where = Path(run([venv / "bin" / "python", "-c", code], cwd=tmp_path).strip())
    assert where.is_relative_to(venv)
    shipped = sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.is_file())
    prefix = "vnuma_sched/contrib/"
    assert shipped == sorted(f[len(prefix):] for f in source_files() if f.startswith(prefix))
