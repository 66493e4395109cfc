"""Rootless networking with pasta (minicontainer/network/rootless.py).

The user ``mcrootless`` makes namespaces as a rootless container has them
(``unshare --user --map-root-user --net``: a small Python program, INNER, that
listens inside), and a driver of the same user, in the host's namespaces,
connects them with ``rootless.start``. The test (root) then talks to the
published ports over the host's loopback, asks INNER what it sees from inside
(its address, its routes, the host's loopback, DNS), and watches pasta end.

Traffic stays on the host's loopback and in our namespaces, so DNS forwarding
(which goes to the host's real resolver) is checked by its command line only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import skip_or_fail
from minicontainer.errors import UserError
from minicontainer.network import rootless

CTR_TCP, CTR_UDP = 80, 5000  # inside the namespace: its root may bind low ports
DEADLINE = 15.0  # seconds: a guard against hanging, never an assertion


@dataclass(frozen=True)
class Binding:  # what ports.PortBinding offers rootless.start
    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0


# Runs in the new user and network namespace. Serves TCP/UDP on the ports it is
# given (before pasta starts, as a container may), then answers probes on stdin.
INNER = r"""
import json, socket, subprocess, sys, threading
cfg = json.loads(sys.argv[1])

def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8)
    def loop():
        while True:
            c, _ = s.accept(); c.sendall(b"tcp:%d" % port); c.close()
    threading.Thread(target=loop, daemon=True).start()

def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    def loop():
        while True:
            data, peer = s.recvfrom(2048); s.sendto(b"udp:%d:" % port + data, peer)
    threading.Thread(target=loop, daemon=True).start()

for p in cfg["tcp"]: tcp(p)
for p in cfg["udp"]: udp(p)
print(json.dumps({"listening": True}), flush=True)

def ip(*args):
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    return json.loads(proc.stdout or "[]")

for line in sys.stdin:
    cmd = json.loads(line)
    out = {"addr": ip("-4", "addr", "show"), "route": ip("-4", "route", "show")}
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(("127.0.0.1", cmd["loopback_port"])); out["loopback"] = "connected"
    except OSError as e:
        out["loopback"] = type(e).__name__
    finally:
        s.close()
    print(json.dumps(out), flush=True)
"""

# Runs as the user in the host's namespaces: starts INNER, then pasta on it.
DRIVER = r"""
import json, subprocess, sys
from dataclasses import dataclass
from minicontainer.errors import UserError
from minicontainer.network import rootless

@dataclass
class B:
    container_port: int
    proto: str
    host_ip: str
    host_port: int

