"""A stock libtorrent session on its WebTorrent (WebRTC) path, as a lab process for
``first_peer.py``: what a user gets from libtorrent alone with a WebTorrent tracker
(bittorrent-tracker from npm) and a STUN server (coturn). Prints JSON lines on stdout:
``ready`` (session created), ``peer-connected`` (first peer past its handshake, looked
for every 10 ms), ``done``; every event has ``t`` (``time.monotonic()``) and
``since_start``. A seed runs until its stdin closes.

    python benchmarks/webrtc_peer.py --role leech --torrent T --save DIR
        --tracker ws://10.0.0.1:8000 --stun 10.0.0.1:3478
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import libtorrent as lt


def emit(event: str, started: float, **fields: Any) -> None:
    now = time.monotonic()
    print(json.dumps({"event": event, "t": now, "since_start": round(now - started, 4),
                      **fields}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=("seed", "leech"), required=True)
    parser.add_argument("--torrent", required=True)
    parser.add_argument("--save", required=True)
    parser.add_argument("--tracker", required=True)
    parser.add_argument("--stun", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    started = time.monotonic()
    session = lt.session(lt.session_params({
        "listen_interfaces": "0.0.0.0:0", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False,
        "webtorrent_stun_server": args.stun}))
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.save
    atp.trackers = [args.tracker]
    handle = session.add_torrent(atp)
    emit("ready", started)
    if args.role == "seed":
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait(args.timeout)
        return 0
    deadline = started + args.timeout
    connected = False
    while time.monotonic() < deadline:
        if not connected and any(
                not p.flags & (lt.peer_info.connecting | lt.peer_info.handshake)
                for p in handle.get_peer_info()):
            connected = True
            emit("peer-connected", started)
        if handle.status().is_seeding:
            emit("done", started)
            return 0
        time.sleep(0.01)
    emit("error", started, message="timeout")
    return 1


if __name__ == "__main__":
    sys.exit(main())
