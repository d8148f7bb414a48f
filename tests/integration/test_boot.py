"""Real systems: containers from the bootable base boot systemd to 'running', get an
address on their runtime's bridge (LXC's lxcbr0, LXD's lxdbr0) and resolve names
through it, privileged and unprivileged under LXC, and under LXD."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
from collections.abc import Callable

import pytest

from helpers import PYCOR, run
from pycor_hooks.debian import apt_mirror, wait_for_boot_script

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOT_TIMEOUT = 180  # systemd's own job timeouts (wait-online: 120 s) end before it


@pytest.fixture(scope="module")
def lxc_bridge() -> None:
    """lxcbr0 with dnsmasq and NAT, as setup.sh brings it up."""
    run(["bash", os.path.join(REPO, "scripts", "lxc-net-up.sh")])


def dnsmasq_serving_lxcbr0() -> bool:
    """lxc-net's dnsmasq (named by its pid file) is alive."""
    try:
        with open("/run/lxc/dnsmasq.pid") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "dnsmasq"
    except (OSError, ValueError):
        return False


def test_lxc_net_up_restarts_lxc_net_whose_dnsmasq_died() -> None:
    """A host whose processes were killed keeps lxcbr0 but loses dnsmasq: containers
    then boot without an address. Setup must bring DHCP back, not trust the bridge."""
    run(["bash", os.path.join(REPO, "scripts", "lxc-net-up.sh")])
    if dnsmasq_serving_lxcbr0():
        with open("/run/lxc/dnsmasq.pid") as f:
            os.kill(int(f.read().strip()), 9)
    deadline = time.monotonic() + 5
    while dnsmasq_serving_lxcbr0() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists("/sys/class/net/lxcbr0") and not dnsmasq_serving_lxcbr0()
    run(["bash", os.path.join(REPO, "scripts", "lxc-net-up.sh")])
    assert dnsmasq_serving_lxcbr0(), "lxc-net-up.sh left lxcbr0 without its dnsmasq"


def mirror_host() -> str:
    host = urllib.parse.urlsplit(apt_mirror()).hostname
    assert host, f"apt's mirror {apt_mirror()} has no host name to resolve"
    return host


