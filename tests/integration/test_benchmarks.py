"""The benchmark harness runs end to end at tiny sizes, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

from helpers import host_overlays, view_mounts, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lxd_names(*args: str) -> list[str]:
    out = subprocess.run(["lxc", *args, "--format", "csv"], capture_output=True, text=True).stdout
    return [line.split(",")[0] for line in out.splitlines()]


def test_benchmark_harness_smoke_run_writes_every_figure_and_leaves_nothing(lxd_project, tmp_path):
    overlays, views = host_overlays(), view_mounts()
    projects, pools = lxd_names("project", "list"), lxd_names("storage", "list")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--base-source", "busybox",
                           "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    names = [r["system"] for r in data["systems"]]
    assert names == ["pycor-lxc", "pycor-lxd", "lxc-overlay", "lxc-copy", "lxd-dir", "lxd-btrfs"]
    for r in data["systems"]:
        assert r["create_s"]["n"] == 2 and r["start_first_s"]["median"] > 0
        assert set(r["page_cache_bytes"]) == {"1", "2"}
        assert r["copy_up"]["first_write_s"] > 0
    assert {d["system"] for d in data["density"]} == {"pycor-lxc", "pycor-lxd", "lxc-overlay", "lxd-btrfs"}
    assert data["rollout"]["pycor"]["containers"] == 2
    assert set(data["hooks_share"]) == {"pycor-lxc", "pycor-lxd"}
    for name in ("results.md", "page_cache.png", "create_time.png"):
        assert (out / name).stat().st_size > 0
    assert "| pycor-lxc |" in (out / "results.md").read_text()
    # it cleaned up after itself
    # only the benchmark's own names: other test runs on the machine make and remove theirs meanwhile
    assert {n for n in lxd_names("project", "list") if "bench" in n} == {n for n in projects if "bench" in n}
    assert {n for n in lxd_names("storage", "list") if "bench" in n} == {n for n in pools if "bench" in n}
    assert [m for m in host_overlays() if "pycor-bench-" in m] == [m for m in overlays if "pycor-bench-" in m]
    # the idmapped views of its base ('bench') went with its unprivileged containers
    assert {v for v in view_mounts() if os.path.basename(v).startswith("bench.")} <= set(views)
    assert not [d for d in os.listdir("/var/tmp") if d.startswith("pycor-bench-")]


def test_density_benchmark_smoke_run_boots_every_system_and_leaves_nothing(lxd_project, bootable_base, store, tmp_path):
    # only the benchmark's own names: other test runs on the machine make and remove theirs meanwhile
    ours = lambda: ({n for n in lxd_names("project", "list") + lxd_names("storage", "list") if "bench" in n}  # noqa: E731
                    | {d for d in os.listdir("/var/tmp") if d.startswith("pycor-bench-")}
                    | {m for m in host_overlays() if "pycor-bench-" in m})
    before = ours()
    out = tmp_path / "density"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "density.py"), "--n", "2", "--store", store,
                           "--base", bootable_base, "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "density.json").read_text())
    assert [r["system"] for r in data["systems"]] == ["pycor-lxc", "pycor-lxd", "lxc-overlay", "lxc-copy", "lxd-dir", "lxd-btrfs"]
    for r in data["systems"]:
        (point,) = r["points"]
        assert point["n"] == 2 and point["all_running_s"] > 0
        assert point["cgroup_anon_bytes"] > 0  # the containers' own cgroups were found and read
        assert set(r["per_container_bytes"]) == {"page_cache_bytes", "shmem_bytes", "memavailable_drop_bytes",
                                                 "cgroup_cache_bytes", "cgroup_anon_bytes"}
    assert (out / "density.png").stat().st_size > 0
    assert "| pycor-lxc | 2 |" in (out / "density.md").read_text()
    # it cleaned up after itself (lxc-net's DHCP leases too: dnsmasq keeps them an hour and has
    # 253), and kept the base it was given
    assert ours() <= before
    with open("/var/lib/misc/dnsmasq.lxcbr0.leases") as f:
        hosts = [line.split()[3] for line in f if len(line.split()) >= 4]
    assert not [h for h in hosts if h.startswith(("ypycorl", "ylxcove", "ylxccop"))], hosts
    assert os.path.isdir(os.path.join(store, "bases", bootable_base))


def test_start_benchmark_smoke_run_writes_every_figure_and_leaves_nothing(lxd_project, tmp_path):
    ours = lambda: ({n for n in lxd_names("project", "list") if "bench" in n}  # noqa: E731
                    | {d for d in os.listdir("/var/tmp") if d.startswith("pycor-bench-")})
    before = ours()
    out = tmp_path / "start"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "start.py"), "--runs", "1", "--parallel", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "start.json").read_text())
    x = data["lxc"]
    assert x["privileged_ratio"] > 0 and x["parallel"]["pycor_running"] == x["parallel"]["overlay_running"] == 2
    assert x["parallel"]["pycor_cpu_s"] >= 0 and x["parallel"]["overlay_cpu_s"] >= 0  # /proc/stat counts 10 ms ticks
    assert set(x["create_ms"]) == {"pycor create", "lxc-create -t pycor", "lxc-copy -s -B overlay"}
    assert "pre-mount" in x["hook_run_ms"]  # LXC's trace log timed the hook
    assert data["LXD"]["ratio"] > 0
    md = (out / "start.md").read_text()
    assert "| pre-mount work (whole run less interpreter and imports) |" in md and "privileged LXC start" in md
    assert ours() <= before


FLEET = os.path.join(REPO, "benchmarks", "fleet.py")


def fleet_leftovers() -> set[str]:
    """What a fleet run makes on the host, by its names: LXD projects and networks, bridges and their dnsmasq and
    leases, its folder, LXD's log folders, LXC monitors, overlays of its containers."""
    run_names = re.compile(r"^fl[0-9a-f]{4}\d+n\d+$")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    monitors = subprocess.run(["pgrep", "-a", "-f", r"^\[lxc monitor\] .*pycor-fleet"], capture_output=True, text=True).stdout
    dnsmasq = subprocess.run(["pgrep", "-a", "-x", "dnsmasq"], capture_output=True, text=True).stdout
    return ({n for n in lxd_names("project", "list") if n.startswith("pycor-fleet-")}
            | {n for n in lxd_names("network", "list") if run_names.match(n)}
            | {f"link {line.split(':')[1].strip().split('@')[0]}" for line in links.splitlines()
               if run_names.match(line.split(":")[1].strip().split("@")[0])}
            | {f"dnsmasq {line}" for line in dnsmasq.splitlines() if re.search(r"--interface=fl[0-9a-f]{4}\d+n\d+\b", line)}
            | {f"monitor {line}" for line in monitors.splitlines()}
            | set(glob.glob("/var/tmp/pycor-fleet-*")) | set(glob.glob("/var/log/lxd/pycor-fleet-*"))
            | set(glob.glob("/var/lib/misc/dnsmasq.fl*.leases"))
            | {m for m in host_overlays() if "pycor-fleet-" in m})


