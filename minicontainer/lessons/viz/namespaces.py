"""Which namespaces are these processes in? A graph and a table.

Each process's ``/proc/PID/ns/NAME`` links name a namespace by its inode, e.g.
``uts:[4026531838]``. Two processes share a namespace exactly when the links
are equal, so the graph draws every namespace once, with an edge from each
process in it: the host's namespaces gather many edges, a container's own
namespaces hang off that container alone.

Everything is deterministic: processes keep the order they are given in, the
namespace types come in ``namespaces.ALL`` order, and within a type namespaces
are numbered (#1, #2, ...) in order of first appearance. Node ids never contain
inode numbers or PIDs, so the same situation always gives the same graph source.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...runtime import namespaces as ns

Reader = Callable[[int | str], Mapping[str, str]]

# One colour per process (its own namespaces get it); shared namespaces are grey.
PALETTE = ("#8ecae6", "#ffb703", "#90be6d", "#f28482", "#cdb4db", "#f6bd60", "#84a59d")
SHARED_FILL = "#e9ecef"


def _read_links(pid: int | str) -> dict[str, str]:
    return ns.inodes(pid)


@dataclass
class NamespaceMap:
    """Processes and the namespaces they are in, numbered deterministically."""

    labels: list[str]  # in the order given
    pids: dict[str, int | str]
    links: dict[str, dict[str, str]]  # label -> ns name -> "uts:[4026531838]"
    errors: dict[str, str] = field(default_factory=dict)  # label -> why it could not be read
    names: tuple[str, ...] = ns.ALL
    # (ns name, link) -> (number within its type, the labels in it)
    numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    members: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def namespaces_of(self, name: str) -> list[str]:
        """The distinct links of one namespace type, in numbering order."""
        found = [key for key in self.numbers if key[0] == name]
        return [link for _, link in sorted(found, key=lambda key: self.numbers[key])]

    def shared(self, name: str, link: str) -> bool:
        return len(self.members.get((name, link), [])) > 1

    def node_id(self, name: str, link: str) -> str:
        return f"ns_{name}_{self.numbers[(name, link)]}"

    def process_id(self, label: str) -> str:
        return f"proc_{self.labels.index(label)}"


def namespace_map(
    pids_or_labels: Mapping[str, int | str],
    *,
    names: tuple[str, ...] = ns.ALL,
    reader: Reader | None = None,
) -> NamespaceMap:
    """Read /proc/PID/ns for each ``label: pid`` (``reader`` replaces that read in tests)."""
    read = reader or _read_links
    labels = list(pids_or_labels)
    result = NamespaceMap(labels=labels, pids=dict(pids_or_labels), links={}, names=names)
    for label in labels:
        try:
            links = dict(read(pids_or_labels[label]))
        except OSError as e:
            result.errors[label] = e.strerror or str(e)
            links = {}
        result.links[label] = {n: links[n] for n in names if n in links}
    for name in names:
        counter = 0
        for label in labels:
            link = result.links[label].get(name)
            if link is None:
                continue
            key = (name, link)
            if key not in result.numbers:
                counter += 1
                result.numbers[key] = counter
                result.members[key] = []
            result.members[key].append(label)
    return result


def _process_label(label: str, pid: int | str) -> str:
    return f"{label}\npid {pid}"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def namespace_graph(
    pids_or_labels: Mapping[str, int | str],
    *,
    names: tuple[str, ...] = ns.ALL,
    reader: Reader | None = None,
    title: str | None = None,
):  # type: ignore[no-untyped-def]
    """A graphviz.Digraph: processes (boxes, left) with an edge to each namespace
    they are in (ellipses, grouped by type). A namespace several processes share
    is grey and drawn once; one that belongs to a single process has its colour."""
    import graphviz

    m = namespace_map(pids_or_labels, names=names, reader=reader)
    g = graphviz.Digraph("namespaces")
    g.attr(rankdir="LR", nodesep="0.15", ranksep="1.2", fontname="Helvetica")
    if title:
        g.attr(label=title, labelloc="t", fontsize="16")
    g.attr("node", fontname="Helvetica", fontsize="11")
    g.attr("edge", arrowsize="0.5", color="#555555")

    colour = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(m.labels)}
    with g.subgraph(name="cluster_processes") as procs:
        procs.attr(label="processes", style="dashed", color="#999999")
        for label in m.labels:
            text = _process_label(label, m.pids[label])
            if label in m.errors:
                text += f"\n({m.errors[label]})"
            procs.node(
                m.process_id(label),
                _dot_escape(text),
                shape="box",
                style="filled,rounded",
                fillcolor=colour[label],
            )
    for name in names:
        links = m.namespaces_of(name)
        if not links:
            continue
        with g.subgraph(name=f"cluster_{name}") as sub:
            sub.attr(label=name, style="rounded", color="#bbbbbb", tooltip=ns.DESCRIPTIONS[name])
            for link in links:
                members = m.members[(name, link)]
                fill = SHARED_FILL if len(members) > 1 else colour[members[0]]
                sub.node(
                    m.node_id(name, link),
                    _dot_escape(f"#{m.numbers[(name, link)]} {link}"),
                    shape="ellipse",
                    style="filled",
                    fillcolor=fill,
                )
    for label in m.labels:
        for name in names:
            link = m.links[label].get(name)
            if link is not None:
                g.edge(m.process_id(label), m.node_id(name, link))
    return g


class NamespaceTable:
    """Rows: processes; columns: namespace types; cells: ``#N name:[inode]``.
    Equal #N in a column = the same namespace. HTML in notebooks, text elsewhere."""

    def __init__(self, m: NamespaceMap) -> None:
        self.map = m

    def rows(self) -> list[list[str]]:
        m = self.map
        out = [["process", *m.names]]
        for label in m.labels:
            row = [f"{label} (pid {m.pids[label]})"]
            for name in m.names:
                link = m.links[label].get(name)
                if link is None:
                    row.append(m.errors.get(label, "?"))
                else:
                    mark = "shared" if m.shared(name, link) else "own"
                    row.append(f"#{m.numbers[(name, link)]} {mark} {link}")
            out.append(row)
        return out

    def __str__(self) -> str:
        # PIDs change length from run to run: they go last, so that no column
        # after them shifts (nbval compares this text once PIDs are sanitized).
        m = self.map
        rows = [["process", *m.names, ""]]
        for label, row in zip(m.labels, self.rows()[1:], strict=True):
            rows.append([label, *row[1:], f"pid {m.pids[label]}"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle: bool) -> None:  # type: ignore[no-untyped-def]
        p.text(str(self))

    def _repr_html_(self) -> str:
        e = html.escape
        m = self.map
        rows = self.rows()
        head = "".join(f"<th>{e(c)}</th>" for c in rows[0])
        body = []
        for label, row in zip(m.labels, rows[1:], strict=True):
            cells = [f'<td style="text-align:left">{e(row[0])}</td>']
            for name, cell in zip(m.names, row[1:], strict=True):
                link = m.links[label].get(name)
                shared = link is not None and m.shared(name, link)
                style = "" if shared else "font-weight:bold"
                cells.append(f'<td style="{style}">{e(cell)}</td>')
            body.append(f"<tr>{''.join(cells)}</tr>")
        return (
            '<table class="minicontainer-namespaces">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )


def namespace_table(
    pids_or_labels: Mapping[str, int | str],
    *,
    names: tuple[str, ...] = ns.ALL,
    reader: Reader | None = None,
) -> NamespaceTable:
    """The same information as namespace_graph, as a table."""
    return NamespaceTable(namespace_map(pids_or_labels, names=names, reader=reader))
