"""Create test/demo payloads and their torrents (no trackers, no DHT nodes)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt


def write_random_file(path: Path, size: int, *, seed: int | None = None) -> str:
    """Write ``size`` random bytes; returns their SHA-256 hex digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    rng = hashlib.sha256(str(seed).encode()) if seed is not None else None
    chunk = 1 << 20
    with path.open("wb") as f:
        left = size
        counter = 0
        while left > 0:
            n = min(chunk, left)
            if rng is None:
                block = os.urandom(n)
            else:
                # Deterministic pseudo-random content for reproducible runs.
                block = b"".join(
                    hashlib.sha256(rng.digest() + (counter * 1000 + i).to_bytes(8, "big")).digest()
                    for i in range((n + 31) // 32)
                )[:n]
            f.write(block)
            digest.update(block)
            left -= n
            counter += 1
    return digest.hexdigest()


def make_torrent(path: Path, piece_size: int = 1 << 18) -> bytes:
    """Bencoded .torrent (v1) for the file, or the directory of files, at ``path``;
    no trackers."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        entries = [lt.create_file_entry(str(p.relative_to(path.parent)), p.stat().st_size)
                   for p in files]
    else:
        entries = [lt.create_file_entry(path.name, path.stat().st_size)]
    ct = lt.create_torrent(entries, piece_size, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(path.parent))
    data: bytes = lt.bencode(ct.generate())
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
