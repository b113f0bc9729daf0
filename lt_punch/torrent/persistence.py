"""Resume data of torrents, kept in one directory and keyed by infohash.

Used by ``lt-punch download`` (``DIR/.lt_punch/``) and ``lt-punch serve``
(``STATE_DIR/torrents/``)::

    <infohash>.resume   libtorrent's resume data (``lt.write_resume_data_buf``, with the
                        info dict once known), plus under the key ``lt_punch`` the
                        torrent's :class:`Origin`: the peers and trackers it was added
                        with (a magnet's ``x.pe`` and ``tr``)

Why the origin: libtorrent's resume data keeps only the peers and trackers the torrent
still knew when it was saved. A magnet whose only peers are its ``x.pe`` entries came
back with none after a restart: 0 peers, no progress. The origin is merged into the
params on every load, so a restart re-adds them.

A file is keyed by the infohash inside it, not by its name: a copy under another name
is the same torrent, not a second one. Every write is atomic (a temporary file in the
same directory, then ``os.replace``), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from ..errors import ConfigError, LtPunchError
from ..types import Address

logger = logging.getLogger(__name__)

SUFFIX = ".resume"
_ORIGIN_KEY = b"lt_punch"


def infohash_of_params(atp: lt.add_torrent_params) -> str | None:
    """The infohash of params as :func:`~lt_punch.torrent.session.infohash_of` names a
    torrent (v1 when there is one, else v2); None when the params have none."""
    ih = atp.info_hashes
    if ih.has_v1():
        return str(ih.v1)
    if ih.has_v2():
        return str(ih.v2)
    return None


@dataclass(frozen=True)
class Origin:
    """What a torrent was added with that its resume data may lose."""

    peers: tuple[Address, ...] = ()
    """Peers named by the source (a magnet's ``x.pe``)."""
    trackers: tuple[str, ...] = ()
    """Trackers named by the source (a magnet's ``tr``, a .torrent's announce list)."""

    @classmethod
    def of(cls, atp: lt.add_torrent_params) -> Origin:
        return cls(tuple((str(h), int(p)) for h, p in atp.peers), tuple(atp.trackers))

    def __bool__(self) -> bool:
        return bool(self.peers or self.trackers)

    def merge(self, other: Origin) -> Origin:
        """Both origins' peers and trackers, in order, without duplicates."""
        return Origin(tuple(dict.fromkeys(self.peers + other.peers)),
                      tuple(dict.fromkeys(self.trackers + other.trackers)))

    def apply(self, atp: lt.add_torrent_params) -> None:
        """Add the peers and trackers ``atp`` lacks (each new tracker in its own tier,
        after the others)."""
        peers = [(str(h), int(p)) for h, p in atp.peers]
        atp.peers = peers + [p for p in self.peers if p not in peers]
        trackers = list(atp.trackers)
        tiers = list(atp.tracker_tiers) or [0] * len(trackers)
        for url in self.trackers:
            if url not in trackers:
                trackers.append(url)
                tiers.append(max(tiers, default=-1) + 1)
        atp.trackers = trackers
        atp.tracker_tiers = tiers

    def to_bdict(self) -> dict[bytes, Any]:
        return {b"peers": [[h.encode(), p] for h, p in self.peers],
                b"trackers": [t.encode() for t in self.trackers]}

    @classmethod
    def from_bdict(cls, value: Any) -> Origin:
        """From :meth:`to_bdict`'s bdecoded form; entries of the wrong shape are dropped
        (the file may have been edited)."""
        if not isinstance(value, dict):
            return cls()
        peers: list[Address] = []
        for item in value.get(b"peers") or ():
            if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes)
                    and isinstance(item[1], int) and 0 < item[1] < 65536):
                peers.append((item[0].decode(errors="replace"), item[1]))
        trackers = [t.decode(errors="replace") for t in value.get(b"trackers") or ()
                    if isinstance(t, bytes)]
        return cls(tuple(peers), tuple(trackers))


@dataclass
class Entry:
    """A torrent read back from the store."""

    infohash: str
    path: Path
    params: lt.add_torrent_params
    """libtorrent's params with the origin's peers and trackers merged in."""
    origin: Origin


class ResumeError(LtPunchError):
    """A resume file that cannot be used (not a regular file, unreadable, not resume
    data); the message names the file and why."""


