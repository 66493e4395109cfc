"""minicontainer/network/capture.py: the parsers on hand-built frames (no root),
then real captures (root): a test bridge with one plain process in its own
network namespace (``unshare -n sleep``) attached to it, traffic from inside that
namespace to the bridge's gateway address (ARP, an ICMP echo, a TCP SYN), seen
on the bridge in the host's namespace and on ``eth0`` inside the other one.
Traffic goes only between the test's namespace and the host's end of its
bridge; the bridge, the veth pair and the process are removed in a finally."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.network import bridge
from minicontainer.network.capture import Capture, Packet, parse, tcp_flags
from minicontainer.network.ipam import IPAM

WAIT = 30.0  # seconds: every wait is bounded, a bug fails instead of hanging
REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- frames by hand

MAC_A = bytes.fromhex("02420a000002")
MAC_B = bytes.fromhex("02420a000003")
BROADCAST = b"\xff" * 6


def ip4(a: str) -> bytes:
    return socket.inet_aton(a)


def ether(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + ip4(spa) + tha + ip4(tpa)
    return ether(BROADCAST if op == 1 else MAC_A, sha, 0x0806, body)


def ipv4(src: str, dst: str, proto: int, payload: bytes, frag: int = 0) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0, ip4(src), ip4(dst)
    )
    return ether(MAC_B, MAC_A, 0x0800, head + payload)


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data


def test_arp_request_and_reply() -> None:
    p = parse(arp(1, MAC_A, "172.18.0.2", b"\0" * 6, "172.18.0.3"), when=1.5)
    assert p.summary == "ARP, Request who-has 172.18.0.3 tell 172.18.0.2"
    assert (p.proto, p.info, p.src, p.dst, p.time) == (
        "ARP",
        "who-has",
        "172.18.0.2",
        "172.18.0.3",
        1.5,
    )
    assert (p.src_mac, p.dst_mac) == ("02:42:0a:00:00:02", "ff:ff:ff:ff:ff:ff")
    p = parse(arp(2, MAC_B, "172.18.0.3", MAC_A, "172.18.0.2"))
    assert p.summary == "ARP, Reply 172.18.0.3 is-at 02:42:0a:00:00:03"
    assert p.info == "is-at"


def test_icmp_echo_and_unreachable() -> None:
    echo = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"ping"
    p = parse(ipv4("172.18.0.2", "172.18.0.3", 1, echo))
    assert p.summary == "IP 172.18.0.2 > 172.18.0.3: ICMP echo request"
    assert (p.proto, p.info) == ("ICMP", "echo request")
    reply = struct.pack("!BBHHH", 0, 0, 0, 7, 1)
    assert parse(ipv4("172.18.0.3", "172.18.0.2", 1, reply)).info == "echo reply"
    # A port unreachable names what the returned packet was for, as tcpdump does.
    inner = ipv4("172.18.0.2", "172.18.0.3", 17, struct.pack("!HHHH", 5000, 53, 8, 0))[14:]
    unreach = struct.pack("!BBHI", 3, 3, 0, 0) + inner
    assert parse(ipv4("172.18.0.3", "172.18.0.2", 1, unreach)).summary == (
        "IP 172.18.0.3 > 172.18.0.2: ICMP 172.18.0.3 udp port 53 unreachable"
    )


@pytest.mark.parametrize(
    "bits,letters",
    [(0x02, "S"), (0x12, "S."), (0x10, "."), (0x18, "P."), (0x11, "F."), (0x14, "R."), (0, "none")],
)
def test_tcp_flags_in_tcpdumps_letters(bits: int, letters: str) -> None:
    assert tcp_flags(bits) == letters
    p = parse(ipv4("172.18.0.2", "172.18.0.3", 6, tcp(40000, 80, bits)))
    assert p.summary == f"IP 172.18.0.2.40000 > 172.18.0.3.80: Flags [{letters}]"
    assert (p.proto, p.sport, p.dport, p.flags) == ("TCP", 40000, 80, letters)


def test_tcp_payload_udp_and_ethernet_padding() -> None:
    p = parse(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(80, 40000, 0x18, b"hello")))
    assert p.summary == "IP 10.0.0.1.80 > 10.0.0.2.40000: Flags [P.], length 5"
    udp = struct.pack("!HHHH", 5353, 53, 8 + 3, 0) + b"abc"
    p = parse(ipv4("10.0.0.1", "10.0.0.2", 17, udp) + b"\0" * 20)  # padded to 60 bytes
    assert p.summary == "IP 10.0.0.1.5353 > 10.0.0.2.53: UDP, length 3"
    assert (p.proto, p.sport, p.dport) == ("UDP", 5353, 53)
    # TCP padded by Ethernet: the IP total length, not the frame, says where data ends.
    p = parse(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x10)) + b"\0" * 6)
    assert p.summary.endswith("Flags [.]")


def test_ipv6_icmp6_behind_a_hop_by_hop_header() -> None:
    src = socket.inet_pton(socket.AF_INET6, "fe80::1")
    dst = socket.inet_pton(socket.AF_INET6, "ff02::16")
    mld = struct.pack("!BBH", 143, 0, 0) + b"\0" * 4
    hop = struct.pack("!BB", 58, 0) + b"\0" * 6
    head = struct.pack("!IHBB16s16s", 6 << 28, len(hop + mld), 0, 1, src, dst)
    p = parse(ether(MAC_B, MAC_A, 0x86DD, head + hop + mld))
    assert p.summary == "IP6 fe80::1 > ff02::16: ICMP6, multicast listener report v2"
    assert p.proto == "ICMP6"


@pytest.mark.parametrize(
    "frame,summary",
    [
        (b"", "[|ether]"),
        (b"\x01" * 13, "[|ether]"),
        (ether(MAC_B, MAC_A, 0x0800, b"\x45\x00"), "IP [|ip]"),
        (ether(MAC_B, MAC_A, 0x0806, b"\x00\x01"), "ARP [|arp]"),
        (ipv4("10.0.0.1", "10.0.0.2", 6, b"\x00\x50"), "IP [|tcp]"),
        (ether(MAC_B, MAC_A, 0x88CC, b"lldp"), "ethertype 0x88cc, length 18"),
        (ipv4("10.0.0.1", "10.0.0.2", 6, b"junk", frag=5), "IP 10.0.0.1 > 10.0.0.2: "
         "ip-proto-6 (fragment)"),
        (ipv4("10.0.0.1", "10.0.0.2", 47, b"gre!"), "IP 10.0.0.1 > 10.0.0.2: ip-proto-47"),
    ],
)  # fmt: skip
def test_short_and_odd_frames_never_raise(frame: bytes, summary: str) -> None:
    assert parse(frame).summary == summary


def test_any_bytes_parse() -> None:
    """A container sends what it likes: no frame makes the parser raise."""
    import random

    rng = random.Random(12)
    good = [
        arp(1, MAC_A, "1.2.3.4", b"\0" * 6, "1.2.3.5"),
        ipv4("1.2.3.4", "1.2.3.5", 6, tcp(1, 2, 2)),
        ipv4("1.2.3.4", "1.2.3.5", 1, struct.pack("!BBHI", 3, 3, 0, 0) + b"\x45" * 30),
    ]
    for _ in range(3000):
        frame = bytearray(rng.choice(good))
        for _ in range(rng.randrange(1, 6)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        assert isinstance(parse(bytes(frame[: rng.randrange(len(frame) + 1)])), Packet)


def test_filters_by_protocol_name() -> None:
    from minicontainer.network.capture import _as_filter

    frames = {
        "arp": parse(arp(1, MAC_A, "10.0.0.1", b"\0" * 6, "10.0.0.2")),
        "syn": parse(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 2))),
        "gre": parse(ipv4("10.0.0.1", "10.0.0.2", 47, b"gre!")),
        "echo": parse(ipv4("10.0.0.1", "10.0.0.2", 1, struct.pack("!BBHI", 8, 0, 0, 0))),
    }
    kept = {spec: sorted(k for k, p in frames.items() if _as_filter(spec)(p))
            for spec in ("arp", "tcp or icmp", "ip", "UDP")}  # fmt: skip
    assert kept == {"arp": ["arp"], "tcp or icmp": ["echo", "syn"], "ip": ["echo", "gre", "syn"],
                    "UDP": []}  # fmt: skip
    with pytest.raises(UserError, match="invalid capture filter 'dns'"):
        Capture("lo", filter="dns")


# --------------------------------------------------------------------------- real captures


def _run_in(pid: int, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


# An ICMP echo request on a raw socket (there may be no ping(8)); prints the reply's type.
PING = """
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
body = struct.pack("!BBHHH", 8, 0, 0, 0x4d43, 1) + b"minicontainer"
body = body[:2] + struct.pack("!H", csum(body + b"\\0")) + body[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(float(sys.argv[2]) if len(sys.argv) > 2 else 10)
s.sendto(body, (sys.argv[1], 0))
try:
    while s.recvfrom(2048)[0][20] != 0:
        pass
    print("reply")
except socket.timeout:
    print("no reply")
"""

# A TCP connection attempt from a known port; prints that port.
SYN = """
import socket, sys
s = socket.socket()
s.bind(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    pass
"""


@dataclass
class Lab:
    bridge: str
    gateway: str
    address: str  # the first namespace's eth0
    pid: int  # a process in that namespace
    host_end: str  # its veth on the bridge
    peer_address: str  # a second namespace on the bridge
    peer_pid: int


def _netns(procs: list[subprocess.Popen[bytes]]) -> int:
    p = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    procs.append(p)
    me = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + WAIT
    while os.readlink(f"/proc/{p.pid}/ns/net") == me:  # unshare(1) not done yet
        assert p.poll() is None and time.monotonic() < deadline, "unshare -n failed"
        time.sleep(0.01)
    return p.pid


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A bridge, and two processes in new network namespaces on it (as containers are)."""
    name = "mcc" + secrets.token_hex(3)
    store = IPAM(tmp_path)
    net = store.create(name)
    procs: list[subprocess.Popen[bytes]] = []
    ids: list[str] = []
    try:
        bridge.ensure_bridge(name, net.gateway_cidr)
        made = []
        for _ in range(2):
            pid = _netns(procs)
            ids.append(secrets.token_hex(32))
            ip = store.allocate(name, ids[-1])
            made.append((ip, pid, bridge.attach(name, ids[-1], pid, net.cidr(ip), net.gateway)))
        (ip, pid, host), (peer_ip, peer_pid, _) = made
        yield Lab(name, net.gateway, ip, pid, host, peer_ip, peer_pid)
    finally:
        try:
            for cid in ids:
                bridge.detach(cid)
            bridge.remove_bridge(name)
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=WAIT)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.root
def test_ping_and_syn_seen_on_the_bridge(lab: Lab) -> None:
    threads, fds = threading.active_count(), _fds()
    with Capture(lab.bridge) as cap:
        ping = _run_in(lab.pid, PING, lab.gateway)
        assert ping.stdout.strip() == "reply", ping.stderr
        syn = subprocess.Popen(
            ["nsenter", "-t", str(lab.pid), "-n", sys.executable, "-c", SYN, lab.gateway, "9"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert syn.stdout is not None
            sport = syn.stdout.readline().strip()
            assert syn.wait(timeout=WAIT) == 0
        finally:
            syn.kill()
            syn.wait(timeout=WAIT)
            syn.stdout.close()
        want = f"IP {lab.address}.{sport} > {lab.gateway}.9: Flags [S]"
        assert cap.wait_for(lambda p: p.summary == want, timeout=WAIT), cap.summaries()
    lines = cap.summaries().splitlines()
    # The namespace asked for the gateway's MAC address first (broadcast), then pinged.
    assert f"ARP, Request who-has {lab.gateway} tell {lab.address}" in lines
    assert f"ARP, Reply {lab.gateway} is-at" in cap.summaries()
    request = f"IP {lab.address} > {lab.gateway}: ICMP echo request"
    reply = f"IP {lab.gateway} > {lab.address}: ICMP echo reply"
    assert lines.index(request) < lines.index(reply)
    (echo,) = [p for p in cap.packets if p.summary == request]
    assert (echo.proto, echo.info, echo.outgoing) == ("ICMP", "echo request", False)
    # Leaving the block closed the socket and ended the thread.
    assert not cap.running
    assert threading.active_count() == threads
    assert _fds() == fds


@pytest.mark.root
def test_capture_inside_the_namespace_with_filter_and_count(lab: Lab) -> None:
    """The capture thread enters the other namespace (its eth0, not the host's);
    the rest of this process stays in the host's namespace."""
    mine = os.readlink("/proc/thread-self/ns/net")
    fds = _fds()
    # The bridge is the host's: there is no such interface over there.
    with pytest.raises(UserError, match=f"no interface {lab.bridge} \\(network namespace of"):
        with Capture(lab.bridge, netns_pid=lab.pid):
            pass
    with Capture("eth0", netns_pid=lab.pid, filter="icmp", count=2) as cap:
        assert os.readlink("/proc/thread-self/ns/net") == mine
        assert _run_in(lab.pid, PING, lab.gateway).stdout.strip() == "reply"
        assert cap.wait_for(lambda p: p.info == "echo reply", timeout=WAIT)
        # count=2 reached: the thread ended by itself.
        deadline = time.monotonic() + WAIT
        while cap.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cap.running
        # Nothing more will come: wait_for answers at once instead of waiting WAIT.
        assert cap.wait_for(lambda p: p.info == "echo request", timeout=WAIT).outgoing
        assert cap.wait_for(lambda p: False, timeout=WAIT) is None
    with pytest.raises(UserError, match="started already"):
        cap.start()
    assert [(p.info, p.outgoing) for p in cap.packets] == [
        ("echo request", True),  # sent by that namespace: outgoing on its eth0
        ("echo reply", False),
    ]
    assert cap.summaries() == (
        f"IP {lab.address} > {lab.gateway}: ICMP echo request\n"
        f"IP {lab.gateway} > {lab.address}: ICMP echo reply"
    )
    assert os.readlink("/proc/thread-self/ns/net") == mine
    assert _fds() == fds


@pytest.mark.root
def test_errors_are_one_line() -> None:
    with pytest.raises(UserError, match="no network namespace"):
        Capture("eth0", netns_pid=2**22 + 7).start()
    # setns with a descriptor that is not a network namespace.
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        with pytest.raises(UserError, match="capture on eth0"):
            Capture("eth0", netns_fd=fd).start()
    finally:
        os.close(fd)
    # Without CAP_NET_RAW (root, with it taken out of the bounding set).
    code = "from minicontainer.network.capture import Capture\nCapture('lo').start()"
    run = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert "UserError: capturing packets needs CAP_NET_RAW: run as root" in run.stderr


def _promiscuous(ifname: str) -> bool:
    return bool(int(Path(f"/sys/class/net/{ifname}/flags").read_text(), 16) & 0x100)  # IFF_PROMISC


@pytest.mark.root
def test_promiscuous_shows_what_the_bridge_forwards(lab: Lab) -> None:
    """An echo from one namespace to the other is for neither the host nor the
    bridge's MAC address: the bridge forwards it from port to port, and only a
    promiscuous bridge also hands it up, where the capture sees it. (Whether it
    arrives depends on the host's firewall: br_netfilter sends bridged IPv4
    through iptables' FORWARD chain, whose policy Docker sets to DROP.)"""
    assert not _promiscuous(lab.bridge)
    with Capture(lab.bridge, filter="icmp") as cap:
        assert _promiscuous(lab.bridge)
        _run_in(lab.pid, PING, lab.peer_address, "1")
        want = f"IP {lab.address} > {lab.peer_address}: ICMP echo request"
        assert cap.wait_for(lambda p: p.summary == want, timeout=WAIT), cap.summaries()
    assert not _promiscuous(lab.bridge)  # it went with the socket
