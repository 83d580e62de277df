"""A real two-node Ray cluster on loopback whose nodes share no disk where the run folder is: the head
(127.0.0.1, 2 CPUs, all held by a placement group of another job, so every trial runs on the worker) and a
worker (127.0.0.2, 2 CPUs) started in its own mount namespace (`unshare -m`) with an empty tmpfs over the
driver's runs folder. With `--storage s3://...` (a real S3 server, s3_server.py) a search completes there
and the bucket holds every trial's checkpoints; without it, the preflight names the worker and says to give
--storage, before anything is written. Last, the worker node is killed mid-trial and the head's CPUs freed:
the trials continue on the head from their checkpoints in the bucket (so that test comes last)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from normsearch.run.folder import RunFolder
from normsearch.run.records import FINISHED

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
# The shared tiny budget with fewer images; a run that trains sets its own epochs.
SMALLER = {"train.epochs": None, "data.n_train": 200, "data.n_val": 40, "data.n_test": 40}

pytestmark = pytest.mark.slow  # needs `unshare -m` and `mount` (root), as the test machines have


def _ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_flags(ip: str, temp: Path) -> list[str]:
    """Every port a node listens on, picked free (other Ray instances may run on this machine)."""
    node, objects, agent, agent_grpc, metrics, runtime_env = _ports(6)
    low = _ports(1)[0]
    return [
        f"--node-ip-address={ip}", f"--node-manager-port={node}", f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={low}", f"--max-worker-port={low + 40}", "--object-store-memory=80000000",
        "--disable-usage-stats", "--include-log-monitor=false", "--block", f"--temp-dir={temp}",
    ]  # fmt: skip


# Another job on the head: a placement group holding all its CPUs (and no process) until told on stdin,
# then ended with its driver; it prints the nodes' ids. Ray's `node:__internal_head__` pins it to the head.
HOLD_HEAD = """
import json, sys, time, ray
from ray.util.placement_group import placement_group, placement_group_table
ray.init(address=sys.argv[1], log_to_driver=False)
pg = placement_group([{"CPU": 2, "node:__internal_head__": 0.01}])
for _ in range(240):
    if placement_group_table(pg)["state"] == "CREATED": break
    time.sleep(0.25)
