#!/usr/bin/env bash
# Bridges for a fleet of LXC containers, each with its own dnsmasq sized for it (DHCP and DNS), kept
# apart from lxc-net's lxcbr0: a /24 with 253 leases that other containers rely on, which cannot be
# resized without restarting lxc-net (that drops every container's lease and cuts its network).
#
#   fleet-net.sh up [BRIDGE [CIDR]]      a bridge (default fleetbr0) on CIDR (default: the first /22 of
#                                        10.23.0.0/16 no route of this host overlaps), DHCP on all of it
#   fleet-net.sh fleet N                 enough bridges for N containers: fleetbr0, fleetbr1... (1000 each)
#   fleet-net.sh release BRIDGE NAME...  hand back the DHCP leases of these container names
#   fleet-net.sh down [BRIDGE]           remove the bridge, its dnsmasq, its leases and its NAT
#   fleet-net.sh cidr                    print the first free /22 (for a bridge made otherwise: LXD's)
#
# Sizes: a Linux bridge takes 1023 ports (BR_MAX_PORTS 1024, port 0 reserved: the 1024th veth gets
# EXFULL, "Exchange full"), so a fleet gets one bridge per 1000 containers; a /22 holds 1021 DHCP
# addresses, and dnsmasq's --dhcp-lease-max (default 1000) is set to match. dnsmasq does not ping an
# address before offering it (--no-ping, as LXD's does): on a fresh subnet that only waits, and it
# doubled the boot time of a batch of containers. Leases last an hour: a container destroyed without
# 'release' keeps its address that long. Containers reach the outside through NAT, as on lxcbr0
# (FLEET_NAT=0: no NAT, the bridge stays a private network).
# Idempotent; run as root. Nothing persists across a reboot: run 'up' again (setup.sh --fleet N does).
set -euo pipefail
cmd=${1:-up}
RUN=/run/pycor-fleet
LEASE_DIR=${PYCOR_FLEET_LEASE_DIR:-/var/lib/misc}
PER_BRIDGE=1000
mkdir -p "$RUN"

ip2int() { local IFS=.; set -- $1; echo $(( ($1 << 24) + ($2 << 16) + ($3 << 8) + $4 )); }
int2ip() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }

# Whether subnet $1 (address as an integer) of size $2 overlaps a route of this host (lxcbr0, lxdbr0, others').
overlaps_route() {
    local dst d p ds dn
    while read -r dst _; do
        case $dst in default | *:*) continue ;; esac
        d=${dst%/*}; p=${dst#*/}; [ "$p" = "$dst" ] && p=32
        ds=$(( 1 << (32 - p) )); dn=$(( $(ip2int "$d") & ~(ds - 1) & 0xffffffff ))
        if [ "$dn" -lt $(( $1 + $2 )) ] && [ "$1" -lt $(( dn + ds )) ]; then
            echo "$dst"
            return 0
        fi
    done < <(ip -4 route show table main)
    return 1
}

# The first /22 of 10.23.0.0/16 no route overlaps, as BRIDGE_ADDRESS/22.
free_cidr() {
    local k net
    for k in $(seq 0 63); do
        net=$(( $(ip2int 10.23.0.0) + k * 1024 ))
        if ! overlaps_route "$net" 1024 >/dev/null; then
            echo "$(int2ip $(( net + 1 )))/22"
            return 0
        fi
    done
    echo "fleet-net: no /22 of 10.23.0.0/16 is free on this host; give a CIDR" >&2
    return 1
}

dnsmasq_pid() {  # the dnsmasq serving bridge $1, if it is ours and alive
    local pid
    pid=$(cat "$RUN/$1.dnsmasq.pid" 2>/dev/null) || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ] && tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qx -- "--interface=$1" &&
        echo "$pid"
}

check_name() {
    case $1 in '' | *[!A-Za-z0-9_.-]* | ?????????????????*)
        echo "fleet-net: $1 is not a bridge name (letters, digits, . _ -; at most 15)" >&2; exit 2 ;; esac
}

