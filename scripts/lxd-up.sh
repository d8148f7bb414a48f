#!/usr/bin/env bash
# Starts LXD if it does not run (these machines have no systemd) and
# initialises it once with a 'dir' storage pool. Idempotent.
set -euo pipefail
if ! lxc info >/dev/null 2>&1; then
    if ! pgrep -x lxd >/dev/null; then
        mkdir -p /var/log
        # from /: the daemon outlives this checkout, and its helpers (rsync) need a cwd that exists
        # Every fd of the daemon away from ours: a caller that reads our output (CI, a test) must see its end.
        (cd / && exec setsid nohup lxd --group root --logfile /var/log/lxd-daemon.log) </dev/null >/dev/null 2>&1 &
    fi
    timeout 120 lxd waitready
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
# LXD's usual managed bridge lxdbr0 (DHCP, DNS, NAT) on the default profile's eth0,
# also where LXD was initialised before without a network. LXD's own subnet
# search fails on some machines (no ping): then a fixed, unused /24.
if ! lxc network show lxdbr0 >/dev/null 2>&1; then
    lxc network create lxdbr0 ipv4.address=auto ipv4.nat=true ipv6.address=none 2>/dev/null ||
        lxc network create lxdbr0 ipv4.address="${PYCOR_LXDBR0_ADDR:-10.0.100.1/24}" ipv4.nat=true ipv6.address=none
fi
if ! lxc profile device get default eth0 network >/dev/null 2>&1; then
    lxc profile device add default eth0 nic name=eth0 network=lxdbr0 >/dev/null
fi
