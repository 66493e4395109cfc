"""IP address management for bridge networks: a subnet per network, one address
per container, the leases on disk.

Follows what Docker's default IPAM driver does (moby libnetwork/ipams/defaultipam,
and the Engine API v1.41 ``IPAM`` object at docs.docker.com/engine/api/v1.41):
a network's subnet comes from the predefined pools (172.17.0.0/16 ... 172.31.0.0/16,
then 192.168.0.0/16 cut into /20s), the first one that overlaps no route or
address on the host nor another of our networks; the gateway is the subnet's
first host address; the network and broadcast addresses are never handed out;
addresses go in order, the lowest free first.

On disk, under the state root::

    networks/lock                       flock(2)ed around every change
    networks/NAME/network.json          {"name", "id", "subnet", "gateway", "internal", "bridge"}
    networks/NAME/leases.json           {"IP": "CONTAINER_ID", ...}

Both files are replaced whole (files.write_atomic), so a crash leaves the old
leases or the new ones; the lock makes allocate/free from several processes (the
daemon, CLI runs, supervisors) see each other's leases. ``sweep`` frees the
leases of containers that no longer exist, which is how a crash is repaired.

Pure Python (ipaddress): testable without root. Only ``host_networks`` looks at
the host (/proc/net/route, and the addresses through pyroute2 when it is there).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .. import files
from ..errors import Conflict, UserError
from .bridge import check_ifname  # standard library only at import: no pyroute2 here

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

# Docker's network names (moby daemon/network: config.RestrictedNamePattern).
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_NAME_MAX = 64  # a directory name under the state root, and readable in `network ls`


def default_pools() -> Iterator[IPv4Network]:
    """Docker's predefined local pools, in its order (moby libnetwork/ipamutils:
    172.17.0.0/16 to 172.31.0.0/16 as /16s, then 192.168.0.0/16 as /20s)."""
    for second in range(17, 32):
        yield IPv4Network(f"172.{second}.0.0/16")
    yield from IPv4Network("192.168.0.0/16").subnets(new_prefix=20)


def choose_subnet(taken: Iterable[IPv4Network]) -> IPv4Network:
    """The first predefined pool that overlaps none of ``taken``. A default route
    (0.0.0.0/0) is ignored, as Docker does: it overlaps everything."""
    busy = [n for n in taken if n.prefixlen > 0]
    for pool in default_pools():
        if not any(pool.overlaps(n) for n in busy):
            return pool
    # Docker's own words for the same situation.
    raise UserError("all predefined address pools have been fully subnetted")


def _proc_routes(path: str = "/proc/net/route") -> list[IPv4Network]:
    """The IPv4 routes of this network namespace (route(8)'s source: destination
    and mask as little-endian hex)."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            out.append(IPv4Network(f"{dest}/{mask}", strict=False))
        except ValueError:
            continue
    return out


def host_networks() -> list[IPv4Network]:
    """What a new subnet must not overlap: the host's routes, and its addresses'
    networks (an address added with ``noprefixroute`` has no route)."""
    nets = _proc_routes()
    from . import bridge

    try:
        for addr, prefixlen in bridge.host_addresses():
            nets.append(IPv4Network(f"{addr}/{prefixlen}", strict=False))
    except UserError:
        pass  # no pyroute2, or netlink refused: the routes alone are a good answer
    return nets


class Network(NamedTuple):
    name: str
    id: str
    subnet: str
    gateway: str
    internal: bool = False
    # The Linux bridge behind it: Docker's is br-<12 hex of the id> (docker0 for
    # "bridge"); ours mc-<12 hex>, 15 characters, IFNAMSIZ's limit.
    bridge: str = ""

    @property
    def net(self) -> IPv4Network:
        return IPv4Network(self.subnet)

    @property
    def gateway_cidr(self) -> str:
        """The gateway with the subnet's prefix, as the bridge carries it."""
        return f"{self.gateway}/{self.net.prefixlen}"

    def cidr(self, ip: str) -> str:
        return f"{ip}/{self.net.prefixlen}"


def check_name(name: str) -> None:
    if not _NAME.match(name) or len(name) > _NAME_MAX:
        raise UserError(
            f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            f" (at most {_NAME_MAX} characters)"
        )


