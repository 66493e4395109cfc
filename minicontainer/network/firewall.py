"""NAT, published ports and isolation for bridge networks: one nftables table of
our own, ``table ip minicontainer``, changed through nft's JSON interface.

What Docker's bridge driver does with iptables (moby libnetwork/drivers/bridge,
iptables.go), done with nftables (nft(8); libnftables-json(5) for the JSON
schema; the hook priorities are nft(8)'s "dstnat", "srcnat", "filter", "raw").
Every change is one JSON document piped to ``nft -j -f -``, which the kernel
applies as one transaction: all of it or none of it. Reads are ``nft -j list``.
The chains::

    prerouting   nat, hook prerouting, priority dstnat   fib daddr type local jump publish
    output       nat, hook output, priority -100         fib daddr type local jump publish
    publish      per published port (comment "mc:<12 hex of the container>"):
                 [ip daddr HOSTIP] PROTO dport HOSTPORT counter dnat to CIP:CPORT
    postrouting  nat, hook postrouting, priority srcnat, per network ("mc-net:BRIDGE"):
                 ip saddr SUBNET oifname != BRIDGE masquerade         (not --internal)
                 ip saddr SUBNET oifname BRIDGE ct status dnat masquerade   (hairpin)
                 ip saddr 127.0.0.0/8 oifname BRIDGE masquerade       (127.0.0.1:PORT)
    forward      filter, hook forward, priority filter, policy accept:
                 ct state established,related accept
                 jump isolate
                 ct status dnat accept          (published ports)
                 oifname @bridges drop          (nothing else gets into our networks)
    isolate      per network: iifname BR oifname BR accept; iifname BR oifname @bridges drop;
                 --internal: iifname BR drop; oifname BR drop
    localnet     filter, hook prerouting, priority raw: iifname @bridges ip daddr 127.0.0.0/8 drop
    set bridges  our bridges (type ifname)

Choices, and why:

- No userland proxy (Docker's docker-proxy): the kernel's DNAT carries published
  ports, also to 127.0.0.1:PORT from the host itself. A packet from 127.0.0.1
  may leave through the bridge only with ``route_localnet=1`` on it (ip-sysctl
  docs), and it is masqueraded to the bridge's address so that the reply comes
  back. route_localnet also lets a neighbour on the bridge send to the host's
  127.0.0.1 (CVE-2020-8558): the ``localnet`` chain drops that.
- Hairpin: a container reaching a published port through the host (its own, or
  a neighbour's on the same bridge) is DNATed back into its bridge; without a
  masquerade the answer would skip the host's conntrack. Docker writes one rule
  per port (``-s CIP -d CIP --dport CPORT``); ``ct status dnat`` on the network's
  own bridge covers those and the neighbours' case in one rule per network. With
  br_netfilter that DNAT happens while the frame is being bridged, so a container
  reaching its own port needs the frame sent back out of the port it came in by:
  bridge.attach turns on the bridge port's hairpin mode (netlink, as ``bridge link
  set dev VETH hairpin on``), as Docker does without its proxy.
- Isolation: as Docker's DOCKER-ISOLATION chains, a network's containers reach
  no other of our networks, not even through a published port on the host's
  address (Docker's userland proxy would carry that; our DNAT makes it forwarded
  traffic between two of our bridges, which is dropped); an --internal network
  reaches nothing but itself. Only the host (not forwarded) reaches into an
  internal network. Nothing unasked gets into a network from outside: forwarded
  traffic to a bridge is accepted only when established or DNATed.
- Coexistence with Docker: dockerd (iptables-nft) keeps ``table ip filter`` with a
  FORWARD chain of policy DROP, and with br_netfilter (bridge-nf-call-iptables=1)
  even frames between two veths of one bridge pass through it. Every base chain on
  a hook is run and a drop in any of them is final, so our accepts alone change
  nothing there. When that table has Docker's ``DOCKER-USER`` chain (documented
  for users' rules, jumped to first, never flushed by dockerd) we insert, per
  network, plain accepts that iptables-nft can still read back (``iifname BR
  oifname BR accept``; when not internal also ``iifname BR accept`` and
  ``oifname BR accept``), each with the comment "minicontainer BRIDGE", and
  remove exactly those, by handle, with the network. Deciding what is allowed
  stays in our own table, whose drops still win. With no ``ip filter`` table
  (no Docker) nothing is added anywhere else.

Every public function is idempotent and runs under an flock(2) on LOCK, since
containers may start at the same time. The table goes away with the last
network and published port, and our DOCKER-USER rules with their networks.
``sweep`` is the crash repair: rules of containers and bridges that are gone go,
and DOCKER-USER accepts missing for live networks (dockerd started after them)
come back.
nft's errors become one-line UserErrors. Only parameters of plain types: this
module knows nothing of the runtime.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import Conflict, UserError
from .bridge import check_ifname
from .ports import PortBinding

NFT = "nft"
FAMILY = "ip"
TABLE = "minicontainer"
LOCK = Path("/run/minicontainer/firewall.lock")
INSTALL_HINT = "apt install nftables"
TIMEOUT = 30.0
NET_TAG = "mc-net:"  # comment on a network's rules: "mc-net:BRIDGE"
PUB_TAG = "mc:"  # comment on a published port's rule: "mc:<12 hex of the container>"
DOCKER_TAG = "minicontainer "  # comment on our rules in Docker's DOCKER-USER
DOCKER_TABLE = "filter"
DOCKER_CHAIN = "DOCKER-USER"
LOCALNET = ipaddress.IPv4Network("127.0.0.0/8")

# ----------------------------------------------------------------------------- nft


def _run(argv: list[str], stdin: str | None = None) -> str:
    """The one place nft is run. Its error (the first line that says something) as
    a UserError."""
    try:
        done = subprocess.run(
            [NFT, *argv], input=stdin, capture_output=True, text=True, timeout=TIMEOUT
        )
    except FileNotFoundError:
        raise UserError(f"published ports and NAT need nftables' nft: {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"nft {' '.join(argv)}: no answer in {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        # "internal:0:0-0: Error: ..." (a location in the JSON input, meaningless here).
        msg = next((ln[ln.index("Error:") :] for ln in lines if "Error:" in ln), "")
        msg = msg or (lines[0] if lines else "")
        raise UserError(f"nft: {msg or f'exit status {done.returncode}'}")
    return done.stdout


def _nft(commands: list[dict[str, Any]]) -> None:
    """Apply a list of JSON commands ({"add": ...}, {"delete": ...}) as one transaction."""
    if commands:
        _run(["-j", "-f", "-"], json.dumps({"nftables": commands}))


def _list(*what: str) -> list[dict[str, Any]] | None:
    """``nft -j list WHAT`` as its objects (metainfo dropped); None when it does not exist."""
    try:
        out = _run(["-j", "list", *what])
    except UserError as e:
        if "No such file or directory" in str(e):
            return None
        raise
    return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]


def _rules(objs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [o["rule"] for o in objs or [] if "rule" in o]


def _set_elements(objs: list[dict[str, Any]] | None, name: str) -> set[str]:
    for o in objs or []:
        s = o.get("set")
        if s and s.get("name") == name:
            elem = s.get("elem", [])
            return {e for e in elem if isinstance(e, str)}
    return set()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- JSON pieces


def _t(**kw: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **kw}


def _eq(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _ip(field: str) -> dict[str, Any]:
    return {"payload": {"protocol": "ip", "field": field}}


def _prefix(net: ipaddress.IPv4Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _rule(chain: str, expr: list[dict[str, Any]], comment: str | None = None) -> dict[str, Any]:
    rule = _t(chain=chain, expr=expr)
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def _skeleton() -> list[dict[str, Any]]:
    """The table, its chains, the set and the rules that do not depend on a network."""
    local = _eq({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    jump_publish = {"jump": {"target": "publish"}}
    base = [
        ("prerouting", "nat", "prerouting", -100),  # dstnat
        ("output", "nat", "output", -100),
        ("postrouting", "nat", "postrouting", 100),  # srcnat
        ("forward", "filter", "forward", 0),  # filter
        ("localnet", "filter", "prerouting", -300),  # raw
    ]
    doc: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for name, kind, hook, prio in base:
        chain = _t(name=name, type=kind, hook=hook, prio=prio, policy="accept")
        doc.append({"add": {"chain": chain}})
    doc += [{"add": {"chain": _t(name=n)}} for n in ("publish", "isolate")]
    doc.append({"add": {"set": _t(name="bridges", type="ifname")}})
    doc += [
        _rule("prerouting", [local, jump_publish]),
        _rule("output", [local, jump_publish]),
        _rule("forward", [_eq({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT]),
        _rule("forward", [{"jump": {"target": "isolate"}}]),
        _rule("forward", [_eq({"ct": {"key": "status"}}, "dnat", "in"), ACCEPT]),
        _rule("forward", [_eq(_meta("oifname"), "@bridges"), DROP]),
        _rule(
            "localnet",
            [_eq(_meta("iifname"), "@bridges"), _eq(_ip("daddr"), _prefix(LOCALNET)), DROP],
        ),
    ]
    return doc


def _network_rules(bridge: str, subnet: ipaddress.IPv4Network, internal: bool) -> list[dict]:
    tag = NET_TAG + bridge
    iif, oif = _eq(_meta("iifname"), bridge), _eq(_meta("oifname"), bridge)
    saddr = _eq(_ip("saddr"), _prefix(subnet))
    doc = [
        {"add": {"element": _t(name="bridges", elem=[bridge])}},
        _rule("isolate", [iif, oif, ACCEPT], tag),
        _rule("isolate", [iif, _eq(_meta("oifname"), "@bridges"), DROP], tag),
    ]
    if internal:
        doc += [_rule("isolate", [iif, DROP], tag), _rule("isolate", [oif, DROP], tag)]
    else:
        out = _eq(_meta("oifname"), bridge, "!=")
        doc.append(_rule("postrouting", [saddr, out, {"masquerade": None}], tag))
    doc += [
        _rule(
            "postrouting",
            [saddr, oif, _eq({"ct": {"key": "status"}}, "dnat", "in"), {"masquerade": None}],
            tag,
        ),
        _rule(
            "postrouting", [_eq(_ip("saddr"), _prefix(LOCALNET)), oif, {"masquerade": None}], tag
        ),
    ]
    return doc


def _docker_rules(bridge: str, internal: bool) -> list[dict[str, Any]]:
    """Our accepts at the top of Docker's DOCKER-USER: only iifname/oifname matches,
    a counter and accept, which iptables-nft (dockerd's ``iptables -L``) still reads."""
    where = {"family": "ip", "table": DOCKER_TABLE, "chain": DOCKER_CHAIN}
    iif, oif = _eq(_meta("iifname"), bridge), _eq(_meta("oifname"), bridge)
    shapes = [(f"{bridge} within", [iif, oif])]
    if not internal:
        shapes += [(f"{bridge} out", [iif]), (f"{bridge} in", [oif])]
    return [
        {
            "insert": {
                "rule": {
                    **where,
                    "expr": [*m, {"counter": None}, ACCEPT],
                    "comment": DOCKER_TAG + text,
                }
            }
        }
        for text, m in shapes
    ]


def _delete(rule: dict[str, Any]) -> dict[str, Any]:
    keys = ("family", "table", "chain", "handle")
    return {"delete": {"rule": {k: rule[k] for k in keys}}}


def _docker_user() -> list[dict[str, Any]] | None:
    """Docker's DOCKER-USER chain's objects, None when there is none (no dockerd)."""
    return _list("chain", "ip", DOCKER_TABLE, DOCKER_CHAIN)


def _ours_in_docker(objs: list[dict[str, Any]] | None, bridge: str | None) -> list[dict]:
    """Our rules in DOCKER-USER (of one bridge, or all with None), by exact comment."""
    out = []
    for r in _rules(objs):
        c = r.get("comment", "")
        if not c.startswith(DOCKER_TAG):
            continue
        name = c[len(DOCKER_TAG) :].rsplit(" ", 1)[0]
        if bridge is None or name == bridge:
            out.append(r)
    return out


def _tagged(objs: list[dict[str, Any]] | None, tag: str) -> list[dict[str, Any]]:
    return [r for r in _rules(objs) if r.get("comment") == tag]


def _table() -> list[dict[str, Any]] | None:
    return _list("table", FAMILY, TABLE)


def _in_use(objs: list[dict[str, Any]] | None) -> bool:
    return any(r.get("comment", "").startswith((NET_TAG, PUB_TAG)) for r in _rules(objs))


def _drop_table_if_unused(objs: list[dict[str, Any]] | None, doc: list[dict[str, Any]]) -> None:
    """Append the table's deletion to ``doc`` when, after ``doc``, none of our rules is left."""
    if objs is None:
        return
    gone = {c["delete"]["rule"]["handle"] for c in doc if "rule" in c.get("delete", {})}
    left = [
        r
        for r in _rules(objs)
        if r.get("comment", "").startswith((NET_TAG, PUB_TAG))
        and not (r["table"] == TABLE and r["handle"] in gone)
    ]
    if not left and not any("add" in c for c in doc):
        doc.append({"delete": {"table": {"family": FAMILY, "name": TABLE}}})


def _localnet(bridge: str) -> None:
    """route_localnet=1 on the bridge: 127.0.0.1:PORT is DNATed out through it."""
    path = Path("/proc/sys/net/ipv4/conf") / bridge / "route_localnet"
    try:
        path.write_text("1\n")
    except FileNotFoundError:
        raise UserError(f"bridge {bridge}: no such interface") from None
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None


# ----------------------------------------------------------------------------- API


def add_network(bridge: str, subnet: str, internal: bool = False) -> None:
    """The rules of one network (its bridge and subnet): masquerade out unless
    internal, isolation, hairpin, and Docker's DOCKER-USER accepts. Again with other
    values replaces them."""
    check_ifname(bridge)
    net = ipaddress.IPv4Network(subnet, strict=False)
    with _locked():
        objs = _table()
        docker = _docker_user()
        if _in_place(objs, docker, bridge, net, internal):
            return  # each start asks again: the rewrite would cost a third nft run
        doc = _skeleton() if objs is None else []
        doc += [_delete(r) for r in _tagged(objs, NET_TAG + bridge)]
        doc += _network_rules(bridge, net, internal)
        if docker is not None:
            doc += [_delete(r) for r in _ours_in_docker(docker, bridge)]
            doc += _docker_rules(bridge, internal)
        _nft(doc)


def _in_place(
    objs: list[dict[str, Any]] | None,
    docker: list[dict[str, Any]] | None,
    bridge: str,
    net: ipaddress.IPv4Network,
    internal: bool,
) -> bool:
    """Whether the network's rules are there as add_network would write them: the
    bridge in the set, per chain as many rules with its tag and its subnet (nft
    lists a rule in its own words, so the shapes are compared, not the text), and
    its accepts in DOCKER-USER when that chain exists."""
    if objs is None or bridge not in _set_elements(objs, "bridges"):
        return False
    subnet = json.dumps(_prefix(net)["prefix"], sort_keys=True)

    def shape(rules: list[dict[str, Any]]) -> collections.Counter[tuple[str, bool]]:
        return collections.Counter(
            (r["chain"], subnet in json.dumps(r, sort_keys=True)) for r in rules
        )

    wanted = [c["add"]["rule"] for c in _network_rules(bridge, net, internal) if "rule" in c["add"]]
    if shape(_tagged(objs, NET_TAG + bridge)) != shape(wanted):
        return False
    if docker is None:
        return True
    have = sorted(r.get("comment", "") for r in _ours_in_docker(docker, bridge))
    return have == sorted(c["insert"]["rule"]["comment"] for c in _docker_rules(bridge, internal))


def remove_network(bridge: str) -> None:
    """Remove the network's rules (ours and those in DOCKER-USER); the table with
    the last of them. Published ports of its containers are unpublish's."""
    check_ifname(bridge)
    with _locked():
        _nft(_remove_network_doc(_table(), _docker_user(), bridge))


def _remove_network_doc(
    objs: list[dict[str, Any]] | None, docker: list[dict[str, Any]] | None, bridge: str
) -> list[dict[str, Any]]:
    doc = [_delete(r) for r in _ours_in_docker(docker, bridge)]
    if objs is not None:
        doc += [_delete(r) for r in _tagged(objs, NET_TAG + bridge)]
        if bridge in _set_elements(objs, "bridges"):
            doc.append({"delete": {"element": _t(name="bridges", elem=[bridge])}})
        _drop_table_if_unused(objs, doc)
    return doc


def _tag(container_id: str) -> str:
    cid = container_id.strip().lower()
    if len(cid) < 12 or any(c not in "0123456789abcdef" for c in cid):
        raise UserError(f"invalid container id {container_id!r}")
    return PUB_TAG + cid[:12]


def _publish_fields(rule: dict[str, Any]) -> dict[str, Any]:
    """What a publish rule says: host_ip, proto, host_port, container_ip,
    container_port, packets, bytes (from nft's JSON of the rule we wrote)."""
    out: dict[str, Any] = {"host_ip": "", "packets": 0, "bytes": 0}
    for e in rule.get("expr", []):
        m = e.get("match")
        if m:
            left = m["left"].get("payload", {})
            if left.get("field") == "daddr":
                out["host_ip"] = m["right"]
            elif left.get("field") == "dport":
                out["proto"], out["host_port"] = left["protocol"], int(m["right"])
        elif "counter" in e:
            out["packets"], out["bytes"] = e["counter"]["packets"], e["counter"]["bytes"]
        elif "dnat" in e:
            out["container_ip"], out["container_port"] = e["dnat"]["addr"], e["dnat"]["port"]
    return out


def _published(objs: list[dict[str, Any]] | None) -> list[tuple[dict[str, Any], dict]]:
    return [
        (r, _publish_fields(r))
        for r in _rules(objs)
        if r["chain"] == "publish" and r.get("comment", "").startswith(PUB_TAG)
    ]


def published() -> list[dict[str, Any]]:
    """Every published port: its container (the 12 hex of the rule's tag), and
    _publish_fields's host_ip, proto, host_port, container_ip, container_port."""
    return [{"container": r["comment"][len(PUB_TAG) :], **f} for r, f in _published(_table())]


def published_ports() -> set[tuple[str, int]]:
    """(proto, host port) of every published port, for ports.choose_host_ports."""
    return {(f["proto"], f["host_port"]) for _, f in _published(_table())}


def publish(
    container_id: str, container_ip: str, bridge: str, bindings: Iterable[PortBinding]
) -> None:
    """DNAT each binding's host port (chosen already: ports.choose_host_ports) to
    the container's address. Again for the same container replaces its rules; a
    port another container publishes is Docker's "port is already allocated"."""
    tag = _tag(container_id)
    check_ifname(bridge)
    cip = str(ipaddress.IPv4Address(container_ip))
    bindings = list(bindings)
    for b in bindings:
        if not 0 < b.host_port < 65536 or b.host_port_end:
            raise UserError(f"{b.key}: no host port chosen (ports.choose_host_ports)")
    with _locked():
        objs = _table()
        if not _tagged(objs, NET_TAG + bridge):
            raise UserError(f"bridge {bridge}: no network rules (firewall.add_network first)")
        mine = [r for r, _ in _published(objs) if r.get("comment") == tag]
        for r, f in _published(objs):
            if r.get("comment") == tag:
                continue
            for b in bindings:
                same_ip = not f["host_ip"] or not b.host_ip or f["host_ip"] == b.host_ip
                if same_ip and (f["proto"], f["host_port"]) == (b.proto, b.host_port):
                    raise Conflict(
                        f"Bind for {b.shown_ip}:{b.host_port} failed: port is already allocated"
                    )
        _localnet(bridge)
        doc = [_delete(r) for r in mine]
        for b in bindings:
            expr = [_eq(_ip("daddr"), b.host_ip)] if b.host_ip else []
            expr += [
                _eq({"payload": {"protocol": b.proto, "field": "dport"}}, b.host_port),
                {"counter": None},
                {"dnat": {"addr": cip, "port": b.container_port}},
            ]
            doc.append(_rule("publish", expr, tag))
        _nft(doc)


def unpublish(container_id: str) -> None:
    """Remove the container's published ports (none: nothing to do); the table
    with the last rule."""
    tag = _tag(container_id)
    with _locked():
        objs = _table()
        doc = [_delete(r) for r in _tagged(objs, tag)]
        if doc:
            _drop_table_if_unused(objs, doc)
        _nft(doc)


def sweep(live_container_ids: Iterable[str], live_bridges: Iterable[str]) -> list[str]:
    """Crash repair: remove the published ports of containers not in
    ``live_container_ids`` and the rules of bridges not in ``live_bridges``
    (here and in DOCKER-USER). Also puts back our DOCKER-USER accepts of live
    networks when they are missing (dockerd started after them). Returns what
    was done, one line each."""
    live = {PUB_TAG + c.lower()[:12] for c in live_container_ids}
    bridges = set(live_bridges)
    removed: list[str] = []
    with _locked():
        objs, docker = _table(), _docker_user()
        doc: list[dict[str, Any]] = []
        for r, f in _published(objs):
            if r["comment"] not in live:
                doc.append(_delete(r))
                removed.append(
                    f"{r['comment']} {f.get('proto')}/{f.get('host_port')}"
                    f" -> {f.get('container_ip')}:{f.get('container_port')}"
                )
        dead = {
            r["comment"][len(NET_TAG) :]
            for r in _rules(objs)
            if r.get("comment", "").startswith(NET_TAG)
        }
        dead |= _set_elements(objs, "bridges")
        for r in _ours_in_docker(docker, None):
            dead.add(r["comment"][len(DOCKER_TAG) :].rsplit(" ", 1)[0])
        for name in sorted(dead - bridges):
            doc += [_delete(r) for r in _ours_in_docker(docker, name)]
            doc += [_delete(r) for r in _tagged(objs, NET_TAG + name)]
            if name in _set_elements(objs, "bridges"):
                doc.append({"delete": {"element": _t(name="bridges", elem=[name])}})
            removed.append(f"network {name}")
        if docker is not None:
            # dockerd started after our networks were made: its DOCKER-USER lacks them.
            have = {
                r["comment"][len(DOCKER_TAG) :].rsplit(" ", 1)[0]
                for r in _ours_in_docker(docker, None)
            }
            for name in sorted(_set_elements(objs, "bridges") & bridges - have):
                doc += _docker_rules(name, _is_internal(objs, name))
                removed.append(f"(added) DOCKER-USER accepts for {name}")
        _drop_table_if_unused(objs, doc)
        _nft(doc)
    return removed


def _is_internal(objs: list[dict[str, Any]] | None, bridge: str) -> bool:
    """Whether our rules make the network internal: it has no masquerade out."""
    return not any(
        r["chain"] == "postrouting" and '"!="' in json.dumps(r["expr"])
        for r in _tagged(objs, NET_TAG + bridge)
    )


def rules_text() -> str:
    """``nft list table ip minicontainer`` (text, to read); "" when there is no table."""
    try:
        return _run(["list", "table", FAMILY, TABLE])
    except UserError as e:
        if "No such file or directory" in str(e):
            return ""
        raise


def counters(container_id: str) -> list[dict[str, Any]]:
    """Packets and bytes DNATed per published port of the container:
    [{"key": "80/tcp", "host_ip", "host_port", "container_ip", "container_port",
    "packets", "bytes"}]."""
    tag = _tag(container_id)
    out = []
    for r, f in _published(_table()):
        if r.get("comment") == tag:
            out.append({"key": f"{f['container_port']}/{f['proto']}", **f})
    return out