up() {
    local br=$1 cidr=${2:-} addr prefix a size net first last hosts over
    check_name "$br"
    if ip link show dev "$br" >/dev/null 2>&1 && [ ! -e "$RUN/$br.ours" ]; then
        echo "fleet-net: $br exists and was not made by fleet-net.sh; leaving it" >&2
        exit 1
    fi
    if [ -e "$RUN/$br.ours" ]; then
        cidr=$(cat "$RUN/$br.ours")
    elif [ -z "$cidr" ]; then
        cidr=$(free_cidr)
    fi
    addr=${cidr%/*}; prefix=${cidr#*/}
    if ! [[ $cidr =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]] || [ "$prefix" -lt 16 ] || [ "$prefix" -gt 30 ]; then
        echo "fleet-net: $cidr: give the bridge's address and a prefix from /16 to /30, e.g. 10.23.0.1/22" >&2
        exit 2
    fi
    a=$(ip2int "$addr"); size=$(( 1 << (32 - prefix) ))
    net=$(( a & ~(size - 1) & 0xffffffff ))
    first=$(( net + 2 )); last=$(( net + size - 2 )); hosts=$(( last - first + 1 ))
    if [ "$a" != $(( net + 1 )) ]; then
        echo "fleet-net: the bridge takes the subnet's first address: $(int2ip $(( net + 1 )))/$prefix" >&2
        exit 2
    fi
    if ! ip link show dev "$br" >/dev/null 2>&1; then
        if over=$(overlaps_route "$net" "$size"); then
            echo "fleet-net: $cidr overlaps the route $over of this host" >&2
            exit 1
        fi
        echo "$cidr" > "$RUN/$br.ours"
        ip link add "$br" type bridge stp_state 0 forward_delay 0
        ip addr add "$cidr" dev "$br"
        ip link set "$br" up
    fi
    if ! dnsmasq_pid "$br" >/dev/null; then
        # DHCP on the whole subnet, one lease an address; DNS forwarding on the bridge address only (as lxc-net)
        dnsmasq --conf-file=/dev/null --strict-order --bind-interfaces --except-interface=lo \
            --interface="$br" --listen-address="$addr" --pid-file="$RUN/$br.dnsmasq.pid" \
            --dhcp-range "$(int2ip $first),$(int2ip $last),1h" --dhcp-lease-max="$hosts" \
            --dhcp-no-override --dhcp-authoritative --dhcp-rapid-commit --no-ping --quiet-dhcp \
            --dhcp-leasefile="$LEASE_DIR/dnsmasq.$br.leases" -u dnsmasq
    fi
    if [ "${FLEET_NAT:-1}" = 1 ] && ! nft list table ip "pycor-$br" >/dev/null 2>&1; then
        echo 1 > /proc/sys/net/ipv4/ip_forward
        nft -f - <<NFT
table ip pycor-$br {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr $(int2ip $net)/$prefix ip daddr != $(int2ip $net)/$prefix masquerade
    }
}
NFT
    fi
    echo "$br $cidr: DHCP $(int2ip $first) to $(int2ip $last) ($hosts leases)"
}

down() {
    local br=$1 pid
    check_name "$br"
    if pid=$(dnsmasq_pid "$br"); then
        kill "$pid"
        for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done  # gone before its bridge and leases
    fi
    rm -f "$RUN/$br.dnsmasq.pid"
    if [ -e "$RUN/$br.ours" ]; then
        nft delete table ip "pycor-$br" 2>/dev/null || true
        ip link del "$br" 2>/dev/null || true  # its veths go with it
        rm -f "$RUN/$br.ours" "$LEASE_DIR/dnsmasq.$br.leases"
    fi
}

release() {
    local br=$1 want line mac ip host cid
    shift
    check_name "$br"
    [ -r "$LEASE_DIR/dnsmasq.$br.leases" ] || return 0
    want=" $* "
    mapfile -t lines < "$LEASE_DIR/dnsmasq.$br.leases"  # read first: dnsmasq rewrites it at each release
    for line in "${lines[@]}"; do
        read -r _ mac ip host cid _ <<<"$line"  # EXPIRY MAC IP HOSTNAME CLIENT-ID
        case $want in
            *" $host "*) if [ "$cid" = '*' ] || [ -z "$cid" ]; then dhcp_release "$br" "$ip" "$mac" || true
                         else dhcp_release "$br" "$ip" "$mac" "$cid" || true; fi ;;
        esac
    done
}

# One lock for every change: 'up' picks a free subnet by the routes other 'up's are adding.
exec 9>"$RUN/lock"
flock 9
case $cmd in
up) up "${2:-fleetbr0}" "${3:-}" ;;
fleet)
    n=${2:-}
    case $n in '' | *[!0-9]*) echo "usage: $0 fleet N" >&2; exit 2 ;; esac
    for k in $(seq 0 $(( (n - 1) / PER_BRIDGE ))); do up "fleetbr$k" ""; done ;;
release) release "${2:?usage: $0 release BRIDGE NAME...}" "${@:3}" ;;
down) down "${2:-fleetbr0}" ;;
cidr) free_cidr ;;
*) echo "usage: $0 up [BRIDGE [CIDR]] | fleet N | release BRIDGE NAME... | down [BRIDGE] | cidr" >&2; exit 2 ;;
esac
