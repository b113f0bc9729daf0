"""A byte stream over one UDP path that keeps moving under random loss.

TCP and libtorrent's uTP read a lost packet as congestion: the window halves, and a
retransmission that is lost too doubles the timeout (200 ms, 400 ms, 800 ms...). On a
path that drops one packet in ten at random, both spend most of their time waiting
(measured: 20 MB over TCP at 19% loss froze at 4.3 MB in 1 run of 6; libtorrent's
uTP moved 0.14 MB/s). This module is an ARQ of our own that libtorrent reaches over a
loopback TCP connection (as the relay and the prediction bridges already carry its
data), built to tell random loss from congestion:

- every segment is numbered in the order it is *sent* as well as by its place in the
  stream; an acknowledgement names the last few segments that arrived, so a segment
  sent :data:`REORDER` or more sends before one that arrived is lost, and goes again at
  once (RACK, RFC 8985, counted in sends rather than time);
- a segment with no acknowledgement after the retransmission timeout (smoothed RTT
  plus four deviations, RFC 6298, at least :data:`MIN_RTO`) goes again; the timeout
  doubles for a segment lost again, at most :data:`MAX_BACKOFF` times, and the window
  is not reset: the path is declared dead only after :data:`DEAD_AFTER` seconds
  without a packet from the peer;
- the congestion window grows by one segment a round trip and shrinks by
  :data:`BETA` at most once a round trip, on loss or on queueing delay (an RTT more than
  :data:`DELAY_TARGET` above the lowest seen), never below :data:`MIN_WINDOW`: random
  loss costs a fifth of the window, not all of it.

Packets (network byte order; ``sid`` is the stream's random 32-bit id, anything with
another id or shape is counted and dropped)::

    DATA  0x41 | sid u32 | seq u64 | send u64 | stamp u32 | payload (<= MSS bytes)
    FIN   0x46 | sid u32 | seq u64 | send u64 | stamp u32          (end of stream)
    ACK   0x4b | sid u32 | cum u64 | window u32 | echo u32 | n u8 | n x (seq u64, send u64)
    RST   0x52 | sid u32                                             (abort)

``cum`` is the next stream segment the receiver is missing; ``window`` how many more
segments it takes; ``echo`` the ``stamp`` of the packet that caused the ACK (an RTT
sample even for a retransmission); the pairs are the last segments that arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from ..types import Address

logger = logging.getLogger(__name__)

MSS = 1200
"""Payload bytes per segment (a UDP datagram of about 1,230 bytes: no fragmentation on
any path with an MTU of 1,280 or more)."""

REORDER = 3
"""A segment is lost when one sent this many sends after it has arrived."""

MIN_RTO = 0.02
"""Lowest retransmission timeout, seconds (TCP's is 0.2 s)."""

MAX_BACKOFF = 3
"""A segment lost again waits up to 2**MAX_BACKOFF retransmission timeouts."""

DEAD_AFTER = 15.0
"""Seconds without any packet from the peer after which the stream is aborted."""

KEEPALIVE = 1.0
"""Seconds of silence after which an ACK goes anyway (window updates, NAT mappings)."""

INITIAL_WINDOW = 32
MIN_WINDOW = 16
MAX_WINDOW = 4096
"""Congestion window, in segments."""

BETA = 0.8
"""What is left of the window after a loss or a delay signal (at most one a round trip)."""

DELAY_TARGET = 0.05
"""Queueing delay (RTT above the lowest seen), seconds, read as congestion."""

MIN_RTT_WINDOW = 10.0
"""Seconds after which the lowest RTT seen is measured afresh (a path whose base delay
rose must not read as queued for good)."""

RECEIVE_WINDOW = 4096
"""Segments the receiver holds out of order or unwritten (about 4.9 MB)."""

ACK_HISTORY = 8
"""Arrivals an ACK names (so a few lost ACKs lose no information)."""

TICK = 0.005
"""Timer resolution, seconds."""

DATA, FIN, ACK, RST = 0x41, 0x46, 0x4B, 0x52
_DATA = struct.Struct("!BIQQI")
_ACK = struct.Struct("!BIQIIB")
_PAIR = struct.Struct("!QQ")
_RST = struct.Struct("!BI")


class StreamError(Exception):
    """The stream was aborted: by the peer (RST), or no packet for DEAD_AFTER seconds."""


def _stamp() -> int:
    return int(time.monotonic() * 1_000_000) & 0xFFFFFFFF


class _Segment:
    __slots__ = ("data", "fin", "lost", "retries", "send", "sent_at", "seq")

    def __init__(self, seq: int, data: bytes, fin: bool) -> None:
        self.seq = seq
        self.data = data
        self.fin = fin
        self.send = -1
        self.sent_at = 0.0
        self.retries = 0
        self.lost = False


class ArqStream:
    """One end of a stream; datagrams leave through ``send`` and arrive through
    :meth:`datagram`. :meth:`join` carries a local stream connection over it until both
    directions have ended; :attr:`stats` counts what crossed."""

    def __init__(self, sid: int, send: Callable[[bytes], None]) -> None:
        self.sid = sid
        self._send = send
        loop = asyncio.get_running_loop()
        # sender
        self._unacked: dict[int, _Segment] = {}
        self._queue: collections.deque[_Segment] = collections.deque()  # to send
        self._lost: list[int] = []  # heap: stream numbers to send again, oldest first
        self._sends: collections.deque[tuple[int, _Segment]] = collections.deque()
        self._next_seq = 0
        self._next_send = 0
        self._in_flight = 0
        self._fin_sent = False
        self._fin_acked = loop.create_future()
        self._room = asyncio.Event()
        self._room.set()
        self.window = float(INITIAL_WINDOW)
        self._ssthresh = float(MAX_WINDOW)
        self._acked_to = 0  # every segment below this one is acknowledged
        self._peer_window = RECEIVE_WINDOW
        self._cut_at = -1  # send number after which the next cut may come
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rtt = float("inf")
        self._min_rtt_at = 0.0
        # receiver
        self._expected = 0
        self._held: dict[int, bytes | None] = {}
        self._arrived: collections.deque[tuple[int, int]] = collections.deque(maxlen=ACK_HISTORY)
        self._echo = 0
        self._ack_due = False
        self._eof = False
        self._incoming: asyncio.Queue[bytes | None | Exception] = asyncio.Queue()
        self._writer_backlog: Callable[[], int] = lambda: 0
        # both
        self._closed = False
        self.done = loop.create_future()
        self.last_heard = time.monotonic()
        self._last_ack_sent = 0.0
        self.stats = {"sent": 0, "resent": 0, "received": 0, "duplicate": 0,
                      "ignored": 0, "bytes_out": 0, "bytes_in": 0}
        self._timer = loop.create_task(self._tick())

    # -- datagrams ------------------------------------------------------------------

    def datagram(self, data: bytes) -> None:
        """One datagram from the peer (anything malformed or foreign is dropped)."""
        try:
            kind, sid = data[0], int.from_bytes(data[1:5], "big")
        except IndexError:
            self.stats["ignored"] += 1
            return
        if sid != self.sid or len(data) < 5:
            self.stats["ignored"] += 1
            return
        try:
            if kind in (DATA, FIN):
                self._on_data(kind, data)
            elif kind == ACK:
                self._on_ack(data)
            elif kind == RST and len(data) == _RST.size:
                self._abort(StreamError("reset by the peer"), send_rst=False)
            else:
                self.stats["ignored"] += 1
                return
        except (struct.error, ValueError):
            self.stats["ignored"] += 1
            return
        self.last_heard = time.monotonic()

    def _on_data(self, kind: int, data: bytes) -> None:
        _, _, seq, send, stamp = _DATA.unpack_from(data)
        payload = data[_DATA.size:]
        if len(payload) > MSS or (kind == FIN and payload):
            raise ValueError("oversized segment")
        self.stats["received"] += 1
        self._echo = stamp
        self._schedule_ack()
        if seq >= self._expected + RECEIVE_WINDOW:
            # Beyond what we can hold: not acknowledged, so the sender sends it again.
            return
        self._arrived.append((seq, send))
        if seq < self._expected or seq in self._held:
            self.stats["duplicate"] += 1
            return
        self._held[seq] = None if kind == FIN else payload
        run: list[bytes] = []
        while self._expected in self._held:
            chunk = self._held.pop(self._expected)
            self._expected += 1
            if chunk is None:
                self._deliver(run)
                self._incoming.put_nowait(None)
                return
            run.append(chunk)
        self._deliver(run)

    def _deliver(self, run: list[bytes]) -> None:
        if run:
            data = b"".join(run)
            self.stats["bytes_in"] += len(data)
            self._incoming.put_nowait(data)

    def _on_ack(self, data: bytes) -> None:
        _, _, cum, window, echo, n = _ACK.unpack_from(data)
        if len(data) != _ACK.size + n * _PAIR.size:
            raise ValueError("bad ack length")
        now = time.monotonic()
        self._peer_window = window
        rtt = self._sample(((_stamp() - echo) & 0xFFFFFFFF) / 1_000_000, now) if echo else None
        newest = -1
        if cum > self._next_seq:
            raise ValueError("acknowledges what was never sent")
        # (Only the named arrivals tell which send arrived: a cumulative ack may be for
        # an earlier copy of a segment sent again since.)
        for seq in range(self._acked_to, cum):
            if seq in self._unacked:
                self._acked(seq)
        self._acked_to = max(self._acked_to, cum)
        for i in range(n):
            seq, send = _PAIR.unpack_from(data, _ACK.size + i * _PAIR.size)
            segment = self._unacked.get(seq)
            if segment is not None and segment.send == send:
                newest = max(newest, send)
                self._acked(seq)
        if newest >= 0:
            self._detect_loss(newest, now)
            if rtt is not None and rtt > self.min_rtt + DELAY_TARGET and newest > self._cut_at:
                self._cut()  # queueing delay: once a round trip, like a loss
        self._fill()

    def _acked(self, seq: int) -> None:
        segment = self._unacked.pop(seq)
        if not segment.lost:
            self._in_flight -= 1
        if self._fin_sent and not self._unacked and not self._fin_acked.done():
            self._fin_acked.set_result(None)  # everything up to the end arrived
        if self.window < self._ssthresh:
            self.window += 1.0  # slow start, until the first cut
        elif self.window < MAX_WINDOW:
            self.window += 1.0 / self.window
        self._room.set()

    def _detect_loss(self, newest: int, now: float) -> None:
        """Segments sent REORDER sends before the newest one acknowledged are lost."""
        sends = self._sends
        while sends and sends[0][0] <= newest - REORDER:
            send, segment = sends.popleft()
            if segment.send == send and segment.seq in self._unacked:
                self._lose(segment, now)

    def _lose(self, segment: _Segment, now: float) -> None:
        if not segment.lost:
            segment.lost = True
            self._in_flight -= 1
            heapq.heappush(self._lost, segment.seq)
        if segment.send > self._cut_at:  # one cut a round trip: later sends only
            self._cut()

    def _cut(self) -> None:
        self.window = max(MIN_WINDOW, self.window * BETA)
        self._ssthresh = self.window
        self._cut_at = self._next_send

    def _sample(self, rtt: float, now: float) -> float | None:
        if rtt <= 0 or rtt > 60:
            return None
        if rtt <= self.min_rtt or now - self._min_rtt_at > MIN_RTT_WINDOW:
            self.min_rtt, self._min_rtt_at = rtt, now  # (a new path's base may be higher)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        return rtt

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return 0.5
        return max(MIN_RTO, self.srtt + max(4 * self.rttvar, 0.002))

    # -- sending ----------------------------------------------------------------------

    def _fill(self) -> None:
        """Send what the window allows: retransmissions first, then new segments."""
        limit = min(int(self.window), self._peer_window + 1)
        while self._lost and self._in_flight < limit:
            segment = self._unacked.get(heapq.heappop(self._lost))
            if segment is not None and segment.lost:
                self._transmit(segment)
        while self._queue and self._in_flight < limit:
            segment = self._queue.popleft()
            if segment.seq in self._unacked and segment.send < 0:
                self._transmit(segment)

    def _transmit(self, segment: _Segment) -> None:
        now = time.monotonic()
        if segment.send >= 0:
            self.stats["resent"] += 1
        segment.lost = False
        segment.send = self._next_send
        self._next_send += 1
        segment.sent_at = now
        self._in_flight += 1
        self._sends.append((segment.send, segment))
        header = _DATA.pack(FIN if segment.fin else DATA, self.sid, segment.seq,
                            segment.send, _stamp())
        self._send(header + segment.data)
        self.stats["sent"] += 1

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer (see :meth:`drain` for flow control)."""
        if self._fin_sent:
            raise StreamError("write after end of stream")
        for i in range(0, len(data), MSS):
            segment = _Segment(self._next_seq, data[i:i + MSS], False)
            self._next_seq += 1
            self._unacked[segment.seq] = segment
            self._queue.append(segment)
        self.stats["bytes_out"] += len(data)
        if len(self._unacked) >= RECEIVE_WINDOW:
            self._room.clear()
        self._fill()

    async def drain(self) -> None:
        """Wait until fewer than RECEIVE_WINDOW segments are unacknowledged."""
        while len(self._unacked) >= RECEIVE_WINDOW:
            self._room.clear()
            if self.done.done():
                self.done.result()
                return
            await self._room.wait()

    def write_eof(self) -> None:
        """End our direction of the stream (after everything written)."""
        if self._fin_sent:
            return
        self._fin_sent = True
        segment = _Segment(self._next_seq, b"", True)
        self._next_seq += 1
        self._unacked[segment.seq] = segment
        self._queue.append(segment)
        self._fill()

    async def read(self) -> bytes | None:
        """The next chunk from the peer; None at its end of stream.

        Raises:
            StreamError: the stream was aborted.
        """
        if self._eof:
            return None
        chunk = await self._incoming.get()
        if isinstance(chunk, Exception):
            self._incoming.put_nowait(chunk)
            raise chunk
        if chunk is None:
            self._eof = True
        return chunk

    # -- acknowledgements ---------------------------------------------------------------

    def _schedule_ack(self) -> None:
        if not self._ack_due:
            self._ack_due = True
            asyncio.get_running_loop().call_soon(self._send_ack)

    def _send_ack(self) -> None:
        self._ack_due = False
        if self._closed or (self.done.done() and self.done.exception() is not None):
            return
        backlog = len(self._held) + self._incoming.qsize() + self._writer_backlog() // MSS
        window = max(0, RECEIVE_WINDOW - backlog)
        pairs = list(self._arrived)
        packet = _ACK.pack(ACK, self.sid, self._expected, window, self._echo, len(pairs))
        packet += b"".join(_PAIR.pack(seq, send) for seq, send in pairs)
        self._echo = 0
        self._send(packet)
        self._last_ack_sent = time.monotonic()

    # -- timer --------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            if now - self.last_heard > DEAD_AFTER:
                self._abort(StreamError(f"no packet from the peer for {DEAD_AFTER:g} s"))
                return
            rto = self.rto
            sends = self._sends
            while sends:
                send, segment = sends[0]
                if segment.send != send or segment.seq not in self._unacked:
                    sends.popleft()
                    continue
                if now - segment.sent_at < rto * (1 << min(segment.retries, MAX_BACKOFF)):
                    break
                sends.popleft()
                segment.retries += 1
                self._lose(segment, now)
            self._fill()
            if now - self._last_ack_sent > KEEPALIVE:
                self._send_ack()

    # -- ending -------------------------------------------------------------------------

    def _abort(self, exc: Exception, *, send_rst: bool = True) -> None:
        if send_rst:
            with contextlib.suppress(OSError):
                self._send(_RST.pack(RST, self.sid))
        self._finish(exc)

    def _finish(self, exc: Exception | None = None) -> None:
        """The stream is over. Without ``exc`` ACKs still answer the peer (its last
        ones may have been lost) until :meth:`close`."""
        self._timer.cancel()
        if exc is not None:
            self._incoming.put_nowait(exc)
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        self._room.set()

    def abort(self, reason: str = "aborted") -> None:
        """Reset the stream (the peer's end gets :class:`StreamError`)."""
        self._abort(StreamError(reason))

    async def join(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry the local connection (``reader``/``writer``) over the stream, both
        directions, half-closes passed on, until both have ended; the local connection
        is closed then. An abort (either side, or a dead path) resets it.

        Raises:
            StreamError: the stream was aborted.
        """
        transport = writer.transport
        self._writer_backlog = transport.get_write_buffer_size

        async def outbound() -> None:
            while True:
                data = await reader.read(MSS * 32)
                if not data:
                    self.write_eof()
                    await self._fin_acked
                    return
                self.write(data)
                await self.drain()

        async def inbound() -> None:
            while True:
                chunk = await self.read()
                if chunk is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                if transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
                    self._schedule_ack()  # the window opened again

        tasks = [asyncio.ensure_future(outbound()), asyncio.ensure_future(inbound())]
        try:
            pending: set[asyncio.Future[None]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(
                    pending | {self.done}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(self.done)
                for task in done:
                    if task is not self.done and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if self.done.done():
                    self.done.result()
                    break
            else:
                # Both directions ended; linger so that our last ACKs reach the peer.
                self._finish()
        except (ConnectionError, OSError) as exc:
            self._abort(StreamError(f"local connection: {exc}"))
            raise StreamError(f"local connection: {exc}") from None
        except BaseException:
            if not self.done.done():
                self._abort(StreamError("closed"))
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.done.done() and self.done.exception() is not None:
                transport.abort()
            else:
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close(self) -> None:
        """Stop the timer and stop answering (without telling the peer); idempotent."""
        self._closed = True
        self._finish()
        if not self.done.cancelled():
            self.done.exception()  # retrieved: whoever cared has seen it


class ArqSocket(asyncio.DatagramProtocol):
    """A UDP socket carrying one :class:`ArqStream` to a fixed ``peer`` endpoint
    (datagrams from elsewhere are counted and dropped). ``lossy`` (tests, benchmarks)
    decides per outgoing datagram whether it is dropped instead."""

    def __init__(self, sid: int, peer: Address | None = None,
                 lossy: Callable[[], bool] | None = None) -> None:
        self.peer = peer
        self.lossy = lossy
        self.transport: asyncio.DatagramTransport | None = None
        self.stream = ArqStream(sid, self._sendto)
        self.foreign = 0

    def _sendto(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.peer is None or (self.lossy is not None and self.lossy()):
            return
        self.transport.sendto(data, self.peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        if (str(addr[0]), int(addr[1])) != self.peer:
            self.foreign += 1
            return
        self.stream.datagram(data)

    def error_received(self, exc: Exception) -> None:
        logger.debug("arq socket: %s", exc)

    def close(self) -> None:
        self.stream.close()
        if self.transport is not None:
            self.transport.close()

    @property
    def local(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @classmethod
    async def open(cls, sid: int, local: Address, peer: Address | None = None,
                   lossy: Callable[[], bool] | None = None) -> ArqSocket:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: cls(sid, peer, lossy), local_addr=local)
        tune(transport.get_extra_info("socket"))
        return protocol


SOCKET_BUFFER = 4 << 20
"""Bytes asked for a carrying socket's receive and send buffers (a window of segments
arrives in bursts; the kernel caps the figure at ``net.core.rmem_max``)."""


def tune(sock: Any) -> None:
    """Larger buffers for a UDP socket that carries a stream (best effort)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


__all__ = ["MSS", "ArqSocket", "ArqStream", "StreamError", "tune"]
