"""A small packet capture: what ``tcpdump -n -i IFNAME`` shows, one line a packet.

packet(7): a socket of family AF_PACKET, type SOCK_RAW, protocol ETH_P_ALL
receives every frame that goes in or out of the interface it is bound to,
Ethernet header included (raw(7) sockets start at the IP header and only see
one protocol). Opening one needs CAP_NET_RAW. No filter runs in the kernel
here (tcpdump would attach a BPF program, SO_ATTACH_FILTER): every frame comes
up, is parsed in Python and ``filter`` picks what is kept.

A socket belongs to the network namespace of the thread that made it, and
setns(2) with CLONE_NEWNET changes the namespace of the calling *thread* only.
So a capture inside a container's namespace runs in a thread of its own: it
enters the namespace (``/proc/PID/ns/net``, opened once, so that a reused PID
cannot redirect it), opens and binds its socket there, and ends; the rest of
the process never leaves the host's namespace.

The parsers (Ethernet, ARP, IPv4/IPv6, ICMP, TCP, UDP; RFC 826, 791, 792, 793,
768, 8200) never raise: a frame is whatever a container sent, a short or odd one
is summarised with tcpdump's ``[|proto]`` mark. Standard library only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError

ETH_P_ALL = 0x0003  # <linux/if_ether.h>: every protocol
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x0806, 0x86DD, 0x8100
PACKET_OUTGOING = 4  # <linux/if_packet.h>: sll_pkttype of a frame this host sent
ARPHRD_LOOPBACK = 772  # <linux/if_arp.h>: sll_hatype of lo
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 263, 1, 1  # not in Python's socket
CLONE_NEWNET = 0x40000000
KEEP = 10_000  # packets kept at most: a container may flood the interface
SNAPLEN = 65_535
START_TIMEOUT = 10.0  # seconds __enter__ waits for the thread to bind its socket

ROOT_HINT = "capturing packets needs CAP_NET_RAW: run as root"

# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Packet:
    """One frame as tcpdump would summarise it, and the fields the summary shows.

    ``proto`` is the innermost protocol understood: "ARP", "ICMP", "ICMP6",
    "TCP", "UDP", "IP" / "IP6" (another protocol on IP), or "ether" (another
    EtherType). ``src``/``dst`` are IP addresses (for ARP: the sender's and the
    target's), ``sport``/``dport`` ports, ``flags`` TCP's in tcpdump's letters
    ("S", "S.", ".", "P.", "F.", "R."), ``info`` ICMP's or ARP's message
    ("echo request", "who-has", ...)."""

    time: float
    summary: str
    proto: str
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    flags: str | None = None
    info: str | None = None
    src_mac: str | None = None
    dst_mac: str | None = None
    length: int = 0  # of the whole frame
    outgoing: bool = False  # sent by this namespace (sll_pkttype PACKET_OUTGOING)


class _Short(Exception):
    """The frame ends inside the header of ``proto``."""

    def __init__(self, proto: str) -> None:
        self.proto = proto


def _take(data: bytes, fmt: str, proto: str) -> tuple:  # type: ignore[type-arg]
    if len(data) < struct.calcsize(fmt):
        raise _Short(proto)
    return struct.unpack_from(fmt, data)


def mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# tcpdump's order (print-tcp.c's flag table): FIN SYN RST PSH ACK URG ECE CWR,
# so SYN+ACK reads "S." and PSH+ACK "P.".
_TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"),
              (0x40, "E"), (0x80, "W"))  # fmt: skip


def tcp_flags(bits: int) -> str:
    """TCP's flag bits in tcpdump's letters: 0x12 -> "S.", 0 -> "none"."""
    return "".join(letter for bit, letter in _TCP_FLAGS if bits & bit) or "none"


_ICMP = {0: "echo reply", 8: "echo request", 11: "time exceeded in-transit"}
_ICMP6 = {128: "echo request", 129: "echo reply", 133: "router solicitation",
          134: "router advertisement", 135: "neighbor solicitation",
          136: "neighbor advertisement", 143: "multicast listener report v2"}  # fmt: skip


def _icmp(kind: int, code: int, body: bytes) -> str:
    """ICMP's message; an unreachable one names what the packet it returns was for
    (its first bytes follow the ICMP header: RFC 792)."""
    if kind in _ICMP:
        return _ICMP[kind]
    if kind != 3:
        return f"type {kind}, code {code}"
    try:
        vihl, proto, dst = struct.unpack_from("!B8xB2x4x4s", body, 8)
        target = str(ipaddress.IPv4Address(dst))
        if code == 3:
            (port,) = struct.unpack_from("!H", body, 8 + (vihl & 0x0F) * 4 + 2)
            name = {6: "tcp", 17: "udp"}.get(proto, f"ip-proto-{proto}")
            return f"{target} {name} port {port} unreachable"
    except struct.error:
        return f"unreachable, code {code}"
    what = {0: "net", 1: "host", 2: "protocol"}.get(code)
    return f"{what} {target} unreachable" if what else f"{target} unreachable, code {code}"


def _transport(proto: int, data: bytes, ip: str) -> dict:  # type: ignore[type-arg]
    """The part after the IP header: fields and the summary's text after "src > dst"."""
    if proto == 6:
        sport, dport, _seq, _ack, off, bits = _take(data, "!HHIIBB", "tcp")
        payload = max(0, len(data) - (off >> 4) * 4)
        flags = tcp_flags(bits)
        text = f"Flags [{flags}]" + (f", length {payload}" if payload else "")
        return dict(proto="TCP", sport=sport, dport=dport, flags=flags, text=text)
    if proto == 17:
        sport, dport, length = _take(data, "!HHH", "udp")
        return dict(proto="UDP", sport=sport, dport=dport, text=f"UDP, length {length - 8}")
    if proto == 1 and ip == "IP":
        kind, code = _take(data, "!BB", "icmp")
        info = _icmp(kind, code, data)
        return dict(proto="ICMP", info=info, text=f"ICMP {info}")
    if proto == 58 and ip == "IP6":
        kind, code = _take(data, "!BB", "icmp6")
        info = _ICMP6.get(kind, f"type {kind}, code {code}")
        return dict(proto="ICMP6", info=info, text=f"ICMP6, {info}")
    return dict(proto=ip, text=f"ip-proto-{proto}")


def _ipv4(data: bytes) -> dict:  # type: ignore[type-arg]
    vihl, _tos, total, _id, frag, _ttl, proto, _sum, src, dst = _take(data, "!BBHHHBBH4s4s", "ip")
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < 20:
        return dict(proto="IP", text="bad IPv4 header", src=None, dst=None)
    s, d = str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst))
    body = data[hlen : max(hlen, min(len(data), total))]  # Ethernet pads short frames
    if frag & 0x1FFF:  # a later fragment: its first bytes are no transport header
        return dict(proto="IP", src=s, dst=d, text=f"ip-proto-{proto} (fragment)")
    return dict(src=s, dst=d, **_transport(proto, body, "IP"))


