"""Rootless networking: pasta connects a container's network namespace to the
host's network from user space, as podman does for rootless containers.

A rootless container cannot have a veth on the host (that needs CAP_NET_ADMIN
in the host's network namespace), so its namespace gets a tap device instead,
and a process on the host, pasta (Debian package ``passt``, pasta(1)), turns
the frames written to it into ordinary TCP/UDP sockets of the user's own, and
back. Published ports are sockets pasta listens on in the host's namespace:
what comes from the host's loopback is spliced to a socket pasta opens inside
the container's namespace, anything else goes through the tap device.

What the container sees (``--config-net``): pasta copies the host's own
configuration, so the container's ``eth0`` has the *host's* address and prefix
(e.g. 192.0.2.2/24) and a default route via the host's gateway (192.0.2.1),
IPv6 likewise when the host has it; the MTU is 65520. Nothing is NATed by the
kernel: traffic to the outside leaves from pasta's sockets, with the host's
address. Consequences a student can check: the container's own address is the
host's, so connecting to it from inside reaches the container, not the host;
and ICMP echo (ping) goes through "ping sockets", which the kernel allows only
to the groups in ``net.ipv4.ping_group_range`` (icmp(7); "1 0", nobody, on a
Debian without systemd's default).

The options are chosen because containers are hostile:

``-T none -U none``
    pasta's default (``auto``) forwards every port bound on the *host's*
    loopback into the container's loopback: the container would reach every
    local-only service of the host (a database on 127.0.0.1, a daemon's API).
``--no-map-gw``
    otherwise connections to the gateway's address are delivered to the
    host's loopback, the same hole by another address. The price: from the
    host itself a published port answers on 127.0.0.1 only, not on the
    host's own address (pasta gives such packets the gateway's address as
    source, and the answers to it are no longer mapped back). From other
    machines it answers as usual.
``-t none -u none`` when nothing is published
    the default ``auto`` publishes every port the container listens on (and
    ``-t`` without ``-u`` would forward UDP on the same numbers too).
``--dns-forward 169.254.1.1``
    the host's resolver may be on its loopback (systemd-resolved's
    127.0.0.53), which the container cannot reach (see ``--no-map-gw``);
    pasta sends UDP port 53 to this address on to the first nameserver of
    the host's /etc/resolv.conf (loopback or not; pasta reads it in its own,
    the host's, mount namespace; ``--dns`` does not change where forwarded
    queries go in this version), so the container's resolv.conf names it
    (``resolv_conf``). Podman uses the same link-local address. Only UDP:
    a resolver answer that needs TCP fails.

Known to fail in this version: a published UDP port whose host number differs
from the container's loses the answers to datagrams from the host's loopback
(the splice path); from other machines it works.

Lifetime. pasta joins the namespace with its tap device open, which keeps the
network namespace alive, and it quits by itself only when a namespace bound to
the filesystem (``--netns PATH``, ip-netns(8)) is deleted (inotify on its
directory): for a PID target this version (0.0~git20230309) runs on after the
container's processes ended (tried). So every pasta has a *watcher*, a
small Python process (``_watch``) that is pasta's parent: it runs pasta in the
foreground with PR_SET_PDEATHSIG=SIGKILL (prctl(2)), holds a pidfd
(pidfd_open(2)) of the container's first process, and when that process ends
stops pasta and exits. If the watcher is killed, the kernel kills pasta. The
watcher is double-forked, so the caller has no child to reap, and in a new
session, so a terminal's ^C does not reach it; neither holds any descriptor of
the caller's (close_fds, stdio on /dev/null).

Readiness: pasta writes its pid file "once initialisation is done" (the
namespace configured, the ports bound). The pid file is a FIFO, so the watcher
wakes when pasta writes it instead of polling a file.

Binding to host ports below ``net.ipv4.ip_unprivileged_port_start`` (1024)
needs that sysctl lowered (pasta(1), NOTES); the error says so.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError

PASTA = "pasta"
TUN = "/dev/net/tun"
INSTALL_HINT = "apt install passt"
DNS_ADDRESS = "169.254.1.1"  # link-local, no real host has it: pasta forwards its port 53
READY_TIMEOUT = 10.0  # seconds for pasta to configure the namespace and bind
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PASTA_EXES = ("passt", "passt.avx2", "pasta", "pasta.avx2")  # pasta execs passt.avx2
_SYSLOG_NOISE = "Failed to send"  # "... bytes to syslog" when no syslog listens


def available() -> tuple[bool, str]:
    """(True, pasta's path) or (False, why not and how to fix it)."""
    path = shutil.which(PASTA, path=os.environ.get("PATH") or os.defpath)
    if path is None:
        return False, f"rootless networking needs pasta: {INSTALL_HINT}"
    # pasta opens the tap device in its own (the host's) mount namespace.
    if not os.access(TUN, os.R_OK | os.W_OK):
        return False, f"rootless networking needs {TUN} (as root: modprobe tun)"
    return True, path


def resolv_conf() -> str:
    """The container's /etc/resolv.conf under pasta: the address pasta forwards
    to the host's first resolver (``--dns-forward``), and the host's search list."""
    lines = [f"nameserver {DNS_ADDRESS}"]
    try:
        host = Path("/etc/resolv.conf").read_text(errors="replace").splitlines()
    except OSError:
        host = []
    lines += [ln.strip() for ln in host if ln.split()[:1] in (["search"], ["options"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command


def _spec(b: Any) -> tuple[str, str]:
    """pasta's option and SPEC for one binding: ``-t [ADDR/]HOSTPORT:CTRPORT``."""
    proto = str(getattr(b, "proto", "tcp") or "tcp")
    if proto not in ("tcp", "udp"):
        raise UserError(f"rootless networking (pasta) cannot publish {proto} ports")
    ports = []
    for what in ("host_port", "container_port"):
        port = getattr(b, what)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            # host_port 0 and ranges are resolved before (ports.choose_host_ports)
            raise UserError(f"invalid {what.replace('_', ' ')} for pasta: {port!r}")
        ports.append(port)
    spec = f"{ports[0]}:{ports[1]}"
    host_ip = str(getattr(b, "host_ip", "") or "")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise UserError(f"invalid host address for a published port: {host_ip!r}") from None
        spec = f"{host_ip}/{spec}"
    return ("-t" if proto == "tcp" else "-u"), spec


def command(
    pid: int,
    bindings: Iterable[Any] = (),
    *,
    ifname: str = "eth0",
    log: str | None = None,
    namespace_fds: tuple[int, int] | None = None,
) -> list[str]:
    """pasta's command line for the namespaces of ``pid`` (without ``--pid FILE``,
    which the watcher adds). Every default that would open a way into the host
    is turned off explicitly; the module docstring says why."""
    specs = {"-t": [], "-u": []}  # type: dict[str, list[str]]
    for b in bindings:
        flag, spec = _spec(b)
        specs[flag].append(spec)
    argv = [
        PASTA,
        "--quiet",
        "--foreground",  # the watcher is its parent; no fork into a PID namespace
        "--config-net",
        "--ns-ifname",
        ifname,
        "--no-map-gw",
        "--dns-forward",
        DNS_ADDRESS,
        "-T",
        "none",
        "-U",
        "none",
        # --log-file: only there, never the system logger (whose absence pasta
        # reports on stderr for every message); its size is bounded (1 MiB).
        "--log-file",
        log or os.devnull,
    ]
    for flag in ("-t", "-u"):
        for spec in specs[flag] or ["none"]:
            argv += [flag, spec]
    if namespace_fds is not None:
        # The namespaces as descriptors the caller opened: a container's first
        # process is non-dumpable (runtime/shim.py), so only its parent, the
        # owner of its user namespace, may open its /proc/PID/ns files.
        userns, netns = namespace_fds
        argv += ["--userns", f"/proc/self/fd/{userns}", "--netns", f"/proc/self/fd/{netns}"]
        return argv
    # PID form: pasta joins the user namespace of the process and its network
    # namespace (pasta(1): "--userns ... If PID is given, without this option,
    # the user namespace will be the one of the corresponding process").
    argv.append(str(int(pid)))
    return argv


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _precheck(bindings: list[Any]) -> None:
    """Docker's sentences for what pasta would report less clearly: a low port, and
    a wildcard port whose IPv4 half is taken (pasta then binds only IPv6 and
    succeeds, so the port would be half published)."""
    low = _unprivileged_port_start()
    for b in bindings:
        flag, _ = _spec(b)
        if b.host_port < low and os.geteuid() != 0:
            raise UserError(
                f"cannot publish port {b.host_port} rootless: ports below {low} need "
                f"`sysctl -w net.ipv4.ip_unprivileged_port_start={b.host_port}` (as root)"
            )
        if getattr(b, "host_ip", ""):
            continue  # one address, one socket: pasta itself fails if it is taken
        kind = socket.SOCK_STREAM if flag == "-t" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pasta does
            try:
                s.bind(("0.0.0.0", b.host_port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UserError(
                        f"Bind for 0.0.0.0:{b.host_port} failed: port is already allocated"
                    ) from None
                raise UserError(f"cannot publish port {b.host_port}: {e.strerror}") from None


# --------------------------------------------------------------------------- start, stop


def start(
    pid: int,
    bindings: Iterable[Any] = (),
    *,
    ifname: str = "eth0",
    log: str | None = None,
    timeout: float = READY_TIMEOUT,
) -> int:
    """Connect the network namespace of process ``pid`` (and join its user
    namespace) with pasta; return pasta's pid once the namespace is configured
    (``ifname`` up with the host's address, default route) and every binding
    is bound on the host. pasta lives until ``pid`` ends (or ``stop``).

    ``bindings``: objects with ``container_port``, ``proto`` ("tcp"/"udp"),
    ``host_ip`` ("" = every address) and a concrete ``host_port``
    (ports.PortBinding after choose_host_ports). ``log``: pasta's log file
    (default none). Must be called while ``pid`` cannot be reaped (the
    caller's unreaped child), so the pid names the container all along."""
    ok, why = available()
    if not ok:
        raise UserError(why)
    bindings = list(bindings)
    _precheck(bindings)
    try:
        pidfd = os.pidfd_open(pid)
        nsfds = tuple(
            os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("user", "net")
        )
    except (ProcessLookupError, FileNotFoundError):
        raise UserError(f"cannot start pasta: process {pid} is gone") from None
    argv = command(pid, bindings, ifname=ifname, log=log, namespace_fds=nsfds)  # type: ignore[arg-type]
    argv[0] = why  # the full path: the watcher's PATH is not searched
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    package_parent = str(Path(__file__).resolve().parents[2])
    boot = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from minicontainer.network.rootless import _watch; _watch(sys.argv[2:])"
    )
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-I", "-c", boot, package_parent, str(pidfd), str(status_w)]
            + [json.dumps(argv), str(float(timeout))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(pidfd, status_w, *nsfds),
            start_new_session=True,
            cwd="/",
        )
    except OSError as e:
        os.close(status_r)
        raise UserError(f"cannot start pasta's watcher: {e.strerror}") from None
    finally:
        os.close(pidfd)
        os.close(status_w)
        for fd in nsfds:
            os.close(fd)
    try:
        watcher.wait()  # the first fork exits at once (its child carries on)
        report = _read_all(status_r, timeout + STOP_GRACE + 5)
    finally:
        os.close(status_r)
    word, _, rest = report.strip().partition(" ")
    if word == "ok" and rest.isdigit():
        return int(rest)
    message = rest if word == "error" and rest else "pasta's watcher ended without a word"
    raise UserError(f"pasta: {message}")


def _read_all(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return data.decode(errors="replace") or "error timed out waiting for pasta"
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk


def _is_pasta(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe) in _PASTA_EXES


def _wait_exit(pidfd: int, timeout: float) -> bool:
    """True once the process behind ``pidfd`` has ended (a pidfd polls readable)."""
    return bool(select.select([pidfd], [], [], timeout)[0])


def stop(pasta_pid: int) -> None:
    """Stop a pasta that ``start`` returned (the failure path): SIGTERM, then
    SIGKILL after STOP_GRACE. Its watcher then exits. Idempotent; a pid that is
    no longer a pasta is left alone."""
    try:
        fd = os.pidfd_open(pasta_pid)
    except (ProcessLookupError, PermissionError):
        return
    try:
        if not _is_pasta(pasta_pid):  # checked after pidfd_open: the pid cannot change now
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                return
            if _wait_exit(fd, STOP_GRACE):
                return
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the watcher


def _pasta_error(stderr: Any) -> str:
    """pasta's last message on stderr, without the syslog noise."""
    try:
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_SYSLOG_NOISE)]
    return lines[-1] if lines else ""


def _report(status: int, text: str) -> None:
    try:
        os.write(status, (text + "\n").encode())
    except OSError:
        pass  # the caller went away: carry on, the container's end still stops pasta
    os.close(status)


def _watch(args: list[str]) -> None:
    """The watcher's main: ARGS are the container's pidfd, the status pipe, pasta's
    argv (JSON) and the timeout. Reports "ok PID" or "error MESSAGE" on the
    status pipe, then waits for the container's end and stops pasta."""
    container, status = int(args[0]), int(args[1])
    argv, timeout = json.loads(args[2]), float(args[3])
    if os.fork():
        os._exit(0)  # the caller reaps this one; the child is reparented
    me = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def tie_to_watcher() -> None:  # in pasta's process, before exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:  # the watcher died before the prctl
            os._exit(1)

    tmp = tempfile.mkdtemp(prefix="mc-pasta-")
    fifo = os.path.join(tmp, "ready")
    os.mkfifo(fifo, 0o600)
    # O_RDWR: pasta's open for writing never blocks, and reads never see EOF.
    ready = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    stderr = tempfile.TemporaryFile(dir=tmp)
    try:
        pasta = subprocess.Popen(
            argv + ["--pid", fifo],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            close_fds=True,
            # the namespaces' descriptors command() named as /proc/self/fd/N
            pass_fds=[int(a.rsplit("/", 1)[1]) for a in argv if a.startswith("/proc/self/fd/")],
            preexec_fn=tie_to_watcher,
            cwd="/",
        )
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _report(status, f"error cannot run {argv[0]}: {e.strerror}")
        os._exit(1)
    pasta_fd = os.pidfd_open(pasta.pid)

    deadline = time.monotonic() + timeout
    outcome = ""
    while not outcome:
        left = deadline - time.monotonic()
        if left <= 0:
            outcome = f"error not ready after {timeout:g} s"
            break
        readable = select.select([ready, pasta_fd, container], [], [], left)[0]
        if ready in readable:
            outcome = "ok"
        elif pasta_fd in readable:
            pasta.wait()
            message = _pasta_error(stderr) or f"exited with status {pasta.returncode}"
            outcome = f"error {message}"
        elif container in readable:
            outcome = "error the container's process ended before pasta was ready"
    os.close(ready)
    shutil.rmtree(tmp, ignore_errors=True)
    if outcome != "ok":
        _stop_child(pasta, pasta_fd)
        _report(status, outcome)
        os._exit(1)
    _report(status, f"ok {pasta.pid}")

    # Until the container's first process or pasta ends.
    readable = select.select([container, pasta_fd], [], [])[0]
    if pasta_fd not in readable:
        _stop_child(pasta, pasta_fd)
    pasta.wait()
    os._exit(0)


def _stop_child(pasta: subprocess.Popen, pasta_fd: int) -> None:  # type: ignore[type-arg]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if pasta.poll() is not None:
            return
        try:
            signal.pidfd_send_signal(pasta_fd, sig)
        except ProcessLookupError:
            return
        if _wait_exit(pasta_fd, STOP_GRACE):
            pasta.wait()
            return
