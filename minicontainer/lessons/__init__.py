"""What the notebooks call: each experiment as a function that returns data, the
setup check, and the pictures and widgets that show the results.

    checks      is this machine ready (notebook 00, ``minicontainer check``)
    experiments namespaces and cgroups seen from inside and outside (notebooks 01, 02)
    layers      images, layers, overlayfs and copy-on-write (notebooks 03, 04)
    workflow    build, push, pull between two stores and a registry (notebooks 05, 06)
    architecture  minicontainerd driven by raw HTTP, the SDK and the CLI; its events;
                the process trees under it and under dockerd (notebook 08)
    security    capabilities, no_new_privs, seccomp, the device cgroup, the sealed
                init, each tried from inside a container (notebook 09)
    networking  a container's interfaces and the veth/bridge topology, read from
                netlink and drawn (notebook 10)
    viz         graphviz drawings and ipywidgets, thin views over the above and
                over the models of image/ and lab/ (notebook 07's re-run widget)

The logic lives here or in the packages it calls, tested by pytest; notebook
cells stay a line or two. Nothing here is on the runtime's path: graphviz,
ipywidgets and matplotlib are imported only where used.
"""
