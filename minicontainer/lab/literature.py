"""What the literature measured, next to what this machine measured.

- Felter, Ferreira, Rajamony, Rubio, "An Updated Performance Comparison of Virtual
  Machines and Linux Containers", ISPASS 2015 (IBM Research Report RC25482):
  Docker equals or beats KVM almost everywhere; CPU-bound work is near-native in
  both; I/O- and latency-sensitive work is where the VM pays (every I/O goes
  through the guest kernel, a virtual device and the host).
- Agache et al., "Firecracker: Lightweight Virtualization for Serverless
  Applications", NSDI 2020: a microVM boots in ~125 ms, costs < 5 MiB of memory
  beyond its guest, and a host can start 150 microVMs per second.

Each claim is compared with the matching figure of a results document. Under TCG
the VM column is emulation: the row says so instead of drawing a conclusion.
"""

from __future__ import annotations

FELTER = "Felter et al., ISPASS 2015"
FIRECRACKER = "Firecracker, NSDI 2020"

CONTAINERS = ("minicontainer", "runc", "docker")
VMS = ("vm-kvm", "vm-tcg")


def _median(doc: dict, metric: str, backend: str, field: str = "median") -> float | None:
    for m in doc.get("measurements", []):
        if m["metric"] == metric and m["backend"] == backend:
            return m.get(field)
    return None


def _vm(doc: dict) -> str | None:
    """The VM backend the document measured (KVM preferred), or None."""
    for b in VMS:
        if any(m["backend"] == b for m in doc.get("measurements", [])):
            return b
    return None


def _ratios(doc: dict, metric: str, backends: tuple[str, ...]) -> str:
    parts = []
    for b in backends:
        r = _median(doc, metric, b, "relative_to_native")
        if r is not None:
            parts.append(f"{b} {r:.2f}x")
    return ", ".join(parts) or "not measured"


def against_literature(doc: dict) -> list[dict[str, str]]:
    """Rows of {source, claim, published, here, reading}."""
    vm = _vm(doc)
    emulated = vm == "vm-tcg"
    tcg_note = "emulated (TCG): software emulation, not virtualisation overhead; "
    rows = []

    here = _ratios(doc, "cpu", CONTAINERS) + "; sha256: " + _ratios(doc, "sha256", CONTAINERS)
    rows.append({
        "source": FELTER, "claim": "CPU-bound work in a container runs at native speed",
        "published": "LINPACK, STREAM: Docker within a few % of native",
        "here": here,
        "reading": "a container's process is a host process: same CPU, same kernel, no translation",
    })  # fmt: skip

    vm_cpu = _ratios(doc, "cpu", (vm,)) if vm else "no VM measured"
    rows.append({
        "source": FELTER, "claim": "CPU-bound work in a KVM VM is near native too",
        "published": "KVM within a few % of native on CPU-bound benchmarks",
        "here": vm_cpu,
        "reading": (tcg_note + "with KVM, guest instructions run directly on the CPU")
        if emulated else "guest code runs on the CPU; exits to the hypervisor are rare",
    })  # fmt: skip

    every = (*CONTAINERS, vm) if vm else CONTAINERS
    io = f"fileio: {_ratios(doc, 'fileio', every)}; syscalls: {_ratios(doc, 'syscall', every)}"
    rows.append({
        "source": FELTER, "claim": "I/O and latency-sensitive work is where a VM pays",
        "published": "KVM: far fewer random-I/O operations per second than native; "
        "Docker ~ native (except its NAT network)",
        "here": io,
        "reading": (tcg_note if emulated else "")
        + "a VM's write goes guest kernel -> virtual disk -> qemu -> host kernel; "
        "a container's goes straight to the host kernel (through overlayfs)",
    })  # fmt: skip

    boot = _median(doc, "start_to_ready", vm) if vm else None
    ct = _median(doc, "start_to_ready", "runc") or _median(doc, "start_to_ready", "minicontainer")
    here = (f"{vm} {boot * 1e3:.0f} ms" if boot else "no VM measured") + (
        f"; container {ct * 1e3:.0f} ms" if ct else ""
    )
    rows.append({
        "source": FIRECRACKER, "claim": "a minimal microVM boots in about 125 ms",
        "published": "~125 ms to the guest's init (KVM, minimal kernel config)",
        "here": here,
        "reading": (tcg_note + "every boot instruction is translated, so expect seconds")
        if emulated else "Debian's cloud kernel is larger than Firecracker's minimal one",
    })  # fmt: skip

    mem = None
    if vm:
        for m in doc.get("measurements", []):
            if m["metric"] == "idle_memory" and m["backend"] == vm:
                mem = m
    if mem:
        rss, pss = mem["extra"].get("rss", 0) / 2**20, mem["median"] / 2**20
        here = f"{vm}: {rss:.0f} MiB RSS, {pss:.0f} MiB PSS per idle VM"
    else:
        here = "no VM measured"
    rows.append({
        "source": FIRECRACKER, "claim": "a microVM costs < 5 MiB beyond its guest's memory",
        "published": "< 5 MiB per microVM (Firecracker's own VMM, not qemu)",
        "here": here,
        "reading": "qemu is a bigger VMM; the guest's touched RAM and (under TCG) the "
        "translation cache come on top of the VMM's own few MiB",
    })  # fmt: skip
    return rows


def markdown(doc: dict) -> str:
    head = "| source | claim | published | here | reading |\n|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['source']} | {r['claim']} | {r['published']} | {r['here']} | {r['reading']} |\n"
        for r in against_literature(doc)
    )
