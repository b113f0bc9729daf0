"""A punched TCP connection that is lost mid-download is punched again (root).

libtorrent redials a lost peer by itself, but a plain dial to a peer behind a
port-restricted NAT is dropped there: the download stalled for good (over 100 s seen)
until the session learned to punch again. It also needs every dial from the one
outgoing port whoami mapped (libtorrent alternated two ports)."""

from __future__ import annotations

from typing import Any

from lt_punch.netlab.scenario import make_payload, read_events

from .conftest import PortPair

SIZE = 30 << 20


def test_a_lost_tcp_punch_is_punched_again(port_pair: PortPair) -> None:
    room, lab = port_pair, port_pair.lab
    torrent, digest = make_payload(room.base, SIZE)
    events: list[dict[str, Any]] = []
    with room.mid_download(torrent, "tcp", events) as (leech, punched):
        assert punched["event"] == "punched" and punched["method"] == "tcp", punched
        # Abort the leech's TCP connection to the seed (SOCK_DESTROY): the leech's
        # kernel forgets it, the seed gets a reset.
        killed = lab.run("l", ["ss", "-K", "dst", lab.host("s").public_ip], check=False)
        assert "ESTAB" in killed.stdout, killed
        events.clear()
        lost = read_events(leech, "connection-lost", 10.0, events)
        again = read_events(leech, ("punched", "punch-failed"), 30.0, events)
        done = read_events(leech, ("done", "error"), 60.0, events)
    assert lost["method"] == "tcp", lost
    assert again["event"] == "punched" and again["method"] == "tcp", again
    # Punched from the same public endpoint as the first time: the one port.
    assert again["endpoint"] == punched["endpoint"]
    assert done["event"] == "done" and done["sha256"] == digest, done
