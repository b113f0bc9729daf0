"""The signaling server as a WebTorrent tracker: raw websocket peers, then libtorrent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from lt_punch.signaling import SignalingServer
from lt_punch.signaling import protocol as p
from lt_punch.signaling.webtorrent import MAX_OFFERS, MAX_SDP_SIZE, WebTorrentTracker
from lt_punch.types import InfoHash, PeerId

from .conftest import http_get

WAIT = 5.0
# Binary strings: one character per byte, control and high bytes included.
INFO_HASH = bytes([0, 1, 0x7F, 0x80, 0xFF, 10, 34, 92] + list(range(200, 212))).decode("latin-1")
ROOM = INFO_HASH.encode("latin-1").hex()
PEER_A = "-WW0001-" + "\x00\xffaaaaaaaaaa"
PEER_B = "-WW0001-" + "\x01\xfebbbbbbbbbb"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def _offer(n: int, sdp: str = SDP) -> dict[str, Any]:
    return {"offer": {"type": "offer", "sdp": sdp}, "offer_id": f"offer-{n:02d}\x00\xff" + "o" * 10}


def _announce(peer_id: str, *, offers: int = 0, **fields: Any) -> dict[str, Any]:
    return {"action": "announce", "info_hash": INFO_HASH, "peer_id": peer_id, "numwant": offers,
            "uploaded": 0, "downloaded": 0, "left": 1000, "event": "started",
            "offers": [_offer(i) for i in range(offers)], **fields}


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, ping_interval=None) as srv:
        yield srv


@contextlib.asynccontextmanager
async def _peer(srv: SignalingServer) -> AsyncIterator[ClientConnection]:
    async with connect(srv.url, open_timeout=WAIT, compression=None) as ws:
        yield ws


async def _send(ws: ClientConnection, obj: dict[str, Any]) -> None:
    await ws.send(json.dumps(obj))


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        raw = await ws.recv()
    assert isinstance(raw, str)
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def _ask(ws: ClientConnection, obj: dict[str, Any]) -> dict[str, Any]:
    await _send(ws, obj)
    return await _recv(ws)


async def _http_get(srv: SignalingServer, path: str) -> Any:
    status, _, body = await http_get(srv, path, WAIT)
    assert status == 200, body
    return json.loads(body)


def _scrape(info_hash: str | list[str] = INFO_HASH) -> dict[str, Any]:
    return {"action": "scrape", "info_hash": info_hash}


# --- protocol, with raw websocket peers ----------------------------------------------------


async def test_offers_answers_scrape_and_stop(server: SignalingServer) -> None:
    async with _peer(server) as a, _peer(server) as b:
        reply = await _ask(a, _announce(PEER_A, offers=2))
        assert reply == {"action": "announce", "interval": 120, "info_hash": INFO_HASH,
                         "complete": 0, "incomplete": 1}

        # B's offers go to A (the only other peer), one offer per peer.
        reply = await _ask(b, _announce(PEER_B, offers=3, numwant=3))
        assert reply == {"action": "announce", "interval": 120, "info_hash": INFO_HASH,
                         "complete": 0, "incomplete": 2}
        offer = await _recv(a)
        assert offer == {"action": "announce", "info_hash": INFO_HASH, "peer_id": PEER_B,
                         "offer": {"type": "offer", "sdp": SDP},
                         "offer_id": _offer(0)["offer_id"]}

        # A answers: relayed to B, nothing back to A (its next message is the scrape).
        answer = {"type": "answer", "sdp": SDP.replace("o=- 1", "o=- 9")}
        await _send(a, {"action": "announce", "info_hash": INFO_HASH, "peer_id": PEER_A,
                        "to_peer_id": PEER_B, "answer": answer,
                        "offer_id": offer["offer_id"]})
        assert await _recv(b) == {"action": "announce", "info_hash": INFO_HASH,
                                  "peer_id": PEER_A, "answer": answer,
                                  "offer_id": offer["offer_id"]}
        assert await _ask(a, _scrape([INFO_HASH])) == {
            "action": "scrape", "flags": {"min_request_interval": 120},
            "files": {INFO_HASH: {"complete": 0, "incomplete": 2, "downloaded": 0}}}

        # A completes: it counts as a seed, and as one download.
        reply = await _ask(a, _announce(PEER_A, event="completed", left=0))
        assert (reply["complete"], reply["incomplete"]) == (1, 1)
        files = (await _ask(b, _scrape()))["files"]
        assert files[INFO_HASH] == {"complete": 1, "incomplete": 1, "downloaded": 1}

        # The HTTP room listing shows both as WebTorrent peers; /stats counts them.
        listed = await _http_get(server, f"/rooms/{ROOM.upper()}/peers")
        assert sorted(p["peer_id"] for p in listed) == sorted(
            x.encode("latin-1").hex() for x in (PEER_A, PEER_B))
        assert all(p["metadata"]["agent"] == "webtorrent" and p["state"] == "connected"
                   for p in listed)
        assert {p["metadata"]["seed"] for p in listed} == {True, False}
        stats = (await _http_get(server, "/stats"))["webtorrent"]
        assert stats["peers"] == 2 and stats["swarms"] == 1
        assert stats["offers_forwarded"] == 1 and stats["answers_relayed"] == 1

        # An lt_punch peer in the same room is not offered the WebTorrent peers: it
        # cannot punch to them (they speak WebRTC only).
        async with _peer(server) as lt_punch:
            await lt_punch.send(p.Register(PeerId("ltp"), {}).serialize())
            assert (await _recv(lt_punch))["type"] == "registered"
            await lt_punch.send(p.Join(InfoHash(ROOM)).serialize())
            joined = await _recv(lt_punch)
            assert joined["type"] == "joined" and joined["peers"] == []
            listed = await _http_get(server, f"/rooms/{ROOM}/peers")
            assert [p["metadata"].get("agent") for p in listed] == [None, "webtorrent",
                                                                    "webtorrent"]

        # stopped takes B out of the swarm; the reply still counts.
        reply = await _ask(b, _announce(PEER_B, event="stopped"))
        assert (reply["complete"], reply["incomplete"]) == (1, 0)
        files = (await _ask(a, _scrape()))["files"]
        assert files[INFO_HASH]["incomplete"] == 0
        # A's answer to the departed B goes nowhere (and gets no reply).
        await _send(a, {"action": "announce", "info_hash": INFO_HASH, "peer_id": PEER_A,
                        "to_peer_id": PEER_B, "answer": answer, "offer_id": "x"})
        assert (await _ask(a, _scrape()))["action"] == "scrape"
        assert server.webtorrent.stats.answers_dropped == 1


async def test_seeds_get_no_offers_from_seeds_and_numwant_caps(server: SignalingServer) -> None:
    async with _peer(server) as a, _peer(server) as b, _peer(server) as c:
        await _ask(a, _announce(PEER_A, left=0))
        await _ask(b, _announce(PEER_B, left=0, offers=2))  # a seed: no offer to seed A
        peer_c = "-WW0001-cccccccccccc"
        await _ask(c, _announce(peer_c, offers=2, numwant=1))  # to one of A, B only
        got = []
        for ws in (a, b):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    got.append(await ws.recv())
        assert len(got) == 1 and json.loads(got[0])["peer_id"] == peer_c
        assert server.webtorrent.stats.offers_forwarded == 1


async def test_malformed_messages_get_a_failure_reason(server: SignalingServer) -> None:
    good = _announce(PEER_A, offers=1)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"action": "connect"}, "invalid action"),
        ({**good, "info_hash": 12}, "invalid info_hash"),
        ({**good, "info_hash": INFO_HASH[:19]}, "expected 20 bytes"),
        ({**good, "info_hash": "\u0100" + INFO_HASH[1:]}, "not a binary string"),
        ({k: v for k, v in good.items() if k != "peer_id"}, "invalid peer_id"),
        ({**good, "peer_id": PEER_A + "x"}, "expected 20 bytes"),
        ({**good, "offers": {"offer": 1}}, "expected an array"),
        ({**good, "offers": [_offer(i) for i in range(MAX_OFFERS + 1)]}, "too many offers"),
        ({**good, "offers": [_offer(0, "x" * (MAX_SDP_SIZE + 1))]}, "SDP over"),
        ({**good, "offers": [{"offer": {"type": "answer", "sdp": SDP},
                              "offer_id": "abc"}]}, "invalid offer"),
        ({**good, "offers": [{"offer": {"type": "offer", "sdp": SDP},
                              "offer_id": ""}]}, "invalid offer_id"),
        ({**good, "offers": ["x"]}, "expected objects"),
        ({**good, "event": "exploded"}, "invalid event"),
        ({**good, "numwant": -1}, "invalid numwant"),
        ({**good, "left": "lots"}, "invalid left"),
        ({**good, "left": True}, "invalid left"),
        ({**good, "key": ["k"]}, "invalid key"),
        ({"action": "announce", "info_hash": INFO_HASH, "peer_id": PEER_A,
          "answer": {"type": "answer", "sdp": SDP}, "offer_id": "x"}, "invalid to_peer_id"),
        ({"action": "announce", "info_hash": INFO_HASH, "peer_id": PEER_A, "to_peer_id": PEER_B,
          "answer": {"type": "answer", "sdp": SDP}, "offer_id": "x"}, "has not announced"),
        ({**good, "answer": {"type": "answer", "sdp": SDP}}, "not both"),
        (_scrape([INFO_HASH] * 65), "info hashes"),
        (_scrape([]), "info hashes"),
        (_scrape(["short"]), "invalid info_hash"),
    ]
    async with _peer(server) as ws:
        for message, reason in bad:
            reply = await _ask(ws, message)
            assert reason in reply["failure reason"], (message, reply)
            assert set(reply) <= {"failure reason", "action", "info_hash"}
        # A readable info_hash comes back, so a client can match the failure to its request.
        reply = await _ask(ws, {**good, "event": "exploded"})
        assert reply["info_hash"] == INFO_HASH and reply["action"] == "announce"
        # The connection keeps working.
        assert (await _ask(ws, good))["incomplete"] == 1
        # Frames that are not tracker messages still get lt_punch errors.
        assert (await _ask(ws, {"v": 1, "action": "announce"}))["type"] == "error"
        assert (await _ask(ws, {"type": "join"}))["code"] == "bad-version"
        assert server.webtorrent.stats.failures == len(bad) + 1


async def test_peer_id_is_bound_to_its_connection(server: SignalingServer) -> None:
    async with _peer(server) as a, _peer(server) as b:
        await _ask(a, _announce(PEER_A))
        reply = await _ask(b, _announce(PEER_A))
        assert "in use" in reply["failure reason"]
        # A connection that announces another peer id in the swarm replaces its old one.
        await _ask(a, _announce(PEER_B))
        assert [p["peer_id"] for p in await _http_get(server, f"/rooms/{ROOM}/peers")] == [
            PEER_B.encode("latin-1").hex()]


async def test_disconnect_leaves_the_swarm(server: SignalingServer) -> None:
    async with _peer(server) as b:
        async with _peer(server) as a:
            await _ask(a, _announce(PEER_A))
            assert (await _ask(b, _announce(PEER_B)))["incomplete"] == 2
        async with asyncio.timeout(WAIT):
            while server.webtorrent.peer_count != 1:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.01)
        assert (await _ask(b, _scrape()))["files"][INFO_HASH]["incomplete"] == 1
    async with asyncio.timeout(WAIT):
        while server.webtorrent.swarm_count:  # noqa: ASYNC110 (no event to await)
            await asyncio.sleep(0.01)


async def test_rate_limit_applies_to_tracker_messages() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, ping_interval=None, rate=1.0,
                               burst=2.0) as srv, _peer(srv) as ws:
        replies = [await _ask(ws, _scrape()) for _ in range(4)]
        assert [r.get("code") for r in replies][2:] == ["rate-limited", "rate-limited"]
        assert "files" in replies[0]


def test_expiry_and_connection_limit_without_io() -> None:
    tracker = WebTorrentTracker(interval=10, max_swarms_per_connection=1)
    out = tracker.receive("a", _announce(PEER_A), now=0.0)
    assert out == [("a", {"action": "announce", "interval": 10, "info_hash": INFO_HASH,
                          "complete": 0, "incomplete": 1})]
    other = {**_announce(PEER_A), "info_hash": "i" * 20}
    assert "too many torrents" in tracker.receive("a", other, now=1.0)[0][1]["failure reason"]
    # Silent for three intervals: gone at B's announce (the connection may live on).
    out = tracker.receive("b", _announce(PEER_B, offers=1), now=30.0)
    assert out == [("b", {"action": "announce", "interval": 10, "info_hash": INFO_HASH,
                          "complete": 0, "incomplete": 1})]
    assert tracker.member_states(InfoHash(ROOM), 30.0)[0]["idle_for"] == 0.0
    tracker.disconnect("b")
    tracker.disconnect("a")
    assert (tracker.peer_count, tracker.swarm_count) == (0, 0)


# --- libtorrent: two sessions meet through the server and connect over WebRTC -------------

_CLONE_NEWNET = 0x40000000


class _Netns:
    """A private network namespace (loopback and one veth pair, nothing routed out),
    entered by the calling thread only while sockets and libtorrent sessions are made.

    libdatachannel gathers ICE host candidates on every interface but loopback and binds
    them to the wildcard address: in the machine's namespace the WebRTC sockets would be
    open on its real interfaces. Sockets and threads made inside stay inside; the
    namespace goes away with the last of them.
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd: int | None = None

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            entered = (self._libc.unshare(_CLONE_NEWNET) if self._fd is None
                       else self._libc.setns(self._fd, _CLONE_NEWNET)) == 0
            if not entered:
                raise OSError(ctypes.get_errno(), "cannot enter a network namespace")
            try:
                if self._fd is None:
                    self._fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
                    for argv in (["link", "set", "lo", "up"],
                                 ["link", "add", "wt0", "type", "veth", "peer", "name", "wt1"],
                                 ["addr", "add", "198.18.0.1/24", "dev", "wt0"],
                                 ["link", "set", "wt1", "up"], ["link", "set", "wt0", "up"]):
                        subprocess.run(["ip", *argv], check=True, timeout=10,
                                       capture_output=True)
                yield
            finally:
                if self._libc.setns(original, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "cannot leave the network namespace")
        finally:
            os.close(original)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@pytest.fixture
