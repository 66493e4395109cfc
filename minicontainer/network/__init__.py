"""Container networking, as Docker's bridge driver does it (issue 12).

ipam       subnets from Docker's pools and addresses, with leases on disk
bridge     the bridge and one veth pair per container, through netlink (pyroute2)
objects    networks as Docker objects: the default ``bridge``, user-defined ones
endpoints  a container on a network: lease, names, veth at start, /etc/hosts
ports      ``-p``/``-P`` as Docker parses them; host ports chosen and checked
firewall   the nftables table: published ports, masquerade, isolation
capture    a small packet capture (AF_PACKET) for the notebook
"""
