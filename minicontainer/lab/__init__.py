"""Containers vs virtual machines, measured (the docker-vs-vm lab).

The same payload (static busybox + a small static C program, ``mcbench``) runs
under every backend: a plain process, ``unshare`` + chroot, minicontainer, runc,
Docker, and a qemu microVM (KVM when it really works here, else TCG emulation,
labelled as such everywhere). ``runner.run_lab`` measures start time, memory, CPU,
I/O, density and disk footprint and writes one JSON file, a Markdown table and
figures; ``python -m minicontainer.lab`` (``docker-vs-vm/run.py`` in a checkout) is
the one command that runs it.

Modules, in the order a run uses them:
    base       the contract: Probe, Run, Instance, Backend, workload names
    workload   builds mcbench and the payload root filesystem
    backends   native, unshare, minicontainer, runc, docker
    vmbackend  the qemu microVM backends (minicontainer.lab.vm builds and boots the guest)
    memory     RSS / PSS from /proc/PID/smaps_rollup
    stats      min / median / max and ratios
    cancel     Ctrl-C and SIGTERM: recorded, acted on where everything started is known
    runner     the measurements, in order (Lab, run_lab, measure)
    results    the JSON results file (schema: results.schema.json, here), Markdown
    plots      matplotlib figures
    stacks     graphviz pictures of the VM stack and the container stack
    vm/        the guest: kernel, initramfs, the KVM check, qemu
    cli        the command line (python -m minicontainer.lab, docker-vs-vm/run.py)
"""