def netns() -> Iterator[_Netns]:
    if os.geteuid() != 0:
        pytest.skip("needs root (a private network namespace)")
    ns = _Netns()
    try:
        with ns.inside():
            pass
    except (OSError, subprocess.SubprocessError) as exc:
        ns.close()
        pytest.skip(f"no private network namespace: {exc}")
    yield ns
    ns.close()


async def test_libtorrent_sessions_connect_over_webrtc(tmp_path: Path, netns: _Netns) -> None:
    lt = pytest.importorskip("libtorrent")
    from lt_punch.torrent.maketorrent import write_random_file

    payload = tmp_path / "seed" / "clip.bin"
    write_random_file(payload, (1 << 20) + 4321, seed=5)
    server = SignalingServer("127.0.0.1", 0, dht_port=None, ping_interval=None)
    with netns.inside():
        await server.start()
    sessions: list[Any] = []
    try:
        entries = [lt.create_file_entry(payload.name, payload.stat().st_size)]
        ct = lt.create_torrent(entries, 1 << 16, lt.create_torrent.v1_only)
        ct.add_tracker(f"{server.url}/")
        lt.set_piece_hashes(ct, str(payload.parent))
        info = lt.torrent_info(lt.bencode(ct.generate()))
        room = str(info.info_hashes().v1)
        categories = (lt.alert_category.status | lt.alert_category.error
                      | lt.alert_category.connect | lt.alert_category.tracker)
        for save_path in (payload.parent, tmp_path / "leech"):
            settings = {"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                        # ICE host candidates suffice here: no STUN server.
                        "webtorrent_stun_server": "", "alert_mask": int(categories)}
            with netns.inside():  # libtorrent's threads (and libdatachannel's) stay inside
                sessions.append(lt.session(lt.session_params(settings)))
            atp = lt.add_torrent_params()
            atp.ti = info
            atp.save_path = str(save_path)
            sessions[-1].add_torrent(atp)

        connections: list[str] = []
        finished = False
        errors: list[str] = []
        async with asyncio.timeout(60):
            while not finished:
                for index, alert in _pop_alerts(sessions):
                    if isinstance(alert, (lt.peer_connect_alert, lt.incoming_connection_alert)):
                        connections.append(alert.message())
                    elif isinstance(alert, lt.tracker_error_alert):
                        errors.append(alert.message())
                    elif isinstance(alert, lt.torrent_finished_alert) and index == 1:
                        finished = True
                await asyncio.sleep(0.05)
        assert errors == []
        assert connections and all(m.endswith("(RTC)") for m in connections), connections
        assert (tmp_path / "leech" / payload.name).read_bytes() == payload.read_bytes()
        members = server.webtorrent.member_states(InfoHash(room), time.monotonic())
        assert len(members) == 2 and all(m["metadata"]["agent"] == "webtorrent" for m in members)
        assert server.webtorrent.stats.answers_relayed >= 1
        assert server.webtorrent.stats.failures == 0

        # Paused torrents announce "stopped": both leave the swarm.
        _pause_sessions(sessions)
        async with asyncio.timeout(WAIT):
            while server.webtorrent.peer_count:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.02)
    finally:
        # The server first: a session being destroyed holds the GIL while it waits for
        # the answer to its last announce, which a server on this loop could not send.
        await server.close()
        _close_sessions(sessions)


def _pause_sessions(sessions: list[Any]) -> None:
    for session in sessions:
        session.pause()


def _close_sessions(sessions: list[Any]) -> None:
    while sessions:
        sessions.pop().pause()  # the last reference: waits for the session's threads


def _pop_alerts(sessions: list[Any]) -> list[tuple[int, Any]]:
    return [(index, alert) for index, session in enumerate(sessions)
            for alert in session.pop_alerts()]