class IPAM:
    """The networks and leases under one state root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / "networks"

    # ----------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One lock for all networks: create/remove race with allocate, and a
        lease change is a few milliseconds."""
        files.private_dir(self.dir)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _ndir(self, name: str) -> Path:
        check_name(name)
        return self.dir / name

    def _read_leases(self, name: str) -> dict[str, str]:
        try:
            data = json.loads((self._ndir(name) / "leases.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UserError(f"network {name}: unreadable leases ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"network {name}: unreadable leases (not an object)")
        return {str(k): str(v) for k, v in data.items()}

    def _write_leases(self, name: str, leases: dict[str, str]) -> None:
        ordered = dict(sorted(leases.items(), key=lambda kv: IPv4Address(kv[0])))
        files.write_atomic(self._ndir(name) / "leases.json", json.dumps(ordered, indent=1), 0o600)

    # ----------------------------------------------------------- networks
    def get(self, name: str) -> Network:
        path = self._ndir(name) / "network.json"
        try:
            data = json.loads(path.read_text())
            return Network(**data)
        except FileNotFoundError:
            raise UserError(f"network {name} not found") from None
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"network {name}: unreadable {path} ({e})") from None

    def names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        return [e for e in entries if (self.dir / e / "network.json").is_file()]

    def list(self) -> list[Network]:
        return [self.get(n) for n in self.names()]

    def create(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        *,
        internal: bool = False,
        bridge: str | None = None,
        host: Iterable[IPv4Network] | None = None,
    ) -> Network:
        """A new network. Without ``subnet`` one is chosen from the pools that
        clashes with neither ``host`` (default: the host's routes and addresses)
        nor our other networks; a given subnet must not overlap our others."""
        check_name(name)
        gw: IPv4Address | None = None
        net: IPv4Network | None = None
        if subnet is not None:
            try:
                net = IPv4Network(subnet, strict=True)
            except ValueError as e:
                raise UserError(f"invalid subnet {subnet!r}: {e}") from None
            if net.num_addresses < 4:
                raise UserError(f"subnet {net} is too small: it needs at least a /30")
        if gateway is not None:
            if net is None:
                raise UserError("a gateway needs a subnet (--subnet)")
            try:
                gw = IPv4Address(gateway)
            except ValueError as e:
                raise UserError(f"invalid gateway {gateway!r}: {e}") from None
            if gw not in net or gw in (net.network_address, net.broadcast_address):
                raise UserError(f"gateway {gw} is not a host address of the subnet {net}")
        with self._locked():
            ndir = self._ndir(name)
            if (ndir / "network.json").exists():
                raise Conflict(f"network with name {name} already exists")
            ours = [n.net for n in self.list()]
            if net is None:
                taken = list(host_networks() if host is None else host)
                net = choose_subnet(taken + ours)
            else:
                for other in self.list():
                    if other.net.overlaps(net):
                        raise Conflict(
                            f"subnet {net} overlaps {other.subnet} of network {other.name}"
                        )
            if gw is None:
                gw = net.network_address + 1
            nid = os.urandom(32).hex()
            ifname = bridge or f"mc-{nid[:12]}"
            check_ifname(ifname)
            if any(n.bridge == ifname for n in self.list()):
                raise Conflict(f"bridge {ifname} is already used by another network")
            record = Network(name, nid, str(net), str(gw), internal, ifname)
            files.private_dir(ndir)
            files.write_atomic(ndir / "leases.json", "{}", 0o600)
            # network.json last: it is what makes the network exist.
            files.write_atomic(ndir / "network.json", json.dumps(record._asdict(), indent=1), 0o600)
            return record

    def remove(self, name: str) -> None:
        """Remove a network with no leases (Docker refuses a network in use too)."""
        with self._locked():
            self.get(name)
            leases = self._read_leases(name)
            if leases:
                raise Conflict(f"network {name} has active endpoints ({len(leases)} container(s))")
            ndir = self._ndir(name)
            # network.json first: a crash in between leaves no half network.
            files.remove_file(ndir / "network.json")
            files.rmtree(ndir)

    # ----------------------------------------------------------- leases
    def leases(self, name: str) -> dict[str, str]:
        """IP -> container id."""
        self.get(name)
        return self._read_leases(name)

    def allocate(self, name: str, container_id: str, wanted_ip: str | None = None) -> str:
        """The container's address on the network: ``wanted_ip`` (``--ip``) or the
        lowest free one. A container that has a lease already keeps it."""
        with self._locked():
            network = self.get(name)
            net = network.net
            leases = self._read_leases(name)
            mine = [ip for ip, cid in leases.items() if cid == container_id]
            reserved = {net.network_address, net.broadcast_address, IPv4Address(network.gateway)}
            if wanted_ip is not None:
                try:
                    want = IPv4Address(wanted_ip)
                except ValueError:
                    raise UserError(f"invalid IP address {wanted_ip!r}") from None
                if want not in net:
                    raise UserError(f"address {want} is not in the subnet {net} of network {name}")
                if want in reserved:
                    raise UserError(f"address {want} is reserved in network {name}")
                if mine and mine[0] != str(want):
                    raise Conflict(
                        f"container {container_id[:12]} already has address {mine[0]}"
                        f" on network {name}"
                    )
                owner = leases.get(str(want))
                if owner is not None and owner != container_id:
                    raise Conflict(f"address {want} is already in use on network {name}")
                ip = str(want)
            elif mine:
                return mine[0]
            else:
                ip = ""
                for host in net.hosts():
                    if host not in reserved and str(host) not in leases:
                        ip = str(host)
                        break
                if not ip:
                    raise UserError(f"no free address in {net} (network {name})")
            leases[ip] = container_id
            self._write_leases(name, leases)
            return ip

    def release(self, name: str, container_id: str) -> list[str]:
        """Free the container's addresses on the network (none is fine)."""
        with self._locked():
            self.get(name)
            leases = self._read_leases(name)
            freed = [ip for ip, cid in leases.items() if cid == container_id]
            if freed:
                for ip in freed:
                    del leases[ip]
                self._write_leases(name, leases)
            self._drop_endpoints(name, {container_id})
            return freed

    # ----------------------------------------------------------- endpoints
    # What peers need to know of a container holding a lease: the names it
    # answers to on this network and where its /etc/hosts lives (endpoints.py).
    def _read_endpoints(self, name: str) -> dict[str, dict]:
        try:
            data = json.loads((self._ndir(name) / "endpoints.json").read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UserError(f"network {name}: unreadable endpoints ({e})") from None
        return data if isinstance(data, dict) else {}

    def _drop_endpoints(self, name: str, container_ids: set[str]) -> None:
        known = self._read_endpoints(name)
        if container_ids & set(known):
            kept = {cid: e for cid, e in known.items() if cid not in container_ids}
            files.write_atomic(self._ndir(name) / "endpoints.json", json.dumps(kept), 0o600)

    def set_endpoint(self, name: str, container_id: str, info: dict) -> None:
        """Record ``info`` (JSON values) for the container that holds a lease here."""
        with self._locked():
            self.get(name)
            if container_id not in self._read_leases(name).values():
                raise UserError(f"container {container_id[:12]} has no address on network {name}")
            known = self._read_endpoints(name)
            known[container_id] = info
            files.write_atomic(self._ndir(name) / "endpoints.json", json.dumps(known), 0o600)

    def endpoints(self, name: str) -> dict[str, dict]:
        """Container id -> its recorded info and ``ip``, for every lease on the network."""
        self.get(name)
        known = self._read_endpoints(name)
        leases = self._read_leases(name)
        return {cid: {**known.get(cid, {}), "ip": ip} for ip, cid in leases.items()}

    def sweep_orphans(self) -> list[tuple[str, str, str]]:
        """Free the leases of containers whose directory is gone from the state
        root their endpoint names (ROOT/containers/ID): any root can tell, on a
        network all roots share, without knowing the others' containers."""
        freed: list[tuple[str, str, str]] = []
        with self._locked():
            for name in self.names():
                known = self._read_endpoints(name)
                leases = self._read_leases(name)
                dead = {
                    ip: cid
                    for ip, cid in leases.items()
                    if known.get(cid, {}).get("root")
                    and not (Path(known[cid]["root"]) / "containers" / cid).exists()
                }
                if dead:
                    for ip, cid in dead.items():
                        del leases[ip]
                        freed.append((name, ip, cid))
                    self._write_leases(name, leases)
                    self._drop_endpoints(name, set(dead.values()))
        return freed

    def sweep(
        self,
        live_ids: Iterable[str],
        owner: str | None = None,
        names: Iterable[str] | None = None,
    ) -> list[tuple[str, str, str]]:
        """Free every lease whose container is not in ``live_ids`` (the containers
        that still exist): the repair after a crash. With ``owner``, only leases
        whose endpoint says ``root: owner`` (a network several roots share); with
        ``names``, on those networks only. Returns (network, ip, id)."""
        live = set(live_ids)
        freed: list[tuple[str, str, str]] = []
        with self._locked():
            for name in self.names() if names is None else [n for n in names if n in self.names()]:
                leases = self._read_leases(name)
                known = self._read_endpoints(name) if owner is not None else {}
                dead = {
                    ip: cid
                    for ip, cid in leases.items()
                    if cid not in live
                    and (owner is None or known.get(cid, {}).get("root") == owner)
                }
                if dead:
                    for ip, cid in dead.items():
                        del leases[ip]
                        freed.append((name, ip, cid))
                    self._write_leases(name, leases)
                    self._drop_endpoints(name, set(dead.values()))
        return freed
