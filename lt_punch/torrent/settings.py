"""libtorrent's settings for an lt_punch session, from a :class:`~lt_punch.config.Config`."""

from __future__ import annotations

import logging
import socket
from typing import Any, cast

import libtorrent as lt

from ..config import Config, parse_hostport
from ..errors import ConfigError

logger = logging.getLogger(__name__)

STATE_FLAGS = lt.save_state_flags_t.save_dht_state
"""What a session keeps across runs: the DHT's node id and routing table."""

ISOLATED_SETTINGS: dict[str, Any] = {
    # No public DHT bootstrap, no LSD, no UPnP / NAT-PMP: peers only come from
    # the signaling room (tests, the demo and the lab use this).
    "dht_bootstrap_nodes": "",
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
}

MIN_RECONNECT_TIME = 2
"""Seconds before libtorrent redials a peer it lost (its default is 60)."""

ALERT_MASK = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.peer
    | lt.alert_category.connect
    | lt.alert_category.storage
    | lt.alert_category.dht
    | lt.alert_category.port_mapping
    | lt.alert_category.piece_progress
)

_S = lt.torrent_status.states
STATE_NAMES: dict[int, str] = {
    int(_S.queued_for_checking): "queued",
    int(_S.checking_files): "checking",
    int(_S.downloading_metadata): "downloading_metadata",
    int(_S.downloading): "downloading",
    int(_S.finished): "finished",
    int(_S.seeding): "seeding",
    int(_S.allocating): "allocating",
    int(_S.checking_resume_data): "checking_resume",
}
"""Our names of libtorrent's torrent states (as shown in stats and the CLI)."""

READY_STATES = frozenset(int(s) for s in (_S.downloading_metadata, _S.downloading,
                                          _S.finished, _S.seeding))
"""States in which a torrent accepts peer connections (not queued or checking)."""


def state_name(state: Any) -> str:
    return STATE_NAMES.get(int(state), str(state))


