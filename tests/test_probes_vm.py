"""vm tier: the migrate probe inside a 2-node guest built by the project."""

import json
import subprocess
from pathlib import Path

import pytest
from helpers import VNUMA

pytestmark = pytest.mark.vm

SCRIPT = Path(__file__).parent / "guest" / "probes_check.py"


@pytest.fixture(scope="module")
def guest_probes(guest_build):
    res = subprocess.run([VNUMA, "vm", "run", "--kernel", str(guest_build), "--topology",
                          "2x2", "--timeout", "600", "--", "/usr/bin/python3", str(SCRIPT),
                          VNUMA], capture_output=True, text=True, timeout=700)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_affinity_moves_are_counted_exactly(guest_probes):
    mover = guest_probes["mover"]
    assert mover["events"] == mover["moves"] == 20
    assert mover["cross_node_events"] == mover["moves"]


def test_wake_and_newidle_migrations_are_separated(guest_probes):
    m = guest_probes["metrics"]
    assert m["migrations.wake"] > 0 and m["migrations.newidle"] > 0
    assert m["cross_node_migrations"] >= guest_probes["mover"]["moves"]
    assert m["cross_node_migrations"] == sum(m[f"cross_node_migrations.{c}"] for c in
                                             ("wake", "newidle", "periodic", "nohz", "numa",
                                              "other"))