class ResumeStore:
    """The resume files of one directory.

    Args:
        directory: created if missing.

    Raises:
        ConfigError: the directory cannot be created or is not a directory (the message
            names the path and the reason).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"{directory} is not a directory") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}") from None
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory")

    def path(self, infohash: str) -> Path:
        return self.directory / f"{infohash}{SUFFIX}"

    def check(self, infohash: str) -> None:
        """Raise ConfigError when the torrent's resume file cannot be written (a
        directory or a special file where it goes)."""
        path = self.path(infohash)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(path.stat().st_mode):
                raise ConfigError(f"{path}: {_kind(path)} where the resume file goes; "
                                  "remove it")

    def save(self, infohash: str, data: bytes, origin: Origin | None = None) -> Path:
        """Write libtorrent's resume data (``data``, bencoded) and the origin, atomically.

        Raises:
            OSError: the file could not be written (the old one is left as it was).
        """
        if origin:
            decoded: Any = lt.bdecode(data)  # keys are bytes; the stubs say str
            if isinstance(decoded, dict):
                decoded[_ORIGIN_KEY] = origin.to_bdict()
                data = bytes(lt.bencode(decoded))
        path = self.path(infohash)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return path

    def load(self, infohash: str) -> Entry | None:
        """The torrent's saved entry; None when there is none.

        Raises:
            ResumeError: the file cannot be used.
        """
        path = self.path(infohash)
        if not os.path.lexists(path):
            return None
        entry = self._read(path)
        if entry.infohash != infohash:
            raise ResumeError(f"{path}: holds torrent {entry.infohash}, not {infohash}")
        return entry

    def entries(self) -> tuple[list[Entry], list[tuple[Path, str]]]:
        """Every torrent of the directory, once each, and the files that could not be
        used (with why). A file named after another infohash than the one it holds is
        renamed to its torrent's name, unless that name is taken: then it is a duplicate
        and left out."""
        found: dict[str, Entry] = {}
        bad: list[tuple[Path, str]] = []
        paths = sorted(self.directory.glob(f"*{SUFFIX}"))
        # Files under their own name first: they win over copies.
        paths.sort(key=lambda p: not _hexname(p))
        for path in paths:
            try:
                entry = self._read(path)
            except ResumeError as exc:
                bad.append((path, str(exc)))
                continue
            if entry.infohash in found:
                logger.warning("%s: a copy of %s (torrent %s); left out", path.name,
                               found[entry.infohash].path.name, entry.infohash)
                continue
            canonical = self.path(entry.infohash)
            if path != canonical:
                if os.path.lexists(canonical):
                    logger.warning("%s: torrent %s, whose file %s cannot be used; left out",
                                   path.name, entry.infohash, canonical.name)
                    continue
                try:
                    os.replace(path, canonical)
                    entry.path = canonical
                except OSError as exc:
                    logger.warning("cannot rename %s to %s: %s", path.name, canonical.name, exc)
            found[entry.infohash] = entry
        return list(found.values()), bad

    def remove(self, infohash: str) -> None:
        """Forget a torrent (nothing happens when it has no file)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(infohash).unlink()

    def _read(self, path: Path) -> Entry:
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise ResumeError(f"{path}: {_kind(path)}, not a resume file")
            data = path.read_bytes()
        except OSError as exc:
            raise ResumeError(f"{path}: {exc.strerror or exc}") from None
        try:
            atp = lt.read_resume_data(data)
        except RuntimeError as exc:
            raise ResumeError(f"{path}: not resume data ({exc})") from None
        infohash = infohash_of_params(atp)
        if infohash is None:
            raise ResumeError(f"{path}: resume data without an infohash")
        try:
            decoded: Any = lt.bdecode(data)  # keys are bytes; the stubs say str
        except RuntimeError:
            decoded = None
        origin = Origin.from_bdict(decoded.get(_ORIGIN_KEY)
                                   if isinstance(decoded, dict) else None)
        origin.apply(atp)
        return Entry(infohash, path, atp, origin)


def _hexname(path: Path) -> bool:
    stem = path.name[: -len(SUFFIX)]
    return len(stem) in (40, 64) and all(c in "0123456789abcdef" for c in stem)


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a directory"
    return "not a regular file"


__all__ = ["Entry", "Origin", "ResumeError", "ResumeStore", "infohash_of_params"]
