"""Which driver holds a run, and the Ray processes it started: `driver.json` in the run folder.

A driver claims the run before it starts Ray (a second live driver on the same host is refused), records
the Ray temp folder it gives Ray and the Ray processes it started, and releases them when it ends cleanly.
After a killed driver, `resume` reads what was recorded and ends what is still alive (run/reconcile.py).
A process is known by pid *and* start time: a pid the system reused is another process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.run.files import atomic_write_text

DRIVER = "driver.json"


def process_start(pid: int) -> float | None:
    """A running process's start time; None when there is none (a zombie has ended: it only waits to be
    reaped, which an init that does not reap may never do)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class ProcessRef:
    """A process the run started, identified by pid and start time (a reused pid is another process)."""

    pid: int
    started: float
    name: str = ""

    def alive(self) -> bool:
        started = process_start(self.pid)
        return started is not None and abs(started - self.started) < 0.01


class DriverFile:
    """The driver record of a run folder (`RunFolder` inherits it): `path` is the run folder."""

    path: Path

    def driver(self) -> dict[str, Any]:
        path = self.path / DRIVER
        if not path.is_file():
            return {}
        try:
            found = json.loads(path.read_text())
        except (ValueError, OSError):
            return {}
        return found if isinstance(found, dict) else {}

    def claim(self) -> None:
        """Record this process as the run's driver; refuse when another live driver holds the run."""
        held = self.driver()
        pid = held.get("pid")
        if pid is not None and held.get("host") == socket.gethostname() and pid != os.getpid():
            owner = ProcessRef(int(pid), float(held.get("started", 0.0)))
            if owner.alive():
                raise NormsearchError(
                    f"{self.path}: driven right now by process {owner.pid}; stop it, or wait for it to end"
                )
        me = ProcessRef(os.getpid(), process_start(os.getpid()) or time.time())
        # The earlier drivers' Ray processes stay listed until `release`: resume ends the live ones.
        host = socket.gethostname()
        self._write_driver(
            {
                "pid": me.pid,
                "started": me.started,
                "host": host,
                "ray": held.get("ray", []),
                "ray_dirs": held.get("ray_dirs", []),
            }
        )

    def record_ray_dir(self, temp_dir: str) -> None:
        """Record, before this driver starts its local Ray, the temp folder it gives Ray: every process
        that Ray starts names it, so `resume` after a killed driver finds them all (run/reconcile.py)."""
        state = self.driver()
        if temp_dir not in state.setdefault("ray_dirs", []):
            state["ray_dirs"].append(temp_dir)
        self._write_driver(state)

    def recorded_ray_dirs(self) -> list[str]:
        """The Ray temp folders recorded by the run's drivers."""
        return [str(d) for d in self.driver().get("ray_dirs", []) if isinstance(d, str) and d]

    def record_processes(self, processes: list[ProcessRef]) -> None:
        """Add Ray processes this driver started (kept across calls, never duplicated)."""
        state = self.driver()
        known = {(p["pid"], p["started"]) for p in state.get("ray", [])}
        state.setdefault("ray", []).extend(
            {"pid": p.pid, "started": p.started, "name": p.name}
            for p in processes
            if (p.pid, p.started) not in known
        )
        self._write_driver(state)

    def recorded_processes(self) -> list[ProcessRef]:
        """The Ray processes recorded by the run's drivers."""
        return [
            ProcessRef(int(p["pid"]), float(p["started"]), p.get("name", ""))
            for p in self.driver().get("ray", [])
        ]

    def release(self) -> None:
        """This driver is done with the run: forget its processes (Ray ends them at shutdown)."""
        state = self.driver()
        if state.get("pid") == os.getpid():
            state["pid"] = None
            state["ray"] = []
            state["ray_dirs"] = []
            self._write_driver(state)

    def _write_driver(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / DRIVER, json.dumps(state, indent=1))
