"""The TURN relay across real NATs: two symmetric NATs, which no punch connects, meet
through the lab's coturn (a TCP allocation, bridged into libtorrent)."""

from __future__ import annotations

import subprocess

import pytest

from lt_punch.netlab.scenario import run_pair

SIZE = 8 << 20
METHODS = ("utp", "tcp", "relay")


@pytest.mark.parametrize(("turn_side", "credentials"), [
    ("s", "long-term"), ("l", "long-term"), ("s", "rest")],
    ids=["seed-allocates", "leech-allocates", "rest-api-secret"])
def test_two_symmetric_nats_download_through_the_relay(nat_lab, turn_side: str,
                                                       credentials: str) -> None:
    """No punch fits two symmetric NATs: the relay connects at once and the download
    verifies; the side with the TURN server counts the bytes it bridged.
    (Roles: "leech-l" < "seed-s" initiates, so the seed allocates as responder, or the
    leech as initiator.) Long-term credentials, or coturn's REST API secret."""
    from lt_punch.netlab.scenario import TURN_SECRET

    lab = nat_lab({"s": "symmetric", "l": "symmetric"})
    result = run_pair(lab, seed_side="s", leech_side="l", size=SIZE, methods=METHODS,
                      timeout=60, connection_timeout=2.0, turn=[turn_side],
                      turn_secret=TURN_SECRET if credentials == "rest" else None)
    assert result.error is None, result.error
    assert result.sha_ok
    assert result.method == "relay"
    leech = result.leech_stats()
    assert leech is not None
    (punch,) = leech["torrents"][0]["punches"]
    assert punch["failures"] == []
    assert punch["time_to_connect"] < 2.0
    stats = leech if turn_side == "l" else result.seed_stats()
    assert stats is not None and stats["relay"] is not None
    assert stats["relay"]["allocations"] == 1
    assert stats["relay"]["bytes_relayed"] >= SIZE
    port = 3481 if credentials == "rest" else 3480
    assert stats["relay"]["server"] == f"{lab.server_ips[0]}:{port}"


def test_refused_turn_credentials_are_one_clear_reason(nat_lab) -> None:
    """The seed's TURN server refuses its password: the punch fails, each relay attempt
    saying why in the server's words."""
    lab = nat_lab({"s": "symmetric", "l": "symmetric"})
    result = run_pair(lab, seed_side="s", leech_side="l", size=1 << 20, methods=METHODS,
                      timeout=60, connection_timeout=1.0, turn=["s"],
                      turn_password="not-the-password")
    assert not result.ok
    (failed,) = [e for e in result.leech_events if e.get("event") == "punch-failed"]
    reason = failed["reason"]
    assert reason.startswith("peer refused: relay: TURN server "), reason
    assert "refused the credentials of 'lt-punch' (401" in reason, reason


def test_refused_credentials_do_not_stop_the_direct_methods(nat_lab) -> None:
    """The seed's TURN credentials are wrong, but its pair punches directly: the
    download goes on over uTP (or TCP when the uTP attempt does not connect within its
    2 s, as once in a CI run), and the seed says once, at start, why it has no relay."""
    lab = nat_lab({"s": "port", "l": "port"})
    result = run_pair(lab, seed_side="s", leech_side="l", size=1 << 20, methods=METHODS,
                      timeout=60, connection_timeout=2.0, turn=["s"],
                      turn_password="not-the-password")
    assert result.error is None and result.sha_ok, result.error
    assert result.method in ("utp", "tcp")
    seed = result.seed_stats()
    assert seed is not None
    relay = seed["relay"]
    assert not relay["allocated"] and relay["allocations"] == 0
    assert "refused the credentials of 'lt-punch' (401" in relay["error"], relay


