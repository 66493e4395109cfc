"""Plain data classes for the modules on ``minicontainer run``'s path.

They would be dataclasses, but importing ``dataclasses`` (which imports
``inspect``) and building each class with ``exec`` cost about 40 ms of every
CLI start on a small machine: a fifth of ``minicontainer run --rm busybox
true``. A Record declares its fields the same way (annotated class
attributes, defaults as values; a list or dict default is copied for each
instance) and gets ``__init__``, ``__repr__``, ``__eq__`` and ``as_dict()``
from this base class. Modules off the hot path keep using dataclasses.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (startup time)

if TYPE_CHECKING:
    from collections.abc import Iterator

_MUTABLE = (list, dict, set)


class Record:
    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}
    _compare: tuple[str, ...] | None = None  # the fields __eq__ and __hash__ use; None: all
    _frozen = False  # frozen records refuse assignment and are hashable

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        fields: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("__annotations__", {}):
                if not name.startswith("_") and name not in fields:
                    fields.append(name)
        cls._fields = tuple(fields)
        cls._defaults = {n: getattr(cls, n) for n in fields if hasattr(cls, n)}
        if cls._frozen:
            cls.__setattr__ = _refuse  # type: ignore[method-assign,assignment]
            cls.__hash__ = lambda self: hash(tuple(self._compared()))  # type: ignore[method-assign]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # mutable: unhashable, like a dataclass

    def __init__(self, *args: object, **kwargs: object) -> None:
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes {len(self._fields)} arguments")
        values = dict(zip(self._fields, args, strict=False))
        for name in self._fields[len(args) :]:
            if name in kwargs:
                values[name] = kwargs.pop(name)
            elif name in self._defaults:
                default = self._defaults[name]
                values[name] = type(default)(default) if isinstance(default, _MUTABLE) else default
            else:
                raise TypeError(f"{type(self).__name__}() missing argument: {name!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected {', '.join(kwargs)}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def _compared(self) -> Iterator[object]:
        return (getattr(self, n) for n in (self._compare or self._fields))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return tuple(self._compared()) == tuple(other._compared())  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> dict[str, object]:
        """Like dataclasses.asdict: nested records, lists and dicts become plain data."""
        return {n: _plain(getattr(self, n)) for n in self._fields}


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _refuse(self: Record, name: str, value: object) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
