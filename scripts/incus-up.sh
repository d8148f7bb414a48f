#!/usr/bin/env bash
# Starts Incus if it does not run (these machines have no systemd) and
# initialises it once: a 'dir' storage pool and a managed bridge incusbr0 on
# its own subnet (LXC's lxcbr0 is 10.0.3.0/24). Idempotent, like lxd-up.sh.
set -euo pipefail
INCUSD=/usr/libexec/incus/incusd
if [ ! -x "$INCUSD" ]; then
    echo "incus-up: $INCUSD is missing: install incus-base (scripts/setup.sh does, from bookworm-backports)" >&2
    exit 1
fi
if ! incus info >/dev/null 2>&1; then
    if ! pgrep -x incusd >/dev/null; then
        mkdir -p /var/log
        # from /: the daemon outlives this checkout, and its helpers (rsync) need a cwd that exists.
        # INCUS_IDMAPPED_MOUNTS_DISABLE: Incus then shifts a new container's files on disk (as LXD 5.0
        # does) instead of mounting its rootfs idmapped (lxc.rootfs.options = idmap=container), which
        # would hide pycor's overlay; pycor's hooks refuse such a container with this hint.
        # Every fd of the daemon away from ours: a caller that reads our output (CI, a test) must see its end.
        (cd / && INCUS_IDMAPPED_MOUNTS_DISABLE=1 exec setsid nohup "$INCUSD" --group root --logfile /var/log/incus-daemon.log) \
            </dev/null >/dev/null 2>&1 &
    fi
    timeout 120 incus admin waitready
fi
if ! incus storage show default >/dev/null 2>&1; then
    incus admin init --preseed <<'YAML'
config: {}
networks:
- name: incusbr0
  type: bridge
  config:
    ipv4.address: 10.0.113.1/24
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
      network: incusbr0
      type: nic
YAML
fi
pid=$(pgrep -xo incusd || true)
if [ -n "$pid" ] && ! tr '\0' '\n' < "/proc/$pid/environ" | grep -qx 'INCUS_IDMAPPED_MOUNTS_DISABLE=1'; then
    echo "incus-up: warning: incusd runs without INCUS_IDMAPPED_MOUNTS_DISABLE=1: pycor containers it creates" \
         "will not start (restart it with that variable set)" >&2
fi
