"""Starting, joining and checking Ray: a private local Ray on loopback, or a cluster that answers in time.

A plain `ray.init()` would silently join any cluster already running on this machine, so without an address
normsearch starts its own (`address="local"`). A given address is probed with a TCP connection first, for at
most `PROBE_SECONDS`, so that an unreachable cluster is one line instead of a hang; the cluster's nodes are
then checked against the recipe's per-trial resources before anything is written.

Ray is imported inside the functions that use it, after `quiet_ray_env` (in `start_ray`) has set the
environment Ray reads when it is imported.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch

from normsearch.errors import NormsearchError
from normsearch.run.driver import ProcessRef
from normsearch.run.reconcile import end_processes, session_processes

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune's own per-trial result files stay on (result.json, progress.csv, TensorBoard events), so that
    # `ResultGrid`/`ExperimentAnalysis` and `tensorboard --logdir <run>/tune` can read every trial.
    "RAY_DEDUP_LOGS": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "2",
    # A failed trial reports its reason instead of the objectives; Tune must not reject that result.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Bound how long joining a cluster whose address answers but whose GCS does not may take.
    "RAY_gcs_rpc_server_reconnect_timeout_s": "15",
    # A local Ray's raylet otherwise starts one idle Python worker per CPU when the driver connects (and
    # `ray.init` waits for them); Tune's trial actors never use them (they start workers of their own), so
    # each was ~1.3 s of CPU and ~100 MB for nothing on a 2-core machine, at every `run`/`resume`.
    "RAY_prestart_worker_first_driver": "0",
}
PROBE_SECONDS = 15.0
REFUSED_SECONDS = 3.0


def quiet_ray_env() -> None:
    """Environment Ray reads at import: no usage stats, no auth prompt, trials keep our working dir."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def _host_port(address: str) -> tuple[str, int] | None:
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host or "127.0.0.1", int(port)


