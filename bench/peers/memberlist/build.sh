#!/bin/sh
# Builds the hashicorp/memberlist peer of `bench memberlist-peer` into
# target/peers/memberlist/memberlist, from Debian's packaged sources only
# (GOPATH mode, no module downloads):
#
#   apt-get install -y golang-go golang-github-hashicorp-memberlist-dev
#   bench/peers/memberlist/build.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out="$root/target/peers/memberlist"
gocode=/usr/share/gocode
if ! command -v go >/dev/null || [ ! -d "$gocode/src/github.com/hashicorp/memberlist" ]; then
    echo "needs: apt-get install -y golang-go golang-github-hashicorp-memberlist-dev" >&2
    exit 1
fi
mkdir -p "$out"
cd "$here"
GOPATH="$gocode" GO111MODULE=off GOFLAGS= GOPROXY=off \
    go build -o "$out/memberlist" main.go
version=$(dpkg-query -W -f '${Version}' golang-github-hashicorp-memberlist-dev 2>/dev/null || echo unknown)
# The bench prints this in its JSON.
echo "$version (Debian golang-github-hashicorp-memberlist-dev, $(go version | cut -d' ' -f3))" >"$out/VERSION"
echo "built $out/memberlist: memberlist $(cat "$out/VERSION")"
