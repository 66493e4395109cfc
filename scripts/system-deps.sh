#!/usr/bin/env bash
# The system packages minicontainer needs: the ONE list, used by `make lab` and
# `make test` (and so by CI: .ci/run calls `make test`).
#
#   scripts/system-deps.sh          everything (make setup, make test)
#   scripts/system-deps.sh --lab    only what the notebooks use (make lab), not the
#                                   tools that only the tests compare with
#
# Each entry: the Debian package, how to tell it is already there (a command or a
# file, so that the same tool installed another way, e.g. Docker's own docker-ce,
# counts and is never replaced), whether setup can go on without it, who needs it
# (lab: the notebooks and the tests; test: the tests only), and why.
#
# As root on Debian/Ubuntu: installs only the missing ones (apt-get update only when
# apt does not know a package yet). Not root: prints the exact `sudo apt-get install`
# line; goes on when only optional ones are missing, stops when an essential one is.
# Other systems: says what is needed. Installs nothing when all is there.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WANT=all
case "${1:-}" in
    --lab) WANT=lab ;;
    "") ;;
    *) echo "usage: $0 [--lab]" >&2; exit 2 ;;
esac

#      package                  present when                          essential  for  why
PACKAGES=(
    "make                     cmd:make                                1  lab   the README's two commands"
    "graphviz                 cmd:dot                                 1  lab   the notebooks' diagrams (the dot binary)"
    "busybox-static           static-busybox                          1  lab   the base images are built from a static busybox"
    "uidmap                   cmd:newuidmap                           0  lab   rootless containers with several uids (newuidmap/newgidmap)"
    "passwd                   cmd:useradd                             0  test  the rootless tests create an unprivileged user"
    "procps                   cmd:pkill                               0  lab   ps/pkill in the tests"
    "iproute2                 cmd:ip                                  0  lab   network devices seen from inside and outside (notebook 01)"
    "nftables                 cmd:nft                                 0  lab   published ports and outbound NAT: the nft(8) JSON interface"
    "passt                    cmd:pasta                               0  lab   rootless networking: pasta gives a rootless container outbound and published ports"
    "kmod                     cmd:modprobe                            0  lab   loading overlay when it is a module"
    "docker.io                cmd:dockerd                             0  lab   Docker itself: interop tests, notebook 03, the docker-vs-vm lab"
    "skopeo                   cmd:skopeo                              0  test  interop: copying images in and out of OCI layouts"
    "umoci                    cmd:umoci                               0  test  interop: unpacking our OCI layouts into a runc bundle"
    "runc                     cmd:runc                                0  lab   interop and the lab: the OCI runtime Docker uses"
    "docker-registry          cmd:docker-registry                     0  test  the reference registry that push/pull are tested against"
    "qemu-system-x86          cmd:qemu-system-x86_64                  0  lab   the VM in the docker-vs-vm lab (notebook 07)"
    "linux-image-cloud-amd64  glob:/boot/vmlinuz-*-cloud-amd64        0  lab   a small guest kernel for the lab's microVM"
    "gcc                      cmd:gcc                                 1  lab   the sealed init every container starts with (built once), the lab's workload"
    "libc6-dev                glob:/usr/lib/*-linux-gnu/libc.a        1  lab   static libc for the sealed init and the lab's workload"
    "e2fsprogs                cmd:mkfs.ext4                           0  lab   the lab VM's data disk"
    "lz4                      cmd:lz4                                 0  lab   unpacking the guest kernel once (each TCG boot ~1 s faster)"
    "chromium                 file:/usr/bin/chromium                  0  test  the browser test of the notebooks' widgets"
    "fonts-noto-cjk           glob:/usr/share/fonts/opentype/noto/NotoSansCJK-*  0  lab   Korean (and CJK) text in the browser and the figures"
)

is_debian() { command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; }

present() { # present TEST
    case "$1" in
        # sbin too: an ordinary user's PATH lacks it, where dockerd and useradd live.
        cmd:*) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "${1#cmd:}" >/dev/null 2>&1 ;;
        file:*) [ -e "${1#file:}" ] ;;
        glob:*) compgen -G "${1#glob:}" >/dev/null 2>&1 ;;
        static-busybox)
            local bb
            for bb in /bin/busybox /usr/bin/busybox "$(command -v busybox || true)"; do
                [ -n "$bb" ] && [ -x "$bb" ] && ! LC_ALL=C ldd "$bb" >/dev/null 2>&1 && return 0
            done
            return 1
            ;;
        *) echo "system-deps.sh: unknown test $1" >&2; exit 2 ;;
    esac
}

missing=()   # Debian package names
essential=() # the subset without which setup cannot go on
why=()       # one line per missing package

# python3 -m venv, only when .venv has to be made.
if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        missing+=(python3) essential+=(python3) why+=("  - python3: Python 3.10 or newer ($PYTHON not found)")
    elif ! "$PYTHON" -c 'import venv, ensurepip; ensurepip.version()' >/dev/null 2>&1; then
        # Debian ships ensurepip in python3.X-venv; make a throw-away venv to be sure.
        tmp=$(mktemp -d)
        if ! "$PYTHON" -m venv "$tmp/v" >/dev/null 2>&1; then
            missing+=(python3-venv) essential+=(python3-venv)
            why+=("  - python3-venv: '$PYTHON -m venv' fails (the venv module or ensurepip is missing)")
        fi
        rm -rf "$tmp"
    fi
fi

for entry in "${PACKAGES[@]}"; do
    read -r pkg test must for what <<<"$entry"
    [ "$WANT" = all ] || [ "$for" = lab ] || continue
    present "$test" && continue
    missing+=("$pkg")
    why+=("  - $pkg: $what")
    if [ "$must" = 1 ]; then essential+=("$pkg"); fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi

if ! is_debian; then
    echo "system packages: this is not a Debian-like system; please install the equivalents of:" >&2
    printf '%s\n' "${why[@]}" >&2
    if [ ${#essential[@]} -gt 0 ]; then exit 1; fi
    echo "(all optional: going on without them; the tests that need them say so)" >&2
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
    echo "(all optional: going on without them; the tests that need them say so)" >&2
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
