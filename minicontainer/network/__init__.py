"""Container networking (issue 12): ``ipam.py`` hands out subnets and addresses
with leases on disk; ``bridge.py`` builds the bridge and veth pairs through
netlink (pyroute2); ``objects.py`` makes networks Docker objects (create, ls,
inspect, rm). Not yet wired into ``run``: the default network is ``none``."""
