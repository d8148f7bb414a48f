"""A fleet on one host: the bridges scripts/fleet-net.sh makes (in a network namespace of the test's own,
so the host's network is never touched) and 'pycor doctor --fleet N' on this host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

from helpers import PYCOR, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLEET_NET = os.path.join(REPO, "scripts", "fleet-net.sh")


def in_own_netns(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a network and mount namespace of its own, with /run and /var/lib/misc on tmpfs;
    whatever it leaves (a dnsmasq would keep the namespace alive) is stopped on the way out."""
    prologue = (f"F={FLEET_NET}; trap 'for b in tbr0 tbr1; do bash $F down $b >/dev/null 2>&1; done; ip netns del c1 2>/dev/null || true' EXIT\n"
                "mount -t tmpfs none /run && mount -t tmpfs none /var/lib/misc && mkdir -p /run/netns && ip link set lo up\n")
    return subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "bash", "-euc", prologue + script],
                          capture_output=True, text=True, timeout=120, env=env)


def test_fleet_bridge_comes_up_once_sized_for_1000_and_goes_with_all_it_had():
    out = in_own_netns("""
bash $F up tbr0 10.99.0.1/22
bash $F up tbr0 10.99.0.1/22                       # again: nothing more
ip -br addr show tbr0
echo dnsmasq=$(pgrep -x dnsmasq -a | grep -c -- '--interface=tbr0 ' || true)
pgrep -x dnsmasq -a | grep -- '--interface=tbr0 ' | grep -o -- '--dhcp-lease-max=[0-9]*'
bash $F up tbr1 10.99.2.1/23 || echo overlap-refused=$?
ip link add lxcbr0 type bridge; bash $F up lxcbr0 10.98.0.1/22 || echo not-ours=$?
bash $F up 'bad name' 10.97.0.1/22 || echo bad-name=$?
bash $F down tbr0
ip link show tbr0 2>/dev/null || echo bridge-gone
echo dnsmasq-after=$(pgrep -x dnsmasq -a | grep -c -- '--interface=tbr0 ' || true)
ls /var/lib/misc
""")
    assert out.returncode == 0, out.stderr
    assert "10.99.0.1/22" in out.stdout and "dnsmasq=1\n" in out.stdout
    assert "--dhcp-lease-max=1021" in out.stdout  # every address of the /22
    assert "overlap-refused=1" in out.stdout and "overlaps the route 10.99.0.0/22" in out.stderr
    assert "not-ours=1" in out.stdout and "lxcbr0 exists and was not made by fleet-net.sh" in out.stderr
    assert "bad-name=2" in out.stdout
    assert "bridge-gone" in out.stdout and "dnsmasq-after=0" in out.stdout
    assert "dnsmasq.tbr0.leases" not in out.stdout


def test_fleet_bridge_leases_an_address_and_release_hands_it_back():
    out = in_own_netns("""
bash $F up tbr0 10.99.0.1/22
ip link add v0 type veth peer name v1 && ip link set v0 master tbr0 up
ip netns add c1 && ip link set v1 netns c1 && ip netns exec c1 ip link set v1 up
ip netns exec c1 busybox udhcpc -i v1 -n -q -t 5 -T 1 -s /bin/true -x hostname:fleetc7 >/dev/null 2>&1
echo "leased: $(cat /var/lib/misc/dnsmasq.tbr0.leases)"
bash $F release tbr0 someone-else
echo "kept: $(cat /var/lib/misc/dnsmasq.tbr0.leases)"
bash $F release tbr0 other fleetc7
sleep 0.5
echo "released: $(cat /var/lib/misc/dnsmasq.tbr0.leases)"
""")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if line.startswith(("leased", "kept", "released")))
    assert " 10.99." in lines["leased"] and " fleetc7 " in lines["leased"]
    assert lines["kept"] == lines["leased"]
    assert lines["released"].strip() == ""


