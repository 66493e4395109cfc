"""Local base images built from the host, since no registry may be reachable.

`busybox:latest`: one layer holding the host's STATIC busybox plus relative
symlinks for every applet, a minimal /etc and the usual empty mountpoints.
`hello-world:latest`: that same layer (same digest, stored once) plus a layer
with /hello, a script that reports what the runtime did, read from inside.

Both are reproducible (fixed mtimes, owners, gzip header and config timestamps),
as the OCI image-spec layer.md/config.md leave it to the builder: the same
busybox binary always gives the same layer digests and image IDs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..errors import ImageNotFound, NotSupported, UserError
from .layer import LayerEntry, write_layer
from .oci import host_platform
from .store import Image, ImageStore

BUSYBOX_REF = "busybox:latest"
HELLO_REF = "hello-world:latest"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Bump when the layout below changes: it is part of the fingerprint label, so an
# older bootstrap is rebuilt instead of being taken as up to date.
BUILDER_VERSION = "1"
FINGERPRINT_LABEL = "org.minicontainer.bootstrap"
# Reproducible-builds convention (SOURCE_DATE_EPOCH=0): timestamps carry no build time.
FIXED_MTIME = 0
FIXED_CREATED = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install busybox-static (Debian/Ubuntu)"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"

HELLO_SCRIPT = r"""#!/bin/sh
# minicontainer's hello-world: like Docker's, but every fact is read from inside.
pid1=$(tr '\0' ' ' < /proc/1/cmdline)
root=$(awk '$5 == "/"' /proc/self/mountinfo | tail -n 1)
fstype=${root#* - }
fstype=${fstype%% *}
lower=$(echo "$root" | sed -n 's/.*[ ,]lowerdir=\([^,]*\).*/\1/p')
if [ -n "$lower" ]; then
	n=$(echo "$lower" | tr ':' '\n' | grep -c .)
	fs="an overlay mount: $n read-only image layer(s) under a private writable layer"
else
	fs="a \"$fstype\" mount"
fi
ns=""
for n in cgroup ipc mnt net pid user uts; do
	[ -e /proc/self/ns/$n ] && ns="$ns $(readlink /proc/self/ns/$n)"
done
cat <<MSG

Hello from minicontainer!
This message shows that your installation appears to be working correctly.

To generate this message, minicontainer took the following steps:
 1. It found the image "hello-world" in its local OCI image store
    (built from your host's static busybox by \`minicontainer bootstrap\`).
 2. It created namespaces for this process; seen from inside they are:
   $ns
 3. It stacked the image's layers into the root filesystem; / is
    $fs.
 4. It started /hello as PID $$ of its own PID namespace
    (/proc/1/cmdline: $pid1), with hostname "$(hostname)".
 5. It streamed this output back to your terminal.

To try something more ambitious, run a shell in a container with:
 \$ minicontainer run -it busybox sh

To see how each step works, open the notebooks that come with minicontainer.

MSG
"""


def find_busybox(busybox_path: str | os.PathLike[str] | None = None) -> Path:
    """The host busybox to use; it must be statically linked (it runs in an
    image that has no libc)."""
    if busybox_path is not None:
        candidates: tuple[str | os.PathLike[str], ...] = (busybox_path,)
    else:
        candidates = BUSYBOX_CANDIDATES
    for c in candidates:
        p = Path(c)
        if p.is_file():
            p = p.resolve()
            if not is_static_elf(p):
                raise NotSupported(
                    f"{p} is dynamically linked; the busybox image needs a static busybox: "
                    f"{INSTALL_HINT}"
                )
            return p
    raise NotSupported(f"no busybox found at {', '.join(map(str, candidates))}: {INSTALL_HINT}")


def is_static_elf(path: str | os.PathLike[str]) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader);
    a static-pie binary counts as static. Raises NotSupported for a non-ELF file."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise NotSupported(f"{path} is not an ELF executable: {INSTALL_HINT}")
        end = "<" if ident[5] == 1 else ">"
        if ident[4] == 2:  # ELFCLASS64
            (phoff,) = struct.unpack(end + "Q", ident[32:40])
            phentsize, phnum = struct.unpack(end + "HH", ident[54:58])
        else:
            (phoff,) = struct.unpack(end + "I", ident[28:32])
            phentsize, phnum = struct.unpack(end + "HH", ident[42:46])
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            raw = f.read(4)
            if len(raw) < 4:
                break
            if struct.unpack(end + "I", raw)[0] == 3:  # PT_INTERP
                return False
    return True


def _busybox_facts(busybox: Path) -> tuple[str, list[str]]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    try:
        listing = subprocess.run(
            [str(busybox), "--list"], capture_output=True, check=True, env=env, timeout=30
        ).stdout.decode()
        helptext = subprocess.run(
            [str(busybox), "--help"], capture_output=True, env=env, timeout=30
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError) as e:
        raise NotSupported(f"cannot run {busybox}: {e}: {INSTALL_HINT}") from None
    applets = sorted({a for a in listing.split() if a and "/" not in a and a != "busybox"})
    if "sh" not in applets:
        raise NotSupported(f"{busybox} has no 'sh' applet: {INSTALL_HINT}")
    first = helptext.splitlines()[0] if helptext else "BusyBox"
    version = first.split(" multi-call")[0].strip()
    return version, applets


def _busybox_entries(busybox: Path, applets: list[str]) -> list[LayerEntry]:
    entries = [
        LayerEntry("bin", "dir", 0o755),
        LayerEntry("bin/busybox", "file", 0o755, source=busybox),
        LayerEntry("dev", "dir", 0o755),
        LayerEntry("etc", "dir", 0o755),
        LayerEntry("etc/group", "file", 0o644, data=GROUP.encode()),
        LayerEntry("etc/passwd", "file", 0o644, data=PASSWD.encode()),
        LayerEntry("home", "dir", 0o755),
        LayerEntry("proc", "dir", 0o755),
        LayerEntry("root", "dir", 0o700),
        LayerEntry("sys", "dir", 0o755),
        LayerEntry("tmp", "dir", 0o1777),
        LayerEntry("var", "dir", 0o755),
    ]
    # Relative targets stay correct wherever the rootfs is mounted or copied.
    entries += [LayerEntry(f"bin/{a}", "symlink", 0o777, linkname="busybox") for a in applets]
    return entries


def _write(entries: list[LayerEntry], out: Path) -> None:
    # Owned by root with fixed times whoever builds it, so every host agrees.
    write_layer(entries, out, uid=0, gid=0, uname="root", gname="root", mtime=FIXED_MTIME)


def _fingerprints(busybox: Path) -> tuple[str, str]:
    h = hashlib.sha256()
    with open(busybox, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    base = hashlib.sha256(f"{BUILDER_VERSION} {h.hexdigest()}".encode()).hexdigest()
    hello = hashlib.sha256(f"{base} {HELLO_SCRIPT}".encode()).hexdigest()
    return "sha256:" + base, "sha256:" + hello


def _up_to_date(store: ImageStore, base_fp: str, hello_fp: str) -> list[Image] | None:
    try:
        bb = store.resolve(BUSYBOX_REF)
        hw = store.resolve(HELLO_REF)
    except (ImageNotFound, UserError, ValueError):
        return None
    if bb.labels.get(FINGERPRINT_LABEL) != base_fp or hw.labels.get(FINGERPRINT_LABEL) != hello_fp:
        return None
    if len(bb.layer_digests) != 1 or hw.layer_digests[:1] != bb.layer_digests:
        return None
    if not all(store.has_blob(d) for d in (*bb.layer_digests, *hw.layer_digests)):
        return None
    return [bb, hw]


def _config(cmd: list[str], fingerprint: str) -> dict:
    plat = host_platform()
    cfg: dict = {
        "architecture": plat["architecture"],
        "os": "linux",
        "created": FIXED_CREATED,
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "Labels": {FINGERPRINT_LABEL: fingerprint}},
    }
    if "variant" in plat:
        cfg["variant"] = plat["variant"]
    return cfg


def bootstrap(
    store: ImageStore,
    busybox_path: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> list[Image]:
    """Build `busybox:latest` and `hello-world:latest` from the host's static busybox.
    Idempotent: if both exist with the expected content, return them untouched."""
    busybox = find_busybox(busybox_path)
    base_fp, hello_fp = _fingerprints(busybox)
    if not force:
        current = _up_to_date(store, base_fp, hello_fp)
        if current is not None:
            return current

    version, applets = _busybox_facts(busybox)
    base_history = {
        "created": FIXED_CREATED,
        "created_by": f"minicontainer bootstrap: {version}, static, {len(applets)} applets",
        "comment": "bin/busybox from the host, applet symlinks, minimal /etc",
    }
    hello_history = {
        "created": FIXED_CREATED,
        "created_by": "minicontainer bootstrap: COPY hello /hello",
    }
    tmp = Path(tempfile.mkdtemp(prefix=".bootstrap-", dir=store.root))
    try:
        base_layer = tmp / "busybox.tar.gz"
        hello_layer = tmp / "hello.tar.gz"
        _write(_busybox_entries(busybox, applets), base_layer)
        _write([LayerEntry("hello", "file", 0o755, data=HELLO_SCRIPT.encode())], hello_layer)
        bb = store.add_image([base_layer], _config(["sh"], base_fp), BUSYBOX_REF, [base_history])
        hw = store.add_image(
            [base_layer, hello_layer],
            _config(["/hello"], hello_fp),
            HELLO_REF,
            [base_history, hello_history],
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [bb, hw]
