"""`vnuma-sched serve`: a probe session's cumulative counters, read at scrape time,
over HTTP for Prometheus or into node_exporter's textfile collector.

The collector reads the session (the same Session.sample() `record` reads) when
Prometheus scrapes or when the text file is due: no polling thread, no second copy
of the counters. The listening socket is bound before any probe is loaded, so a bad
address fails at once and nothing is left running.
"""

import errno
import os
import re
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest

from vnuma_sched.errors import BadInput, DataError, VnumaError
from vnuma_sched.probes import exposition
from vnuma_sched.system import facts
from vnuma_sched.tunables import journal

METRICS_PATH = "/metrics"
TEXTFILE_NAME = "vnuma_sched.prom"     # node_exporter reads *.prom
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s:\[\]]*)):(?P<port>\d+)")


def parse_listen(text):
    """(host, port) of ADDR:PORT ("127.0.0.1:9478", "[::1]:9478", ":9478" for every
    address); BadInput otherwise."""
    m = _LISTEN.fullmatch(text)
    if not m:
        raise BadInput(f"--listen {text!r}: expected ADDR:PORT (127.0.0.1:9478, "
                       "[::1]:9478, or :9478 for every address)")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise BadInput(f"--listen {text!r}: port {port} outside 1..65535")
    return m["v6"] or m["host"] or "", port


def applied_profile(sysroot):
    """The tunables profile the journal says is applied, "" when none."""
    try:
        doc = journal.load(sysroot)
    except DataError:
        return "unreadable"
    return doc.profile if doc is not None else ""


class SessionCollector:
    """A prometheus_client collector over a started Session (or anything with
    sample(), status, topology and close()): one snapshot per scrape, scrapes one at a
    time, none once closed."""

    def __init__(self, session, sysroot, per_cpu=True):
        self.session, self.sysroot = session, sysroot
        self.ctx = exposition.Context(dict(session.topology.cpu_node), per_cpu)
        self.lock = threading.Lock()
        self.closed = False

    def describe(self):
        return []       # nothing is read at registration

    def close(self):
        """Detach the probes, after a scrape still reading them."""
        with self.lock:
            self.closed = True
            self.session.close()

    def collect(self):
        with self.lock:
            if self.closed:
                return
            snapshot = self.session.sample(listings=False)     # not exported
        yield from exposition.families(snapshot, self.session.status, self.ctx)
        yield exposition.info(facts.release(self.sysroot, ""),
                              facts.patch_gate_values(self.sysroot),
                              applied_profile(self.sysroot))


def registry(collector):
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


# ---- HTTP ------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """GET /metrics: the exposition; GET /: where the metrics are; other paths 404,
    other methods 405, a malformed request 400 (http.server)."""

    server_version = "vnuma-sched"

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/":
            self._send(200, "text/plain; charset=utf-8",
                       f"vnuma-sched serve: metrics at {METRICS_PATH}\n".encode())
        elif path != METRICS_PATH:
            self.send_error(404, explain=f"no {path}; the metrics are at {METRICS_PATH}")
        else:
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            try:
                body = encoder(self.server.registry)
            except Exception as err:  # a map read failed: say so, keep serving
                self.send_error(500, explain=f"reading the probes failed: {err}")
                return
            self._send(200, content_type, body)

    def _method_not_allowed(self):
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _send(self, code, content_type, body):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        self.server.log(f"{self.address_string()}: {fmt % args}")


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    registry = None

    def __init__(self, address, family, log=None):
        self.address_family = family
        self.log = log or (lambda msg: None)
        super().__init__(address, _Handler, bind_and_activate=False)


def bind(host, port, log=None):
    """A MetricsServer bound to host:port and listening (not serving yet); BadInput for
    an address this machine does not have, VnumaError (exit 1) when it is in use."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise BadInput(f"--listen {shown}: cannot resolve: {err.strerror}") from err
    server = MetricsServer(address, family, log)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as err:
        server.server_close()
        if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise BadInput(f"--listen {shown}: not an address of this machine") from err
        raise VnumaError(f"--listen {shown}: {err.strerror or err}") from err
    return server


def serve_http(server, reg):
    """Serve until interrupted (KeyboardInterrupt; the CLI turns SIGTERM into one)."""
    server.registry = reg
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


# ---- textfile --------------------------------------------------------------

def check_textfile_dir(directory):
    """BadInput unless ``directory`` is an existing directory we can write in."""
    path = Path(directory)
    if not path.is_dir():
        raise BadInput(f"--textfile {directory}: not an existing directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInput(f"--textfile {directory}: not writable by this user")
    return path / TEXTFILE_NAME


def write_textfile(target, reg):
    """Write the exposition to ``target`` atomically: a temporary file beside it (a name
    node_exporter ignores), fsync, then rename over ``target``."""
    target = Path(target)
    data = generate_latest(reg)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def textfile_loop(target, reg, interval, count=None, sleep=time.sleep):
    """Rewrite ``target`` every ``interval`` seconds, ``count`` times (None: until
    interrupted, then the file is removed: frozen counters would look like a quiet
    machine). Returns how many times it was written."""
    written = 0
    try:
        while count is None or written < count:
            if written:
                sleep(interval)
            write_textfile(target, reg)
            written += 1
    except KeyboardInterrupt:
        Path(target).unlink(missing_ok=True)
    return written
