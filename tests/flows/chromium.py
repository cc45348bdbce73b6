"""Headless Chromium driven over the DevTools protocol (CDP), for UI checks without Playwright or npm.

Debian's ``chromium`` package (``apt-get install -y chromium``; .ci/run installs it). The browser runs in its
own process group with a throwaway profile and is killed on ``close()``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_binary() -> str | None:
    """Path of Debian's chromium (or another Chromium/Chrome on PATH), None when absent."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """One headless browser with one page; ``goto``, ``wait_for_text``, ``click_text``, ``screenshot``."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1100, start_timeout: float = 60.0):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="expdiff-chromium-")
        port = free_port()
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port {port} within {start_timeout} s")
            time.sleep(0.2)
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=2 ** 27, open_timeout=30)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"CDP {method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=True)["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 60.0) -> str:
        """The page's visible text once it holds every needle; TimeoutError showing the text otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise TimeoutError(f"page never showed {missing} within {timeout} s; it shows:\n{text[:2000]}")
            time.sleep(0.5)

    def click_text(self, label: str) -> None:
        """Click the innermost element whose visible text is exactly ``label``."""
        found = self.evaluate(
            "(() => { const hits = [...document.querySelectorAll('body *')].filter(e => e.innerText && "
            f"e.innerText.trim() === {json.dumps(label)}); const el = hits[hits.length - 1]; "
            "if (!el) return false; el.click(); return true; })()")
        if not found:
            raise LookupError(f"nothing on the page reads {label!r}")

    def images(self) -> list[dict]:
        """Every <img>: src, whether it finished loading, and its natural width (0 = failed to load)."""
        return json.loads(self.evaluate(
            "JSON.stringify([...document.images].map(i => ({src: i.src, complete: i.complete, "
            "width: i.naturalWidth})))"))

    def wait_for_image(self, src_prefix: str, timeout: float = 30.0) -> dict:
        """The loaded <img> whose src starts with ``src_prefix``; TimeoutError when none loads."""
        deadline = time.monotonic() + timeout
        while True:
            loaded = [i for i in self.images() if i["src"].startswith(src_prefix) and i["complete"] and i["width"]]
            if loaded:
                return loaded[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no image from {src_prefix} loaded within {timeout} s; images: {self.images()}")
            time.sleep(0.5)

    def screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "socket", None) is not None:
                self.socket.close()
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(15)
            shutil.rmtree(self.profile, ignore_errors=True)