def _ipv6(data: bytes) -> dict:  # type: ignore[type-arg]
    _vtf, length, nxt, _hop, src, dst = _take(data, "!IHBB16s16s", "ip6")
    s, d = str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst))
    body = data[40 : 40 + length]
    if nxt == 0:  # a hop-by-hop options header (MLD reports carry one): skip it
        nxt, hlen = _take(body, "!BB", "ip6")
        body = body[(hlen + 1) * 8 :]
    return dict(src=s, dst=d, **_transport(nxt, body, "IP6"))


def _arp(data: bytes) -> dict:  # type: ignore[type-arg]
    htype, ptype, hlen, plen, op = _take(data, "!HHBBH", "arp")
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return dict(proto="ARP", text=f"ARP, hardware type {htype}, protocol 0x{ptype:04x}")
    sha, spa, _tha, tpa = _take(data[8:], "!6s4s6s4s", "arp")
    s, t = str(ipaddress.IPv4Address(spa)), str(ipaddress.IPv4Address(tpa))
    if op == 1:
        return dict(proto="ARP", src=s, dst=t, info="who-has",
                    text=f"ARP, Request who-has {t} tell {s}")  # fmt: skip
    if op == 2:
        return dict(proto="ARP", src=s, dst=t, info="is-at",
                    text=f"ARP, Reply {s} is-at {mac(sha)}")  # fmt: skip
    return dict(proto="ARP", src=s, dst=t, text=f"ARP, op {op}")


