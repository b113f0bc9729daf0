"""The signaling server's defences over real sockets: TLS, tokens, rate and connection
limits, candidate checks, session resume, idle cleanup, /metrics, and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lt_punch import Config
from lt_punch.errors import SignalingError
from lt_punch.signaling import SignalingClient, SignalingServer, whoami
from lt_punch.signaling import protocol as p
from lt_punch.signaling.security import check_token, make_token
from lt_punch.torrent.session import ISOLATED_SETTINGS, EnhancedTorrentSession
from lt_punch.types import PeerId

from .conftest import http_get

IH = "0123456789abcdef0123456789abcdef01234567"
WAIT = 5.0


async def _raw(srv: SignalingServer, **kwargs: Any) -> ClientConnection:
    return await connect(srv.url, open_timeout=WAIT, compression=None, **kwargs)


async def _ask(ws: ClientConnection, message: p.Message | str) -> p.Message:
    await ws.send(message if isinstance(message, str) else message.serialize())
    return await _next(ws)


async def _next(ws: ClientConnection) -> p.Message:
    async with asyncio.timeout(WAIT):
        return p.parse_message(await ws.recv(), sent_by="server")


async def _closed(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason


def _code(message: p.Message) -> str:
    assert isinstance(message, p.Error), message
    return message.code


# -- tokens ----------------------------------------------------------------------------------


async def test_secret_requires_a_valid_token_for_the_peer_id() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, secret="s3cret") as srv:
        async with await _raw(srv) as ws:
            assert _code(await _ask(ws, p.Register(PeerId("alice")))) == "auth-required"
            bob_token = make_token("s3cret", "bob")
            assert _code(await _ask(ws, p.Register(PeerId("alice"), token=bob_token))) \
                == "bad-token"
            old = make_token("s3cret", "alice", ttl=-10)
            assert _code(await _ask(ws, p.Register(PeerId("alice"), token=old))) \
                == "token-expired"
            # Refusals leave the connection usable: a good token registers.
            good = make_token("s3cret", "alice")
            reply = await _ask(ws, p.Register(PeerId("alice"), token=good))
            assert isinstance(reply, p.Registered) and reply.peer_id == "alice"
        assert srv.stats()["errors"] == {"auth-required": 1, "bad-token": 1,
                                         "token-expired": 1}


async def test_malformed_tokens_are_bad_token_and_no_token_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lt_punch")
    bad = ["v1.².abc", "v1.1.é", "v1.١٢٣." + "0" * 64, "v1." + "9" * 400 + ".ab"]
    async with SignalingServer("127.0.0.1", 0, dht_port=None, secret="s3cret") as srv:
        async with await _raw(srv) as ws:
            for token in bad:
                reply = await _ask(ws, p.Register(PeerId("alice"), token=token))
                assert _code(reply) == "bad-token", token
                assert isinstance(reply, p.Error) and token not in reply.message
            good = make_token("s3cret", "alice")
            reply = await _ask(ws, p.Register(PeerId("alice"), token=good))
            assert isinstance(reply, p.Registered) and reply.session_key
        async with await _raw(srv) as ws:  # another connection resumes alice's session
            resumed = await _ask(ws, p.Register(PeerId("alice"), token=good,
                                                resume=reply.session_key))
            assert isinstance(resumed, p.Registered)
        assert srv.stats()["errors"] == {"bad-token": len(bad)}
    logged = caplog.text
    assert "register peer_id=alice token=***" in logged  # debug logging was on
    for secret in [*bad, good, reply.session_key, resumed.session_key]:
        assert secret and secret not in logged, secret


async def test_client_sends_its_token() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, secret="s3cret") as srv:
        good = SignalingClient(srv.url, "alice", token=make_token("s3cret", "alice"),
                               timeout=WAIT)
        await good.connect()
        await good.close()
        bad = SignalingClient(srv.url, "alice", timeout=WAIT)
        with pytest.raises(SignalingError, match="token") as info:
            await bad.connect()
        assert info.value.code == "auth-required"


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext,
                                                          Path]]:
    """(server context, client context trusting the CA, the CA's PEM file)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    yield server_ctx, client_ctx, pem


async def test_tls_wss_and_https(tls: tuple[ssl.SSLContext, ssl.SSLContext, Path]) -> None:
    server_ctx, client_ctx, _ = tls
    async with SignalingServer("127.0.0.1", 0, dht_port=None, ssl=server_ctx) as srv:
        assert srv.url.startswith("wss://127.0.0.1:")
        client = SignalingClient(srv.url, "alice", timeout=WAIT, ssl=client_ctx)
        reply = await client.connect()
        assert reply.observed[0] == "127.0.0.1"
        await client.join(IH)
        await client.close()
        # The HTTP endpoints are HTTPS on the same port.
        assert (await whoami(srv.url, ssl=client_ctx))[0] == "127.0.0.1"
        # A client that does not trust the certificate is refused, with the reason.
        untrusting = SignalingClient(srv.url, "bob", timeout=WAIT)
        with pytest.raises(SignalingError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.connect()
        # Plain ws:// to a TLS port fails cleanly too.
        plain = SignalingClient(srv.url.replace("wss://", "ws://"), "carol", timeout=WAIT)
        with pytest.raises(SignalingError):
            await plain.connect()


async def test_session_trusts_the_configured_ca(
    tls: tuple[ssl.SSLContext, ssl.SSLContext, Path], tmp_path: Path
) -> None:
    server_ctx, _, pem = tls
    async with SignalingServer("127.0.0.1", 0, dht_port=0, ssl=server_ctx) as srv:
        assert srv.dht_address is not None
        config = Config(signaling_url=srv.url, signaling_udp_port=srv.dht_address[1],
                        listen_host="127.0.0.1", signaling_ca=str(pem))
        async with EnhancedTorrentSession(config, peer_id="tls-peer",
                                          lt_settings=ISOLATED_SETTINGS,
                                          save_path=tmp_path) as session:
            assert session.signaling_error is None
            assert session.client is not None and session.client.connected
            assert session.public_tcp is not None or session.outgoing_port is None


# -- limits ----------------------------------------------------------------------------------


async def test_rate_limit_errors_then_closes_and_spares_others() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, rate=5, burst=5,
                               max_refusals=3) as srv:
        async with await _raw(srv) as abuser, await _raw(srv) as calm:
            for i in range(10):
                await abuser.send(p.Ping(i).serialize())
            replies = []
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(WAIT):
                    while True:
                        replies.append(p.parse_message(await abuser.recv(),
                                                       sent_by="server"))
            assert replies[:5] == [p.Pong(i) for i in range(5)]
            assert [_code(r) for r in replies[5:]] == ["rate-limited"] * 3
            assert (abuser.close_code, abuser.close_reason) == (1008, "rate-limited")
            assert await _ask(calm, p.Ping("still")) == p.Pong("still")
        assert srv.stats()["closed"] == {"rate-limited": 1}


async def test_connections_per_address_limit() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, trusted=(),
                               max_connections_per_address=2) as srv:
        async with await _raw(srv) as a, await _raw(srv) as b:
            assert await _ask(a, p.Ping(1)) == p.Pong(1)
            async with await _raw(srv) as c:
                assert _code(await _next(c)) == "too-many-connections"
                assert await _closed(c) == (1008, "too-many-connections")
            assert await _ask(b, p.Ping(2)) == p.Pong(2)
        # Closed connections free their slots.
        async with await _raw(srv) as d:
            assert await _ask(d, p.Ping(3)) == p.Pong(3)


