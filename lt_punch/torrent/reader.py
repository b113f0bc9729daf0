"""An async, seekable reader of one file of a torrent, while it downloads.

``reader = TorrentReader(session, infohash, file_index)``; ``await reader.read(n)``
returns up to ``n`` bytes at the position (fewer only at the end of the file) and waits
for the pieces it needs: each missing piece gets a piece deadline, libtorrent hands its
bytes over when it is checked (no polling), and the next ``readahead`` pieces get
deadlines too, so that a sequential reader (a player) finds them ready. ``seek`` moves
the window. The piece under the position is kept in memory, so small reads cost one
piece read.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from ..errors import LtPunchError

READAHEAD_PIECES = 8
"""Pieces after the current one that get (later) deadlines."""

DEADLINE_STEP_MS = 500
"""Deadline spacing of the read-ahead pieces: piece i+k is wanted in k x this."""


class TorrentReader:
    """Read file ``file_index`` of torrent ``infohash`` in ``session`` (needs metadata)."""

    def __init__(self, session: Any, infohash: str, file_index: int, *,
                 readahead: int = READAHEAD_PIECES) -> None:
        torrent = session.torrents.get(infohash)
        if torrent is None:
            raise LtPunchError(f"unknown torrent {infohash}")
        ti = torrent.handle.torrent_file()
        if ti is None:
            raise LtPunchError(f"torrent {infohash} has no metadata yet")
        files = ti.layout()
        if not 0 <= file_index < files.num_files():
            raise LtPunchError(f"file {file_index} out of range (0..{files.num_files() - 1})")
        self._session = session
        self._torrent = torrent
        self._handle = torrent.handle
        self._ti = ti
        self.infohash = infohash
        self.file_index = file_index
        self.name = files.file_path(file_index)
        self.size: int = files.file_size(file_index)
        self._file_offset: int = files.file_offset(file_index)
        self._piece_length: int = ti.piece_length()
        self._readahead = readahead
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self._held: set[int] = set()
        """Pieces this reader gave deadlines (its current window)."""

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (``SEEK_SET``, ``SEEK_CUR``, ``SEEK_END``); returns it."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"bad whence {whence!r}")
        position = base + offset
        if position < 0:
            raise ValueError(f"negative position {position}")
        self._pos = position
        return position

    def piece_at(self, position: int) -> int:
        """The torrent piece holding byte ``position`` of the file."""
        return (self._file_offset + position) // self._piece_length

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all the rest when ``n`` < 0) from the position; b"" at EOF."""
        left = self.size - self._pos
        if left <= 0 or n == 0:
            return b""
        want = left if n < 0 else min(n, left)
        chunks = []
        while want > 0:
            absolute = self._file_offset + self._pos
            piece, start = divmod(absolute, self._piece_length)
            data = await self._piece(piece)
            chunk = data[start:start + want]
            if not chunk:
                raise LtPunchError(f"piece {piece} is shorter than expected")
            chunks.append(chunk)
            self._pos += len(chunk)
            want -= len(chunk)
        return b"".join(chunks)

    async def _piece(self, piece: int) -> bytes:
        if self._cached is not None and self._cached[0] == piece:
            return self._cached[1]
        last = self.piece_at(self.size - 1) if self.size else piece
        window = range(piece, min(last, piece + self._readahead) + 1)
        # A seek leaves the old window behind: its deadlines, already due, would come
        # before this read's in libtorrent's time-critical queue.
        self._release(keep=set(window))
        for ahead in window:
            self._hold(ahead)
            if ahead != piece and not self._handle.have_piece(ahead):
                self._handle.set_piece_deadline(ahead, (ahead - piece) * DEADLINE_STEP_MS)
        # read_piece gives the piece itself the most urgent deadline.
        data: bytes = await self._session.read_piece(self.infohash, piece)
        self._cached = (piece, data)
        return data

    def _hold(self, piece: int) -> None:
        if piece not in self._held:
            self._held.add(piece)
            holders = self._torrent.deadline_holders
            holders[piece] = holders.get(piece, 0) + 1

    def _release(self, keep: Collection[int] = ()) -> None:
        """Drop this reader's deadlines outside ``keep``; a piece another reader still
        holds keeps its deadline."""
        holders = self._torrent.deadline_holders
        for piece in [p for p in self._held if p not in keep]:
            self._held.discard(piece)
            count = holders.get(piece, 1) - 1
            if count > 0:
                holders[piece] = count
                continue
            holders.pop(piece, None)
            if not self._handle.have_piece(piece):
                self._handle.reset_piece_deadline(piece)

    def close(self) -> None:
        """Drop this reader's piece deadlines; the pieces stay wanted at their
        priority. Idempotent."""
        self._cached = None
        self._release()


__all__ = ["TorrentReader"]