def test_fleet_bridges_for_n_containers_take_free_subnets():
    out = in_own_netns("""
ip link add other type bridge && ip addr add 10.23.0.1/24 dev other && ip link set other up
bash $F fleet 1500
ip -br addr show | grep fleetbr
bash $F fleet 1500 >/dev/null                     # again: the same two
ip -br link | grep -c fleetbr
bash $F down fleetbr0; bash $F down fleetbr1
""")
    assert out.returncode == 0, out.stderr
    assert "fleetbr0" in out.stdout and "10.23.4.1/22" in out.stdout  # 10.23.0.0/22 overlaps 'other'
    assert "fleetbr1" in out.stdout and "10.23.8.1/22" in out.stdout
    assert out.stdout.strip().endswith("2")


def test_doctor_fleet_names_the_limit_that_stops_n_and_its_fix(env, installed):
    too_many = run(PYCOR + ["doctor", "--fleet", "10000000"], env=env, check=False)
    assert too_many.returncode == 1
    assert "10000000 booted containers of the default base (lxc, privileged) do not fit this host:" in too_many.stderr
    assert "stops them at" in too_many.stderr and "hint:" in too_many.stderr
    assert "MISS" in too_many.stdout and "fix:" in too_many.stdout
    one = run(PYCOR + ["doctor", "--fleet", "1", "--runtime", "lxd"], env=env)
    assert "1 booted containers of the default base (lxd, unprivileged) fit this host" in one.stdout
    report = json.loads(run(PYCOR + ["doctor", "--fleet", "10000000", "--format", "json"], env=env, check=False).stdout)[0]
    assert report["fits"] is False and report["stopped_by"] == report["limits"][0]["limit"]
    assert {r["limit"] for r in report["limits"]} >= {"memory", "disk", "kernel.pid_max", "kernel.pty.max", "kernel.keys.maxkeys",
                                                     "net.ipv4.neigh.default.gc_thresh3"}
    bad = run(PYCOR + ["doctor", "--fleet", "0"], env=env, check=False)
    assert bad.returncode == 1 and "--fleet takes a number of containers" in bad.stderr


def test_doctor_fleet_reads_a_fleet_bridges_dhcp_size(env, installed):
    pycor = " ".join(PYCOR)
    out = in_own_netns(f"""
bash $F up tbr0 10.99.0.1/22 >/dev/null
cd {REPO} && {pycor} doctor --fleet 1000 --bridge tbr0 --format json || true
""", env)
    report = json.loads(out.stdout)[0]
    dhcp = next(r for r in report["limits"] if r["limit"] == "DHCP addresses on tbr0")
    assert dhcp["capacity"] == 1021
    ports = next(r for r in report["limits"] if r["limit"] == "bridge ports on tbr0")
    assert ports["capacity"] == 1023


