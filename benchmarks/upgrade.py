"""A release upgrade under containers with packages of their own: pycor's move against an in-place upgrade.

On the bootable base (debootstrap --bootable, FROM suite), three booted LXC
containers make changes of their own:

- c1 (perl): installs cowsay (perl), adds a user, edits /etc/issue (a conffile of base-files);
- c2 (postgres): installs postgresql (a cluster with a table), adds a user;
- c3 (purge, unprivileged): purges nginx (part of the base), installs hello, edits journald.conf.

The same three, copied whole (pycor commit's view of each, in a plain LXC
container of its own: the anchors), are upgraded in place as Debian says:
sources to TO, apt-get update, apt-get full-upgrade (no questions: the
default answer, else the installed conffile). pycor upgrades the base the
same way (pycor base update) and moves each container with `pycor rebase
NAME --upgrade`, which runs apt in the container itself, confined as it
runs (its own network, through its runtime): its time includes booting the
container and stopping it again. Then, booted side by side, each pair is compared: the
installed package set (name, version, state), apt-mark showauto, apt-get
check, dpkg --audit, dpkg --verify, each container's own programs, its
users, and /etc file by file. Also: what `pycor rebase --dry-run` said
before the move (the packages it would break), the conflicts left after,
and the time each upgrade took.

    sudo .venv/bin/python benchmarks/upgrade.py [--from bookworm] [--to trixie] [--out DIR] [--keep]

Needs the network (the machine's Debian mirror, through lxcbr0's NAT).
Writes upgrade.json and upgrade.md in --out (benchmarks/results); removes
what it made unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from systems import PYCOR, release_lease, sh  # noqa: E402

from pycor_hooks.debian import wait_for_boot_script  # noqa: E402

APT_ENV = "export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin; "
APT_OPTS = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o Dpkg::Use-Pty=0"
INSTALL = APT_ENV + f"apt-get -q update && apt-get -q -y {APT_OPTS} install --no-install-recommends "

CONTAINERS = {
    "c1": {"unprivileged": False,
           "setup": INSTALL + "cowsay && useradd -m alice && echo 'Welcome, alice' >> /etc/issue",
           "programs": "/usr/games/cowsay moo | grep -c moo; perl -e 'print qq(perl ok\\n)'; getent passwd alice | cut -d: -f1"},
    "c2": {"unprivileged": False,
           "setup": INSTALL + "postgresql && useradd -m bob && "
                    "su postgres -c \"psql -q -c 'create table t (x int); insert into t values (1), (2)'\"",
           "programs": "pg_lsclusters -h | awk '{print $1, $2, $4}'; "
                       "su postgres -c \"psql -tA -c 'select count(*) from t'\" 2>&1 | tail -1; getent passwd bob | cut -d: -f1"},
    "c3": {"unprivileged": True,
           "setup": APT_ENV + f"apt-get -q -y {APT_OPTS} purge nginx nginx-common nginx-light libnginx-mod-http-echo && " + INSTALL.removeprefix(APT_ENV)
                    + "hello && echo 'Storage=volatile' >> /etc/systemd/journald.conf",
           "programs": "hello; command -v nginx || echo 'no nginx'; ls /etc/nginx 2>&1 | head -1"},
}

# What each container is compared on, one section per check (its output sorted where order is no matter).
CHECKS = {
    "packages": "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' | sort",
    "auto": "apt-mark showauto | sort",
    "apt_check": "apt-get check -q >/dev/null 2>&1; echo \"exit $?\"; apt-get check -q 2>&1 | grep -E '^ [^ ]' | head -20",
    "audit": "dpkg --audit 2>&1",
    "verify": "dpkg --verify 2>&1 | sort",
    "etc": "find /etc -xdev -type f -readable -print0 | sort -z | xargs -0 md5sum | sort -k2",
    "system": "systemctl is-system-running 2>&1; systemctl --failed --plain --no-legend 2>&1 | awk '{print $1}'",
}
# /etc files that differ between any two machines, or by pycor's design (the containers' id ranges)
ETC_OWN = ("/etc/hostname", "/etc/hosts", "/etc/machine-id", "/etc/resolv.conf", "/etc/ld.so.cache", "/etc/.pwd.lock",
           "/etc/adjtime", "/etc/login.defs", "/etc/adduser.conf", "/etc/subuid", "/etc/subgid", "/etc/apt/sources.list")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Run:
    def __init__(self, work: str, suite: str, to: str) -> None:
        self.work, self.suite, self.to = work, suite, to
        self.store = os.path.join(work, "store")
        self.lxcpath = os.path.join(work, "lxc")
        os.makedirs(self.lxcpath)
        self.env = dict(os.environ, PYCOR_STORE=self.store, PYCOR_HOOKS_DIR=os.path.join(work, "hooks"),
                        PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
        self.base = "upg"
        self.names: list[str] = []

    def pycor(self, *args: str, check: bool = True, timeout: float = 3600) -> str:
        return sh(PYCOR + list(args), env=self.env, check=check, timeout=timeout)

    def lxc(self, tool: str, name: str, *args: str, check: bool = True, timeout: float = 3600) -> str:
        return sh([tool, "-n", name, "-P", self.lxcpath, *args], check=check, timeout=timeout)

    def attach(self, name: str, script: str, check: bool = True, timeout: float = 3600) -> str:
        return self.lxc("lxc-attach", name, "--clear-env", "--", "/bin/sh", "-c", script, check=check, timeout=timeout)

    def start(self, name: str) -> None:
        self.lxc("lxc-start", name)
        self.lxc("lxc-wait", name, "-s", "RUNNING", "-t", "60")
        self.attach(name, wait_for_boot_script(), check=False, timeout=400)
        # the network (DHCP through systemd-networkd) and name resolution, before apt runs
        self.attach(name, "i=0; until getent hosts deb.debian.org >/dev/null || [ $i -ge 120 ]; do sleep 0.5; i=$((i+1)); done",
                    check=False, timeout=100)

    def stop(self, name: str) -> None:
        self.lxc("lxc-stop", name, "-t", "60", check=False)

    def anchor(self, name: str, config_of: str) -> str:
        """A plain LXC container holding the whole view of pycor container config_of (pycor commit), booted as is."""
        anchor = f"a{name[1:]}"
        tmp_base = f"anchor-{name}"
        self.pycor("commit", name, "--as", tmp_base, "-P", self.lxcpath)
        src = os.path.join(self.store, "bases", tmp_base, "versions", "1", "rootfs")
        folder = os.path.join(self.lxcpath, anchor)
        os.makedirs(folder)
        sh(["cp", "-a", "--reflink=auto", src, os.path.join(folder, "rootfs")])
        self.pycor("base", "rm", tmp_base)
        with open(os.path.join(folder, "rootfs", "etc", "machine-id"), "w"):
            pass  # a fresh one at its first boot: another DHCP client id than its pycor twin's
        with open(os.path.join(folder, "config"), "w") as f:
            f.write(f"lxc.rootfs.path = dir:{folder}/rootfs\nlxc.include = /usr/share/lxc/config/common.conf\n"
                    f"lxc.uts.name = {anchor}\nlxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.net.0.flags = up\n")
        self.names.append(anchor)
        return anchor

    def checks(self, name: str, programs: str) -> dict[str, str]:
        out = {key: self.attach(name, APT_ENV + script, check=False, timeout=600) for key, script in CHECKS.items()}
        out["programs"] = self.attach(name, APT_ENV + programs, check=False, timeout=120)
        lines = [line for line in out["etc"].splitlines() if line.split("  ", 1)[-1] not in ETC_OWN]
        out["etc"] = "\n".join(lines)
        return out

    def cleanup(self) -> None:
        for name in self.names:
            self.lxc("lxc-stop", name, "-k", check=False)
            self.lxc("lxc-destroy", name, check=False)
            release_lease(name)
        if os.path.exists(self.store):
            self.pycor("base", "rm", self.base, check=False)


def diff(a: str, b: str) -> dict:
    la, lb = set(a.splitlines()), set(b.splitlines())
    return {"only_pycor": sorted(la - lb), "only_anchor": sorted(lb - la)}


KEPT_CONFFILE = (".dpkg-dist", ".dpkg-old", ".dpkg-new", ".ucf-dist", ".ucf-old")  # dpkg's and ucf's copies of a kept conffile


def compare(p: dict[str, str], a: dict[str, str]) -> dict:
    out: dict = {}
    for key in ("packages", "auto", "etc", "programs", "system"):
        d = diff(p[key], a[key])
        if key == "etc":
            # In place, dpkg keeps an edited conffile and writes the package's new one beside it (.dpkg-dist);
            # pycor keeps the container's and reports a conflict (the base's is the base's, `conflicts --diff`).
            out["kept_conffiles"] = {side: [line.split("  ", 1)[-1] for line in d[side] if line.endswith(KEPT_CONFFILE)]
                                     for side in ("only_pycor", "only_anchor")}
            d = {side: [line for line in d[side] if not line.endswith(KEPT_CONFFILE)] for side in d}
        out[key] = {"equal": not d["only_pycor"] and not d["only_anchor"], **d}
    for key in ("apt_check", "audit", "verify"):
        out[key] = {"pycor": p[key].splitlines(), "anchor": a[key].splitlines(), "equal": p[key] == a[key]}
    out["packages"]["count"] = len(p["packages"].splitlines())
    out["etc"]["files"] = len(p["etc"].splitlines())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="suite", default="bookworm")
    ap.add_argument("--to", default="trixie")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", action="store_true", help="keep the store and containers (in /var/tmp/pycor-bench-upgrade-*)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    subprocess.run(["bash", os.path.join(REPO, "scripts", "lxc-net-up.sh")], check=True)
    work = tempfile.mkdtemp(prefix="pycor-bench-upgrade-", dir="/var/tmp")
    os.chmod(work, 0o755)
    r = Run(work, args.suite, args.to)
    result: dict = {"from": args.suite, "to": args.to, "kernel": platform.release(), "containers": {}}
    try:
        r.pycor("install")
        log(f"importing the bootable {args.suite} base")
        t0 = time.monotonic()
        r.pycor("base", "import", r.base, "--debootstrap", args.suite, "--bootable", timeout=3600)
        result["base_import_s"] = round(time.monotonic() - t0, 1)
        for name, spec in CONTAINERS.items():
            r.names.append(name)
            r.pycor("create", name, "--base", r.base, "-P", r.lxcpath, "--network", "default",
                    *(["--unprivileged"] if spec["unprivileged"] else []))
            r.start(name)
            log(f"{name}: its own changes")
            r.attach(name, spec["setup"], timeout=1800)
            r.stop(name)
        anchors = {name: r.anchor(name, name) for name in CONTAINERS}
        log(f"upgrading the base to {args.to}")
        t0 = time.monotonic()
        r.pycor("base", "update", r.base, "--", "/bin/sh", "-c",
                f"sed -i 's/{args.suite}/{args.to}/g' /etc/apt/sources.list && " + APT_ENV
                + f"apt-get -q update && apt-get -q -y {APT_OPTS} full-upgrade", timeout=7200)
        result["base_upgrade_s"] = round(time.monotonic() - t0, 1)
        for name, spec in CONTAINERS.items():
            row: dict = {"unprivileged": spec["unprivileged"]}
            dry = json.loads(r.pycor("rebase", name, "-P", r.lxcpath, "--dry-run", "--format", "json"))[0]
            row["breaks_before"] = [f["detail"] for f in dry["findings"] if f["kind"] == "breaks"]
            row["conflicts_before"] = len([f for f in dry["findings"] if f["kind"] == "conflict"])
            log(f"{name}: pycor rebase --upgrade")
            t0 = time.monotonic()
            try:
                moved = json.loads(r.pycor("rebase", name, "-P", r.lxcpath, "--upgrade", "--format", "json", timeout=7200))[0]
            except RuntimeError as e:  # refused or failed: the container is unchanged; say why, go on with the others
                row["pycor_upgrade_s"] = round(time.monotonic() - t0, 1)
                row["refused"] = [line for line in str(e).splitlines() if "error:" in line or "hint:" in line][-2:]
                log(f"{name}: {' '.join(row['refused'])}")
                result["containers"][name] = row
                continue
            row["pycor_upgrade_s"] = round(time.monotonic() - t0, 1)
            row["upgraded"] = moved["upgraded"]
            anchor = anchors[name]
            log(f"{anchor}: apt-get full-upgrade in place")
            r.start(anchor)
            t0 = time.monotonic()
            r.attach(anchor, f"sed -i 's/{args.suite}/{args.to}/g' /etc/apt/sources.list && " + APT_ENV
                     + f"apt-get -q update && apt-get -q -y {APT_OPTS} full-upgrade && apt-get clean", timeout=7200)
            row["anchor_upgrade_s"] = round(time.monotonic() - t0, 1)
            r.stop(anchor)
            log(f"{name} and {anchor}: booted side by side, compared")
            r.start(name)
            r.start(anchor)
            ours, theirs = r.checks(name, spec["programs"]), r.checks(anchor, spec["programs"])
            row["compare"] = compare(ours, theirs)
            row["checks"] = {"pycor": ours, "anchor": theirs}
            row["conflicts_after"] = [f for f in json.loads(r.pycor("conflicts", name, "-P", r.lxcpath, "--format", "json"))[0]["findings"]
                                      if f["kind"] in ("conflict", "collision", "breaks")]
            r.stop(name)
            r.stop(anchor)
            result["containers"][name] = row
    finally:
        if args.keep:
            log(f"kept: {work}")
        else:
            r.cleanup()
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "upgrade.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "upgrade.md"), "w") as f:
        f.write(report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    yes = lambda b: "same" if b else "DIFFERS"  # noqa: E731
    lines = [f"# A {result['from']} -> {result['to']} upgrade: pycor rebase --upgrade against apt-get full-upgrade in place", "",
             f"Kernel {result['kernel']}. Base import {result.get('base_import_s', '?')} s, base upgrade "
             f"{result.get('base_upgrade_s', '?')} s (pycor base update). Made by benchmarks/upgrade.py.", "",
             "pycor's upgrade runs apt in the container itself (started through its runtime, on its own network): its "
             "time includes staging the copy of the layer, booting the container, and stopping it again; the in-place "
             "upgrade's is apt's alone, in a container already booted.", "",
             "/etc is compared file by file without the conffiles dpkg keeps beside an edited one (.dpkg-dist): where "
             "dpkg in place keeps the edited file and writes the new one beside it, pycor keeps the container's file and "
             "reports a conflict (the last column counts both). login.defs and adduser.conf carry pycor's id ranges "
             "by design (the anchors are copies of pycor containers: dpkg keeps them too).", "",
             "| container | breaks found before (dry run) | pycor upgrade | in-place upgrade | packages | showauto | "
             "apt-get check | dpkg --audit | dpkg --verify | programs | /etc | conffiles kept: conflicts (pycor) / .dpkg-dist (in place) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in result["containers"].items():
        if "refused" in row:
            lines.append(f"| {name}{' (unprivileged)' if row['unprivileged'] else ''} | {len(row['breaks_before'])} | "
                         f"refused after {row['pycor_upgrade_s']} s | | | | | | | | | |")
            continue
        c = row["compare"]
        check = "/".join(x[0] if x else "?" for x in (c["apt_check"]["pycor"], c["apt_check"]["anchor"]))
        lines.append(
            f"| {name}{' (unprivileged)' if row['unprivileged'] else ''} | {len(row['breaks_before'])} | "
            f"{row['pycor_upgrade_s']} s | {row['anchor_upgrade_s']} s | {yes(c['packages']['equal'])} ({c['packages']['count']}) | "
            f"{yes(c['auto']['equal'])} | {check} | {yes(c['audit']['equal'])} | {yes(c['verify']['equal'])} | "
            f"{yes(c['programs']['equal'])} | {yes(c['etc']['equal'])} ({c['etc']['files']} files) | "
            f"{len(row['conflicts_after'])} / {len(c['kept_conffiles']['only_anchor'])} |")
    lines.append("")
    for name, row in result["containers"].items():
        lines.append(f"## {name}")
        lines.append("")
        if "refused" in row:
            lines.append(f"- before the move, `pycor rebase --dry-run`: {len(row['breaks_before'])} broken")
            lines.append(f"- `pycor rebase --upgrade` refused, the container unchanged: {' '.join(row['refused'])}")
            lines.append("")
            continue
        c = row["compare"]
        lines.append(f"- before the move, `pycor rebase --dry-run`: {len(row['breaks_before'])} broken, e.g. "
                     + "; ".join(row["breaks_before"][:3]))
        lines.append(f"- its own packages brought along: {len(row['upgraded'] or [])} changed")
        for key in ("packages", "auto", "etc", "programs", "system"):
            if not c[key]["equal"]:
                lines.append(f"- {key}: only in pycor's {c[key]['only_pycor'][:8]}, only in the anchor's {c[key]['only_anchor'][:8]}")
        for key in ("apt_check", "audit", "verify"):
            if not c[key]["equal"]:
                lines.append(f"- {key}: pycor {c[key]['pycor'][:6]}, anchor {c[key]['anchor'][:6]}")
        lines.append(f"- programs (pycor): {row['checks']['pycor']['programs'].strip().splitlines()}")
        lines.append(f"- conffiles kept in place beside the package's new one: {c['kept_conffiles']['only_anchor']}")
        if row["conflicts_after"]:
            lines.append(f"- conflicts left: {[(f['path'], f['detail']) for f in row['conflicts_after']]}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
