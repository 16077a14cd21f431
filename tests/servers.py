"""Servers the integration tests start on 127.0.0.1: moto's S3, an MLflow tracking server,
and a multi-node Ray cluster whose worker nodes share no disk with the driver."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, log: Path, timeout: float = 120, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - still starting
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}")


def family(pid: int) -> list:
    """The process ``pid`` and every process under it (psutil processes); none when it
    ended and was reaped already (a node whose start failed), which a fixture's teardown
    must not turn into an error that hides why it ended."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_family(pid: int, timeout: float = 60) -> None:
    """SIGKILL a process and every process under it, as a lost machine would; one that
    ends of itself between the listing and its signal is already what was asked for."""
    import psutil

    processes = family(pid)
    for p in processes:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=timeout)


def stacks(pids: list[int]) -> str:
    """Every Python thread's stack in the processes ``pids`` and all under them (py-spy,
    which Ray installs), so that a hung run says where it waits."""
    import psutil

    out = []
    for pid in pids:
        for p in family(pid):
            try:
                name, exe = " ".join(p.cmdline())[:160], p.name()
            except psutil.Error:
                continue
            if exe in ("gcs_server", "raylet") or not ("python" in name or "ray::" in name):
                continue  # Ray's C++ processes: py-spy reads Python stacks only
            dump = subprocess.run([str(BIN / "py-spy"), "dump", "--pid", str(p.pid)],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            out.append(f"--- {p.pid} {name}\n{dump.stdout or dump.stderr}")
    return "\n".join(out)


def run(
    cmd: list[str], cwd: Path, env: dict, timeout: float = 600, cluster: RayCluster | None = None
) -> subprocess.CompletedProcess:
    """``cmd``, which must succeed within ``timeout``; a hung one fails with its output and
    the stacks of its processes and the cluster's (where it waits)."""
    process = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        where = stacks([process.pid]) + "\n" + (cluster.diagnose() if cluster else "")
        kill_family(process.pid)
        out, err = process.communicate()
        pytest.fail(f"{cmd} hung for {timeout} s: {out[-3000:]}\n{err[-6000:]}\n{where}")
    assert process.returncode == 0, f"{cmd}: {out[-3000:]}\n{err[-6000:]}"
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def start_moto(folder: Path, bucket: str) -> tuple[subprocess.Popen, str]:
    """moto's S3 server with ``bucket``; returns the process and its endpoint."""
    port, log = free_port(), folder / "moto.log"
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **AWS},
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_args())
    _wait(lambda: client.create_bucket(Bucket=bucket), "moto server", log)
    return server, endpoint


def _boto_args() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **_boto_args())


