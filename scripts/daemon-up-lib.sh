# Shared by scripts/lxd-up.sh and scripts/incus-up.sh (sourced; functions only): finding a daemon
# that runs, and what one that died left behind.
#
# A daemon is found by the process listening on its unix socket. Its container monitors are
# named like it (`lxd`, `incusd` in /proc/PID/comm; `pgrep -x lxd` finds them after the daemon
# died) and so are its helpers (forkfile, forkproxy...), but none of them listens there.

# The pid of the process listening on unix socket $1, or nothing.
daemon_pid() {
    # awk reads all its input (no exit): under pipefail, ss killed by SIGPIPE would fail the caller
    ss -xlpnH 2>/dev/null | awk -v s="$1" '!found && $5 == s && match($0, /pid=[0-9]+/) {
        print substr($0, RSTART + 4, RLENGTH - 4); found = 1 }'
}

# The arguments of process $1, one a line (nothing if it is gone).
proc_args() {
    tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null || true
}

# dnsmasq processes serving the managed networks of daemon dir $1: those whose arguments name a file
# under DIR/networks/ (lease, hosts and config files: LXD and Incus alike), and the pid each network's
# DIR/networks/NET/dnsmasq.pid records (YAML 'pid: N') if that process is a dnsmasq on --interface=NET.
# Call it only while no daemon of DIR runs: then every one of them is stale, and holds its
# bridge's address and ports, so that the next daemon's own dnsmasq cannot start.
daemon_dnsmasq() {
    local dir=${1%/} pid pidfile net
    {
        for pid in $(pgrep -x dnsmasq || true); do
            if grep -qF -- "=$dir/networks/" <<<"$(proc_args "$pid")"; then
                echo "$pid"
            fi
        done
        for pidfile in "$dir"/networks/*/dnsmasq.pid; do
            [ -f "$pidfile" ] || continue
            net=$(basename "$(dirname "$pidfile")")
            pid=$(awk '$1 == "pid:" { print $2 }' "$pidfile")
            [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ] || continue
            if grep -qx -- "--interface=$net" <<<"$(proc_args "$pid")"; then
                echo "$pid"
            fi
        done
    } | sort -u
}

# What a daemon of dir $1 that died left on its networks ($2: who says so), cleared before the next one
# starts: its dnsmasq processes, which hold their bridge's address and ports, and pid files that name
# no dnsmasq any more (an empty one, from a daemon killed while it wrote it, keeps the next daemon from
# starting the network). Only while no daemon of DIR runs.
clear_dead_daemon_networks() {
    local dir=${1%/} who=$2 pids pid pidfile i
    pids=$(daemon_dnsmasq "$dir")
    if [ -n "$pids" ]; then
        echo "$who: stopping dnsmasq left by a daemon of $dir that died: pid" $pids >&2
        kill $pids 2>/dev/null || true
        for i in $(seq 50); do
            [ -n "$(daemon_dnsmasq "$dir")" ] || break
            sleep 0.1
        done
        pids=$(daemon_dnsmasq "$dir")
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    fi
    for pidfile in "$dir"/networks/*/dnsmasq.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(awk '$1 == "pid:" { print $2 }' "$pidfile")
        if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dnsmasq ]; then
            rm -f "$pidfile"
        fi
    done
}

# Start daemon command "$@" (from /, in its own session, every fd away from ours: a caller that reads
# our output, CI or a test, must see its end) and wait until it answers ($WAITREADY: its waitready command).
# PYCOR_KSM=1: under the kernel's samepage merging (see ksm_wrapper).
start_daemon() {
    local log=$1 wrap=()
    shift
    mkdir -p "$(dirname "$log")"
    if [ "${PYCOR_KSM:-0}" = 1 ]; then
        wrap=("${KSM_WRAPPER[@]}")
        ksm_check
        echo 1 > /sys/kernel/mm/ksm/run
    fi
    (cd / && exec setsid nohup "${wrap[@]}" "$@" --group root --logfile "$log") </dev/null >/dev/null 2>&1 &
}

# PYCOR_KSM=1 starts the daemon with prctl(PR_SET_MEMORY_MERGE) (Linux 6.4; kept across fork and exec), so
# its memory, its container monitors' and the containers' own processes' may be merged by ksmd where pages
# are equal, and turns ksmd on. A monitor is a forked daemon holding ~11 MiB (LXD 5.0; Incus 6.0 ~13) of
# anonymous memory that is mostly the same in every one: merged, ~4 MiB each. The trade: ksmd's CPU
# (it scans what opted in), and equal pages shared across containers, which lets one container learn by
# timing whether another holds a given page: for containers of one owner (a CI farm), not for tenants.
KSM_WRAPPER=(/usr/bin/python3 -c '
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(67, 1, 0, 0, 0) != 0:  # PR_SET_MEMORY_MERGE
    sys.exit("pycor: PYCOR_KSM=1: prctl(PR_SET_MEMORY_MERGE): " + os.strerror(ctypes.get_errno()) + " (needs Linux 6.4)")
os.execvp(sys.argv[1], sys.argv[1:])' )

# Fail clearly, before any daemon starts, where PYCOR_KSM=1 cannot work.
ksm_check() {
    if [ ! -w /sys/kernel/mm/ksm/run ] || ! "${KSM_WRAPPER[@]}" true; then
        echo "PYCOR_KSM=1: this kernel has no per-process samepage merging (CONFIG_KSM, Linux 6.4 or newer)" >&2
        exit 1
    fi
}

# Whether process $1 runs under samepage merging (PYCOR_KSM=1).
ksm_merging() {
    grep -qx 'ksm_merge_any: yes' "/proc/$1/ksm_stat" 2>/dev/null
}

# Managed networks of the daemon ($1: its client, lxc or incus) that are not up: "NAME STATUS ADDRESS" a line.
networks_down() {
    "$1" query '/1.0/networks?recursion=1' | /usr/bin/python3 -c '
import json, sys
for n in json.load(sys.stdin):
    if n.get("managed") and n.get("status") != "Created":
        print(n["name"], n.get("status") or "?", (n.get("config") or {}).get("ipv4.address", "").split("/")[0] or "-")'
}

# The process listening on an address ($1), as "NAME (pid N)", or nothing.
address_holder() {
    ss -lntupH 2>/dev/null | awk -v a="$1:" '!found && index($5, a) == 1 && match($0, /"[^"]+",pid=[0-9]+/) {
        split(substr($0, RSTART, RLENGTH), f, /",pid=/); print substr(f[1], 2) " (pid " f[2] ")"; found = 1 }'
}

# Fail, naming what holds its address, if a managed network of the daemon ($1: lxc or incus) is not up.
require_networks_up() {
    local cli=$1 who=$2 name status address holder down=0
    while read -r name status address; do
        [ -n "$name" ] || continue
        holder=$(address_holder "$address")
        if [ -n "$holder" ]; then
            echo "$who: network $name is $status: its address $address is held by $holder, left by a daemon" \
                 "that died? Stop that process, then restart the daemon (its containers keep running) and run $who again" >&2
        else
            echo "$who: network $name is $status: the daemon's log says why" >&2
        fi
        down=1
    done <<<"$(networks_down "$cli")"
    return $down
}
