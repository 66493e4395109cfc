"""Shared fixtures for minicontainer's tests. Generic on purpose: tests add their own.

Markers (declared in pyproject.toml):
    root      needs root on the real kernel: skipped when not root, FAILS in CI
    rootless  uses the ``rootless_user`` fixture (an unprivileged user made for tests)
    slow      takes more than a few seconds

Fixtures:
    state_root      a fresh state root directory, exported as MINICONTAINER_ROOT
    rootless_user   (session) the user ``mcrootless``: ``.run(argv)``, ``.minicontainer(*args)``
    host_snapshot   a callable: what the host shows of minicontainer (mounts, cgroups,
                    processes, container dirs), to compare before/after a test
    assert_no_leaks a callable: fails if a later snapshot has anything new

Helpers:
    booted(path)    a Runtime on ``path`` with the base images, its containers removed after

In CI (env CI=true, run as root) nothing that these fixtures would skip is skipped:
it fails, so that a skip never hides a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from minicontainer import procfs

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "minicontainer"
ROOTLESS_NAME = "mcrootless"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_FS = Path("/sys/fs/cgroup")


@contextmanager
def booted(path: Path) -> Iterator:  # type: ignore[type-arg]
    """A state root at ``path`` with busybox and hello-world; every container made
    on it is removed afterwards, running or not (a module fixture's body)."""
    import minicontainer as mc

    runtime = mc.Runtime(path)
    runtime.bootstrap()
    try:
        yield runtime
    finally:
        for c in runtime.containers(all=True):
            c.remove(force=True)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """A missing setup step (a tool not installed, a daemon not answering): skip
    with the reason and the fix; in CI, fail (CI must be able to run everything)."""
    if in_ci():
        pytest.fail(f"CI must run as root with everything available: {reason}", pytrace=False)
    pytest.skip(reason)


def machine_cannot(category: str, detail: str) -> None:
    """Skip for what the user chose or the machine cannot do; ``category`` is one of
    the root conftest's SKIP_CATEGORIES ("not root", "no usable KVM", ...)."""
    pytest.skip(f"{category}: {detail}")


def needs_root(what: str = "this test") -> None:
    if os.geteuid() != 0:
        machine_cannot("not root", f"{what} needs root (run `sudo make test`)")


# --------------------------------------------------------------------------- markers


def pytest_configure(config: pytest.Config) -> None:
    # Already declared in pyproject.toml; repeated so the markers exist even when
    # pytest is run with another config file.
    config.addinivalue_line("markers", "root: needs root on the real kernel")
    config.addinivalue_line("markers", "rootless: runs as an unprivileged user the tests create")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root: this test is marked root", pytrace=False)
        needs_root("a test marked root")


# --------------------------------------------------------------------------- state root


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty minicontainer state root, exported as MINICONTAINER_ROOT so that
    the package and CLI subprocesses started by the test use it."""
    root = tmp_path / "state"
    root.mkdir()
    monkeypatch.setenv("MINICONTAINER_ROOT", str(root))
    return root


# --------------------------------------------------------------------------- leaks


class HostSnapshot(NamedTuple):
    mounts: frozenset[str]  # /proc/self/mountinfo lines naming the state root or minicontainer
    cgroups: frozenset[str]  # cgroup directories under .../minicontainer
    pids: frozenset[tuple[int, str]]  # (pid, cmdline) of processes mentioning minicontainer
    containers: tuple[str, ...]  # entries of <state root>/containers/
    # our veths (ifalias "minicontainer ID"), the root's leases (on its own networks
    # and, its own, on the shared default one) and published-port rules
    network: frozenset[str] = frozenset()


def _own_ancestry() -> set[int]:
    """This process and its ancestors: pytest's own command line may name the repo."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        pid = procfs.parent(pid) or 0
    return pids


def snapshot_host(root: str | os.PathLike[str] | None = None) -> HostSnapshot:
    """What the host shows of minicontainer now. ``root`` defaults to $MINICONTAINER_ROOT."""
    if root is None:
        root = os.environ.get("MINICONTAINER_ROOT")
    needles = ["minicontainer"] + ([str(root)] if root else [])

    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        mountinfo = []
    mounts = frozenset(line for line in mountinfo if any(n in line for n in needles))

    cgroups: set[str] = set()
    for top in [CGROUP_FS / "minicontainer", *CGROUP_FS.glob("*/minicontainer")]:
        if top.is_dir():
            cgroups.add(str(top))
            for dirpath, _dirs, _files in os.walk(top):
                cgroups.add(dirpath)

    skip = _own_ancestry()
    pids: set[tuple[int, str]] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "minicontainer" in cmdline:
            pids.add((int(entry.name), cmdline.strip()))

    containers: tuple[str, ...] = ()
    if root:
        cdir = Path(root) / "containers"
        if cdir.is_dir():
            containers = tuple(sorted(p.name for p in cdir.iterdir()))

    return HostSnapshot(
        frozenset(mounts), frozenset(cgroups), frozenset(pids), containers, _network_state(root)
    )


def _network_state(root: str | os.PathLike[str] | None) -> frozenset[str]:
    found: set[str] = set()
    net = Path("/sys/class/net")
    for dev in net.iterdir() if net.is_dir() else []:
        try:
            alias = (dev / "ifalias").read_text().strip()
        except OSError:
            continue
        if alias.startswith("minicontainer ") and alias != "minicontainer network":
            found.add(f"veth {dev.name} ({alias})")
    if root:
        from minicontainer.network import objects

        for ipam in objects.ipams(root):
            for name in ipam.names():
                try:
                    members = ipam.endpoints(name)
                except Exception:  # noqa: BLE001 - removed meanwhile
                    continue
                for cid, info in members.items():
                    if name != objects.DEFAULT_NETWORK or info.get("root") == str(root):
                        found.add(f"lease {info['ip']} on {name}: {cid[:12]}")
    if os.geteuid() == 0 and shutil.which("nft"):
        from minicontainer.network import firewall

        try:
            found |= {
                f"published {p['host_port']}/{p['proto']}: {p['container']}"
                for p in firewall.published()
            }
        except Exception:  # noqa: BLE001 - a leak check must not fail on nft's mood
            pass
    return frozenset(found)


def leaks_between(before: HostSnapshot, after: HostSnapshot) -> dict[str, list]:
    """What ``after`` has that ``before`` had not, per kind (empty dict: no leak)."""
    found = {
        "mounts": sorted(after.mounts - before.mounts),
        "cgroups": sorted(after.cgroups - before.cgroups),
        "processes": sorted(after.pids - before.pids),
        "containers": sorted(set(after.containers) - set(before.containers)),
        "network": sorted(after.network - before.network),
    }
    return {kind: items for kind, items in found.items() if items}


def check_no_leaks(
    before: HostSnapshot,
    after: HostSnapshot | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    timeout: float = 5.0,
) -> None:
    """Assert nothing new since ``before``. Without ``after``, snapshots again (with
    ``root``) until clean or ``timeout`` seconds: processes take a moment to go."""
    deadline = time.monotonic() + timeout
    while True:
        current = after if after is not None else snapshot_host(root)
        leaks = leaks_between(before, current)
        if not leaks or after is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if leaks:
        lines = ["minicontainer left things behind on the host:"]
        for kind, items in leaks.items():
            lines.append(f"  {kind}:")
            lines.extend(f"    {item}" for item in items)
        pytest.fail("\n".join(lines), pytrace=False)


@pytest.fixture
def host_snapshot():
    """``snap = host_snapshot(); ...; assert_no_leaks(snap)``; takes an optional root."""
    return snapshot_host


@pytest.fixture
def assert_no_leaks():
    return check_no_leaks


# --------------------------------------------------------------------------- rootless user


@dataclass
class RootlessUser:
    """An unprivileged user for rootless tests; commands run with a clean environment."""

    name: str
    uid: int
    gid: int
    home: str
    python: str | None = None  # a Python this user can run
    pythonpath: str | None = None  # a world-readable copy of the package's parent dir
    _problem: str | None = field(default=None, repr=False)

    def environ(self, env: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "XDG_DATA_HOME": f"{self.home}/.local/share",
        }
        if in_ci():
            base["CI"] = "true"
        base.update(env or {})
        return base

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user (HOME and XDG_DATA_HOME set, nothing of root's
        environment). Output is captured as text; the exit code is not checked."""
        cmd = list(argv)
        if os.geteuid() != self.uid:
            cmd = [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--init-groups",
                "--",
                *cmd,
            ]
        return subprocess.run(
            cmd,
            env=self.environ(env),
            cwd=cwd or self.home,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )

    def minicontainer(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the minicontainer CLI as this user: ``python3 -m minicontainer ARGS``
        with a Python and a copy of the package that this user can read."""
        if self._problem:
            skip_or_fail(self._problem)
        extra = {"PYTHONPATH": self.pythonpath or "", "PYTHONDONTWRITEBYTECODE": "1"}
        extra.update(env or {})
        return self.run(
            [self.python or "python3", "-m", "minicontainer", *args],
            env=extra,
            timeout=timeout,
            input=input,
        )


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 9):  # 9: exists (another session raced us)
        skip_or_fail(f"useradd {name} failed: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


def _ensure_subids(name: str) -> None:
    """Give the user 65536 subordinate uids/gids (for newuidmap) if it has none."""
    for path, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            lines = []
        ranges = [ln.split(":") for ln in lines if ln.count(":") == 2]
        if any(r[0] == name for r in ranges):
            continue
        start = max([100000] + [int(r[1]) + int(r[2]) for r in ranges if r[1].isdigit()])
        subprocess.run(
            ["usermod", flag, f"{start}-{start + 65535}", name], capture_output=True, check=False
        )


def _userns_problem(user: RootlessUser) -> str | None:
    """None if this user can make a user namespace, else why not (and what to change)."""
    if shutil.which("unshare") is None:
        return "unshare(1) missing: apt-get install util-linux"
    proc = user.run(["unshare", "--user", "--map-root-user", "true"], timeout=20)
    if proc.returncode == 0:
        return None
    hints = []
    for knob, bad, good in (
        ("kernel.unprivileged_userns_clone", "0", "1"),  # Debian <= 10 kernels
        ("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),  # Ubuntu >= 23.10
        ("user.max_user_namespaces", "0", "15000"),
    ):
        try:
            value = Path("/proc/sys", knob.replace(".", "/")).read_text().strip()
        except OSError:
            continue
        if value == bad:
            hints.append(f"{knob} is {value} (as root: sysctl -w {knob}={good})")
    return (
        f"unprivileged user namespaces do not work for {user.name}: "
        f"`unshare --user --map-root-user true` said {proc.stderr.strip()!r}"
        + (f"; {'; '.join(hints)}" if hints else "")
    )


def _readable_package_copy() -> str:
    """Copy minicontainer/ into a fresh world-readable temp dir; return that dir."""
    top = tempfile.mkdtemp(prefix="mc-rootless-pkg-")
    dest = Path(top) / "minicontainer"
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    os.chmod(top, 0o755)
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return top


def _find_python(user: RootlessUser) -> str | None:
    """Debian's /usr/bin/python3 first, then any python3 >= 3.10 that the user can run."""
    candidates = ["/usr/bin/python3"]
    for d in os.environ.get("PATH", "").split(os.pathsep) + SAFE_PATH.split(":"):
        for exe in ("python3", "python3.13", "python3.12", "python3.11", "python3.10"):
            p = os.path.join(d, exe)
            if os.path.isfile(p) and p not in candidates:
                candidates.append(p)
    probe = "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
    for p in candidates:
        if not os.path.exists(p):
            continue
        try:
            if user.run([p, "-c", probe], timeout=20).returncode == 0:
                return p
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


@pytest.fixture(scope="session")
def rootless_user():
    """The unprivileged user ``mcrootless`` (created once, kept between runs).

    Root only: creating a user needs root. Skips (fails in CI) when not root, or when
    the kernel does not let unprivileged users make user namespaces."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI must run as root: rootless tests create a user", pytrace=False)
        needs_root("the rootless_user fixture (it creates the user mcrootless)")
    for tool in ("setpriv", "useradd"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} missing (Debian packages util-linux / passwd)")

    pw = _ensure_user(ROOTLESS_NAME)
    _ensure_subids(ROOTLESS_NAME)
    user = RootlessUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    for sub in (".local", ".local/share"):  # XDG_DATA_HOME, owned by the user
        d = Path(user.home, sub)
        d.mkdir(exist_ok=True)
        os.chown(d, user.uid, user.gid)

    problem = _userns_problem(user)
    if problem:
        machine_cannot("no user namespaces", problem)

    pkg_copy = _readable_package_copy()
    try:
        user.pythonpath = pkg_copy
        user.python = _find_python(user)
        if user.python is None:
            user._problem = (
                f"no Python >= 3.10 that {user.name} can run (a Python under /root is not "
                "readable by others): apt-get install python3"
            )
        yield user
    finally:
        # Leave the user (recreating it each run is slow) but none of its processes.
        if shutil.which("pkill"):
            subprocess.run(["pkill", "-KILL", "-u", user.name], capture_output=True)
        shutil.rmtree(pkg_copy, ignore_errors=True)
