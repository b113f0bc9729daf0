"""torrent."""
