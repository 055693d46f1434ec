"""``@record``: a frozen dataclass that is cheap to define.

``@dataclass(frozen=True)`` compiles six methods per class from generated source at import
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``):
about a millisecond per class on a small machine, and with the protocol's sixty-odd types
that was half of the start of every CLI call, client and node. A record compiles only its
``__init__``, the one method whose signature and per-call speed matter, and shares the
five others, which read the field names the class keeps.

A record *is* a dataclass: :mod:`dataclasses` builds its fields, so ``fields()``,
``replace()``, ``asdict()``, ``__match_args__`` and ``field(default=...,
default_factory=..., repr=False, compare=False, hash=...)`` behave as for
``@dataclass(frozen=True)``; mypy checks it as one (``dataclass_transform``). Its methods
answer what the dataclass's would: the same ``__init__`` signature and defaults, the same
``repr`` text (fields with ``repr=False`` left out: key material never shows), equality
of the same class by the compared fields, the hash of those fields, and
:class:`dataclasses.FrozenInstanceError` on any assignment or deletion. Not supported
(refused): ``InitVar``, keyword-only fields, a class of its own ``__setattr__`` or
``__delattr__``. ``tests/unit/test_record.py`` holds it to the dataclass.
"""

from __future__ import annotations

import abc
import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")

# What a record class keeps for its shared methods: getters of the compared and of the
# hashed fields' values (as tuples), and the names its repr shows.
_EQ_KEY = "__record_eq_key__"
_HASH_KEY = "__record_hash_key__"
_REPR = "__record_repr__"


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,
                                                            dataclasses.Field))
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass (see the module)."""
    for name in ("__setattr__", "__delattr__"):
        if name in cls.__dict__:
            raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
    # dataclasses documents a class without a docstring by its signature, which it finds
    # with inspect.signature (slow, and wrong here before the __init__ exists): a record
    # is documented by its field names instead.
    undocumented = not cls.__doc__
    if undocumented:
        cls.__doc__ = cls.__name__
    # The fields, their defaults and checks (mutable defaults, ClassVar), __match_args__:
    # from dataclasses itself, which compiles nothing when asked for no methods.
    dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if undocumented:
        cls.__doc__ = f"{cls.__name__}({', '.join(f.name for f in fields)})"
    names = {f.name for f in fields}
    pseudo = [f for name, f in cls.__dataclass_fields__.items()  # type: ignore[attr-defined]
              if name not in names]  # ClassVars, and InitVars (which a record refuses)
    if any(f.kw_only is True for f in fields) or any("InitVar" in str(f.type) for f in pseudo):
        raise TypeError(f"{cls.__name__}: a record has no InitVar or keyword-only fields")
    methods: dict[str, object] = {
        "__init__": _init(cls, fields),
        "__setattr__": _frozen_setattr,
        "__delattr__": _frozen_delattr,
        _EQ_KEY: _getter(tuple(f.name for f in fields if f.compare)),
        _HASH_KEY: _getter(tuple(f.name for f in fields
                                 if (f.compare if f.hash is None else f.hash))),
        _REPR: tuple(f.name for f in fields if f.repr),
    }
    # Methods the class defines itself stay, as with a dataclass (a class body with __eq__
    # and no __hash__ has __hash__ = None, which is not its own).
    if "__repr__" not in cls.__dict__:
        methods["__repr__"] = _repr
    if "__eq__" not in cls.__dict__:
        methods["__eq__"] = _eq
    if "__hash__" not in cls.__dict__ or (cls.__dict__["__hash__"] is None
                                          and "__eq__" in cls.__dict__):
        methods["__hash__"] = _hash
    for name, method in methods.items():
        setattr(cls, name, method)
    abc.update_abstractmethods(cls)
    return cls


class _Factory:
    """The default of a parameter whose field has a default_factory (shown as the
    dataclass's is)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def _init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Callable[..., None]:
    """The dataclass's ``__init__``: same parameters, same defaults, fields set through
    ``object.__setattr__`` (the class's own refuses), then ``__post_init__`` if any."""
    env: dict[str, Any] = {"__set": object.__setattr__, "__factory": _FACTORY}
    params: list[str] = []
    body: list[str] = []
    for f in fields:
        name = f.name
        if f.default_factory is not dataclasses.MISSING:
            env[f"__f_{name}"] = f.default_factory
            value = f"__f_{name}() if {name} is __factory else {name}" if f.init \
                else f"__f_{name}()"
            default = "__factory"
        elif f.default is not dataclasses.MISSING:
            env[f"__d_{name}"] = f.default
            value = name if f.init else f"__d_{name}"
            default = f"__d_{name}"
        else:
            value, default = name, ""
        if f.init:
            params.append(f"{name}={default}" if default else name)
        body.append(f"    __set(self, {name!r}, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    namespace: dict[str, Any] = {}
    # The source holds only field names (identifiers: class annotations) and names of env.
    exec(compile(source, f"<record {cls.__qualname__}.__init__>", "exec"),  # noqa: S102
         env, namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    # Set, not compiled: the signature inspect shows, as the dataclass's __init__ has it.
    init.__annotations__ = {**{f.name: f.type for f in fields if f.init}, "return": None}
    return init


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of ``names`` as a tuple (what the dataclass's methods compare and hash)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if len(names) == 1:
        only = names[0]
        return lambda obj: (getattr(obj, only),)
    return lambda obj: ()


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _eq(self: object, other: object) -> Any:
    if other.__class__ is self.__class__:
        key = getattr(self.__class__, _EQ_KEY)  # from the class: a function, not a method
        return key(self) == key(other)
    return NotImplemented


def _hash(self: object) -> int:
    return hash(getattr(self.__class__, _HASH_KEY)(self))


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(self.__class__, _REPR))
    return f"{self.__class__.__qualname__}({shown})"