def start_mlflow(folder: Path, artifacts: str, endpoint: str) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (sqlite backend) proxying artifacts to ``artifacts`` (s3://)."""
    port, log = free_port(), folder / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", artifacts, "--workers", "1"]
    # No job runner: its eight worker processes serve GenAI jobs this project never sends.
    env = {**os.environ, **AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fmt: skip
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    _wait(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2), "mlflow server", log)
    return server, uri


def start_mlflow_ui(db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on ``db``, as the end of `dvc repro` tells a user to start it."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    _wait(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2), "mlflow ui", log)
    return server, uri


# Headless Chromium on a machine with no network: no background connections, a fresh
# profile (the UI keeps its choices in the browser's local storage).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1600,1000"]  # fmt: skip


def browse(chromium: str, url: str, screenshot: Path, profile: Path) -> str:
    """The page at ``url`` as a real browser renders it, after its scripts ran: returns
    the DOM and writes a screenshot."""
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120)
    run([*base, f"--screenshot={screenshot}", url], check=True)
    return run([*base, "--dump-dom", url], check=True).stdout


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    cache: Path


@dataclass
class RayCluster:
    """A head (no CPUs: the drivers' node) and worker nodes, each ``ray start --block`` in
    its own session; a worker node runs on its own loopback address inside its own mount
    namespace, with empty tmpfs over the ``hidden`` folders and Ray's temp folder, so that
    it sees none of them."""

    folder: Path
    hidden: list[Path]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, workers: dict[str, dict[str, int]]) -> None:
        head = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(self.port)]
        head += ["--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"]
        head += ["--dashboard-port", str(self.dashboard_port), "--num-cpus", "0"]
        head += ["--num-gpus", "0", "--disable-usage-stats", "--object-store-memory", "100000000"]
        self._spawn("head", head, isolated=False)
        _wait(self._dashboard_up, "the Ray head", self.folder / "head.log",
              process=self.nodes["head"].process)  # fmt: skip
        for i, (name, resources) in enumerate(workers.items()):
            # Its own loopback address and its own Ray temp folder (tmpfs over /tmp/ray):
            # a machine of its own, whose Ray files (the runs' working directories among
            # them) no other node shares or garbage-collects.
            cmd = [str(BIN / "ray"), "start", "--block", "--address", self.address]
            cmd += ["--node-ip-address", f"127.0.0.{i + 2}", "--disable-usage-stats"]
            cmd += ["--num-cpus", str(resources.get("cpus", 2))]
            cmd += ["--num-gpus", str(resources.get("gpus", 0))]
            cmd += ["--resources", json.dumps({f"node_{name}": 1})]
            cmd += ["--object-store-memory", "100000000"]
            # One at a time: nodes on one IP that start together can take each other's
            # registration for their own.
            self._spawn(name, cmd, isolated=True)
            _wait(lambda name=name: name in self.node_ids(), f"node {name}",
                  self.folder / f"{name}.log", process=self.nodes[name].process)  # fmt: skip

    def _spawn(self, name: str, cmd: list[str], isolated: bool) -> None:
        cache = self.folder / f"cache-{name}"
        env = {**self.env, "SKRD4AD_DATA_CACHE": str(cache)}
        if isolated:
            hidden = [*self.hidden, Path("/tmp/ray")]
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in hidden)
            script = f"{mounts} && exec {shlex.join(cmd)}"
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nodes[name] = Node(name, process, cache)

    def _dashboard_up(self) -> bool:
        urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2).close()
        return True

    def node_ids(self) -> dict[str, str]:
        """{name: Ray node id} of the alive nodes (the head is ``head``)."""
        from ray.util.state import list_nodes

        out = {}
        for node in list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")]):
            names = [r[len("node_") :] for r in node.resources_total if r.startswith("node_")]
            out[names[0] if names else "head"] = node.node_id
        return out

    def diagnose(self) -> str:
        """What a hung run waits on: Ray's live actors and placement groups, and the
        stacks of every node's processes."""
        from ray.util.state import list_actors, list_placement_groups

        lines = []
        try:
            actors = list_actors(address=self.dashboard, filters=[("state", "!=", "DEAD")])
            lines += [f"actor {a.class_name} {a.state} node={a.node_id}" for a in actors]
            groups = list_placement_groups(address=self.dashboard, detail=True)
            lines += [f"placement group {g.name} {g.state} {g.bundles}" for g in groups
                      if g.state != "REMOVED"]  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the state API may be what hangs
            lines.append(f"Ray state API: {exc!r}")
        pids = [n.process.pid for n in self.nodes.values()]
        return "\n".join(lines) + "\n" + stacks(pids)

    def kill(self, name: str) -> None:
        """The node dies at once, as a lost machine would: every process of it."""
        kill_family(self.nodes.pop(name).process.pid, timeout=30)

    def stop(self) -> None:
        """Every node's processes killed, then `ray stop`, as a user ends a cluster: it
        also forgets the head's address, which `ray start --head` left for "auto" lookups
        (Ray Train's placement-group cleaner in a later local Ray would try it)."""
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                self.kill(name)
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=self.env, capture_output=True, timeout=120
        )
