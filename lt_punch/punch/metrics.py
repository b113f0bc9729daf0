"""Punch counters fed by events (what ``/metrics`` exports), outliving the records."""

from __future__ import annotations

import collections

from ..torrent.events import Event, PeerPunched, PunchAttemptFailed


class PunchMetrics:
    """Punch attempts since the session started, by (method, "connected" | "failed").

    Subscribed to the session's events: monotonic, unlike the punch records of
    ``stats()`` (gone with their torrent).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, event: Event) -> None:
        if isinstance(event, PeerPunched):
            self.counts[(event.method, "connected")] += 1
        elif isinstance(event, PunchAttemptFailed):
            self.counts[(event.method, "failed")] += 1
