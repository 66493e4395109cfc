"""Pictures and widgets for the notebooks.

``namespace_graph`` and ``namespace_table`` draw which namespaces processes are
in; ``widgets`` holds the interactive pieces (ipywidgets), kept thin: the logic
is in ``minicontainer.experiments``. graphviz and ipywidgets are imported only
when used, so the runtime itself never needs them.
"""

from __future__ import annotations

from .namespaces import NamespaceMap, namespace_graph, namespace_map, namespace_table

__all__ = ["NamespaceMap", "namespace_graph", "namespace_map", "namespace_table"]
