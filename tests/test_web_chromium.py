"""The demo workbook in headless Chromium: it renders, logs no console error (CSP violations
included), and requests nothing outside its own origin. A screenshot lands in tests/artifacts/.

Driven over the DevTools protocol with a small websocket client (wsproto, which hypercorn
already depends on).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEMO = resources.files("workbooks.samples").joinpath("demo.org").read_text("utf-8")


class Cdp:
    """A blocking DevTools protocol client: commands by id, events collected as they arrive."""

    def __init__(self, ws_url: str, timeout: float = 30):
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        u = urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{u.hostname}:{u.port}", target=u.path)))
        self.events: list[dict] = []
        self._next = 0
        self._buf: list[str] = []
        self._accepted = False
        while not self._accepted:
            self._pump()

    def _pump(self) -> list[dict]:
        from wsproto.events import AcceptConnection, CloseConnection, Ping, TextMessage

        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("devtools closed the connection")
        self.ws.receive_data(data)
        out = []
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self._accepted = True
            elif isinstance(ev, TextMessage):
                self._buf.append(ev.data)
                if ev.message_finished:
                    out.append(json.loads("".join(self._buf)))
                    self._buf = []
            elif isinstance(ev, Ping):
                self.sock.sendall(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                raise ConnectionError("devtools closed the websocket")
        return out

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        from wsproto.events import TextMessage

        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(msg))))
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in self._pump():
                if m.get("id") == self._next:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
                self.events.append(m)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.sock.settimeout(max(0.1, deadline - time.time()))
            for m in self._pump():
                self.events.append(m)
        raise TimeoutError(method)

    def drain(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.sock.settimeout(max(0.05, end - time.time()))
            try:
                self.events.extend(self._pump())
            except (socket.timeout, TimeoutError):
                break

    def close(self) -> None:
        self.sock.close()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def browser(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.fail("chromium is not installed (ops/setup.sh --test installs it)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--metrics-recording-only",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
         "--window-size=1200,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        cdp = Cdp(f"ws://127.0.0.1:{port}{path}")
        yield cdp
        try:
            cdp.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        cdp.close()
    finally:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_renders_in_chromium_without_errors_or_foreign_requests(web, browser):
    tenant, key = web.new_tenant("chrome")
    assert web.deploy(key, "chromedemo", DEMO).status_code == 200
    origin = f"http://chromedemo.{tenant}.localhost:{web.planes.public_port}"
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session=session)
    browser.call("Page.navigate", {"url": origin + "/"}, session=session)
    browser.wait_event("Page.loadEventFired")
    browser.drain(1.0)
    ev = browser.events
    requests = [e["params"]["request"]["url"] for e in ev if e.get("method") == "Network.requestWillBeSent"]
    assert requests and requests[0] == origin + "/"
    foreign = [u for u in requests if not (u.startswith(origin + "/") or u.startswith("data:"))]
    assert foreign == [], foreign
    statuses = [e["params"]["response"]["status"] for e in ev if e.get("method") == "Network.responseReceived"]
    assert statuses and statuses[0] == 200
    console_errors = [e["params"] for e in ev if e.get("method") == "Runtime.consoleAPICalled"
                      and e["params"].get("type") in ("error", "assert")]
    log_errors = [e["params"]["entry"] for e in ev if e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error"]
    exceptions = [e["params"] for e in ev if e.get("method") == "Runtime.exceptionThrown"]
    assert console_errors == [] and log_errors == [] and exceptions == [], (console_errors, log_errors, exceptions)
    title = browser.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                         session=session)["result"]["value"]
    assert title == "Workbooks demo"
    text = browser.call("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                        session=session)["result"]["value"]
    assert "Welcome" in text and "Workbooks serves" in text
    shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    png = base64.b64decode(shot)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "web_demo_chromium.png").write_bytes(png)


def _open(browser, url: str) -> str:
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session=session)
    browser.call("Page.navigate", {"url": url}, session=session)
    deadline = time.time() + 60
    while True:  # the load is complete when the document says so (robust on a busy machine)
        state = browser.call("Runtime.evaluate", {"expression": "location.href + ' ' + document.readyState",
                                                  "returnByValue": True}, session=session)["result"]["value"]
        if state == url + " complete":
            break
        assert time.time() < deadline, state
        time.sleep(0.1)
    browser.drain(0.5)
    return session


def test_images_load_under_the_public_planes_csp(web, browser):
    """A `data:` image and a same-origin image both show: the header CSP is the page's own policy."""
    import re

    from workbooks.web_public.app import FAVICON

    tenant, key = web.new_tenant("chromeimg")
    png = base64.b64encode(FAVICON).decode()
    org = ("#+TITLE: Pictures\n* Pictures\n"
           f"[[data:image/png;base64,{png}]]\n\n"
           "#+begin_export html\n<img id=\"same-origin-img\" src=\"/favicon.ico\" alt=\"icon\">\n#+end_export\n")
    assert web.deploy(key, "pictures", org).status_code == 200
    origin = f"http://pictures.{tenant}.localhost:{web.planes.public_port}"
    r = web.public_get(f"pictures.{tenant}.localhost")
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', r.text).group(1)
    assert r.headers["content-security-policy"] == meta.replace("&#x27;", "'") + "; frame-ancestors 'self'"
    session = _open(browser, origin + "/")
    got = browser.call("Runtime.evaluate", {
        "expression": "JSON.stringify([...document.images].map(i => ({src: i.src.slice(0, 40),"
                      " complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})))",
        "returnByValue": True}, session=session)["result"]["value"]
    images = json.loads(got)
    assert [i["src"][:15] for i in images] == ["data:image/png;", origin[:15]], images
    for i in images:
        assert i["complete"] and i["w"] == 16 and i["h"] == 16, i
    ev = browser.events
    violations = [e["params"]["entry"] for e in ev if e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error"]
    assert violations == [], violations
