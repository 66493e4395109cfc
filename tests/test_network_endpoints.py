"""network/endpoints.py without root: leases, names and /etc/hosts as files (the
veth and the firewall are tested as root in test_network_containers.py)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.network import endpoints, objects
from minicontainer.network.ipam import IPAM


def test_the_mac_comes_from_the_address_as_docker_derives_it() -> None:
    assert endpoints.mac_for("172.18.0.2") == "02:42:ac:12:00:02"
    assert endpoints.mac_for("10.0.255.254") == "02:42:0a:00:ff:fe"


def test_resolv_conf_drops_loopback_resolvers_in_an_own_namespace() -> None:
    host = "search lan\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.1.2.3\noptions edns0\n"
    assert endpoints.resolv_conf(host, own_netns=True) == (
        "search lan\nnameserver 10.1.2.3\noptions edns0\n"
    )
    # only local resolvers: Docker's fallback
    only_local = endpoints.resolv_conf("nameserver 127.0.0.53\n", own_netns=True)
    assert only_local == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    # sharing the host's namespace, its loopback resolver is reachable: kept
    assert endpoints.resolv_conf(host, own_netns=False) == host


def _container(root: Path, cid: str, hostname: str) -> str:
    bundle = root / "containers" / cid
    bundle.mkdir(parents=True)
    (bundle / "hostname").write_text(hostname + "\n")
    (bundle / "hosts").write_text("")
    return str(bundle / "hosts")


def test_peers_on_a_user_network_see_each_other_by_name_and_alias(tmp_path: Path) -> None:
    IPAM(tmp_path).create("app", "10.9.8.0/24")
    web, db = "a" * 64, "b" * 64
    web_hosts = _container(tmp_path, web, "webhost")
    db_hosts = _container(tmp_path, db, "dbhost")
    inode = os.stat(web_hosts).st_ino
    ep = endpoints.join(tmp_path, web, "app", name="web", hostname="webhost", hosts_file=web_hosts)
    assert (ep["ip"], ep["gateway"], ep["prefix"], ep["ifname"]) == (
        "10.9.8.2",
        "10.9.8.1",
        24,
        "eth0",
    )
    assert ep["mac"] == "02:42:0a:09:08:02" and not ep["fixed"]
    endpoints.join(
        tmp_path, db, "app", name="db", hostname="dbhost", hosts_file=db_hosts,
        ip="10.9.8.50", aliases=["database"],
    )  # fmt: skip
    web_sees = Path(web_hosts).read_text()
    assert web_sees.startswith("127.0.0.1\tlocalhost\n")
    assert "10.9.8.2\twebhost\n" in web_sees
    assert "10.9.8.50\tdb database dbhost\n" in web_sees
    assert "10.9.8.2\tweb webhost\n" in Path(db_hosts).read_text()
    # rewritten in place: the container's bind mount holds this inode
    assert os.stat(web_hosts).st_ino == inode
    endpoints.release(tmp_path, db, "app")
    assert "database" not in Path(web_hosts).read_text()
    assert IPAM(tmp_path).leases("app") == {"10.9.8.2": web}


def test_the_default_bridge_has_no_names_and_refuses_ip_and_aliases(tmp_path: Path) -> None:
    one, two = secrets.token_hex(32), secrets.token_hex(32)
    h1, h2 = _container(tmp_path, one, "one"), _container(tmp_path, two, "two")
    try:
        endpoints.join(tmp_path, one, "bridge", name="first", hostname="one", hosts_file=h1)
        endpoints.join(tmp_path, two, "bridge", name="second", hostname="two", hosts_file=h2)
        # the host's one default network (as root: the system root's, shared by all roots)
        shared = objects.ipam_of(tmp_path, "bridge")
        assert shared.get("bridge").bridge == "mc0"
        assert {one, two} <= set(shared.leases("bridge").values())
        text = Path(h1).read_text()
        assert "second" not in text and "two" not in text and "\tone\n" in text
        with pytest.raises(UserError, match="user specified IP address is supported only"):
            endpoints.join(
                tmp_path, "e" * 64, "bridge", name="x", hostname="x", hosts_file=h1, ip="1.2.3.4"
            )
        with pytest.raises(UserError, match="network-scoped alias is supported only"):
            endpoints.join(
                tmp_path, "e" * 64, "bridge", name="x", hostname="x", hosts_file=h1, aliases=["y"]
            )
        # another root's sweep leaves this root's leases on the shared network alone
        endpoints.sweep(tmp_path / "elsewhere", [], [])
        assert {one, two} <= set(shared.leases("bridge").values())
    finally:
        endpoints.release(tmp_path, one)
        endpoints.release(tmp_path, two)
    assert not {one, two} & set(objects.ipam_of(tmp_path, "bridge").leases("bridge").values())


def test_a_full_network_is_swept_of_removed_containers_before_it_says_so(tmp_path: Path) -> None:
    IPAM(tmp_path).create("tiny", "10.9.9.0/30")  # one host address besides the gateway
    gone, new = "f" * 64, "0" * 64
    h = _container(tmp_path, new, "new")
    endpoints.join(tmp_path, gone, "tiny", name="gone", hostname="gone", hosts_file="")
    with pytest.raises(UserError, match=r"no free address in 10.9.9.0/30 \(network tiny\)"):
        endpoints.join(
            tmp_path, new, "tiny", name="new", hostname="new", hosts_file=h, live_ids=[gone, new]
        )
    ep = endpoints.join(
        tmp_path, new, "tiny", name="new", hostname="new", hosts_file=h, live_ids=[new]
    )
    assert ep["ip"] == "10.9.9.2"


def test_any_root_frees_the_leases_of_containers_whose_directory_is_gone(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path / "shared")
    ipam.create("bridge", "10.9.10.0/24")
    kept, gone = "1" * 64, "2" * 64
    for cid in (kept, gone):
        ipam.allocate("bridge", cid)
        ipam.set_endpoint("bridge", cid, {"root": str(tmp_path / "a-root")})
    (tmp_path / "a-root" / "containers" / kept).mkdir(parents=True)
    assert ipam.sweep_orphans() == [("bridge", "10.9.10.3", gone)]
    assert ipam.leases("bridge") == {"10.9.10.2": kept}


def test_the_system_roots_sweep_spares_other_roots_leases_on_the_shared_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, the default network's leases live in the system root, where that
    # root's own networks live too: its sweep must still spare other roots' leases.
    system, other = tmp_path / "system", tmp_path / "other"
    monkeypatch.setattr(objects, "SYSTEM_ROOT", str(system))
    from minicontainer.network import firewall

    monkeypatch.setattr(firewall, "published", lambda: [])  # no nft needed here
    monkeypatch.setattr(firewall, "sweep", lambda live, bridges: [])
    theirs = secrets.token_hex(32)
    hosts = _container(other, theirs, "theirs")
    endpoints.join(other, theirs, "bridge", name="theirs", hostname="theirs", hosts_file=hosts)
    IPAM(system).create("mine", "10.9.11.0/24")
    IPAM(system).allocate("mine", "3" * 64)  # the system root's own, gone: swept
    assert endpoints.sweep(system, [], []) == [
        "lease 10.9.11.2 on mine: container 333333333333 is gone"
    ]
    assert theirs in objects.ipam_of(system, "bridge").leases("bridge").values()
    endpoints.release(other, theirs)


@pytest.mark.root
def test_without_a_network_namespace_the_container_is_on_the_hosts_network(
    tmp_path: Path,
) -> None:
    # notebook 01 leaves out namespaces one by one: without 'net' the default
    # must be the host's network, never a veth whose eth0 lands in the host's
    from conftest import booted

    with booted(tmp_path / "root") as rt:
        c = rt.create("busybox", ["true"], namespaces=["mnt", "pid", "uts", "ipc"])
        assert c.spec.network == "host" and c.spec.networks == []
        with pytest.raises(UserError, match="needs a network namespace of its own"):
            rt.create("busybox", ["true"], network="bridge", namespaces=["mnt", "pid"])
