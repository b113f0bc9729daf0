"""The issue 13 "same-kind-pair delay": its two causes, each a session as users run it
(not isolated). First, start-up where DNS does not answer.

libtorrent starts its DHT only once its bootstrap host names have resolved, and the
session's reflector query is a DHT ping: where DNS never answered, the session learnt
its UDP endpoint 5 s late (the resolver's timeout; here 30 s, so the reflector gives
up), and destroying the session waited for the lookup as well. The lab's hosts get a
DNS server that never answers; the sessions use libtorrent's default bootstrap node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lt_punch.netlab.scenario import (
    SIGNAL_PORT,
    make_payload,
    read_events,
    read_line,
    start_agent,
    start_signaling,
)

BOOTSTRAP = "dht.libtorrent.org:25401"  # libtorrent 2.1's default


def test_start_and_exit_do_not_wait_for_dns(nat_lab: Any, tmp_path: Path) -> None:
    lab = nat_lab({"s": "port", "l": "port"})
    sink = lab.hang_dns()
    stun = lab.start_stun()
    start_signaling(lab)
    torrent, sha = make_payload(tmp_path, 1 << 20)
    url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
    extra = ["--udp-port", str(SIGNAL_PORT), "--dht-bootstrap", BOOTSTRAP,
             "--timeout", "60"]
    seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                       save=torrent.parent / "seed", peer_id="a-seed", extra=extra)
    read_events(seed, "ready", 30.0, [])
    # The setup is real: a session asks DNS for the bootstrap node, and gets nothing.
    query = json.loads(read_line(sink, '{"query": "dht.libtorrent.org"', 30.0))
    assert query == {"query": "dht.libtorrent.org"}

    leech = start_agent(lab, "l", "leech", url=url, stun=stun, torrent=torrent,
                        save=tmp_path / "leech", peer_id="b-leech", extra=extra)
    events: list[dict[str, Any]] = []
    ready = read_events(leech, "ready", 30.0, events)
    # The reflector answered while the lookup hung (it used to give up after 6 s,
    # leaving the session without its UDP endpoint: no uTP punch).
    assert ready["udp"] is not None and ready["udp"][0] == lab.host("l").public_ip
    done = read_events(leech, ("done", "error"), 60.0, events)
    assert done.get("sha256") == sha, done
    # Destroying the session no longer waits for the lookup (30 s) before the exit.
    assert leech.wait(timeout=15) == 0


def test_local_service_discovery_announces_a_port_that_answers(nat_lab: Any,
                                                               tmp_path: Path) -> None:
    # Two open hosts on one segment (as on a LAN), local service discovery their only
    # peer source: no punching. Given port 0, libtorrent listened on a random port per
    # interface and LSD announced the loopback one; the seed dialed a dead port and the
    # leech never got a peer (and with punching, those dials competed with the punch:
    # the same-kind delay between open hosts).
    lab = nat_lab({"s": "open", "l": "open"})
    stun = lab.start_stun()
    start_signaling(lab)
    torrent, sha = make_payload(tmp_path, 1 << 20)
    url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
    extra = ["--udp-port", str(SIGNAL_PORT), "--lsd", "--no-punch", "--timeout", "30",
             "--connection-timeout", "1"]
    seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                       save=torrent.parent / "seed", extra=extra)
    read_events(seed, "ready", 30.0, [])
    leech = start_agent(lab, "l", "leech", url=url, stun=stun, torrent=torrent,
                        save=tmp_path / "leech", extra=extra)
    events: list[dict[str, Any]] = []
    done = read_events(leech, ("done", "error"), 45.0, events)
    assert done.get("sha256") == sha, done
    assert not [e for e in events if e["event"] in ("punched", "punch-failed")]
