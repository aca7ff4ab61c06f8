#!/usr/bin/env bash
# Fetches the containerd package of another Debian suite and unpacks it, without touching the
# system's apt state: a private apt configuration made of this machine's own Debian source
# with only the suite name changed, its lists and cache kept under the destination.
#
#   scripts/fetch-containerd.sh SUITE DEST     e.g. trixie (1.7), forky (2.1)
#
# Prints the directory holding usr/bin/{containerd,ctr,containerd-shim-runc-v2}.
set -euo pipefail
suite=$1
# apt resolves relative Dir:: paths against /etc/apt: make DEST absolute.
mkdir -p "$2"
dest=$(cd "$2" && pwd)
out="$dest/$suite"
if [ -x "$out/root/usr/bin/containerd" ]; then
  echo "$out/root"
  exit 0
fi
src=/etc/apt/sources.list.d/debian.sources
uri=""
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -f "$src" ]; then
  uri=$(awk '/^URIs:/{print $2; exit}' "$src")
  k=$(awk '/^Signed-By:/{print $2; exit}' "$src")
  [ -n "$k" ] && keyring=$k
fi
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
  uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$uri" ] || { echo "no Debian source found in the system's apt configuration" >&2; exit 1; }

apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$out/debs"
echo "deb [signed-by=$keyring] $uri $suite main" > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/none"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "Dir::State::Status=$apt_dir/status" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")
: > "$apt_dir/status"
apt-get "${opts[@]}" update -qq >&2
(cd "$out/debs" && apt-get "${opts[@]}" download containerd >&2)
rm -rf "$out/root"
mkdir -p "$out/root"
dpkg -x "$out"/debs/containerd_*.deb "$out/root"
"$out/root/usr/bin/containerd" --version >&2
echo "$out/root"
