"""ResumeStore: files keyed by the infohash inside, the origin kept beside libtorrent's
data, atomic writes, unusable files named."""

from __future__ import annotations

from pathlib import Path

import libtorrent as lt
import pytest

from lt_punch.errors import ConfigError
from lt_punch.torrent.persistence import Origin, ResumeError, ResumeStore

IH = "ab" * 20
MAGNET = (f"magnet:?xt=urn:btih:{IH}&x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413"
          "&tr=http%3A%2F%2Ft.example%2Fannounce")


def _resume_data(peers: bool) -> bytes:
    """libtorrent's resume data of the magnet; without its peers and trackers, as once
    the dials to them failed."""
    atp = lt.parse_magnet_uri(MAGNET)
    atp.save_path = "/tmp"
    if not peers:
        atp.peers = []
        atp.trackers = []
    return bytes(lt.write_resume_data_buf(atp))


def test_origin_comes_back_when_libtorrent_dropped_it(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path / "r")
    origin = Origin.of(lt.parse_magnet_uri(MAGNET))
    assert origin.peers == (("10.0.0.1", 6881), ("2001:db8::1", 51413))
    store.save(IH, _resume_data(peers=False), origin)
    entry = store.load(IH)
    assert entry is not None and entry.origin == origin
    assert entry.params.peers == [("10.0.0.1", 6881), ("2001:db8::1", 51413)]
    assert entry.params.trackers == ["http://t.example/announce"]
    assert [p.name for p in store.directory.iterdir()] == [f"{IH}.resume"]  # no tmp left


def test_merge_keeps_order_without_duplicates() -> None:
    a = Origin((("h", 1),), ("t1",))
    b = Origin((("h", 1), ("g", 2)), ("t2", "t1"))
    assert a.merge(b) == Origin((("h", 1), ("g", 2)), ("t1", "t2"))


def test_a_copy_under_another_name_is_one_torrent(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    store.save(IH, _resume_data(peers=True))
    (tmp_path / "backup.resume").write_bytes((tmp_path / f"{IH}.resume").read_bytes())
    entries, bad = store.entries()
    assert [e.infohash for e in entries] == [IH] and bad == []


def test_a_misnamed_file_takes_its_torrents_name(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    (tmp_path / "renamed.resume").write_bytes(_resume_data(peers=True))
    entries, _ = store.entries()
    assert [e.path.name for e in entries] == [f"{IH}.resume"]
    assert not (tmp_path / "renamed.resume").exists()


def test_unusable_files_are_named(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    (tmp_path / "garbage.resume").write_bytes(b"garbage")
    (tmp_path / f"{IH}.resume").mkdir()
    entries, bad = store.entries()
    assert entries == []
    reasons = dict((p.name, r) for p, r in bad)
    assert "not resume data" in reasons["garbage.resume"]
    assert "a directory, not a resume file" in reasons[f"{IH}.resume"]
    with pytest.raises(ConfigError, match="a directory where the resume file goes"):
        store.check(IH)
    with pytest.raises(ResumeError, match="a directory"):
        store.load(IH)


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        ResumeStore(tmp_path / "f")
