#!/usr/bin/env bash
# Starts LXD if it does not run (these machines have no systemd) and
# initialises it once with a 'dir' storage pool and its managed bridge. Idempotent.
# Also after a crash: a daemon that died with containers running is started
# again (their monitors keep running), and the dnsmasq it left on its bridge
# is stopped first, or the new daemon could not bring its network up.
# LXD_DIR picks another daemon (default /var/lib/lxd), PYCOR_LXD_BRIDGE and
# PYCOR_LXD_BRIDGE_ADDR its bridge (default lxdbr0, a subnet LXD picks).
# PYCOR_KSM=1 starts it under the kernel's samepage merging (see daemon-up-lib.sh): each container's
# monitor then takes ~4 MiB instead of ~11. A daemon already running is left as it is, with a note.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/daemon-up-lib.sh"
# the daemon's dir: LXD_DIR only when given (a daemon started with LXD_DIR set, even to its default,
# keeps its run files and instance logs under it instead of where the packaged daemon keeps them)
DIR=${LXD_DIR:-/var/lib/lxd}
BRIDGE=${PYCOR_LXD_BRIDGE:-lxdbr0}
LOG=/var/log/lxd-daemon.log
[ "$DIR" = /var/lib/lxd ] || LOG=$DIR/daemon.log
if ! lxc info >/dev/null 2>&1; then
    if [ -z "$(daemon_pid "$DIR/unix.socket")" ]; then
        clear_dead_daemon_networks "$DIR" lxd-up
        start_daemon "$LOG" lxd
    fi
    timeout 120 lxd waitready
fi
pid=$(daemon_pid "$DIR/unix.socket")
if [ "${PYCOR_KSM:-0}" = 1 ] && [ -n "$pid" ] && ! ksm_merging "$pid"; then
    echo "lxd-up: LXD (pid $pid) runs without samepage merging: PYCOR_KSM=1 applies when this script starts it" >&2
fi
if ! lxc storage show default >/dev/null 2>&1; then
    lxd init --preseed <<'YAML'
config: {}
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
YAML
fi
# LXD's usual managed bridge (DHCP, DNS, NAT) on the default profile's eth0,
# also where LXD was initialised before without a network. LXD's own subnet
# search fails on some machines (no ping): then a fixed, unused /24.
if ! lxc network show "$BRIDGE" >/dev/null 2>&1; then
    lxc network create "$BRIDGE" ipv4.address="${PYCOR_LXD_BRIDGE_ADDR:-auto}" ipv4.nat=true ipv6.address=none 2>/dev/null ||
        lxc network create "$BRIDGE" ipv4.address="${PYCOR_LXDBR0_ADDR:-10.0.100.1/24}" ipv4.nat=true ipv6.address=none
fi
if ! lxc profile device get default eth0 network >/dev/null 2>&1; then
    lxc profile device add default eth0 nic name=eth0 network="$BRIDGE" >/dev/null
fi
require_networks_up lxc lxd-up
