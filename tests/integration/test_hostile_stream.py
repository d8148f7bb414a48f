"""A hostile export stream sender against a real store: refused with one message and nothing left, or harmless.

Each refused case imports a hand-made stream (tests/streams.py) into a store
that already holds a base, and checks the exact outcome: exit 1, the message,
the store unchanged (a checksum of bases/, an empty staging/, no mount under
it), and nothing written outside (a canary directory the stream aims at).
The harmless cases say why they are harmless. Header and frame parsing alone
is proven in tests/unit/test_hostile_stream.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import destroy
from streams import MAGIC, entry, frame, header, header_frame, layer_frames, member, stream, tar_of
from test_hosting import loop_fs

from helpers import PYCOR, run, tree_checksum
from pycor_hooks import digest as dg
from pycor_hooks import tario
from pycor_hooks.linux import mounts_under


@dataclass
class Target:
    """A store holding base bb (busybox, version 1), the stream's target, and a directory a stream aims at."""

    store: str
    env: dict[str, str]
    outside: str
    work: str
    bb_digest: str

    def pycor(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(PYCOR + ["--store", self.store, *args], env=self.env, capture_output=True, input=input,
                              timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"pycor {args} exited {proc.returncode}: {proc.stderr.decode()}")
        return proc

    def import_stream(self, data: bytes, name: str = "evil", check: bool = False) -> subprocess.CompletedProcess[bytes]:
        return self.pycor("base", "import", name, "--from-export", "-", input=data, check=check)

    def state(self) -> tuple[str, list[str], list[str], list[str]]:
        """What must not change when an import is refused: bases/, staging/, mounts, the outside directory."""
        return (tree_checksum(os.path.join(self.store, "bases")), sorted(os.listdir(os.path.join(self.store, "staging"))),
                mounts_under(self.store), sorted(os.listdir(self.outside)))

    def tree(self) -> str:
        path = os.path.join(self.work, uuid.uuid4().hex[:8])
        os.makedirs(path)
        os.chmod(path, 0o755)
        return path


@pytest.fixture(scope="module")
def target(installed: None, env: dict[str, str], session_dir: str) -> Iterator[Target]:
    root = os.path.join(session_dir, f"hostile-{uuid.uuid4().hex[:6]}")
    os.makedirs(os.path.join(root, "outside"))
    with open(os.path.join(root, "outside", "victim"), "w") as f:
        f.write("original\n")
    store = os.path.join(root, "store")
    run(PYCOR + ["--store", store, "base", "import", "bb", "--busybox"], env=env)
    os.makedirs(os.path.join(store, "staging"), exist_ok=True)
    with open(os.path.join(store, "bases", "bb", "versions", "1", "version.json")) as f:
        digest = json.load(f)["digest"]
    yield Target(store, env, os.path.join(root, "outside"), os.path.join(root, "work"), digest)
    shutil.rmtree(root, ignore_errors=True)


def layer_of(tree: str) -> tuple[bytes, bytes]:
    """(manifest, tar) of a directory, as 'pycor base export' makes them."""
    tar = subprocess.run(tario.create_argv(tree), capture_output=True, check=True).stdout
    return dg.layer_manifest(tree), tar


def received(t: Target, tar: bytes) -> str:
    """The tree a receiver's tar makes of an archive: what a sender whose stream must verify computes its
    manifest from."""
    tree = t.tree()
    subprocess.run(tario.extract_argv(tree), input=tar, capture_output=True, check=True)
    return tree


def on_bb(t: Target, manifest: bytes, tar: bytes, **fields: object) -> bytes:
    """A stream of version 2 of bb over version 1, whose digest matches the manifest (a sender can compute it)."""
    digest = dg.chain(dg.layer_digest(manifest), t.bb_digest)
    head = header([entry("2", "1", digest=digest, **fields)], since="1", since_digest=t.bb_digest)
    return stream(head, [(manifest, tar)])


def new_base(manifest: bytes, tar: bytes, lxc: list[str] | None = None, **fields: object) -> bytes:
    """A stream of a new base's version 1, whose digest matches the manifest and the LXC lines."""
    digest = dg.chain(dg.layer_digest(manifest), None, lxc or [])
    return stream(header([entry("1", None, digest=digest, **fields)], lxc=lxc or []), [(manifest, tar)])


def small_tree(t: Target) -> str:
    tree = t.tree()
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "motd"), "w") as f:
        f.write("a hostile base\n" * 100)
    return tree


