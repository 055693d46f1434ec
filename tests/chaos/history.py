"""The history of a run: every operation with its start, end, outcome and result.

An operation is a dict (JSON-safe: bytes are hex strings)::

    {"i": 17, "process": "admin1", "f": "rotate", "start": 3.512, "end": 3.530,
     "outcome": "ok" | "failed" | "unknown" | "info", "value": {...}, "error": "..."}

``start``/``end`` are seconds since the run began (monotonic clock). ``ok``: the operation
certainly happened with the recorded result; ``failed``: it certainly did not take effect;
``unknown``: it may or may not have (a write whose answer was lost). Nemesis faults are
recorded with ``outcome = "info"``. Operations are appended to a JSON-lines file as they
complete, so a run that dies still leaves its history.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class Op:
    """One operation being recorded; fill in ``value``/``error``, then ``finish``."""

    def __init__(self, history: History, process: str, f: str, value: dict[str, Any]) -> None:
        self._history = history
        self.record: dict[str, Any] = {"i": -1, "process": process, "f": f,
                                       "start": history.now(), "end": None,
                                       "outcome": None, "value": value}

    @property
    def value(self) -> dict[str, Any]:
        value: dict[str, Any] = self.record["value"]
        return value

    def finish(self, outcome: str, error: str | None = None, **value: Any) -> dict[str, Any]:
        self.record["end"] = self._history.now()
        self.record["outcome"] = outcome
        self.record["value"].update(value)
        if error is not None:
            self.record["error"] = error
        self._history.append(self.record)
        return self.record


class History:
    def __init__(self, path: Path | None = None) -> None:
        self._t0 = time.monotonic()
        self.wall_start = time.time()
        self._ops: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.path = path
        self._file: IO[str] | None = path.open("w") if path is not None else None

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def begin(self, process: str, f: str, **value: Any) -> Op:
        return Op(self, process, f, dict(value))

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            record["i"] = next(self._ids)
            self._ops.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, default=_jsonable, sort_keys=True) + "\n")

    @contextmanager
    def info(self, process: str, f: str, **value: Any) -> Iterator[Op]:
        """Record a nemesis action (``outcome = "info"``) around a block."""
        op = self.begin(process, f, **value)
        try:
            yield op
        except BaseException as exc:
            op.finish("info", error=f"{type(exc).__name__}: {exc}")
            raise
        op.finish("info")

    def ops(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._ops)

    def counts(self) -> dict[str, dict[str, int]]:
        by_f: dict[str, Counter[str]] = {}
        for op in self.ops():
            by_f.setdefault(op["f"], Counter())[op["outcome"]] += 1
        return {f: dict(sorted(c.items())) for f, c in sorted(by_f.items())}

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    return repr(obj)


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def format_ops(ops: list[dict[str, Any]], limit: int | None = None) -> str:
    """A readable table of operations (the last ``limit`` ones)."""
    rows = ops if limit is None else ops[-limit:]
    lines = []
    for op in rows:
        value = {k: v for k, v in op.get("value", {}).items()
                 if k not in ("token", "plaintext", "attempts")}
        end = "-" if op.get("end") is None else f"{op['end']:9.3f}"
        lines.append(f"{op['i']:6d} {op['start']:9.3f} {end} {op['process']:8s} "
                     f"{op['f']:14s} {op['outcome']:7s} {json.dumps(value, default=_jsonable)}"
                     + (f"  !{op['error']}" if op.get("error") else ""))
    return "\n".join(lines)
