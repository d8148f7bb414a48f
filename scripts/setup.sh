#!/usr/bin/env bash
# Installs what pycor needs on a Debian machine, idempotently: LXC and the tools
# bases are built with (apt), pycor itself in .venv (pip), and pycor's LXC hooks
# and template (pycor install). Sourced by demo.sh and test.sh; run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
    echo "pycor setup: run this as root (sudo): it installs packages and starts containers" >&2
    exit 1
fi

APT_PACKAGES=(lxc lxd debootstrap busybox-static rsync tar xz-utils zstd acl attr util-linux btrfs-progs
              python3 python3-venv python3-dev gcc libcap-dev ca-certificates)
APT_PACKAGES+=(dnsmasq-base nftables curl)  # lxc-net's DHCP and NAT; curl for the demo's web check
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pycor setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check '.[test]'
.venv/bin/pycor install >/dev/null
bash scripts/lxc-net-up.sh
bash scripts/lxd-up.sh
echo "pycor setup: $(.venv/bin/pycor --version 2>/dev/null || echo pycor) installed in .venv, hooks and template installed for LXC"
