#!/usr/bin/env bash
# pycor's main job, end to end, on real systems: build the default base (a
# debootstrap Debian that boots systemd, with DHCP on eth0 and nginx) once,
# boot three containers on it, and show the time they took, the disk each
# uses, what the page cache and memory hold for three against one, and each
# one's address and web server. The containers stay up afterwards;
# 'lxc-destroy -f -n demo1' etc. remove them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PYCOR=.venv/bin/pycor
BASE=${PYCOR_DEMO_BASE:-debian12}
LXCPATH=(${PYCOR_DEMO_LXCPATH:+-P "$PYCOR_DEMO_LXCPATH"})  # LXC's default path unless set
SUITE=${PYCOR_DEMO_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}

if ! $PYCOR base ls --format json | grep -q "\"name\": \"$BASE\""; then
    echo "Building the default base $BASE (debootstrap $SUITE, bootable), once:"
    start=$(date +%s)
    $PYCOR base import "$BASE" --debootstrap "$SUITE" --bootable
    echo "base $BASE built in $(( $(date +%s) - start )) s"
elif ! .venv/bin/python -c 'import sys; from pycor_hooks.store import Store; s = Store()
sys.exit(0 if "+bootable" in s.version(sys.argv[1], s.current(sys.argv[1])).source else 1)' "$BASE"; then
    echo "pycor demo: base $BASE exists but was not built with --bootable (no systemd, no network setup)" >&2
    echo "  remove it with 'pycor base rm $BASE' (after removing its containers), or run with PYCOR_DEMO_BASE=another-name" >&2
    exit 1
fi
for c in demo1 demo2 demo3; do
    if ! lxc-info -n "$c" "${LXCPATH[@]}" >/dev/null 2>&1; then
        $PYCOR create "$c" --base "$BASE" "${LXCPATH[@]}"
    fi
done
.venv/bin/python scripts/sharing.py --base "$BASE" "${LXCPATH[@]}" demo1 demo2 demo3
echo
$PYCOR ls "${LXCPATH[@]}"
