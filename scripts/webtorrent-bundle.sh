#!/usr/bin/env bash
# Fetch WebTorrent's browser bundle (dist/webtorrent.min.js, an ES module) from the npm
# registry into DIR: `npm pack` downloads the package's tarball alone (no dependencies,
# no install scripts). Without npm, say so: the browser tests then skip.
set -euo pipefail
version=$1
dir=$2
if ! command -v npm >/dev/null 2>&1; then
    echo "webtorrent-bundle: npm not found; the WebTorrent browser test will skip" >&2
    exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "webtorrent@$version" >/dev/null)
tar -xzf "$tmp"/webtorrent-"$version".tgz -C "$tmp" package/dist/webtorrent.min.js
mv "$tmp/package/dist/webtorrent.min.js" "$dir/webtorrent.min.js"
