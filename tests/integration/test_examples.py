"""The examples run as users run them (subprocesses, settings from ``P2P_*``), against a
seed in a signaling room on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from .conftest import Swarm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _env(swarm: Swarm) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    assert swarm.config.signaling_url is not None
    env.update(P2P_SIGNALING_URL=swarm.config.signaling_url,
               P2P_SIGNALING_UDP_PORT=str(swarm.config.signaling_udp_port),
               P2P_LISTEN_HOST="127.0.0.1", P2P_ISOLATED="true")
    return env


async def test_media_server_example_serves_a_magnet(swarm: Swarm, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "media_server.py"), swarm.magnet, "0",
        cwd=tmp_path, env=_env(swarm), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            url = (await proc.stdout.readline()).decode().strip()
            assert url.endswith(f"/files/{swarm.infohash}/0"), \
                url + (await proc.stderr.read()).decode()
            async with aiohttp.ClientSession() as http:
                async with http.get(url, headers={"Range": "bytes=-5000"}) as r:
                    assert r.status == 206 and await r.read() == swarm.data[-5000:]
                async with http.get(url) as r:
                    assert await r.read() == swarm.data
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            assert "Traceback" not in (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (tmp_path / "media" / "clip.mp4").read_bytes() == swarm.data


async def test_p2p_integration_example_punches_and_is_healthy() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "p2p_integration.py"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "punched via tcp" in text and "health: ok" in text  # the default: TCP first