else: raise SystemExit(f"the head's CPUs were not reserved: {ray.nodes()}")
nodes = {"node:__internal_head__" in n["Resources"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
print(json.dumps({"head": nodes[True], "worker": nodes[False]}), flush=True)
sys.stdin.read()
"""


@dataclass
class Cluster:
    address: str
    runs: Path  # where the driver keeps run folders; an empty tmpfs on the worker
    env: dict[str, str]
    processes: list[subprocess.Popen]  # the head's and the worker's `ray start --block`
    holder: subprocess.Popen  # HOLD_HEAD, holding the head's CPUs
    head_id: str
    worker_id: str

    def free_head(self) -> None:
        """End the job holding the head's CPUs: trials can be placed on the head from now on."""
        if self.holder.poll() is None:
            self.holder.stdin.close()
            self.holder.wait(timeout=60)

    def kill_worker(self) -> None:
        """The worker node dies: its raylet SIGKILLed first, then (in the same sweep, as a lost machine
        would) every other process of the node, so that no orphaned trial worker goes on training."""
        node = psutil.Process(self.processes[1].pid)
        tree = [*node.children(recursive=True), node]
        tree.sort(key=lambda p: p.name() != "raylet")
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        self.processes[1].wait(timeout=60)


def _stop(process: subprocess.Popen) -> None:
    """End one `ray start --block` and every process it started (by pid; no global `ray stop`)."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _came_up(env: dict[str, str], address: str, count: int, node: subprocess.Popen) -> bool:
    """Whether the cluster reaches `count` alive nodes while `node` (the `ray start` just run) lives.
    Under load a raylet can die at start-up (it waits a fixed 15 s for its dashboard agent; ray-project/ray
    issue 65983), so the caller starts the node again."""
    code = (
        f"import ray, time; ray.init(address={address!r}, log_to_driver=False)\n"
        "for _ in range(240):\n"
        f"    if sum(n['Alive'] for n in ray.nodes()) >= {count}: break\n"
        "    time.sleep(0.5)\n"
        "else: raise SystemExit('nodes missing')"
    )
    checker = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while checker.poll() is None:
            if node.poll() is not None:
                return False
            time.sleep(0.5)
        return checker.returncode == 0 and node.poll() is None
    finally:
        if checker.poll() is None:
            checker.kill()
            checker.wait()


def _start(
    command: Callable[[], list[str]], env: dict[str, str], address: str, count: int
) -> subprocess.Popen:
    log = Path(env["NORMSEARCH_TEST_LOGS"]) / f"node{count}.log"
    for _ in range(3):
        with log.open("w") as out:
            node = subprocess.Popen(command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        if _came_up(env, address, count, node):
            return node
        _stop(node)
    tail = "\n".join(line for line in log.read_text().splitlines() if not line.startswith(" "))[-2000:]
    raise AssertionError(f"a Ray node did not start three times: {command()}\n{tail}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    runs = base / "runs"
    runs.mkdir()
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    # A killed node is marked dead after 5 failed health checks; 1 s apart (not 3) when a check's RPC is
    # refused, as a dead raylet's is (a slow one still has the 10 s timeout of each check).
    env["RAY_health_check_period_ms"] = "1000"
    env.pop("RAY_ADDRESS", None)
    # normsearch's own "0" (search/ray.py, set by tests/conftest.py) makes `ray start` refuse to join a node.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env["NORMSEARCH_TEST_LOGS"] = str(base)
    gcs = _ports(1)[0]
    address = f"127.0.0.1:{gcs}"
    temp = Path(f"/tmp/nsr{os.getpid()}")  # short: Ray's unix socket paths must fit 107 bytes
    processes: list[subprocess.Popen] = []
    holder = None
    try:
        head = ["ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=false"]
        processes.append(_start(lambda: [*head, *_node_flags("127.0.0.1", temp / "h")], env, address, 1))
        join = f"ray start --address={address} --num-cpus=2"

        def worker() -> list[str]:  # its own mount namespace: an empty tmpfs where the driver's runs are
            flags = " ".join(_node_flags("127.0.0.2", temp / "w"))
            script = f"mount -t tmpfs tmpfs {runs} && exec {join} {flags}"
            return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]

        processes.append(_start(worker, env, address, 2))
        holder = subprocess.Popen([sys.executable, "-c", HOLD_HEAD, address], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = holder.stdout.readline()
        assert line, "the job holding the head's CPUs did not start"
        ids = json.loads(line)
        yield Cluster(address, runs, env, processes, holder, ids["head"], ids["worker"])
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


def _normsearch(cluster: Cluster, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normsearch", *args], env=cluster.env, cwd=cwd, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def test_without_storage_the_preflight_names_the_node_that_cannot_see_the_run_folder(cluster, tiny) -> None:
    out = cluster.runs / "no-storage"
    for extra in (["--dry-run", "--no-estimate"], []):
        done = _normsearch(cluster, "run", QUICK, "--address", cluster.address, "--output", str(out),
                           *tiny.but(SMALLER), *extra)  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        assert len(errors) == 1, done.stderr[-3000:]
        assert re.search(r"^error: node 127\.0\.0\.2 .*cannot see .*runs.* give --storage", errors[0]), errors
        assert "Traceback" not in done.stdout + done.stderr
        assert not out.exists()
        assert not [p for p in cluster.runs.iterdir() if p.name.startswith(".normsearch-nodes-")]


def test_a_search_with_s3_storage_completes_on_the_two_nodes(cluster, s3, tiny) -> None:
    out = cluster.runs / "with-storage"
    done = _normsearch(
        cluster, "run", QUICK, "--address", cluster.address, "--output", str(out), "--storage",
        f"s3://{s3.bucket}/cluster", "--num-samples", "2", "--max-concurrent", "2", "--set",
        "train.epochs=1", *tiny.but(SMALLER),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = RunFolder(out).records()
    finished = sorted({r["trial_id"] for r in records if r["status"] in FINISHED})
    assert len(finished) == 2
    workers = {cluster.worker_id}
    assert {r.get("node_id") for r in records if r["status"] in FINISHED} <= workers  # trained on the worker
    keys = s3.keys_under("cluster/with-storage/tune/")
    trained = {
        m.group(1) for k in keys if (m := re.search(r"/attempt-1/([^/]+)/checkpoint_\d+/state\.pt$", k))
    }
    assert sorted(trained) == finished, keys


def test_a_data_root_missing_on_a_node_is_named_before_anything_runs(
    cluster, s3, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(
        cluster.runs / "pacs", ["art", "photo"], ["dog", "cat"], 6
    )  # tmpfs on the worker
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(json.dumps({
        "name": "folder", "model": {"backbone": {"preset": "resnet-mini"}},
        "data": {"dataset": "folder", "root": str(root), "size": 16, "source": "art", "select": ["photo"],
                 "test": [], "val_fraction": 0.2, "test_fraction": 0.2},
        "search": {"space": "quickstart", "algorithm": "grid", "num_samples": 1},
    }))  # fmt: skip
    env = {**cluster.env, "NORMSEARCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "normsearch", "run", str(recipe), "--dry-run", "--no-estimate",
         "--address", cluster.address, "--output", str(tmp_path / "out"), "--storage", f"s3://{s3.bucket}/folder"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(rf"^error: node 127\.0\.0\.2 .*data\.root {re.escape(str(root))}: not there", errors[0])


def _records_when(out: Path, predicate, seconds: float = 300.0) -> list[dict]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        records = RunFolder(out).records() if (out / "trials.jsonl").is_file() else []
        if predicate(records):
            return records
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting on {out}")


# Last in this module: it kills the fixture's worker node.
def test_a_lost_worker_node_s_trials_continue_on_the_head_from_their_checkpoints_in_s3(
    cluster, s3, tiny
) -> None:
    out = cluster.runs / "lost-node"
    epochs = 3
    log = out.parent / "lost-node.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-m", "normsearch", "run", QUICK, "--address", cluster.address, "--output",
             str(out), "--storage", f"s3://{s3.bucket}/lost", "--num-samples", "2", "--max-concurrent", "2",
             "--set", f"train.epochs={epochs}", *tiny.but(SMALLER)],
            env=cluster.env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # A result is recorded just before Tune registers the checkpoint that came with it (its `save`
        # task): at epoch 2 the epoch-1 checkpoint is surely Tune's to restore from. A trial computes its
        # next epoch only once the driver has taken this one, so none can have finished.
        before = _records_when(out, lambda rs: any(r["status"] == "running" and r["epoch"] >= 2 for r in rs))
        cluster.kill_worker()
        cluster.free_head()
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert not [r for r in before if r["status"] in FINISHED]  # killed mid-trial
    records = RunFolder(out).records()
    finished = Counter(r["trial_id"] for r in records if r["status"] in FINISHED)
    assert len(finished) == 2 and set(finished.values()) == {1}, finished  # each trial ended once
    resumed = 0
    for tid in finished:
        mine = [r for r in records if r["trial_id"] == tid]
        nodes = [r.get("node_id") for r in mine]
        lost = nodes.count(cluster.worker_id)  # its records from the worker, then only the head's
        assert lost and nodes == [cluster.worker_id] * lost + [cluster.head_id] * (len(mine) - lost), nodes
        reached, continued = mine[lost - 1]["epoch"], mine[lost:]
        if reached < 2:
            continue  # its epoch-1 checkpoint may not have been Tune's yet when the node died
        first = continued[0]
        assert first["status"] == "running" and 1 <= first["resumed_from"] <= reached, continued
        # continued from its checkpoint in the bucket: the epochs after it, each once, none trained twice
        ran = [r["epoch"] for r in continued if r["status"] == "running"]
        assert ran == list(range(first["resumed_from"] + 1, epochs + 1)), continued
        assert continued[-1]["status"] == "complete" and continued[-1]["epoch"] == epochs
        resumed += 1
    assert resumed  # (the trial whose epoch 2 was waited for, at least)
    assert not (out / "tune").exists()  # the head read the checkpoints from the bucket, not a disk
    keys = s3.keys_under("lost/lost-node/tune/")
    for tid in finished:  # each trial's last checkpoint, written on the head, is in the bucket
        found = [k for k in keys if re.search(rf"/attempt-1/{re.escape(tid)}/checkpoint_\d+/state\.json$", k)]
        assert len(found) == 1, keys
        assert f"{found[0].rpartition('/')[0]}/state.pt" in keys, keys
        body = s3.client().get_object(Bucket=s3.bucket, Key=found[0])["Body"].read()
        assert json.loads(body) == {"epoch": epochs}
