#!/usr/bin/env bash
# Installs what pycor needs on a Debian machine, idempotently: LXC and the tools
# bases are built with (apt), pycor itself in .venv (pip), and pycor's LXC hooks
# and template (pycor install). Run by demo.sh and test.sh; run as root.
#   setup.sh --fleet N   also bridges for N LXC containers (fleet-net.sh fleet N: fleetbr0...), and the
#                        kernel limits for N booted containers if N is above 2000 (sysctl-up.sh's default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fleet=
case "${1:-}" in
    --fleet) fleet=${2:-}; [[ $fleet =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [--fleet N]" >&2; exit 2; } ;;
    "") ;;
    *) echo "usage: $0 [--fleet N]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "pycor setup: run this as root (sudo): it installs packages and starts containers" >&2
    exit 1
fi

APT_PACKAGES=(lxc lxd dnsmasq-utils debootstrap busybox-static rsync tar xz-utils zstd acl attr util-linux btrfs-progs
              python3 python3-venv python3-dev gcc libcap-dev ca-certificates)
APT_PACKAGES+=(dnsmasq-base nftables curl)  # lxc-net's DHCP and NAT; curl for the demo's web check
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pycor setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

# From <codename>-backports on Debian 12, pinned so that nothing but these packages comes from it:
# Incus (incus-base needs only this system's liblxc1, so it sits beside LXD) and autopkgtest.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
BACKPORTS_PACKAGES="incus incus-base incus-client libcowsql0 libraft0 autopkgtest"
BACKPORTS_SOURCES=/etc/apt/sources.list.d/pycor-backports.sources
BACKPORTS_PIN=/etc/apt/preferences.d/pycor-backports

# Adds <codename>-backports with its pin (or brings the pin up to date) and reads its package lists.
use_backports() {
    local mirror
    if [ ! -e "$BACKPORTS_SOURCES" ]; then
        # the mirror this machine already uses for its own suite (never a hard-coded host)
        mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
                   /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        printf '%s\n' "# added by pycor's scripts/setup.sh: Incus and autopkgtest come from ${codename}-backports" \
            "Types: deb" "URIs: $mirror" "Suites: ${codename}-backports" "Components: main" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$BACKPORTS_SOURCES"
    fi
    pin_backports
    apt-get update -q -o DPkg::Lock::Timeout=300
}

pin_backports() {
    printf '%s\n' "# added by pycor's scripts/setup.sh: from ${codename}-backports take only what pycor needs" \
        "Package: *" "Pin: release n=${codename}-backports" "Pin-Priority: -10" "" \
        "Package: $BACKPORTS_PACKAGES" "Pin: release n=${codename}-backports" "Pin-Priority: 500" > "$BACKPORTS_PIN"
}

if [ -e "$BACKPORTS_SOURCES" ]; then
    pin_backports  # a pin written by an older setup names fewer packages
fi

INCUS_PACKAGES=(incus-base incus-client)
if ! dpkg-query -W -f='${Status}' incus-base 2>/dev/null | grep -q "install ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache policy incus-base 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        use_backports
    fi
    echo "pycor setup: installing ${INCUS_PACKAGES[*]} (from ${codename}-backports)"
    apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${INCUS_PACKAGES[@]}"
fi

# autopkgtest, for the test that runs a Debian package's own tests on an ephemeral pycor clone
# (tests/integration/test_autopkgtest.py). Debian 12's 5.28 waits for 'runlevel' in a trixie
# testbed, which never answers there: take bookworm-backports' (5.49) on Debian 12.
autopkgtest_version=$(dpkg-query -W -f='${Version}' autopkgtest 2>/dev/null || true)
if [ -z "$autopkgtest_version" ] || dpkg --compare-versions "$autopkgtest_version" lt 5.29; then
    export DEBIAN_FRONTEND=noninteractive
    if [ "$codename" = bookworm ]; then
        use_backports
    fi
    echo "pycor setup: installing autopkgtest"
    apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends autopkgtest uidmap
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check '.[test]'
.venv/bin/pycor install >/dev/null
bash scripts/sysctl-up.sh $(( ${fleet:-0} > 2000 ? fleet : 2000 ))  # ceilings for 2000 cost nothing (see the script)
bash scripts/lxc-net-up.sh
bash scripts/lxd-up.sh
bash scripts/incus-up.sh
if [ -n "$fleet" ]; then
    bash scripts/fleet-net.sh fleet "$fleet"
fi
echo "pycor setup: $(.venv/bin/pycor --version 2>/dev/null || echo pycor) installed in .venv, hooks and template installed for LXC; LXD and Incus running"