def test_lxd_up_with_pycor_ksm_starts_a_daemon_whose_container_monitors_merge_equal_pages(tmp_path):
    """PYCOR_KSM=1 (a second LXD daemon of the test's own, never the host's): the daemon runs under
    prctl(PR_SET_MEMORY_MERGE), and so does each container's monitor, a forked daemon; ksmd runs."""
    lxd_dir = f"/var/lib/pycor-test-lxd2-{uuid.uuid4().hex[:6]}"
    bridge = f"tk{uuid.uuid4().hex[:6]}"
    cidr = run(["bash", FLEET_NET, "cidr"]).stdout.strip()
    env = dict(os.environ, LXD_DIR=lxd_dir, PYCOR_KSM="1", PYCOR_LXD_BRIDGE=bridge, PYCOR_LXD_BRIDGE_ADDR=cidr)
    with open(KSM_RUN) as f:
        ksm_before = f.read().strip()
    os.mkdir(lxd_dir, 0o755)
    try:
        run(["bash", os.path.join(REPO, "scripts", "lxd-up.sh")], env=env, timeout=300)
        (daemon,) = pids(f"lxd --group root --logfile {lxd_dir}/daemon.log")
        assert merging(daemon)
        with open(KSM_RUN) as f:
            assert f.read().strip() == "1"
        # a container whose init only sleeps: its monitor is the daemon forked and exec'd again
        rootfs = tmp_path / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "sbin").mkdir()
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        (rootfs / "sbin" / "init").write_text("#!/bin/busybox sh\nexec /bin/busybox sleep 1000000\n")
        (rootfs / "sbin" / "init").chmod(0o755)
        (tmp_path / "metadata.yaml").write_text("architecture: x86_64\ncreation_date: 1700000000\nproperties: {}\n")
        run(["tar", "-cf", str(tmp_path / "image.tar"), "-C", str(tmp_path), "metadata.yaml", "rootfs"])
        run(["lxc", "image", "import", str(tmp_path / "image.tar"), "--alias", "sleeper"], env=env)
        run(["lxc", "launch", "sleeper", "k1"], env=env, timeout=120)
        (monitor,) = pids(f"[lxc monitor] {lxd_dir}/containers k1")
        assert merging(monitor)
    finally:
        subprocess.run(["lxc", "delete", "--force", "k1"], env=env, capture_output=True, timeout=120)
        subprocess.run(["lxc", "network", "delete", bridge], env=env, capture_output=True, timeout=60)
        subprocess.run(["lxd", "shutdown", "--timeout", "60"], env=env, capture_output=True, timeout=120)
        for pid in pids(f"lxd --group root --logfile {lxd_dir}/daemon.log"):
            os.kill(pid, 9)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(lxd_dir)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(lxd_dir, ignore_errors=True)
        if ksm_before != "1":
            with open(KSM_RUN, "w") as f:
                f.write(ksm_before)
    assert bridge not in run(["ip", "-o", "link"]).stdout


KSM_RUN = "/sys/kernel/mm/ksm/run"


def pids(cmdline_start: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").decode(errors="replace").startswith(cmdline_start):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def merging(pid: int) -> bool:
    with open(f"/proc/{pid}/ksm_stat") as f:
        return "ksm_merge_any: yes" in f.read()


def test_cgroups_a_killed_container_left_are_removed_and_a_running_ones_stay():
    """What the test session and a fleet's teardown do with the cgroups a killed monitor leaves (15 a booted
    container, each holding kernel memory): a tree with no process goes whole; one with a process anywhere in
    it stays whole, its empty cgroups (systemd's) too."""
    from pycor_hooks.linux import container_cgroups, remove_cgroup_if_empty

    hierarchy = next(p for p in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup") if os.path.exists(f"{p}/cgroup.procs"))
    tag = uuid.uuid4().hex[:8]
    gone, kept = (os.path.join(hierarchy, f"lxc.payload.pycor-test-{kind}{tag}") for kind in ("gone", "kept"))
    sleeper = None
    try:
        for top in (gone, kept):
            os.makedirs(os.path.join(top, "system.slice", "nginx.service"))
            os.makedirs(os.path.join(top, "init.scope"))
        sleeper = subprocess.Popen(["sleep", "300"])
        with open(os.path.join(kept, "init.scope", "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        mine = container_cgroups(lambda name: name.endswith(tag))
        assert sorted(mine) == sorted([gone, kept])
        for top in mine:
            remove_cgroup_if_empty(top)  # made just now: maybe a container starting into it
        assert os.path.isdir(os.path.join(gone, "system.slice", "nginx.service"))
        for top in mine:
            remove_cgroup_if_empty(top, settled=0)
        assert not os.path.exists(gone)
        assert os.path.isdir(os.path.join(kept, "system.slice", "nginx.service"))
    finally:
        if sleeper:
            with open(os.path.join(hierarchy, "cgroup.procs"), "w") as f:
                f.write(str(sleeper.pid))
            sleeper.kill()
            sleeper.wait()
        for top in (gone, kept):
            for dirpath, _, _ in os.walk(top, topdown=False):
                os.rmdir(dirpath)