async def test_loopback_is_trusted_by_default() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None,
                               max_connections_per_address=1) as srv:
        async with await _raw(srv) as a, await _raw(srv) as b:
            assert await _ask(a, p.Ping(1)) == p.Pong(1)
            assert await _ask(b, p.Ping(2)) == p.Pong(2)


async def test_candidate_addresses_are_checked() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, lan_mode=False) as srv:
        async with await _raw(srv) as ws, await _raw(srv) as other:
            bad = p.Register(PeerId("alice"), {"udp": ["127.0.0.1", 6881]})
            reply = await _ask(ws, bad)
            assert _code(reply) == "bad-candidate" and "metadata udp" in reply.message  # type: ignore[attr-defined]
            good = p.Register(PeerId("alice"), {"udp": ["203.0.113.7", 6881], "tcp": None})
            assert isinstance(await _ask(ws, good), p.Registered)
            assert isinstance(await _ask(other, p.Register(PeerId("bob"))), p.Registered)
            await _ask(ws, p.Join(IH))
            await _ask(other, p.Join(IH))
            assert isinstance(await _next(ws), p.PeerJoined)
            relay = p.Relay(PeerId("bob"), IH, {"candidates": [["224.0.0.9", 1]]})
            assert _code(await _ask(ws, relay)) == "bad-candidate"
    async with SignalingServer("127.0.0.1", 0, dht_port=None) as srv:
        assert srv.lan_mode  # bound to loopback: its peers are local
        async with await _raw(srv) as ws:
            local = p.Register(PeerId("alice"), {"udp": ["127.0.0.1", 6881]})
            assert isinstance(await _ask(ws, local), p.Registered)
            multicast = p.Register(PeerId("bob"), {"udp": ["224.0.0.1", 1]})
            async with await _raw(srv) as ws2:
                assert _code(await _ask(ws2, multicast)) == "bad-candidate"