def probe_address(address: str, seconds: float = PROBE_SECONDS) -> str:
    """Check that `address` (auto | host:port | ray://host:port) leads to a listening Ray within `seconds`;
    returns the address to connect to. Raises one line saying what was tried."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError) as error:
            found = None
            detail = str(error).splitlines()[0]
        else:
            detail = "no RAY_ADDRESS and no running cluster recorded by `ray start` on this machine"
        if not found:
            raise NormsearchError(
                f"ray.address auto: no Ray cluster found ({detail}); start one or give host:port"
            )
        target = found
    else:
        target = address
    parsed = _host_port(target)
    if parsed is None:
        raise NormsearchError(f"ray.address {address}: not auto, host:port or ray://host:port")
    host, port = parsed
    start = time.monotonic()
    deadline = start + seconds
    last = ""
    while time.monotonic() < deadline:
        try:
            left = max(deadline - time.monotonic(), 0.1)
            with socket.create_connection((host, port), timeout=min(3.0, left)):
                return address
        except ConnectionRefusedError as error:
            # Nothing listens: a cluster that is starting gets a few seconds, not the whole allowance.
            last = str(error)
            if time.monotonic() - start > REFUSED_SECONDS:
                break
            time.sleep(0.5)
        except OSError as error:
            last = str(error) or type(error).__name__
            time.sleep(0.5)
    raise NormsearchError(
        f"ray.address {address}: nothing answers at {host}:{port} after {time.monotonic() - start:.0f} s "
        f"({last}); is the cluster up, and is the port its GCS port (default 6379) or its client port "
        "(10001)?"
    )


class RayStartTimeout(NormsearchError):
    """Ray did not start (or the cluster did not answer) within `ray.startup_timeout`: not bad input but a
    loaded machine, so the CLI exits 1 (with the command that continues the run), not 2."""

    exit_code = 1


class _Expired(BaseException):
    """Raised by the start-up alarm inside `ray.init` (see `_init_within`)."""


def ray_temp_dir(run: str | Path) -> str:
    """A Ray temp folder of this driver of `run` alone (short: Ray's Unix socket paths live under it and
    must stay below 108 bytes). Every process a local Ray starts (GCS, raylet, its agents, workers) carries
    it on its command line, so that one recorded before `ray.init` finds them all later (`session_processes`),
    even those started after the driver was killed."""
    digest = hashlib.sha1(f"{Path(run).resolve()}:{os.getpid()}:{time.time()}".encode()).hexdigest()[:10]
    base = tempfile.gettempdir()
    return str(Path(base if len(base) <= 24 else "/tmp") / f"nsray-{digest}")


def _init_within(kwargs: dict, timeout: float | None, what: str, temp_dir: str | None) -> None:
    """`ray.init(**kwargs)`, given up after `timeout` seconds: what it started by then is ended and
    RayStartTimeout raised.

    `ray.init` must run in the main thread: Ray ties its GCS and raylet to the thread that started them
    (``PR_SET_PDEATHSIG`` follows the creating *thread*), so a helper thread that ends kills them. The
    bound is a SIGALRM instead, whose handler raises in the main thread while `ray.init` waits; off the
    main thread (a library caller's own thread) there is no bound."""
    import ray

    if timeout is None or threading.current_thread() is not threading.main_thread():
        ray.init(**kwargs)
        return

    def expired(signum: int, frame: object) -> None:
        raise _Expired  # not an Exception: Ray's start-up code logs and swallows those

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        ray.init(**kwargs)
    except _Expired:
        if temp_dir is not None:
            end_processes(session_processes(temp_dir))
        raise RayStartTimeout(
            f"ray.startup_timeout {timeout:g} s: {what} did not start in time (a loaded machine?); "
            "raise ray.startup_timeout (or --ray-startup-timeout)"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def start_ray(
    address: str | None,
    num_cpus: int | None = None,
    timeout: float | None = None,
    temp_dir: str | None = None,
) -> bool:
    """Start a private local Ray (address None; under `temp_dir` when given) or join a cluster, within
    `timeout` seconds (None: as long as Ray takes); True when this call started Ray."""
    quiet_ray_env()
    import ray

    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        local = {"address": "local", "num_cpus": num_cpus, **common}
        if temp_dir is not None:
            local["_temp_dir"] = temp_dir
        _init_within(local, timeout, "the local Ray", temp_dir)
        return True
    probe_address(address, min(PROBE_SECONDS, timeout) if timeout else PROBE_SECONDS)
    try:
        _init_within({"address": address, **common}, timeout, f"the connection to {address}", None)
    except RayStartTimeout:
        raise
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        raise NormsearchError(
            f"ray.address {address}: cannot connect ({str(error).splitlines()[0]})"
        ) from None
    return True


def local_ray_processes() -> list[ProcessRef]:
    """Every process this driver started for its local Ray (GCS, raylet, agents, workers)."""
    import psutil

    refs = []
    for process in psutil.Process().children(recursive=True):
        try:
            refs.append(ProcessRef(process.pid, process.create_time(), process.name()))
        except psutil.Error:
            continue
    return refs


def check_local_resources(cpu: int, gpu: float) -> None:
    """Per-trial resources against this machine, for a local Ray (which would otherwise wait forever)."""
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise NormsearchError(
            f"resources.cpu: {cpu} per trial, but this machine has {cores} CPU(s); no trial could ever start "
            f"(allowed: 1-{cores})"
        )
    if gpu > 0:
        count = torch.cuda.device_count()
        if gpu > count:
            raise NormsearchError(
                f"resources.gpu: {gpu:g} per trial, but this machine has {count} GPU(s) visible to torch"
            )


def check_cluster_resources(cpu: int, gpu: float) -> None:
    """Per-trial resources against the joined cluster's nodes: some node must hold one whole trial."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if cpu > best_cpu:
        raise NormsearchError(
            f"resources.cpu: {cpu} per trial, but the largest node of the cluster has {best_cpu:g} CPU(s)"
        )
    if gpu > 0:
        best_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        if gpu > best_gpu:
            raise NormsearchError(
                f"resources.gpu: {gpu:g} per trial, but the largest node of the cluster has "
                f"{best_gpu:g} GPU(s)"
            )
