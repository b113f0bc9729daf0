"""A headless Chromium (the Debian package) driven over the DevTools protocol, for the
tests that need a real browser. One page per :class:`Browser`; every wait has a timeout.

    async with Browser.launch(tmp_path) as browser:
        await browser.goto(url)
        value = await browser.evaluate("document.title")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, ws: Any) -> None:
        self.proc = proc
        self.ws = ws
        self.session: str | None = None
        self.console: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path,
                     timeout: float = 30.0) -> AsyncIterator[Browser]:  # noqa: ASYNC109
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--autoplay-policy=no-user-gesture-required", "--mute-audio",
            "--no-first-run", "--no-default-browser-check",
            # Nothing leaves this machine: no update checks, sync or field trials.
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--disable-default-apps", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        browser = None
        try:
            assert proc.stderr is not None
            async with asyncio.timeout(timeout):
                while True:
                    line = (await proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        raise BrowserError("chromium exited before it listened")
                    match = re.search(r"DevTools listening on (ws://\S+)", line)
                    if match:
                        break
            # Keep reading stderr so that chromium never blocks on a full pipe.
            drain = asyncio.ensure_future(_drain(proc.stderr))
            ws = await websockets.connect(match.group(1), max_size=64 << 20)
            browser = cls(proc, ws)
            target = await browser.send("Target.createTarget", url="about:blank")
            attached = await browser.send("Target.attachToTarget",
                                          targetId=target["targetId"], flatten=True)
            browser.session = attached["sessionId"]
            await browser.send("Runtime.enable")
            await browser.send("Page.enable")
            yield browser
        finally:
            if browser is not None:
                browser._reader.cancel()
                await asyncio.gather(browser._reader, return_exceptions=True)
                await browser.ws.close()
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            with contextlib.suppress(NameError):
                drain.cancel()

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(BrowserError(str(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in args))
            elif "method" in message:
                self._events.setdefault(message["method"], asyncio.Queue()).put_nowait(
                    message.get("params", {}))

    async def send(self, method: str, timeout: float = 30.0,  # noqa: ASYNC109
                   **params: Any) -> Any:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send(json.dumps(message))
        async with asyncio.timeout(timeout):
            return await future

    async def goto(self, url: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        loaded = self._events.setdefault("Page.loadEventFired", asyncio.Queue())
        while not loaded.empty():
            loaded.get_nowait()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(timeout):
            await loaded.get()

    async def evaluate(self, expression: str,
                       timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        """The value of a JavaScript expression (a promise is awaited)."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description")
                               or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, condition: str,
                       timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        """Wait in the page until the JavaScript ``condition`` is truthy; its value."""
        ms = int(timeout * 1000)
        return await self.evaluate(
            "new Promise((resolve, reject) => { const end = Date.now() + " + str(ms) + ";"
            " const check = () => { let v; try { v = (" + condition + "); } catch (e) {}"
            " if (v) resolve(v); else if (Date.now() > end)"
            " reject(new Error('timed out waiting for: ' + " + json.dumps(condition) + "));"
            " else setTimeout(check, 50); }; check(); })", timeout=timeout + 5)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
