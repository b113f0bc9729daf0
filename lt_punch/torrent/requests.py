"""libtorrent's asynchronous operations as awaitables, each matched to its own alert.

libtorrent answers a request (add a torrent, read a piece, save resume data, ...) with
an alert some time later. Each function here registers a waiter on the
:class:`~lt_punch.torrent.alerts.AlertPump` *before* it makes the request, matches the
alert that belongs to this request (its torrent, its piece; for an added torrent the
infohash of the parameters it was given, so that concurrent adds each get their own
torrent), takes plain values out of it (an alert dies at the next pop) and bounds the
wait with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import libtorrent as lt

from ..errors import LtPunchError, LtTimeoutError
from .alerts import AlertPump
from .reader import WAIT_PRIORITY, PieceClaims
from .settings import state_name

T = TypeVar("T")


async def _ask(pump: AlertPump, match: Callable[[Any], T | None], request: Callable[[], Any],
               timeout: float, what: str) -> T:  # noqa: ASYNC109
    """Wait for ``match``'s first result after ``request()``; LtTimeoutError saying
    ``what`` did not come."""
    fut = pump.wait_for(match)
    try:
        request()
        async with asyncio.timeout(timeout):
            result: T = await fut
            return result
    except TimeoutError:
        raise LtTimeoutError(f"{what} after {timeout:g} s") from None
    finally:
        fut.cancel()


def _params_key(atp: Any) -> tuple[str, str]:
    ih = atp.ti.info_hashes() if atp.ti is not None else atp.info_hashes
    return str(ih.v1), str(ih.v2)


async def add(session: lt.session, pump: AlertPump, atp: lt.add_torrent_params,
              timeout: float = 30.0) -> lt.torrent_handle:  # noqa: ASYNC109
    """Add a torrent; its handle (an existing torrent's when already added).

    Raises:
        LtPunchError: libtorrent refused it.
        LtTimeoutError: no confirmation within ``timeout``.
    """
    key = _params_key(atp)

    def match(a: Any) -> tuple[str | None, Any] | None:
        if not isinstance(a, lt.add_torrent_alert) or _params_key(a.params) != key:
            return None
        return (a.error.message() if a.error.value() else None), a.handle

    error, handle = await _ask(pump, match, lambda: session.async_add_torrent(atp), timeout,
                               "libtorrent did not confirm the added torrent")
    if error is not None:
        raise LtPunchError(f"cannot add torrent: {error}")
    result: lt.torrent_handle = handle
    return result


async def delete(session: lt.session, pump: AlertPump, handle: lt.torrent_handle,
                 infohash: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Remove a torrent with its files, once libtorrent's disk thread has deleted them.

    Raises:
        LtPunchError: its files could not be deleted.
        LtTimeoutError: libtorrent did not confirm within ``timeout``.
    """
    digest = handle.info_hashes()

    def deleted(a: Any) -> tuple[str | None] | None:
        if isinstance(a, lt.torrent_deleted_alert) and a.info_hashes == digest:
            return (None,)
        if isinstance(a, lt.torrent_delete_failed_alert) and a.info_hashes == digest:
            return (a.error.message(),)
        return None

    (error,) = await _ask(pump, deleted,
                          lambda: session.remove_torrent(handle, lt.session.delete_files),
                          timeout, f"torrent {infohash} removed; its files not deleted")
    if error is not None:
        raise LtPunchError(f"torrent {infohash} removed; cannot delete its files: {error}")


async def metadata(pump: AlertPump, handle: lt.torrent_handle, infohash: str,
                   timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the torrent's metadata is known (at once when it is).

    Raises:
        LtTimeoutError: not within ``timeout``.
    """
    if handle.status().has_metadata:
        return
    # No await between the check and the waiter: an alert popped later is seen.
    await _ask(pump, lambda a: isinstance(a, lt.metadata_received_alert) and a.handle == handle,
               lambda: None, timeout, f"no metadata for {infohash}")


def why_stalled(handle: lt.torrent_handle, piece: int) -> str:
    """What a read that timed out can tell the user: the torrent's state and peers."""
    try:
        st = handle.status()
        paused = bool(handle.flags() & lt.torrent_flags.paused)
        priority = handle.piece_priority(piece)
    except RuntimeError:  # the torrent was removed meanwhile
        return "torrent removed"
    return (f"torrent {state_name(st.state)}{', paused' if paused else ''}, "
            f"{st.num_peers} peers, {st.progress:.0%} done, piece priority {priority}")


async def read_piece(pump: AlertPump, handle: lt.torrent_handle, claims: PieceClaims,
                     infohash: str, piece: int, *, deadline_ms: int | None,
                     timeout: float) -> bytes:  # noqa: ASYNC109
    """The bytes of one piece, waiting for it (see
    :meth:`~lt_punch.torrent.session.EnhancedTorrentSession.read_piece`)."""
    ti = handle.torrent_file()
    if ti is None:
        raise LtPunchError(f"torrent {infohash} has no metadata yet")
    if not 0 <= piece < ti.num_pieces():
        raise LtPunchError(f"piece {piece} out of range (0..{ti.num_pieces() - 1})")

    def extract(a: Any) -> tuple[str | None, bytes] | None:
        if not (isinstance(a, lt.read_piece_alert) and a.piece == piece
                and a.handle == handle):
            return None
        if a.error.value():
            return a.error.message(), b""
        return None, bytes(a.buffer)

    fut = pump.wait_for(extract)
    # A later set_piece_deadline on this piece (another read's) replaces ours and its
    # alert_when_available flag: the piece_finished_alert is the safety net.
    finished = pump.wait_for(
        lambda a: isinstance(a, lt.piece_finished_alert) and a.piece_index == piece
        and a.handle == handle
    )
    waiting = False
    try:
        async with asyncio.timeout(timeout):
            if handle.have_piece(piece):
                handle.read_piece(piece)
            else:
                waiting = True
                claims.claim(piece, WAIT_PRIORITY)
                if deadline_ms is not None:
                    handle.set_piece_deadline(piece, deadline_ms,
                                              lt.deadline_flags_t.alert_when_available)
                await asyncio.wait({fut, finished}, return_when=asyncio.FIRST_COMPLETED)
                if not fut.done():
                    handle.read_piece(piece)
            error, data = await fut
    except TimeoutError:
        raise LtTimeoutError(f"piece {piece} of {infohash} not available after "
                             f"{timeout:g} s ({why_stalled(handle, piece)})") from None
    finally:
        fut.cancel()
        finished.cancel()
        if waiting:
            claims.release(piece, WAIT_PRIORITY)
    if error is not None:
        raise LtPunchError(f"cannot read piece {piece}: {error}")
    return bytes(data)


async def counters(session: lt.session, pump: AlertPump, timeout: float) -> dict[str, int]:  # noqa: ASYNC109
    """libtorrent's session counters by name (``lt.session_stats_metrics()``)."""
    values: dict[str, int] = await _ask(
        pump, lambda a: dict(a.values) if isinstance(a, lt.session_stats_alert) else None,
        session.post_session_stats, timeout, "no session counters")
    return values


async def resume_data(pump: AlertPump, handle: lt.torrent_handle, infohash: str,
                      timeout: float) -> bytes:  # noqa: ASYNC109
    """A torrent's resume data, bencoded, with the info dict when known.

    Raises:
        LtPunchError: libtorrent could not produce it.
        LtTimeoutError: no answer within ``timeout``.
    """
    def extract(a: Any) -> tuple[str | None, bytes] | None:
        if isinstance(a, lt.save_resume_data_alert) and a.handle == handle:
            return None, bytes(lt.write_resume_data_buf(a.params))
        if isinstance(a, lt.save_resume_data_failed_alert) and a.handle == handle:
            return a.error.message(), b""
        return None

    error, data = await _ask(
        pump, extract, lambda: handle.save_resume_data(lt.torrent_handle.save_info_dict),
        timeout, f"no resume data for {infohash}")
    if error is not None:
        raise LtPunchError(f"cannot save resume data: {error}")
    return data


async def flush(pump: AlertPump, handle: lt.torrent_handle, infohash: str,
                timeout: float) -> None:  # noqa: ASYNC109
    """Write libtorrent's buffered blocks of a torrent to disk and wait for it."""
    await _ask(pump, lambda a: isinstance(a, lt.cache_flushed_alert) and a.handle == handle,
               handle.flush_cache, timeout, f"torrent {infohash}: no cache flush")


def merge_sources(handle: lt.torrent_handle, atp: lt.add_torrent_params) -> None:
    """Give a torrent already added the peers and trackers of a new source of it."""
    for endpoint in atp.peers:
        handle.connect_peer((str(endpoint[0]), int(endpoint[1])))
    known = {entry["url"] for entry in handle.trackers()}
    urls = list(atp.trackers) + ([t.url for t in atp.ti.trackers()] if atp.ti else [])
    for url in urls:
        if url not in known:
            handle.add_tracker({"url": url})
            known.add(url)


def destroy_session(holder: list[lt.session]) -> None:
    """Destroy the session in ``holder`` (blocks while it says goodbye to peers and
    trackers: call it in a thread)."""
    session = holder.pop()
    session.pause()
    del session