def boots_to_running(sh: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    state = sh(wait_for_boot_script(BOOT_TIMEOUT), check=False).stdout.strip()
    failed = sh("systemctl --failed --no-legend --plain", check=False).stdout
    assert state == "running", f"systemctl is-system-running says {state!r}; failed units:\n{failed}"


def ipv4_of_eth0(sh: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = sh("ip -4 -o addr show dev eth0", check=False).stdout.split()
        if "inet" in out:
            return out[out.index("inet") + 1].split("/")[0]
        time.sleep(0.5)
    raise AssertionError(f"eth0 got no IPv4 address: {sh('ip addr; networkctl status eth0', check=False).stdout}")


def assert_resolves(sh: Callable[..., subprocess.CompletedProcess[str]], host: str) -> None:
    out = sh(f"getent ahostsv4 {host}", check=False)
    assert out.returncode == 0 and out.stdout.split(), f"{host} does not resolve inside the container: {out.stderr}"


@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_lxc_container_from_bootable_base_boots_gets_an_address_and_resolves(
        make_container, bootable_base, lxc_bridge, unprivileged):
    extra = ("--network", "default") + (("--unprivileged",) if unprivileged else ())
    c = make_container(base=bootable_base, extra=extra)
    c.start()
    boots_to_running(c.sh)
    address = ipv4_of_eth0(c.sh)
    assert address.startswith("10.0.3.")  # lxc-net's DHCP range on lxcbr0
    assert_resolves(c.sh, mirror_host())
    # the base's service answers from the host, and each container has its own machine-id
    page = run(["curl", "-s", "-m", "10", f"http://{address}/"]).stdout
    assert "nginx" in page
    assert c.sh("cat /etc/machine-id").stdout.strip() not in ("", "uninitialized")


def test_lxc_containers_from_one_base_get_their_own_addresses(make_container, bootable_base, lxc_bridge):
    a, b = (make_container(base=bootable_base, extra=("--network", "default")) for _ in range(2))
    a.start()
    b.start()
    boots_to_running(a.sh)
    boots_to_running(b.sh)
    assert ipv4_of_eth0(a.sh) != ipv4_of_eth0(b.sh)
    assert a.sh("cat /etc/machine-id").stdout != b.sh("cat /etc/machine-id").stdout
    assert a.sh("hostname").stdout.strip() == a.name  # not 'localhost': the name LXC gave it stays


def test_lxd_container_from_bootable_base_boots_gets_an_address_and_resolves(request, launch, bootable_base):
    daemon = request.node.callspec.params["launch"]  # lxd or incus
    if daemon == "lxd":
        run(["bash", os.path.join(REPO, "scripts", "lxd-up.sh")], timeout=300)  # lxdbr0
    denv = request.getfixturevalue(f"{daemon}_env")
    run(PYCOR + [daemon, "init"], env=denv)  # the image pycor/BASE for a base made after the daemon's setup
    c = launch(base=bootable_base, extra=("--network", "lxdbr0" if daemon == "lxd" else "incusbr0"))
    boots_to_running(c.sh)
    address = ipv4_of_eth0(c.sh)
    assert_resolves(c.sh, mirror_host())
    assert "nginx" in run(["curl", "-s", "-m", "10", f"http://{address}/"]).stdout


def test_bootable_without_debootstrap_is_one_clear_error_and_makes_nothing(env, store, installed):
    proc = run(PYCOR + ["base", "import", "bb", "--busybox", "--bootable"], env=env, check=False)
    assert proc.returncode != 0
    assert "--bootable needs --debootstrap" in proc.stderr
    assert not os.path.exists(os.path.join(store, "bases", "bb"))


# The memory cgroups of a container, as it sees them (its cgroup namespace's root and below; v1 or v2).
MEMORY_CGROUPS = ("if [ -d /sys/fs/cgroup/memory ]; then find /sys/fs/cgroup/memory -name memory.usage_in_bytes; "
                  "else find /sys/fs/cgroup -name memory.current; fi")


def test_bootable_base_keeps_what_each_container_costs_small(make_container, bootable_base, lxc_bridge):
    """A fleet runs a thousand of them: a journal capped at 8 MiB on the container's layer (Debian's first
    file alone is 8 MiB of page cache), one nginx worker (not one per host CPU), no apt timers, logind
    started on demand, not at boot, and one memory cgroup for the whole container (not one per service:
    each memory cgroup costs kernel memory for every filesystem mounted on the host, so a fleet's would
    grow with the square of its size)."""
    c = make_container(base=bootable_base, extra=("--network", "default"))
    c.start()
    boots_to_running(c.sh)
    memcgs = c.sh(MEMORY_CGROUPS).stdout.split()
    assert len(memcgs) == 1, memcgs
    journald = c.sh("journalctl -b -q -t systemd-journald --no-pager").stdout
    assert "System Journal (/var/log/journal/" in journald and "max 8.0M" in journald, journald
    workers = c.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^nginx: worker'",
                   check=False).stdout.strip()
    assert workers == "1"
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert c.sh(f"systemctl is-enabled {timer}", check=False).stdout.strip() == "disabled"
    assert c.sh("systemctl is-enabled dpkg-db-backup.timer", check=False).stdout.strip() == "enabled"  # only apt's
    # logind is not started at boot: D-Bus starts it when asked (loginctl), and a boot does when a user lingers.
    assert c.sh("systemctl is-active systemd-logind", check=False).stdout.strip() == "inactive"
    c.sh("loginctl list-sessions --no-pager")
    assert c.sh("systemctl is-active systemd-logind", check=False).stdout.strip() == "active"
    c.sh("useradd --create-home lingerer && loginctl enable-linger lingerer")
    c.stop()
    c.start()
    c.sh(wait_for_boot_script(BOOT_TIMEOUT), check=False)
    assert c.sh("systemctl is-active systemd-logind", check=False).stdout.strip() == "active"
