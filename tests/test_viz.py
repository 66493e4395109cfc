"""minicontainer.lessons.viz: the namespace graph and table (fake /proc data and real
pids), and the toggle widget with its experiment replaced."""

from __future__ import annotations

import os
import subprocess

import pytest

from minicontainer.lessons import experiments, viz
from minicontainer.lessons.viz import namespaces as vns

HOST = {n: f"{n}:[40265318{i:02d}]" for i, n in enumerate(vns.ns.ALL)}
CONTAINER = {n: f"{n}:[40265322{i:02d}]" for i, n in enumerate(vns.ns.ALL)}
CONTAINER["user"] = HOST["user"]  # root's container: no user namespace
HALF = dict(HOST, pid="pid:[4026532300]", mnt="mnt:[4026532301]")

FAKE = {100: HOST, 101: HOST, 200: CONTAINER, 300: HALF}


def fake_reader(pid):  # type: ignore[no-untyped-def]
    if pid not in FAKE:
        raise PermissionError(13, "Permission denied")
    return FAKE[pid]


PROCS = {"kernel": 100, "shell": 101, "container A": 200, "container B": 300}


def test_map_numbers_and_sharing() -> None:
    m = vns.namespace_map(PROCS, reader=fake_reader)
    assert m.namespaces_of("uts") == [HOST["uts"], CONTAINER["uts"]]
    assert m.namespaces_of("pid") == [HOST["pid"], CONTAINER["pid"], HALF["pid"]]
    assert m.namespaces_of("user") == [HOST["user"]]  # shared by all: once
    assert m.members[("user", HOST["user"])] == list(PROCS)
    assert m.shared("uts", HOST["uts"]) and not m.shared("uts", CONTAINER["uts"])
    assert m.node_id("pid", HALF["pid"]) == "ns_pid_3"


def test_graph_is_deterministic_and_draws_each_namespace_once() -> None:
    import graphviz

    g = viz.namespace_graph(PROCS, reader=fake_reader)
    assert isinstance(g, graphviz.Digraph)
    assert g.source == viz.namespace_graph(PROCS, reader=fake_reader).source
    src = g.source
    # 7 user+... namespaces: host 7, container A 6 own, container B 2 own
    assert src.count("shape=ellipse") == 7 + 6 + 2
    assert src.count(" -> ") == 7 * len(PROCS)
    assert src.count(f"{HOST['user']}") == 1
    assert "40265" not in "".join(
        line.split("[")[0] for line in src.splitlines() if "->" in line or "shape" in line
    ), "node ids must not contain inode numbers"
    assert src.index("proc_0") < src.index("proc_1") < src.index("proc_2")


def test_graph_order_follows_given_order() -> None:
    swapped = {"container A": 200, "kernel": 100}
    src = viz.namespace_graph(swapped, reader=fake_reader).source
    assert f'ns_uts_1 [label="#1 {CONTAINER["uts"]}"' in src


def test_unreadable_process_is_shown_not_fatal() -> None:
    src = viz.namespace_graph({"kernel": 100, "init": 1}, reader=fake_reader).source
    assert "Permission denied" in src
    table = str(viz.namespace_table({"kernel": 100, "init": 1}, reader=fake_reader))
    assert "Permission denied" in table


def test_table_text_and_html() -> None:
    table = viz.namespace_table(PROCS, reader=fake_reader)
    rows = table.rows()
    assert rows[0] == ["process", *vns.ns.ALL]
    assert rows[1][0] == "kernel (pid 100)"
    assert rows[3][rows[0].index("uts")] == f"#2 own {CONTAINER['uts']}"
    assert rows[4][rows[0].index("uts")] == f"#1 shared {HOST['uts']}"
    text = str(table)
    assert "container B " in text and text.splitlines()[4].endswith("pid 300")
    html_text = table._repr_html_()
    assert html_text.startswith("<table") and "font-weight:bold" in html_text


def test_table_escapes_labels() -> None:
    html_text = viz.namespace_table({"<b>x</b>": 100}, reader=fake_reader)._repr_html_()
    assert "<b>x</b>" not in html_text and "&lt;b&gt;x&lt;/b&gt;" in html_text


def test_real_processes_share_host_namespaces() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        m = vns.namespace_map({"me": os.getpid(), "child": sleeper.pid})
        for name in vns.ns.ALL:
            assert m.links["me"][name] == m.links["child"][name]
            assert len(m.namespaces_of(name)) == 1
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the widget


def test_selected_keeps_kernel_order() -> None:
    from minicontainer.lessons.viz.widgets import selected

    assert selected({"user": True, "uts": True, "net": False}) == ["uts", "user"]


def test_toggle_runs_the_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    from minicontainer.lessons.viz import widgets

    calls = []

    def fake_look_around(names, rt=None):  # type: ignore[no-untyped-def]
        calls.append((list(names), rt))
        return {
            "outside": experiments.View(hostname="host<1>"),
            "inside": experiments.View(hostname="box"),
        }

    monkeypatch.setattr(experiments, "look_around", fake_look_around)
    toggle = widgets.namespace_toggle(None, default=("pid", "uts"))
    assert calls == [(["uts", "pid"], None)]
    assert repr(toggle) == "NamespaceToggle(namespaces=['uts', 'pid'], mode='host')"
    outputs = toggle.output.outputs
    assert len(outputs) == 1
    html_text = outputs[0]["data"]["text/html"]
    assert "host&lt;1&gt;" in html_text and "box" in html_text
    toggle.set(["net"])
    toggle.button.click()
    assert calls[-1] == (["net"], None)
    assert len(toggle.output.outputs) == 1  # replaced, not appended
    bundle = toggle._repr_mimebundle_()
    assert bundle["text/plain"].startswith("NamespaceToggle(")
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_toggle_container_mode_only_with_a_runtime() -> None:
    from minicontainer.lessons.viz import widgets

    assert len(widgets.NamespaceToggle(None).mode.options) == 1
    assert len(widgets.NamespaceToggle(object()).mode.options) == 2


def test_toggle_shows_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from minicontainer.lessons.viz import widgets

    def broken(names, rt=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("<no>")

    monkeypatch.setattr(experiments, "look_around", broken)
    toggle = widgets.namespace_toggle(None)
    assert "RuntimeError: &lt;no&gt;" in toggle.output.outputs[0]["data"]["text/html"]
