"""Headless Chromium driven through the Chrome DevTools protocol, for tests of pages in a real browser.

Debian's ``chromium`` is started headless with a debugging port on 127.0.0.1 (chosen by Chromium, read
from ``DevToolsActivePort`` in its profile directory) and driven over the page's websocket with aiohttp,
which Faust already depends on. What a test needs and no more: load a URL and wait for its load event,
evaluate JavaScript, click an element with real mouse events at its position on the screen (the browser's
input pipeline, not a synthetic ``element.click()``), take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium")
#: Chromium's answers and page loads on a shared 2-core machine
TIMEOUT = 30.0


class DevToolsError(RuntimeError):
    """A protocol command failed, or the page did not get where it was asked in time."""


class Tab:
    """One page target: commands, the events they cause, and the few actions tests use."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._event = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._events.append((data["method"], data.get("params", {})))
                self._event.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a protocol command; its result, or DevToolsError."""
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self._ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, TIMEOUT)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer["result"]

    async def wait_event(self, method: str, since: int) -> dict[str, Any]:
        """The first event ``method`` after the first ``since`` events received."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for name, params in self._events[since:]:
                if name == method:
                    return params
            self._event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError(f"no {method} within {TIMEOUT} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    async def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event (scripts have run by then)."""
        since = len(self._events)
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"{url}: {result['errorText']}")
        await self.wait_event("Page.loadEventFired", since)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-like values only)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """Press and release the left mouse button in the middle of the element ``selector`` on screen."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise DevToolsError(f"nothing matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1
            )

    async def screenshot(self, path: Path, width: int, height: int) -> None:
        """A PNG of the viewport, ``width`` x ``height`` CSS pixels at scale 1."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


class Chromium:
    """A headless Chromium process with its own profile in ``directory``; :meth:`stop` ends it."""

    def __init__(self, directory: Path, *, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        profile = directory / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        self._active_port = profile / "DevToolsActivePort"
        argv = [
            CHROMIUM,
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            # nothing leaves the machine: no update checks, sync, field trials or extensions
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-field-trial-config",
            "--metrics-recording-only",
            "--mute-audio",
        ]
        if os.geteuid() == 0:
            argv.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
        argv.append("about:blank")
        self.log = directory / "chromium.log"
        self.proc = subprocess.Popen(
            argv, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def port(self) -> int:
        """The debugging port, once Chromium has written it."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise DevToolsError(
                    f"chromium exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(self._active_port.read_text().split()[0])
            if time.monotonic() > deadline:
                raise DevToolsError(f"chromium wrote no DevToolsActivePort: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    @contextlib.asynccontextmanager
    async def tab(self) -> AsyncIterator[Tab]:
        """The page Chromium opened, with its Page and Runtime domains on."""
        port = await asyncio.to_thread(self.port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as response:
            targets = json.load(response)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url, max_msg_size=0)
            tab = Tab(ws)
            try:
                await tab.send("Page.enable")
                await tab.send("Runtime.enable")
                yield tab
            finally:
                await tab.close()

    def stop(self) -> None:
        """End the browser and its helper processes (its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