# -- resume, idle --------------------------------------------------------------------------


async def test_resume_replaces_a_stale_connection() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None) as srv:
        async with await _raw(srv) as old, await _raw(srv) as watcher, \
                await _raw(srv) as thief, await _raw(srv) as new:
            first = await _ask(old, p.Register(PeerId("alice")))
            assert isinstance(first, p.Registered) and first.session_key
            await _ask(old, p.Join(IH))
            await _ask(watcher, p.Register(PeerId("watcher")))
            await _ask(watcher, p.Join(IH))
            await _next(old)  # peer-joined watcher
            # Without the key, or with a wrong one, the id stays taken.
            assert _code(await _ask(thief, p.Register(PeerId("alice")))) == "peer-id-taken"
            assert _code(await _ask(thief, p.Register(PeerId("alice"), resume="0" * 32))) \
                == "peer-id-taken"
            again = await _ask(new, p.Register(PeerId("alice"), resume=first.session_key))
            assert isinstance(again, p.Registered) and again.session_key != first.session_key
            assert await _next(watcher) == p.PeerLeft(IH, PeerId("alice"))
            assert _code(await _next(old)) == "replaced"
            assert await _closed(old) == (p.REPLACED_CLOSE_CODE, "replaced")
            assert srv.rooms.conn_of(PeerId("alice")) is not None
            assert srv.rooms.rooms_of(PeerId("alice")) == set()  # it joins again itself


async def test_idle_connections_are_closed() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, peer_timeout=0.5,
                               cleanup_interval=0.1) as srv:
        async with await _raw(srv) as idle, await _raw(srv) as busy:
            await _ask(idle, p.Register(PeerId("idle")))

            async def keep_pinging() -> None:
                for i in range(1000):
                    assert await _ask(busy, p.Ping(i)) == p.Pong(i)
                    await asyncio.sleep(0.1)

            pinger = asyncio.create_task(keep_pinging())
            try:
                assert _code(await _next(idle)) == "idle-timeout"
                assert await _closed(idle) == (1000, "idle-timeout")
                assert not pinger.done()  # the busy one is still served
            finally:
                pinger.cancel()
        assert srv.stats()["closed"] == {"idle-timeout": 1}


# -- HTTP ------------------------------------------------------------------------------------


