"""The guest-agent channel (kernel/qga.py) against a fake agent speaking QGA's JSON:
a command's output and exit code come back, a silent agent is a NoAnswer within the
timeout, stale replies are dropped, a refused command is one line."""

import pytest
from share_host_fakes import FakeAgent

from vnuma_sched.kernel import qga


def echo(argv):
    if argv[0] == "/nonexistent":
        raise FileNotFoundError("Failed to execute child process (No such file)")
    return 3, " ".join(argv[1:]) + "\n", "warn\n"


def test_a_command_runs_and_its_output_comes_back(tmp_path):
    with FakeAgent(tmp_path / "qga.sock", echo) as agent:
        res = qga.run(tmp_path / "qga.sock", ["vnuma-sched", "share", "status"], 10)
    assert (res.exitcode, res.stdout, res.stderr) == (3, "share status\n", "warn\n")
    assert agent.seen[:2] == ["guest-sync", "guest-exec"]
    assert agent.seen[2:] == ["guest-exec-status"] * 2


def test_a_silent_agent_is_no_answer_within_the_timeout(tmp_path):
    with FakeAgent(tmp_path / "qga.sock", echo, silent=True):
        with pytest.raises(qga.NoAnswer, match="no answer from the guest agent .* within 0.5 s"):
            qga.run(tmp_path / "qga.sock", ["true"], 0.5)


def test_nothing_listening_is_no_answer(tmp_path):
    with pytest.raises(qga.NoAnswer, match="agent socket"):
        qga.run(tmp_path / "absent.sock", ["true"], 5)


def test_a_stale_reply_is_dropped_before_the_command(tmp_path):
    with FakeAgent(tmp_path / "qga.sock", echo, stale=True) as agent:
        res = qga.run(tmp_path / "qga.sock", ["x", "ok"], 10)
    assert res.stdout == "ok\n"
    assert agent.seen.count("guest-sync") == 2     # the first sync got the stale reply


def test_a_refused_command_is_one_line(tmp_path):
    with FakeAgent(tmp_path / "qga.sock", echo):
        with pytest.raises(qga.AgentError, match="refused /nonexistent: Failed to execute"):
            qga.run(tmp_path / "qga.sock", ["/nonexistent"], 10)
