"""Run a command in a guest through the QEMU guest agent (qemu-ga) over virtio-serial.

qemu.qmp's QMPClient speaks the agent's protocol when it neither waits for a greeting
nor negotiates capabilities (QGA has neither). A session starts with ``guest-sync``
and a random id, repeated until the agent echoes that id: replies left in the channel
by an earlier client that gave up are read and dropped first. The command runs with
``guest-exec`` (output captured), and ``guest-exec-status`` is polled until it has
exited. Everything (connecting, syncing, running, waiting) shares one deadline: a
guest that does not answer in time raises NoAnswer, and the command may still run
to its end in the guest.
"""

import asyncio
import base64
import logging
import random
import time
from dataclasses import dataclass

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from vnuma_sched.errors import VnumaError

PORT_NAME = "org.qemu.guest_agent.0"    # the virtio-serial port qemu-ga opens
POLL_S = 0.1                            # between two guest-exec-status calls
SYNC_TRIES = 8


class AgentError(VnumaError):
    """The agent answered with an error (e.g. the command does not exist)."""

    exit_code = 1


class NoAnswer(AgentError):
    """No agent answered in time (or nothing listens on the socket)."""


@dataclass
class ExecResult:
    exitcode: int | None        # None when a signal ended it
    stdout: str
    stderr: str
    signal: int | None = None


def _decode(status, key):
    return base64.b64decode(status.get(key, "")).decode("utf-8", "replace")


def _quiet():
    """QMPClient logs a warning for each stale reply it drops; they are expected here
    (see the module doc), so they stay out of the user's terminal."""
    log = logging.getLogger("qemu.qmp")
    if not log.handlers:
        log.addHandler(logging.NullHandler())


async def _sync(client, rng):
    for _ in range(SYNC_TRIES):
        token = rng.randrange(1, 2**31)
        if await client.execute("guest-sync", {"id": token}) == token:
            return
    raise AgentError(f"the agent never echoed guest-sync in {SYNC_TRIES} tries")


async def _exec(sock, argv, deadline, rng):
    client = QMPClient("vnuma-qga")
    client.await_greeting = False
    client.negotiate = False
    try:
        await client.connect(sock)
    except ConnectError as err:
        raise NoAnswer(f"agent socket {sock}: {err.exc if err.exc else err}") from err
    try:
        await _sync(client, rng)
        started = await client.execute("guest-exec", {"path": argv[0], "arg": list(argv[1:]),
                                                      "capture-output": True})
        while True:
            status = await client.execute("guest-exec-status", {"pid": started["pid"]})
            if status.get("exited"):
                return ExecResult(status.get("exitcode"), _decode(status, "out-data"),
                                  _decode(status, "err-data"), status.get("signal"))
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError
            await asyncio.sleep(POLL_S)
    except ExecuteError as err:
        raise AgentError(f"the guest agent refused {argv[0]}: {err}") from err
    finally:
        try:
            await client.disconnect()
        except (QMPError, OSError, EOFError):
            pass


def run(sock, argv, timeout, rng=None):
    """Run ``argv`` in the guest whose agent listens on ``sock``; its ExecResult.
    NoAnswer when there is no answer within ``timeout`` seconds, AgentError when the
    agent refuses."""
    _quiet()
    deadline = time.monotonic() + timeout

    async def bounded():
        return await asyncio.wait_for(_exec(str(sock), argv, deadline, rng or random.Random()),
                                      timeout)
    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        raise NoAnswer(f"no answer from the guest agent on {sock} within {timeout:g} s") \
            from None
    except (QMPError, OSError, EOFError) as err:
        raise NoAnswer(f"guest agent on {sock}: {type(err).__name__}: {err}") from err
