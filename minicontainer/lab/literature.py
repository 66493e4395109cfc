"""What the literature measured, next to what this machine measured, and whether
the two agree.

- Felter, Ferreira, Rajamony, Rubio, "An Updated Performance Comparison of Virtual
  Machines and Linux Containers", ISPASS 2015 (IBM Research Report RC25482):
  Docker equals or beats KVM almost everywhere; CPU-bound work is near-native in
  both; I/O- and latency-sensitive work is where the VM pays (every I/O goes
  through the guest kernel, a virtual device and the host).
- Agache et al., "Firecracker: Lightweight Virtualization for Serverless
  Applications", NSDI 2020: a microVM boots in ~125 ms, costs < 5 MiB of memory
  beyond its guest, and a host can start 150 microVMs per second.

Each row's ``reading`` is worked out from the document's figures, so two runs that
measured differently read differently: it starts with "matches", "does not match",
"not comparable" (the VM was emulated (TCG): TCG figures are never read as virtualisation
overhead) or "not measured", then gives the numbers it decided on. "Within noise"
means within ``NEAR`` of native or with a min–max range that overlaps native's own.
"""

from __future__ import annotations

FELTER = "Felter et al., ISPASS 2015"
FIRECRACKER = "Firecracker, NSDI 2020"

CONTAINERS = ("minicontainer", "runc", "docker")
VMS = ("vm-kvm", "vm-tcg")
NEAR = 0.05  # "within a few %" of native: Felter's words for LINPACK and STREAM
FIRECRACKER_BOOT_S = 0.125
FIRECRACKER_OVERHEAD = 5 << 20
DEFAULT_GUEST_MEMORY = 128 << 20  # the lab's qemu -m, for runs that did not record it
MIB = 1 << 20


def _find(doc: dict, metric: str, backend: str) -> dict | None:
    for m in doc.get("measurements", []):
        if m["metric"] == metric and m["backend"] == backend:
            return m
    return None


def _vm(doc: dict) -> str | None:
    """The VM backend the document measured (KVM preferred), or None."""
    for b in VMS:
        if any(m["backend"] == b for m in doc.get("measurements", [])):
            return b
    return None


def near_native(doc: dict, metric: str, backend: str) -> tuple[float, bool] | None:
    """(× native, within noise?) of one rate metric, or None if not measured. Within
    noise: within NEAR of 1.0, or the backend's min–max (relative to native's median)
    overlaps native's own min–max."""
    m, nat = _find(doc, metric, backend), _find(doc, metric, "native")
    r = m and m.get("relative_to_native")
    if r is None:
        return None
    if abs(r - 1.0) <= NEAR:
        return r, True
    if nat is None or not nat["median"]:
        return r, False
    scale = r / m["median"] if m["median"] else 0.0  # 1 / native median
    lo, hi = m["min"] * scale, m["max"] * scale
    nat_lo, nat_hi = nat["min"] / nat["median"], nat["max"] / nat["median"]
    return r, lo <= nat_hi and nat_lo <= hi


def _ratios(doc: dict, metric: str, backends: tuple[str, ...]) -> str:
    parts = []
    for b in backends:
        found = near_native(doc, metric, b)
        if found is not None:
            parts.append(f"{b} {found[0]:.2f}x")
    return ", ".join(parts) or "not measured"


def _containers_cpu(doc: dict) -> str:
    near, off = [], []
    for metric in ("cpu", "sha256"):
        for b in CONTAINERS:
            found = near_native(doc, metric, b)
            if found is not None:
                (near if found[1] else off).append(f"{b} {metric} {found[0]:.2f}x")
    if not near and not off:
        return "not measured: no container ran the CPU workloads"
    if not off:
        return (
            f"matches Felter: every container ran the CPU work at native speed within noise "
            f"({', '.join(near)}): a container's process is a host process, on the same CPU "
            "and kernel, with nothing translated"
        )
    return (
        f"does not match Felter for {', '.join(off)}: outside native's own min–max"
        + (f" (within noise: {', '.join(near)})" if near else "")
        + "; a busy machine shows up as a wide min–max, look at the ranges"
    )


def _vm_cpu(doc: dict, vm: str | None) -> str:
    found = near_native(doc, "cpu", vm) if vm else None
    if found is None:
        return "not measured: no VM ran the CPU loop" if vm else "not measured: no VM ran here"
    r, near = found
    if vm == "vm-tcg":
        speed = "as fast as native" if near else f"{'slower' if r < 1 else 'faster'} than native"
        return (
            f"not comparable, emulated (TCG): the guest ran the CPU loop at {r:.2f}x native, "
            f"{speed}, with every instruction translated in software; Felter's claim is "
            "about KVM, where the CPU runs guest code itself"
        )
    if near:
        return f"matches Felter: the KVM guest ran the CPU loop at {r:.2f}x native, within noise"
    return (
        f"does not match Felter: the KVM guest ran the CPU loop at {r:.2f}x native, outside "
        "noise (nested or software-assisted KVM, or a busy host?)"
    )


