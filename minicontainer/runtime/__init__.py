"""The container runtime: what runc and containerd-shim do for Docker.

A container is an ordinary process that the kernel isolates with namespaces
(namespaces(7)) and limits with cgroups (cgroups(7)), in a root filesystem of
its own (pivot_root(2) into an overlayfs mount). These modules make one, in the
order ``run`` uses them:

    spec        what to run: roughly an OCI runtime-spec config.json (config.md)
    state       the state root on disk, and liveness checked against /proc
    container   the lifecycle (create, start, exec, stop, kill, logs, stats, rm)
    attach      the attach socket a detached container's supervisor serves (its frames)
    shim        clone(2) into new namespaces, the child's setup, execve(2), exec
                via setns(2); stays the container's parent (containerd-shim's job)
    namespaces  which namespaces, uid/gid maps (user_namespaces(7), newuidmap(1))
    cgroups     limits, stats, OOM, removal: one interface, v1 and v2 backends
    rootfs      inside the new mount namespace: overlay, /proc, /dev, /sys, volumes,
                pivot_root, masked paths (mount(2), mount_namespaces(7))
    security    Docker's default capabilities, no_new_privs (capabilities(7)), masked paths
    devices     the devices a container may open: v1 devices controller, v2 eBPF program
    init        the sealed init (mcinit.c, in a sealed memfd): no container process
                runs a host binary (runc's CVE-2019-5736)
    console     the pseudo-terminal for -t, made inside the container (pty(7))
    monitor     the small supervisor a detached container's shim becomes
    kernel      the only module with raw system calls (ctypes), and its fake

Nothing is imported here: ``minicontainer run`` loads only what it uses.
"""
