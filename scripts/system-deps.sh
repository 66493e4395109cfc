#!/usr/bin/env bash
# System packages minicontainer needs, checked one by one; called by `make setup`.
#
#   python3-venv    only if `python3 -m venv` cannot make a venv (and none exists yet)
#   graphviz        the `dot` binary that draws the notebooks' diagrams
#   busybox-static  a static busybox: the base images are built from it
#   uidmap          newuidmap/newgidmap: rootless containers with several uids
#   qemu-system-x86, linux-image-cloud-amd64, gcc, libc6-dev, e2fsprogs, lz4
#                   the docker-vs-vm lab (notebook 07): a qemu microVM booting Debian's
#                   cloud kernel, and the static C workload; optional (the lab skips
#                   the VM backend and says why)
#
# As root on Debian/Ubuntu: installs only the missing ones (apt-get update only if
# apt does not know a package yet). Not root: prints the exact sudo line, goes on
# when what is missing is optional, stops when it is essential. Other systems: says
# what is needed. Installs nothing when all is there, so a second run is quick.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

missing=()   # Debian package names
essential=() # the subset without which setup cannot go on
why=()       # one line per missing thing, for non-Debian systems

need() { # need PKG ESSENTIAL(0/1) "what it is for"
    missing+=("$1")
    why+=("  - $1: $3")
    if [ "$2" = 1 ]; then essential+=("$1"); fi
}

is_debian() { command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; }

have_pkg() { # installed according to dpkg
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# 1. python3 -m venv, only when .venv has to be made.
if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        need python3 1 "Python 3.10 or newer ($PYTHON not found)"
    else
        # Fast check first (Debian ships ensurepip in python3.X-venv); if it says
        # no, make a throw-away venv to be sure.
        if ! "$PYTHON" -c 'import venv, ensurepip; ensurepip.version()' >/dev/null 2>&1; then
            tmp=$(mktemp -d)
            if ! "$PYTHON" -m venv "$tmp/v" >/dev/null 2>&1; then
                need python3-venv 1 "'$PYTHON -m venv' fails (the venv module or ensurepip is missing)"
            fi
            rm -rf "$tmp"
        fi
    fi
fi

# 2. graphviz: the `dot` binary (the Python binding comes from pip).
command -v dot >/dev/null 2>&1 || need graphviz 0 "the 'dot' binary (diagrams in the notebooks)"

# 3. A static busybox for the base images.
if is_debian; then
    have_pkg busybox-static || need busybox-static 1 "a statically linked busybox (base images)"
else
    bb=$(command -v busybox || true)
    if [ -z "$bb" ] || ! { file -L "$bb" 2>/dev/null | grep -q 'statically linked'; }; then
        need busybox-static 1 "a statically linked busybox (base images)"
    fi
fi

# 4. newuidmap/newgidmap for rootless containers.
if ! command -v newuidmap >/dev/null 2>&1 || ! command -v newgidmap >/dev/null 2>&1; then
    need uidmap 0 "newuidmap/newgidmap (rootless containers)"
fi

# 5. The docker-vs-vm lab: qemu, a guest kernel, a C compiler with static libc,
#    mkfs.ext4 for the guest's data disk. All optional.
command -v qemu-system-x86_64 >/dev/null 2>&1 || need qemu-system-x86 0 "qemu (the VM in the docker-vs-vm lab)"
if is_debian; then
    have_pkg linux-image-cloud-amd64 || ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 ||
        need linux-image-cloud-amd64 0 "a small guest kernel for the lab's microVM"
    have_pkg libc6-dev || need libc6-dev 0 "static libc for the lab's C workload"
fi
command -v gcc >/dev/null 2>&1 || need gcc 0 "the lab's static C workload"
command -v mkfs.ext4 >/dev/null 2>&1 || need e2fsprogs 0 "the lab VM's data disk"
command -v lz4 >/dev/null 2>&1 || need lz4 0 "unpacking the guest kernel once (each TCG boot ~1 s faster)"

if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi

if ! is_debian; then
    echo "system packages: this is not a Debian-like system; please install:" >&2
    printf '%s\n' "${why[@]}" >&2
    if [ ${#essential[@]} -gt 0 ]; then exit 1; fi
    echo "(optional ones: going on without them)" >&2
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "system packages missing: ${missing[*]}" >&2
    printf '%s\n' "${why[@]}" >&2
    echo "run:  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    if [ ${#essential[@]} -gt 0 ]; then
        echo "(${essential[*]} essential: stopping here)" >&2
        exit 1
    fi
    echo "(all optional: going on without them)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
updated=0
for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
        echo "+ apt-get update"
        apt-get update -q
        updated=1
        break
    fi
done
echo "+ apt-get install -y --no-install-recommends ${missing[*]}"
if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    if [ "$updated" = 1 ]; then exit 1; fi
    # Stale package lists (a 404 on an old version): update once and retry.
    echo "+ apt-get update"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