ROOT_ONLY = b"/ d 755 0:0\n"


def hostile_tar(*members: tuple) -> tuple[bytes, bytes]:
    return ROOT_ONLY, tar_of(list(members))


# -- refused: one clear error, the store as it was, nothing outside ----------------------------------------


def _cut(fraction: float) -> Callable[[Target], bytes]:
    def make(t: Target) -> bytes:
        data = new_base(*layer_of(small_tree(t)))
        return data[: int(len(data) * fraction)]
    return make


def _replace_frame_end(t: Target, end: bytes) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    digest = dg.chain(dg.layer_digest(manifest), None)
    return MAGIC + header_frame(header([entry("1", None, digest=digest)])) + layer_frames(manifest, tar) + end


def _content_differs(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    at = tar.index(b"a hostile base")
    return new_base(manifest, tar[:at] + b"A" + tar[at + 1:])


def _extra_path(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    return new_base(manifest + b"/zz f 644 0:0 0:" + b"e3" * 32 + b"\n", tar)


def _no_e(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    digest = dg.chain(dg.layer_digest(manifest), None)
    return MAGIC + header_frame(header([entry("1", None, digest=digest)])) + frame(b"M", manifest) + frame(b"D", tar) + frame(b"Z")


def _wrong_digest(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    return stream(header([entry("1", None, digest="cd" * 32)]), [(manifest, tar)])


def _uid_unchanged(t: Target) -> bytes:
    # uid 2**32-1 is chown's "leave unchanged": tar makes the file root's, the manifest says otherwise
    return new_base(b"/ d 755 0:0\n/u f 644 4294967295:4294967295 1:" + b"a" * 64 + b"\n",
                    tar_of([member("u", data=b"x", uid=2**32 - 1, gid=2**32 - 1)]))


def _oversized(t: Target) -> bytes:
    return new_base(ROOT_ONLY, tar_of([member("big", data=os.urandom(3 << 20))]))


def _lxc(line: str) -> Callable[[Target], bytes]:
    def make(t: Target) -> bytes:
        return new_base(*layer_of(small_tree(t)), lxc=["lxc.signal.halt = SIGUSR1", line.replace("OUT", t.outside)])
    return make


def _since(t: Target, since_digest: str) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    head = header([entry("2", "1", digest=dg.chain(dg.layer_digest(manifest), since_digest))], since="1",
                  since_digest=since_digest)
    return stream(head, [(manifest, tar)])


def _existing_number(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    return new_base(manifest, tar)


def _other_lines(t: Target) -> bytes:
    manifest, tar = layer_of(small_tree(t))
    lines = ["lxc.init.cmd = /bin/sh"]
    return stream(header([entry("2", None, digest=dg.chain(dg.layer_digest(manifest), None, lines))], lxc=lines),
                  [(manifest, tar)])


REFUSED: list[tuple[str, Callable[[Target], bytes], str, str]] = [
    # (case, stream, base imported into, message)
    ("an lxc hook line", _lxc("lxc.hook.pre-start = /bin/sh -c 'touch OUT/pwned'"), "evil",
     "the export's base carries LXC config a base may not carry: \"lxc.hook.pre-start = /bin/sh -c 'touch"),
    ("an lxc.mount.entry line", _lxc("lxc.mount.entry = / mnt none rbind,create=dir 0 0"), "evil",
     "LXC config a base may not carry: 'lxc.mount.entry"),
    ("a second key after a line end", _lxc("lxc.init.cmd = /sbin/init\nlxc.hook.start-host = /bin/sh"), "evil",
     "LXC config a base may not carry: 'lxc.init.cmd = /sbin/init\\nlxc.hook.start-host"),
    ("an lxc line that is not UTF-8", lambda t: stream(header(lxc=["lxc.init.cmd = /sbin/init\udc80"]), [layer_of(small_tree(t))]),
     "evil",
     "LXC config a base may not carry: 'lxc.init.cmd = /sbin/init\\udc80'"),
    ("created 1e300", lambda t: new_base(*layer_of(small_tree(t)), created=1e300), "evil",
     "the export's header is damaged: version 1: 'created' 1e+300 is not a time"),
    ("size 2**64", lambda t: new_base(*layer_of(small_tree(t)), size=2**64), "evil", "'size' 18446744073709551616 is not a size"),
    ("a member named ../..", lambda t: new_base(*hostile_tar(member(f"../../{t.outside}/evil", data=b"x"))), "evil",
     "Member name contains '..'"),
    ("an absolute symlink out, then a file through it", lambda t: new_base(*hostile_tar(
        member("lnk", tarfile.SYMTYPE, linkname=t.outside), member("lnk/victim", data=b"pwned\n"))), "evil",
     "lnk/victim: Cannot open: Not a directory"),
    ("a relative symlink out, then a file through it", lambda t: new_base(*hostile_tar(
        member("lnk", tarfile.SYMTYPE, linkname="../../../../../../../../" + t.outside), member("lnk/victim", data=b"pwned\n"))),
     "evil", "lnk/victim: Cannot open: Not a directory"),
    ("a chain of symlinks out", lambda t: new_base(*hostile_tar(
        member("d", tarfile.DIRTYPE, mode=0o755), member("d/up", tarfile.SYMTYPE, linkname=".."),
        member("d/up/up", tarfile.SYMTYPE, linkname=".."), member("d/up/up/x", data=b"pwned\n"))), "evil",
     "d/up/up: Cannot open: Not a directory"),
    ("a hard link to a file outside", lambda t: new_base(*hostile_tar(
        member("hl", tarfile.LNKTYPE, linkname=f"{t.outside}/victim"), member("hl", data=b"pwned\n"))), "evil",
     "hl: Cannot hard link to"),
    ("a hard link out through a symlink", lambda t: new_base(*hostile_tar(
        member("lnk", tarfile.SYMTYPE, linkname=t.outside), member("hl", tarfile.LNKTYPE, linkname="lnk/victim"),
        member("hl", data=b"pwned\n"))), "evil", "tar: hl: Cannot hard link to"),
    ("the layer's root replaced by a symlink", lambda t: new_base(*hostile_tar(
        member(".", tarfile.SYMTYPE, linkname=t.outside), member("./victim", data=b"pwned\n"))), "evil",
     ".: Cannot open: File exists"),
    ("the layer's root replaced by a file", lambda t: new_base(*hostile_tar(member(".", data=b"x"))), "evil",
     ".: Cannot open: File exists"),
    ("a uid beyond 32 bits", lambda t: new_base(*hostile_tar(member("u", data=b"x", pax={"uid": str(2**40)}))), "evil",
     "Extended header uid=1099511627776 is out of range"),
    ("uid 2**32-1", _uid_unchanged, "evil", "/u: owner differs (recorded 4294967295:4294967295, now 0:0)"),
    ("not a tar", lambda t: new_base(ROOT_ONLY, os.urandom(20000)), "evil", "This does not look like a tar archive"),
    ("content that differs from its manifest", _content_differs, "evil",
     "what arrived differs from what was exported: /etc/motd: content differs"),
    ("a manifest listing a path not sent", _extra_path, "evil", "/zz: in the recorded manifest, missing now"),
    ("a digest that is not the layer's", _wrong_digest, "evil", "does not match the export's cdcdcdcdcdcdcdcd"),
    ("an archive larger than its manifest allows", _oversized, "evil", "a layer's archive is larger than its manifest allows"),
    ("cut in the middle of a layer", _cut(0.5), "evil", "the export stream ends early"),
    ("cut just before its end", _cut(0.9999), "evil", "the export stream ends early"),
    ("no E frame", lambda t: _no_e(t), "evil", "a frame b'Z' inside a layer"),
    ("no Z frame", lambda t: _replace_frame_end(t, b""), "evil", "the export stream ends early"),
    ("bytes after the Z frame", lambda t: _replace_frame_end(t, frame(b"Z") + b"junk"), "evil", "bytes after its end"),
    ("a second Z frame", lambda t: _replace_frame_end(t, frame(b"Z") + frame(b"Z")), "evil", "bytes after its end"),
    ("an unknown frame after the layers", lambda t: _replace_frame_end(t, frame(b"X") + frame(b"Z")), "evil",
     "a frame b'X' of 0 bytes"),
    ("a manifest frame where the end should be", lambda t: _replace_frame_end(t, frame(b"M", ROOT_ONLY) + frame(b"Z")), "evil",
     "expected frame b'Z', got b'M'"),
    ("a manifest with an escape", lambda t: new_base(b"/ d 755 0:0\n/\x1b[2J f 644 0:0 0:" + b"e3" * 32 + b"\n", b"x"),
     "evil", "the export's manifest is damaged (not lines of printable text)"),
    ("since a version that is another tree here", lambda t: _since(t, "ef" * 32), "bb",
     "base bb version 1 here is not the tree the export builds on"),
    ("a version number that exists here with another digest", _existing_number, "bb",
     "base bb version 1 exists here with another digest"),
    ("a first version with other LXC lines than the base here", _other_lines, "bb",
     "base bb here carries other LXC config lines than the export's first version was made with"),
]


@pytest.mark.parametrize("case,make,name,message", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_hostile_stream_is_refused_with_one_message_and_leaves_the_store_as_it_was(target, case, make, name, message):
    data = make(target)
    before = target.state()
    with open(os.path.join(target.outside, "victim")) as f:
        victim = f.read()
    proc = target.import_stream(data, name)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    assert message in err, err
    assert err.count("pycor: error:") == 1 and "Traceback" not in err and "\x1b" not in err
    assert target.state() == before
    with open(os.path.join(target.outside, "victim")) as f:
        assert f.read() == victim
    assert not os.path.exists(os.path.join(target.store, "bases", "evil"))


def test_a_killed_hostile_import_leaves_nothing_the_next_command_does_not_clear(target):
    """A stream that never ends: the import is killed mid-layer, and the next command that takes the lock
    removes its staging."""
    manifest, tar = layer_of(small_tree(target))
    head = header([entry("1", None, digest=dg.chain(dg.layer_digest(manifest), None))])
    data = MAGIC + header_frame(head) + frame(b"M", manifest) + frame(b"D", tar[:512])
    before = target.state()
    proc = subprocess.Popen(PYCOR + ["--store", target.store, "base", "import", "evil", "--from-export", "-"],
                            env=target.env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    staging = os.path.join(target.store, "staging")
    for _ in range(200):
        if any(e.startswith("import-evil") and not e.endswith(".lock") for e in os.listdir(staging)):
            break
        subprocess.run(["sleep", "0.05"])
    proc.kill()
    proc.wait()
    proc.stdin.close()
    target.pycor("base", "gc")
    assert target.state()[:3] == before[:3]


# -- harmless: imported, and why it does no harm ------------------------------------------------------------


def test_a_consistent_hostile_layer_stays_inside_the_store_and_its_containers(target, lxcpath):
    """A sender can make a layer hold anything a root filesystem can hold, and a manifest and digest to match:
    absolute names, a block device, a setuid file, a foreign owner, an absolute symlink, overlayfs redirects
    and origins. It is imported, and does no harm: tar strips leading '/', so every path lands inside the
    layer; the store is root's alone (0700), so no host user reaches the device or the setuid file there;
    pycor never follows a link in a layer; and overlayfs resolves a redirect only among the base's own
    layers, refusing '..' (EACCES in the container)."""
    manifest, tar = hostile_tar(
        member(f"{target.outside}/evil", data=b"pwned\n"),
        member("sda", tarfile.BLKTYPE, mode=0o666, dev=(8, 0)),
        member("suid", data=b"#!/bin/sh\nid\n", mode=0o4755),
        member("foreign", data=b"x", uid=4000000000, gid=4000000000),
        member("shadow", tarfile.SYMTYPE, linkname="/etc/shadow"),
        member("d", tarfile.DIRTYPE, mode=0o755, pax={"SCHILY.xattr.trusted.overlay.redirect": "/../../etc",
                                                      "SCHILY.xattr.trusted.overlay.origin": "\x00junk"}),
    )
    manifest = dg.layer_manifest(received(target, tar))
    before = sorted(os.listdir(target.outside))
    proc = target.import_stream(on_bb(target, manifest, tar), "bb")
    assert proc.returncode == 0, proc.stderr.decode()
    try:
        layer = os.path.join(target.store, "bases", "bb", "versions", "2", "rootfs")
        assert sorted(os.listdir(target.outside)) == before
        with open(os.path.join(layer, target.outside.lstrip("/"), "evil")) as f:
            assert f.read() == "pwned\n"
        st = os.stat(os.path.join(layer, "sda"))
        assert os.major(st.st_rdev) == 8 and os.stat(os.path.join(layer, "suid")).st_mode & 0o4000
        assert os.stat(target.store).st_mode & 0o777 == 0o700
        assert os.getxattr(os.path.join(layer, "d"), "trusted.overlay.redirect") == b"/../../etc"
        assert b"intact" in target.pycor("base", "verify", "bb").stdout
        name = f"h{uuid.uuid4().hex[:7]}"
        run(PYCOR + ["--store", target.store, "create", name, "--base", "bb", "-P", lxcpath, "--network", "none"], env=target.env)
        try:
            run(["lxc-start", "-n", name, "-P", lxcpath])
            run(["lxc-wait", "-n", name, "-P", lxcpath, "-s", "RUNNING", "-t", "20"])
            inside = run(["lxc-attach", "-n", name, "-P", lxcpath, "--", "/bin/sh", "-c", "ls /d; cat /d/shadow"], check=False)
            assert inside.stdout == "" and inside.stderr.count("Permission denied") == 2, inside
        finally:
            destroy(name, lxcpath)
    finally:
        shutil.rmtree(os.path.join(target.store, "bases", "bb", "versions", "2"))
        os.unlink(os.path.join(target.store, "bases", "bb", "current"))
        os.symlink("versions/1", os.path.join(target.store, "bases", "bb", "current"))


def test_header_text_with_terminal_escapes_is_stored_and_shown_written_out(target):
    tree = small_tree(target)
    data = new_base(*layer_of(tree), source="evil\x1b]0;owned\x07\x1b[2J\r" + "x" * 3000)
    proc = target.import_stream(data, "escapes")
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.listdir(os.path.join(target.store, "staging")) == []  # not even a lock file
    try:
        listed = target.pycor("base", "versions", "escapes").stdout.decode()
        assert "\x1b" not in listed and "\x07" not in listed and "evil\\x1b]0;owned\\x07\\x1b[2J\\r" in listed
        rows = json.loads(target.pycor("base", "versions", "escapes", "--format", "json").stdout)
        assert rows[0]["source"].startswith("evil\\x1b") and len(rows[0]["source"]) < 1100
    finally:
        target.pycor("base", "rm", "escapes")


# -- records on disk: whatever a stream (or anyone) wrote there never crashes a listing ----------------------


def test_listings_survive_any_date_size_and_text_in_the_records(target):
    base = os.path.join(target.store, "bases", "bb")
    paths = [os.path.join(base, "versions", "1", "version.json"), os.path.join(base, "base.json")]
    kept = []
    for path in paths:
        with open(path, "rb") as f:
            kept.append(f.read())
    try:
        for created, size in [(1e300, 10**30), ("NaN", "huge"), (-1, -1), (float("inf"), float("nan"))]:
            for path in paths:
                with open(path) as f:
                    meta = json.load(f)
                meta.update(created=created, size=size, source="\x1b[31mred")
                with open(path, "w") as f:
                    f.write(json.dumps(meta, allow_nan=True))
            for args in (["base", "ls"], ["base", "versions", "bb"], ["base", "ls", "--format", "json"],
                         ["base", "versions", "bb", "--format", "json"]):
                proc = target.pycor(*args, check=False)
                assert proc.returncode == 0 and b"Traceback" not in proc.stderr, (args, proc.stderr)
                assert b"\x1b" not in proc.stdout
            epoch = time.strftime("%Y-%m-%d %H:%M", time.localtime(0)).encode()
            assert epoch in target.pycor("base", "versions", "bb").stdout
    finally:
        for path, data in zip(paths, kept):
            with open(path, "wb") as f:
                f.write(data)


def test_a_hook_line_in_a_base_record_never_reaches_a_container_config(target, lxcpath):
    """base.json is read through the allow-list (store.base): a line put there by hand, or by an older pycor's
    import, never reaches a container's config, and 'pycor base verify' reports it."""
    path = os.path.join(target.store, "bases", "bb", "base.json")
    with open(path) as f:
        meta = json.load(f)
    kept = dict(meta)
    pwned = os.path.join(target.outside, "pwned")
    meta["lxc"] = meta["lxc"] + [f"lxc.hook.pre-start = /bin/touch {pwned}", "lxc.mount.entry = / mnt none rbind 0 0"]
    with open(path, "w") as f:
        json.dump(meta, f)
    name = f"k{uuid.uuid4().hex[:7]}"
    try:
        run(PYCOR + ["--store", target.store, "create", name, "--base", "bb", "-P", lxcpath, "--network", "none"], env=target.env)
        with open(os.path.join(lxcpath, name, "config")) as f:
            config = f.read()
        assert "/bin/touch" not in config and "lxc.mount.entry" not in config
        assert "lxc.signal.halt = SIGUSR1" in config  # the base's own, allowed line
        run(["lxc-start", "-n", name, "-P", lxcpath])
        run(["lxc-wait", "-n", name, "-P", lxcpath, "-s", "RUNNING", "-t", "20"])
        assert not os.path.exists(pwned)
        verify = target.pycor("base", "verify", "bb", check=False)
        assert verify.returncode == 1
        assert b"base.json holds LXC config a base may not carry, left out of every container's config: " \
               b"'lxc.hook.pre-start" in verify.stdout
    finally:
        destroy(name, lxcpath)
        with open(path, "w") as f:
            json.dump(kept, f)


def test_verify_says_what_it_covered_and_catches_changed_lxc_lines(target):
    proc = target.pycor("base", "verify", "bb")
    out = proc.stdout.decode()
    assert "intact" in out and "checked: 1 layer(s)" in out and "the base's 2 LXC config line(s) (base.json)" in out
    assert "not covered: the dates, sizes and sources" in out
    path = os.path.join(target.store, "bases", "bb", "base.json")
    with open(path) as f:
        meta = json.load(f)
    kept = dict(meta)
    meta["lxc"] = ["lxc.signal.halt = SIGTERM", "lxc.signal.reboot = SIGTERM"]  # allowed lines, not the digest's
    with open(path, "w") as f:
        json.dump(meta, f)
    try:
        proc = target.pycor("base", "verify", "bb", check=False)
        assert proc.returncode == 1
        assert "base bb version 1: base.json's LXC lines (2) are not the ones its digest" in proc.stdout.decode()
    finally:
        with open(path, "w") as f:
            json.dump(kept, f)
    # a digest recorded before digests covered LXC lines: the layer verifies, and the lines are said not covered
    vjson = os.path.join(target.store, "bases", "bb", "versions", "1", "version.json")
    with open(vjson) as f:
        meta = json.load(f)
    kept = dict(meta)
    with open(os.path.join(target.store, "bases", "bb", "versions", "1", "manifest"), "rb") as f:
        meta["digest"] = dg.chain(dg.layer_digest(f.read()), None)
    with open(vjson, "w") as f:
        json.dump(meta, f)
    try:
        out = target.pycor("base", "verify", "bb").stdout.decode()
        assert "intact" in out and "not covered: the base's 2 LXC config line(s) (base.json): this base's first version " \
                                   "was given its digest before digests covered them" in out
    finally:
        with open(vjson, "w") as f:
            json.dump(kept, f)


def test_a_squashed_version_is_a_first_version_whose_digest_covers_the_lxc_lines(target):
    tree = small_tree(target)
    proc = target.import_stream(on_bb(target, *layer_of(tree)), "bb")
    assert proc.returncode == 0, proc.stderr.decode()
    try:
        target.pycor("base", "squash", "bb")
        out = target.pycor("base", "verify", "bb").stdout.decode()
        assert "version 3: intact" in out and "; the base's 2 LXC config line(s) (base.json)" in out, out
        assert "not covered: the base's" not in out
    finally:
        base = os.path.join(target.store, "bases", "bb")
        for v in ("2", "3"):
            shutil.rmtree(os.path.join(base, "versions", v))
        os.unlink(os.path.join(base, "current"))
        os.symlink("versions/1", os.path.join(base, "current"))


def test_an_older_pycors_export_imports_and_its_uncovered_lxc_lines_are_dropped(target):
    """An export made before digests covered LXC lines, and before holes were skipped: plain hashes, a dense
    archive, a digest over the layer alone. The layer imports; the lines are left out, with a message."""
    import hashlib

    tree = small_tree(target)
    with open(os.path.join(tree, "zeros"), "wb") as f:
        f.write(b"head" + bytes(1 << 20) + b"tail")
    manifest, tar = layer_of(tree)
    with open(os.path.join(tree, "zeros"), "rb") as f:
        data = f.read()
    plain = f"{len(data)}:{hashlib.sha256(data).hexdigest()}".encode()
    manifest = b"\n".join(line.rsplit(b" ", 1)[0] + b" " + plain if line.startswith(b"/zeros ") else line
                          for line in manifest.split(b"\n"))
    assert plain in manifest
    lines = ["lxc.signal.halt = SIGUSR1", "lxc.init.cmd = /sbin/init"]
    head = header([entry("1", None, digest=dg.chain(dg.layer_digest(manifest), None))], lxc=lines)
    proc = target.import_stream(stream(head, [(manifest, tar)]), "older")
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"its digest does not cover the export's LXC config lines (an older pycor made it)" in proc.stderr
        with open(os.path.join(target.store, "bases", "older", "base.json")) as f:
            assert json.load(f)["lxc"] == []
        assert b"intact" in target.pycor("base", "verify", "older").stdout
    finally:
        target.pycor("base", "rm", "older", check=False)


# -- a full store: said to be full, with the fix, nothing left -----------------------------------------------


def test_an_import_into_a_full_store_says_the_store_is_full_and_leaves_nothing(target, session_dir, env):
    tree = small_tree(target)
    with open(os.path.join(tree, "big"), "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    data = new_base(*layer_of(tree))
    with loop_fs(session_dir, ["mkfs.ext4", "-q"], size="32M") as point:
        store = os.path.join(point, "store")
        free = os.statvfs(point).f_bfree
        proc = subprocess.run(PYCOR + ["--store", store, "base", "import", "big", "--from-export", "-"], env=env,
                              input=data, capture_output=True, timeout=300)
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert f"base big version 1: the store's filesystem is full ({store}); nothing was imported" in err
        assert "df -h" in err and "damaged" not in err and "export it again" not in err
        assert os.listdir(os.path.join(store, "staging")) == [] and not os.path.exists(os.path.join(store, "bases", "big"))
        assert os.statvfs(point).f_bfree >= free - 64  # its space is back (a few blocks of directories)


# -- sparse files: holes kept through commit, export and import ----------------------------------------------


def test_a_sparse_file_stays_sparse_through_commit_export_and_import(target, make_container, env, session_dir):
    c = make_container()
    big = os.path.join(c.upper, "big")
    with open(big, "wb") as f:
        f.truncate(2 << 30)
        f.seek(1 << 30)
        f.write(b"data")
    name = f"sp{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["commit", c.name, "--as", name, "-P", c.lxcpath], env=env)
    exported = os.path.join(session_dir, f"{name}.export")
    try:
        layer = os.path.join(env["PYCOR_STORE"], "bases", name, "versions", "1", "rootfs", "big")
        assert os.stat(layer).st_size == 2 << 30 and os.stat(layer).st_blocks * 512 <= 1 << 20
        with open(os.path.join(env["PYCOR_STORE"], "bases", name, "versions", "1", "manifest"), "rb") as f:
            assert f" {2 << 30}:z:".encode() in f.read()
        run(PYCOR + ["base", "export", name, "-o", exported], env=env)
        assert os.path.getsize(exported) < 8 << 20  # the busybox layer and the 4 bytes, not 2 GiB of zeros
        with open(exported, "rb") as f:
            proc = target.pycor("base", "import", name, "--from-export", "-", input=f.read())
        assert b"checked" in proc.stderr
        imported = os.path.join(target.store, "bases", name, "versions", "1", "rootfs", "big")
        assert os.stat(imported).st_size == 2 << 30 and os.stat(imported).st_blocks * 512 <= 1 << 20
        assert b"intact" in target.pycor("base", "verify", name).stdout
    finally:
        run(PYCOR + ["base", "rm", name], env=env, check=False)
        target.pycor("base", "rm", name, check=False)
        if os.path.exists(exported):
            os.unlink(exported)


def test_a_version_recorded_before_holes_were_skipped_is_exported_dense_and_verifies_elsewhere(target, session_dir):
    """Its manifest hashed a sparse file plainly; the receiver must hash the same bytes, so the layer goes
    without --sparse (a receiver never reads holes on a stream's word)."""
    import hashlib

    from pycor_hooks.store import Store

    source = Store(os.path.join(session_dir, f"old-{uuid.uuid4().hex[:6]}"))
    staging = source.new_staging("test")
    os.makedirs(os.path.join(staging, "rootfs", "etc"))
    holes = os.path.join(staging, "rootfs", "holes")
    with open(holes, "wb") as f:
        f.truncate(8 << 20)
        f.write(b"start")
    source.publish_base("old", staging, "test", 4096, [])
    try:
        vdir = source.version_dir("old", "1")
        assert os.stat(os.path.join(vdir, "rootfs", "holes")).st_blocks * 512 < 1 << 20
        with open(os.path.join(vdir, "rootfs", "holes"), "rb") as f:
            plain = f"{8 << 20}:{hashlib.sha256(f.read()).hexdigest()}".encode()
        with open(os.path.join(vdir, "manifest"), "rb") as f:
            manifest = b"\n".join(line.rsplit(b" ", 1)[0] + b" " + plain if line.startswith(b"/holes ") else line
                                  for line in f.read().split(b"\n"))
        assert plain in manifest
        with open(os.path.join(vdir, "manifest"), "wb") as f:
            f.write(manifest)
        with open(os.path.join(vdir, "version.json")) as f:
            meta = json.load(f)
        meta["digest"] = dg.chain(dg.layer_digest(manifest), None)
        with open(os.path.join(vdir, "version.json"), "w") as f:
            json.dump(meta, f)
        assert "intact" in run(PYCOR + ["--store", source.root, "base", "verify", "old"], env=target.env).stdout
        exported = subprocess.run(PYCOR + ["--store", source.root, "base", "export", "old", "-o", "-"], env=target.env,
                                  capture_output=True, check=True).stdout
        assert len(exported) > 8 << 20  # dense
        target.import_stream(exported, "old", check=True)
        assert b"intact" in target.pycor("base", "verify", "old").stdout
    finally:
        target.pycor("base", "rm", "old", check=False)
        shutil.rmtree(source.root, ignore_errors=True)