def parse(frame: bytes, when: float = 0.0, outgoing: bool = False) -> Packet:
    """One Ethernet frame as a Packet with tcpdump's one-line summary (``-n``, no
    ``-e``): ``ARP, Request who-has 10.0.0.3 tell 10.0.0.2``, ``IP 10.0.0.2.40000 >
    10.0.0.3.80: Flags [S]``, ``IP 10.0.0.2 > 10.0.0.3: ICMP echo request``. Never
    raises: a frame cut short ends in tcpdump's ``[|proto]``."""
    link = dict(time=when, length=len(frame), outgoing=outgoing)
    try:
        dst_mac, src_mac, etype = _take(frame, "!6s6sH", "ether")
    except _Short:
        return Packet(summary="[|ether]", proto="ether", **link)
    link.update(src_mac=mac(src_mac), dst_mac=mac(dst_mac))
    payload = frame[14:]
    if etype == ETH_P_8021Q and len(payload) >= 4:  # a VLAN tag: the real type follows it
        (etype,) = struct.unpack_from("!H", payload, 2)
        payload = payload[4:]
    parsers = {ETH_P_IP: ("IP", _ipv4), ETH_P_IPV6: ("IP6", _ipv6), ETH_P_ARP: ("ARP", _arp)}
    if etype not in parsers:
        text = f"ethertype 0x{etype:04x}, length {len(frame)}"
        return Packet(summary=text, proto="ether", **link)
    name, parser = parsers[etype]
    try:
        f = parser(payload)
    except _Short as short:
        return Packet(summary=f"{name} [|{short.proto}]", proto=name, **link)
    text = f.pop("text")
    if name == "ARP":
        return Packet(summary=text, **f, **link)
    src, dst = f.get("src"), f.get("dst")
    if f.get("sport") is not None:
        src, dst = f"{src}.{f['sport']}", f"{dst}.{f['dport']}"
    summary = f"{name} {src} > {dst}: {text}" if src else f"{name} {text}"
    return Packet(summary=summary, **f, **link)


# --------------------------------------------------------------------------- capturing


Filter = Callable[[Packet], bool]


def _as_filter(spec: Filter | str | None) -> Filter:
    """None: every packet; a string: protocol names ("arp", "icmp or tcp"); else a callable."""
    if spec is None:
        return lambda p: True
    if isinstance(spec, str):
        wanted = {w.strip().upper() for w in spec.split(" or ") if w.strip()}
        known = {"ARP", "ICMP", "ICMP6", "TCP", "UDP", "IP", "IP6", "ETHER"}
        if not wanted or not wanted <= known:
            raise UserError(f"invalid capture filter {spec!r}: protocols of {sorted(known)}")
        ip4 = {"ICMP", "TCP", "UDP", "IP"}  # "ip": everything over IPv4, as in tcpdump
        return lambda p: (
            p.proto.upper() in wanted
            or ("IP" in wanted and p.proto in ip4 and ":" not in (p.src or ""))
        )
    return spec


