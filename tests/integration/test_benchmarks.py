"""The benchmark harness runs end to end at tiny sizes, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import host_overlays, view_mounts

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
