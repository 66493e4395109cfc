"""Helpers for tests/test_browser.py: a private JupyterLab server, notebook copies,
and a headless Chromium page that drives one notebook the way a student does.

Nothing here touches the user's Jupyter files: the server gets its own config, data,
runtime, settings and workspaces directories, and the notebooks it serves are copies
in a temporary directory (outputs cleared, autosave off), so ``notebooks/`` is never
written. Every wait is on a condition (the REST API or the DOM), never a sleep of a
fixed length; the timeouts are generous for a loaded 2-core machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# From ../shared/reference/notebooks.md: what makes Debian's chromium work headless here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_LINE = (
    "apt-get install -y --no-install-recommends chromium fonts-noto-cjk"
    " && .venv/bin/pip install playwright   (never `playwright install`)"
)

# JupyterLab settings for the test server (its own app settings dir, so these are
# "overrides"): no news or update toasts over the screenshots, no autosave, and every
# cell kept in the DOM (JupyterLab 4 can virtualise cells that are out of view).
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


def browser_problem() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed"
    return None


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- notebooks


def code_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_copy(
    src: Path,
    dst: Path,
    *,
    keep: Callable[[int, dict], bool] | None = None,
    replace: dict[str, str] | None = None,
) -> int:
    """Write a copy of ``src`` to ``dst`` with every output, execution count and the
    saved widget state removed (so what the browser shows comes from the live kernel).
    ``keep(index, cell)`` chooses the cells; ``replace`` maps a marker found in a code
    cell to the source that cell gets instead. Returns the number of code cells."""
    nb = json.loads(src.read_text())
    nb = copy.deepcopy(nb)
    nb.get("metadata", {}).pop("widgets", None)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        if keep is not None and not keep(i, cell):
            continue
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            for marker, source in (replace or {}).items():
                if marker in code_source(cell):
                    cell["source"] = source
        cells.append(cell)
    nb["cells"] = cells
    dst.write_text(json.dumps(nb, indent=1))
    return sum(c["cell_type"] == "code" for c in cells)


def index_of(nb_path: Path, marker: str) -> int:
    """Index of the first code cell whose source contains ``marker``."""
    nb = json.loads(nb_path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and marker in code_source(cell):
            return i
    raise LookupError(f"{nb_path.name}: no code cell contains {marker!r}")


# --------------------------------------------------------------------------- the server


class JupyterLab:
    """``jupyter lab`` from the venv on a free port with a random token, all its state
    under ``base``. ``stop()`` shuts down every kernel and the server (idempotent)."""

    def __init__(self, jupyter: Path, base: Path, root_dir: Path, env: dict[str, str]) -> None:
        self.base = base
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        dirs = {
            name: base / name for name in ("config", "data", "runtime", "ipython", "app-settings")
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        (dirs["app-settings"] / "overrides.json").write_text(json.dumps(LAB_OVERRIDES, indent=1))
        self.runtime_dir = dirs["runtime"]
        full_env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            IPYTHONDIR=str(dirs["ipython"]),
            PATH=f"{jupyter.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **env,
        )
        full_env.pop("JUPYTER_PATH", None)
        self.argv = [
            str(jupyter),
            "lab",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            f"--ServerApp.token={self.token}",
            "--allow-root",
            f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.port_retries=0",
            f"--LabApp.app_settings_dir={dirs['app-settings']}",
            f"--LabApp.user_settings_dir={base / 'user-settings'}",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self.log_path = base / "jupyterlab.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=full_env,
            cwd=root_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can end it whole
        )
        self.kernel_pids: dict[int, str] = {}  # pid -> /proc start time (identity)
        try:
            wait_until("JupyterLab to answer /api/status", self._up, timeout=90)
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}):\n{self.log_tail()}")
        try:
            self.api("/api/status")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def page_url(self, workspace: str, path: str) -> str:
        # A workspace per page: two tabs on one workspace would fight over its layout.
        return f"{self.url}/lab/workspaces/{workspace}/tree/{path}?reset&token={self.token}"

    def kernel_ready(self, path: str) -> dict | None:
        """The kernel of the notebook ``path`` once it is idle and a browser is connected
        (the toolbar says idle before the websocket is up)."""
        for s in self.api("/api/sessions"):
            k = s.get("kernel") or {}
            if (
                s.get("path") == path
                and k.get("execution_state") == "idle"
                and k.get("connections", 0) >= 1
            ):
                self._remember_kernels()
                return k
        return None

    def _remember_kernels(self) -> None:
        """The server's child processes (its kernels), to check they are gone later."""
        for pid, start in _children(self.proc.pid).items():
            self.kernel_pids.setdefault(pid, start)

    def leftover_kernels(self) -> list[int]:
        return [pid for pid, start in self.kernel_pids.items() if _start_time(pid) == start]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._remember_kernels()
            try:
                for k in self.api("/api/kernels"):
                    self.api(f"/api/kernels/{k['id']}", method="DELETE")
            except (OSError, urllib.error.URLError, ValueError):
                pass  # the SIGTERM below shuts kernels down too
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started
                self.proc.wait(timeout=10)
        for pid in self.leftover_kernels():  # kernels run in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _children(ppid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out[int(entry.name)] = fields[19]
    return out


