#!/usr/bin/env bash
# Starts LXD if it does not run (these machines have no systemd) and
# initialises it once with a 'dir' storage pool and no network. Idempotent.
set -euo pipefail
if ! lxc info >/dev/null 2>&1; then
    if ! pgrep -x lxd >/dev/null; then
        mkdir -p /var/log
        # from /: the daemon outlives this checkout, and its helpers (rsync) need a cwd that exists
        (cd / && nohup lxd --group root --logfile /var/log/lxd-daemon.log >/dev/null 2>&1 &)
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