def test_a_relay_that_dies_mid_download_is_allocated_again(nat_lab, tmp_path) -> None:
    """coturn is killed at 20% and started again: both ends see the relayed connection
    go, the leech punches again, the seed allocates a new relay and the download
    finishes, verified."""
    import os

    from lt_punch.netlab.scenario import (
        SIGNAL_PORT,
        TURN_PASSWORD,
        TURN_USER,
        make_payload,
        read_events,
        start_agent,
        start_signaling,
    )

    lab = nat_lab({"s": "symmetric", "l": "symmetric"})
    stun = lab.start_stun()
    start_signaling(lab)
    users = [f"{TURN_USER}:{TURN_PASSWORD}"]
    turn = lab.start_turn(users=users)
    torrent, digest = make_payload(tmp_path, 30 << 20)
    url = f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}"
    common = ["--methods", ",".join(METHODS), "--udp-port", str(SIGNAL_PORT),
              "--timeout", "90", "--connection-timeout", "2"]
    seed = start_agent(lab, "s", "seed", url=url, stun=stun, torrent=torrent,
                       save=tmp_path / "seed", peer_id="seed",
                       extra=[*common, "--upload-limit", "5000000", "--turn",
                              f"{turn[0]}:{turn[1]}", "--turn-user", TURN_USER],
                       env={**os.environ, "LTP_TURN_PASSWORD": TURN_PASSWORD})
    events: list[dict] = []
    try:
        read_events(seed, "ready", 30.0, [])
        leech = start_agent(lab, "l", "leech", url=url, stun=stun, torrent=torrent,
                            save=tmp_path / "leech", peer_id="leech",
                            extra=[*common, "--progress-every", "0.2"])
        first = read_events(leech, ("punched", "punch-failed"), 30.0, events)
        assert first["event"] == "punched" and first["method"] == "relay", first
        while read_events(leech, "progress", 30.0, [])["progress"] < 0.2:
            pass
        assert lab.turn_proc is not None
        lab.stop(lab.turn_proc)
        lab.start_turn(users=users)
        lost = read_events(leech, "connection-lost", 30.0, events)
        again = read_events(leech, ("punched", "punch-failed"), 60.0, events)
        done = read_events(leech, ("done", "error"), 90.0, events)
        assert seed.stdin is not None
        seed.stdin.close()  # the seed reports its stats and stops
        relay = read_events(seed, "stats", 15.0, [])["stats"]["relay"]
    finally:
        lab.stop(seed)
    assert lost["method"] == "relay", lost
    assert again["event"] == "punched" and again["method"] == "relay", again
    assert done["event"] == "done" and done["sha256"] == digest, done
    assert relay["allocations"] == 2, relay  # the first one died with its server


def test_an_allocation_behind_a_nat_is_refreshed(nat_lab) -> None:
    """Through a symmetric NAT: the allocation is refreshed (every 0.3 s here; coturn
    grants at least 600 s, too long to wait for), its nonce goes stale every second and
    is renewed (a 438 answer, then the request again), and the relay still takes a peer's
    connection afterwards."""
    import json
    import sys

    from lt_punch.netlab.scenario import TURN_PASSWORD, TURN_USER

    lab = nat_lab({"h": "symmetric", "p": "port"})
    ip, port = lab.start_turn(users=[f"{TURN_USER}:{TURN_PASSWORD}"], stale_nonce=1)
    peer_ip = lab.host("p").public_ip
    code = f"""
import asyncio, json
from lt_punch.punch.turn import TurnAllocation, TurnServer

async def main():
    a = await TurnAllocation.open(TurnServer({ip!r}, {port}, {TURN_USER!r},
                                             {TURN_PASSWORD!r}), refresh_every=0.3)
    await a.permit({peer_ip!r})
    async with asyncio.timeout(20):
        while a.refreshes < 8 and not a.closed:
            a.refreshed.clear()
            await a.refreshed.wait()
    print(json.dumps({{"relayed": a.relayed, "refreshes": a.refreshes,
                      "stale": a.stale_nonces, "closed": a.closed}}), flush=True)
    async with asyncio.timeout(20):
        sock, peer = await a.accept()
        data = sock.recv(100)
    print(json.dumps({{"peer": peer, "data": data.decode()}}), flush=True)
    sock.close()
    await a.close()

asyncio.run(main())
"""
    proc = lab.popen("h", [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    refreshed = json.loads(proc.stdout.readline())  # after 8 refreshes (2.4 s)
    assert refreshed["refreshes"] >= 8 and not refreshed["closed"], refreshed
    assert refreshed["stale"] >= 1, refreshed
    relayed = refreshed["relayed"]
    # Then the peer connects, through its own NAT: the relay still works.
    sender = (f"import socket; s = socket.create_connection(({relayed[0]!r}, "
              f"{relayed[1]}), timeout=10); s.sendall(b'hello'); s.recv(1); s.close()")
    send = lab.popen("p", [sys.executable, "-c", sender])
    result = json.loads(proc.stdout.readline())
    proc.wait(timeout=10)
    lab.stop(send)
    assert result["peer"][0] == peer_ip and result["data"] == "hello", result


def test_the_lab_demo_meets_two_symmetric_nats_through_its_turn_server() -> None:
    """``lt-punch demo --lab`` starts the lab's coturn as TURN server itself."""
    import json
    import sys

    from lt_punch.netlab import lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    out = subprocess.run([sys.executable, "-m", "lt_punch", "demo", "--lab", "--seed-nat",
                          "symmetric", "--leech-nat", "symmetric", "--size-mb", "2", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])
    assert result["verified"] and result["method"] == "relay", result