async def _get(srv: SignalingServer, path: str, *headers: str
               ) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` with extra header lines: (status, lower-cased headers, body)."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        try:
            lines = "".join(f"{h}\r\n" for h in headers)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{lines}"
                         "Connection: close\r\n\r\n".encode())
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode().split("\r\n")
    parsed = {k.lower(): v for k, _, v in (f.partition(": ") for f in fields)}
    return int(status_line.split()[1]), parsed, body


def _basic(peer_id: str, token: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{peer_id}:{token}".encode()).decode()


async def test_address_book_needs_a_token_when_the_server_has_a_secret() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None, secret="s3cret") as srv:
        async with await _raw(srv) as ws:
            token = make_token("s3cret", "alice")
            reply = await _ask(ws, p.Register(PeerId("alice"), {"udp": ["203.0.113.5", 6881]},
                                              token=token))
            assert isinstance(reply, p.Registered)
            assert isinstance(await _ask(ws, p.Join(IH)), p.Joined)
            refusals = [
                ((), "auth-required"),
                ((f"Authorization: Bearer {token}",), "bad-token"),  # no peer id: no MAC
                ((_basic("bob", token),), "bad-token"),  # alice's token
                ((_basic("alice", make_token("other", "alice")),), "bad-token"),
                ((_basic("alice", make_token("s3cret", "alice", ttl=-10)),), "token-expired"),
                (("Authorization: Basic !!notbase64",), "bad-token"),
                ((_basic("not a peer id", token),), "bad-token"),
                (("Authorization: Basic " + base64.b64encode(b"alice").decode(),), "bad-token"),
            ]
            for headers, code in refusals:
                for path in (f"/rooms/{IH}/peers", "/rooms/nothex/peers"):
                    status, head, body = await _get(srv, path, *headers)
                    assert status == 401, (headers, body)  # not the members list
                    assert json.loads(body)["error"] == code, headers
                    assert head["www-authenticate"].startswith("Basic realm=")
                    assert set(json.loads(body)) == {"error", "message"}
                    assert b"203.0.113.5" not in body and token.encode() not in body
            # Any peer id with a valid token may list any room (bob is in none).
            status, _, body = await _get(srv, f"/rooms/{IH}/peers",
                                         _basic("bob", make_token("s3cret", "bob")))
            assert status == 200
            [alice] = json.loads(body)
            assert alice["peer_id"] == "alice" and alice["metadata"]["udp"][0] == "203.0.113.5"
            # Counters and the caller's own address stay open.
            for path in ("/health", "/stats", "/metrics", "/whoami"):
                status, _, body = await _get(srv, path)
                assert status == 200, path
                assert b"alice" not in body and b"203.0.113.5" not in body, path


async def test_metrics_and_peer_states() -> None:
    async with SignalingServer("127.0.0.1", 0, dht_port=None) as srv:
        async with await _raw(srv) as a, await _raw(srv) as b:
            await _ask(a, p.Register(PeerId("alice")))
            await _ask(b, p.Register(PeerId("bob")))
            await _ask(a, p.Join(IH))
            await _ask(b, p.Join(IH))
            await _ask(a, p.Relay(PeerId("bob"), IH, {"t": "hello"}))
            assert isinstance(await _next(b), p.Relayed)
            assert _code(await _ask(a, "{")) == "bad-json"
            status, _, raw = await http_get(srv, "/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
            status, _, body = await http_get(srv, f"/rooms/{IH}/peers")
    value = {name: f.samples[0].value for name, f in families.items() if f.samples}
    assert value["lt_punch_signaling_peers"] == 2
    assert value["lt_punch_signaling_rooms"] == 1
    assert value["lt_punch_signaling_messages_relayed"] == 1
    errors = {s.labels["code"]: s.value for s in families["lt_punch_signaling_errors"].samples}
    assert errors == {"bad-json": 1}
    states = {s.labels["state"]: s.value
              for s in families["lt_punch_signaling_peer_states"].samples}
    assert states == {"connected": 1, "idle": 0, "punching": 1}
    kinds = {s.labels["kind"]: s.value
             for s in families["lt_punch_signaling_webtorrent_messages"].samples}
    assert kinds == dict.fromkeys(("announces", "offers_forwarded", "answers_relayed",
                                   "answers_dropped", "scrapes", "failures"), 0)
    members = {m["peer_id"]: m["state"] for m in json.loads(body)}
    assert members == {"alice": "punching", "bob": "connected"}


# -- command line ----------------------------------------------------------------------------


async def _run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_token() -> None:
    code, out, _ = await _run_cli("token", "--secret", "s3cret", "--peer-id", "alice",
                                  "--ttl", "60")
    assert code == 0
    check_token("s3cret", out.strip(), "alice")
    code, _, err = await _run_cli("token", "--secret", "s3cret", "--peer-id", "a b")
    assert code == 2 and "--peer-id" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
     "cannot load the TLS certificate or key"),
    (["--secret", " "], "--secret: empty"),
    (["--rate", "0"], "--rate"),
])
async def test_cli_serve_bad_options(args: list[str], message: str) -> None:
    code, _, err = await _run_cli("serve", "--port", "0", *args)
    assert code == 2, err
    assert message in err and "Traceback" not in err


async def test_cli_serve_tls(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", "serve", "--port", "0", "--no-dht",
        "--tls-cert", str(cert_pem), "--tls-key", str(key_pem), "--secret", "s3cret",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("signaling server listening on wss://127.0.0.1:"), line
        url = line.split()[-1]
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        client = SignalingClient(url, "alice", token=make_token("s3cret", "alice"),
                                 timeout=WAIT, ssl=client_ctx)
        await client.connect()
        await client.close()
    finally:
        proc.terminate()
        async with asyncio.timeout(20):
            await proc.wait()


async def test_room_and_per_peer_limits() -> None:
    other = "ab" * 20
    async with SignalingServer("127.0.0.1", 0, dht_port=None, max_rooms_per_peer=1,
                               max_peers_per_room=2) as srv:
        async with await _raw(srv) as a, await _raw(srv) as b, await _raw(srv) as c:
            for ws, name in ((a, "a"), (b, "b"), (c, "c")):
                await _ask(ws, p.Register(PeerId(name)))
            assert isinstance(await _ask(a, p.Join(IH)), p.Joined)
            assert _code(await _ask(a, p.Join(other))) == "too-many-rooms"
            assert srv.rooms.room_count == 1  # the refused join left no empty room
            assert isinstance(await _ask(a, p.Join(IH)), p.Joined)  # again: not a new room
            await _ask(b, p.Join(IH))
            assert isinstance(await _next(a), p.PeerJoined)
            assert _code(await _ask(c, p.Join(IH))) == "room-full"
            assert await _ask(b, p.Leave(IH)) == p.Left(IH)
            assert await _next(a) == p.PeerLeft(IH, PeerId("b"))
            assert isinstance(await _ask(c, p.Join(IH)), p.Joined)