cfg = json.loads(sys.argv[1])
unshare = ["unshare", "--user", "--map-root-user", "--net"]
inner = subprocess.Popen(
    unshare + [sys.executable, "-c", sys.argv[2], sys.argv[1]],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
inner.stdout.readline()
try:
    pid = rootless.start(inner.pid, [B(*b) for b in cfg["bindings"]])
except UserError as e:
    print(json.dumps({"error": str(e), "inner": inner.pid}), flush=True)
    inner.kill(); inner.wait(); sys.exit(0)
print(json.dumps({"pasta": pid, "inner": inner.pid}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    inner.stdin.write(line); inner.stdin.flush()
    print(inner.stdout.readline().strip(), flush=True)
inner.stdin.close()
print(json.dumps({"inner_exit": inner.wait()}), flush=True)
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on the host now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def ends(fd: int) -> bool:
    """The process behind the pidfd ends (within DEADLINE: a guard, not a measure)."""
    return bool(select.select([fd], [], [], DEADLINE)[0])


def pastas_for(inner_pid: int) -> list[int]:
    """pasta processes whose target is ``inner_pid`` (the last argument before --pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(exe).startswith("passt") and str(inner_pid).encode() in argv:
            found.append(int(entry.name))
    return found


class Session:
    """The driver (and through it INNER and pasta), as the rootless user."""

    def __init__(self, user, cfg: dict) -> None:  # type: ignore[no-untyped-def]
        self.proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                "--init-groups",
                "--",
                user.python,
                "-c",
                DRIVER,
                json.dumps(cfg),
                INNER,
            ],
            env=user.environ({"PYTHONPATH": user.pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}),
            cwd=user.home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first: dict = {}
        self.pasta: int | None = None
        self.inner = 0
        self.pasta_fd: int | None = None

    def begin(self) -> None:
        """Wait for start's outcome: {"pasta": PID, "inner": PID} or {"error": ...}."""
        self.first = self.read()
        self.pasta = self.first.get("pasta")
        self.inner = self.first.get("inner", 0)
        # Held from now on: the pid cannot be reused under the test's feet.
        self.pasta_fd = pidfd(self.pasta) if self.pasta else None

    def read(self) -> dict:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], DEADLINE)[0]:
            raise AssertionError("the driver said nothing")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the driver ended: {err}")
        return json.loads(line)

    def probe(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def quit(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        # Whatever happened above, our pasta does not stay (a no-op if it ended).
        if self.pasta_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pasta_fd, signal.SIGKILL)
            os.close(self.pasta_fd)


@contextlib.contextmanager
def session(user, bindings=(), tcp=(), udp=()) -> Iterator[Session]:  # type: ignore[no-untyped-def]
    ok, why = rootless.available()
    if not ok:
        skip_or_fail(why)
    cfg = {"bindings": [list(b) for b in bindings], "tcp": list(tcp), "udp": list(udp)}
    s = Session(user, cfg)
    try:
        s.begin()
        yield s
    finally:
        s.close()


def host_default() -> tuple[str, str]:
    """The host's (address, gateway) on the interface of its IPv4 default route,
    which pasta copies into the namespace."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True
        ).stdout
        or "[]"
    )
    if not routes:
        skip_or_fail("the host has no IPv4 default route, which pasta --config-net copies")
    dev, gateway = routes[0]["dev"], routes[0].get("gateway", "")
    addrs = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", dev], capture_output=True, text=True
        ).stdout
    )
    local = [a["local"] for link in addrs for a in link.get("addr_info", [])]
    return (local[0] if local else ""), gateway


# --------------------------------------------------------------------------- a published container


@pytest.fixture(scope="module")
def published(rootless_user):
    """One namespace with TCP and UDP published, a host service on loopback only
    (that the container must not reach), an unpublished listener."""
    tcp_port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    udp_same = free_port(socket.SOCK_DGRAM)
    unpublished = free_port()
    loopback = socket.socket()
    loopback.bind(("127.0.0.1", 0))
    loopback.listen(8)  # listening before pasta starts: -T auto would forward it
    bindings = [
        (CTR_TCP, "tcp", "", tcp_port),
        (CTR_UDP, "udp", "", udp_port),
        (udp_same, "udp", "127.0.0.1", udp_same),
    ]
    ports = {"tcp": tcp_port, "udp": udp_port, "udp_same": udp_same, "unpublished": unpublished}
    try:
        with session(
            rootless_user,
            bindings,
            tcp=[CTR_TCP, unpublished],
            udp=[CTR_UDP, udp_same],
        ) as s:
            assert s.pasta, s.first
            s.ports = ports  # type: ignore[attr-defined]
            s.loopback_port = loopback.getsockname()[1]  # type: ignore[attr-defined]
            s.probed = s.probe(loopback_port=s.loopback_port)  # type: ignore[attr-defined]
            yield s
    finally:
        loopback.close()


@pytest.mark.rootless
@pytest.mark.root
def test_published_tcp_port_reaches_the_namespace(published):
    with socket.create_connection(("127.0.0.1", published.ports["tcp"]), timeout=5) as c:
        assert c.recv(100) == b"tcp:%d" % CTR_TCP


@pytest.mark.rootless
@pytest.mark.root
def test_published_udp_port_on_loopback(published):
    # From the loopback pasta splices sockets; in pasta 0.0~git20230309 the
    # answers are lost when the host port differs from the container's (and
    # from the host's own address --no-map-gw loses them), so the number stays.
    port = published.ports["udp_same"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"hi", ("127.0.0.1", port))
        assert u.recv(100) == b"udp:%d:hi" % port


@pytest.mark.rootless
@pytest.mark.root
def test_namespace_has_the_hosts_address_and_default_route(published):
    address, gateway = host_default()
    links = {link["ifname"]: link for link in published.probed["addr"]}
    assert "eth0" in links, published.probed["addr"]
    assert "UP" in links["eth0"]["flags"]
    inside = [a["local"] for a in links["eth0"]["addr_info"]]
    assert address in inside, (address, inside)
    defaults = [r for r in published.probed["route"] if r["dst"] == "default"]
    assert defaults and defaults[0]["dev"] == "eth0", published.probed["route"]
    assert defaults[0]["gateway"] == gateway


@pytest.mark.rootless
@pytest.mark.root
def test_hosts_loopback_is_not_reachable_from_inside(published):
    # pasta's default -T auto would splice it into the namespace's 127.0.0.1.
    assert published.probed["loopback"] == "ConnectionRefusedError"


@pytest.mark.rootless
@pytest.mark.root
def test_only_published_ports_are_forwarded(published):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", published.ports["unpublished"]), timeout=5).close()


# --------------------------------------------------------------------------- lifetime


@pytest.mark.rootless
@pytest.mark.root
def test_pasta_exits_when_the_namespace_process_ends(rootless_user):
    listening = free_port()
    with session(rootless_user, tcp=[listening]) as s:
        assert s.pasta and s.pasta_fd is not None, s.first
        assert os.path.basename(os.readlink(f"/proc/{s.pasta}/exe")).startswith("passt")
        watcher = int(Path(f"/proc/{s.pasta}/stat").read_text().rsplit(")", 1)[1].split()[1])
        watcher_fd = pidfd(watcher)
        assert watcher_fd is not None
        try:
            # Nothing published, nothing reachable. (pasta's default, -t auto, would
            # publish it once its scan every second saw it: that -t none is given
            # is test_command_turns_off_every_way_into_the_host's to check.)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", listening), timeout=5).close()
            assert s.quit() == {"inner_exit": 0}
            assert ends(s.pasta_fd), "pasta outlived the namespace's last process"
            assert ends(watcher_fd), "pasta's watcher stayed"
        finally:
            os.close(watcher_fd)


def fd_targets(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    return {os.readlink(fd) for fd in fds.iterdir()}


@pytest.mark.rootless
@pytest.mark.root
def test_pasta_and_watcher_hold_nothing_of_the_caller(published):
    # The driver (start's caller) talks to the test over pipes, as a container's
    # stdio would be: neither pasta nor its watcher may keep one open.
    driver = fd_targets(published.proc.pid)
    caller_pipes = {t for t in driver if t.startswith("pipe:")}
    assert caller_pipes
    watcher = int(Path(f"/proc/{published.pasta}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid in (published.pasta, watcher):
        assert not fd_targets(pid) & caller_pipes, pid
        assert os.readlink(f"/proc/{pid}/cwd") == "/"


@pytest.mark.rootless
@pytest.mark.root
def test_pasta_dies_with_its_watcher(rootless_user):
    with session(rootless_user) as s:
        assert s.pasta and s.pasta_fd is not None, s.first
        watcher = int(Path(f"/proc/{s.pasta}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(watcher, signal.SIGKILL)
        assert ends(s.pasta_fd), "pasta outlived its watcher"


@pytest.mark.rootless
@pytest.mark.root
def test_stop_ends_pasta_and_its_watcher(rootless_user):
    with session(rootless_user) as s:
        assert s.pasta and s.pasta_fd is not None, s.first
        watcher = int(Path(f"/proc/{s.pasta}/stat").read_text().rsplit(")", 1)[1].split()[1])
        watcher_fd = pidfd(watcher)
        assert watcher_fd is not None
        try:
            rootless.stop(s.pasta)
            assert ends(s.pasta_fd)
            assert ends(watcher_fd)
            rootless.stop(s.pasta)  # again: nothing to do, no error
        finally:
            os.close(watcher_fd)


# --------------------------------------------------------------------------- errors


@pytest.mark.rootless
@pytest.mark.root
def test_taken_wildcard_port_is_dockers_error(rootless_user):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with session(rootless_user, [(CTR_TCP, "tcp", "", port)]) as s:
            assert s.first["error"] == f"Bind for 0.0.0.0:{port} failed: port is already allocated"
            assert pastas_for(s.inner) == []


@pytest.mark.rootless
@pytest.mark.root
def test_pastas_own_error_is_one_line(rootless_user):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with session(rootless_user, [(CTR_TCP, "tcp", "127.0.0.1", port)]) as s:
            error = s.first["error"]
            assert (
                error
                == f"pasta: Failed to bind any port for '-t 127.0.0.1/{port}:{CTR_TCP}', exiting"
            )
            assert pastas_for(s.inner) == []


def test_process_gone_is_a_user_error():
    if not rootless.available()[0]:
        skip_or_fail(rootless.available()[1])
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(UserError, match=f"process {proc.pid} is gone"):
        rootless.start(proc.pid, [])


def test_low_port_needs_the_sysctl(monkeypatch):
    monkeypatch.setattr(rootless, "_unprivileged_port_start", lambda: 1024)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="ip_unprivileged_port_start=80"):
        rootless._precheck([Binding(80, host_port=80)])


def test_available_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rootless.available() == (False, "rootless networking needs pasta: apt install passt")


def test_resolv_conf_names_the_forwarded_address(tmp_path):
    text = rootless.resolv_conf()
    assert text.splitlines()[0] == f"nameserver {rootless.DNS_ADDRESS}"
    assert [ln for ln in text.splitlines() if ln.startswith("nameserver")] == [text.splitlines()[0]]


def test_command_turns_off_every_way_into_the_host():
    argv = rootless.command(4321, [])
    pairs = set(zip(argv, argv[1:], strict=False))
    for pair in [("-t", "none"), ("-u", "none"), ("-T", "none"), ("-U", "none")]:
        assert pair in pairs, argv
    assert "--no-map-gw" in argv and ("--dns-forward", rootless.DNS_ADDRESS) in pairs
    assert ("--ns-ifname", "eth0") in pairs and "--config-net" in argv
    assert argv[-1] == "4321"


def test_command_has_one_spec_per_binding():
    argv = rootless.command(
        7,
        [
            Binding(80, "tcp", "", 8080),
            Binding(53, "udp", "127.0.0.1", 5353),
            Binding(443, "tcp", "::1", 8443),
        ],
    )
    pairs = list(zip(argv, argv[1:], strict=False))
    assert ("-t", "8080:80") in pairs and ("-t", "::1/8443:443") in pairs
    assert ("-u", "127.0.0.1/5353:53") in pairs
    assert ("-t", "none") not in pairs and ("-u", "none") not in pairs
    with pytest.raises(UserError, match="sctp"):
        rootless.command(7, [Binding(80, "sctp", "", 8080)])
    with pytest.raises(UserError, match="host port"):
        rootless.command(7, [Binding(80, "tcp", "", 0)])
    assert ipaddress.ip_address(rootless.DNS_ADDRESS).is_link_local
