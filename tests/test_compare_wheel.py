"""The lab from a wheel: built from this checkout, installed into a fresh venv (no
dependencies: the runtime needs only the standard library), run from a directory
outside the checkout. ``minicontainer check`` works, mcbench.c and the results
schema come from the installed package (importlib.resources), and one real
measurement runs (native CPU loop) without opening a single file of the checkout:
an audit hook (PEP 578) in the child records every path it opens, lists or runs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from minicontainer.lab import results

pytestmark = pytest.mark.slow

# Run in the installed venv: every file the child opens, lists or executes is recorded
# (PEP 578 audit events), then it measures natively and prints what it found.
CHILD = """
import json, os, sys
REPO = sys.argv[1]
touched = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "subprocess.Popen", "os.exec"):
        for a in args if isinstance(args, tuple) else (args,):
            for x in a if isinstance(a, (list, tuple)) else (a,):
                if isinstance(x, (str, bytes, os.PathLike)) and os.fsdecode(x).startswith(REPO):
                    touched.append((event, os.fsdecode(x)))
sys.addaudithook(hook)
import minicontainer
from minicontainer.lab import results, runner, workload
doc = runner.measure(["native"], "cpu", runs=1)
print(json.dumps({
    "package": minicontainer.__file__,
    "source_bytes": len(workload.SOURCE.read_bytes()),
    "schema_id": results.schema()["$id"],
    "saved": runner.saved_results_note(),
    "doc": doc,
    "touched": touched,
}))
"""


def _buildable_offline() -> bool:
    """pip can build the wheel with this venv's own setuptools (no download): it has
    bdist_wheel from 70.1 on, before that only with the wheel package."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _build_wheel(tmp: Path) -> Path:
    # A clean copy of what the wheel is made of: building in the checkout would leave
    # build/ there, and a stale build/ can put deleted files into the wheel.
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "minicontainer", src / "minicontainer", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
    if _buildable_offline():
        cmd.insert(4, "--no-build-isolation")
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("minicontainer-*.whl")
    return wheel


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MINICONTAINER_LAB_RESULTS", None)
    return env


def test_wheel_install_checks_and_measures_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "minicontainer/lab/mcbench.c" in names
    assert "minicontainer/lab/results.schema.json" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(venv)

    check = subprocess.run(
        [str(venv / "bin" / "minicontainer"), "check"],
        capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert check.returncode in (0, 1), check.stderr  # 1: this machine misses something
    assert "Traceback" not in check.stderr and "the check itself failed" not in check.stdout
    for name in ("overlayfs", "busybox", "kvm"):
        assert f"{name}:" in check.stdout, check.stdout

    run = subprocess.run(
        [str(python), "-c", CHILD, str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout)
    assert found["touched"] == []  # nothing opened, listed or run from the checkout
    assert Path(found["package"]).is_relative_to(venv)
    assert found["source_bytes"] > 1000 and found["schema_id"].endswith("results.schema.json")
    assert "installed without its source checkout" in found["saved"]
    doc = found["doc"]
    results.validate(doc)  # a real results document (this venv has jsonschema)
    (cpu,) = [m for m in doc["measurements"] if m["metric"] == "cpu"]
    assert cpu["backend"] == "native" and cpu["median"] > 0

    # Without the lab extra the command says what to install, before measuring anything.
    out = tmp_path / "out"
    cli = subprocess.run(
        [str(python), "-m", "minicontainer.lab", "--quick", "--backends", "native",
         "--only", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env,
    )  # fmt: skip
    assert cli.returncode == 1
    assert cli.stderr.startswith("docker-vs-vm: reading or writing lab results needs the ")
    assert "pip install 'minicontainer[lab]'" in cli.stderr and cli.stderr.count("\n") == 1
    assert not out.exists()
