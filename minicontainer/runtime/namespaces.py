"""Linux namespaces: which ones a container gets, its uid/gid maps, and how to
see them (man 7 namespaces, man 7 user_namespaces).

A namespace wraps one global resource so the processes inside see their own
instance of it: their own hostname (uts), process tree (pid), mount table
(mnt), network devices (net), System V IPC (ipc), cgroup root (cgroup) and
user ids (user). Each namespace is a kernel object with an inode number;
``/proc/PID/ns/NAME`` is a link to it, so two processes share a namespace
exactly when those links name the same inode.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..record import Record
from . import kernel as k

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from subprocess import CompletedProcess

# Name in /proc/PID/ns -> clone flag. The order is the order setns(2) joins them
# in: the user namespace first, so we hold capabilities in the others.
FLAGS: dict[str, int] = {
    "user": k.CLONE_NEWUSER,
    "mnt": k.CLONE_NEWNS,
    "uts": k.CLONE_NEWUTS,
    "ipc": k.CLONE_NEWIPC,
    "net": k.CLONE_NEWNET,
    "pid": k.CLONE_NEWPID,
    "cgroup": k.CLONE_NEWCGROUP,
}

# What a student sees when each one is on (used by notebooks and `inspect`).
DESCRIPTIONS: dict[str, str] = {
    "mnt": "its own mount table: the image's files as /, a fresh /proc",
    "uts": "its own hostname",
    "ipc": "its own System V IPC objects and POSIX message queues",
    "net": "its own network devices (only lo), routes and ports",
    "pid": "its own process tree: the command is PID 1",
    "cgroup": "its own view of the cgroup tree: its cgroup looks like the root",
    "user": "its own user ids: your uid outside is root (0) inside",
}

ALL = ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user")


def flags_for(names: set[str] | list[str] | tuple[str, ...]) -> int:
    flags = 0
    for name in names:
        flags |= FLAGS[name]
    return flags


def inode(pid: int | str, name: str) -> str:
    """The namespace a process is in, as the kernel names it: ``uts:[4026531838]``."""
    return os.readlink(f"/proc/{pid}/ns/{name}")


def inodes(pid: int | str = "self", names: tuple[str, ...] = ALL) -> dict[str, str]:
    return {name: inode(pid, name) for name in names}


# --- user namespace id maps (man 7 user_namespaces, "User and group ID mappings")


class IdMap(Record):
    """One line of /proc/PID/uid_map: ``inside`` .. ``inside+count`` is ``outside`` .. outside."""

    _frozen = True

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


def _subordinate(path: str, user: str, uid: int) -> tuple[int, int] | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)):
            return int(parts[1]), int(parts[2])
    return None


def rootless_maps(uid: int, gid: int) -> tuple[list[IdMap], list[IdMap], bool]:
    """The maps for a rootless container: your uid is root inside.

    With an /etc/subuid and /etc/subgid range and the setuid helpers
    newuidmap/newgidmap (package uidmap), ids 1..N inside map to that range, so
    ``-u 1000`` works inside. Without them, only root (0) is mapped.
    Returns (uid maps, gid maps, whether the helpers are needed).
    """
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub_u = _subordinate("/etc/subuid", user, uid)
    sub_g = _subordinate("/etc/subgid", user, uid)
    from shutil import which

    helpers = which("newuidmap") and which("newgidmap")
    if sub_u and sub_g and helpers:
        return (
            [IdMap(0, uid, 1), IdMap(1, sub_u[0], sub_u[1])],
            [IdMap(0, gid, 1), IdMap(1, sub_g[0], sub_g[1])],
            True,
        )
    return [IdMap(0, uid, 1)], [IdMap(0, gid, 1)], False


def write_id_maps(pid: int, uid_maps: list[IdMap], gid_maps: list[IdMap], helpers: bool) -> None:
    """Write /proc/PID/uid_map and gid_map for a child in a new user namespace.

    Unprivileged, a process may map only its own uid, and must first write
    "deny" to /proc/PID/setgroups (CVE-2014-8989); newuidmap/newgidmap are
    setuid helpers that may map the ranges /etc/subuid grants.
    """
    if helpers:
        import subprocess

        for tool, maps in (("newuidmap", uid_maps), ("newgidmap", gid_maps)):
            args = [str(n) for m in maps for n in (m.inside, m.outside, m.count)]
            subprocess.run([tool, str(pid), *args], check=True, capture_output=True)
        return
    if os.geteuid() != 0:
        Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/uid_map").write_text("\n".join(m.line() for m in uid_maps) + "\n")
    Path(f"/proc/{pid}/gid_map").write_text("\n".join(m.line() for m in gid_maps) + "\n")


def userns_available() -> tuple[bool, str]:
    """Whether an unprivileged user may create user namespaces here, and if not, why."""
    for path, bad, fix in (
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "0",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "0",
            "sudo sysctl -w user.max_user_namespaces=15000",
        ),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                return False, f"{path} is {bad}: unprivileged user namespaces are off ({fix})"
        except OSError:
            pass
    return True, "unprivileged user namespaces are allowed"


# --- a namespace on its own, like unshare(1): for the notebooks' one-at-a-time tour


def run_in(
    names: list[str] | tuple[str, ...],
    argv: list[str],
    *,
    kernel: k.Kernel | None = None,
    hostname: str | None = None,
    timeout: float = 30,
) -> CompletedProcess[str]:
    """Run a host command in new namespaces, like ``unshare --NAME... argv``.

    No image, no new root: only the namespaces change, so the same command shows
    what each one isolates. With "pid", /proc is remounted (like
    ``unshare --pid --fork --mount-proc``) so ``ps`` shows the new tree; with
    "net", lo is brought up. Not root: a user namespace is added, as
    ``unshare --map-root-user`` does.
    """
    kern = kernel or k.real()
    names = list(dict.fromkeys(names))
    if "pid" in names and "mnt" not in names:
        names.append("mnt")  # a new /proc for the new PID tree needs its own mount table
    rootless = os.geteuid() != 0
    if rootless and "user" not in names:
        names.insert(0, "user")
    uid, gid = os.getuid(), os.getgid()
    out_r, out_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = kern.clone(flags_for(names))
    if pid == 0:  # child: new namespaces already
        try:
            os.close(out_r)
            os.close(go_w)
            os.read(go_r, 1)  # wait for the parent to write our id maps
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            if "mnt" in names:
                kern.mount(None, "/", None, k.MS_REC | k.MS_PRIVATE)
            if "pid" in names:
                kern.mount("proc", "/proc", "proc", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)
            if "uts" in names and hostname:
                kern.sethostname(hostname)
            if "net" in names:
                kern.set_link_up("lo")
            os.execvp(argv[0], argv)
        except BaseException as e:  # noqa: BLE001 - report anything, then leave
            os.write(2, f"{argv[0]}: {e}\n".encode())
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(go_r)
    try:
        try:
            if "user" in names:
                write_id_maps(pid, *rootless_maps(uid, gid))
        except OSError:
            os.kill(pid, 9)  # never leave the child waiting forever
            raise
        finally:
            os.close(go_w)
        chunks = []
        while chunk := os.read(out_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(out_r)
        _, status = os.waitpid(pid, 0)
    output = b"".join(chunks).decode(errors="replace")
    from subprocess import CompletedProcess

    return CompletedProcess(argv, os.waitstatus_to_exitcode(status), output, "")
