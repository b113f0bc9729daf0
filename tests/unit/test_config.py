"""Config: P2P_* variables, keyword overrides, validation messages naming the culprit."""

from __future__ import annotations

import pytest

from lt_punch.config import Config, parse_bool, parse_hostport, parse_hostports, parse_ms
from lt_punch.errors import ConfigError


def test_defaults_without_environment() -> None:
    cfg = Config.from_env({})
    assert cfg == Config()
    assert cfg.signaling_enabled and cfg.hole_punching_enabled
    assert cfg.signaling_url is None and cfg.stun_servers == ()


def test_every_variable_parsed() -> None:
    env = {
        "P2P_SIGNALING_ENABLED": "false",
        "P2P_SIGNALING_URL": " ws://sig.example:9000 ",
        "P2P_SIGNALING_UDP_PORT": "9001",
        "P2P_SIGNALING_HOST": "0.0.0.0",
        "P2P_SIGNALING_PORT": "9000",
        "P2P_HOLE_PUNCHING_ENABLED": "off",
        "P2P_STUN_SERVERS": "stun.example:3478, 10.0.0.1:19302,[2001:db8::1]:3479",
        "P2P_CONNECTION_TIMEOUT": "30000",
        "P2P_KEEP_ALIVE_INTERVAL": "1500",
        "P2P_LISTEN_HOST": " 127.0.0.1",
        "P2P_LISTEN_PORT": "6881",
        "P2P_ISOLATED": "yes",
    }
    cfg = Config.from_env(env)
    assert cfg.signaling_enabled is False
    assert cfg.signaling_url == "ws://sig.example:9000"
    assert cfg.signaling_udp_port == 9001
    assert cfg.signaling_host == "0.0.0.0"
    assert cfg.signaling_port == 9000
    assert cfg.hole_punching_enabled is False
    assert cfg.stun_servers == (
        ("stun.example", 3478), ("10.0.0.1", 19302), ("2001:db8::1", 3479)
    )
    assert cfg.connection_timeout == 30.0
    assert cfg.keep_alive_interval == 1.5
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 6881)
    assert cfg.isolated is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), (" on ", True),
     ("0", False), ("False", False), ("no", False), ("off", False)],
)
def test_bools(text: str, expected: bool) -> None:
    assert parse_bool(text, "X") is expected
    assert Config.from_env({"P2P_SIGNALING_ENABLED": text}).signaling_enabled is expected


def test_empty_variable_means_unset() -> None:
    assert Config.from_env({"P2P_SIGNALING_PORT": "", "P2P_STUN_SERVERS": ""}) == Config()


def test_hostport_forms() -> None:
    assert parse_hostport("[::1]:3478", "X") == ("::1", 3478)
    assert parse_hostport(" host:1 ", "X") == ("host", 1)
    assert parse_hostports("a:1,,b:2,", "X") == (("a", 1), ("b", 2))