def test_fleet_benchmark_smoke_run_holds_small_n_measures_and_leaves_nothing(lxd_project, bootable_base, store, tmp_path):
    before, views = fleet_leftovers(), view_mounts()
    out = tmp_path / "fleet"
    proc = subprocess.run([sys.executable, FLEET, "--systems", "pycor-lxc,pycor-lxd,lxd-dir", "--max-n", "4", "--steps", "2,4",
                           "--idle", "5", "--store", store, "--base", bootable_base, "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "fleet.json").read_text())
    assert data["complete"] and [r["system"] for r in data["systems"]] == ["pycor-lxc", "pycor-lxd", "lxd-dir"]
    for r in data["systems"]:
        assert (r["held"], r["end_reason"], [p["n"] for p in r["points"]]) == (4, "max-n", [2, 4]), \
            f"{r['system']} ended by {r['end_reason']}: {r['end_detail']}"
        for p in r["points"]:
            assert p["running"] == p["addresses"] == p["http_ok"] == p["cgroups_read"] == p["monitors"]["n"] == p["n"], p
            assert p["states"] == {"running": 2} and p["fails"] is None
            assert p["cgroup_bytes"]["anon"] > 0 and p["tasks"] >= 8 * p["n"] and p["idle_samples"]
    assert (out / "fleet.png").stat().st_size > 0
    md = (out / "fleet.md").read_text()
    assert "| pycor-lxc | 4 | max-n |" in md and "| pycor-lxd | 4 | " in md
    # it tore everything down: containers, leases, bridges and their dnsmasq, LXD networks and project, idmapped views
    assert fleet_leftovers() <= before
    assert set(view_mounts()) <= set(views)
    assert os.path.isdir(os.path.join(store, "bases", bootable_base))  # the base it was given stays


def ip_link(*args: str) -> None:
    subprocess.run(["ip", "link", *args], check=True, capture_output=True)


def test_fleet_benchmark_killed_with_sigkill_is_torn_down_by_cleanup(lxd_project, bootable_base, store, tmp_path):
    """Everything the run made goes, and the veth pairs the runtime left with both ends on the host (LXD leaves
    a few when hundreds stop at once), but not a pair that was there before the run."""
    ip_link("add", "vethf1ee7002", "type", "veth", "peer", "name", "vethf1ee7003")
    try:
        fleet_killed_then_cleaned(store, bootable_base, tmp_path)
        assert os.path.exists("/sys/class/net/vethf1ee7002")
    finally:
        for name in ("vethf1ee7002", "vethf1ee7000"):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)


def fleet_killed_then_cleaned(store: str, bootable_base: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before, views = fleet_leftovers(), view_mounts()
    proc = subprocess.Popen([sys.executable, FLEET, "--systems", "pycor-lxd", "--max-n", "2", "--idle", "600", "--store", store,
                             "--base", bootable_base, "--out", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # killed while its containers boot: containers, network, project, views all there
            if "booting" in line:
                break
        wait_for(lambda: len(fleet_leftovers() - before) >= 5, 60, "the run's containers and network")
    finally:
        proc.kill()
        proc.wait()
    assert fleet_leftovers() - before
    ip_link("add", "vethf1ee7000", "type", "veth", "peer", "name", "vethf1ee7001")  # as LXD leaves one
    subprocess.run([sys.executable, FLEET, "--cleanup"], check=True, capture_output=True, timeout=900)
    assert not os.path.exists("/sys/class/net/vethf1ee7000")
    assert fleet_leftovers() <= before
    assert set(view_mounts()) <= set(views)
