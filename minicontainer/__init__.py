"""minicontainer: a small but real container runtime, to see how Docker works.

The package imports lazily so that the CLI starts fast: ``import minicontainer``
loads nothing until a name below is used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)

__version__ = "0.1.0"
__all__ = ["Runtime", "UserError", "__version__"]

if TYPE_CHECKING:
    from .api import Runtime
    from .errors import UserError


def __getattr__(name: str) -> object:
    if name == "Runtime":
        from .api import Runtime

        return Runtime
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'minicontainer' has no attribute {name!r}")
