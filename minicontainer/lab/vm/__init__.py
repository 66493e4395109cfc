"""A benchmark microVM: a stock kernel, a pure-Python initramfs, qemu.

Modules, in the order a boot uses them:
    initramfs  the newc cpio writer (Documentation/driver-api/early-userspace/buffer-format.rst)
    guest      finds the kernel, packs payload + /init + virtio modules, formats a data disk
    kvm        is KVM really usable here (or only a software module)? else TCG emulation
    qemu       the qemu-system-x86_64 -M microvm command line, timed boots, idle instances
"""
