"""A torrent of a session (:class:`Torrent`), and how one is named and added."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from ..errors import ConfigError, LtPunchError, LtTimeoutError
from ..punch.record import PunchRecord, PunchState
from . import native, requests
from .alerts import AlertPump
from .events import EventStream, TorrentEvent
from .reader import PieceClaims, TorrentReader
from .settings import state_name

if TYPE_CHECKING:
    from .session import EnhancedTorrentSession


@dataclass
class Torrent:
    """A torrent in an :class:`~lt_punch.torrent.session.EnhancedTorrentSession`."""

    infohash: str
    handle: lt.torrent_handle
    punches: dict[str, PunchRecord] = field(default_factory=dict)
    """Punch records by peer id (kept by the session's punch engine)."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the torrent accepts peer connections (not queued or checking)."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    """Notified when a punch record is added or changes state."""
    error: str | None = None
    session: EnhancedTorrentSession | None = field(default=None, repr=False)
    pump: AlertPump | None = field(default=None, repr=False)
    """The session's alert pump (the torrent's requests are answered by alerts)."""
    _streams: set[EventStream[TorrentEvent]] = field(default_factory=set, repr=False)
    claims: PieceClaims = field(init=False, repr=False)
    """Piece priorities raised by readers and waiting reads."""

    def __post_init__(self) -> None:
        self.claims = PieceClaims(self.handle)

    # -- the handle API: what a media server uses ------------------------------------

    def _owner(self) -> EnhancedTorrentSession:
        if self.session is None or self.session.torrents.get(self.infohash) is not self:
            raise LtPunchError(f"torrent {self.infohash} is not in a running session")
        return self.session

    def _alerts(self) -> AlertPump:
        self._owner()
        if self.pump is None:
            raise LtPunchError(f"torrent {self.infohash} is not in a running session")
        return self.pump

    async def wait_metadata(self, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Wait until the metadata is known (at once for a .torrent file).

        Raises:
            LtTimeoutError: no metadata within ``timeout`` seconds.
        """
        await requests.metadata(self._alerts(), self.handle, self.infohash, timeout)

    async def wait_finished(self, timeout: float = 3600.0) -> None:  # noqa: ASYNC109
        """Wait until every wanted piece is downloaded *and* written to disk.

        Raises:
            LtTimeoutError: not finished within ``timeout`` seconds.
        """
        self._owner()
        try:
            async with asyncio.timeout(timeout):
                await self.finished.wait()
                await self.flush()
        except TimeoutError:
            raise LtTimeoutError(f"torrent {self.infohash} not finished after "
                                 f"{timeout:.0f} s") from None

    async def read_piece(self, piece: int, *, deadline_ms: int | None = 0,
                         timeout: float = 60.0) -> bytes:  # noqa: ASYNC109
        """The bytes of one piece, waiting for it to be downloaded (never polls).

        A piece we have is read from disk; a missing one gets a piece deadline
        (``deadline_ms`` from now, 0: most urgent) while this waits, and libtorrent hands
        its bytes over once it is downloaded and checked. The first deadline of a torrent
        with none makes libtorrent cancel the requests queued at its peers for other
        pieces (a seek then does not wait behind them). ``deadline_ms=None`` waits
        without a deadline, at the top piece priority, and cancels nothing (for reads
        that follow on from the previous one).

        Raises:
            LtPunchError: no metadata, bad piece index, or a read error.
            LtTimeoutError: not available within ``timeout``.
        """
        return await requests.read_piece(self._alerts(), self.handle, self.claims,
                                         self.infohash, piece, deadline_ms=deadline_ms,
                                         timeout=timeout)

    async def resume_data(self, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
        """libtorrent's resume data (bencoded, with the info dict when known), for
        ``lt.read_resume_data`` on a later start.

        Raises:
            LtPunchError: libtorrent could not produce it.
            LtTimeoutError: no answer within ``timeout``.
        """
        return await requests.resume_data(self._alerts(), self.handle, self.infohash, timeout)

    async def flush(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Write libtorrent's buffered blocks to disk and wait for it.

        ``torrent_finished_alert`` can come before the last pieces are readable
        from the file (FIELD-NOTES), so readers of the file flush first.

        Raises:
            LtTimeoutError: libtorrent did not confirm within ``timeout``.
        """
        await requests.flush(self._alerts(), self.handle, self.infohash, timeout)

    async def wait_punched(self, timeout: float) -> PunchRecord:  # noqa: ASYNC109
        """Wait for the first connected punch.

        Raises:
            LtTimeoutError: none within ``timeout``.
        """
        def connected() -> PunchRecord | None:
            return next((r for r in self.punches.values()
                         if r.state == PunchState.CONNECTED), None)

        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: connected() is not None)
        except TimeoutError:
            raise LtTimeoutError(f"no punched peer on {self.infohash} after "
                                 f"{timeout:g} s") from None
        rec = connected()
        assert rec is not None
        return rec

    def open(self, file: int | str = 0) -> TorrentReader:
        """An async reader (``read``, ``seek``) of one file, by index or by its path in
        the torrent; reads wait for their pieces (no polling). Needs the metadata.

        Raises:
            LtPunchError: no metadata yet, or no such file.
        """
        session = self._owner()
        if isinstance(file, str):
            ti = self.handle.torrent_file()
            if ti is None:
                raise LtPunchError(f"torrent {self.infohash} has no metadata yet")
            layout = ti.layout()
            names = [layout.file_path(i) for i in range(layout.num_files())]
            if file not in names:
                raise LtPunchError(f"no file {file!r} in torrent {self.infohash}")
            file = names.index(file)
        return session.open(self.infohash, file)

    def events(self, maxsize: int = 10_000) -> EventStream[TorrentEvent]:
        """An async iterator of this torrent's typed events (:mod:`.events`), from now
        until the torrent is removed or the session closes."""
        stream = EventStream(self._streams, maxsize)
        if self.session is None or self.session.torrents.get(self.infohash) is not self:
            stream.end()
        return stream

    @property
    def listened(self) -> bool:
        """Whether an :meth:`events` stream is open (events are built only then)."""
        return bool(self._streams)

    def publish(self, event: TorrentEvent) -> None:
        for stream in list(self._streams):
            stream.put(event)

    def end_events(self) -> None:
        for stream in list(self._streams):
            stream.end()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def stats(self) -> dict[str, Any]:
        st = self.handle.status()
        punched = {
            rec.endpoint: rec.method for rec in self.punches.values()
            if rec.state == PunchState.CONNECTED and rec.endpoint
        }
        by_source: dict[str, int] = {}
        peers = self.handle.get_peer_info()
        for p in peers:
            ep = (str(p.ip[0]), int(p.ip[1]))
            if ep in punched:
                key = f"punched_{punched[ep]}"
            else:
                names = [n for bit, n in native.SOURCE_NAMES.items() if p.source & bit]
                key = names[0] if names else "other"
            by_source[key] = by_source.get(key, 0) + 1
        return {
            "infohash": self.infohash,
            "name": st.name,
            "state": state_name(st.state),
            "paused": bool(self.handle.flags() & lt.torrent_flags.paused),
            "has_metadata": bool(st.has_metadata),
            "save_path": st.save_path,
            "progress": st.progress,
            "download_rate": st.download_payload_rate,
            "upload_rate": st.upload_payload_rate,
            "total_download": st.total_payload_download,
            "total_upload": st.total_payload_upload,
            "total_wanted": st.total_wanted,
            "num_peers": len(peers),
            "peers_by_source": by_source,
            "punches": [rec.to_dict() for rec in self.punches.values()],
            "error": self.error,
        }


def infohash_of(handle: lt.torrent_handle) -> str:
    ih = handle.info_hashes()
    if ih.has_v1():
        return str(ih.v1)
    return str(ih.v2)


def make_params(source: Any) -> lt.add_torrent_params:
    """``add_torrent_params`` from a magnet URI, .torrent path or bytes, hex infohash,
    ``torrent_info`` or params; ConfigError naming the problem otherwise."""
    if isinstance(source, lt.add_torrent_params):
        return source
    if isinstance(source, lt.torrent_info):
        atp = lt.add_torrent_params()
        atp.ti = source
        return atp
    if isinstance(source, bytes | bytearray):
        try:
            return lt.load_torrent_buffer(bytes(source))
        except RuntimeError as exc:
            raise ConfigError(f"not a valid .torrent: {exc}") from None
    if isinstance(source, Path):
        source = str(source)
    if not isinstance(source, str):
        raise ConfigError(f"cannot add a torrent from {type(source).__name__}")
    text = source.strip()
    if text.startswith("magnet:"):
        try:
            return lt.parse_magnet_uri(text)
        except RuntimeError as exc:
            raise ConfigError(f"bad magnet link: {exc}") from None
    lowered = text.lower()
    if len(lowered) in (40, 64) and all(c in "0123456789abcdef" for c in lowered):
        prefix = "urn:btih:" if len(lowered) == 40 else "urn:btmh:1220"
        return lt.parse_magnet_uri(f"magnet:?xt={prefix}{lowered}")
    if os.path.exists(text):
        if not os.path.isfile(text):
            # A FIFO would block the read forever; a directory is no .torrent either.
            kind = "a directory" if os.path.isdir(text) else "not a regular file"
            raise ConfigError(f"{text}: {kind}, not a .torrent file")
        try:
            return lt.load_torrent_file(text)
        except RuntimeError as exc:
            raise ConfigError(f"{text}: not a valid .torrent file: {exc}") from None
    raise ConfigError(f"not a magnet link, infohash or .torrent file: {text!r}")
