#!/usr/bin/env bash
# pycor's main job, end to end: build a default base (a debootstrap Debian
# minbase), start three containers on it, and show what they share.
# The containers stay up afterwards; 'pycor rm -f demo1' etc. remove them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PYCOR=.venv/bin/pycor
BASE=${PYCOR_DEMO_BASE:-debian12}
SUITE=${PYCOR_DEMO_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}

if ! $PYCOR base ls --format json | grep -q "\"name\": \"$BASE\""; then
    $PYCOR base import "$BASE" --debootstrap "$SUITE"
fi
# LXC's default config names the lxcbr0 bridge; without it (no lxc-net), no network.
network=default
if grep -q '^lxc.net.0.link *= *lxcbr0' /etc/lxc/default.conf 2>/dev/null && [ ! -e /sys/class/net/lxcbr0 ]; then
    network=none
fi
for c in demo1 demo2 demo3; do
    if ! lxc-info -n "$c" >/dev/null 2>&1; then
        $PYCOR create "$c" --base "$BASE" --network "$network"
    fi
    if [ "$(lxc-info -n "$c" -sH)" != RUNNING ]; then
        lxc-start -n "$c"
        lxc-wait -n "$c" -s RUNNING -t 20
    fi
done
$PYCOR ls
.venv/bin/python scripts/sharing.py --base "$BASE" demo1 demo2 demo3
