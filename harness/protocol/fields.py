"""Typed payload objects from/to JSON, driven by dataclass annotations.

A payload object is a dataclass. Its annotations are the schema:

- ``int``, ``str``, ``bool``, ``dict``, ``list[T]``, ``Literal[...]`` and
  nested payload dataclasses are checked on decode;
- ``T | Unset`` with default ``UNSET`` marks a field that may be omitted
  (the spec's ``field?``); ``T | None`` marks a field that may be ``null``;
- ``field(metadata=...)`` adds ``key`` (the JSON key when it is not a Python
  identifier, e.g. ``player@v1_support``), ``range`` (inclusive bounds for
  ints), ``length`` (inclusive bounds for lists) and ``equals``.

Unknown keys are ignored on decode, as the spec asks. Every failure raises
ProtocolError naming the message type, the dotted field path and the rule.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ProtocolError


class Unset:
    """The value of an optional field that was omitted (distinct from null)."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET = Unset()

_TYPE_NAMES = {int: "an integer", str: "a string", bool: "a boolean", dict: "an object", list: "a list"}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _json_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("key", f.name)


def _split_union(tp: Any) -> tuple[Any, bool, bool]:
    """Return (inner type, may be omitted, may be null)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        omittable = Unset in args
        nullable = type(None) in args
        rest = [a for a in args if a not in (Unset, type(None))]
        inner = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        return inner, omittable, nullable
    return tp, False, False


def decode_object(cls: type, data: Any, message_type: str, path: str = "") -> Any:
    """Build payload dataclass `cls` from decoded JSON `data`, validating it."""
    if not isinstance(data, dict):
        raise ProtocolError(message_type, path, f"must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _json_key(f)
        fpath = f"{path}.{key}" if path else key
        inner, omittable, nullable = _split_union(hints[f.name])
        if key not in data:
            if omittable:
                continue
            raise ProtocolError(message_type, fpath, "required field is missing")
        value = data[key]
        if value is None:
            if not nullable:
                raise ProtocolError(message_type, fpath, "must not be null")
            kwargs[f.name] = None
            continue
        value = _decode_value(inner, value, message_type, fpath)
        _check_metadata(f, value, message_type, fpath)
        kwargs[f.name] = value
    return cls(**kwargs)


def _decode_value(tp: Any, value: Any, message_type: str, path: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ProtocolError(message_type, path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(message_type, path, f"must be a list, got {type(value).__name__}")
        (item_type,) = get_args(tp)
        return [_decode_value(item_type, v, message_type, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return decode_object(tp, value, message_type, path)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(message_type, path, f"must be an object, got {type(value).__name__}")
        return value
    if tp is Any:
        return value
    # bool is a subclass of int in Python but not in JSON.
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ProtocolError(message_type, path, f"must be an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ProtocolError(message_type, path, f"must be {_TYPE_NAMES.get(tp, tp)}, got {value!r}")
    return value


def _check_metadata(f: dataclasses.Field[Any], value: Any, message_type: str, path: str) -> None:
    meta = f.metadata
    if "equals" in meta and value != meta["equals"]:
        raise ProtocolError(message_type, path, f"must be {meta['equals']!r}, got {value!r}")
    if "range" in meta:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise ProtocolError(message_type, path, f"must be in range {lo}..{hi}, got {value!r}")
    if "length" in meta:
        lo, hi = meta["length"]
        if not lo <= len(value) <= hi:
            raise ProtocolError(message_type, path, f"must have {lo}..{hi} entries, got {len(value)}")


def encode_object(obj: Any) -> dict[str, Any]:
    """Payload dataclass -> JSON-ready dict; UNSET fields are omitted, None is null."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is UNSET:
            continue
        out[_json_key(f)] = _encode_value(value)
    return out


def _encode_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode_object(value)
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    return value
