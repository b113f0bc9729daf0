"""``lt-punch download`` as a command on loopback: a real seed in a signaling room, the
command in a subprocess, its JSON output parsed; bad input; resume after SIGINT."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lt_punch.download import Output, run_download
from lt_punch.torrent.maketorrent import make_torrent, sha256_file, write_random_file
from lt_punch.torrent.session import ISOLATED_SETTINGS

from .conftest import PIECE, Swarm, seeded

SIZE = 16 << 20


class Seed:
    """A seed of movie.bin in a signaling room, and its .torrent file for the command."""

    def __init__(self, room: Swarm, torrent: Path) -> None:
        self.room = room
        self.torrent = torrent
        self.digest = hashlib.sha256(room.data).hexdigest()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
        env["P2P_SIGNALING_UDP_PORT"] = str(self.room.config.signaling_udp_port)
        return env

    def argv(self, out: Path, *extra: str) -> list[str]:
        assert self.room.config.signaling_url is not None
        return [sys.executable, "-m", "lt_punch", "download", str(self.torrent), "-o",
                str(out), "--json", "--isolated", "--signal", self.room.config.signaling_url,
                *extra]


@pytest.fixture
async def seed(tmp_path: Path) -> AsyncIterator[Seed]:
    async with seeded(tmp_path, "movie.bin", SIZE, 7) as room:
        torrent = tmp_path / "movie.torrent"
        torrent.write_bytes(room.torrent)
        yield Seed(room, torrent)


async def _run(argv: list[str], env: dict[str, str], timeout: float = 60,  # noqa: ASYNC109
               until: Any = None, sig: signal.Signals = signal.SIGINT,
               ) -> tuple[int, list[dict[str, Any]], str]:
    """Run the command; with ``until``, send ``sig`` at the first event it accepts.

    Each event gets ``_received``: the monotonic time this side read it."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            async for line in proc.stdout:
                event = json.loads(line)
                event["_received"] = time.monotonic()
                events.append(event)
                if until is not None and until(event):
                    proc.send_signal(sig)
                    until = None
            code = await proc.wait()
            err = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, events, err


