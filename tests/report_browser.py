"""Open a local HTML file in headless Chromium with the network cut off, through the DevTools
protocol (websocket-client): collect console errors, exceptions, failed loads and every
request made, check each <img>, run a script in the page and write a screenshot, of the
whole page or of each section, at a desktop's or a phone's width."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

# Debian's package names the binary chromium; other distributions vary.
BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
    # Nothing leaves the machine: every host name resolves to nothing, any proxy use fails.
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--window-size=1400,1000", "--remote-debugging-port=0", "--remote-allow-origins=*",
]
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
    src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"""
# Each <h2> section: its id and where it starts and ends on the page (the next <h2>, or the page's end).
SECTIONS_JS = """(() => { const heads = Array.from(document.querySelectorAll('h2[id]'));
  const top = e => e.getBoundingClientRect().top + window.scrollY;
  return heads.map((h, i) => ({id: h.id, top: Math.floor(top(h)),
    bottom: Math.ceil(i + 1 < heads.length ? top(heads[i + 1]) : document.documentElement.scrollHeight)})); })()"""
PHONE_WIDTH = 390  # CSS pixels, as a phone's browser lays a page out


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BINARIES) if path), None)


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    title: str = ""
    values: dict = field(default_factory=dict)


class Browser:
    """One headless Chromium with its own empty profile; use as a context manager."""

    def __init__(self, binary: str, timeout_s: float = 60.0):
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.timeout_s = timeout_s
        port = self._wait_for_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout_s,
                                              suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def _wait_for_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode}): {self.process.stderr.read().decode()[-2000:]}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, **params) -> dict:
        """Send a command; keep the events that arrive before its answer."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event}")
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path, screenshot: Path | None = None, checks: dict[str, str] | None = None,
             width: int = 1400) -> PageReport:
        """Load a local file offline in a window `width` CSS pixels wide (a phone's below
        700); return what the page did and, with `checks` ({name: JS expression}), the value
        of each expression."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1,
                  mobile=width < 700)
        self.send("Network.emulateNetworkConditions", offline=True, latency=0,
                  downloadThroughput=-1, uploadThroughput=-1)
        self.events.clear()
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        report = PageReport(
            images=json.loads(self.evaluate(IMAGES_JS)), title=self.evaluate("document.title"),
            values={name: self.evaluate(js) for name, js in (checks or {}).items()},
        )
        time.sleep(0.3)  # late console messages (e.g. a blocked resource) arrive as events
        self.send("Runtime.evaluate", expression="1")
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                report.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                report.console_errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                report.console_errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                report.requests.append(params["request"]["url"][:80])
        if screenshot is not None:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            self.capture(screenshot, 0, size["height"], size["width"])
        return report

    def capture(self, path: Path, top: float, bottom: float, width: float) -> None:
        """A screenshot of the open page from `top` to `bottom` (CSS pixels)."""
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": top, "width": width, "height": bottom - top, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def section_screenshots(self, folder: Path, prefix: str) -> list[Path]:
        """One screenshot per <h2> section of the open page: folder/<prefix>-<section id>.png."""
        width = self.send("Page.getLayoutMetrics")["cssContentSize"]["width"]
        paths = []
        for section in self.evaluate(SECTIONS_JS):
            paths.append(folder / f"{prefix}-{section['id']}.png")
            self.capture(paths[-1], section["top"], section["bottom"], width)
        return paths

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
