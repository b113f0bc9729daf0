"""A stock Transmission daemon (Debian's ``transmission-daemon``) as a peer in tests.

A client that nobody here wrote, started as shipped (uTP on, encryption preferred)
except for what would reach outside this machine: DHT, LPD, PEX and port mapping are
off and it binds one loopback address. Driven over its JSON-RPC API::

    with TransmissionDaemon(workdir / "tr", address="127.0.0.2") as daemon:
        daemon.add(torrent_bytes, download_dir=data_dir)   # seeds what is there
        daemon.wait_seeding(info_hash, timeout=60)
        magnet = daemon.magnet(info_hash)                    # ... &x.pe=127.0.0.2:PORT

Transmission 3.00 stops serving an address that finished a download from it while
it seeds (FIELD-NOTES): use a fresh daemon, or another 127.0.0.x, per download.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import LtTimeoutError

BINARY = "transmission-daemon"

STATUS_SEEDING = 6
"""Transmission's ``status`` of a torrent that seeds (RPC spec: TR_STATUS_SEED)."""


def unavailable_reason() -> str | None:
    """Why a Transmission daemon cannot be started here, or None."""
    if shutil.which(BINARY) is None:
        return f"{BINARY} not installed (Debian package transmission-daemon; make system-deps)"
    return None


def _free_port(address: str, kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


class TransmissionError(RuntimeError):
    """The daemon did not start, or an RPC call failed."""


class TransmissionDaemon:
    """One ``transmission-daemon`` process with its own config directory.

    ``utp``: Transmission's uTP (on, as Debian ships it). ``peer_port`` and
    ``rpc_port``: free ports on ``address`` when None.
    """

    def __init__(self, config_dir: Path, *, address: str = "127.0.0.1",
                 peer_port: int | None = None, rpc_port: int | None = None,
                 utp: bool = True, upload_kbps: int | None = None,
                 start_timeout: float = 20.0) -> None:
        self.config_dir = Path(config_dir)
        self.address = address
        self.peer_port = peer_port or _free_port(address, socket.SOCK_STREAM)
        self.rpc_port = rpc_port or _free_port("127.0.0.1", socket.SOCK_STREAM)
        self.utp = utp
        self.upload_kbps = upload_kbps
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._session_id = ""

    # -- lifecycle -----------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Transmission's ``settings.json`` for this daemon."""
        return {
            "bind-address-ipv4": self.address,
            "bind-address-ipv6": "::1",
            "peer-port": self.peer_port,
            "peer-port-random-on-start": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "port-forwarding-enabled": False,
            "utp-enabled": self.utp,
            "rpc-enabled": True,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": self.rpc_port,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": False,
            "rpc-host-whitelist-enabled": False,
            "download-dir": str(self.config_dir / "downloads"),
            "incomplete-dir-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "speed-limit-up-enabled": self.upload_kbps is not None,
            "speed-limit-up": self.upload_kbps or 0,
            "speed-limit-down-enabled": False,
            "start-added-torrents": True,
            "message-level": 1,
        }

    def start(self) -> TransmissionDaemon:
        reason = unavailable_reason()
        if reason:
            raise TransmissionError(reason)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "downloads").mkdir(exist_ok=True)
        (self.config_dir / "settings.json").write_text(json.dumps(self.settings(), indent=1))
        log = open(self.config_dir / "daemon.log", "wb")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(
            [BINARY, "--foreground", "--config-dir", str(self.config_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise TransmissionError(
                    f"{BINARY} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.call("session-get", timeout=2.0)
                return self
            except (OSError, TransmissionError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TransmissionError(
                        f"{BINARY} RPC not up after {self.start_timeout} s: {self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> TransmissionDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        path = self.config_dir / "daemon.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- RPC ---------------------------------------------------------------------------

    def call(self, method: str, timeout: float = 10.0, **arguments: Any) -> dict[str, Any]:
        """One JSON-RPC call; its ``arguments``. Raises TransmissionError on failure."""
        body = json.dumps({"method": method, "arguments": arguments}).encode()
        url = f"http://127.0.0.1:{self.rpc_port}/transmission/rpc"
        for _ in range(2):  # the first call learns the X-Transmission-Session-Id (409)
            request = urllib.request.Request(url, data=body, method="POST", headers={
                "X-Transmission-Session-Id": self._session_id,
                "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    reply = json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 409:
                    self._session_id = exc.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise TransmissionError(f"{method}: HTTP {exc.code}") from None
            if reply.get("result") != "success":
                raise TransmissionError(f"{method}: {reply.get('result')}")
            arguments_out: dict[str, Any] = reply.get("arguments", {})
            return arguments_out
        raise TransmissionError(f"{method}: no session id accepted")

    def add(self, torrent: bytes, download_dir: Path | None = None) -> dict[str, Any]:
        """Add a .torrent (its bytes); it seeds what ``download_dir`` already holds."""
        args: dict[str, Any] = {"metainfo": base64.b64encode(torrent).decode()}
        if download_dir is not None:
            args["download-dir"] = str(download_dir)
        return self.call("torrent-add", **args)

    def torrent(self, info_hash: str) -> dict[str, Any]:
        """Transmission's view of one torrent (status, percentDone, rates, peers)."""
        fields = ["hashString", "status", "percentDone", "haveValid", "rateDownload",
                  "rateUpload", "peersConnected", "error", "errorString", "sizeWhenDone"]
        found = self.call("torrent-get", ids=[info_hash], fields=fields)["torrents"]
        if not found:
            raise TransmissionError(f"no torrent {info_hash}")
        result: dict[str, Any] = found[0]
        return result

    def wait(self, info_hash: str, timeout: float, *, seeding: bool = True) -> dict[str, Any]:
        """Poll until the torrent is complete (and seeding, with ``seeding``)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.torrent(info_hash)
            if state["error"]:
                raise TransmissionError(f"{info_hash}: {state['errorString']}")
            if state["percentDone"] >= 1.0 and (not seeding or state["status"] == STATUS_SEEDING):
                return state
            if time.monotonic() > deadline:
                raise LtTimeoutError(f"transmission: {info_hash} not complete after "
                                     f"{timeout} s: {state}")
            time.sleep(0.1)

    def magnet(self, info_hash: str) -> str:
        """A magnet link naming this daemon as its peer (``x.pe``)."""
        return f"magnet:?xt=urn:btih:{info_hash}&x.pe={self.address}:{self.peer_port}"