async def test_download_completes_with_json_progress(seed: Seed, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, events, err = await _run(seed.argv(out), seed.env())
    assert code == 0, err
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "progress" in kinds
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["progress"] == 1.0 and progress[-1]["downloaded"] == SIZE
    assert all(set(p) >= {"phase", "download_rate", "eta", "peers"} for p in progress)
    # The peer came from the signaling room through the punch pipeline.
    assert [p["peer_id"] for p in events[-1]["punched"]] == ["seed"]
    assert sha256_file(out / "movie.bin") == seed.digest
    assert (out / ".lt_punch").is_dir()


async def test_resume_after_sigint_downloads_only_the_rest(seed: Seed, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Slow enough to be stopped half way: 4 MB/s on 16 MB.
    code, first, err = await _run(
        seed.argv(out, "--max-download-rate", "4000"), seed.env(),
        until=lambda e: e["event"] == "progress" and e["progress"] >= 0.3)
    assert code == 130, err
    assert first[-1]["event"] == "interrupted"
    assert "run the same command again to resume" in first[-1]["message"]
    had = first[-1]["verified"]  # bytes of hash-checked pieces, kept in the resume data
    assert 0 < had < SIZE and had % PIECE == 0
    code, second, err = await _run(seed.argv(out), seed.env())
    assert code == 0, err
    assert second[0]["event"] == "resume"
    final = [e for e in second if e["event"] == "progress"][-1]
    assert final["downloaded"] == SIZE
    # Nothing verified before the interruption came again: at most the rest was fetched.
    assert final["session_download"] <= SIZE - had, (final, had)
    assert sha256_file(out / "movie.bin") == seed.digest


async def test_resume_after_sigkill_loses_at_most_the_last_save_interval(
    seed: Seed, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rate = 4_000_000  # 4 MB/s
    save_every = 0.5
    code, first, _ = await _run(
        seed.argv(out, "--max-download-rate", str(rate // 1000), "--save-every",
                  str(save_every)), seed.env(), sig=signal.SIGKILL,
        until=lambda e: e["event"] == "progress" and e["progress"] >= 0.5)
    assert code == -signal.SIGKILL
    had = max(e["downloaded"] for e in first if e["event"] == "progress")
    saves = [e for e in first if e["event"] == "saved"]
    assert saves, "no periodic save before the kill"
    saved = saves[-1]["verified"]  # in the file: the event comes after the atomic rename
    killed_at = next(e for e in first if e["event"] == "progress" and e["progress"] >= 0.5)
    # Saved on schedule: the last save came at most an interval before the kill (plus two
    # seconds for a loaded machine, whose loop may stall while libtorrent's threads go on).
    since_save = killed_at["_received"] - saves[-1]["_received"] + saves[-1]["took"]
    assert since_save <= save_every + 2.0, since_save
    code, second, err = await _run(seed.argv(out), seed.env())
    assert code == 0, err
    assert second[0]["event"] == "resume"
    final = [e for e in second if e["event"] == "progress"][-1]
    assert final["downloaded"] == SIZE
    fetched = final["session_download"]  # libtorrent's payload counter of the second run
    # Only what the last save did not hold came again ...
    assert fetched <= SIZE - saved, (fetched, saved)
    # ... which is the remainder plus, from libtorrent's counters, what arrived after
    # that save and what had arrived but was not checked and written when it was made,
    # plus the pieces in flight. Counted, not assumed from the rate limit: arrivals come
    # in bursts (seen here: nothing for a second, then 7 MB within the next interval).
    arrived_since = killed_at["session_download"] - saves[-1]["received"]
    unsaved = max(0, saves[-1]["received"] - saved)
    margin = arrived_since + unsaved + 2 * PIECE
    assert fetched <= SIZE - had + margin, (fetched, had, saved, arrived_since, unsaved)
    assert sha256_file(out / "movie.bin") == seed.digest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-torrent"], "error: not a magnet link, infohash or .torrent file: "
                            "'not-a-torrent'"),
        (["magnet:?xt=urn:btih:zz"], "error: bad magnet link"),
        (["{corrupt}"], "not a valid .torrent file"),
        (["{torrent}", "-o", "/proc/ltp-no-such-dir"], "error: cannot write to "
                                                       "/proc/ltp-no-such-dir"),
        (["{torrent}", "--signal", "http://x"], "--signal"),
        (["{torrent}", "--signal", "ws://"], "--signal: no host in 'ws://'"),
        (["{torrent}", "--signal", "ws://:80"], "--signal: no host in 'ws://:80'"),
        (["{torrent}", "--signal", "ws://[::1"], "--signal: bad URL 'ws://[::1'"),
        (["{torrent}", "--signal", "ws://127.0.0.1:99999"], "Port out of range"),
        (["{torrent}", "--peer-id", "my box"], "--peer-id must be 1..64 characters"),
        (["{torrent}", "--max-download-rate", "-1"], "--max-download-rate"),
        # A FIFO hung the command (and SIGINT/SIGTERM with it) in the open.
        (["{fifo}"], "error: {fifo}: not a regular file"),
        # A directory was "metadata too large".
        (["{tmp}"], "error: {tmp}: is a directory, not a .torrent file"),
        (["{torrent}", "-o", "{tmp}/resume-dir"], "error: {tmp}/resume-dir/.lt_punch/{ih}"
                                                  ".resume: a directory where the resume "
                                                  "file goes"),
    ],
)
async def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str],
                                               message: str) -> None:
    import libtorrent as lt

    payload = tmp_path / "p.bin"
    write_random_file(payload, 1 << 16)
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(make_torrent(payload))
    corrupt = tmp_path / "c.torrent"
    corrupt.write_bytes(b"d4:infoi1ee")
    fifo = tmp_path / "fifo.torrent"
    os.mkfifo(fifo)
    ih = str(lt.load_torrent_file(str(torrent)).info_hashes.v1)
    (tmp_path / "resume-dir" / ".lt_punch" / f"{ih}.resume").mkdir(parents=True)
    names = {"torrent": torrent, "corrupt": corrupt, "fifo": fifo, "tmp": tmp_path, "ih": ih}
    argv = [a.format(**names) for a in args]
    message = message.format(**names)
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    code, events, err = await _run(
        [sys.executable, "-m", "lt_punch", "download", *argv, "-o", str(tmp_path / "o")]
        if "-o" not in argv else [sys.executable, "-m", "lt_punch", "download", *argv], env,
        timeout=30)
    assert code == 2, (code, err)
    assert message in err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 3, err  # click's usage lines, or our one line



async def test_full_disk_fails_with_one_clear_line(seed: Seed, small_disk: Path) -> None:
    code, events, err = await _run(seed.argv(small_disk), seed.env())
    assert code == 1, (code, err)
    assert "Traceback" not in err
    [error] = [e for e in events if e["event"] == "error"]
    assert error["message"] == f"error: {small_disk / 'movie.bin'}: No space left on device"
    # The pieces verified before the disk filled up are in the resume data, or the
    # command said why not.
    assert any(e["event"] in ("saved", "warning") for e in events)


