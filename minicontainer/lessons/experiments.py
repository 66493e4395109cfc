"""The experiments the notebooks run, as functions that return data.

A notebook cell calls one of these and shows what it returns; the widgets in
``minicontainer.lessons.viz.widgets`` call them too; ``tests/test_experiments.py`` runs
them for real. Nothing here prints. The pieces that need no kernel at all
(building shell scripts, parsing their output) are separate pure functions.

Every command that runs both on the host and in a container runs with the
*same* program, the host's static busybox (the one the ``busybox`` image is
built from), so that a difference between inside and outside comes from the
namespaces or cgroups, never from two different versions of ``ps``.
"""

from __future__ import annotations

import contextlib
import html
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime import namespaces as ns

IMAGE = "busybox"

# --------------------------------------------------------------------------
# Running one command inside and outside
# --------------------------------------------------------------------------


def busybox() -> str:
    """The host's static busybox (what the busybox image holds)."""
    from ..image.bootstrap import find_busybox

    return str(find_busybox())


def _argv(command: str | list[str], bb: str | None = None) -> list[str]:
    """A shell string runs under busybox sh; a list runs as given."""
    if isinstance(command, str):
        return [bb or busybox(), "sh", "-c", command]
    return list(command)


def _container_argv(command: str | list[str]) -> list[str]:
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


def container_options(names: list[str] | tuple[str, ...], hostname: str | None = None) -> dict:
    """``Runtime.run`` options for a container with exactly these namespaces.
    Without a net namespace the container shares the host's network (``network="host"``)."""
    names = [n for n in ns.ALL if n in names]
    opts: dict = {
        "namespaces": names,
        "network": "none" if "net" in names else "host",
        "remove": True,
    }
    if "uts" in names and hostname:
        opts["hostname"] = hostname
    return opts


@dataclass
class InsideOutside:
    """The same command, run on the host (outside) and in new namespaces (inside)."""

    command: str
    namespaces: list[str]
    outside: str
    inside: str
    inside_exit: int = 0
    where: str = "host command in new namespaces"

    @property
    def same(self) -> bool:
        return self.outside == self.inside

    def _repr_html_(self) -> str:
        e = html.escape
        ns_text = ", ".join(self.namespaces) or "none"
        return (
            '<table class="minicontainer-io">'
            f'<caption style="text-align:left"><code>{e(self.command)}</code> '
            f"({e(self.where)}; new namespaces: {e(ns_text)})</caption>"
            "<tr><th>outside (the host)</th><th>inside</th></tr>"
            f'<tr><td style="text-align:left;vertical-align:top"><pre>{e(self.outside)}</pre></td>'
            f'<td style="text-align:left;vertical-align:top"><pre>{e(self.inside)}</pre></td></tr>'
            "</table>"
        )

    def __str__(self) -> str:
        def block(title: str, text: str) -> str:
            body = "\n".join("  " + line for line in text.rstrip("\n").splitlines())
            return f"{title}:\n{body or '  (nothing)'}"

        return "\n".join(
            [
                f"$ {self.command}    # new namespaces: {', '.join(self.namespaces) or 'none'}",
                block("outside", self.outside),
                block("inside", self.inside),
            ]
        )

    def _repr_pretty_(self, p, cycle: bool) -> None:  # type: ignore[no-untyped-def]
        p.text(str(self))


