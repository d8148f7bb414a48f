#!/usr/bin/env bash
# Builds pycor's Debian package from this checkout with Debian's own tools
# (dpkg-buildpackage, debhelper, dh-python, pybuild), in a copy outside the
# checkout and without network, runs lintian on it, and optionally installs it.
#
#   sudo bash scripts/deb.sh [--out DIR] [--install]
#
# The last line printed is the path of the .deb (default DIR: /var/tmp/pycor-deb).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=/var/tmp/pycor-deb
install=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --install) install=1; shift ;;
        *) echo "usage: $0 [--out DIR] [--install]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "pycor deb: run this as root (sudo): it installs the build tools from apt" >&2
    exit 1
fi

BUILD_DEPS=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            python3-argparse-manpage lintian fakeroot)
missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pycor deb: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
case "$out/" in
    "$repo"/*) echo "pycor deb: --out must be outside the checkout ($repo)" >&2; exit 2 ;;
esac
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# What a clone has, plus uncommitted changes; never the checkout's venv or caches.
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=./build --exclude=.pytest_cache -cf - . | (mkdir "$work/pycor" && tar -C "$work/pycor" -xf -)

# No network while building: the package must build from the source alone. A clean
# environment: Debian's own python3, not one a PATH (pyenv, a venv) puts first.
(cd "$work/pycor" && unshare --net -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent LANG=C.UTF-8 \
    dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "pycor deb: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
changes=$(ls "$work"/pycor_*.changes)
deb=$(ls "$work"/pycor_*_all.deb)
rm -f "$out"/pycor_*
cp "$deb" "$changes" "$work"/pycor_*.buildinfo "$out"/
deb="$out/$(basename "$deb")"

# lintian: errors fail the build; anything else it says is shown (at this commit it says
# nothing, even with --pedantic; a warning that stays gets an override with its reason in debian/).
lintian --fail-on error --pedantic --display-info --info "$out/$(basename "$changes")" >&2 || {
    echo "pycor deb: lintian reports errors (above)" >&2
    exit 1
}
if [ "$install" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" >&2
fi
echo "$deb"
