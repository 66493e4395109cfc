"""The contract every backend of the docker-vs-vm lab follows.

A backend runs the payload's ``/bench/mcbench`` (see ``workload``) in one kind of
isolation. The lab only talks to this interface, so it can be tested with fake
backends and fake timings (tests/test_compare_*.py).

Workloads (argv inside the instance; ``{data}`` is replaced by the backend's
``data_dir``, a directory on the disk the instance writes to):

    ready            print MARKER and exit 0         (start-to-ready, start-to-exit)
    idle             print MARKER, then sleep forever (memory, density)
    cpu N            integer loop, N million steps    -> MCBENCH-RESULT cpu <Mops/s>
    sha256 MB        busybox sha256sum of MB MiB fed through a pipe -> MB/s
    fileio DIR MB    write MB MiB + fsync, read back, 200 small files -> MB/s
    syscall N        N thousand getppid() syscalls    -> Kcalls/s

Every result is a rate (bigger is faster), so "relative to native" is always
backend / native.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "MCBENCH-READY"
RESULT_RE = re.compile(r"MCBENCH-RESULT (\w+) ([0-9.eE+-]+) (\S+)")

# What each workload reports (its result name and unit); cpu/sha256/fileio/syscall
# are compared with native, ready/idle are about start time and memory.
RESULT_UNITS = {"cpu": "Mops/s", "sha256": "MB/s", "fileio": "MB/s", "syscall": "Kcalls/s"}


class Unavailable(Exception):
    """This backend or workload cannot run here; the message says why (one line)."""


@dataclass
class Probe:
    """Can this backend run here? ``reason`` says why not (or what it will use)."""

    ok: bool
    reason: str = ""
    facts: dict = field(default_factory=dict)


@dataclass
class Run:
    """One run of a workload, timed from the host.

    ready_s: from just before spawning to the MARKER line (None if never printed)
    exit_s:  from just before spawning to the instance being gone (container
             removed, qemu exited)
    """

    rc: int
    exit_s: float
    ready_s: float | None = None
    output: str = ""

    def results(self) -> dict[str, float]:
        """MCBENCH-RESULT lines of the output: {name: value}."""
        return {m.group(1): float(m.group(2)) for m in RESULT_RE.finditer(self.output)}


class Instance:
    """An idle instance (workload ``idle``) that is kept running to measure memory."""

    ready_s: float = 0.0

    def components(self) -> dict[str, list[int]]:
        """Host pids that exist *for this instance*, by component name, e.g.
        {"container": [pid], "containerd-shim": [pid]} or {"qemu": [pid]}."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop and remove the instance; safe to call twice."""
        raise NotImplementedError


class Backend:
    """One way of running the payload. Subclasses set the class attributes."""

    name: str = ""  # short id used in JSON and on the command line
    label: str = ""  # what plots and tables print
    kind: str = ""  # "native" | "container" | "vm"
    emulated: bool = False  # True for TCG: never call its figures "VM overhead"
    data_dir: str = "/bench-data"  # where fileio writes, inside the instance

    def log(self, msg: str) -> None:
        """What this backend starts and removes, for the lab's verbose log (the lab
        sets it per backend; silent otherwise)."""

    def probe(self) -> Probe:
        raise NotImplementedError

    def prepare(self, payload: Path, work: Path) -> None:
        """Turn the payload rootfs into whatever this backend runs (bundle, image,
        guest); ``work`` is a scratch directory the lab removes afterwards."""

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        raise NotImplementedError

    def start_idle(self, timeout: float = 120.0) -> Instance:
        raise NotImplementedError

    def memory_facts(self) -> dict:
        """What the idle memory figure depends on, kept beside it (a VM's guest RAM)."""
        return {}

    def shared_daemons(self) -> dict[str, list[int]]:
        """Long-running processes shared by every instance (dockerd, containerd)."""
        return {}

    def footprint(self) -> dict[str, int]:
        """Bytes on disk this backend needs to run the payload, by component."""
        return {}

    def cleanup(self) -> None:
        """Remove what prepare() made outside ``work`` (images, bundles)."""


def expand(argv: list[str], backend: Backend) -> list[str]:
    return [a.replace("{data}", backend.data_dir) for a in argv]
