"""A local bridge: two connected TCP sockets joined in the kernel.

A path that libtorrent's own sockets cannot carry (a TURN data connection, for one)
reaches libtorrent through a bridge: a TCP connection to libtorrent's listen port on
one side, the path on the other, and the bytes moved between them by ``splice(2)``
through a pipe, so they never enter Python. One thread per direction blocks in
``splice``; an end of stream on one side is passed on as a half-close
(``shutdown(SHUT_WR)``) to the other, and the bridge is over when both directions are.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)

CHUNK = 1 << 18
"""Bytes asked of one ``splice`` call and the pipe's size: 256 KiB (two pipes a bridge;
larger ones would use up the per-user pipe quota after a few dozen bridges)."""

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Bridge:
    """Splice ``a`` and ``b`` (connected stream sockets; the bridge owns and closes
    them) in both directions until both ends are done or :meth:`close` is called."""

    def __init__(self, a: socket.socket, b: socket.socket, name: str = "bridge") -> None:
        self.name = name
        self._socks = (a, b)
        for sock in self._socks:
            sock.setblocking(True)
        self.bytes = [0, 0]
        """Bytes moved a -> b and b -> a."""
        self.cpu = [0.0, 0.0]
        """CPU seconds of each direction's thread so far."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._left = 2
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(0, a, b), name=f"{name} a>b", daemon=True),
            threading.Thread(target=self._pump, args=(1, b, a), name=f"{name} b>a", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def done(self) -> bool:
        return self._done.done()

    async def wait(self) -> None:
        """Return when both directions have ended."""
        await asyncio.shield(self._done)

    async def close(self) -> None:
        """Stop both directions and close both sockets; returns when the threads are out."""
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await self.wait()

    def _pump(self, index: int, src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, _F_SETPIPE_SZ, CHUNK)
            while True:
                n = os.splice(src.fileno(), w, CHUNK)
                if n == 0:
                    break
                left = n
                while left:
                    left -= os.splice(r, dst.fileno(), left)
                self.bytes[index] += n
                self.cpu[index] = time.thread_time()
        except OSError as exc:
            # A reset or a close(): nothing more can cross in either direction.
            logger.debug("%s: direction %d ended: %s", self.name, index, exc)
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            self.cpu[index] = time.thread_time()
            os.close(r)
            os.close(w)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                for sock in self._socks:
                    sock.close()
                with contextlib.suppress(RuntimeError):  # the loop may be gone at exit
                    self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


__all__ = ["Bridge"]
