"""A local run starts a Ray of its own: it never joins a cluster that another process on
the machine started (`ray start`), which a plain ray.init() would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import sys, ray
sys.path.insert(0, {repo!r})
from pipelines.ray_train import start_ray
if sys.argv[1] == "plain":
    ray.init(include_dashboard=False)
else:
    start_ray(None, num_cpus=1, include_dashboard=False)
print("joined" if "someone_elses_cluster" in ray.cluster_resources() else "own")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def someone_elses_cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--num-cpus",
            "1",
            "--include-dashboard",
            "false",
            "--resources",
            '{"someone_elses_cluster": 1}',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(8)
    yield env
    # A test's head: killed outright (after SIGTERM it waited the full 30 s to exit).
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)
    # `ray stop` forgets the head's address, which `ray start --head` left for "auto"
    # lookups: Ray Train's placement-group cleaner in a later local Ray would ask that dead
    # cluster, and the placement groups of trials ASHA stopped would never be freed.
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "stop", "--force"], env=env, capture_output=True,
        timeout=120,
    )  # fmt: skip


def probe(mode: str, env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(repo=str(REPO)), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_local_run_never_joins_a_cluster_found_on_the_machine(someone_elses_cluster):
    assert probe("plain", someone_elses_cluster) == "joined"  # what ray.init() alone does
    assert probe("start_ray", someone_elses_cluster) == "own"
