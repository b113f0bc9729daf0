"""Fixtures of the NAT lab tests: every test here is marked ``lab`` and needs root."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lt_punch.netlab import NatLab, cleanup_stale, lab_unavailable_reason
from lt_punch.netlab.scenario import SIGNAL_PORT, read_events, start_agent, start_signaling

NatLabFactory = Callable[..., NatLab]

_HERE = Path(__file__).resolve().parent

_reason: str | None = None
_checked = False


def _unavailable() -> str | None:
    """Check once per session whether the lab can be built (it creates a namespace).

    When it can, also remove labs left behind by dead test runs (never those of live ones).
    """
    global _reason, _checked
    if not _checked:
        _reason = lab_unavailable_reason()
        _checked = True
        if _reason is None:
            cleanup_stale()
    return _reason


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/lab with ``lab``."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _skip_without_lab(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is None:
        return
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"NAT lab unavailable: {reason}")


@pytest.fixture
def nat_lab() -> Iterator[NatLabFactory]:
    """Factory: ``lab = nat_lab({"a": "port", "b": "port"}, loss=...)`` builds a started lab.

    Every lab built through the factory is torn down at the end of the test, also when the
    test failed.
    """
    labs: list[NatLab] = []

    def make(sides: dict[str, str], **kwargs: object) -> NatLab:
        lab = NatLab(sides, **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        lab.open()
        return lab

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.close()
        except Exception as exc:  # keep closing the others
            errors.append(exc)
    if errors:
        raise errors[0]


@dataclass
class PortPair:
    """A lab of two port-restricted sides, ``s`` and ``l``, with coturn (STUN) and the
    signaling server running, and a scratch directory on tmpfs."""

    lab: NatLab
    stun: tuple[str, int]
    url: str
    """The signaling server's ws:// URL."""
    base: Path

    def agent(self, side: str, role: str, torrent: Path, save: Path, peer_id: str,
              *extra: str) -> subprocess.Popen[str]:
        """A lab agent (:func:`~lt_punch.netlab.scenario.start_agent`) in this room."""
        return start_agent(self.lab, side, role, url=self.url, stun=self.stun,
                           torrent=torrent, save=save, peer_id=peer_id, extra=extra)

    @contextlib.contextmanager
    def mid_download(self, torrent: Path, methods: str, events: list[dict[str, Any]],
                     ) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
        """A seed on ``s`` (at 5 MB/s: still sending later) and a leech on ``l``, punched
        with ``methods`` and 20% downloaded: yields the leech and its ``punched`` (or
        ``punch-failed``) event; both agents are stopped on exit."""
        common = ["--methods", methods, "--udp-port", str(SIGNAL_PORT), "--timeout", "60"]
        seed = self.agent("s", "seed", torrent, self.base / "seed", "seed", *common,
                          "--upload-limit", "5000000")
        leech = None
        try:
            read_events(seed, "ready", 30.0, [])
            leech = self.agent("l", "leech", torrent, self.base / "leech", "leech", *common,
                               "--progress-every", "0.2")
            punched = read_events(leech, ("punched", "punch-failed"), 30.0, events)
            if punched["event"] == "punched":
                while read_events(leech, "progress", 30.0, [])["progress"] < 0.2:
                    pass
            yield leech, punched
        finally:
            if leech is not None:
                self.lab.stop(leech)
            self.lab.stop(seed)


@pytest.fixture
def port_pair(nat_lab: NatLabFactory) -> Iterator[PortPair]:
    """:class:`PortPair`; the lab and its processes go with the test, the scratch
    directory too."""
    lab = nat_lab({"s": "port", "l": "port"})
    stun = lab.start_stun()
    start_signaling(lab)  # a lab process: stopped when the lab closes
    with tempfile.TemporaryDirectory(prefix="ltp-lab-", dir="/dev/shm") as tmp:
        yield PortPair(lab, stun, f"ws://{lab.server_ips[0]}:{SIGNAL_PORT}", Path(tmp))