def free_tcp_port(host: str) -> int:
    """A TCP port free on ``host`` now (another socket may take it later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port(host: str, tries: int = 20, *, avoid: int | None = None) -> int:
    """A port free for both TCP and UDP on ``host`` now, other than ``avoid`` (0 when
    none was found in ``tries``: libtorrent then picks one per interface).

    libtorrent given port 0 on a wildcard address listens on a different random port
    per interface, and local service discovery announces the loopback one to the LAN:
    peers dialed a port nothing listened on, and that half-open connection competed
    with the punch (open/open in the lab: 2.75 s to the first peer against 0.42 s;
    with one port, 0.72-0.92 s from process start to the verified file). If another
    socket takes the port meanwhile, libtorrent tries the next ones
    (``max_retry_port_bind``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(tries):
        port = free_tcp_port(host)
        if port == avoid:
            continue
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    return 0


def build(config: Config, overrides: dict[str, Any], outgoing_port: int | None) -> dict[str, Any]:
    """The settings pack (as a dict) for ``config``, ``overrides`` applied last.

    ``outgoing_port``: the one local port every TCP dial leaves from (the one whoami
    mapped), for TCP simultaneous open; None when TCP punching is off.
    """
    settings: dict[str, Any] = {
        # One port on every interface (free_port says why), not the one every dial
        # leaves from (a free port the session picked a moment ago).
        "listen_interfaces": _hostport((config.listen_host, config.listen_port or free_port(
            config.listen_host, avoid=outgoing_port))),
        "enable_dht": True,
        "alert_mask": ALERT_MASK,
        "user_agent": "lt_punch/0.1 libtorrent/" + lt.__version__,
        # Peers behind one NAT share its public address: libtorrent's default (one
        # connection per IP) refuses all but the first of them.
        "allow_multiple_connections_per_ip": True,
        # libtorrent waits (failures + 1) x min_reconnect_time before it dials a peer
        # again, 60 s by default, even when connect_peer names it again: one dropped
        # uTP connection (a starved process, a pause) stalled a stream for a minute.
        # A punched peer is rare and known good; redial it within seconds.
        "min_reconnect_time": MIN_RECONNECT_TIME,
        # libtorrent picks its first 4 pieces at random, piece priorities ignored: a
        # stream's first piece (readahead priority) waited behind them, half a second
        # against a rate-capped seeder. Rarest first with priorities from the start.
        "initial_picker_threshold": 0,
        # libtorrent's WebRTC (WebTorrent trackers) asks stun.l.google.com by default:
        # our STUN server when there is one, else none (host candidates only), so that
        # nothing goes to a third party unless configured.
        "webtorrent_stun_server": _hostport(config.stun_servers[0])
        if config.stun_servers else "",
    }
    if outgoing_port is not None:
        settings["outgoing_port"] = outgoing_port
        # Every dial from this one port: libtorrent's range is
        # [outgoing_port, outgoing_port + num_outgoing_ports], both ends in, so 1 would
        # alternate with the next port and break every other punch.
        settings["num_outgoing_ports"] = 0
        # TCP simultaneous open makes both ends "outgoing": MSE/PE cannot work (both
        # send the initiator's half), so outgoing handshakes are plaintext; incoming
        # ones still accept encryption.
        settings["out_enc_policy"] = int(lt.enc_policy.pe_disabled)
        settings["in_enc_policy"] = int(lt.enc_policy.pe_enabled)
    if config.isolated:
        settings.update(ISOLATED_SETTINGS)
    settings.update(overrides)
    return settings


def defer_bootstrap(pack: dict[str, Any]) -> str:
    """Take the DHT bootstrap nodes out of ``pack``; returns them ("" for none).

    libtorrent starts its DHT only once every bootstrap host name has resolved. Where
    DNS does not answer (an offline LAN, a broken resolver, the NAT lab) that is the
    resolver's timeout, 5 s by default, and discovery's reflector query (a DHT ping
    from libtorrent's socket) waits as long: measured, 5.0 s from session start to the
    room. Worse, destroying the session waits for the lookup too, so the process
    cannot exit before it ends. Started without them, the DHT runs at once; the
    session resolves them itself (:func:`resolve_nodes`, on a thread that does not
    hold up the exit) and hands libtorrent the addresses.
    """
    if not pack.get("enable_dht", True):
        return ""
    nodes = str(pack.get("dht_bootstrap_nodes",
                         lt.default_settings()["dht_bootstrap_nodes"]))
    pack["dht_bootstrap_nodes"] = ""
    return nodes


def resolve_nodes(nodes: str, *, per_host: int = 4) -> str:
    """``nodes`` in libtorrent's form (``host:port,[v6]:port,...``) with each host name
    replaced by up to ``per_host`` of its addresses; an entry that does not resolve or
    does not parse is left out (and logged). Blocks for as long as DNS takes."""
    out: list[str] = []
    for entry in filter(None, (e.strip() for e in nodes.split(","))):
        try:
            host, port = parse_hostport(entry, "dht_bootstrap_nodes")
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (ConfigError, OSError) as exc:
            logger.info("DHT bootstrap node %r left out: %s", entry, exc)
            continue
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))[:per_host]
        out.extend(_hostport((ip, port)) for ip in addresses)
    return ",".join(out)


def _hostport(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wants_outgoing_port(config: Config) -> bool:
    """Whether the session dials TCP from one fixed port (TCP punching is on)."""
    return "tcp" in config.methods and config.hole_punching_enabled


def session_params(pack: dict[str, Any], state: bytes | None) -> lt.session_params:
    """``session_params`` with the settings ``pack``, starting from a saved ``state``
    (:func:`saved_state`) when it can be read."""
    params = lt.session_params()
    if state:
        try:
            params = lt.read_session_params(state, STATE_FLAGS)
        except RuntimeError as exc:
            logger.warning("ignoring the saved session state (%s): starting afresh", exc)
    params.settings = cast(Any, pack)  # the binding takes a dict; its stubs do not
    return params


def saved_state(session: lt.session) -> bytes:
    """The state of ``session`` to keep for the next run, bencoded."""
    return bytes(lt.write_session_params_buf(session.session_state(STATE_FLAGS), STATE_FLAGS))