async def test_peer_id_and_token_for_a_server_with_a_secret(tmp_path: Path) -> None:
    """The token command end to end: a token made for ``--peer-id mybox`` lets the
    command register with a server that has a secret (it was refused: the peer id was
    random per run) and download from the seed in the room."""
    from lt_punch import Config
    from lt_punch.signaling import SignalingServer
    from lt_punch.signaling.security import make_token
    from lt_punch.torrent.session import EnhancedTorrentSession

    from .conftest import LT

    payload = tmp_path / "seed" / "movie.bin"
    write_random_file(payload, 1 << 20, seed=5)
    torrent = tmp_path / "movie.torrent"
    torrent.write_bytes(make_torrent(payload, piece_size=PIECE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    maker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lt_punch", "signal", "token", "--secret", "S", "--peer-id",
        "mybox", env=env, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        token = (await maker.communicate())[0].decode()
    assert maker.returncode == 0
    async with SignalingServer("127.0.0.1", 0, dht_port=0, secret="S") as server:
        assert server.dht_address is not None
        config = Config(signaling_url=server.url, signaling_udp_port=server.dht_address[1],
                        listen_host="127.0.0.1", signaling_token=make_token("S", "seed"))
        async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                          save_path=payload.parent) as session:
            await session.add(torrent.read_bytes())
            env.update(P2P_SIGNALING_UDP_PORT=str(server.dht_address[1]),
                       P2P_SIGNALING_TOKEN=token.strip())
            code, events, err = await _run(
                [sys.executable, "-m", "lt_punch", "download", str(torrent), "-o",
                 str(tmp_path / "out"), "--json", "--isolated", "--signal", server.url,
                 "--peer-id", "mybox"], env, timeout=60)
    assert code == 0, err
    assert not [e for e in events if e["event"] == "warning"], events
    assert [p["peer_id"] for p in events[-1]["punched"]] == ["seed"]
    assert sha256_file(tmp_path / "out" / "movie.bin") == sha256_file(payload)


async def test_magnet_peers_come_back_on_resume(tmp_path: Path) -> None:
    """A magnet whose only peer is its x.pe entry, unreachable during the first run,
    interrupted; the peer comes up; the same command again reaches it and finishes. It
    stayed at 0 peers: the resume data replaced the magnet, and libtorrent's resume data
    leaves out peers that failed (and, with them, the only source of the torrent)."""
    import socket

    from lt_punch import Config
    from lt_punch.torrent.session import EnhancedTorrentSession

    from .conftest import LT

    payload = tmp_path / "seed" / "movie.bin"
    write_random_file(payload, 2 << 20, seed=6)
    torrent = make_torrent(payload, piece_size=PIECE)
    with socket.socket() as probe:  # a port nothing listens on during the first run
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import libtorrent as lt

    infohash = str(lt.load_torrent_buffer(torrent).info_hashes.v1)
    magnet = f"magnet:?xt=urn:btih:{infohash}&dn=movie.bin&x.pe=127.0.0.1:{port}"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    argv = [sys.executable, "-m", "lt_punch", "download", magnet, "-o", str(out), "--json",
            "--isolated"]
    reports = 0

    def eighth_report(event: dict[str, Any]) -> bool:
        # One report a second. libtorrent leaves a peer whose dials failed out of its
        # resume data; measured: still in it after 4 s, gone after 6 s (as in the issue:
        # Ctrl-C after 10 s).
        nonlocal reports
        reports += event["event"] == "progress"
        return reports >= 8

    code, first, err = await _run(argv, env, timeout=60, until=eighth_report)
    assert code == 130, err
    assert first[-1]["event"] == "interrupted"
    config = Config(signaling_enabled=False, listen_host="127.0.0.1", listen_port=port)
    async with EnhancedTorrentSession(config, peer_id="seed", lt_settings=LT,
                                      save_path=payload.parent) as session:
        assert session.session is not None and session.session.listen_port() == port
        await session.add(torrent)
        code, second, err = await _run(argv, env, timeout=60)
    assert code == 0, (err, second[-3:])
    assert second[0]["event"] == "resume"
    assert sha256_file(out / "movie.bin") == sha256_file(payload)


async def test_done_comes_at_the_finish_not_at_the_next_report(seed: Seed,
                                                               tmp_path: Path) -> None:
    # Reports every hour: the finish must still end the download at once (plain output
    # reports every 5 s, and a finish used to wait for the next report).
    stream = io.StringIO()
    async with asyncio.timeout(60):
        code = await run_download(str(seed.torrent), tmp_path / "out", config=seed.room.config,
                                  output=Output("json", stream), report_every=3600,
                                  lt_settings=dict(ISOLATED_SETTINGS))
    assert code == 0
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events[-1] == "done"
    assert sha256_file(tmp_path / "out" / "movie.bin") == seed.digest
