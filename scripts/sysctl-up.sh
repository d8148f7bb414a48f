#!/usr/bin/env bash
# Kernel limits for many system containers on one host: LXD's and Incus's "production setup" values,
# and those a fleet of N booted containers needs beyond them. Written to /etc/sysctl.d (for the next
# boot) and applied now. Only ever raises: a limit already higher (set by hand or by another file) is
# kept, in both places. Idempotent.
#
#   scripts/sysctl-up.sh [N]     N: booted containers to plan for (default 2000)
#
# The default is what scripts/setup.sh applies: these are ceilings, not reservations (the kernel
# allocates nothing until something uses them), so a host running a handful of containers loses
# nothing by them. What one booted container of the default base takes (Linux 6.18, systemd 252):
#   inotify: 9 instances, ~31 watches, on host root's budget when privileged: Debian's 128
#     instances boot about 17                                    -> fs.inotify.*
#   ptys: 5 for an LXC container (console + lxc.tty.max = 4 of common.conf), 1 under LXD, all
#     from kernel.pty.max less kernel.pty.reserve: 4096 stops LXC near 600 ("Failed to allocate
#     terminal")                                                  -> kernel.pty.max
#   tasks: 10 to 12, about 40 while it boots                      -> kernel.pid_max
#   keys: ~17 (330 bytes) per unprivileged container, all on one host uid when containers share an
#     idmap (LXD's default): 2000 holds ~117; privileged, one per service user and container
#                                                                 -> kernel.keys.maxkeys, maxbytes
#   one ARP entry on the host per container it talks to: past gc_thresh3 the kernel drops entries
#     ("neighbour table overflow") and HTTP and DHCP renewals fail -> net.ipv4/6.neigh.default.gc_thresh*
#   seccomp filters systemd installs in unprivileged containers are JIT-compiled within
#     net.core.bpf_jit_limit                                      -> net.core.bpf_jit_limit
# PYCOR_PROC_SYS and PYCOR_SYSCTL_D point it elsewhere than /proc/sys and /etc/sysctl.d (tests).
set -euo pipefail
n=${1:-2000}
case $n in '' | *[!0-9]*) echo "usage: $0 [N]   (N: how many containers to plan for, a number)" >&2; exit 2 ;; esac
proc_sys=${PYCOR_PROC_SYS:-/proc/sys}
sysctl_d=${PYCOR_SYSCTL_D:-/etc/sysctl.d}
conf=$sysctl_d/60-pycor-containers.conf
at_least() { echo $(( $1 > $2 ? $1 : $2 )); }
want=(
    "fs.inotify.max_user_instances 1048576"
    "fs.inotify.max_user_watches 1048576"
    "fs.inotify.max_queued_events 1048576"
    "fs.aio-max-nr 524288"
    "vm.max_map_count 262144"
    "net.core.bpf_jit_limit 1000000000"
    "kernel.pty.max $(at_least 65536 $(( n * 6 + 1024 )))"
    "kernel.pid_max 4194304"
    "kernel.keys.maxkeys $(at_least 2000 $(( n * 25 )))"
    "kernel.keys.maxbytes $(at_least 2000000 $(( n * 12500 )))"
    "net.ipv4.neigh.default.gc_thresh2 $(at_least 4096 $(( n * 2 )))"
    "net.ipv4.neigh.default.gc_thresh3 $(at_least 8192 $(( n * 4 )))"
    "net.ipv6.neigh.default.gc_thresh2 $(at_least 4096 $(( n * 2 )))"
    "net.ipv6.neigh.default.gc_thresh3 $(at_least 8192 $(( n * 4 )))"
)
lines=("# written by pycor's scripts/sysctl-up.sh $n: limits for $n booted system containers (LXD/Incus production setup)")
for kv in "${want[@]}"; do
    read -r key value <<<"$kv"
    file=$proc_sys/${key//.//}
    [ -e "$file" ] || continue  # a key this kernel does not have (no IPv6, an older kernel)
    cur=$(cat "$file")
    lines+=("$key = $(at_least "$cur" "$value")")
    if [ "$cur" -lt "$value" ]; then
        echo "$value" > "$file" 2>/dev/null || echo "pycor setup: cannot raise $key to $value here (set it on the host)" >&2
    fi
done
mkdir -p "$sysctl_d"
printf '%s\n' "${lines[@]}" > "$conf.tmp"
mv "$conf.tmp" "$conf"
