"""The notebooks' widgets in a real browser: JupyterLab + headless Chromium (playwright).

For each notebook with a widget (01 namespace toggle, 03 and 05 layer explorer, 04
copy-on-write stepper, 07 lab re-run), a tab opens a copy of the notebook, runs its
cells with Run > Run All Cells, checks that nothing failed and every widget rendered
(no "Error displaying widget", no traceback), then clicks the widget like a student
and checks what it shows against the real system, read by this test itself: the
host's hostname and PID 1, the image store's layers, the container's upper dir on
disk, a fresh measurement's numbers. One screenshot per widget goes to
tests/screenshots/ (git-ignored).

Staying within 3 minutes on a 2-core machine:
- one JupyterLab server, one browser, one tab and one kernel per notebook; all five
  notebooks are started before the first is checked, so the kernels run in parallel;
- each copy runs the cells up to and including the widget's cell and no further: the
  later cells either drive the widget themselves (04 steps its stepper in code) or
  clean up what the widget shows (03, 04, 05 delete their images and containers);
- notebook 07's quick lab (1.5-2 min) is replaced, in the copy, by a one-run
  measurement that gives the widget its list of backends: the widget cell itself is
  unchanged, it measures for real when it runs and again when the test presses Run.
  The full lab is what nbval's run of notebook 07 checks.
The widgets are the real ones, from the real cells, connected to a live kernel.

Isolation: the server has its own config/data/runtime/settings/workspaces dirs (news,
update checks and autosave off); the kernels get a private state root
(MINICONTAINER_ROOT) and TMPDIR, so the containers and images they make never meet
another session's; everything is removed at the end, also on failure. The copies live
in a temporary directory and nothing is saved: the last test checks that notebooks/
is byte-for-byte unchanged and that no kernel is left.

Needs root (the cells are tagged needs-root), Debian's chromium and playwright (never
`playwright install`): skipped with the install line otherwise, failed in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import browser_lab as bl
import pytest

from conftest import REPO, skip_or_fail

pytestmark = [pytest.mark.root, pytest.mark.slow]

NOTEBOOKS = REPO / "notebooks"
JUPYTER = Path(sys.executable).with_name("jupyter")  # the venv that runs the tests
SHOTS = REPO / "tests" / "screenshots"
RUN_TIMEOUT = 300  # s: five notebooks at once on two loaded cores
STEP_TIMEOUT = 120  # s: one widget action (a container run, a measurement)

# notebook -> (the marker of its widget cell, the screenshot's name)
WIDGETS = {
    "01_namespaces": ("namespace_toggle(", "01_namespace_toggle"),
    "03_images_and_layers": ("layer_explorer(", "03_layer_explorer"),
    "04_copy_on_write": ("cow_stepper(", "04_cow_stepper"),
    "05_build": ("layer_explorer(", "05_layer_explorer"),
    "07_containers_vs_vms": ("LabWidget(", "07_lab_widget"),
}
LAB_CELL = "run_lab("  # notebook 07's quick lab
LAB_STAND_IN = (
    "# tests/test_browser.py: this copy measures once instead of running the quick lab;\n"
    "# the widget below only needs the list of backends that work here.\n"
    'doc = runner.measure(["native", "minicontainer"], "start", runs=1)'
)
UPPER = "the container's upper dir"


@dataclass
class Lab:
    base: Path
    state_root: Path
    tmpdir: Path
    server: bl.JupyterLab | None = None
    pages: dict[str, bl.NotebookPage] = field(default_factory=dict)
    notebooks_hash: str = ""
    started: float = 0.0
    closed: bool = False
    _browser: object = None
    _playwright: object = None

    def close(self) -> None:
        """Browser, kernels, server, containers, temporary files; idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()
        finally:
            if self.server is not None:
                self.server.stop()
            if self.state_root.exists():
                remove_containers(self.state_root)
            if not mounted_under(self.base):
                bl.remove_tree(self.base)


def remove_containers(state_root: Path) -> None:
    import minicontainer as mc

    rt = mc.Runtime(state_root)
    for c in rt.containers(all=True):
        try:
            c.remove(force=True)
        except Exception as e:  # noqa: BLE001 - clean up the others too
            print(f"test_browser: could not remove container {c.id[:12]}: {e}")


def mounted_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4].startswith(prefix)]


def keep_up_to(index: int):  # type: ignore[no-untyped-def]
    return lambda i, _cell: i <= index


def keep_lab_cells(nb: Path):  # type: ignore[no-untyped-def]
    """Notebook 07: the imports, the stand-in for the lab cell, the widget cell."""
    wanted = {bl.index_of(nb, "from minicontainer.lab import"), bl.index_of(nb, LAB_CELL)}
    wanted.add(bl.index_of(nb, WIDGETS[nb.stem][0]))
    return lambda i, _cell: i in wanted


