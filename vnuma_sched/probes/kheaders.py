"""Kernel headers for bcc on kernels without a headers package: the kernel's own
/sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS), extracted once into a directory
only this user can write (not a predictable name in a shared /tmp), checked member
by member, and handed to bcc for one BPF() call at a time. No bcc import here."""

import contextlib
import copy
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from vnuma_sched.errors import DataError
from vnuma_sched.system import facts

KHEADERS = "/sys/kernel/kheaders.tar.xz"      # CONFIG_IKHEADERS
STATE_DIR = "/run/vnuma_sched"                  # root's tmpfs; not a shared /tmp
PRIVATE_DIR = f"{STATE_DIR}/kheaders"           # 0700 inside; the parent stays 0755
KERNEL_SOURCE_VAR = "BCC_KERNEL_SOURCE"         # libbcc reads it with getenv() only
_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")   # a file name: no '/', no '..'


def private_dir(path):
    """``path`` as a directory only this user can write: made with mode 0700, or, when it
    exists, a real directory (not a link) owned by this user and not group- or
    world-writable. DataError otherwise (someone else could swap what is inside)."""
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise DataError(str(path), f"cannot create: {err.strerror}") from err
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(str(path), "exists and is not a directory (a link?): refused")
    if st.st_uid != os.geteuid():
        raise DataError(str(path), f"owned by uid {st.st_uid}, not by this user: refused")
    if st.st_mode & 0o022:
        raise DataError(str(path), f"mode {stat.S_IMODE(st.st_mode):04o} is group- or "
                                   "world-writable: refused")
    return path


def _inside(relpath):
    """Does a relative path (of a link target) stay inside the extraction directory?"""
    norm = posixpath.normpath(relpath)
    return not (relpath.startswith("/") or norm == ".." or norm.startswith("../"))


def check_member(member, links=frozenset()):
    """Why a tar member must not be extracted (None: a file, a directory or a link that
    stays inside). ``links``: the links extracted before it (no path may go through one).
    The kernel's own kheaders.tar.xz holds relative symlinks (dt-bindings)."""
    name = member.name
    if name.startswith("/"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in the path"
    if any(str(parent) in links for parent in PurePosixPath(name).parents):
        return "a path through a link"
    if member.issym():
        target = posixpath.join(posixpath.dirname(name), member.linkname)
        return None if _inside(target) else "a link out of it"
    if member.islnk():
        return None if _inside(member.linkname) else "a link out of it"
    if not (member.isfile() or member.isdir()):
        return "a device, fifo or other special file"
    return None


def safe_members(tar, archive):
    """The members as the 'data' filter would extract them: files, directories and links
    below the destination, no set-id bits, owned by this user; DataError for the whole
    archive when one member is anything else."""
    out, links = [], set()
    for member in tar.getmembers():
        why = check_member(member, links)
        if why:
            raise DataError(str(archive), f"member {member.name!r}: {why}: refused")
        if member.issym() or member.islnk():
            links.add(posixpath.normpath(member.name))
        member = copy.copy(member)
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        member.uid, member.gid = os.geteuid(), os.getegid()
        member.uname = member.gname = ""
        out.append(member)
    return out


def extract(archive, dest):
    """Extract a tar archive into ``dest`` (an empty private directory)."""
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+, 3.12+
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest, members=safe_members(tar, archive))
    except OSError as err:
        raise DataError(str(archive), f"cannot extract: {err.strerror or err}") from err
    except (tarfile.TarError, EOFError) as err:
        raise DataError(str(archive), f"cannot extract: {err}") from err


def _install(tmp, dest):
    """Move a finished extraction into place (another process may have been first)."""
    try:
        os.rename(tmp, dest)
    except OSError as err:
        if not (private_dir(dest) / "include").is_dir():
            raise DataError(str(dest), f"cannot install the headers: {err.strerror}") from err


def ensure_kernel_headers(sysroot, release, log=None):
    """Where bcc finds headers for ``release``: None when it finds them by itself
    (/lib/modules/<r>/build, or BCC_KERNEL_SOURCE already set), else the kernel's own
    kheaders.tar.xz (CONFIG_IKHEADERS) extracted once into a private directory under
    /run/vnuma_sched/kheaders. DataError when that directory is not safe to use."""
    if not _RELEASE.fullmatch(release) or ".." in release:
        raise DataError(facts.OSRELEASE, f"unexpected kernel release {release!r}")
    if sysroot.exists(f"/lib/modules/{release}/build") or os.environ.get(KERNEL_SOURCE_VAR):
        return None
    archive = sysroot.path(KHEADERS)
    if not archive.exists():
        return None
    state = sysroot.path(STATE_DIR)
    if not state.is_dir():
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o755)          # whatever the umask: others read the tunables' state
    base = private_dir(sysroot.path(PRIVATE_DIR))
    dest = base / f"kheaders-{release}"
    if dest.exists() or dest.is_symlink():
        private_dir(dest)
        if (dest / "include").is_dir():
            return dest
        shutil.rmtree(dest)   # ours, from an extraction that did not finish
    tmp = Path(tempfile.mkdtemp(prefix=f".kheaders-{release}-", dir=base))
    try:
        extract(archive, tmp)
        _install(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if log:
        log(f"kernel headers extracted from {KHEADERS} to {dest}")
    return dest


@contextlib.contextmanager
def extracted(archive, parent):
    """``archive`` extracted into a new private directory under ``parent`` (removed on
    exit), or None when it cannot be (then each guest extracts its own). The host
    does this in about a second where a TCG guest takes about a minute."""
    if archive is None:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix=".kheaders-", dir=parent))
    try:
        try:
            extract(archive, path)
        except DataError:
            yield None
            return
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kernel_source(path):
    """BCC_KERNEL_SOURCE=path for one BPF() call, the environment restored after it
    (bcc 0.26 takes the headers' location from the environment only)."""
    if path is None:
        yield
        return
    old = os.environ.get(KERNEL_SOURCE_VAR)
    os.environ[KERNEL_SOURCE_VAR] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(KERNEL_SOURCE_VAR, None)
        else:
            os.environ[KERNEL_SOURCE_VAR] = old
