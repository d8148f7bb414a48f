#!/usr/bin/env bash
# Brings up LXC's default network if nothing started it (these machines have no
# systemd to run Debian's lxc-net service): the lxcbr0 bridge, dnsmasq handing
# out 10.0.3.0/24 addresses and names, and NAT to the outside. LXC's default
# config links every container to lxcbr0. Idempotent; safe to run concurrently.
set -euo pipefail
LXC_NET=/usr/libexec/lxc/lxc-net
[ -x "$LXC_NET" ] || { echo "pycor setup: $LXC_NET missing: apt-get install lxc" >&2; exit 1; }
mkdir -p /run/lock
exec 9>/run/lock/pycor-lxc-net
flock 9
if [ ! -e /sys/class/net/lxcbr0 ]; then
    # a stale marker (lxc-net killed halfway) would make 'start' refuse
    [ ! -e /run/lxc/network_up ] || "$LXC_NET" stop force >/dev/null 2>&1 || true
    "$LXC_NET" start
    echo "pycor setup: started lxc-net (lxcbr0, DHCP on 10.0.3.0/24, NAT)"
fi