# --------------------------------------------------------------------------- the browser

# Code cells done: every prompt is a number, or an output shows a traceback (then the
# rest of "Run All" never runs, and the test reports that traceback at once).
JS_RUN_FINISHED = """(n) => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    const done = prompts.filter(p => /^\\[\\d+\\]:$/.test(p.textContent.trim())).length;
    const failed = [...document.querySelectorAll('.jp-OutputArea-output')]
        .some(o => o.textContent.includes('Traceback'));
    return failed || (prompts.length === n && done === n);
}"""

JS_RUN_STARTED = """() => {
    const prompts = document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt');
    return [...prompts].some(p => /^\\[(\\*|\\d+)\\]:$/.test(p.textContent.trim()));
}"""

JS_PROMPTS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim().replace(/:$/, '') || '[ ]')"""

# Every widget output has its view: the widget manager found the model and drew it.
# (JupyterLab marks each rendered output with data-mime-type, except widget views.)
JS_WIDGETS_DRAWN = """() => {
    const outs = [...document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output:not([data-mime-type])')];
    return outs.length > 0 && outs.every(o => o.querySelector('.jupyter-widgets')
        || o.textContent.includes('Error displaying widget'));
}"""

JS_PROBLEMS = """() => {
    const found = [];
    for (const o of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')) {
        const t = o.textContent;
        if (t.includes('Error displaying widget') || t.includes('Traceback'))
            found.push(t.slice(0, 2000));
    }
    for (const o of document.querySelectorAll('.jp-Notebook [data-mime-type]')) {
        if (o.dataset.mimeType === 'application/vnd.jupyter.error') found.push(o.textContent);
    }
    return found;
}"""


class NotebookPage:
    """One notebook in its own browser tab and JupyterLab workspace."""

    def __init__(self, lab: JupyterLab, context: Any, path: str, code_cells: int) -> None:
        self.lab = lab
        self.path = path
        self.code_cells = code_cells
        self.page = context.new_page()
        self.page.goto(lab.page_url(Path(path).stem.replace("_", "-"), path))

    def run_all(self, timeout: float) -> None:
        """Wait for the kernel (idle and connected), then Run > Run All Cells."""
        wait_until(
            f"the kernel of {self.path} (idle, connected)",
            lambda: self.lab.kernel_ready(self.path),
            timeout,
        )
        page = self.page
        page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=timeout * 1000)
        for _attempt in range(2):  # a click lost while the page is still settling: once more
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel").filter(
                has_text=_exact("Run All Cells")
            ).click()
            try:  # Run All marks every cell queued ([*]) at once, before the kernel runs any
                page.wait_for_function(JS_RUN_STARTED, timeout=20_000, polling=250)
                return
            except Exception:  # noqa: BLE001 - retried once, then wait_finished reports
                if self.lab.kernel_ready(self.path) is None:  # busy: the click did land
                    return

    def wait_finished(self, timeout: float) -> None:
        try:
            self.page.wait_for_function(
                JS_RUN_FINISHED, arg=self.code_cells, timeout=timeout * 1000, polling=250
            )
        except Exception as e:  # noqa: BLE001 - a timeout says where the run stands
            raise AssertionError(
                f"{self.path}: Run All not finished after {timeout:.0f} s: {self.progress()}"
            ) from e
        if not self.problems():
            try:
                self.page.wait_for_function(JS_WIDGETS_DRAWN, timeout=60_000, polling=250)
            except Exception as e:  # noqa: BLE001 - say what is missing
                raise AssertionError(f"{self.path}: a widget output was never drawn") from e
        problems = self.problems()
        assert not problems, f"{self.path}: errors in the notebook:\n" + "\n---\n".join(problems)

    def problems(self) -> list[str]:
        return self.page.evaluate(JS_PROBLEMS)

    def progress(self) -> str:
        """Each code cell's prompt ("[3]:", "[*]:" running, "[ ]:" not run), the kernel's
        state: enough to tell a slow cell from a Run All that never started."""
        prompts = self.page.evaluate(JS_PROMPTS)
        sessions = self.lab.api("/api/sessions")
        kernel = next((s.get("kernel") or {} for s in sessions if s.get("path") == self.path), {})
        return (
            f"{len(prompts)}/{self.code_cells} cells in the page, prompts {' '.join(prompts)}; "
            f"kernel {kernel.get('execution_state')}, {kernel.get('connections')} connection(s)"
        )

    def widget(self, css_class: str) -> Any:
        loc = self.page.locator(f".jp-OutputArea-output .{css_class}")
        loc.wait_for(timeout=60_000)
        return loc


def _exact(text: str) -> Any:
    import re

    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def mark_stale(locator: Any) -> None:
    """Tag what a widget shows now, so that a wait can tell the redrawn output from it."""
    locator.evaluate_all("els => els.forEach(e => e.setAttribute('data-stale', '1'))")


def table_rows(locator: Any) -> list[list[str]]:
    """The cells' text of every row with <td> cells of the table(s) ``locator`` matches."""
    return locator.evaluate(
        """t => [...t.querySelectorAll('tr')]
            .map(r => [...r.querySelectorAll('td')].map(c => c.textContent.trim()))
            .filter(r => r.length > 0)"""
    )


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