def _vm_io(doc: dict, vm: str | None) -> str:
    if vm is None:
        return "not measured: no VM ran here"
    compared = []
    for metric in ("fileio", "syscall"):
        mine = near_native(doc, metric, vm)
        theirs = [f[0] for b in CONTAINERS if (f := near_native(doc, metric, b))]
        if mine is not None and theirs:
            compared.append((metric, mine[0], min(theirs)))
    if not compared:
        return f"not measured: no I/O figures of {vm} and a container to compare"
    pays = [(m, v, c) for m, v, c in compared if v < c]
    said = "; ".join(f"{m} {v:.2f}x vs containers ≥ {c:.2f}x" for m, v, c in compared)
    if vm == "vm-tcg":
        return (
            f"not comparable, emulated (TCG): {said}; the VM "
            + ("is slower" if pays else "is not slower")
            + ", but under emulation the guest kernel's own code is translated too, so "
            "the cost of virtual I/O cannot be told apart from the cost of emulation"
        )
    if len(pays) == len(compared):
        return (
            f"matches Felter: {said}: a VM's write goes guest kernel -> virtual disk -> "
            "qemu -> host kernel, a container's straight to the host kernel"
        )
    return f"does not match Felter: {said}: the VM does not pay more than the containers here"


def _boot(doc: dict, vm: str | None) -> str:
    m = _find(doc, "start_to_ready", vm) if vm else None
    if m is None:
        return "not measured: no VM boot was timed"
    s = m["median"]
    times = s / FIRECRACKER_BOOT_S
    if vm == "vm-tcg":
        return (
            f"not comparable, emulated (TCG): {s * 1e3:.0f} ms to ready, {times:.0f}x "
            "Firecracker's 125 ms, with every boot instruction translated in software"
        )
    if times <= 2:
        return f"matches Firecracker: {s * 1e3:.0f} ms to ready, the same order as 125 ms"
    return (
        f"does not match Firecracker: {s * 1e3:.0f} ms to ready, {times:.1f}x its 125 ms "
        "(Debian's cloud kernel and qemu, not Firecracker's minimal kernel and VMM)"
    )


def _memory(doc: dict, vm: str | None) -> str:
    m = _find(doc, "idle_memory", vm) if vm else None
    if m is None:
        return "not measured: no idle VM's memory"
    guest = m["extra"].get("guest_memory_bytes") or DEFAULT_GUEST_MEMORY
    beyond = m["median"] - guest  # at least this much is not guest RAM
    tcg = " (under TCG its translation cache is part of that)" if vm == "vm-tcg" else ""
    if beyond > FIRECRACKER_OVERHEAD:
        return (
            f"does not match Firecracker: {m['median'] / MIB:.0f} MiB PSS per idle VM, so even "
            f"if the guest had touched all its {guest / MIB:.0f} MiB, qemu holds "
            f"{beyond / MIB:.0f} MiB more{tcg}: qemu is a bigger VMM than Firecracker"
        )
    return (
        f"cannot tell from PSS alone: {m['median'] / MIB:.0f} MiB PSS per idle VM with "
        f"{guest / MIB:.0f} MiB of guest RAM, of which the guest touched an unknown part; "
        f"not more than {FIRECRACKER_OVERHEAD // MIB} MiB beyond the whole guest RAM{tcg}"
    )


def against_literature(doc: dict) -> list[dict[str, str]]:
    """Rows of {source, claim, published, here, reading}; see the module docstring."""
    vm = _vm(doc)
    rows = []
    here = _ratios(doc, "cpu", CONTAINERS) + "; sha256: " + _ratios(doc, "sha256", CONTAINERS)
    rows.append({
        "source": FELTER, "claim": "CPU-bound work in a container runs at native speed",
        "published": "LINPACK, STREAM: Docker within a few % of native",
        "here": here, "reading": _containers_cpu(doc),
    })  # fmt: skip
    rows.append({
        "source": FELTER, "claim": "CPU-bound work in a KVM VM is near native too",
        "published": "KVM within a few % of native on CPU-bound benchmarks",
        "here": _ratios(doc, "cpu", (vm,)) if vm else "no VM measured",
        "reading": _vm_cpu(doc, vm),
    })  # fmt: skip
    every = (*CONTAINERS, vm) if vm else CONTAINERS
    io = f"fileio: {_ratios(doc, 'fileio', every)}; syscalls: {_ratios(doc, 'syscall', every)}"
    rows.append({
        "source": FELTER, "claim": "I/O and latency-sensitive work is where a VM pays",
        "published": "KVM: far fewer random-I/O operations per second than native; "
        "Docker ~ native (except its NAT network)",
        "here": io, "reading": _vm_io(doc, vm),
    })  # fmt: skip
    boot = _find(doc, "start_to_ready", vm) if vm else None
    ct = _find(doc, "start_to_ready", "runc") or _find(doc, "start_to_ready", "minicontainer")
    here = (f"{vm} {boot['median'] * 1e3:.0f} ms" if boot else "no VM measured") + (
        f"; container {ct['median'] * 1e3:.0f} ms" if ct else ""
    )
    rows.append({
        "source": FIRECRACKER, "claim": "a minimal microVM boots in about 125 ms",
        "published": "~125 ms to the guest's init (KVM, minimal kernel config)",
        "here": here, "reading": _boot(doc, vm),
    })  # fmt: skip
    mem = _find(doc, "idle_memory", vm) if vm else None
    if mem:
        rss, pss = mem["extra"].get("rss", 0) / MIB, mem["median"] / MIB
        here = f"{vm}: {rss:.0f} MiB RSS, {pss:.0f} MiB PSS per idle VM"
    else:
        here = "no VM measured"
    rows.append({
        "source": FIRECRACKER, "claim": "a microVM costs < 5 MiB beyond its guest's memory",
        "published": "< 5 MiB per microVM (Firecracker's own VMM, not qemu)",
        "here": here, "reading": _memory(doc, vm),
    })  # fmt: skip
    return rows


def markdown(doc: dict) -> str:
    head = "| source | claim | published | here | reading |\n|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['source']} | {r['claim']} | {r['published']} | {r['here']} | {r['reading']} |\n"
        for r in against_literature(doc)
    )
