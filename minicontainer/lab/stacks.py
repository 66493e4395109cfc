"""Pictures of the two stacks (graphviz): what sits between an application and the
hardware in a VM, and in a container. Labels carry this machine's real facts
(host kernel, qemu version, the accelerator the lab would use), so the picture
matches what the notebook then measures.
"""

from __future__ import annotations

import platform

VM_COLOR, CT_COLOR, SHARED = "#f4cccc", "#cfe2f3", "#e6e6e6"


def _layer(g, name: str, label: str, color: str, width: str = "2.6") -> None:  # type: ignore[no-untyped-def]
    g.node(name, label, shape="box", style="filled", fillcolor=color, width=width)


def stacks(
    accel: str | None = None,
    host_kernel: str | None = None,
    guest_kernel: str | None = None,
    qemu: str | None = None,
):  # type: ignore[no-untyped-def]
    """One graphviz Digraph with the VM stack on the left and the container stack on
    the right, both standing on the same hardware. ``accel`` is "kvm", "tcg" or None."""
    import graphviz

    host_kernel = host_kernel or platform.release()
    hyper = {
        "kvm": "qemu + KVM\n(hardware virtualisation:\nguest code runs on the CPU)",
        "tcg": "qemu, TCG\n(software emulation: every guest\ninstruction is translated)",
    }.get(accel or "", "hypervisor\n(qemu + KVM, or TCG emulation)")
    if qemu:
        hyper = hyper.replace("qemu", qemu, 1)
    g = graphviz.Digraph(
        "stacks", graph_attr={"rankdir": "BT", "nodesep": "0.5", "ranksep": "0.15"}
    )
    g.attr("node", fontname="Helvetica", fontsize="11")
    g.attr("edge", style="invis")
    _layer(g, "hw", "hardware: CPU, RAM, disk", SHARED, width="6.2")
    _layer(g, "hk", f"host Linux kernel {host_kernel}", SHARED, width="6.2")
    g.edge("hw", "hk")
    with g.subgraph(name="cluster_vm") as vm:
        vm.attr(label="virtual machine", style="rounded", color="#cc0000", fontname="Helvetica")
        _layer(vm, "hv", hyper, VM_COLOR)
        _layer(vm, "vhw", "virtual hardware\n(serial port, virtio disk)", VM_COLOR)
        gk = f"guest Linux kernel {guest_kernel}" if guest_kernel else "guest Linux kernel"
        _layer(vm, "gk", gk + "\n(its own scheduler, memory, drivers)", VM_COLOR)
        _layer(vm, "gu", "guest userspace: /init, busybox", VM_COLOR)
        _layer(vm, "vapp", "app: mcbench", VM_COLOR)
        for a, b in (("hv", "vhw"), ("vhw", "gk"), ("gk", "gu"), ("gu", "vapp")):
            vm.edge(a, b)
    with g.subgraph(name="cluster_ct") as ct:
        ct.attr(label="container", style="rounded", color="#1c4587", fontname="Helvetica")
        _layer(
            ct, "rt", "runtime: minicontainer / runc\n(sets up, then gets out of the way)", CT_COLOR
        )
        _layer(
            ct, "ns", "namespaces + cgroups\n(a view and limits, kept by the host kernel)", CT_COLOR
        )
        _layer(ct, "img", "image layers (overlayfs): busybox", CT_COLOR)
        _layer(ct, "capp", "app: mcbench\n(a normal host process)", CT_COLOR)
        for a, b in (("rt", "ns"), ("ns", "img"), ("img", "capp")):
            ct.edge(a, b)
    g.edge("hk", "hv")
    g.edge("hk", "rt")
    return g


def syscall_paths():  # type: ignore[no-untyped-def]
    """Where one write() to a file goes: a container's process calls the host kernel
    directly; a VM's process calls the guest kernel, whose disk driver talks to a
    virtual device that qemu (a host process) turns into a host write()."""
    import graphviz

    g = graphviz.Digraph("paths", graph_attr={"rankdir": "LR"})
    g.attr("node", fontname="Helvetica", fontsize="10", shape="box", style="rounded,filled")
    g.node("c1", "container process\nwrite(fd, ...)", fillcolor=CT_COLOR)
    g.node("c2", "host kernel: overlayfs -> ext4", fillcolor=SHARED)
    g.node("d", "disk", fillcolor=SHARED, shape="cylinder")
    g.edge("c1", "c2", label="syscall")
    g.edge("c2", "d")
    g.node("v1", "guest process\nwrite(fd, ...)", fillcolor=VM_COLOR)
    g.node("v2", "guest kernel: ext4 ->\nvirtio-blk driver", fillcolor=VM_COLOR)
    g.node("v3", "qemu (host process):\nvirtio device -> write()", fillcolor=VM_COLOR)
    g.node("v4", "host kernel: ext4", fillcolor=SHARED)
    g.edge("v1", "v2", label="syscall\n(guest)")
    g.edge("v2", "v3", label="VM exit /\nemulation")
    g.edge("v3", "v4", label="syscall\n(host)")
    g.edge("v4", "d")
    return g


def this_machine() -> dict:
    """The facts the pictures and the notebook print, each None when absent here:
    {"accel", "kvm": {usable, reason, checks}, "guest_kernel", "qemu"}."""
    from .base import Unavailable
    from .vm import guest, qemu
    from .vmbackend import host_kvm

    facts: dict = {"guest_kernel": None, "qemu": None, "accel": None, "kvm": None}
    try:
        facts["qemu"] = f"QEMU {qemu.qemu_version(qemu.find_qemu())}"
        facts["guest_kernel"] = guest.kernel_version(guest.find_kernel())
    except Unavailable as e:
        facts["kvm"] = {"usable": False, "reason": str(e), "checks": {}}
        return facts
    facts["kvm"] = host_kvm()
    facts["accel"] = "kvm" if facts["kvm"]["usable"] else "tcg"
    return facts


def stacks_here():  # type: ignore[no-untyped-def]
    """``stacks`` labelled with this machine's facts."""
    f = this_machine()
    return stacks(accel=f["accel"], guest_kernel=f["guest_kernel"], qemu=f["qemu"])
