"""The fault catalogue: one fault per module here, registered by defining its class.

`build_fault(spec)` turns a JSON/TOML spec into a Fault (errors name what was wrong),
`load_plan(path)` reads a plan file (a JSON list, or TOML with `[[fault]]` tables),
`fault_types()` lists what exists. The interface and the spec format: fault.py (spec +
per-pipe state), selector.py (which messages, which connections), params.py (parameter
schema). Every other module here is one fault.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..relay.message import Msg
from .fault import DIRECTIONS, REGISTRY, ConnectInfo, Fault, FaultState, ProxyServices
from .params import FaultSpecError, Param
from .selector import ConnectionFilter, Selector

__all__ = ["DIRECTIONS", "REGISTRY", "ConnectInfo", "ConnectionFilter", "Fault", "FaultSpecError", "FaultState", "Msg",
           "Param", "ProxyServices", "Selector", "build_fault", "fault_types", "load_plan"]

_INTERFACE = {"fault", "selector", "params"}  # the modules that are not a fault
COMMON = ("type", "name", "direction", "selector", "toxicity", "connections", "count", "duration", "params")
_loaded = False


def _load_all() -> None:
    """Import every module in this package so each fault class registers itself:
    adding a fault is adding a file."""
    global _loaded
    if _loaded:
        return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in _INTERFACE:
            importlib.import_module(f"{__name__}.{mod.name}")
    _loaded = True


def fault_types() -> dict[str, type[Fault]]:
    _load_all()
    return dict(sorted(REGISTRY.items()))


def build_fault(spec: Any) -> Fault:
    """A Fault from its spec (see fault.py). Selector and parameter keys may also sit at
    the top level; FaultSpecError names the type, the field and the rule."""
    if not isinstance(spec, Mapping):
        raise FaultSpecError(f"a fault spec must be an object, got {json.dumps(spec, default=str)[:80]}")
    types = fault_types()
    kind = spec.get("type")
    if kind is None:
        raise FaultSpecError(f"fault spec has no 'type' (known types: {list(types)})")
    if kind not in types:
        raise FaultSpecError(f"unknown fault type {kind!r} (known types: {list(types)})")
    cls = types[kind]
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise FaultSpecError(f"{kind}: params must be an object")
    params = dict(params)
    sel_spec = spec.get("selector")
    if sel_spec is not None and not isinstance(sel_spec, Mapping):
        raise FaultSpecError(f"{kind}: selector must be an object, got {json.dumps(sel_spec, default=str)}")
    sel: dict[str, Any] = dict(sel_spec or {})
    for key, value in spec.items():
        if key in COMMON:
            continue
        if key in cls.PARAMS:
            target, where = params, "params"
        elif key in Selector.FIELDS:
            target, where = sel, "selector"
        else:
            raise FaultSpecError(f"{kind}: unknown field {key!r} (parameters: {sorted(cls.PARAMS)}; "
                                 f"selector: {list(Selector.FIELDS)}; common: {list(COMMON)})")
        if key in target:
            raise FaultSpecError(f"{kind}: {key!r} given both at top level and in {where}")
        target[key] = value
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise FaultSpecError(f"{kind}: name must be a non-empty string without '/', got {json.dumps(name)}")
    try:
        selector = Selector.from_spec(sel) if sel else None
    except FaultSpecError as e:
        raise FaultSpecError(f"{kind}: {e}") from None
    except TypeError as e:  # defensive: from_spec checks the keys already
        raise FaultSpecError(f"{kind}: bad selector: {e}") from None
    try:
        connections = ConnectionFilter.from_spec(spec.get("connections"))
    except FaultSpecError as e:
        raise FaultSpecError(f"{kind}: {e}") from None
    return cls(name=name, direction=spec.get("direction"), selector=selector,
               toxicity=spec.get("toxicity", 1.0), count=spec.get("count"), duration=spec.get("duration"),
               connections=connections, **params)


def load_plan(path: str | Path) -> list[Fault]:
    """Faults from a plan file: JSON (a list of specs, or {"faults": [...]}) or TOML
    (`[[fault]]` or `[[faults]]` tables). Errors name the file and the entry."""
    p = Path(path)
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            doc: Any = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise FaultSpecError(f"plan {p}: cannot parse: {e}") from None
    if isinstance(doc, Mapping):
        doc = doc.get("faults", doc.get("fault"))
    if not isinstance(doc, list):
        raise FaultSpecError(f"plan {p}: expected a list of fault specs (JSON list, or TOML [[fault]] tables)")
    out = []
    for i, spec in enumerate(doc):
        try:
            out.append(build_fault(spec))
        except FaultSpecError as e:
            raise FaultSpecError(f"plan {p}: entry {i + 1}: {e}") from None
    return out
