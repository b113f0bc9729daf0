"""Alert pump: libtorrent alerts into asyncio without blocking the loop.

libtorrent writes a byte to a file descriptor when its alert queue goes from
empty to non-empty (``session.set_alert_fd``); the read end of a non-blocking
socketpair is watched with ``loop.add_reader``. Each wake-up drains the byte(s)
and pops every alert. Alert objects are only valid until the next
``pop_alerts()`` call, so subscribers must copy what they need synchronously.
(``set_alert_notify`` can deadlock from Python, per the binding docs.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import libtorrent as lt

logger = logging.getLogger(__name__)

AlertHandler = Callable[[Any], None]


class AlertPump:
    """Dispatch libtorrent alerts to subscribers on the asyncio loop."""

    def __init__(self, session: lt.session) -> None:
        self._session = session
        self._handlers: list[AlertHandler] = []
        self._waiters: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._session.set_alert_fd(self._wsock.fileno())
        self._loop.add_reader(self._rsock.fileno(), self._on_readable)
        # Alerts may already be queued (the fd is only written on empty -> non-empty).
        self._loop.call_soon(self._on_readable)

    def close(self) -> None:
        if self._loop is not None and self._rsock is not None:
            self._loop.remove_reader(self._rsock.fileno())
        with contextlib.suppress(Exception):
            self._session.set_alert_fd(-1)
        for sock in (self._rsock, self._wsock):
            if sock is not None:
                sock.close()
        self._rsock = self._wsock = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    def subscribe(self, handler: AlertHandler) -> Callable[[], None]:
        """Call ``handler(alert)`` for every alert; returns an unsubscribe function."""
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler) if handler in self._handlers else None

    def wait_for(self, predicate: Callable[[Any], Any]) -> asyncio.Future[Any]:
        """Future resolved with ``predicate(alert)``'s first truthy result.

        The predicate runs on each alert while it is valid, so it must extract and
        return plain values, not the alert itself. Cancel the future to stop waiting.
        """
        assert self._loop is not None, "pump not started"
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append((predicate, fut))
        return fut

    def _on_readable(self) -> None:
        if self._rsock is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._rsock.recv(4096):
                    pass
        try:
            alerts = self._session.pop_alerts()
        except Exception:  # pragma: no cover - session gone
            logger.exception("pop_alerts failed")
            return
        for alert in alerts:
            for handler in list(self._handlers):
                try:
                    handler(alert)
                except Exception:
                    logger.exception("alert handler %r failed on %s", handler, type(alert).__name__)
            if self._waiters:
                remaining = []
                for predicate, fut in self._waiters:
                    if fut.done():
                        continue
                    try:
                        result = predicate(alert)
                    except Exception as exc:
                        fut.set_exception(exc)
                        continue
                    if result:
                        fut.set_result(result)
                    else:
                        remaining.append((predicate, fut))
                self._waiters = remaining
