"""`Record`: the dataclass base of every typed result, with `to_json`/`from_json` derived from the fields.

Fields are declared in the order of the documented JSON keys, so `to_json` writes the same document the
schemas describe; keys a record does not declare (written by another qdebug version) are kept in `extra`
and written back, so loading and saving an old file loses nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

R = TypeVar("R", bound="Record")
OMIT = {"omit_none": True}  # field metadata: leave the key out of the JSON when the value is None


class Record:
    """Base of the typed results: JSON in and out by field type (records, lists, dicts, optionals)."""

    extra: dict[str, Any]
    _hints: ClassVar[dict[str, Any]]

    def to_json(self) -> dict:
        """The JSON object of this record (field order, omitted optional keys, then unknown keys)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.metadata.get("key", f.name)] = _encode(v)
        out.update(getattr(self, "extra", None) or {})
        return out

    @classmethod
    def from_json(cls: type[R], data: dict) -> R:
        """Build the record from a (validated) JSON object; unknown keys go to `extra`."""
        hints = _hints_of(cls)
        kwargs: dict[str, Any] = {}
        known = set()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            k = f.metadata.get("key", f.name)
            known.add(k)
            if k in data:
                kwargs[f.name] = _decode(hints[f.name], data[k])
        obj = cls(**kwargs)
        extra = {k: v for k, v in data.items() if k not in known}
        if extra:
            obj.extra = extra  # type: ignore[misc]
        return obj


@functools.cache
def _hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(v: Any) -> Any:
    if isinstance(v, Record) or (dataclasses.is_dataclass(v) and hasattr(v, "to_json")):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    return v


def _decode(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:  # records first: a dict value belongs to the record alternative
            if isinstance(a, type) and hasattr(a, "from_json") and isinstance(v, dict):
                return a.from_json(v)
        return _decode(args[0], v) if len(args) == 1 else v
    if origin is list:
        (a,) = typing.get_args(tp) or (Any,)
        return [_decode(a, x) for x in v] if isinstance(v, list) else v
    if origin is tuple:
        args = typing.get_args(tp)
        return tuple(v) if isinstance(v, list) and args else v
    if origin is dict:
        args = typing.get_args(tp)
        a = args[1] if len(args) == 2 else Any
        return {k: _decode(a, x) for k, x in v.items()} if isinstance(v, dict) else v
    if isinstance(tp, type) and hasattr(tp, "from_json") and isinstance(v, dict):
        return tp.from_json(v)
    return v


def record(cls: type[R]) -> type[R]:
    """Decorator: a dataclass Record with an `extra` field (unknown JSON keys) at the end."""
    ann = cls.__dict__.get("__annotations__", {})
    if "extra" not in ann:
        cls.__annotations__ = {**ann, "extra": "dict"}
        cls.extra = dataclasses.field(default_factory=dict, repr=False, compare=False)  # type: ignore[attr-defined]
    return dataclasses.dataclass(cls)
