#!/usr/bin/env bash
# Starts Incus if it does not run (these machines have no systemd) and
# initialises it once: a 'dir' storage pool and a managed bridge incusbr0 on
# its own subnet (LXC's lxcbr0 is 10.0.3.0/24). Idempotent, like lxd-up.sh, and
# like it also after a crash (a daemon that died with containers running, and
# the dnsmasq it left). incusd runs as Incus ships it: it mounts containers'
# rootfs idmapped, which pycor's overlay profile and hooks handle.
# INCUS_DIR picks another daemon (default /var/lib/incus), PYCOR_INCUS_BRIDGE
# and PYCOR_INCUS_BRIDGE_ADDR its bridge (default incusbr0, 10.0.113.1/24).
# PYCOR_KSM=1 starts it under the kernel's samepage merging (see daemon-up-lib.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/daemon-up-lib.sh"
INCUSD=/usr/libexec/incus/incusd
# the daemon's dir: INCUS_DIR only when given (a daemon started with INCUS_DIR set, even to its default,
# keeps its run files and instance logs under it instead of where the packaged daemon keeps them)
DIR=${INCUS_DIR:-/var/lib/incus}
BRIDGE=${PYCOR_INCUS_BRIDGE:-incusbr0}
ADDR=${PYCOR_INCUS_BRIDGE_ADDR:-10.0.113.1/24}
LOG=/var/log/incus-daemon.log
[ "$DIR" = /var/lib/incus ] || LOG=$DIR/daemon.log
if [ ! -x "$INCUSD" ]; then
    echo "incus-up: $INCUSD is missing: install incus-base (scripts/setup.sh does, from bookworm-backports)" >&2
    exit 1
fi
if ! incus info >/dev/null 2>&1; then
    if [ -z "$(daemon_pid "$DIR/unix.socket")" ]; then
        clear_dead_daemon_networks "$DIR" incus-up
        # not INCUS_IDMAPPED_MOUNTS_DISABLE: an older incus-up.sh set it, and from its environment a
        # shell started here would hand it on
        start_daemon "$LOG" env -u INCUS_IDMAPPED_MOUNTS_DISABLE "$INCUSD"
    fi
    timeout 120 incus admin waitready
fi
if ! incus storage show default >/dev/null 2>&1; then
    incus admin init --preseed <<YAML
config: {}
networks:
- name: $BRIDGE
  type: bridge
  config:
    ipv4.address: $ADDR
    ipv4.nat: "true"
    ipv6.address: none
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
    eth0:
      name: eth0
      network: $BRIDGE
      type: nic
YAML
fi
pid=$(daemon_pid "$DIR/unix.socket")
if [ -n "$pid" ] && grep -qx 'INCUS_IDMAPPED_MOUNTS_DISABLE=1' <<<"$(tr '\0' '\n' < "/proc/$pid/environ")"; then
    echo "incus-up: note: incusd runs with INCUS_IDMAPPED_MOUNTS_DISABLE=1, which pycor no longer needs;" \
         "restart it without that variable to let Incus mount its containers' rootfs idmapped" >&2
fi
require_networks_up incus incus-up
