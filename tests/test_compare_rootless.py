"""The lab run by an unprivileged user: what works without root (native, a rootless
minicontainer, the TCG VM) is measured, and what needs root is skipped with a
reason that says so. Nothing of the run is left behind."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import SAFE_PATH

pytestmark = [pytest.mark.rootless, pytest.mark.slow]

SCRIPT = """
import json, sys
from minicontainer.lab import runner as lab
settings = {"warmup": 0, "runs": 2, "vm_runs": 1}
doc = lab.Lab(lab.default_backends(["native", "unshare", "minicontainer", "runc", "vm-tcg"]),
              metrics=("start",), settings=settings, log=lambda m: None).run()
json.dump(doc, sys.stdout)
"""


def test_lab_as_an_unprivileged_user(rootless_user) -> None:  # type: ignore[no-untyped-def]
    p = rootless_user.run(
        [rootless_user.python or "python3", "-c", SCRIPT],
        env={"PYTHONPATH": rootless_user.pythonpath or "", "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=180,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    entries = {b["name"]: b for b in doc["backends"]}
    measured = {m["backend"] for m in doc["measurements"]}
    assert {"native", "minicontainer", "vm-tcg"} <= measured, doc["skipped"]
    assert "rootless" in entries["minicontainer"]["reason"]
    # Root-only either way; the reason says what stops it first on this machine: a tool
    # that is not installed (on the user's PATH), else the missing root.
    for name, tools in (("unshare", ("unshare", "chroot")), ("runc", ("runc",))):
        assert not entries[name]["available"]
        installed = all(shutil.which(t, path=SAFE_PATH) for t in tools)
        expected = "needs root" if installed else "apt install"
        assert expected in entries[name]["reason"], entries[name]
    # the VM ran without /dev/kvm access and says it is emulated
    vm = [m for m in doc["measurements"] if m["backend"] == "vm-tcg"]
    assert vm and all(m["emulated"] for m in vm)
    assert doc["host"]["accel"] == "tcg"
    left = rootless_user.run(["pgrep", "-u", rootless_user.name, "-f", "qemu|mcbench"])
    assert left.stdout.strip() == "", left.stdout