class Capture:
    """Capture on ``ifname`` while the ``with`` block runs::

        with Capture("mc-br0", filter="arp or icmp") as cap:
            ...                      # make some traffic
            cap.wait_for(lambda p: p.info == "echo reply", timeout=5)
        print(cap.summaries())

    ``netns_pid`` (or an open ``netns_fd``): the interface is in that process's
    network namespace (a container's ``eth0``). ``count``: stop after that many
    kept packets. ``filter``: which packets to keep (see ``_as_filter``).
    ``promisc`` (tcpdump's default too): the interface takes frames addressed to
    other MAC addresses as well; on a bridge, that is what shows the traffic it
    forwards between two containers, not only what is for the host. The kernel
    counts it per socket and drops it when the socket closes. The
    socket is bound before ``__enter__`` returns, so nothing sent afterwards is
    missed; leaving the block (or ``stop()``) closes it and ends the thread."""

    def __init__(
        self,
        ifname: str,
        netns_pid: int | None = None,
        count: int | None = None,
        filter: Filter | str | None = None,  # tcpdump's word
        *,
        netns_fd: int | None = None,
        promisc: bool = True,
        keep: int = KEEP,
    ) -> None:
        self.promisc = promisc
        self.ifname = ifname
        self.netns_pid = netns_pid
        self.count = count
        self.keep = keep
        self.dropped = 0  # kept packets beyond ``keep`` that were not stored
        self._filter = _as_filter(filter)
        self._given_fd = netns_fd
        self._packets: list[Packet] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._error: UserError | None = None
        self._started = threading.Event()

    @property
    def where(self) -> str:
        if self.netns_pid is None:
            return self.ifname
        return f"{self.ifname} (network namespace of process {self.netns_pid})"

    # -- lifecycle

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise UserError("this capture was started already")
        nsfd = self._given_fd
        if nsfd is None and self.netns_pid is not None:
            try:
                nsfd = os.open(f"/proc/{int(self.netns_pid)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except PermissionError:
                raise UserError(ROOT_HINT) from None
            except OSError as e:
                raise UserError(
                    f"process {self.netns_pid}: no network namespace ({e.strerror})"
                ) from None
        self._wake = os.pipe()
        self._thread = threading.Thread(
            target=self._run, args=(nsfd,), name=f"capture {self.ifname}", daemon=True
        )
        try:
            self._thread.start()
            if not self._started.wait(START_TIMEOUT):
                self.stop()
                raise UserError(f"capture on {self.where}: the socket was not ready in time")
        finally:
            if nsfd is not None and self._given_fd is None:
                os.close(nsfd)  # the thread has entered the namespace (or failed) by now
        if self._error is not None:
            error = self._error
            self.stop()
            raise error

    def stop(self) -> None:
        """End the capture: the thread closes its socket and ends. Idempotent."""
        thread, wake = self._thread, self._wake
        if wake is not None:
            try:
                os.write(wake[1], b"x")
            except OSError:
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if wake is not None and self._wake is not None:
            self._wake = None
            for fd in wake:
                os.close(fd)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread

    def _open(self, nsfd: int | None) -> socket.socket:
        if nsfd is not None:
            from ..runtime import kernel

            try:
                kernel.real().setns(nsfd, CLONE_NEWNET)  # this thread only (setns(2))
            except PermissionError:
                raise UserError(
                    f"entering the network namespace of process {self.netns_pid} "
                    "needs CAP_SYS_ADMIN: run as root"
                ) from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise UserError(ROOT_HINT) from None
        try:
            sock.bind((self.ifname, ETH_P_ALL))
            if self.promisc:  # packet(7) PACKET_ADD_MEMBERSHIP; struct packet_mreq
                index = socket.if_nametoindex(self.ifname)  # in this thread's namespace
                mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as e:
            sock.close()
            if e.errno in (errno.ENODEV, errno.ENXIO):
                raise UserError(f"capture: no interface {self.where}") from None
            raise UserError(f"capture on {self.where}: {e.strerror}") from None
        return sock

    def _run(self, nsfd: int | None) -> None:
        try:
            sock = self._open(nsfd)
        except UserError as e:
            self._error = e
            self._started.set()
            return
        except OSError as e:  # setns on a descriptor that is no network namespace
            self._error = UserError(f"capture on {self.where}: {e.strerror}")
            self._started.set()
            return
        self._started.set()
        assert self._wake is not None
        wake = self._wake[0]
        try:
            while True:
                ready, _, _ = select.select([sock, wake], [], [])
                if wake in ready:
                    return
                frame, addr = sock.recvfrom(SNAPLEN)
                outgoing = addr[2] == PACKET_OUTGOING
                if outgoing and addr[3] == ARPHRD_LOOPBACK:
                    continue  # on lo a frame is seen going out and again coming in: once
                packet = parse(frame, time.time(), outgoing=outgoing)
                if not self._filter(packet):
                    continue
                with self._changed:
                    if len(self._packets) < self.keep:
                        self._packets.append(packet)
                    else:
                        self.dropped += 1
                    self._changed.notify_all()
                    if self.count is not None and len(self._packets) >= self.count:
                        return
        finally:
            sock.close()
            with self._changed:
                self._changed.notify_all()  # wake wait_for: no more packets will come

    # -- results

    @property
    def packets(self) -> list[Packet]:
        """The packets kept so far (a copy)."""
        with self._changed:
            return list(self._packets)

    def wait_for(self, predicate: Filter, timeout: float) -> Packet | None:
        """The first kept packet for which ``predicate`` is true, waiting up to
        ``timeout`` seconds for it; None if none came (or the capture ended)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for p in self._packets[seen:]:
                    if predicate(p):
                        return p
                seen = len(self._packets)
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return None
                self._changed.wait(left)

    def summaries(self, times: bool = False) -> str:
        """tcpdump's output: one summary a line (with ``times``: seconds since the first)."""
        packets = self.packets
        if not times or not packets:
            return "\n".join(p.summary for p in packets)
        t0 = packets[0].time
        return "\n".join(f"{p.time - t0:9.6f} {p.summary}" for p in packets)
