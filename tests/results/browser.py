"""Open a local page in Debian's headless Chromium with the network switched off, through the DevTools
protocol (websocket-client), and report what happened: every request the page made, console errors and
uncaught exceptions, how many plotly plots drew and with how many points, and a PNG screenshot.

Why the DevTools protocol rather than `--dump-dom`: a dumped DOM shows what the page *is*, not what it
*asked for*; the protocol sees every request (`Network.requestWillBeSent`) even when it fails because the
network is off (`Network.emulateNetworkConditions(offline=True)` plus blocked URL patterns), and every
console error. websocket-client is pure Python from PyPI; playwright would need its own browser download.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",  # a free port, written to <user-data-dir>/DevToolsActivePort
    "--remote-allow-origins=*",
    "--window-size=1280,1000",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:")


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    plots: int = 0
    drawn: int = 0  # plots with an SVG drawn by plotly
    points: int = 0  # scatter points and bars drawn
    screenshot: bytes = b""

    @property
    def remote_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class _Client:
    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        if any(e.get("method") == method for e in self.events):
            return True
        self.ws.settimeout(1.0)
        try:
            while time.monotonic() < deadline:
                try:
                    message = json.loads(self.ws.recv())
                except Exception:  # a recv timeout: keep waiting until the deadline
                    continue
                self.events.append(message)
                if message.get("method") == method:
                    return True
        finally:
            self.ws.settimeout(30)
        return False

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        return result.get("result", {}).get("value")


def visit_offline(page: Path, wait_seconds: float = 30.0) -> PageVisit:
    """Load `page` in headless Chromium with the network off and report the visit (module docstring)."""
    # Chromium's helper processes can still be writing into the profile (its Default/ folder) for a moment
    # after the browser is ended: a leftover there is not what the test checks, so cleanup may leave it.
    with tempfile.TemporaryDirectory(prefix="normsearch-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.is_file() or not port_file.read_text().strip():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("chromium did not start its DevTools endpoint")
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.loads(response.read())
            target = next(t for t in targets if t.get("type") == "page")
            client = _Client(target["webSocketDebuggerUrl"])
            for method in ("Network.enable", "Runtime.enable", "Log.enable", "Page.enable"):
                client.call(method)
            client.call(
                "Network.emulateNetworkConditions",
                offline=True,
                latency=0,
                downloadThroughput=-1,
                uploadThroughput=-1,
            )
            client.call("Network.setBlockedURLs", urls=["http://*", "https://*", "ws://*", "wss://*"])
            client.call("Page.navigate", url=page.resolve().as_uri())
            client.wait_for("Page.loadEventFired", wait_seconds)
            visit = PageVisit()
            script = (
                "(() => { const plots = document.querySelectorAll('.js-plotly-plot');"
                " const drawn = [...plots].filter(p => p.querySelector('svg.main-svg')).length;"
                " const points = document.querySelectorAll('.js-plotly-plot .point').length;"
                " return [plots.length, drawn, points]; })()"
            )
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline:
                visit.plots, visit.drawn, visit.points = client.evaluate(script)
                if visit.plots and visit.drawn == visit.plots and visit.points:
                    break
                time.sleep(0.5)
            # Plotly builds its SVG before the browser paints it: two animation frames later the plots are
            # on screen (a screenshot taken at once came out blank on a loaded machine).
            client.evaluate(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
                await_promise=True,
            )
            rect = client.evaluate(
                "(() => { const p = document.querySelector('.js-plotly-plot');"
                " if (!p) return null; const r = p.getBoundingClientRect();"
                " return [r.x + window.scrollX, r.y + window.scrollY, r.width, r.height]; })()"
            )
            shot: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
            if rect and rect[2] > 0 and rect[3] > 0:
                shot["clip"] = {"x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3], "scale": 1}
            visit.screenshot = base64.b64decode(client.call("Page.captureScreenshot", **shot)["data"])
            for event in client.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent":
                    visit.requests.append(params["request"]["url"])
                elif method == "Runtime.exceptionThrown":
                    visit.errors.append(params["exceptionDetails"].get("text", "exception"))
                elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                    visit.errors.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    visit.errors.append(params["entry"].get("text", ""))
            client.ws.close()
            return visit
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