@pytest.fixture(scope="module")
def lab():  # type: ignore[no-untyped-def]
    problem = bl.browser_problem()
    if problem:
        skip_or_fail(f"{problem}; install with: {bl.INSTALL_LINE}")
    if not JUPYTER.exists():
        skip_or_fail(f"{JUPYTER} missing (run the tests with the venv's Python after `make setup`)")
    from playwright.sync_api import sync_playwright

    import minicontainer as mc

    started = time.monotonic()
    notebooks_hash = bl.tree_hash(NOTEBOOKS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for _marker, shot in WIDGETS.values():
        (SHOTS / f"{shot}.png").unlink(missing_ok=True)

    base = Path(tempfile.mkdtemp(prefix="mc-browser-"))  # short: container paths nest deep
    session = Lab(base, base / "state", base / "tmp", notebooks_hash=notebooks_hash)
    session.started = started
    copies = base / "notebooks"
    try:
        session.tmpdir.mkdir()
        copies.mkdir()
        mc.Runtime(session.state_root).bootstrap()  # once, not by five kernels at a time
        code_cells = {}
        for name, (marker, _shot) in WIDGETS.items():
            src = NOTEBOOKS / f"{name}.ipynb"
            if name == "07_containers_vs_vms":
                keep, replace = keep_lab_cells(src), {LAB_CELL: LAB_STAND_IN}
            else:
                keep, replace = keep_up_to(bl.index_of(src, marker)), None
            code_cells[name] = bl.notebook_copy(src, copies / src.name, keep=keep, replace=replace)

        env = {"MINICONTAINER_ROOT": str(session.state_root), "TMPDIR": str(session.tmpdir)}
        session.server = server = bl.JupyterLab(JUPYTER, base / "jupyter", copies, env)
        session._playwright = sync_playwright().start()
        session._browser = session._playwright.chromium.launch(
            executable_path=bl.CHROMIUM, args=bl.CHROMIUM_ARGS, headless=True
        )
        context = session._browser.new_context(viewport={"width": 1920, "height": 1080})
        context.set_default_timeout(STEP_TIMEOUT * 1000)
        for name in WIDGETS:  # open every tab first: the kernels start together
            session.pages[name] = bl.NotebookPage(
                server, context, f"{name}.ipynb", code_cells[name]
            )
        for page in session.pages.values():  # then Run All everywhere
            page.run_all(timeout=RUN_TIMEOUT)
        yield session
    finally:
        session.close()


def finished(lab: Lab, name: str) -> bl.NotebookPage:
    page = lab.pages[name]
    page.wait_finished(timeout=RUN_TIMEOUT)
    return page


def screenshot(widget, name: str) -> Path:  # type: ignore[no-untyped-def]
    path = SHOTS / f"{WIDGETS[name][1]}.png"
    widget.screenshot(path=str(path))
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return path


def button(widget, text: str):  # type: ignore[no-untyped-def]
    return widget.locator("button.jupyter-button").filter(has_text=bl._exact(text))


def labelled(widget, css: str, label: str):  # type: ignore[no-untyped-def]
    """The <select> of an ipywidgets Dropdown/SelectMultiple with this description."""
    box = widget.locator(css).filter(has=widget.page.locator("label", has_text=bl._exact(label)))
    return box.locator("select")


# --------------------------------------------------------------------------- 01


def views_table(table) -> dict[str, tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    """The namespace toggle's table: what -> (namespace, outside, inside, mark)."""
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in bl.table_rows(table)}


def test_namespace_toggle(lab: Lab) -> None:
    page = finished(lab, "01_namespaces")
    w = page.widget("mc-namespace-toggle")
    host_name = os.uname().nodename  # the host's values, read here
    host_init = f"1 {Path('/proc/1/comm').read_text().strip()}"

    def run_and_read(names_on: list[str], names_off: list[str]) -> dict:
        for n in names_on:
            w.get_by_role("checkbox", name=n, exact=True).check()
        for n in names_off:
            w.get_by_role("checkbox", name=n, exact=True).uncheck()
        bl.mark_stale(w.locator("table.minicontainer-views"))
        button(w, "Run").click()
        fresh = w.locator("table.minicontainer-views:not([data-stale])")
        fresh.wait_for(timeout=STEP_TIMEOUT * 1000)
        return views_table(fresh)

    # What the notebook's own run shows (uts, pid, net; a host command).
    first = views_table(w.locator("table.minicontainer-views"))
    assert first["hostname"][1:3] == (host_name, "minicontainer"), first["hostname"]

    # A busybox container, uts off, pid on: the host's hostname, its own PID 1.
    button(w, "busybox container").click()
    rows = run_and_read(["pid"], ["uts"])
    ns_col, outside, inside, mark = rows["hostname"]
    assert (ns_col, outside, inside, mark) == ("uts", host_name, host_name, "shared"), rows
    ns_col, outside, inside, mark = rows["processes (PID command)"]
    assert ns_col == "pid (new)" and mark == "✔ isolated", rows
    assert outside.startswith(host_init + ","), (outside, host_init)
    assert inside.startswith("1 ") and host_init not in inside, inside  # its own PID 1
    assert "in all" not in inside, inside  # a handful of processes, not the host's

    # uts on, pid off: its own hostname, the host's processes (the host's PID 1).
    rows = run_and_read(["uts"], ["pid"])
    ns_col, outside, inside, mark = rows["hostname"]
    assert (ns_col, outside, mark) == ("uts (new)", host_name, "✔ isolated"), rows
    assert inside == "minicontainer" != host_name, rows
    ns_col, outside, inside, mark = rows["processes (PID command)"]
    assert ns_col == "pid" and inside.startswith(host_init + ","), rows
    assert button(w, "busybox container").get_attribute("class").count("mod-active") == 1
    screenshot(w, "01_namespaces")


# --------------------------------------------------------------------------- 03, 05

LETTER = {"added": "A", "modified": "M", "removed": "D", "unmodified": ""}


def expected_layer(store, ref: str, index: int | None = None) -> tuple[str, list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """What the store says: the header and (state letter, name) rows of a layer."""
    from minicontainer.image.model import ImageModel

    model = ImageModel.from_store(store, ref)
    if index is None:
        index = len(model.layers) - 1
    rows = [
        (LETTER[n.state.value], n.name + ("/" if n.info.type == "dir" else ""))
        for n in model.tree(index, changes_only=True)
    ]
    return f"layer {index} of {model.name}:", rows


def shown_layer(w, header: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Wait for the explorer to show the layer with this header; its rows."""
    view = w.locator(".minicontainer-layer:not([data-stale])").filter(has_text=header)
    view.wait_for(timeout=STEP_TIMEOUT * 1000)
    rows = bl.table_rows(view.locator("table"))
    return [(r[0], r[4]) for r in rows if len(r) == 5]


def check_layer(w, store, ref: str, index: int | None = None) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    header, expected = expected_layer(store, ref, index)
    shown = shown_layer(w, header)
    shown_names = [(letter, name.split(" →")[0].split(" ⇒")[0]) for letter, name in shown]
    assert shown_names == expected, (header, shown, expected)
    return shown_names


def pick(w, select, **option) -> None:  # type: ignore[no-untyped-def]
    bl.mark_stale(w.locator(".minicontainer-layer"))
    select.select_option(**option)


def test_layer_explorer_images(lab: Lab) -> None:
    import minicontainer as mc

    page = finished(lab, "03_images_and_layers")
    store = mc.Runtime(lab.state_root).store
    w = page.widget("mc-layer-explorer")
    image = labelled(w, ".widget-dropdown", "image")
    layer = labelled(w, ".widget-dropdown", "layer")

    check_layer(w, store, "nb03-app:v2")  # what the cell shows: v2's top layer

    pick(w, image, label="nb03-other:v1")  # another image: its top layer
    rows = check_layer(w, store, "nb03-other:v1")
    assert ("A", "other.txt") in rows, rows  # the cell ran `echo other > /other.txt`

    pick(w, image, label="nb03-app:v2")
    check_layer(w, store, "nb03-app:v2")
    pick(w, layer, index=1)  # another layer: the one step1 committed
    rows = check_layer(w, store, "nb03-app:v2", 1)
    assert {("A", "greeting.txt"), ("A", "data.bin")} <= set(rows), rows
    screenshot(w, "03_images_and_layers")


def test_layer_explorer_build(lab: Lab) -> None:
    import minicontainer as mc
    from minicontainer.image.model import ImageModel

    page = finished(lab, "05_build")
    store = mc.Runtime(lab.tmpdir / "minicontainer-nb05" / "store").store  # the notebook's BASE
    w = page.widget("mc-layer-explorer")
    check_layer(w, store, "nb05-app:v1")

    model = ImageModel.from_store(store, "nb05-app:v1")
    commands = [layer.command for layer in model.layers]
    copy_req = next(i for i, c in enumerate(commands) if "COPY" in c and "requirements" in c)
    pick(w, labelled(w, ".widget-dropdown", "layer"), index=copy_req)
    rows = check_layer(w, store, "nb05-app:v1", copy_req)
    assert ("A", "requirements.txt") in rows, rows
    screenshot(w, "05_build")


# --------------------------------------------------------------------------- 04


def whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_cow_stepper(lab: Lab) -> None:
    import minicontainer as mc

    page = finished(lab, "04_copy_on_write")
    container = mc.Runtime(lab.state_root).container("nb04-cow")
    upper = container.dir / "upper"
    top_layer = Path(container.spec.lowerdirs[0])
    w = page.widget("mc-cow-stepper")
    out = w.locator(".widget-output .jp-OutputArea-output")

    def where(step: str) -> dict[str, str]:
        """What the stepper shows after ``step``: path -> where it comes from."""
        shown = w.locator(".widget-output .jp-OutputArea-output:not([data-stale])").last
        shown.wait_for(timeout=STEP_TIMEOUT * 1000)
        text = shown.inner_text()
        assert text.startswith(f"{step}: $") and "(exit code 0)" in text, text
        table = shown.locator("table").filter(has_text="where each file comes from")
        return {r[0]: r[1] for r in bl.table_rows(table)}

    def step(name: str) -> dict[str, str]:
        bl.mark_stale(out)
        button(w, name).click()
        return where(name)

    rows = where("before")
    assert rows["/data/new.txt"] == "absent" and not (upper / "data/new.txt").exists()

    rows = step("write")
    assert rows["/data/new.txt"] == f"in {UPPER}", rows
    assert (upper / "data/new.txt").read_text() == "hello\n"  # really in the upper dir

    rows = step("append")
    assert rows["/data/notes.txt"] == f"in {UPPER}", rows  # copied up
    assert (upper / "data/notes.txt").read_text().endswith("second line\n")
    assert "second line" not in (top_layer / "data/notes.txt").read_text()  # image untouched

    rows = step("delete")
    assert rows["/data/log.txt"] == f"deleted: whiteout in {UPPER}", rows
    assert whiteout(upper / "data/log.txt") and (top_layer / "data/log.txt").exists()

    rows = step("rename")
    assert rows["/data/config.old"] == f"in {UPPER}", rows
    assert rows["/data/config.ini"] == f"deleted: whiteout in {UPPER}", rows
    assert (upper / "data/config.old").is_file() and whiteout(upper / "data/config.ini")
    screenshot(w, "04_copy_on_write")


# --------------------------------------------------------------------------- 07

NUMBER = re.compile(r"^\d+(\.\d+)?(e[-+]?\d+)? ms$")


def test_lab_widget(lab: Lab) -> None:
    from minicontainer.lab import runner

    page = finished(lab, "07_containers_vs_vms")
    w = page.widget("mc-lab-widget")
    table = w.locator(".widget-output table")
    labels = {b.name: b.label for b in runner.default_backends(["native", "minicontainer"])}

    def measured() -> list[list[str]]:
        rows = bl.table_rows(table)
        assert {r[1] for r in rows} == set(labels.values()), rows
        assert {r[0] for r in rows} == {"start_to_ready", "start_to_exit"}, rows
        assert all(NUMBER.match(r[2]) for r in rows), rows  # median
        return rows

    table.wait_for()
    assert {r[5] for r in measured()} == {"3"}  # the cell's own run: 3 runs

    labelled(w, ".widget-select-multiple", "backends").select_option(list(labels))
    labelled(w, ".widget-dropdown", "measure").select_option(label="start time (ready, exit)")
    readout = w.locator(".widget-slider .widget-readout")
    readout.click()
    readout.press("Control+A")
    readout.press_sequentially("1")
    readout.press("Enter")
    w.locator(".widget-slider .widget-readout", has_text=bl._exact("1")).wait_for()

    bl.mark_stale(table)
    button(w, "Run").click()
    table = w.locator(".widget-output table:not([data-stale])")
    table.wait_for(timeout=STEP_TIMEOUT * 1000)
    assert {r[5] for r in measured()} == {"1"}  # a new measurement, with the new setting
    figure = w.locator(".widget-output img")
    figure.wait_for()
    assert figure.evaluate("img => img.complete && img.naturalWidth > 0")
    assert button(w, "Run").is_enabled()
    screenshot(w, "07_containers_vs_vms")


# --------------------------------------------------------------------------- at the end


def test_everything_stopped_and_notebooks_unchanged(lab: Lab) -> None:
    """Runs last: stops the lab, then checks what it leaves behind."""
    server = lab.server
    assert server is not None
    lab.close()
    assert server.proc.poll() is not None, "jupyter lab still running"
    assert not server.leftover_kernels(), f"kernels left: {server.leftover_kernels()}"
    assert len(server.kernel_pids) >= len(WIDGETS), server.kernel_pids  # one per notebook
    assert bl.tree_hash(NOTEBOOKS) == lab.notebooks_hash, "the browser run changed notebooks/"
    for _marker, shot in WIDGETS.values():
        path = SHOTS / f"{shot}.png"
        assert path.is_file() and path.stat().st_size > 0, path
    took = time.monotonic() - lab.started
    # Reported, never asserted: a timed assertion fails on a slow machine, not on a bug.
    print(f"browser test: {took:.1f} s from JupyterLab start to everything stopped")
