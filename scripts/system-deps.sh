#!/usr/bin/env bash
# Install the Debian packages the NAT lab and the tests use (nftables, coturn, ffmpeg,
# redis-server, ...), when root and when missing.
set -euo pipefail
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need+=(iproute2)  # tc: NatLab.shape
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v transmission-daemon >/dev/null 2>&1 || need+=(transmission-daemon)  # interop tests: a client nobody here wrote
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # a real browser: serve's web page
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root; lab tests will skip (missing: ${need[*]})" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get; install ${need[*]} yourself, lab tests will skip" >&2
    exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
