#!/usr/bin/env bash
# Installs what pycor needs on a Debian machine, idempotently: LXC and the tools
# bases are built with (apt), pycor itself in .venv (pip), and pycor's LXC hooks
# and template (pycor install). Sourced by demo.sh and test.sh; run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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

# Incus: from <codename>-backports on Debian 12 (incus-base needs only this system's liblxc1, so it
# sits beside LXD). The suite is pinned so that nothing but Incus and its two libraries comes from it.
INCUS_PACKAGES=(incus-base incus-client)
if ! dpkg-query -W -f='${Status}' incus-base 2>/dev/null | grep -q "install ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    if ! apt-cache policy incus-base 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        # the mirror this machine already uses for its own suite (never a hard-coded host)
        mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
                   /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        sources=/etc/apt/sources.list.d/pycor-backports.sources
        if [ ! -e "$sources" ]; then
            printf '%s\n' "# added by pycor's scripts/setup.sh: Incus comes from ${codename}-backports" \
                "Types: deb" "URIs: $mirror" "Suites: ${codename}-backports" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$sources"
        fi
        printf '%s\n' "# added by pycor's scripts/setup.sh: from ${codename}-backports take Incus only" \
            "Package: *" "Pin: release n=${codename}-backports" "Pin-Priority: -10" "" \
            "Package: incus incus-base incus-client libcowsql0 libraft0" "Pin: release n=${codename}-backports" \
            "Pin-Priority: 500" > /etc/apt/preferences.d/pycor-backports
        apt-get update -q -o DPkg::Lock::Timeout=300
    fi
    echo "pycor setup: installing ${INCUS_PACKAGES[*]} (from ${codename}-backports)"
    apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${INCUS_PACKAGES[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check '.[test]'
.venv/bin/pycor install >/dev/null
bash scripts/sysctl-up.sh
bash scripts/lxc-net-up.sh
bash scripts/lxd-up.sh
bash scripts/incus-up.sh
echo "pycor setup: $(.venv/bin/pycor --version 2>/dev/null || echo pycor) installed in .venv, hooks and template installed for LXC; LXD and Incus running"
