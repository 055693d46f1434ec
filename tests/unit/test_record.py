"""``@record`` (raftsso.protocol.record) behaves as ``@dataclass(frozen=True)``: each shape
of class is declared both ways and every behaviour compared, and the protocol's types are
records that keep key material out of their repr."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import pickle
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, ClassVar

import pytest

from raftsso.protocol import messages
from raftsso.protocol.record import record


def _shapes(deco: Callable[[type], type]) -> dict[str, type]:
    """The shapes the code base uses, decorated by ``deco``."""

    class Empty:
        pass

    class Plain:
        """Documented."""

        a: int
        b: str

    class Defaults:
        a: int
        b: str | None = None
        c: tuple[int, ...] = ()
        d: list[int] = field(default_factory=list)
        e: float = field(default=1.5)

    class Hidden:
        name: str
        key: bytes = field(repr=False)
        note: str = field(default="", compare=False)
        tag: str = field(default="t", hash=False)

    class WithClassVar:
        op: ClassVar[str] = "ping"
        x: int = 0

    class NoInit:
        a: int
        b: int = field(default=7, init=False)
        c: list[int] = field(default_factory=lambda: [1], init=False)

    class PostInit:
        a: int
        seen: list[int] = field(default_factory=list)

        def __post_init__(self) -> None:
            self.seen.append(self.a)

    class OwnRepr:
        a: int

        def __repr__(self) -> str:
            return "mine"

    class OneField:
        only: str

    return {name: deco(cls) for name, cls in locals().items() if isinstance(cls, type)}


def _hash(obj: object) -> int | type[BaseException]:
    try:
        return hash(obj)
    except TypeError as exc:
        return type(exc)


RECORDS = _shapes(record)
DATACLASSES = _shapes(dataclass(frozen=True))
ARGS: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "Empty": [((), {})],
    "Plain": [((1, "x"), {}), ((), {"a": 2, "b": "y"})],
    "Defaults": [((1,), {}), ((1, "b", (2,), [3], 2.5), {}), ((), {"a": 1, "d": [9]})],
    "Hidden": [(("n", b"secret"), {}), (("n", b"k2", "other note", "u"), {})],
    "WithClassVar": [((), {}), ((5,), {})],
    "NoInit": [((3,), {})],
    "PostInit": [((4,), {})],
    "OwnRepr": [((1,), {})],
    "OneField": [(("z",), {})],
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_record_behaves_as_the_frozen_dataclass(name: str) -> None:
    rec, ref = RECORDS[name], DATACLASSES[name]
    assert dataclasses.is_dataclass(rec)
    assert str(inspect.signature(rec)) == str(inspect.signature(ref))
    assert rec.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    assert [(f.name, f.default, f.repr, f.compare, f.init) for f in dataclasses.fields(rec)] \
        == [(f.name, f.default, f.repr, f.compare, f.init) for f in dataclasses.fields(ref)]
    made: list[tuple[Any, Any]] = []
    for args, kwargs in ARGS[name]:
        r, d = rec(*args, **kwargs), ref(*args, **kwargs)
        made.append((r, d))
        assert repr(r) == repr(d).replace(ref.__qualname__, rec.__qualname__)
        assert dataclasses.asdict(r) == dataclasses.asdict(d)
        assert _hash(r) == _hash(d)  # the same number, or the same refusal (a list field)
        again = rec(*args, **kwargs)
        assert r == again and (r != again) is False
        assert r != d  # another class: never equal, as between two dataclasses
        assert copy.deepcopy(r) == r
        assert dataclasses.replace(r) == r
        for f in dataclasses.fields(rec):
            with pytest.raises(FrozenInstanceError):
                setattr(r, f.name, 1)
            with pytest.raises(FrozenInstanceError):
                delattr(r, f.name)
        with pytest.raises(FrozenInstanceError):
            r.not_a_field = 1  # type: ignore[attr-defined]
    # Equality and hash follow the compared fields, as the dataclass's do.
    for (r1, d1), (r2, d2) in itertools.pairwise(made):
        assert (r1 == r2) == (d1 == d2)
    with pytest.raises(TypeError):
        rec(*range(20))  # too many arguments, as for the dataclass


def test_default_factories_make_a_fresh_value_each_time() -> None:
    one, two = RECORDS["Defaults"](1), RECORDS["Defaults"](2)
    assert one.d == [] and one.d is not two.d  # type: ignore[attr-defined]
    assert RECORDS["PostInit"](4).seen == [4]  # type: ignore[attr-defined]


def test_compare_false_and_hash_false_fields_are_left_out_as_by_the_dataclass() -> None:
    rec, ref = RECORDS["Hidden"], DATACLASSES["Hidden"]
    assert rec("n", b"k", "one") == rec("n", b"k", "two")
    assert (ref("n", b"k", "one") == ref("n", b"k", "two")) is True
    assert hash(rec("n", b"k", "x", "t1")) == hash(rec("n", b"k", "x", "t2"))
    assert "secret" not in repr(rec("n", b"secret"))


def test_what_a_record_refuses() -> None:
    class OwnSetattr:
        a: int

        def __setattr__(self, name: str, value: object) -> None:
            pass

    with pytest.raises(TypeError):
        record(OwnSetattr)

    class KeywordOnly:
        a: int = field(kw_only=True)

    with pytest.raises(TypeError):
        record(KeywordOnly)

    class InitVarField:
        a: dataclasses.InitVar[int]

    with pytest.raises(TypeError):
        record(InitVarField)

    class MutableDefault:
        a: list[int] = []  # the mistake under test

    with pytest.raises(ValueError):
        record(MutableDefault)


def test_the_protocol_types_are_records_and_never_show_a_key() -> None:
    types = [obj for obj in vars(messages).values()
             if isinstance(obj, type) and dataclasses.is_dataclass(obj)
             and obj.__module__.startswith("raftsso.protocol")]
    assert len(types) > 40
    for cls in types:
        assert cls.__setattr__ is record(type("Probe", (), {})).__setattr__, cls
    peer = messages.PeerStatus("node1", True, 0.5, 7)
    assert pickle.loads(pickle.dumps(peer)) == peer and copy.copy(peer) == peer
    key = b"\x01" * 32
    shown = repr(messages.RestoreVersion(messages.version_id(1), key, "f" * 16, 0.0))
    assert repr(key) not in shown and "key=" not in shown
