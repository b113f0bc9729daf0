"""Configuration: keyword arguments, ``P2P_*`` environment variables, validation.

Precedence is keyword arguments > environment > defaults. Durations are seconds in
Python and milliseconds in the environment (as in the original design's
``P2P_CONNECTION_TIMEOUT=30000``). Every invalid value raises :class:`ConfigError`
naming the variable or argument.

=============================  ===============================================
variable                       meaning
=============================  ===============================================
``P2P_SIGNALING_ENABLED``      join signaling rooms (``true``/``false``)
``P2P_SIGNALING_URL``          ``ws://host:port`` of the signaling server
``P2P_SIGNALING_UDP_PORT``     UDP port of the server's reflector (default: URL's)
``P2P_SIGNALING_HOST``         address an embedded server binds
``P2P_SIGNALING_PORT``         port an embedded server binds (and the URL's)
``P2P_SIGNALING_TOKEN``        token sent when registering (servers with a secret)
``P2P_SIGNALING_CA``           CA file (PEM) trusted for a ``wss://`` server
``P2P_PEER_ID``                our peer id on the signaling server (default: random)
``P2P_HOLE_PUNCHING_ENABLED``  punch to room peers (``true``/``false``)
``P2P_STUN_SERVERS``           comma-separated ``host:port`` list
``P2P_CONNECTION_TIMEOUT``     milliseconds for one punch / connection
``P2P_KEEP_ALIVE_INTERVAL``    milliseconds between NAT keep-alives
``P2P_LISTEN_HOST``            libtorrent's listen address
``P2P_LISTEN_PORT``            libtorrent's listen port (0: any free port)
``P2P_ISOLATED``               peers only from signaling rooms (``true``/``false``)
=============================  ===============================================
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .types import Address

METHODS: tuple[str, ...] = ("tcp", "utp", "udp", "predict", "relay")
"""Every punch method, in the default order of preference (:attr:`Config.methods`)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def parse_port(value: str | int, name: str, *, allow_zero: bool = True) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a port number, got {value!r}") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"{name}: port {port} out of range")
    return port


def parse_ip(value: str, name: str) -> str:
    text = value.strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{name}: not an IP address: {value!r}") from None
    return text


def parse_ws_url(value: str, name: str) -> str:
    """A ``ws://`` or ``wss://`` URL with a host and, if given, a port in 1..65535."""
    url = value.strip()
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{name}: expected ws:// or wss:// URL, got {value!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of 0..65535
    except ValueError as exc:
        raise ConfigError(f"{name}: bad URL {value!r}: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: no host in {value!r}")
    if any(c.isspace() for c in parts.netloc):
        raise ConfigError(f"{name}: invalid host in {value!r}")
    if port == 0:
        raise ConfigError(f"{name}: port 0 in {value!r}")
    return url


def parse_peer_id(value: str, name: str) -> str:
    """A peer id as the signaling protocol accepts it (1..64 of ``[A-Za-z0-9._-]``)."""
    # Imported here: the signaling package pulls in websockets, which Config needs not.
    from .signaling.protocol import MessageError, validate_peer_id

    try:
        return str(validate_peer_id(value, name))
    except MessageError as exc:
        raise ConfigError(str(exc)) from None


def parse_hostport(value: str, name: str) -> Address:
    """Parse ``host:port`` (``[v6]:port`` accepted for IPv6 literals)."""
    text = value.strip()
    if not text:
        raise ConfigError(f"{name}: empty host:port")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{name}: expected [host]:port, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{name}: expected host:port, got {value!r}")
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"{name}: invalid host {host!r}")
    return host, parse_port(port_text, name, allow_zero=False)


def parse_hostports(value: str, name: str) -> tuple[Address, ...]:
    items = [item for item in value.split(",") if item.strip()]
    return tuple(parse_hostport(item, name) for item in items)


