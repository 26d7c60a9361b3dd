"""The parameter schema of fault specs: `Param` (type, default, bounds, choices, None
allowed) and `FaultSpecError` (a spec is wrong; the message names the fault type, the
field and the rule). Parameter names carry their unit when it is not obvious
(`latency_ms`, `after_s`, `rate_bps`, `limit_bytes`); a `None`-able parameter means
"forever"/"unset"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class FaultSpecError(ValueError):
    """A fault spec is wrong; the message names the fault type, the field and the rule."""


_REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    """A fault parameter: type, default (omit = required), bounds, choices, None allowed."""

    type: type
    default: Any = _REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise FaultSpecError(f"{where} must not be null")
        t = self.type
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if t is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, t) or (t in (int, float) and isinstance(value, bool)):
            raise FaultSpecError(f"{where} must be {type_name(t)}, got {json.dumps(value, default=str)}")
        if self.min is not None and value < self.min:
            raise FaultSpecError(f"{where} must be >= {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise FaultSpecError(f"{where} must be <= {self.max}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise FaultSpecError(f"{where} must be one of {list(self.choices)}, got {json.dumps(value)}")
        return value

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": type_name(self.type)}
        if not self.required:
            d["default"] = self.default
        for k in ("min", "max", "choices", "help"):
            v = getattr(self, k)
            if v not in (None, ""):
                d[k] = list(v) if k == "choices" else v
        if self.nullable:
            d["nullable"] = True
        return d


def type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}.get(t, t.__name__)