def run_outside(command: str | list[str], timeout: float = 30) -> str:
    """Run on the host, in the notebook's own namespaces."""
    proc = subprocess.run(
        _argv(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    return proc.stdout


def run_inside(
    rt,  # type: ignore[no-untyped-def]
    command: str | list[str],
    names: list[str] | tuple[str, ...],
    *,
    hostname: str | None = None,
    **options,
) -> tuple[str, int]:
    """Run in new namespaces: with ``rt`` a Runtime, in a busybox container with exactly
    ``names``; with ``rt=None``, as a host command (``namespaces.run_in``, like unshare(1)).
    Returns (stdout and stderr, exit code)."""
    names = list(names)
    if rt is None:
        proc = ns.run_in(names, _argv(command), hostname=hostname)
        return proc.stdout, proc.returncode
    opts = container_options(names, hostname)
    opts.update(options)
    result = rt.run(IMAGE, _container_argv(command), **opts)
    return result.stdout + result.stderr, result.exit_code


def same_command_inside_outside(
    rt,  # type: ignore[no-untyped-def]
    command: str | list[str],
    namespaces: list[str] | tuple[str, ...],
    *,
    hostname: str | None = "minicontainer",
    **options,
) -> InsideOutside:
    """Run ``command`` on the host and in new ``namespaces`` (a container when ``rt``
    is a Runtime, a host command when ``rt`` is None), and return both outputs."""
    outside = run_outside(command)
    inside, code = run_inside(rt, command, namespaces, hostname=hostname, **options)
    return InsideOutside(
        command=command if isinstance(command, str) else shlex.join(command),
        namespaces=[n for n in ns.ALL if n in namespaces],
        outside=outside,
        inside=inside,
        inside_exit=code,
        where="host command in new namespaces" if rt is None else "busybox container",
    )


# --------------------------------------------------------------------------
# Looking around: everything the namespaces change, in one script
# --------------------------------------------------------------------------

# Builtins only where it matters (read, for, set): no forks to count in the process list.
LOOK_AROUND = r"""
echo @hostname; hostname
echo @processes; cd /proc
for p in [0-9]*; do c=; read -r c < "$p/comm" 2>/dev/null; echo "$p $c"; done; cd /
echo @net; while read -r line; do case $line in *:*) echo "${line%%:*}";; esac; done < /proc/net/dev
echo @id; id
echo @mounts; n=0; while read -r line; do n=$((n+1)); done < /proc/self/mounts; echo $n
echo @uid_map; cat /proc/self/uid_map
echo @shm; n=-1; while read -r line; do n=$((n+1)); done < /proc/sysvipc/shm; echo $n
echo @cgroup; cat /proc/self/cgroup
""".strip()


@dataclass
class View:
    """What a process sees of the machine."""

    hostname: str = ""
    processes: list[tuple[int, str]] = field(default_factory=list)
    net_devices: list[str] = field(default_factory=list)
    ids: str = ""
    mounts: int = 0
    uid_map: str = ""
    shm_segments: int = 0
    cgroup: str = ""
    error: str = ""


def parse_view(text: str) -> View:
    """Parse LOOK_AROUND's output (``@section`` lines, then that section's lines)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@") and line[1:].isidentifier():
            current = line[1:]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)

    def one(name: str) -> str:
        return "\n".join(sections.get(name, [])).strip()

    def number(name: str) -> int:
        try:
            return int(one(name))
        except ValueError:
            return 0

    processes = []
    for line in sections.get("processes", []):
        pid, _, comm = line.partition(" ")
        if pid.isdigit():
            processes.append((int(pid), comm.strip()))
    processes.sort()
    uid_map = "\n".join(" ".join(line.split()) for line in sections.get("uid_map", []) if line)
    return View(
        hostname=one("hostname"),
        processes=processes,
        net_devices=[d.strip() for d in sections.get("net", []) if d.strip()],
        ids=one("id"),
        mounts=number("mounts"),
        uid_map=uid_map,
        shm_segments=max(number("shm"), 0),
        cgroup=one("cgroup"),
    )


def view(
    names: list[str] | tuple[str, ...] | None = None,
    rt=None,  # type: ignore[no-untyped-def]
    *,
    hostname: str = "minicontainer",
) -> View:
    """What LOOK_AROUND sees: on the host (``names`` None), or inside new ``names``
    namespaces (a busybox container if ``rt`` is a Runtime, else a host command)."""
    if names is None:
        return parse_view(run_outside(LOOK_AROUND))
    text, code = run_inside(rt, LOOK_AROUND, names, hostname=hostname)
    result = parse_view(text)
    if code != 0 and "@cgroup" not in text:
        result.error = text.strip() or f"exit code {code}"
    return result


def look_around(
    names: list[str] | tuple[str, ...],
    rt=None,  # type: ignore[no-untyped-def]
    *,
    hostname: str = "minicontainer",
) -> dict[str, View]:
    """Run LOOK_AROUND outside and inside new ``names`` namespaces:
    ``{"outside": View, "inside": View}``. A refusal (the kernel says no to some
    combination) comes back as ``inside.error``, not as an exception."""
    outside = parse_view(run_outside(LOOK_AROUND))
    try:
        text, code = run_inside(rt, LOOK_AROUND, names, hostname=hostname)
    except Exception as e:  # noqa: BLE001 - show the refusal to the student
        return {"outside": outside, "inside": View(error=str(e))}
    inside = parse_view(text)
    if code != 0 and "@cgroup" not in text:
        inside.error = text.strip() or f"exit code {code}"
    return {"outside": outside, "inside": inside}


def _processes_text(procs: list[tuple[int, str]], limit: int = 6) -> str:
    shown = ", ".join(f"{pid} {comm}" for pid, comm in procs[:limit])
    more = f", … ({len(procs)} in all)" if len(procs) > limit else ""
    return shown + more


# (label, what to show of a View, the namespace that changes it)
ROWS: tuple[tuple[str, str], ...] = (
    ("hostname", "uts"),
    ("processes (PID command)", "pid"),
    ("network devices", "net"),
    ("id", "user"),
    ("uid_map", "user"),
    ("mounts", "mnt"),
    ("System V shared memory segments", "ipc"),
    ("cgroup", "cgroup"),
)


def view_rows(outside: View, inside: View) -> list[tuple[str, str, str, str, bool]]:
    """(what, namespace, outside, inside, differs) per row, for tables and widgets."""

    def show(v: View) -> list[str]:
        return [
            v.hostname,
            _processes_text(v.processes),
            ", ".join(v.net_devices),
            v.ids,
            v.uid_map.replace("\n", " / "),
            f"{v.mounts} mounts",
            str(v.shm_segments),
            v.cgroup.replace("\n", " / "),
        ]

    rows = []
    for (label, nsname), out, ins in zip(ROWS, show(outside), show(inside), strict=True):
        rows.append((label, nsname, out, ins, out != ins))
    return rows


def views_html(views: dict[str, View], names: list[str] | tuple[str, ...] = ()) -> str:
    """The look_around result as an HTML table, differences in bold, all escaped."""
    e = html.escape
    inside = views["inside"]
    if inside.error:
        return (
            f'<p style="color:#cf222e"><b>The kernel refused:</b> {e(inside.error)}</p>'
            "<p>Hint: in a container, a new user namespace without a new pid namespace "
            "cannot mount a fresh <code>/proc</code>; tick <b>pid</b> too.</p>"
        )
    body = []
    for label, nsname, out, ins, differs in view_rows(views["outside"], inside):
        mark = "✔ isolated" if differs else "shared"
        style = "font-weight:bold" if differs else "color:#666"
        changed = " (new)" if nsname in names else ""
        body.append(
            f'<tr style="{style}"><td style="text-align:left">{e(label)}</td>'
            f"<td>{e(nsname)}{e(changed)}</td>"
            f'<td style="text-align:left"><code>{e(out)}</code></td>'
            f'<td style="text-align:left"><code>{e(ins)}</code></td><td>{e(mark)}</td></tr>'
        )
    return (
        '<table class="minicontainer-views"><thead><tr><th>what</th><th>namespace</th>'
        "<th>outside</th><th>inside</th><th></th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


# --------------------------------------------------------------------------
# One namespace at a time: small demonstrations that print stable facts
# --------------------------------------------------------------------------


def mount_demo() -> dict[str, str]:
    """Mount a tmpfs inside a new mount namespace: only the inside sees it."""
    with tempfile.TemporaryDirectory(prefix="mc-mnt-demo-") as where:
        script = (
            f"mount -t tmpfs mc-demo {where} && echo hello > {where}/file && "
            f"grep -c '^mc-demo ' /proc/self/mounts; ls {where}"
        )
        inside = ns.run_in(["mnt"], _argv(script)).stdout
        outside = run_outside(f"grep -c '^mc-demo ' /proc/self/mounts; ls {where}")
    return {"inside": inside, "outside": outside}


@contextlib.contextmanager
def _shm_segment(key: int, size: int = 4096) -> Iterator[int]:
    """A System V shared memory segment, removed afterwards (shmget/shmctl)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_creat, ipc_rmid = 0o1000, 0
    shmid = libc.shmget(ctypes.c_int(key), ctypes.c_size_t(size), ipc_creat | 0o600)
    if shmid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"shmget: {os.strerror(err)}")
    try:
        yield shmid
    finally:
        libc.shmctl(shmid, ipc_rmid, None)


def ipc_demo(key: int = 0x6D630001) -> dict[str, bool]:
    """Create a System V shared memory segment on the host and look for it
    (in /proc/sysvipc/shm) outside and inside a new IPC namespace."""
    look = f"grep -q '^ *{key} ' /proc/sysvipc/shm && echo yes || echo no"
    with _shm_segment(key):
        outside = run_outside(look).strip() == "yes"
        inside = ns.run_in(["ipc"], _argv(look)).stdout.strip() == "yes"
    return {"outside_sees_segment": outside, "inside_sees_segment": inside}


def user_namespace_demo(uid: int = 65534) -> InsideOutside:
    """What an ordinary user gets from a user namespace: run ``id`` and read the
    uid map as ``uid`` (nobody by default) outside, and inside
    ``unshare --user --map-root-user``, where that user is root.
    As root we become ``uid`` with setpriv(1) first; otherwise we stay ourselves."""
    cmd = "id; cat /proc/self/uid_map"
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    bb = busybox()

    def run(argv: list[str]) -> str:
        proc = subprocess.run(
            prefix + argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            cwd="/",
        )
        return proc.stdout

    unshare = shutil.which("unshare") or "unshare"
    outside = run([bb, "sh", "-c", cmd])
    inside = run([unshare, "--user", "--map-root-user", bb, "sh", "-c", cmd])
    return InsideOutside(
        command=cmd,
        namespaces=["user"],
        outside=_squeeze_maps(outside),
        inside=_squeeze_maps(inside),
        where=f"as uid {uid}, with unshare --user --map-root-user",
    )


def _squeeze_maps(text: str) -> str:
    """uid_map columns are padded with spaces: one space is enough to read them."""
    return "\n".join(" ".join(line.split()) for line in text.splitlines()) + "\n"


def namespace_links(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/ns/*`` for the seven namespaces a container uses."""
    return ns.inodes(pid)


# --------------------------------------------------------------------------
# cgroups: memory, CPU, processes
# --------------------------------------------------------------------------


@dataclass
class OomResult:
    memory: str
    command: str
    exit_code: int
    oom_killed: bool
    stderr: str = ""

    @property
    def signal(self) -> int | None:
        """128 + N is how a shell reports death by signal N: 137 is SIGKILL (9)."""
        return self.exit_code - 128 if self.exit_code > 128 else None


def oom_demo(rt, memory: str = "32m") -> OomResult:  # type: ignore[no-untyped-def]
    """``tail /dev/zero`` keeps a whole "line" in memory, and /dev/zero has no
    newline: it allocates until the cgroup's memory limit stops it, and the
    kernel's OOM killer kills it (SIGKILL: exit code 137)."""
    command = ["tail", "/dev/zero"]
    result = rt.run(IMAGE, command, memory=memory, remove=True)
    return OomResult(
        memory, shlex.join(command), result.exit_code, result.oom_killed, result.stderr
    )


# Many busy loops for exactly `seconds` of wall time, then the CPU time they got,
# from the shell's own /proc/self/stat (fields 16-17: cutime, cstime = the CPU time
# of its waited-for children, in clock ticks). Read with the `read` builtin, so
# /proc/self is the shell itself.
CPU_SCRIPT = r"""
N={workers}; W={seconds}
j=0
while [ $j -lt $N ]; do
  j=$((j+1))
  ( i=0; trap 'echo "loops $i"; exit 0' TERM; while :; do i=$((i+1)); done ) &
done
sleep $W
kill $(jobs -p)
wait
read -r line < /proc/self/stat
set -- $line
shift 15
echo "ticks $1 $2"
""".strip()


@dataclass
class CpuPoint:
    cpus: float  # the --cpus given
    seconds: float  # wall time the loops ran
    cpu_seconds: float  # CPU time they got
    loops: int  # loop iterations done (the "work")

    @property
    def cpus_used(self) -> float:
        """CPU time per second of wall time: what --cpus limits."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def loops_per_second(self) -> float:
        return self.loops / self.seconds if self.seconds else 0.0


def cpu_script(workers: int, seconds: float) -> str:
    return CPU_SCRIPT.format(workers=int(workers), seconds=f"{seconds:g}")


def parse_cpu_output(text: str, clock_ticks: int | None = None) -> tuple[float, int]:
    """(CPU seconds, loop iterations) from CPU_SCRIPT's output."""
    ticks_per_second = clock_ticks or os.sysconf("SC_CLK_TCK")
    loops, ticks = 0, 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "loops" and parts[1].isdigit():
            loops += int(parts[1])
        elif len(parts) == 3 and parts[0] == "ticks":
            ticks = int(parts[1]) + int(parts[2])
    return ticks / ticks_per_second, loops


def cpu_throughput(
    rt,  # type: ignore[no-untyped-def]
    cpus_values: list[float] | tuple[float, ...] = (0.25, 0.5, 1.0, 2.0),
    seconds: float = 1.0,
    workers: int | None = None,
) -> list[CpuPoint]:
    """For each --cpus value, run ``workers`` busy loops (default: one per CPU of the
    machine, so that --cpus 2 can use 2 CPUs) for ``seconds``, and measure the CPU
    time they got and the work they did. Values above the machine's CPU count are
    skipped (Docker refuses them too)."""
    ncpu = os.cpu_count() or 1
    workers = workers or ncpu
    points = []
    for cpus in cpus_values:
        if cpus > ncpu:
            continue
        result = rt.run(IMAGE, ["sh", "-c", cpu_script(workers, seconds)], cpus=cpus, remove=True)
        cpu_seconds, loops = parse_cpu_output(result.stdout)
        points.append(CpuPoint(float(cpus), seconds, cpu_seconds, loops))
    return points


# A *bounded* fork bomb: at most `tries` sleeping processes, so that even without a
# pids limit it cannot hurt the host (and they all die with the container's PID 1).
# The forks happen in a subshell: the shell that fails to fork exits, so that one
# goes and the outer shell reports. It counts with builtins only (read, set).
FORK_SCRIPT = r"""
( i=0
  while [ $i -lt {tries} ]; do sleep 60 & i=$((i+1)); echo $i > /tmp/started; done
) 2>/tmp/error
started=0; read -r started < /tmp/started
error=; read -r error < /tmp/error
set -- /proc/[0-9]*
echo "started $started"
echo "processes $#"
echo "error $error"
""".strip()


@dataclass
class ForkResult:
    pids_limit: int | None
    tries: int
    started: int  # how many `sleep`s started before fork() failed
    processes: int  # processes in the container at the end (PID 1 and the sleepers)
    error: str  # the shell's message when fork() failed
    exit_code: int

    @property
    def stopped(self) -> bool:
        return self.started < self.tries


def parse_fork_output(text: str) -> tuple[int, int, str]:
    started, processes, error = 0, 0, ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "started" and value.strip().isdigit():
            started = int(value)
        elif key == "processes" and value.strip().isdigit():
            processes = int(value)
        elif key == "error":
            error = value.strip()
    return started, processes, error


def fork_bomb_demo(rt, pids_limit: int | None = 20, tries: int = 100) -> ForkResult:  # type: ignore[no-untyped-def]
    """Start up to ``tries`` processes in a container limited to ``pids_limit``."""
    tries = max(1, min(int(tries), 500))
    result = rt.run(
        IMAGE, ["sh", "-c", FORK_SCRIPT.format(tries=tries)], pids_limit=pids_limit, remove=True
    )
    started, processes, error = parse_fork_output(result.stdout)
    return ForkResult(pids_limit, tries, started, processes, error, result.exit_code)


# --------------------------------------------------------------------------
# The real cgroup files of a running container
# --------------------------------------------------------------------------

LIMIT_FILES = {
    1: (
        ("memory", "memory.limit_in_bytes"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpu", "cpu.cfs_period_us"),
        ("pids", "pids.max"),
    ),
    2: (("memory", "memory.max"), ("cpu", "cpu.max"), ("pids", "pids.max")),
}


@dataclass
class CgroupFile:
    controller: str
    path: str
    value: str


def cgroup_limit_files(container) -> list[CgroupFile]:  # type: ignore[no-untyped-def]
    """The control files holding a container's limits, and what they say."""
    from ..runtime import cgroups

    name = container.spec.cgroup
    group = cgroups.Cgroup.open(name) if name else None
    if group is None:
        return []
    files = []
    for controller, filename in LIMIT_FILES[group.version]:
        directory = group.dirs.get(controller)
        if directory is None:
            continue
        path = Path(directory) / filename
        try:
            value = path.read_text().strip()
        except OSError as e:
            value = f"({e.strerror})"
        files.append(CgroupFile(controller, str(path), value))
    return files


def normalized_limits(files: list[CgroupFile]) -> dict[str, str]:
    """The same limits whatever the cgroup version: memory bytes, CPU quota/period,
    max processes (v1 has two CPU files, v2 one ``cpu.max``)."""
    by_name = {Path(f.path).name: f.value for f in files}
    out: dict[str, str] = {}
    if "memory.max" in by_name:
        out["memory (bytes)"] = by_name["memory.max"]
    elif "memory.limit_in_bytes" in by_name:
        out["memory (bytes)"] = by_name["memory.limit_in_bytes"]
    if "cpu.max" in by_name:
        quota, _, period = by_name["cpu.max"].partition(" ")
        out["cpu (quota/period µs)"] = f"{quota}/{period}"
    elif "cpu.cfs_quota_us" in by_name:
        out["cpu (quota/period µs)"] = (
            f"{by_name['cpu.cfs_quota_us']}/{by_name.get('cpu.cfs_period_us', '?')}"
        )
    if "pids.max" in by_name:
        out["pids (max processes)"] = by_name["pids.max"]
    return out


@contextlib.contextmanager
def limited_container(rt, memory: str = "32m", cpus: float = 0.5, pids_limit: int = 20, **opts):  # type: ignore[no-untyped-def]
    """A detached ``sleep`` container with limits, removed on exit."""
    container = rt.run(
        IMAGE,
        ["sleep", "300"],
        detach=True,
        memory=memory,
        cpus=cpus,
        pids_limit=pids_limit,
        **opts,
    )
    try:
        yield container
    finally:
        container.remove(force=True)
