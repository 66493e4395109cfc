"""Pictures and widgets for the notebooks, thin views over tested logic.

    namespaces  which namespaces processes are in: a graph and a table (notebook 01)
    widgets     the namespace toggle: tick namespaces, run a real container (01)
    layers      the store graph, the layer explorer, the copy-on-write stepper (03-05)
    lab         the re-run widget of the docker-vs-vm lab (07)

graphviz and ipywidgets are imported only when used, so the runtime never needs them.
"""

from __future__ import annotations

from .namespaces import NamespaceMap, namespace_graph, namespace_map, namespace_table

__all__ = ["NamespaceMap", "namespace_graph", "namespace_map", "namespace_table"]