def test_ms_to_seconds() -> None:
    assert parse_ms("1", "X") == 0.001
    assert parse_ms("86400000", "X") == 86400.0


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("P2P_SIGNALING_ENABLED", "maybe", "expected true or false"),
        ("P2P_HOLE_PUNCHING_ENABLED", "2", "expected true or false"),
        ("P2P_SIGNALING_URL", "http://x:1", "expected ws:// or wss://"),
        ("P2P_SIGNALING_UDP_PORT", "0", "out of range"),
        ("P2P_SIGNALING_UDP_PORT", "65536", "out of range"),
        ("P2P_SIGNALING_PORT", "http", "expected a port number"),
        ("P2P_SIGNALING_PORT", "-1", "out of range"),
        ("P2P_STUN_SERVERS", "stun.example", "expected host:port"),
        ("P2P_STUN_SERVERS", "a:1,b:0", "out of range"),
        ("P2P_STUN_SERVERS", "[::1]3478", "expected [host]:port"),
        ("P2P_STUN_SERVERS", "bad host:1", "invalid host"),
        ("P2P_STUN_SERVERS", ":3478", "expected host:port"),
        ("P2P_TURN_SERVER", "turn.example", "expected host:port"),
        ("P2P_TURN_SERVER", "turn.example:3478", "credentials needed"),
        ("P2P_CONNECTION_TIMEOUT", "1.5", "milliseconds as an integer"),
        ("P2P_CONNECTION_TIMEOUT", "0", "out of range"),
        ("P2P_KEEP_ALIVE_INTERVAL", "86400001", "out of range"),
        ("P2P_KEEP_ALIVE_INTERVAL", "soon", "milliseconds as an integer"),
        ("P2P_LISTEN_HOST", "localhost", "not an IP address"),
        ("P2P_LISTEN_PORT", "65536", "out of range"),
    ],
)
def test_invalid_variable_named(var: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    message = str(info.value)
    assert fragment in message
    assert var in message


def test_turn_settings() -> None:
    env = {"P2P_TURN_SERVER": "turn.example:3478,[::1]:5349", "P2P_TURN_USERNAME": " alice ",
           "P2P_TURN_PASSWORD": "pw"}
    cfg = Config.from_env(env)
    assert cfg.turn_servers == (("turn.example", 3478), ("::1", 5349))
    assert (cfg.turn_username, cfg.turn_password) == ("alice", "pw")
    assert "pw" not in repr(cfg)
    rest = Config.from_env({"P2P_TURN_SERVER": "t:3478", "P2P_TURN_SECRET": "s"})
    assert rest.turn_secret == "s" and "'s'" not in repr(rest)
    assert Config.from_env({}, turn_servers="t:1", turn_secret="x").turn_servers == (("t", 1),)
    with pytest.raises(ConfigError, match=r"turn_servers \(P2P_TURN_SERVER\): credentials needed"):
        Config(turn_servers=(("t", 3478),), turn_username="alice")
    with pytest.raises(ConfigError, match="methods: unknown method 'turn'"):
        Config(methods=("turn",))


def test_keyword_overrides_beat_environment() -> None:
    env = {"P2P_SIGNALING_PORT": "9000", "P2P_CONNECTION_TIMEOUT": "30000",
           "P2P_STUN_SERVERS": "a:1"}
    cfg = Config.from_env(env, signaling_port=0, connection_timeout=2.0,
                          stun_servers="b:2,[::1]:3")
    assert cfg.signaling_port == 0
    assert cfg.connection_timeout == 2.0
    assert cfg.stun_servers == (("b", 2), ("::1", 3))


def test_none_override_keeps_environment() -> None:
    assert Config.from_env({"P2P_SIGNALING_PORT": "9000"}, signaling_port=None).signaling_port \
        == 9000


def test_process_environment_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2P_SIGNALING_PORT", "9999")
    assert Config.from_env().signaling_port == 9999


def test_unknown_keyword_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'signalling_url'"):
        Config.from_env({}, signalling_url="ws://x:1")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"signaling_port": 70000}, "signaling_port"),
        ({"listen_port": -1}, "listen_port"),
        ({"listen_host": "localhost"}, "listen_host"),
        ({"connection_timeout": 0}, "connection_timeout"),
        ({"keep_alive_interval": "25"}, "keep_alive_interval"),
        ({"punch_attempts": 0}, "punch_attempts"),
        ({"methods": ()}, "methods"),
        ({"methods": ("utp", "quic")}, "methods"),
        ({"stun_servers": "nope"}, "stun_servers"),
    ],
)
def test_invalid_keyword_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({}, **kwargs)


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="punch_attempts"):
        Config().replace(punch_attempts=21)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ws://", "no host"),
        ("ws://:80", "no host"),
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://127.0.0.1:99999", "Port out of range"),
        ("ws://host:port", "Port could not be cast"),
        ("ws://host:0", "port 0"),
        ("ws://a b:1", "invalid host"),
        ("http://host:1", "expected ws:// or wss://"),
    ],
)
def test_bad_signaling_url_is_a_config_error(url: str, fragment: str) -> None:
    # Library users get the ConfigError too, not a ValueError from urllib later on.
    with pytest.raises(ConfigError, match="signaling_url") as info:
        Config(signaling_url=url)
    assert fragment in str(info.value)
    with pytest.raises(ConfigError, match="P2P_SIGNALING_URL") as info:
        Config.from_env({"P2P_SIGNALING_URL": url})
    assert fragment in str(info.value)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765", "wss://[::1]:443/path",
                                 "ws://signal.example"])
def test_good_signaling_urls(url: str) -> None:
    assert Config(signaling_url=url).signaling_url == url


def test_peer_id_from_environment_and_keyword() -> None:
    assert Config().peer_id is None
    assert Config.from_env({"P2P_PEER_ID": " mybox "}).peer_id == "mybox"
    assert Config.from_env({"P2P_PEER_ID": "mybox"}, peer_id="other").peer_id == "other"


@pytest.mark.parametrize("value", ["my box", "x" * 65, "a/b"])
def test_bad_peer_id_named(value: str) -> None:
    with pytest.raises(ConfigError, match="P2P_PEER_ID must be 1..64 characters"):
        Config.from_env({"P2P_PEER_ID": value})
    with pytest.raises(ConfigError, match="peer_id must be 1..64 characters"):
        Config(peer_id=value)
