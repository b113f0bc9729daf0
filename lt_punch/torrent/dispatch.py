"""libtorrent's alerts about torrents, turned into torrent state and typed events."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import libtorrent as lt

from ..punch.engine import PunchEngine
from ..punch.lt_dialer import DONE_MESSAGES, alert_endpoint
from . import native, settings
from .events import Event, Finished, MetadataReceived, PieceFinished, TorrentError
from .handle import Torrent, infohash_of
from .stall import PeerWatch

logger = logging.getLogger(__name__)

_TORRENT_ALERTS = (lt.state_changed_alert, lt.torrent_finished_alert, lt.piece_finished_alert,
                   lt.metadata_received_alert, lt.peer_disconnected_alert,
                   lt.torrent_error_alert, lt.file_error_alert)


class AlertDispatch:
    """Subscribed to the alert pump: updates torrents, publishes events.

    Args:
        torrents: the session's torrents by infohash.
        engine: told about lost connections (a punched TCP path is punched again).
        peers: told about closed connections (``peer-disconnected`` events).
        emit: the session's event sink.
        port_mappings: libtorrent's UPnP / NAT-PMP results, kept up to date here.
        listening: libtorrent's listen sockets, ``(address, "tcp"|"udp") -> port``,
            kept up to date here (one per interface when it listens on a wildcard).
    """

    def __init__(self, torrents: Mapping[str, Torrent], engine: PunchEngine,
                 peers: PeerWatch, emit: Callable[[Event], None],
                 port_mappings: dict[tuple[str, str], dict[str, Any]],
                 listening: dict[tuple[str, str], int]) -> None:
        self._torrents = torrents
        self._engine = engine
        self._peers = peers
        self._emit = emit
        self._port_mappings = port_mappings
        self._listening = listening

    def __call__(self, alert: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("alert %s: %s", alert.what(), alert.message())
        if isinstance(alert, lt.portmap_alert | lt.portmap_error_alert):
            key, mapping = native.port_mapping(alert)
            self._port_mappings[key] = {k: v for k, v in mapping.to_dict().items()
                                        if k != "type"}
            self._emit(mapping)
            return
        if isinstance(alert, lt.listen_succeeded_alert):
            kind = "udp" if alert.socket_type == lt.socket_type_t.udp else "tcp"
            self._listening[(str(alert.address), kind)] = int(alert.port)
            return
        if not isinstance(alert, _TORRENT_ALERTS):
            return
        t = self._torrents.get(infohash_of(alert.handle))
        if t is None:
            return
        if isinstance(alert, lt.state_changed_alert):
            if int(alert.state) in settings.READY_STATES:
                t.ready.set()
            else:
                t.ready.clear()
        elif isinstance(alert, lt.torrent_finished_alert):
            if not t.finished.is_set():
                t.finished.set()
                self._emit(Finished(t.infohash))
        elif isinstance(alert, lt.piece_finished_alert):
            if t.listened:
                t.publish(PieceFinished(t.infohash, int(alert.piece_index)))
        elif isinstance(alert, lt.metadata_received_alert):
            ti = alert.handle.torrent_file()
            if t.listened and ti is not None:
                t.publish(MetadataReceived(t.infohash, ti.name(), ti.num_files(),
                                           ti.total_size()))
        elif isinstance(alert, lt.peer_disconnected_alert):
            ep = alert_endpoint(alert)
            reason = alert.error.message()
            if ep is not None:
                self._peers.disconnected(t.infohash, ep, reason)
            if ep is not None and reason not in DONE_MESSAGES:
                self._engine.connection_lost(t.infohash, ep, reason,
                                             repunch=not t.finished.is_set())
        elif t.error is None:  # torrent_error_alert | file_error_alert
            # A full disk is a file_error_alert only: libtorrent then puts the
            # torrent in upload mode and retries much later, which looks like a stall.
            t.error = (f"{alert.filename()}: {alert.error.message()}"
                       if isinstance(alert, lt.file_error_alert) else alert.message())
            self._emit(TorrentError(t.infohash, t.error))
