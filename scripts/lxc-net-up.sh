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
dnsmasq_alive() {
    local pid
    pid=$(cat /run/lxc/dnsmasq.pid 2>/dev/null) || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ]
}
# A bridge alone is not a network: after the host's processes were killed lxcbr0
# stays but its dnsmasq is gone, and containers boot without an address.
# A bridge lxc-net did not make (no /run/lxc/network_up) is someone else's: kept.
if [ -e /sys/class/net/lxcbr0 ] && [ ! -e /run/lxc/network_up ]; then
    echo "pycor setup: lxcbr0 exists but lxc-net did not make it; leaving it as it is" >&2
    exit 0
fi
if [ ! -e /sys/class/net/lxcbr0 ] || ! dnsmasq_alive; then
    # a stale marker or bridge (lxc-net killed halfway) would make 'start' refuse
    [ ! -e /run/lxc/network_up ] && [ ! -e /sys/class/net/lxcbr0 ] \
        || "$LXC_NET" stop force >/dev/null 2>&1 || true
    "$LXC_NET" start
    dnsmasq_alive || { echo "pycor setup: lxc-net started but its dnsmasq is not running" >&2; exit 1; }
    echo "pycor setup: started lxc-net (lxcbr0, DHCP on 10.0.3.0/24, NAT)"
fi