def parse_ms(value: str, name: str, *, minimum: int = 1, maximum: int = 86_400_000) -> float:
    """Parse a duration in milliseconds; returns seconds."""
    try:
        ms = int(value.strip())
    except (AttributeError, ValueError):
        raise ConfigError(f"{name}: expected milliseconds as an integer, got {value!r}") from None
    if not minimum <= ms <= maximum:
        raise ConfigError(f"{name}: {ms} ms out of range [{minimum}, {maximum}]")
    return ms / 1000.0


@dataclass(frozen=True)
class Config:
    """Settings of a coordinator / session. All fields are optional."""

    signaling_enabled: bool = True
    """Join a signaling room per torrent."""

    signaling_url: str | None = None
    """URL of the signaling server (``ws://`` or ``wss://``). When None and
    ``signaling_enabled``, an embedded server is started on ``signaling_host``."""

    signaling_udp_port: int | None = None
    """UDP port of the server's DHT reflector (BEP 42 endpoint discovery);
    None means the same number as the signaling URL's port."""

    signaling_host: str = "127.0.0.1"
    """Bind address of an embedded signaling server."""

    signaling_port: int = 8765
    """Port of an embedded signaling server (0 picks a free one)."""

    signaling_token: str | None = field(default=None, repr=False)
    """Token sent in ``register`` (needed when the server has a secret configured)."""

    peer_id: str | None = None
    """Our id on the signaling server (1..64 characters of ``[A-Za-z0-9._-]``). A server
    with a secret accepts only tokens made for it (``lt-punch signal token --peer-id``).
    None: sessions pick a random one."""

    signaling_ca: str | None = None
    """CA certificates (PEM file) to trust for a ``wss://`` server, besides the
    system's (a private CA, a self-signed server)."""

    hole_punching_enabled: bool = True
    """Punch to every peer of a room and inject it into libtorrent."""

    stun_servers: tuple[Address, ...] = ()
    """STUN servers for NAT type detection. Empty: no STUN, the public endpoint
    comes from the signaling server only (no traffic to third parties by default)."""

    connection_timeout: float = 10.0
    """Seconds a punch attempt waits for its connection; a uTP or TCP attempt that
    another one follows waits at most :data:`~lt_punch.punch.engine.HANDSHAKE_WAIT`
    (3.5 s)."""

    keep_alive_interval: float = 25.0
    """Seconds between keep-alives; below the 30 s UDP timeout of many routers."""

    punch_attempts: int = 3
    """Attempts per peer and method before giving up (bounded retry schedule)."""

    listen_port: int = 0
    """libtorrent listen port (TCP and UDP); 0 picks a free one."""

    listen_host: str = "0.0.0.0"
    """libtorrent listen address."""

    isolated: bool = False
    """Peers only from the signaling room: no DHT bootstrap, LSD, UPnP or NAT-PMP
    (``ISOLATED_SETTINGS``; nothing leaves for the public BitTorrent network)."""

    methods: tuple[str, ...] = METHODS
    """Punch methods, in order of preference (``predict`` only between a symmetric NAT
    and a cone NAT; ``relay`` only when one side of the pair has a TURN server, last,
    except after a uTP stall, when it goes before uTP and ``predict``). TCP first:
    libtorrent's uTP carries less and freezes under loss (docs/performance.md)."""

    turn_servers: tuple[Address, ...] = ()
    """TURN servers (``host:port``) for the relay, tried in order; TCP allocations
    (RFC 6062), as coturn offers. Empty: this side never allocates (it can still dial
    a relay the peer allocated)."""

    turn_username: str = ""
    """TURN long-term credential user name (with ``turn_secret``: the name part of the
    REST API user name, may be empty)."""

    turn_password: str = field(default="", repr=False)
    """TURN long-term credential password."""

    turn_secret: str = field(default="", repr=False)
    """coturn's REST API shared secret (``use-auth-secret``): credentials are derived
    from it for each allocation; ``turn_password`` is then not used."""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.signaling_url is not None:
            if not isinstance(self.signaling_url, str):
                raise ConfigError(f"signaling_url: expected a string, got {self.signaling_url!r}")
            parse_ws_url(self.signaling_url, "signaling_url")
        if self.peer_id is not None:
            parse_peer_id(self.peer_id, "peer_id")
        parse_port(self.signaling_port, "signaling_port")
        parse_port(self.listen_port, "listen_port")
        if self.signaling_udp_port is not None:
            parse_port(self.signaling_udp_port, "signaling_udp_port", allow_zero=False)
        try:
            ipaddress.ip_address(self.listen_host)
        except ValueError:
            raise ConfigError(f"listen_host: not an IP address: {self.listen_host!r}") from None
        for name in ("connection_timeout", "keep_alive_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 86400:
                raise ConfigError(f"{name}: expected seconds in (0, 86400], got {value!r}")
        if not isinstance(self.punch_attempts, int) or not 1 <= self.punch_attempts <= 20:
            raise ConfigError(f"punch_attempts: expected 1..20, got {self.punch_attempts!r}")
        if not self.methods:
            raise ConfigError("methods: at least one punch method is required")
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError(f"methods: unknown method {m!r} "
                                  f"(known: {', '.join(METHODS)})")
        for name in ("turn_username", "turn_password", "turn_secret"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}: expected a string")
        if self.turn_servers:
            for server in self.turn_servers:
                if not (isinstance(server, tuple) and len(server) == 2):
                    raise ConfigError(f"turn_servers: expected (host, port), got {server!r}")
                parse_port(server[1], "turn_servers", allow_zero=False)
            if not self.turn_secret and not (self.turn_username and self.turn_password):
                raise ConfigError("turn_servers (P2P_TURN_SERVER): credentials needed: "
                                  "turn_username and turn_password (P2P_TURN_USERNAME, "
                                  "P2P_TURN_PASSWORD), or turn_secret (P2P_TURN_SECRET)")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Config:
        """Build a config from ``P2P_*`` variables, then apply keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        parsers: dict[str, tuple[str, Any]] = {
            "P2P_SIGNALING_ENABLED": ("signaling_enabled", parse_bool),
            "P2P_SIGNALING_URL": ("signaling_url", parse_ws_url),
            "P2P_SIGNALING_UDP_PORT": (
                "signaling_udp_port", lambda v, n: parse_port(v, n, allow_zero=False)
            ),
            "P2P_SIGNALING_HOST": ("signaling_host", lambda v, n: v.strip()),
            "P2P_SIGNALING_PORT": ("signaling_port", parse_port),
            "P2P_SIGNALING_TOKEN": ("signaling_token", lambda v, n: v.strip()),
            "P2P_SIGNALING_CA": ("signaling_ca", lambda v, n: v.strip()),
            "P2P_PEER_ID": ("peer_id", lambda v, n: parse_peer_id(v.strip(), n)),
            "P2P_HOLE_PUNCHING_ENABLED": ("hole_punching_enabled", parse_bool),
            "P2P_STUN_SERVERS": ("stun_servers", parse_hostports),
            "P2P_CONNECTION_TIMEOUT": ("connection_timeout", parse_ms),
            "P2P_KEEP_ALIVE_INTERVAL": ("keep_alive_interval", parse_ms),
            "P2P_LISTEN_HOST": ("listen_host", parse_ip),
            "P2P_LISTEN_PORT": ("listen_port", parse_port),
            "P2P_ISOLATED": ("isolated", parse_bool),
            "P2P_TURN_SERVER": ("turn_servers", parse_hostports),
            "P2P_TURN_USERNAME": ("turn_username", lambda v, n: v.strip()),
            "P2P_TURN_PASSWORD": ("turn_password", lambda v, n: v),
            "P2P_TURN_SECRET": ("turn_secret", lambda v, n: v),
        }
        for var, (attr, parse) in parsers.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[attr] = parse(raw, var)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("stun_servers", "turn_servers"):
            if isinstance(values.get(name), str):
                values[name] = parse_hostports(values[name], name)
            if name in values:
                values[name] = tuple(tuple(s) for s in values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


__all__ = ["Config", "parse_bool", "parse_hostport", "parse_hostports", "parse_ms",
           "parse_peer_id", "parse_port", "parse_ws_url"]

