#!/usr/bin/env bash
# Kernel limits for many system containers on one host, as LXD's and Incus's
# "production setup" guides give them. Every privileged container's systemd
# (and journald, logind, networkd...) takes inotify instances from host root's
# one budget: with Debian's default of 128, about the 18th booted container's
# systemd cannot start and the container dies. Written to /etc/sysctl.d (for
# the next boot) and applied now; a limit already higher is kept. Idempotent.
set -euo pipefail
conf=/etc/sysctl.d/60-pycor-containers.conf
want=(
    "fs.inotify.max_user_instances 1048576"
    "fs.inotify.max_user_watches 1048576"
    "fs.inotify.max_queued_events 1048576"
    "vm.max_map_count 262144"
    "kernel.keys.maxkeys 2000"
    "kernel.keys.maxbytes 2000000"
)
lines=("# written by pycor's scripts/sysctl-up.sh: limits for many system containers (LXD/Incus production setup)")
for kv in "${want[@]}"; do
    read -r key value <<<"$kv"
    file=/proc/sys/${key//.//}
    [ -e "$file" ] || continue
    cur=$(cat "$file")
    lines+=("$key = $(( cur > value ? cur : value ))")  # never lower what another file sets
    if [ "$cur" -lt "$value" ]; then
        echo "$value" > "$file" 2>/dev/null || echo "pycor setup: cannot raise $key to $value here (set it on the host)" >&2
    fi
done
mkdir -p /etc/sysctl.d
printf '%s\n' "${lines[@]}" > "$conf"
