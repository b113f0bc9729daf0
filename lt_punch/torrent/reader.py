"""An async, seekable reader of one file of a torrent, while it downloads.

``reader = TorrentReader(session, infohash, file_index)``; ``await reader.read(n)``
returns up to ``n`` bytes at the position (fewer only at the end of the file) and waits
for the pieces it needs, without polling: libtorrent hands a piece's bytes over when it
is checked. The next ``readahead`` pieces get a high priority, so that a sequential
reader (a player) finds them ready; ``seek`` moves that window. The piece under the
position is kept in memory, so small reads cost one piece read.

How a read waits, and why (measured in docs/performance.md, "Seek latency"): while any
piece has a deadline, libtorrent requests ordinary pieces only at the top priority (7),
one block at a time; and the first deadline given to a torrent with none makes it
cancel the requests queued at its peers for other pieces - seconds of data at a
seed's full queue. So deadlines live only while a read waits:

- a jump (a seek, or a reader's first read) to a missing piece waits with a deadline:
  the queued background requests are cancelled and the piece comes next;
- a read that follows on from the previous one finds its piece in the read-ahead
  window, requested before the rest, and waits at priority 7 without a deadline (a
  cancel would throw that window's requests away);
- between reads there is no deadline, and the file downloads at full speed: the
  read-ahead windows (priority 6) first, the rest of the file (4) after.

:class:`PieceClaims` keeps these raised priorities: several readers and reads may want
one piece, and it returns to its earlier priority when the last of them is done.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from ..errors import LtPunchError

READAHEAD_PIECES = 8
"""Pieces after the current one wanted before the rest of the file."""

DEFAULT_PRIORITY = 4
"""libtorrent's default piece priority: the streamed file's."""

READAHEAD_PRIORITY = 6
"""Piece priority of the read-ahead window: above the streamed file's and below
:data:`WAIT_PRIORITY`."""

WAIT_PRIORITY = 7
"""Piece priority of a piece a read waits for (a deadline gives it this priority too;
while any piece has a deadline, libtorrent requests only pieces at this priority)."""


class PieceClaims:
    """Raised piece priorities that several users may hold on one piece (readers'
    read-ahead windows, reads waiting): a piece has the highest priority claimed on it,
    and its earlier priority back when the last claim goes."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._claims: dict[int, tuple[int, list[int]]] = {}
        """piece -> (its priority before the first claim, the claimed priorities)."""

    def claim(self, piece: int, priority: int) -> None:
        if piece not in self._claims:
            self._claims[piece] = (self._handle.piece_priority(piece), [])
        self._claims[piece][1].append(priority)
        self._apply(piece)

    def release(self, piece: int, priority: int) -> None:
        """Drop one claim of ``priority`` on ``piece``. The last claim at
        :data:`WAIT_PRIORITY` also drops the piece's deadline, if any: one left behind
        would keep libtorrent in time-critical mode (see the module's text)."""
        before, claims = self._claims[piece]
        claims.remove(priority)
        if not claims:
            del self._claims[piece]
        if not self._handle.is_valid() or self._handle.have_piece(piece):
            return
        if WAIT_PRIORITY not in claims:
            self._handle.reset_piece_deadline(piece)  # if any; it leaves priority 1
        self._handle.piece_priority(piece, max(claims, default=before))

    def _apply(self, piece: int) -> None:
        before, claims = self._claims[piece]
        if not self._handle.have_piece(piece):
            self._handle.piece_priority(piece, max(before, *claims))

    def __len__(self) -> int:
        return len(self._claims)


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
        # A jump (a seek, or this reader's first read) waits with a deadline, which
        # cancels the requests queued for other pieces; a read that follows on from the
        # previous one finds its piece in the read-ahead window, already requested first,
        # and cancelling would only throw that window's requests away.
        follows_on = piece in self._held
        window = range(piece + 1, min(last, piece + self._readahead) + 1)
        self._release(keep=window)
        for ahead in window:
            self._hold(ahead)
        data: bytes = await self._session.read_piece(
            self.infohash, piece, deadline_ms=None if follows_on else 0)
        self._cached = (piece, data)
        return data

    def _hold(self, piece: int) -> None:
        if piece not in self._held:
            self._held.add(piece)
            self._torrent.claims.claim(piece, READAHEAD_PRIORITY)

    def _release(self, keep: Collection[int] = ()) -> None:
        """Give back this reader's read-ahead pieces outside ``keep``."""
        for piece in [p for p in self._held if p not in keep]:
            self._held.discard(piece)
            self._torrent.claims.release(piece, READAHEAD_PRIORITY)

    def close(self) -> None:
        """Give back this reader's read-ahead window. Idempotent."""
        self._cached = None
        self._release()


__all__ = ["PieceClaims", "TorrentReader"]
